# Stage 2: one policy search per grid cell (method label x arch x budget x proxy x seed).
# The budget is resolved on the target geometry; the search cost goes into the policy JSON.


rule search:
    input:
        data=ancient(DATA_CHECK),
        teacher=teacher_input,
    output:
        POLICY,
    log:
        f"{LOGS}/search/{CELL}.log",
    benchmark:
        f"{BENCH}/search/{CELL}.tsv"
    params:
        args=search_args,
        teacher=lambda wildcards: cli_args(teacher=teacher_input(wildcards) or None),
        common=COMMON_ARGS,
        precision=PRECISION_ARGS,
    threads: res("search").threads
    resources:
        mem_mb=res("search").mem_mb,
        runtime=res("search").runtime,
        gpu=res("search").gpu,
    shell:
        "mpqbench search {params.args} {params.teacher} {params.common} {params.precision} --out {output} > {log} 2>&1"
