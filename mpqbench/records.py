"""Run records (one JSON per suite × method × arch × proxy × target × budget × seed) and provenance.

Records are the source of truth for every published number; ``results/leaderboard.csv`` and
``results/summary.json`` are derived from them (see ``mpqbench.board``). :class:`RunRecord` is the one
definition of a valid record: the workflow writes through it, and every reader (``mpqbench aggregate``,
the leaderboard app) checks files with :func:`read_record` / :func:`check_record`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import mpqbench
from mpqbench.config import _BUDGET_PATTERN
from mpqbench.errors import UserError
from mpqbench.policy import Achieved, Budget, LayerBits, SearchInfo

if TYPE_CHECKING:  # records are read (leaderboard, app) without torch
    import torch

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]


# Numbers the leaderboard computes with: finite (JSON has no NaN/Infinity, Python's json reads them anyway).
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# (section, field, lowest, highest) of the policy models (mpqbench.policy) that a record embeds; None = open end.
# Every number there must be finite; these also have a range.
_RANGES: tuple[tuple[str, str, float | None, float | None], ...] = (
    ("budget", "bitops_g", 0, None),
    *(("achieved", f, 0, None) for f in ("bitops_g_all", "bitops_g_searchable", "size_mb", "avg_w_bits",
                                          "avg_a_bits", "budget_used")),
    *(("search", f, 0, None) for f in ("epochs", "wall_s", "macs_processed", "gpu_hours", "teacher_wall_s",
                                        "teacher_macs", "settled_macs", "steps", "settled_step")),
    ("search", "budget_floor", 0, 1),
    ("search", "length", 0, None),
    ("search", "width", 0, None),
)


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top1: Percent
    top5: Percent
    loss: NonNegative


class FinetuneInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    epochs: NonNegative
    wall_s: NonNegative
    macs_processed: NonNegative


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    run_id: str = Field(min_length=1)
    suite: str
    method: str  # the label, e.g. asga-sam
    base_method: str  # the registered method, e.g. asga
    arch: str
    proxy: str
    target: str
    seed: int
    budget: Budget
    layers: dict[str, LayerBits]
    fixed: dict[str, LayerBits]
    achieved: Achieved
    search: SearchInfo
    metrics: Metrics | None
    fp_top1: Percent | None
    finetune: FinetuneInfo | None
    env: dict[str, Any]
    git: dict[str, Any]
    status: Literal["ok", "failed"]
    reason: str | None = None
    created_utc: str
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("suite", "arch", "target", "method", "proxy")
    @classmethod
    def _canonical_name(cls, v: str) -> str:
        # these names group runs on the leaderboard: "Digits" or " digits" must not form an entry of its own
        if not v or v != v.strip().lower():
            raise ValueError(f"{v!r} is not canonical; expected a non-empty lowercase name without "
                             "surrounding spaces")
        return v

    @field_validator("budget")
    @classmethod
    def _budget_name(cls, v: Budget) -> Budget:
        if not re.fullmatch(_BUDGET_PATTERN, v.name):
            raise ValueError(f"name {v.name!r} is not canonical; expected w<bits>a<bits> in lowercase without "
                             "spaces, e.g. w3a3 or w2.5a2.5")
        return v

    @model_validator(mode="after")
    def _trustworthy(self) -> "RunRecord":
        bad = []
        for section, name, low, high in _RANGES:
            v = getattr(getattr(self, section), name)
            if v is None:
                continue
            if not math.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
                span = f">= {low:g}" if high is None else f"within [{low:g}, {high:g}]"
                bad.append(f"{section}.{name} must be a finite number {span} (got {v!r})")
        if self.status == "ok" and self.metrics is None:
            bad.append("a run with status ok needs metrics (top1, top5, loss)")
        if self.status == "failed" and not (self.reason or "").strip():
            bad.append("a run with status failed needs a reason")
        if bad:
            raise ValueError("; ".join(bad))
        return self

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        path = Path(path)
        if not path.exists():
            raise UserError(f"run record {path} does not exist")
        try:
            return read_record(path)
        except RecordProblem as exc:
            raise UserError(f"run record {path} is malformed ({exc}); delete it and re-run its job") from None


class RecordProblem(ValueError):
    """Why one run record file cannot be used, in one line (without the file's name)."""


def describe_errors(exc: ValidationError) -> str:
    """A pydantic ValidationError of a record as one line: ``where: what (got value)`` joined by ``; ``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] not in ("value_error", "assertion_error"):
            got = repr(err.get("input"))
            msg += f" (got {got[:40] + '...' if len(got) > 43 else got})"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts).replace("\n", " ")


def _non_finite(data: Any) -> str | None:
    """The dotted path of the first NaN/Infinity in parsed JSON (None when there is none)."""
    try:  # the common case, in C: nothing to find
        json.dumps(data, allow_nan=False)
        return None
    except (ValueError, TypeError):
        pass
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return where or "(top level)"
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def check_record(data: Any) -> RunRecord:
    """Validate the parsed JSON of one record (strictly: no "3" for 3, no true for 1), or
    :class:`RecordProblem` saying everything that is wrong with it."""
    if not isinstance(data, dict):
        raise RecordProblem("not a JSON object")
    try:
        rec = RunRecord.model_validate(data, strict=True)
    except ValidationError as exc:
        raise RecordProblem(describe_errors(exc)) from None
    where = _non_finite(data)
    if where is not None:
        raise RecordProblem(f"{where}: NaN/Infinity is not a JSON number; write null or a finite number")
    return rec


def read_record(path: str | Path) -> RunRecord:
    """Read and validate one record file; :class:`RecordProblem` (one line) for anything that is not a
    valid record: a directory, an unreadable or binary file, broken JSON, invalid content."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise RecordProblem("a directory, not a record file") from None
    except OSError as exc:
        raise RecordProblem(f"not readable ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordProblem("not readable JSON (not UTF-8 text; a binary file?)") from None
    except json.JSONDecodeError as exc:
        raise RecordProblem(f"not readable JSON ({exc})") from None
    except RecursionError:
        raise RecordProblem("not readable JSON (nested too deeply)") from None
    return check_record(data)


def run_id(resolved: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of the resolved run configuration."""
    canon = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the checkout that ran the code (``unknown`` outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", "mpqbench", "baselines"],
                cwd=root, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def env_info(device: torch.device | str) -> dict[str, Any]:
    import torch

    from mpqbench.utils import device_name

    device = torch.device(device)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mpqbench": mpqbench.__version__,
        "device": device_name(device),
        "cpu": device_name(torch.device("cpu")).removeprefix("cpu: "),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    import torch

    g = git_info()
    return {
        "git_commit": g["commit"],
        "git_dirty": g["dirty"],
        "mpqbench": mpqbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created_utc": utc_now(),
        "cmd": " ".join(["mpqbench", *sys.argv[1:]]),
    }
