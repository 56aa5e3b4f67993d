# Stage 6: the figures in <results>/figures/ (accuracy vs BitOPs with the Pareto front, accuracy vs search
# cost, the accuracy-vs-search-cost curves, per-layer bit-width heatmaps), each as PNG (shown in the report),
# PDF and SVG (for papers), drawn from the same records as the table, after it.


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
