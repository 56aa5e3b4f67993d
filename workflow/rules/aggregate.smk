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
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCH}/aggregate.tsv"
    params:
        runs=lambda wildcards: RUNS_DIR,
        bench=BENCH,
        out_dir=lambda wildcards, output: os.path.dirname(output.summary) or ".",
    threads: res("aggregate").threads
    resources:
        mem_mb=res("aggregate").mem_mb,
        runtime=res("aggregate").runtime,
        gpu=res("aggregate").gpu,
    shell:
        "mpqbench aggregate --runs {params.runs} --out-dir {params.out_dir} --no-figures"
        " --bench-dir {params.bench} > {log} 2>&1"
