# Stage 5: leaderboard.csv and summary.json, derived from every record under <results>/runs (all suites;
# the table has a suite column), then `mpqbench export` from them: the paper tables (leaderboard.tex/.md,
# leaderboard_entries.csv), their references.bib, DVC's headline metrics.json and the static leaderboard.html.
# Re-running it on the same records is byte-identical. Figures: figures.smk.

# the export's files are aggregates too: `all` asks for them, and a failed job gets them back (common.smk)
AGGREGATES.update({kind: LAYOUT.pattern(kind) for kind in runs.EXPORT_FILES})


rule aggregate:
    input:
        RECORDS,
    output:
        leaderboard=AGGREGATES["leaderboard"],
        summary=AGGREGATES["summary"],
        jobs=AGGREGATES["jobs"],
        **{kind: AGGREGATES[kind] for kind in runs.EXPORT_FILES},
    log:
        f"{LAYOUT.logs}/aggregate.log",
    benchmark:
        f"{LAYOUT.bench}/aggregate.tsv"
    params:
        runs=lambda wildcards: RUNS_DIR,
        bench=LAYOUT.bench,
        job_logs=LAYOUT.logs,
        out_dir=lambda wildcards, output: os.path.dirname(output.summary) or ".",
    threads: THREADS["aggregate"]
    resources:
        **RESOURCES["aggregate"],
    shell:
        "(mpqbench aggregate --runs {params.runs} --out-dir {params.out_dir} --no-figures"
        " --bench-dir {params.bench} --job-logs {params.job_logs} && mpqbench export --results {params.out_dir}) > {log} 2>&1"
