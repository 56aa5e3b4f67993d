# Stage 3: QAT fine-tune on the target, identical for every method (same FP start model, epochs,
# schedule and seed list), so only the policy differs.


rule finetune:
    input:
        policy=POLICY,
        fp=FP_CKPT,
    output:
        QAT_CKPT,
    log:
        f"{LOGS}/finetune/{CELL}.log",
    benchmark:
        f"{BENCH}/finetune/{CELL}.tsv"
    params:
        cli=TRAIN_CLI,
        args=finetune_args,
        common=COMMON_ARGS,
        precision=PRECISION_ARGS,
    threads: res("finetune").threads
    resources:
        mem_mb=res("finetune").mem_mb,
        runtime=res("finetune").runtime,
        gpu=res("finetune").gpu,
    shell:
        "{params.cli} finetune --policy {input.policy} --fp {input.fp} {params.args} {params.common} {params.precision}"
        " --out {output} > {log} 2>&1"
