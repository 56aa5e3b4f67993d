# Stage 0: every dataset the suite reads is present (else: one line saying how to get it).


rule check_data:
    output:
        DATA_CHECK,
    log:
        f"{LOGS}/check_data.log",
    benchmark:
        f"{BENCH}/check_data.tsv"
    params:
        datasets=[list(pair) for pair in SUITE.datasets()],
    threads: res("check_data").threads
    resources:
        mem_mb=res("check_data").mem_mb,
        runtime=res("check_data").runtime,
        gpu=res("check_data").gpu,
    script:
        "../scripts/check_data.py"
