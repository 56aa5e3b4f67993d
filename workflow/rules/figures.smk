# Stage 6: the seaborn figures in <results>/figures/ (accuracy vs BitOPs with the Pareto front, accuracy
# vs search cost, per-layer bit-width heatmaps), drawn from the same records as the table, after it.


rule figures:
    input:
        records=RECORDS,
        table=AGGREGATES["leaderboard"],
    output:
        figures=report(
            directory(AGGREGATES["figures"]),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Leaderboard",
        ),
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{BENCH}/figures.tsv"
    params:
        runs=lambda wildcards: RUNS_DIR,
    threads: res("figures").threads
    resources:
        mem_mb=res("figures").mem_mb,
        runtime=res("figures").runtime,
        gpu=res("figures").gpu,
    shell:
        "mpqbench figures --runs {params.runs} --out-dir {output.figures} > {log} 2>&1"
