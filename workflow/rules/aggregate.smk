# Stage 5: leaderboard.csv and summary.json, derived from every record under <results>/runs (all suites;
# the table has a suite column). Re-running it on the same records is byte-identical. Figures: figures.smk.


rule aggregate:
    input:
        RECORDS,
    output:
        leaderboard=AGGREGATES["leaderboard"],
        summary=AGGREGATES["summary"],
        jobs=AGGREGATES["jobs"],
    log:
        f"{LAYOUT.logs}/aggregate.log",
    benchmark:
        f"{LAYOUT.bench}/aggregate.tsv"
    params:
        runs=lambda wildcards: RUNS_DIR,
        bench=LAYOUT.bench,
        out_dir=lambda wildcards, output: os.path.dirname(output.summary) or ".",
    threads: THREADS["aggregate"]
    resources:
        **RESOURCES["aggregate"],
    shell:
        "mpqbench aggregate --runs {params.runs} --out-dir {params.out_dir} --no-figures"
        " --bench-dir {params.bench} > {log} 2>&1"
