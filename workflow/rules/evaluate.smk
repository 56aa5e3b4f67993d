# Stage 4: evaluate on the target test split and write the run record (committed under results/runs/).


rule evaluate:
    input:
        ckpt=QAT_CKPT,
        policy=POLICY,
        fp=FP_CKPT,
    output:
        RECORD,
    log:
        f"{LAYOUT.logs}/evaluate/{CELL}.log",
    benchmark:
        f"{LAYOUT.bench}/evaluate/{CELL}.tsv"
    params:
        args=evaluate_args,
    threads: THREADS["evaluate"]
    resources:
        **RESOURCES["evaluate"],
    shell:
        "mpqbench evaluate --ckpt {input.ckpt} --policy {input.policy} --fp {input.fp}"
        " {params.args} --out {output} > {log} 2>&1"
