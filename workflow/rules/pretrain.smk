# Stage 1: full-precision models. The target start model is shared by every fine-tune of the arch;
# a proxy teacher is trained only for methods with `teacher: true` (GMPQ's attribution teacher, HAWQ).
# Downstream jobs take the data check as ancient(): re-creating it never invalidates trained models.


rule pretrain_target:
    # the longest job and on the path of every fine-tune: start it first
    priority: 50
    input:
        ancient(DATA_CHECK),
    output:
        ckpt=FP_CKPT,
        meta=f"{FP_CKPT}.json",
    log:
        f"{LAYOUT.logs}/pretrain_target/{{arch}}.log",
    benchmark:
        f"{LAYOUT.bench}/pretrain_target/{{arch}}.tsv"
    params:
        cli=TRAIN_CLI,
        args=pretrain_target_args,
    threads: THREADS["pretrain_target"]
    resources:
        **RESOURCES["pretrain_target"],
    shell:
        "{params.cli} pretrain {params.args} --out {output.ckpt} > {log} 2>&1"


rule pretrain_proxy:
    # the teacher gates gmpq, gmpq-asga and hawq searches
    priority: 40
    input:
        ancient(DATA_CHECK),
    output:
        ckpt=TEACHER_CKPT,
        meta=f"{TEACHER_CKPT}.json",
    log:
        f"{LAYOUT.logs}/pretrain_proxy/{{arch}}-{{proxy}}.log",
    benchmark:
        f"{LAYOUT.bench}/pretrain_proxy/{{arch}}-{{proxy}}.tsv"
    params:
        cli=TRAIN_CLI,
        args=pretrain_proxy_args,
    threads: THREADS["pretrain_proxy"]
    resources:
        **RESOURCES["pretrain_proxy"],
    shell:
        "{params.cli} pretrain {params.args} --out {output.ckpt} > {log} 2>&1"
