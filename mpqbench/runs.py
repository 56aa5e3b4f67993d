"""One definition of a run: the defaults, the on-disk layout of a suite and the typed command requests.

Torch-free. Everything that names where a run's files live or how a step is invoked is derived here:

* the run defaults (bit candidates, the fixed layers' bits, batch sizes, the budget window's floor, the
  cores of the documented command) — each defined once;
* :class:`Layout` — every path of a suite (records, policies, checkpoints, resumable search state, logs,
  benchmarks, aggregates), derived from the suite's ``results_dir``/``work_dir``/``log_dir``; the Snakemake
  rules use its wildcard patterns, the reproduce commands its formatted paths;
* :class:`SearchRequest`, :class:`PretrainRequest`, :class:`FinetuneRequest`, :class:`EvaluateRequest` —
  the options of one ``mpqbench`` step, with ``to_argv()``. The CLI's defaults are these fields' defaults,
  the workflow builds its command lines with :func:`search_request` & co., and the reproduce command of a
  record is the same request, so the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, get_args

if TYPE_CHECKING:  # pragma: no cover
    from mpqbench.config import SuiteConfig

# ---- run defaults (the one place each is defined) ------------------------------------------------------------
DEFAULT_CANDIDATES: tuple[int, ...] = (2, 3, 4)  # bit-width candidates of the searchable layers (W and A)
FIXED_BITS: tuple[int, int] = (8, 8)  # (W, A) of the layers every method keeps fixed: first conv, classifier
DEFAULT_BUDGET_FLOOR = 0.9  # lower edge of the budget window [floor, 1] × budget
TRAIN_BATCH_SIZE = 128  # pretrain and QAT fine-tune
EVAL_BATCH_SIZE = 512  # evaluation on the target test split
WORKFLOW_CORES = 2  # `snakemake --cores N` of the documented commands (the README's)
PRECISIONS = ("fp32", "bf16")
# an entry's role on the leaderboard: a method class declares proposed / baseline / control; a suite entry may
# mark a variant of the proposed method as an ablation
Role = Literal["proposed", "ablation", "baseline", "control"]
ROLES: tuple[str, ...] = get_args(Role)
RESULTS_DIR, WORK_DIR, LOG_DIR = "results", "work", "logs"  # a suite's folders unless its file says otherwise
# the derived files of a results folder (aggregate and figures write them; the app and DVC read them)
AGGREGATE_FILES = {"leaderboard": "leaderboard.csv", "summary": "summary.json", "jobs": "jobs.tsv", "figures": "figures",
                   # `mpqbench export` (the workflow's aggregate stage): paper tables, their BibTeX, DVC's headline
                   # metrics and the static leaderboard page
                   "table_tex": "leaderboard.tex", "table_md": "leaderboard.md", "table_csv": "leaderboard_entries.csv",
                   "bib": "references.bib", "metrics": "metrics.json", "html": "leaderboard.html"}
EXPORT_FILES = ("table_tex", "table_md", "table_csv", "bib", "metrics", "html")  # the AGGREGATE_FILES export writes
CONFIG_DIR = "config"  # suite files; config/config.yaml is the default suite
DEFAULT_CONFIGFILE = "config/config.yaml"
# "0" keeps a workflow run from printing its comparison with the committed records (mpqbench reproduce prints it)
COMPARE_ENV = "MPQBENCH_COMPARE"
RULES = ("check_data", "pretrain_target", "pretrain_proxy", "search", "finetune", "evaluate", "aggregate", "figures")


# ---- layout ------------------------------------------------------------------------------------------------
CELL_KEYS = ("arch", "budget", "method", "proxy", "seed")


@dataclass(frozen=True)
class Layout:
    """Every path of one suite. ``pattern(kind)`` has Snakemake wildcards; ``path(kind, **cell)`` fills them."""

    suite: str
    target: str
    results_dir: str = RESULTS_DIR
    work_dir: str = WORK_DIR
    log_dir: str = LOG_DIR

    @classmethod
    def of(cls, suite: "SuiteConfig") -> "Layout":
        return cls(suite=suite.suite, target=suite.target.dataset, results_dir=suite.results_dir,
                   work_dir=suite.work_dir, log_dir=suite.log_dir)

    # folders
    @property
    def work(self) -> str:
        return f"{self.work_dir}/{self.suite}"

    @property
    def runs_dir(self) -> str:
        """Where aggregate reads records (every suite that shares ``results_dir``)."""
        return f"{self.results_dir}/runs"

    @property
    def logs(self) -> str:
        return f"{self.log_dir}/{self.suite}"

    @property
    def bench(self) -> str:
        return f"{self.log_dir}/benchmarks/{self.suite}"

    @property
    def cell(self) -> str:
        """One grid cell: method label × arch × budget × proxy label × seed (the target is fixed per suite)."""
        return f"{{arch}}/{{budget}}/{{method}}/{{proxy}}-to-{self.target}-s{{seed}}"

    @property
    def record_in_results(self) -> str:
        """A record's path below ``results_dir`` (the part every suite sharing a results folder has in common)."""
        return f"runs/{self.suite}/{self.cell}.json"

    def pattern(self, kind: str) -> str:
        cell, work = self.cell, self.work
        patterns = {
            "data_check": f"{work}/data-check.json",
            "fp": f"{work}/fp/{{arch}}-{self.target}.pt",
            "teacher": f"{work}/teacher/{{arch}}-{{proxy}}.pt",
            "policy": f"{work}/policies/{cell}.json",
            "search_state": f"{work}/search-state/{cell}",
            "qat": f"{work}/qat/{cell}.pt",
            "record": f"{self.results_dir}/{self.record_in_results}",
            **{kind: f"{self.results_dir}/{name}" for kind, name in AGGREGATE_FILES.items()},
        }
        try:
            return patterns[kind]
        except KeyError:
            raise KeyError(f"unknown path kind {kind!r}; one of {', '.join(patterns)}") from None

    def path(self, kind: str, **wildcards: Any) -> str:
        return self.pattern(kind).format(**wildcards)

    def log(self, rule: str, pattern: str | None = None) -> str:
        return f"{self.logs}/{rule}/{pattern if pattern is not None else self.cell}.log"

    def benchmark(self, rule: str, pattern: str | None = None) -> str:
        return f"{self.bench}/{rule}/{pattern if pattern is not None else self.cell}.tsv"

    def record_of(self, rec: Mapping[str, Any]) -> str:
        """The path of a run record (a record dict, or a flat-frame row with a string ``budget``)."""
        budget = rec["budget"]["name"] if isinstance(rec["budget"], Mapping) else rec["budget"]
        return self.path("record", arch=rec["arch"], budget=budget, method=rec["method"], proxy=rec["proxy"],
                         seed=int(rec["seed"]))


# ---- typed requests ---------------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):  # the shortest text that reads back as the same float
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(_word(v) for v in value)
    return str(value)


@dataclass
class _Request:
    """Options of one ``mpqbench`` subcommand; ``to_argv`` writes every option that is set (None = unset)."""

    command = ""
    _negated = {"progress": "no_progress", "amp": "no_amp"}  # True by default; --no-x when False

    def options(self) -> list[tuple[str, Any]]:
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._negated:
                if value is False:
                    out.append((self._negated[f.name], True))
                continue
            if value is None or value is False:
                continue
            out.append((f.name, value))
        return out

    def to_argv(self) -> list[str]:
        """The options after ``mpqbench <command>`` (``--key value``, bare flags for True)."""
        argv: list[str] = []
        for name, value in self.options():
            if name == "hparams":
                for k, v in sorted(value.items()):
                    argv += ["--hp", f"{k}={json.dumps(v, sort_keys=True, separators=(',', ':'))}"]
            elif value is True:
                argv.append(_flag(name))
            else:
                argv += [_flag(name), _word(value)]
        return argv

    def command_line(self, program: str = "mpqbench") -> str:
        """The whole command, every word shell-quoted (``shlex.join``): paste-safe whatever the values hold."""
        return shlex.join([*shlex.split(program), self.command, *self.to_argv()])


@dataclass
class SearchRequest(_Request):
    """``mpqbench search``: one policy search (see :func:`mpqbench.search.run.run_search`)."""

    command = "search"

    method: str = ""
    arch: str = ""
    proxy: str = ""  # dataset name
    target: str = ""  # dataset name
    budget: str = ""
    seed: int = 0
    label: str | None = None
    proxy_label: str | None = None  # e.g. "fashion-mnist-subset"; defaults to proxy (+"-subset" with a subset)
    proxy_subset: int | None = None
    proxy_input_size: int | None = None
    target_input_size: int | None = None
    width: float = 1.0
    w_candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    a_candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    hparams: dict[str, Any] = field(default_factory=dict)
    teacher: Path | str | None = None
    data_root: str | None = None
    device: str = "auto"
    progress: bool = True
    work_dir: Path | str | None = None
    budget_floor: float = DEFAULT_BUDGET_FLOOR
    precision: str = "fp32"
    length: float | None = None
    curve: str | None = None
    role: str | None = None  # None = the method class's role
    out: Path | str | None = None
    # shorthands for the hyper-parameters of methods that have them (a control has neither); --hp wins
    epochs: float | None = None
    batch_size: int | None = None


@dataclass
class PretrainRequest(_Request):
    command = "pretrain"

    arch: str = ""
    dataset: str = ""
    data_root: str | None = None
    input_size: int | None = None
    width: float = 1.0
    weights: str | None = None
    subset: int | None = None
    epochs: float = 3
    lr: float = 0.1
    batch_size: int = TRAIN_BATCH_SIZE
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    precision: str = "fp32"
    out: Path | str | None = None


@dataclass
class FinetuneRequest(_Request):
    command = "finetune"

    policy: Path | str | None = None
    fp: Path | str | None = None
    dataset: str = ""
    data_root: str | None = None
    subset: int | None = None
    epochs: float = 1
    lr: float = 0.01
    batch_size: int = TRAIN_BATCH_SIZE
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    precision: str = "fp32"
    out: Path | str | None = None


@dataclass
class EvaluateRequest(_Request):
    command = "evaluate"

    ckpt: Path | str | None = None
    policy: Path | str | None = None
    fp: Path | str | None = None
    dataset: str = ""
    data_root: str | None = None
    suite: str = "adhoc"
    batch_size: int = EVAL_BATCH_SIZE
    device: str = "auto"
    progress: bool = True
    precision: str = "fp32"
    out: Path | str | None = None


def default_of(request: type[_Request], name: str) -> Any:
    """The default of one option (the CLI's ``default=``), read off the request class."""
    f = request.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ---- the workflow's requests for one suite ------------------------------------------------------------------
def teacher_path(suite: "SuiteConfig", arch: str, method: str, proxy: str) -> str | None:
    """The FP checkpoint a method label reads as its teacher (proxy teacher or the target FP model), or None."""
    m = suite.entries()[method]
    if not m.teacher:
        return None
    layout = Layout.of(suite)
    return layout.path("fp", arch=arch) if m.teacher_from == "target" else layout.path("teacher", arch=arch, proxy=proxy)


def search_request(suite: "SuiteConfig", *, arch: str, budget: str, method: str, proxy: str, seed: int | str,
                   out: str | None = None) -> SearchRequest:
    """The search of one grid cell exactly as the workflow runs it (its device, precision, work dir)."""
    m = suite.entries()[method]
    a, p = suite.archs[arch], suite.proxies[proxy]
    cand = suite.candidates_for(arch)
    layout = Layout.of(suite)
    cell = dict(arch=arch, budget=budget, method=method, proxy=proxy, seed=seed)
    return SearchRequest(
        method=m.method, label=method, arch=arch, proxy=p.dataset, proxy_label=proxy, proxy_subset=p.subset,
        proxy_input_size=a.proxy_input_size or p.input_size, data_root=suite.data_root_of(p),
        target=suite.target.dataset, target_input_size=a.target_input_size or suite.target.input_size,
        budget=budget, seed=int(seed), width=a.width, w_candidates=list(cand.w), a_candidates=list(cand.a),
        hparams=dict(m.hparams), epochs=m.epochs or suite.search.epochs,
        batch_size=a.search_batch_size or suite.search.batch_size, teacher=teacher_path(suite, arch, method, proxy), device=suite.device, progress=False,
        work_dir=layout.path("search_state", **cell), budget_floor=suite.budget_floor, precision=suite.precision,
        length=m.length, curve=m.curve, role=m.role, out=out,
    )


def pretrain_target_request(suite: "SuiteConfig", arch: str, out: str | None = None) -> PretrainRequest:
    a, stage = suite.archs[arch], suite.pretrain
    return PretrainRequest(
        arch=arch, dataset=suite.target.dataset, data_root=suite.data_root_of(suite.target),
        input_size=a.target_input_size or suite.target.input_size, width=a.width, weights=a.weights,
        subset=stage.subset, epochs=stage.epochs, lr=stage.lr, batch_size=stage.batch_size, seed=stage.seed,
        device=suite.device, progress=False, precision=suite.precision, out=out)


def pretrain_proxy_request(suite: "SuiteConfig", arch: str, proxy: str, out: str | None = None) -> PretrainRequest:
    a, p, stage = suite.archs[arch], suite.proxies[proxy], suite.teacher
    return PretrainRequest(
        arch=arch, dataset=p.dataset, data_root=suite.data_root_of(p), input_size=a.proxy_input_size or p.input_size,
        width=a.width, subset=p.subset, epochs=stage.epochs, lr=stage.lr, batch_size=stage.batch_size,
        seed=suite.pretrain.seed, device=suite.device, progress=False, precision=suite.precision, out=out)


def finetune_request(suite: "SuiteConfig", *, arch: str, budget: str, method: str, proxy: str, seed: int | str,
                     paths: bool = True) -> FinetuneRequest:
    layout, stage = Layout.of(suite), suite.finetune
    cell = dict(arch=arch, budget=budget, method=method, proxy=proxy, seed=seed)
    return FinetuneRequest(
        policy=layout.path("policy", **cell) if paths else None, fp=layout.path("fp", arch=arch) if paths else None,
        dataset=suite.target.dataset, data_root=suite.data_root_of(suite.target), subset=stage.subset,
        epochs=stage.epochs, lr=stage.lr, batch_size=suite.archs[arch].finetune_batch_size or stage.batch_size,
        seed=int(seed), device=suite.device, progress=False, precision=suite.precision,
        out=layout.path("qat", **cell) if paths else None)


def evaluate_request(suite: "SuiteConfig", *, arch: str, budget: str, method: str, proxy: str, seed: int | str,
                     paths: bool = True) -> EvaluateRequest:
    layout = Layout.of(suite)
    cell = dict(arch=arch, budget=budget, method=method, proxy=proxy, seed=seed)
    return EvaluateRequest(
        ckpt=layout.path("qat", **cell) if paths else None, policy=layout.path("policy", **cell) if paths else None,
        fp=layout.path("fp", arch=arch) if paths else None, dataset=suite.target.dataset,
        data_root=suite.data_root_of(suite.target), suite=suite.suite, batch_size=suite.evaluate.batch_size,
        device=suite.device, progress=False, precision=suite.precision,
        out=layout.path("record", **cell) if paths else None)


# ---- reproduce commands ------------------------------------------------------------------------------------
def read_yaml(text: str) -> Any:
    """``yaml.safe_load`` with libyaml's parser when PyYAML has it (same result, ~10x faster: the leaderboard
    reads every suite file to write its reproduce commands)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader


def find_suite_config(suite: str, root: str | Path = ".") -> Path | None:
    """The suite file under ``<root>/config/`` whose ``suite:`` is ``suite`` (None when there is none)."""
    import yaml

    for path in sorted((Path(root) / CONFIG_DIR).glob("*.yaml")):
        try:
            data = read_yaml(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("suite") == suite:
            return path
    return None


def snakemake_command(configfile: str | None, targets: list[str], *, forcerun: tuple[str, ...] = ("search",)) -> str:
    """``snakemake`` that re-creates ``targets`` (re-running ``forcerun`` and everything after it)."""
    argv = ["snakemake", "--cores", str(WORKFLOW_CORES)]
    if configfile is not None:
        argv += ["--configfile", configfile]
    if forcerun:
        argv += ["--forcerun", *forcerun]
    return shlex.join([*argv, "--", *targets])
