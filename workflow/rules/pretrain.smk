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
        f"{LOGS}/pretrain_target/{{arch}}.log",
    benchmark:
        f"{BENCH}/pretrain_target/{{arch}}.tsv"
    params:
        cli=TRAIN_CLI,
        args=pretrain_target_args,
        common=COMMON_ARGS,
        precision=PRECISION_ARGS,
    threads: res("pretrain_target").threads
    resources:
        mem_mb=res("pretrain_target").mem_mb,
        runtime=res("pretrain_target").runtime,
        gpu=res("pretrain_target").gpu,
    shell:
        "{params.cli} pretrain {params.args} {params.common} {params.precision} --out {output.ckpt} > {log} 2>&1"


rule pretrain_proxy:
    # the teacher gates gmpq, gmpq-asga and hawq searches
    priority: 40
    input:
        ancient(DATA_CHECK),
    output:
        ckpt=TEACHER_CKPT,
        meta=f"{TEACHER_CKPT}.json",
    log:
        f"{LOGS}/pretrain_proxy/{{arch}}-{{proxy}}.log",
    benchmark:
        f"{BENCH}/pretrain_proxy/{{arch}}-{{proxy}}.tsv"
    params:
        cli=TRAIN_CLI,
        args=pretrain_proxy_args,
        common=COMMON_ARGS,
        precision=PRECISION_ARGS,
    threads: res("pretrain_proxy").threads
    resources:
        mem_mb=res("pretrain_proxy").mem_mb,
        runtime=res("pretrain_proxy").runtime,
        gpu=res("pretrain_proxy").gpu,
    shell:
        "{params.cli} pretrain {params.args} {params.common} {params.precision} --out {output.ckpt} > {log} 2>&1"
