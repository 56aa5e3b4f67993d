# mpqbench benchmark workflow: pretrain -> search -> QAT fine-tune -> evaluate -> aggregate -> figures.
# Default suite: `snakemake --cores 2 all`; others: `--configfile config/smoke.yaml` / `config/paper.yaml`.
# Rules call the `mpqbench` CLI; site specifics (cluster, GPUs) live in profiles/, never here.
from snakemake.utils import min_version

min_version("9.0")


# The default suite, unless --configfile names another one (Snakemake would otherwise merge the two).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"


onstart:
    backup_aggregates()
    start_jobserver()


onerror:
    stop_jobserver()
    restore_aggregates()


onsuccess:
    stop_jobserver()
    drop_aggregates_backup()
    print_comparison()


localrules:
    all,
    check_data,
    aggregate,
    figures,


rule all:
    default_target: True
    input:
        RECORDS,
        **AGGREGATES,
