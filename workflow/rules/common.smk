# Config loading and validation, and the paths and command lines every stage uses — all derived from the
# suite through mpqbench.runs (the one definition of a run, shared with the CLI and the reproduce commands).
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from mpqbench.config import load_suite, read_suite_file
from mpqbench.errors import UserError
from mpqbench.plugins import resolve_suite
from mpqbench import runs

_CONFIG_SOURCE = ", ".join(str(f) for f in workflow.configfiles) or "config"
try:
    for _file in workflow.configfiles:  # what a plain YAML load hides: a key given twice
        read_suite_file(_file)
    # pydantic first: one readable line per problem, cross-references included
    SUITE = load_suite(config, source=_CONFIG_SOURCE)
    # then against the method registry: methods, hyper-parameters, budgets; teacher and role from each method
    SUITE = resolve_suite(SUITE, source=_CONFIG_SOURCE)
except UserError as exc:
    raise WorkflowError(str(exc)) from None
# then the committed JSON Schema (the same model, exported), as the workflow catalog expects
validate(config, "../schemas/config.schema.json")

LAYOUT = runs.Layout.of(SUITE)
TARGET = SUITE.target.dataset
CELL = LAYOUT.cell
DATA_CHECK = LAYOUT.pattern("data_check")
FP_CKPT = LAYOUT.pattern("fp")
TEACHER_CKPT = LAYOUT.pattern("teacher")
POLICY = LAYOUT.pattern("policy")
QAT_CKPT = LAYOUT.pattern("qat")
RECORD = LAYOUT.pattern("record")
RUNS_DIR = LAYOUT.runs_dir

ENTRIES = SUITE.entries()  # method labels of the grid, curve entries (<label>-len<L>) included
RECORDS = [RECORD.format(**run._asdict()) for run in SUITE.runs()]
AGGREGATES = {kind: LAYOUT.pattern(kind) for kind in ("leaderboard", "summary", "jobs", "figures")}


def _alternatives(names):
    """Regex matching exactly one of ``names`` (longest first, so no label shadows a longer one)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    arch=_alternatives(SUITE.archs),
    budget=_alternatives(SUITE.all_budgets()),
    method=_alternatives(ENTRIES),
    proxy=_alternatives(SUITE.proxies),
    seed=r"\d+",


# pretrain/finetune may run under a multi-GPU launcher such as torchrun
TRAIN_CLI = SUITE.ddp_launcher or "mpqbench"


def _cell(wildcards):
    return {key: wildcards[key] for key in runs.CELL_KEYS}


def _argv(request):
    return shlex.join(request.to_argv())


def pretrain_target_args(wildcards):
    return _argv(runs.pretrain_target_request(SUITE, wildcards.arch))


def pretrain_proxy_args(wildcards):
    return _argv(runs.pretrain_proxy_request(SUITE, wildcards.arch, wildcards.proxy))


def teacher_input(wildcards):
    """The FP teacher for methods that need one (pretrained on the proxy, or the target FP start model for
    ``teacher_from: target``), else nothing."""
    return runs.teacher_path(SUITE, wildcards.arch, wildcards.method, wildcards.proxy) or []


def search_args(wildcards):
    return _argv(runs.search_request(SUITE, **_cell(wildcards)))


def finetune_args(wildcards):
    return _argv(runs.finetune_request(SUITE, **_cell(wildcards), paths=False))


def evaluate_args(wildcards):
    return _argv(runs.evaluate_request(SUITE, **_cell(wildcards), paths=False))


# Threads and resources of every rule, from the suite's `resources:` (Snakemake's standard names, which
# --set-resources and cluster profiles understand); each rule reads its entry here.
THREADS = {rule: getattr(SUITE.resources, rule).threads for rule in runs.RULES}
RESOURCES = {rule: getattr(SUITE.resources, rule).model_dump(exclude={"threads"}) for rule in runs.RULES}


# Snakemake removes a job's outputs before it runs and after it fails. The aggregates (leaderboard.csv,
# summary.json, jobs.tsv, figures/) are committed results: a copy is taken when the workflow starts and put
# back by the error handler when a failed aggregate or figures job left them missing.
AGGREGATE_BACKUP = f"{LAYOUT.work}/aggregates-backup"


def backup_aggregates():
    import shutil

    shutil.rmtree(AGGREGATE_BACKUP, ignore_errors=True)
    for kind, path in AGGREGATES.items():
        dest = os.path.join(AGGREGATE_BACKUP, kind)
        if os.path.isdir(path):
            shutil.copytree(path, dest)
        elif os.path.isfile(path):
            os.makedirs(AGGREGATE_BACKUP, exist_ok=True)
            shutil.copy2(path, dest)


def drop_aggregates_backup():
    """After a successful run the backup has served its purpose; a run killed before its end keeps it until the
    next run, whose start replaces it."""
    import shutil

    shutil.rmtree(AGGREGATE_BACKUP, ignore_errors=True)


def restore_aggregates():
    import shutil

    for kind, path in AGGREGATES.items():
        src = os.path.join(AGGREGATE_BACKUP, kind)
        if os.path.exists(path) or not os.path.exists(src):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, path)
        else:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            shutil.copy2(src, path)
        print(f"restored {path} from before this run (the job that writes it failed)", file=sys.stderr)


# The job server (mpqbench.jobserver): one process with torch and the package imported, from which every
# local job's `mpqbench` command is forked, so a job does not pay the ~4 s of a fresh process's imports.
# Jobs submitted to a cluster run their commands themselves; MPQBENCH_JOBSERVER=0 turns it off.
# Every job ends its log with its own CPU time and peak RSS (MPQBENCH_USAGE=1), which jobs.tsv reads.
_JOBSERVER = {}


def start_jobserver():
    import tempfile

    from mpqbench import jobserver

    os.environ[jobserver.USAGE_ENV] = "1"
    if not workflow.local_exec or os.environ.get(jobserver.ENV) == "0":
        return
    folder = tempfile.mkdtemp(prefix="mpqbench-jobs-")
    path = os.path.join(folder, "server.sock")
    os.makedirs(LAYOUT.log_dir, exist_ok=True)  # beside, not among, the job logs of logs/<suite>/
    log = os.path.join(LAYOUT.log_dir, f"jobserver-{LAYOUT.suite}.log")
    _JOBSERVER.update(proc=jobserver.start(path, log=log), path=path, folder=folder)
    os.environ[jobserver.ENV] = path  # jobs started before it listens run their commands themselves


def stop_jobserver():
    import shutil

    from mpqbench import jobserver

    if _JOBSERVER:
        jobserver.stop(_JOBSERVER["proc"], _JOBSERVER["path"])
        shutil.rmtree(_JOBSERVER["folder"], ignore_errors=True)
        _JOBSERVER.clear()


def print_comparison():
    """After a run that ran jobs: where the records are and how they compare with the committed ones (git HEAD).
    Never fails the workflow: a comparison that cannot be made says why."""
    if os.environ.get(runs.COMPARE_ENV) == "0":
        return
    from mpqbench.board.compare import compare_with_git, format_comparison

    try:
        lines = format_comparison(compare_with_git(RUNS_DIR, "HEAD"))
    except (UserError, OSError) as exc:
        lines = [f"compare: {RUNS_DIR}/ could not be compared with the committed records: {exc}"]
    print("\n".join(lines))
