"""Leaderboard logic: load run records, flatten, filter, rank, Pareto front, efficiency gains.

Pure pandas (no Streamlit, no torch at import time), shared by ``app/leaderboard.py`` and by
``mpqbench aggregate`` (which writes ``results/leaderboard.csv`` and ``results/summary.json``).

Vocabulary
    run     one record = (suite, method, arch, proxy, target, budget, seed); one row of the flat frame.
    group   (suite, arch, target, budget): the cell inside which methods compete.
    entry   (group, method, proxy): one competitor, aggregated over its seeds. The same method searched
            on two proxies (e.g. digits and an in-domain target subset) is two entries.

Conventions
    top-1 in percent; BitOPs in G (1e9); search cost as MACs processed (hardware independent) or wall s.
    Efficiency gain of entry M over entry B (same group) = cost_B / cost_M - 1, reported with the
    target-accuracy difference mean_top1(M) - mean_top1(B) in percentage points.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mpqbench.errors import UserError

RESULTS_ENV = "MPQBENCH_RESULTS"
PROPOSED: tuple[str, ...] = ("asga", "gmpq-asga")
ABLATIONS: tuple[str, ...] = ("asga-sam", "asga-sam-align")
GROUP: list[str] = ["suite", "arch", "target", "budget"]
ENTRY: list[str] = GROUP + ["method", "proxy"]
RUN_KEY: list[str] = ENTRY + ["seed"]

# The flat frame / leaderboard.csv: column -> dtype, in output order. Units are in the names.
COLUMNS: dict[str, str] = {
    "suite": "string",
    "arch": "string",
    "target": "string",
    "budget": "string",
    "method": "string",
    "proxy": "string",
    "seed": "Int64",
    "base_method": "string",
    "status": "string",
    "reason": "string",
    "top1_pct": "Float64",
    "top5_pct": "Float64",
    "loss": "Float64",
    "fp_top1_pct": "Float64",
    "budget_bitops_g": "Float64",
    "bitops_g_all": "Float64",
    "bitops_g_searchable": "Float64",
    "size_mb": "Float64",
    "avg_w_bits": "Float64",
    "avg_a_bits": "Float64",
    "n_layers": "Int64",
    "search_epochs": "Float64",
    "search_wall_s": "Float64",
    "search_macs_processed": "Float64",
    "search_gpu_hours": "Float64",
    "search_device": "string",
    "search_repaired": "boolean",
    "search_settled_step": "Int64",
    "search_macs_to_settle": "Float64",
    "search_hparams": "string",
    "proxy_dataset": "string",
    "proxy_subset": "Int64",
    "proxy_input_size": "Int64",
    "target_input_size": "Int64",
    "width": "Float64",
    "w_candidates": "string",
    "a_candidates": "string",
    "teacher_wall_s": "Float64",
    "teacher_macs": "Float64",
    "finetune_epochs": "Float64",
    "finetune_wall_s": "Float64",
    "finetune_macs_processed": "Float64",
    "git_commit": "string",
    "git_dirty": "boolean",
    "mpqbench": "string",
    "python": "string",
    "torch": "string",
    "device": "string",
    "cpu": "string",
    "threads": "Int64",
    "cuda": "string",
    "created_utc": "string",
    "run_id": "string",
    "record_path": "string",
}

# (column, path inside the record); a missing key gives NA.
_FLAT_PATHS: dict[str, tuple[str, ...]] = {
    "top1_pct": ("metrics", "top1"),
    "top5_pct": ("metrics", "top5"),
    "loss": ("metrics", "loss"),
    "fp_top1_pct": ("fp_top1",),
    "budget_bitops_g": ("budget", "bitops_g"),
    "bitops_g_all": ("achieved", "bitops_g_all"),
    "bitops_g_searchable": ("achieved", "bitops_g_searchable"),
    "size_mb": ("achieved", "size_mb"),
    "avg_w_bits": ("achieved", "avg_w_bits"),
    "avg_a_bits": ("achieved", "avg_a_bits"),
    "search_epochs": ("search", "epochs"),
    "search_wall_s": ("search", "wall_s"),
    "search_macs_processed": ("search", "macs_processed"),
    "search_gpu_hours": ("search", "gpu_hours"),
    "search_device": ("search", "device"),
    "search_repaired": ("search", "repaired"),
    "search_settled_step": ("search", "settled_step"),
    "search_macs_to_settle": ("search", "settled_macs"),
    "proxy_dataset": ("search", "proxy_dataset"),
    "proxy_subset": ("search", "proxy_subset"),
    "proxy_input_size": ("search", "proxy_input_size"),
    "target_input_size": ("search", "target_input_size"),
    "width": ("search", "width"),
    "teacher_wall_s": ("search", "teacher_wall_s"),
    "teacher_macs": ("search", "teacher_macs"),
    "finetune_epochs": ("finetune", "epochs"),
    "finetune_wall_s": ("finetune", "wall_s"),
    "finetune_macs_processed": ("finetune", "macs_processed"),
    "git_commit": ("git", "commit"),
    "git_dirty": ("git", "dirty"),
    "mpqbench": ("env", "mpqbench"),
    "python": ("env", "python"),
    "torch": ("env", "torch"),
    "device": ("env", "device"),
    "cpu": ("env", "cpu"),
    "threads": ("env", "threads"),
    "cuda": ("env", "cuda"),
}


# --------------------------------------------------------------------------------------------------
# Locating and loading results


def resolve_results_dir(default: str | os.PathLike) -> Path:
    """The results folder: ``$MPQBENCH_RESULTS`` when set, else ``default`` (the app passes the
    ``results/`` folder next to itself, so it works from any working directory)."""
    override = os.environ.get(RESULTS_ENV, "").strip()
    return Path(override).expanduser() if override else Path(default)


def record_relpath(rec: Mapping[str, Any]) -> str:
    """Canonical location of a record below the repository root (also its Snakemake target)."""
    from mpqbench import records

    rel = records.record_relpath(suite=rec["suite"], arch=rec["arch"], budget=rec["budget"]["name"],
                                 method=rec["method"], proxy=rec["proxy"], target=rec["target"], seed=rec["seed"])
    return (Path("results") / rel).as_posix()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_record(rec: Any) -> list[str]:
    """What is wrong with one run record (empty list = usable). Checks what the leaderboard needs."""
    if not isinstance(rec, dict):
        return ["not a JSON object"]
    problems = []
    if rec.get("schema_version") != 1:
        problems.append(f"schema_version is {rec.get('schema_version')!r}, expected 1")
    for key in ("run_id", "suite", "method", "arch", "proxy", "target"):
        if not isinstance(rec.get(key), str) or not rec.get(key):
            problems.append(f"'{key}' must be a non-empty string")
    if not isinstance(rec.get("seed"), int) or isinstance(rec.get("seed"), bool):
        problems.append("'seed' must be an integer")
    budget = rec.get("budget")
    if not isinstance(budget, dict) or not isinstance(budget.get("name"), str):
        problems.append("'budget' must be {name, bitops_g}")
    status = rec.get("status")
    if status not in ("ok", "failed"):
        problems.append(f"'status' is {status!r}, expected 'ok' or 'failed'")
    if status == "ok":
        metrics = rec.get("metrics")
        if not isinstance(metrics, dict) or not _is_number(metrics.get("top1")):
            problems.append("'metrics.top1' must be a number for a run with status ok")
        achieved = rec.get("achieved")
        if not isinstance(achieved, dict) or not _is_number(achieved.get("bitops_g_all")):
            problems.append("'achieved.bitops_g_all' must be a number for a run with status ok")
        search = rec.get("search")
        if not isinstance(search, dict) or not _is_number(search.get("macs_processed")):
            problems.append("'search.macs_processed' must be a number for a run with status ok")
    for part in ("layers", "fixed"):
        layers = rec.get(part, {})
        if not isinstance(layers, dict) or not all(
            isinstance(b, dict) and isinstance(b.get("w"), int) and isinstance(b.get("a"), int)
            for b in layers.values()
        ):
            problems.append(f"'{part}' must map layer names to {{w: int, a: int}}")
    return problems


def load_records(runs_dir: str | os.PathLike, *, strict: bool = False) -> tuple[list[dict], list[str]]:
    """Read every ``**/*.json`` below ``runs_dir`` (sorted by path).

    Returns (valid records, problems). Unreadable/invalid files and duplicate runs are skipped and
    described in ``problems`` (one line each, naming the file). With ``strict=True`` any problem
    raises :class:`UserError` instead. Each record gets ``_path`` (path relative to ``runs_dir``).
    """
    runs_dir = Path(runs_dir)
    records: list[dict] = []
    problems: list[str] = []
    seen: dict[tuple, str] = {}
    for path in sorted(runs_dir.rglob("*.json")):
        rel = path.relative_to(runs_dir).as_posix()
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{rel}: not readable JSON ({exc})")
            continue
        errs = validate_record(rec)
        if errs:
            problems.append(f"{rel}: " + "; ".join(errs))
            continue
        key = (rec["suite"], rec["arch"], rec["target"], rec["budget"]["name"], rec["method"],
               rec["proxy"], rec["seed"])
        if key in seen:
            problems.append(f"{rel}: duplicate of {seen[key]} (same suite/arch/target/budget/method/proxy/seed)")
            continue
        seen[key] = rel
        records.append({**rec, "_path": rel})
    if strict and problems:
        raise UserError(
            f"{len(problems)} bad run record(s) under {runs_dir}: " + " | ".join(problems)
            + "; fix or delete these files and run again"
        )
    return records, problems


def _get(rec: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = rec
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Enforce COLUMNS (order and dtypes) and the canonical row order."""
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    df = df[list(COLUMNS)].copy()
    for col, dtype in COLUMNS.items():
        if dtype == "boolean" and df[col].dtype == object:
            df[col] = df[col].map(lambda v: pd.NA if v is None or v is pd.NA or v != v else bool(v))
        df[col] = df[col].astype(dtype)
    return df.sort_values(RUN_KEY + ["run_id"], kind="mergesort", ignore_index=True)


def records_to_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Flatten run records to one row per record with the columns of :data:`COLUMNS`, sorted by
    (suite, arch, target, budget, method, proxy, seed). Deterministic: the same records give the
    same frame in any input order."""
    rows = []
    for rec in records:
        row: dict[str, Any] = {key: rec.get(key) for key in ("suite", "arch", "target", "method", "proxy",
                                                            "seed", "status", "reason", "run_id",
                                                            "created_utc")}
        row["budget"] = rec["budget"]["name"]
        row["base_method"] = rec.get("base_method") or rec.get("method")
        for col, path in _FLAT_PATHS.items():
            value = _get(rec, path)
            row[col] = None if isinstance(value, (dict, list)) else value
        if row["cuda"] is not None:
            row["cuda"] = str(row["cuda"])
        hparams = _get(rec, ("search", "hparams"))
        row["search_hparams"] = _canonical_json(hparams) if hparams is not None else None
        for side in ("w", "a"):  # the candidate bit-widths the search chose from, e.g. "2,3,4"
            cands = _get(rec, ("provenance", "resolved", "candidates", side))
            row[f"{side}_candidates"] = ",".join(map(str, cands)) if isinstance(cands, list) else None
        row["n_layers"] = len(rec.get("layers") or {})
        row["record_path"] = record_relpath(rec)
        rows.append(row)
    return _typed(pd.DataFrame(rows, columns=list(COLUMNS)))


def frame_to_csv(df: pd.DataFrame) -> str:
    """The CSV text of a flat frame: fixed columns, sorted rows, ``\\n`` line ends, floats in
    shortest round-trip form, missing values empty. Equal frames give byte-identical text."""
    return _typed(df.copy()).to_csv(index=False, lineterminator="\n")


def write_leaderboard_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``results/leaderboard.csv`` atomically (byte-identical on regeneration)."""
    from mpqbench.utils import atomic_path  # lazy: mpqbench.utils imports torch

    text = frame_to_csv(df)
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode())


def read_leaderboard_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a leaderboard CSV back into the typed flat frame; malformed file -> UserError."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {path}: {exc}; regenerate it with `mpqbench aggregate`") from exc
    required = ["suite", "arch", "target", "budget", "method", "proxy", "seed", "status", "top1_pct"]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; regenerate it with `mpqbench aggregate`")
    df = raw.copy()
    try:
        for col, dtype in COLUMNS.items():
            if col not in df:
                continue
            if dtype == "boolean":
                df[col] = df[col].map({"True": True, "False": False, "true": True, "false": False})
            elif dtype in ("Int64", "Float64"):
                df[col] = pd.to_numeric(df[col], errors="raise")
        return _typed(df)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} has a malformed value ({exc}); regenerate it with `mpqbench aggregate`") from exc


@dataclass
class Results:
    """What the app shows: the flat frame, the records by run_id (for policies), and what went wrong.

    ``error`` is set when nothing usable was found (the app shows it instead of the board), with
    ``error_kind`` "empty" (no results yet), "missing" (no such folder) or "malformed";
    ``problems`` lists files that were skipped while the rest loaded.
    """

    frame: pd.DataFrame
    records: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    source: str = ""
    error: str | None = None
    error_kind: str | None = None


def results_fingerprint(results_dir: str | os.PathLike) -> tuple:
    """A cheap cache key that changes when any results file is added, removed or modified."""
    results_dir = Path(results_dir)
    files = sorted(results_dir.glob("runs/**/*.json")) + [results_dir / "leaderboard.csv"]
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())


def load_results(results_dir: str | os.PathLike) -> Results:
    """Load ``results_dir/runs/**.json`` (the source of truth) or, when there are no records,
    ``results_dir/leaderboard.csv``. Never raises for bad data: problems land in the result."""
    results_dir = Path(results_dir)
    empty = records_to_frame([])
    how = (f"run `snakemake --cores 8 all` to produce results, or set {RESULTS_ENV} "
           f"to a folder holding runs/**/*.json or leaderboard.csv")
    if not results_dir.is_dir():
        return Results(empty, error=f"The results folder {results_dir} does not exist; {how}.",
                       error_kind="missing")
    runs_dir = results_dir / "runs"
    records, problems = load_records(runs_dir) if runs_dir.is_dir() else ([], [])
    if records:
        return Results(records_to_frame(records), {r["run_id"]: r for r in records}, problems,
                       source=str(runs_dir))
    csv = results_dir / "leaderboard.csv"
    if csv.is_file():
        try:
            frame = read_leaderboard_csv(csv)
        except UserError as exc:
            return Results(empty, problems=problems, error=str(exc), error_kind="malformed")
        if len(frame):
            return Results(frame, problems=problems, source=str(csv))
    if problems:
        return Results(empty, problems=problems, error_kind="malformed",
                       error=f"No valid run records under {runs_dir}: {len(problems)} file(s) are malformed.")
    return Results(empty, error=f"No results in {results_dir} yet; {how}.", error_kind="empty")


# --------------------------------------------------------------------------------------------------
# Filtering, ranking, Pareto front, gains


def filter_frame(df: pd.DataFrame, *, include_failed: bool = False,
                 **criteria: str | Sequence[str] | None) -> pd.DataFrame:
    """Rows matching every criterion (column=value or column=[values]; None = no filter).
    Failed runs are dropped unless ``include_failed``."""
    mask = pd.Series(True, index=df.index)
    for col, wanted in criteria.items():
        if wanted is None:
            continue
        if col not in df:
            raise KeyError(f"unknown column {col!r}")
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        mask &= df[col].isin(values)
    if not include_failed:
        mask &= df["status"] == "ok"
    return df[mask]


def role(method: str) -> str:
    """proposed / ablation / baseline, for display and for choosing gain pairs."""
    return "proposed" if method in PROPOSED else "ablation" if method in ABLATIONS else "baseline"


def t_quantile(confidence: float, dof: int | np.ndarray) -> float | np.ndarray:
    """Two-sided Student-t critical value (e.g. 4.303 for 95 % and 2 degrees of freedom)."""
    from scipy.special import stdtrit

    q = stdtrit(dof, 0.5 + confidence / 2)
    return float(q) if np.ndim(q) == 0 else q


_MEAN_COLS = {
    "fp_top1_pct": "fp_top1_pct",
    "budget_bitops_g": "budget_bitops_g",
    "bitops_g_all": "bitops_g_all",
    "bitops_g_searchable": "bitops_g_searchable",
    "size_mb": "size_mb",
    "avg_w_bits": "avg_w_bits",
    "avg_a_bits": "avg_a_bits",
    "search_macs_processed": "search_macs_processed",
    "search_wall_s": "search_wall_s",
    "search_gpu_hours": "search_gpu_hours",
    "search_macs_to_settle": "search_macs_to_settle",
    "teacher_macs": "teacher_macs",
    "teacher_wall_s": "teacher_wall_s",
    "finetune_wall_s": "finetune_wall_s",
}


def rank_methods(df: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """One row per entry (suite, arch, target, budget, method, proxy), aggregated over seeds.

    Statistics use only runs with status ok: ``top1_mean``, ``top1_std`` (sample, ddof=1),
    ``top1_ci`` = t-based half-width of the ``confidence`` interval of the mean (NA for one seed),
    and the mean of every cost column. ``rank`` = 1 + number of entries in the group with a higher
    mean top-1 (ties share a rank; entries without an ok run get no rank). Failed runs only show
    up in ``n_failed`` and ``status``.
    """
    cols = ENTRY + ["rank", "role", "n_seeds", "n_failed", "status", "seeds", "top1_mean", "top1_std",
                    "top1_ci", *_MEAN_COLS, "repaired", "run_ids"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df.sort_values(RUN_KEY + ["run_id"], kind="mergesort")  # float sums depend on order: fix it
    keys = df[ENTRY].astype(object)
    num = df[["top1_pct", *_MEAN_COLS.values()]].astype("float64")
    ok = (df["status"] == "ok").to_numpy()
    ok_num = num.copy()
    ok_num.loc[~ok, :] = np.nan  # failed runs drop out of every statistic
    grouped = pd.concat([keys, ok_num], axis=1).groupby(ENTRY, sort=True, dropna=False)
    out = grouped.agg(n_seeds=("top1_pct", "count"), top1_mean=("top1_pct", "mean"),
                      top1_std=("top1_pct", "std"), **{c: (src, "mean") for c, src in _MEAN_COLS.items()})
    extra = pd.concat([keys, pd.DataFrame({
        "ok": ok, "seed_ok": df["seed"].astype("float64").where(ok),
        "repaired_ok": df["search_repaired"].fillna(False).astype(bool).to_numpy() & ok,
        "run_id": df["run_id"].astype(str)}, index=df.index)], axis=1).groupby(ENTRY, sort=True, dropna=False)
    out["n_runs"] = extra.size()
    out["repaired"] = extra["repaired_ok"].any()
    out["seeds"] = extra["seed_ok"].agg(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna())))
    out["run_ids"] = extra["run_id"].agg(",".join)
    out = out.reset_index()
    out["n_failed"] = out["n_runs"] - out["n_seeds"]
    out["status"] = ["ok" if f == 0 else f"{n} ok, {f} failed" for n, f in zip(out["n_seeds"], out["n_failed"])]
    out["role"] = out["method"].map(role)
    n = out["n_seeds"].to_numpy()
    dof = np.where(n > 1, n - 1, 1)
    out["top1_ci"] = np.where(n > 1, t_quantile(confidence, dof) * out["top1_std"] / np.sqrt(np.maximum(n, 1)),
                              np.nan)
    out.loc[n < 2, "top1_std"] = np.nan
    out["rank"] = out.groupby(GROUP, sort=False)["top1_mean"].rank(method="min", ascending=False).astype("Int64")
    out = out.sort_values(GROUP + ["rank", "method", "proxy"], na_position="last", kind="mergesort")
    return out[cols].reset_index(drop=True)


def pareto_mask(cost: Sequence[float], gain: Sequence[float]) -> np.ndarray:
    """True where no other point has cost <= and gain >= with at least one strict (minimise
    ``cost``, maximise ``gain``). Points with a missing value are never on the front."""
    cost = np.asarray(cost, dtype=float)
    gain = np.asarray(gain, dtype=float)
    valid = np.isfinite(cost) & np.isfinite(gain)
    mask = np.zeros(len(cost), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (cost <= cost[i]) & (gain >= gain[i]) & ((cost < cost[i]) | (gain > gain[i]))
        mask[i] = not others.any()
    return mask


def pareto_front(ranked: pd.DataFrame, *, x: str = "bitops_g_all", y: str = "top1_mean",
                 by: Sequence[str] = ("suite", "arch", "target")) -> pd.Series:
    """Boolean Series (index of ``ranked``): the entry is on the accuracy-vs-``x`` Pareto front of
    its (suite, arch, target), across budgets."""
    out = pd.Series(False, index=ranked.index, dtype=bool)
    for _, part in ranked.groupby(list(by), sort=False):
        out[part.index] = pareto_mask(part[x], part[y])
    return out


def efficiency_gain(cost_baseline: float, cost_method: float) -> float:
    """cost_B / cost_M - 1 (1.5 = the method needs 2.5x less search compute); NaN when undefined."""
    if not (math.isfinite(cost_baseline) and math.isfinite(cost_method)) or cost_method <= 0:
        return math.nan
    return cost_baseline / cost_method - 1.0


def _float(v: Any) -> float:
    v = _clean(v)
    return math.nan if v is None else float(v)


def _with_teacher(row: Mapping[str, Any]) -> float:
    return float(row["search_macs_processed"]) + (_clean(row.get("teacher_macs")) or 0.0)


def efficiency_gains(ranked: pd.DataFrame, *, methods: Sequence[str] = PROPOSED) -> pd.DataFrame:
    """Every (entry M with method in ``methods``) x (entry B of another method not in ``methods``)
    in the same group: ``gain_macs`` and ``gain_wall_s`` (cost_B / cost_M - 1, on mean search MACs
    processed and mean search wall seconds), ``gain_macs_with_teacher`` (the same on search MACs plus the
    MACs of training the FP proxy teacher a method needs, GMPQ's and HAWQ's; records without the field
    count 0), ``gain_macs_to_settle`` (the same on the MACs processed until each search's argmax policy
    reached its final value; NaN for one-shot methods) and ``top1_diff_pp`` (mean top-1 of M - of B)."""
    cols = GROUP + ["method", "proxy", "baseline", "baseline_proxy", "baseline_role", "gain_macs",
                    "gain_wall_s", "gain_macs_with_teacher", "gain_macs_to_settle", "top1_diff_pp", "top1_mean", "baseline_top1_mean",
                    "search_macs_processed", "baseline_search_macs_processed"]
    rows = []
    scored = ranked[ranked["n_seeds"] > 0] if len(ranked) else ranked
    for key, part in scored.groupby(GROUP, sort=True):
        for _, m in part[part["method"].isin(methods)].iterrows():
            for _, b in part[~part["method"].isin(methods)].iterrows():
                rows.append({
                    **dict(zip(GROUP, key)),
                    "method": m["method"], "proxy": m["proxy"],
                    "baseline": b["method"], "baseline_proxy": b["proxy"], "baseline_role": b["role"],
                    "gain_macs": efficiency_gain(b["search_macs_processed"], m["search_macs_processed"]),
                    "gain_wall_s": efficiency_gain(b["search_wall_s"], m["search_wall_s"]),
                    "gain_macs_with_teacher": efficiency_gain(_with_teacher(b), _with_teacher(m)),
                    "gain_macs_to_settle": efficiency_gain(_float(b["search_macs_to_settle"]),
                                                           _float(m["search_macs_to_settle"])),
                    "top1_diff_pp": m["top1_mean"] - b["top1_mean"],
                    "top1_mean": m["top1_mean"], "baseline_top1_mean": b["top1_mean"],
                    "search_macs_processed": m["search_macs_processed"],
                    "baseline_search_macs_processed": b["search_macs_processed"],
                })
    return pd.DataFrame(rows, columns=cols)


def _clean(v: Any) -> Any:
    """JSON-safe scalar: NaN/NA -> None, numpy -> Python."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not math.isfinite(float(v)) else float(v)
    return v


def summary(df: pd.DataFrame, *, confidence: float = 0.95) -> dict:
    """The content of ``results/summary.json`` from the flat frame (all runs; failed ones counted).

    ``{"schema_version": 1, "conventions": {...}, "groups": {suite: {arch: {target: {budget: {
    "budget_bitops_g", "entries": {"<method>@<proxy>": {rank, n_seeds, n_failed, top1_mean, top1_std,
    top1_ci, bitops_g_all, bitops_g_searchable, size_mb, search_macs_processed, search_wall_s, ...}},
    "gains": {"<method>@<proxy>": {"<baseline>@<proxy>": {gain_macs, gain_wall_s, top1_diff_pp}}}}}}}}}``
    Means are over seeds with status ok. Deterministic key order.
    """
    ranked = rank_methods(df, confidence=confidence)
    gains = efficiency_gains(ranked)
    groups: dict = {}
    stat_cols = ["rank", "role", "n_seeds", "n_failed", "seeds", "top1_mean", "top1_std", "top1_ci",
                 *_MEAN_COLS, "repaired"]
    for _, r in ranked.iterrows():
        cell = groups.setdefault(r["suite"], {}).setdefault(r["arch"], {}).setdefault(r["target"], {})
        node = cell.setdefault(r["budget"], {"budget_bitops_g": None, "entries": {}, "gains": {}})
        node["entries"][f"{r['method']}@{r['proxy']}"] = {c: _clean(r[c]) for c in stat_cols}
        if node["budget_bitops_g"] is None:
            node["budget_bitops_g"] = _clean(r["budget_bitops_g"])
    for _, g in gains.iterrows():
        node = groups[g["suite"]][g["arch"]][g["target"]][g["budget"]]["gains"]
        node.setdefault(f"{g['method']}@{g['proxy']}", {})[f"{g['baseline']}@{g['baseline_proxy']}"] = {
            "gain_macs": _clean(g["gain_macs"]),
            "gain_wall_s": _clean(g["gain_wall_s"]),
            "gain_macs_with_teacher": _clean(g["gain_macs_with_teacher"]),
            "gain_macs_to_settle": _clean(g["gain_macs_to_settle"]),
            "top1_diff_pp": _clean(g["top1_diff_pp"]),
        }
    return {
        "schema_version": 1,
        "conventions": {
            "top1": "percent; mean over seeds with status ok; top1_std with ddof=1; "
                    f"top1_ci = half-width of the {confidence:.0%} Student-t interval of the mean",
            "rank": "within (suite, arch, target, budget) by mean top-1; ties share a rank",
            "gain": "cost_baseline / cost_method - 1 on mean search MACs processed (gain_macs) "
                    "or mean search wall seconds (gain_wall_s); gain_macs_with_teacher adds the MACs of training "
                    "the FP proxy teacher that gmpq, gmpq-asga and hawq need (teacher_macs); gain_macs_to_settle uses "
                    "the MACs processed until each search's argmax policy reached its final value "
                    "(search_macs_to_settle, checked every quarter epoch; iterative searches only)",
            "top1_diff_pp": "mean top-1 of method - mean top-1 of baseline, percentage points",
            "proposed": list(PROPOSED),
        },
        "groups": groups,
    }


# --------------------------------------------------------------------------------------------------
# Policies and reproduce commands


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


def _shell_quote(v: Any) -> str:
    s = str(v)
    return s if re.fullmatch(r"[\w.,:/@%+=-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def _given(v: Any) -> bool:
    return _clean(v) is not None


def reproduce_commands(row: Mapping[str, Any], *, seed: Any = None, out: str = "policy.json") -> dict[str, str]:
    """Commands that recreate one run, from a row of the flat frame: ``search`` (the policy search
    alone, with every setting the record stores: method, label, proxy dataset, label and subset, input
    sizes, width, candidates, budget, seed and hyper-parameters, plus ``--teacher`` for a method that
    needs the FP proxy teacher) and ``snakemake`` (the exact run: search, fine-tune and evaluate,
    producing the record file). ``seed``/``out`` override the row's (used for loops over seeds)."""
    base = row.get("base_method")
    base = row["method"] if not _given(base) else base
    parts = ["mpqbench", "search", "--method", base]
    if base != row["method"]:
        parts += ["--label", row["method"]]
    parts += ["--arch", row["arch"]]
    dataset = row.get("proxy_dataset")
    if _given(dataset) and dataset != row["proxy"]:  # e.g. proxy label fashion-mnist-subset
        parts += ["--proxy", dataset, "--proxy-label", row["proxy"]]
    else:
        parts += ["--proxy", row["proxy"]]
    for col, opt in (("proxy_subset", "--proxy-subset"), ("proxy_input_size", "--proxy-input-size")):
        if _given(row.get(col)):
            parts += [opt, int(row[col])]
    parts += ["--target", row["target"]]
    if _given(row.get("target_input_size")):
        parts += ["--target-input-size", int(row["target_input_size"])]
    parts += ["--budget", row["budget"], "--seed", row["seed"] if seed is None else seed]
    if _given(row.get("width")):
        parts += ["--width", f"{float(row['width']):g}"]
    for side in ("w", "a"):
        if _given(row.get(f"{side}_candidates")):
            parts += [f"--{side}-candidates", row[f"{side}_candidates"]]
    hparams = row.get("search_hparams")
    if isinstance(hparams, str) and hparams:
        # "method" is the registered base method (already --method), not a hyper-parameter
        for k, v in sorted((k, v) for k, v in json.loads(hparams).items() if k != "method"):
            v = _canonical_json(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else v
            parts += ["--hp", f"{k}={v}"]
    teacher = row.get("teacher_macs")
    if _given(teacher) and float(teacher) > 0:  # the FP teacher on the proxy that this method needs
        parts += ["--teacher", f"work/{row['suite']}/teacher/{row['arch']}-{row['proxy']}.pt"]  # as the workflow makes it
    parts += ["--out", out]
    quoted = [p if str(p).startswith("$") or "$s" in str(p) else _shell_quote(p) for p in parts]
    return {
        "search": " ".join(str(p) for p in quoted),
        "snakemake": f"snakemake --cores 8 {row['record_path']}",
    }


def entry_commands(runs: pd.DataFrame) -> dict[str, str]:
    """Reproduce commands for every seed of one entry (rows of the flat frame): a shell loop over
    the seeds for the search, and one Snakemake call naming every record file."""
    runs = runs.sort_values("seed")
    seeds = [int(s) for s in runs["seed"]]
    first = runs.iloc[0]
    if len(seeds) == 1:
        return reproduce_commands(first)
    loop = reproduce_commands(first, seed="$s", out="policy-s$s.json")["search"]
    return {
        "search": f"for s in {' '.join(map(str, seeds))}; do {loop}; done",
        "snakemake": "snakemake --cores 8 " + " ".join(runs["record_path"]),
    }


# --------------------------------------------------------------------------------------------------
# Published numbers (baselines/published.csv) — shown apart from the measured ranking

PUBLISHED_COLUMNS = ["method", "arch", "dataset", "w_bits", "a_bits", "bitops_g", "top1", "source_url",
                     "source_table", "note"]


def load_published(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``baselines/published.csv``; missing file or columns -> UserError."""
    try:
        df = pd.read_csv(path, dtype={"w_bits": str, "a_bits": str}, keep_default_na=False,
                         na_values={"bitops_g": [""], "top1": [""]})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {path}: {exc}; restore it from git") from exc
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(PUBLISHED_COLUMNS)}")
    try:
        df["top1"] = pd.to_numeric(df["top1"], errors="raise")
        df["bitops_g"] = pd.to_numeric(df["bitops_g"], errors="raise")
    except ValueError as exc:
        raise UserError(f"{path}: top1 and bitops_g must be numbers ({exc})") from exc
    return df[PUBLISHED_COLUMNS]


def csv_bytes(df: pd.DataFrame) -> bytes:
    """Any frame as UTF-8 CSV bytes (for downloads of filtered views)."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode()
