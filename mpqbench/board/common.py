"""Names and small helpers every part of the leaderboard shares (see the package docstring)."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from mpqbench.config import DEFAULT_BUDGET_FLOOR  # the window's lower edge when a record does not carry one

RESULTS_ENV = "MPQBENCH_RESULTS"
GROUP: list[str] = ["suite", "arch", "target", "budget"]
ENTRY: list[str] = GROUP + ["method", "proxy"]
RUN_KEY: list[str] = ENTRY + ["seed"]
BUDGET_SLACK = 1e-9  # tolerance on both edges of the budget window
REFERENCE = "edmips-target"  # the reference whose accuracy-vs-search-cost curve sets the equal-accuracy gain
_LENGTH_TOL = 1e-9

__all__ = ["BUDGET_SLACK", "DEFAULT_BUDGET_FLOOR", "ENTRY", "GROUP", "REFERENCE", "RESULTS_ENV", "RUN_KEY",
           "record_role"]


def record_role(rec: Any) -> str:
    """An entry's role (proposed / ablation / baseline / control): what its record says (``search.role``, set
    from the method class or the suite entry when the search ran). Records written before roles were recorded
    ask the suite file of their suite (the entry's role), then the method registry (the class's role); both
    imports happen only then."""
    recorded = (rec.get("search") or {}).get("role") if isinstance(rec.get("search"), dict) else None
    return recorded or _role_of(rec.get("suite"), rec.get("method"), rec.get("base_method") or rec.get("method"))


@functools.lru_cache(maxsize=1024)
def _role_of(suite: str | None, method: str | None, base_method: str | None) -> str:
    from mpqbench.board.reproduce import _resolved, repo_root

    try:
        found = _resolved(suite, str(repo_root())) if suite else None
        if found is not None and method in found[0].entries():
            return found[0].entries()[method].role
        from mpqbench.plugins import discover
        from mpqbench.search import METHODS

        discover()
        if base_method in METHODS:
            return METHODS.get(base_method).role
    except Exception:  # noqa: BLE001 - a broken suite file or plug-in: the record is still shown
        pass
    return "baseline"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _clean(v: Any) -> Any:
    """JSON-safe scalar: NaN/NA -> None, numpy -> Python."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    return v
