"""The benchmark-suite config: pydantic models that are the single source of truth for a suite file.

A suite file (``config/config.yaml``, ``config/smoke.yaml``, ``config/paper.yaml``) is the Snakemake
``configfile`` and the DVC params file. The Snakefile validates it twice: against the JSON Schema exported
from :class:`SuiteConfig` (``workflow/schemas/config.schema.json``; regenerate with
``python -m mpqbench.config > workflow/schemas/config.schema.json``; a test keeps the two in sync), then
with :func:`load_suite`, which adds the cross-references a schema cannot express and turns every problem
into one readable line per error.

The run grid is :meth:`SuiteConfig.runs`: method label × arch × proxy × budget × seed, where a method
label maps to a registered base method plus hyper-parameters and may restrict its proxies and budgets.
This module imports neither torch nor the method registry, so the workflow can build its DAG cheaply.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from mpqbench.errors import UserError
from mpqbench.runs import Role, DEFAULT_BUDGET_FLOOR, DEFAULT_CANDIDATES, EVAL_BATCH_SIZE, LOG_DIR, RESULTS_DIR, WORK_DIR

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Names that become path components and Snakemake wildcard values.
_LABEL_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
_BUDGET_PATTERN = r"^w[0-9]+(\.[0-9]+)?a[0-9]+(\.[0-9]+)?$"
_DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
LABEL_MAX = 64
Label = Annotated[str, StringConstraints(pattern=_LABEL_PATTERN, max_length=LABEL_MAX)]


def check_label(text: str, what: str = "label") -> str:
    """``text`` if it is a valid name (suite, method label, proxy label), else :class:`UserError`.

    Names become path components, Snakemake wildcards and words of the shell commands the leaderboard
    prints, so they are restricted to lowercase letters, digits, '.', '_' and '-'.
    """
    import re

    if not isinstance(text, str) or len(text) > LABEL_MAX or not re.fullmatch(_LABEL_PATTERN.strip("^$"), text):
        raise UserError(f"{what} {text!r} is not a valid name; use lowercase letters, digits, '.', '_' and '-' "
                        f"(starting with a letter or digit, at most {LABEL_MAX} characters)")
    return text
# A budget named by its uniform reference policy: w3a3, w2.5a2.5 (see mpqbench.cost.parse_budget).
BudgetName = Annotated[str, StringConstraints(pattern=_BUDGET_PATTERN)]
Bits = Annotated[int, Field(ge=1, le=16)]


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a suite file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Candidates(_Strict):
    """Bit-width candidates of the searchable layers."""

    w: list[Bits] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES), min_length=1, description="weight bits")
    a: list[Bits] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES), min_length=1, description="activation bits")


class ArchConfig(_Strict):
    width: float = Field(1.0, gt=0, description="channel-width multiplier")
    proxy_input_size: int | None = Field(None, ge=8, description="override every proxy's input size for this arch")
    target_input_size: int | None = Field(None, ge=8, description="override the target's input size for this arch")
    candidates: Candidates | None = Field(None, description="override the suite's bit candidates for this arch")
    budgets: list[BudgetName] | None = Field(
        None, min_length=1, description="override the suite's budgets for this arch (an architecture whose accuracy "
        "collapses at the suite's budgets, or where policies do not matter there); an entry's own `budgets` keep "
        "those of this list")
    weights: str | None = Field(
        None,
        description="local FP state-dict file (or 'torchvision' = the torch hub cache only) that initialises "
        "this arch's target FP start model (proxy teachers train from scratch)",
    )
    search_batch_size: int | None = Field(None, ge=1, description="override search.batch_size for this arch")
    finetune_batch_size: int | None = Field(None, ge=1, description="override finetune.batch_size for this arch")


class DatasetConfig(_Strict):
    dataset: str = Field(description="registered dataset name (`mpqbench info` lists them)")
    input_size: int | None = Field(None, ge=8, description="pixels; null = the dataset's native size")
    data_root: str | None = Field(None, description="dataset root; null = the suite's data_root")


class TargetConfig(DatasetConfig):
    pass


class ProxyConfig(DatasetConfig):
    subset: int | None = Field(None, ge=1, description="search on a seeded, stratified subset of N train images")


class MethodConfig(_Strict):
    """One leaderboard entry: a registered base method with fixed hyper-parameters."""

    method: str = Field(description="registered base method (`mpqbench info` lists them)")
    hparams: dict[str, Any] = Field(default_factory=dict, description="passed as --hp key=value")
    proxies: list[Label] | None = Field(None, min_length=1, description="proxy labels; null = default_proxies")
    budgets: list[BudgetName] | None = Field(None, min_length=1, description="null = all budgets")
    archs: list[Label] | None = Field(None, min_length=1, description="null = all archs")
    teacher: bool | None = Field(
        None,
        description="set from the base method's needs_teacher when the suite is resolved against the registry "
        "(mpqbench.plugins.resolve_suite); leave it out",
    )
    role: Role | None = Field(
        None,
        description="the entry's role on the leaderboard; null = the method's (its class attribute). Mark variants "
        "of the proposed method that remove a component 'ablation'",
    )
    teacher_from: Literal["proxy", "target"] | None = Field(
        None,
        description="set from the base method's teacher_from when the suite is resolved: proxy = an FP model "
        "pretrained on the proxy (GMPQ, HAWQ on the proxy); target = the target FP start model that every "
        "fine-tune uses (hawq-target, methods that start from the target-trained model); leave it out",
    )
    epochs: float | None = Field(None, gt=0, description="override search.epochs for this entry")
    lengths: list[Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="extra entries '<label>-len<L>' searching L x this entry's epochs (own full schedule), on the "
        "entry's first proxy, for the accuracy-vs-search-cost curve; the entry itself is length 1",
    )
    # set on the generated curve entries only (see SuiteConfig.entries); not for suite files
    length: float | None = Field(None, gt=0, description="internal: this entry's length (curve entries)")
    curve: Label | None = Field(None, description="internal: the length-1 entry this curve entry belongs to")


class StageConfig(_Strict):
    epochs: int = Field(ge=0, description="0 = keep the initial weights (pretrain from `weights` only)")
    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    subset: int | None = Field(None, ge=1, description="train on a seeded, stratified subset of N images")


class PretrainConfig(StageConfig):
    seed: int = Field(0, ge=0, description="one FP start model per (arch, dataset), shared by all seeds")


class SearchConfig(_Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)


class EvaluateConfig(_Strict):
    batch_size: int = Field(EVAL_BATCH_SIZE, ge=1)


class RuleResources(_Strict):
    """Snakemake's standard resource names, so executor plugins understand them."""

    threads: int = Field(1, ge=1)
    mem_mb: int = Field(2000, ge=1)
    runtime: int = Field(60, ge=1, description="minutes")
    gpu: int = Field(0, ge=0)


class ResourcesConfig(_Strict):
    check_data: RuleResources = Field(default_factory=lambda: RuleResources(mem_mb=1000, runtime=10))
    pretrain_target: RuleResources = Field(default_factory=RuleResources)
    pretrain_proxy: RuleResources = Field(default_factory=RuleResources)
    search: RuleResources = Field(default_factory=RuleResources)
    finetune: RuleResources = Field(default_factory=RuleResources)
    evaluate: RuleResources = Field(default_factory=lambda: RuleResources(runtime=30))
    aggregate: RuleResources = Field(default_factory=lambda: RuleResources(mem_mb=1000, runtime=10))
    figures: RuleResources = Field(default_factory=lambda: RuleResources(mem_mb=1000, runtime=10))


class Run(NamedTuple):
    """One cell of the grid: one search, one fine-tune, one evaluation, one run record."""

    method: str  # label
    arch: str
    budget: str
    proxy: str  # label
    seed: int


class SuiteConfig(_Strict):
    """A benchmark suite: what to search, on which proxies, for which target, with which budgets."""

    model_config = ConfigDict(extra="forbid", title="mpqbench suite config")

    suite: Label = Field(description="suite name; records go to <results_dir>/runs/<suite>/")
    description: str = ""
    anchors: dict[str, Any] = Field(default_factory=dict, description="YAML anchors (&name) reused elsewhere in the file; not read otherwise")
    device: Annotated[str, StringConstraints(pattern=_DEVICE_PATTERN)] = Field(
        "auto", description="--device of every job: auto, cpu, mps, cuda, cuda:1, ...")
    data_root: str | None = Field(None, description="default dataset root; null = mpqbench's default")
    results_dir: str = Field(RESULTS_DIR, description="committed records, leaderboard.csv, summary.json, figures/")
    work_dir: str = Field(WORK_DIR, description="git-ignored intermediates (checkpoints, policies) go to <work_dir>/<suite>/")
    log_dir: str = Field(LOG_DIR, description="job logs; benchmark TSVs in <log_dir>/benchmarks/")
    ddp_launcher: str | None = Field(
        None,
        description="command that replaces `mpqbench` for pretrain and finetune jobs, e.g. "
        "'torchrun --standalone --nproc-per-node=4 -m mpqbench' (multi-GPU DDP); null = plain mpqbench",
    )
    archs: dict[Label, ArchConfig] = Field(min_length=1)
    target: TargetConfig
    proxies: dict[Label, ProxyConfig] = Field(min_length=1, description="proxy label -> dataset (+ subset)")
    default_proxies: list[Label] | None = Field(
        None, min_length=1, description="proxies of methods that list none; null = all proxies"
    )
    budgets: list[BudgetName] = Field(min_length=1)
    budget_floor: float = Field(
        DEFAULT_BUDGET_FLOOR, ge=0, le=1,
        description="budget window [budget_floor, 1] x budget: methods that choose how much to spend aim inside it, "
        "and the leaderboard ranks only entries inside it (budget-matched)",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="numeric precision of search, fine-tune and evaluation forward passes (bf16 = autocast; "
        "quantizer steps, rounding, BitOPs and ASGA's ρ/h stay fp32)",
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    methods: dict[Label, MethodConfig] = Field(min_length=1, description="leaderboard label -> base method")
    candidates: Candidates = Field(default_factory=Candidates)
    pretrain: PretrainConfig = Field(description="FP start model on the target (shared by every fine-tune)")
    teacher: StageConfig = Field(description="FP teacher on a proxy, for methods that need one")
    search: SearchConfig
    finetune: StageConfig = Field(description="QAT fine-tune on the target; identical for every method")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _cross_references(self) -> "SuiteConfig":
        def check(kind: str, where: str, names: list[str] | None, known: dict | list) -> None:
            unknown = [n for n in names or [] if n not in known]
            if unknown:
                raise ValueError(f"{where}: unknown {kind} {', '.join(map(repr, unknown))}; "
                                 f"defined in this file: {', '.join(known)}")

        check("proxy", "default_proxies", self.default_proxies, self.proxies)
        for label, m in self.methods.items():
            if m.length is not None or m.curve is not None:
                raise ValueError(f"methods.{label}: 'length' and 'curve' are set by the workflow for curve entries; "
                                 "use 'lengths: [0.5, 2]' on the entry instead")
            for length in m.lengths or []:
                if f"{label}-len{length:g}" in self.methods:
                    raise ValueError(f"methods.{label}.lengths: the curve entry {label}-len{length:g} clashes with a "
                                     "method label of the same name; rename one")
            if len(set(m.lengths or [])) != len(m.lengths or []) or 1 in (m.lengths or []):
                raise ValueError(f"methods.{label}.lengths: {m.lengths} lists a length twice or 1 (the entry itself)")
            check("proxy", f"methods.{label}.proxies", m.proxies, self.proxies)
            check("budget", f"methods.{label}.budgets", m.budgets, self.all_budgets())
            check("arch", f"methods.{label}.archs", m.archs, self.archs)
        lists = [("seeds", self.seeds), ("budgets", self.budgets)]
        lists += [(f"archs.{a}.budgets", c.budgets) for a, c in self.archs.items() if c.budgets is not None]
        for name, values in lists:
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} lists a value twice; list each once")
        return self

    # ---- derived views used by the workflow ---------------------------------------------------------------
    def entries(self) -> dict[str, MethodConfig]:
        """Every method label of the grid: the suite's ``methods`` and, after each one with ``lengths``, its
        curve entries ``<label>-len<L>`` (epochs = L × the entry's epochs, on its first proxy)."""
        out: dict[str, MethodConfig] = {}
        for label, m in self.methods.items():
            out[label] = m
            base_epochs = m.epochs or self.search.epochs
            for length in m.lengths or []:
                name = f"{label}-len{length:g}"
                out[name] = m.model_copy(update={
                    "epochs": length * base_epochs, "lengths": None, "length": length, "curve": label,
                    "proxies": [self._proxies_of(m)[0]]})
        return out

    def _proxies_of(self, m: MethodConfig) -> list[str]:
        return m.proxies or self.default_proxies or list(self.proxies)

    def method_proxies(self, label: str) -> list[str]:
        return self._proxies_of(self.entries()[label])

    def runs(self) -> list[Run]:
        """Every (method, arch, budget, proxy, seed) cell, in config order."""
        out = []
        for label, m in self.entries().items():
            for arch in m.archs or self.archs:
                for budget in [b for b in m.budgets or self.budgets_for(arch) if b in self.budgets_for(arch)]:
                    for proxy in self.method_proxies(label):
                        out.extend(Run(label, arch, budget, proxy, seed) for seed in self.seeds)
        return out

    def teachers(self) -> list[tuple[str, str]]:
        """(arch, proxy label) pairs that need an FP teacher pretrained on the proxy."""
        entries = self.entries()
        return sorted({(r.arch, r.proxy) for r in self.runs()
                       if entries[r.method].teacher and entries[r.method].teacher_from == "proxy"})

    def candidates_for(self, arch: str) -> Candidates:
        return self.archs[arch].candidates or self.candidates

    def budgets_for(self, arch: str) -> list[str]:
        """The budgets ``arch`` runs at: its own list, else the suite's."""
        return list(self.archs[arch].budgets or self.budgets)

    def all_budgets(self) -> list[str]:
        """Every budget some arch runs at (the suite's first, then the archs' own, each once)."""
        return list(dict.fromkeys([*self.budgets, *(b for a in self.archs for b in self.budgets_for(a))]))

    def data_root_of(self, ds: DatasetConfig) -> str | None:
        return ds.data_root or self.data_root

    def datasets(self) -> list[tuple[str, str | None]]:
        """(dataset, data root) pairs the grid reads: the target and every proxy some run uses."""
        used = {r.proxy for r in self.runs()}
        pairs = {(self.target.dataset, self.data_root_of(self.target))}
        pairs |= {(p.dataset, self.data_root_of(p)) for label, p in self.proxies.items() if label in used}
        return sorted(pairs, key=lambda t: (t[0], t[1] or ""))


_PATTERN_HINTS = {
    _LABEL_PATTERN: " (a name: lowercase letters, digits, '.', '_' and '-')",
    _BUDGET_PATTERN: " (a uniform reference such as w3a3 or w2.5a2.5)",
    _DEVICE_PATTERN: " (auto, cpu, mps, cuda or cuda:N)",
}


def format_errors(exc: ValidationError) -> str:
    """One line per problem: ``<dotted.path>: <message>``."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?); workflow/schemas/config.schema.json lists the allowed keys"
        elif err["type"] == "string_pattern_mismatch":
            msg += _PATTERN_HINTS.get(err.get("ctx", {}).get("pattern", ""), "")
        lines.append(f"{where}: {msg}" if where else msg)
    return "\n".join(lines)


def load_suite(data: dict[str, Any], *, source: str = "config") -> SuiteConfig:
    """Validate a suite config (a parsed YAML mapping); every problem → :class:`UserError`."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of suite settings, got {type(data).__name__}")
    try:
        return SuiteConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source} is malformed:\n{format_errors(exc)}") from None


def read_suite_file(path: str | Path) -> dict[str, Any]:
    """A suite file parsed as YAML, refusing what a plain YAML load would silently accept: a key given twice in
    one mapping (the last value would win) → :class:`UserError` naming the key and the line."""
    import yaml

    class _Strict(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"{path}: the key {key!r} is given twice in one mapping (lines {seen[key] + 1} and "
                                f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=deep)

    _Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_Strict)  # noqa: S506 - a SafeLoader subclass
    except OSError as exc:
        raise UserError(f"cannot read the suite file {path} ({exc.strerror}); check the path") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a suite file, as committed in workflow/schemas/."""
    return {"$schema": JSON_SCHEMA_DIALECT, **SuiteConfig.model_json_schema()}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m mpqbench.config > workflow/schemas/config.schema.json
    sys.stdout.write(schema_text())
