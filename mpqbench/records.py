"""Run records (one JSON per suite × method × arch × proxy × target × budget × seed) and provenance.

Records are the source of truth for every published number; ``results/leaderboard.csv`` and
``results/summary.json`` are derived from them (see ``mpqbench.leaderboard``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import mpqbench
from mpqbench.errors import UserError
from mpqbench.policy import Achieved, Budget, LayerBits, SearchInfo

if TYPE_CHECKING:  # records are read (leaderboard, app) without torch
    import torch

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top1: float  # percent
    top5: float  # percent
    loss: float


class FinetuneInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    epochs: float
    wall_s: float
    macs_processed: float


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    run_id: str
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
    fp_top1: float | None
    finetune: FinetuneInfo | None
    env: dict[str, Any]
    git: dict[str, Any]
    status: Literal["ok", "failed"]
    reason: str | None = None
    created_utc: str
    provenance: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"run record {path} does not exist") from None
        except (json.JSONDecodeError, ValidationError) as exc:
            raise UserError(f"run record {path} is malformed ({str(exc).splitlines()[0]}); delete it and re-run its job") from None


def run_id(resolved: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of the resolved run configuration."""
    canon = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def record_relpath(*, suite: str, arch: str, budget: str, method: str, proxy: str, target: str, seed: int) -> Path:
    return Path("runs") / suite / arch / budget / method / f"{proxy}-to-{target}-s{seed}.json"


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
