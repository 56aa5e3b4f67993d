# Config loading, validation, path templates and the helpers every stage shares.
import json
import os
import re
import shlex

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from mpqbench.config import load_suite
from mpqbench.errors import UserError

_CONFIG_SOURCE = ", ".join(str(f) for f in workflow.configfiles) or "config"
try:
    # pydantic first: one readable line per problem, cross-references included
    SUITE = load_suite(config, source=_CONFIG_SOURCE)
except UserError as exc:
    raise WorkflowError(str(exc)) from None
# then the committed JSON Schema (the same model, exported), as the workflow catalog expects
validate(config, "../schemas/config.schema.json")

TARGET = SUITE.target.dataset
WORK = f"{SUITE.work_dir}/{SUITE.suite}"
LOGS = f"{SUITE.log_dir}/{SUITE.suite}"
BENCH = f"{SUITE.log_dir}/benchmarks/{SUITE.suite}"
RESULTS = SUITE.results_dir
RUNS_DIR = f"{RESULTS}/runs"

# One grid cell: method label x arch x budget x proxy label x seed (the target is fixed per suite).
CELL = f"{{arch}}/{{budget}}/{{method}}/{{proxy}}-to-{TARGET}-s{{seed}}"
DATA_CHECK = f"{WORK}/data-check.json"
FP_CKPT = f"{WORK}/fp/{{arch}}-{TARGET}.pt"
TEACHER_CKPT = f"{WORK}/teacher/{{arch}}-{{proxy}}.pt"
POLICY = f"{WORK}/policies/{CELL}.json"
QAT_CKPT = f"{WORK}/qat/{CELL}.pt"
RECORD = f"{RUNS_DIR}/{SUITE.suite}/{CELL}.json"

ENTRIES = SUITE.entries()  # method labels of the grid, curve entries (<label>-len<L>) included
RECORDS = [RECORD.format(**run._asdict()) for run in SUITE.runs()]
AGGREGATES = dict(
    leaderboard=f"{RESULTS}/leaderboard.csv",
    summary=f"{RESULTS}/summary.json",
    jobs=f"{RESULTS}/jobs.tsv",
    figures=f"{RESULTS}/figures",
)


def _alternatives(names):
    """Regex matching exactly one of ``names`` (longest first, so no label shadows a longer one)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


wildcard_constraints:
    arch=_alternatives(SUITE.archs),
    budget=_alternatives(SUITE.budgets),
    method=_alternatives(ENTRIES),
    proxy=_alternatives(SUITE.proxies),
    seed=r"\d+",


def res(rule_name):
    """Per-rule resources from the config (standard Snakemake names)."""
    return getattr(SUITE.resources, rule_name)


def cli_args(**options):
    """``--key value`` pairs, shell-quoted; ``None`` values are left out, ``True`` gives a bare flag."""
    parts = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = f"--{key.replace('_', '-')}"
        parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


# Every compute job: the suite's device and precision, no progress bars (logs are files).
COMMON_ARGS = cli_args(device=SUITE.device, no_progress=True)
PRECISION_ARGS = cli_args(precision=SUITE.precision)
# pretrain/finetune may run under a multi-GPU launcher such as torchrun
TRAIN_CLI = SUITE.ddp_launcher or "mpqbench"


def pretrain_target_args(wildcards):
    arch, stage = SUITE.archs[wildcards.arch], SUITE.pretrain
    return cli_args(
        arch=wildcards.arch,
        dataset=TARGET,
        data_root=SUITE.data_root_of(SUITE.target),
        input_size=arch.target_input_size or SUITE.target.input_size,
        width=arch.width,
        weights=arch.weights,
        subset=stage.subset,
        epochs=stage.epochs,
        lr=stage.lr,
        batch_size=stage.batch_size,
        seed=stage.seed,
    )


def pretrain_proxy_args(wildcards):
    arch, proxy, stage = SUITE.archs[wildcards.arch], SUITE.proxies[wildcards.proxy], SUITE.teacher
    return cli_args(
        arch=wildcards.arch,
        dataset=proxy.dataset,
        data_root=SUITE.data_root_of(proxy),
        input_size=arch.proxy_input_size or proxy.input_size,
        width=arch.width,
        subset=proxy.subset,
        epochs=stage.epochs,
        lr=stage.lr,
        batch_size=stage.batch_size,
        seed=SUITE.pretrain.seed,
    )


def teacher_input(wildcards):
    """The FP teacher for methods that need one (pretrained on the proxy, or the target FP start model for
    ``teacher_from: target``), else nothing."""
    m = ENTRIES[wildcards.method]
    if not m.teacher:
        return []
    if m.teacher_from == "target":
        return FP_CKPT.format(arch=wildcards.arch)
    return TEACHER_CKPT.format(arch=wildcards.arch, proxy=wildcards.proxy)


def search_args(wildcards):
    m = ENTRIES[wildcards.method]
    arch, proxy = SUITE.archs[wildcards.arch], SUITE.proxies[wildcards.proxy]
    cand = SUITE.candidates_for(wildcards.arch)
    hparams = " ".join(
        f"--hp {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in sorted(m.hparams.items())
    )
    args = cli_args(
        method=m.method,
        label=wildcards.method,
        arch=wildcards.arch,
        proxy=proxy.dataset,
        proxy_label=wildcards.proxy,
        proxy_subset=proxy.subset,
        proxy_input_size=arch.proxy_input_size or proxy.input_size,
        data_root=SUITE.data_root_of(proxy),
        target=TARGET,
        target_input_size=arch.target_input_size or SUITE.target.input_size,
        budget=wildcards.budget,
        seed=wildcards.seed,
        width=arch.width,
        epochs=f"{m.epochs or SUITE.search.epochs:g}",
        batch_size=arch.search_batch_size or SUITE.search.batch_size,
        w_candidates=",".join(map(str, cand.w)),
        a_candidates=",".join(map(str, cand.a)),
        budget_floor=SUITE.budget_floor,
        length=None if m.length is None else f"{m.length:g}",
        curve=m.curve,
    )
    return f"{args} {hparams}".strip()


def finetune_args(wildcards):
    arch, stage = SUITE.archs[wildcards.arch], SUITE.finetune
    return cli_args(
        dataset=TARGET,
        data_root=SUITE.data_root_of(SUITE.target),
        subset=stage.subset,
        epochs=stage.epochs,
        lr=stage.lr,
        batch_size=arch.finetune_batch_size or stage.batch_size,
        seed=wildcards.seed,
    )


EVALUATE_ARGS = cli_args(
    dataset=TARGET,
    data_root=SUITE.data_root_of(SUITE.target),
    suite=SUITE.suite,
    batch_size=SUITE.evaluate.batch_size,
)
