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
        f"{LAYOUT.logs}/figures.log",
    benchmark:
        f"{LAYOUT.bench}/figures.tsv"
    params:
        runs=lambda wildcards: RUNS_DIR,
    threads: THREADS["figures"]
    resources:
        **RESOURCES["figures"],
    shell:
        "mpqbench figures --runs {params.runs} --out-dir {output.figures} > {log} 2>&1"
