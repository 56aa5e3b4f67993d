"""Per-layer bit-width policies of runs, long and wide, in module order."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import pandas as pd


def natural_key(name: str) -> tuple:
    """Sort key that puts ``features.2`` before ``features.10`` (module order for our archs)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def policy_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Long table of searchable-layer bits: entry, method, proxy, seed, layer, layer_index, w, a.
    ``layer_index`` is the natural-sort position of the layer name (module order)."""
    rows = []
    for rec in records:
        layers = rec.get("layers") or {}
        for idx, name in enumerate(sorted(layers, key=natural_key)):
            rows.append({"entry": f"{rec['method']}@{rec['proxy']}", "method": rec["method"],
                         "proxy": rec["proxy"], "seed": rec["seed"], "layer": name,
                         "layer_index": idx, "w": layers[name]["w"], "a": layers[name]["a"]})
    return pd.DataFrame(rows, columns=["entry", "method", "proxy", "seed", "layer", "layer_index", "w", "a"])


def policy_table(policies: pd.DataFrame) -> pd.DataFrame:
    """Wide view of :func:`policy_frame`: one row per layer (module order), one ``W/A`` column per
    entry, e.g. ``"3/2"``."""
    if policies.empty:
        return pd.DataFrame()
    cells = policies.assign(bits=policies["w"].astype(str) + "/" + policies["a"].astype(str))
    wide = cells.pivot_table(index="layer", columns="entry", values="bits", aggfunc="first")
    wide = wide.reindex(sorted(wide.index, key=natural_key))
    wide.columns.name = None
    return wide.reset_index()
