# Stage 3: QAT fine-tune on the target, identical for every method (same FP start model, epochs,
# schedule and seed list), so only the policy differs.


rule finetune:
    input:
        policy=POLICY,
        fp=FP_CKPT,
    output:
        QAT_CKPT,
    log:
        f"{LAYOUT.logs}/finetune/{CELL}.log",
    benchmark:
        f"{LAYOUT.bench}/finetune/{CELL}.tsv"
    params:
        cli=TRAIN_CLI,
        args=finetune_args,
    threads: THREADS["finetune"]
    resources:
        **RESOURCES["finetune"],
    shell:
        "{params.cli} finetune --policy {input.policy} --fp {input.fp} {params.args}"
        " --out {output} > {log} 2>&1"
