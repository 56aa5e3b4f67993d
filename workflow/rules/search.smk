# Stage 2: one policy search per grid cell (method label x arch x budget x proxy x seed).
# The budget is resolved on the target geometry; the search cost goes into the policy JSON. The search
# checkpoints into its own state folder (runs.Layout "search_state"), so a killed search resumes.


rule search:
    input:
        data=ancient(DATA_CHECK),
        teacher=teacher_input,
    output:
        POLICY,
    log:
        f"{LAYOUT.logs}/search/{CELL}.log",
    benchmark:
        f"{LAYOUT.bench}/search/{CELL}.tsv"
    params:
        args=search_args,
    threads: THREADS["search"]
    resources:
        **RESOURCES["search"],
    shell:
        "mpqbench search {params.args} --out {output} > {log} 2>&1"
