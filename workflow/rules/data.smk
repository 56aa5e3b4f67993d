# Stage 0: every dataset the suite reads is present (else: one line saying how to get it).


rule check_data:
    output:
        DATA_CHECK,
    log:
        f"{LAYOUT.logs}/check_data.log",
    benchmark:
        f"{LAYOUT.bench}/check_data.tsv"
    params:
        datasets=[list(pair) for pair in SUITE.datasets()],
    threads: THREADS["check_data"]
    resources:
        **RESOURCES["check_data"],
    script:
        "../scripts/check_data.py"
