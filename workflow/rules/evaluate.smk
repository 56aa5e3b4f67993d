# Stage 4: evaluate on the target test split and write the run record (committed under results/runs/).


rule evaluate:
    input:
        ckpt=QAT_CKPT,
        policy=POLICY,
        fp=FP_CKPT,
    output:
        RECORD,
    log:
        f"{LOGS}/evaluate/{CELL}.log",
    benchmark:
        f"{BENCH}/evaluate/{CELL}.tsv"
    params:
        args=EVALUATE_ARGS,
        common=COMMON_ARGS,
        precision=PRECISION_ARGS,
    threads: res("evaluate").threads
    resources:
        mem_mb=res("evaluate").mem_mb,
        runtime=res("evaluate").runtime,
        gpu=res("evaluate").gpu,
    shell:
        "mpqbench evaluate --ckpt {input.ckpt} --policy {input.policy} --fp {input.fp}"
        " {params.args} {params.common} {params.precision} --out {output} > {log} 2>&1"
