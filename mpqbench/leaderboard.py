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
    budget_used = searchable BitOPs / budget BitOPs; a run is budget-matched when it lies in the budget
    window [floor, 1] (floor = the suite's ``budget_floor``, 0.9 when a record does not say; 1e-9 slack).
    Rankings, ties and gains use only budget-matched entries at the suite's default search length unless
    asked otherwise (``include_unmatched``); the others are listed with the reason (``unranked``).
    Fixed-length efficiency gain of entry M over entry B (same group) = cost_B / cost_M - 1, reported with
    the target-accuracy difference mean_top1(M) - mean_top1(B) in percentage points. The efficiency gain
    at equal accuracy (:func:`equal_accuracy_gains`) reads the reference's cost off its accuracy-vs-search-
    cost curve instead.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mpqbench.errors import UserError

RESULTS_ENV = "MPQBENCH_RESULTS"
PROPOSED: tuple[str, ...] = ("asga", "asga-probe", "asga-decide", "gmpq-asga")
ABLATIONS: tuple[str, ...] = ("asga-sam", "asga-sam-align", "asga-argmax")
GROUP: list[str] = ["suite", "arch", "target", "budget"]
ENTRY: list[str] = GROUP + ["method", "proxy"]
RUN_KEY: list[str] = ENTRY + ["seed"]
from mpqbench.config import DEFAULT_BUDGET_FLOOR  # the window's lower edge when a record does not carry one
BUDGET_SLACK = 1e-9  # tolerance on both edges of the budget window
REFERENCE = "edmips-target"  # the reference whose accuracy-vs-search-cost curve sets the equal-accuracy gain

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
    "budget_used": "Float64",  # searchable BitOPs / budget (record's achieved.budget_used, else computed)
    "budget_floor": "Float64",  # lower edge of the budget window (record's search.budget_floor, else 0.9)
    "budget_matched": "boolean",  # budget_floor <= budget_used <= 1 (1e-9 slack)
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
    "search_extraction": "string",  # ilp / argmax / uniform-p (differentiable searches); empty otherwise
    "search_length": "Float64",  # search length as a multiple of the suite's default (missing: 1)
    "search_curve": "string",  # the length-1 label whose cost curve this entry is on (missing: the method)
    "search_precision": "string",  # fp32 / bf16 (missing: fp32)
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
    "finetune_precision": "string",  # fp32 / bf16 (missing: fp32)
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
    "budget_used": ("achieved", "budget_used"),
    "budget_floor": ("search", "budget_floor"),
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
    "search_extraction": ("search", "extraction"),
    "search_length": ("search", "length"),
    "search_curve": ("search", "curve"),
    "search_precision": ("search", "precision"),
    "finetune_precision": ("finetune", "precision"),
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


def _finite(col: pd.Series) -> pd.Series:
    """Float64 with NaN/inf as NA."""
    col = col.astype("Float64")
    return col.where(col.notna() & np.isfinite(col.astype("float64").fillna(np.nan)))


def _fill_derived(df: pd.DataFrame) -> pd.DataFrame:
    """The fields that older records (or CSVs) lack, from what they have (a typed frame in, one out):
    budget_used = bitops_g_searchable / budget_bitops_g, budget_floor = 0.9, search_length = 1,
    search_curve = the method label, precisions = fp32; budget_matched is always recomputed from
    budget_used and budget_floor (NA when budget_used is unknown)."""
    df = df.copy()
    budget = _finite(df["budget_bitops_g"])
    computed = _finite(df["bitops_g_searchable"]) / budget.where(budget > 0)
    used = _finite(df["budget_used"]).fillna(_finite(computed))
    floor = _finite(df["budget_floor"]).fillna(DEFAULT_BUDGET_FLOOR)
    df["budget_used"] = used
    df["budget_floor"] = floor
    matched = (used >= floor - BUDGET_SLACK) & (used <= 1.0 + BUDGET_SLACK)
    df["budget_matched"] = matched.astype("boolean").where(used.notna())
    df["search_length"] = _finite(df["search_length"]).fillna(1.0)
    df["search_curve"] = df["search_curve"].astype("string").fillna(df["method"].astype("string"))
    for col in ("search_precision", "finetune_precision"):
        df[col] = df[col].astype("string").fillna("fp32")
    return _typed(df)


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
            if isinstance(value, (dict, list)):
                value = None
            elif COLUMNS[col] == "Float64" and value is not None and not _is_number(value):
                value = None  # a non-number (or NaN/inf) where a number belongs reads as missing
            elif COLUMNS[col] == "Int64" and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                value = None
            row[col] = value
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
    return _fill_derived(_typed(pd.DataFrame(rows, columns=list(COLUMNS))))


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
        return _fill_derived(_typed(df))
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
    "budget_used": "budget_used",
    "budget_floor": "budget_floor",
    "bitops_g_all": "bitops_g_all",
    "bitops_g_searchable": "bitops_g_searchable",
    "size_mb": "size_mb",
    "avg_w_bits": "avg_w_bits",
    "avg_a_bits": "avg_a_bits",
    "search_length": "search_length",
    "search_macs_processed": "search_macs_processed",
    "search_wall_s": "search_wall_s",
    "search_gpu_hours": "search_gpu_hours",
    "search_macs_to_settle": "search_macs_to_settle",
    "teacher_macs": "teacher_macs",
    "teacher_wall_s": "teacher_wall_s",
    "finetune_wall_s": "finetune_wall_s",
}
_LENGTH_TOL = 1e-9


def _derived(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every column of :data:`COLUMNS` and its derived fields (hand-built frames lack some)."""
    return df if all(c in df for c in COLUMNS) else _fill_derived(_typed(df.copy()))


def _seed_top1(df: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """{entry key (ENTRY values): {seed: top-1}} over runs with status ok and a finite top-1."""
    out: dict[tuple, dict[int, float]] = {}
    ok = df[(df["status"] == "ok") & df["top1_pct"].notna()]
    for key, seed, top1 in zip(ok[ENTRY].itertuples(index=False, name=None), ok["seed"], ok["top1_pct"]):
        if math.isfinite(float(top1)):
            out.setdefault(tuple(key), {})[int(seed)] = float(top1)
    return out


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], *,
                      confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean and ``confidence`` t-interval half-width of top-1(a) - top-1(b) over the seeds both have
    (runs are paired by seed: the fine-tune seed equals the search seed), and that number of seeds.
    Half-width NaN with fewer than 2 common seeds; mean NaN with none."""
    common = sorted(set(a) & set(b))
    diffs = np.array([a[s] - b[s] for s in common], dtype=float)
    if len(diffs) == 0:
        return math.nan, math.nan, 0
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, math.nan, 1
    half = t_quantile(confidence, len(diffs) - 1) * float(diffs.std(ddof=1)) / math.sqrt(len(diffs))
    return mean, float(half), len(diffs)


def rank_methods(df: pd.DataFrame, *, confidence: float = 0.95, include_unmatched: bool = False) -> pd.DataFrame:
    """One row per entry (suite, arch, target, budget, method, proxy), aggregated over seeds.

    Statistics use only runs with status ok: ``top1_mean``, ``top1_std`` (sample, ddof=1),
    ``top1_ci`` = t-based half-width of the ``confidence`` interval of the mean (NA for one seed),
    and the mean of every cost column (``budget_used`` too). ``budget_matched``: every ok run of the
    entry lies in its budget window (NA without an ok run).

    Ranked entries: at least one ok run, at the suite's default search length (``search_length`` 1;
    the other lengths are points of an accuracy-vs-search-cost curve, see :func:`curve_points`) and,
    unless ``include_unmatched``, budget-matched. ``rank`` = 1 + number of ranked entries in the group
    with a higher mean top-1 (ties share a rank); the others get no rank and say why in ``unranked``.
    Failed runs only show up in ``n_failed`` and ``status``.

    Statistical ties by paired differences: the group's best ranked entry (first by rank, then method,
    proxy) is compared with every ranked entry over the seeds both have: ``paired_diff_pp`` (mean of
    top-1(entry) - top-1(best) per seed), ``paired_diff_ci`` (its t-interval half-width), ``paired_n``
    (common seeds) and ``tied_with_best`` (the interval contains 0; NA with fewer than 2 common seeds;
    True for the best itself). This is not the overlap of the two entries' intervals: pairing by seed
    removes the variance the runs of one seed share (the same fine-tune seed and data order).
    """
    cols = ENTRY + ["rank", "role", "unranked", "n_seeds", "n_failed", "status", "seeds", "top1_mean", "top1_std",
                    "top1_ci", "tied_with_best", "paired_diff_pp", "paired_diff_ci", "paired_n", *_MEAN_COLS,
                    "budget_matched", "search_curve", "search_extraction", "repaired", "run_ids"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = _derived(df).sort_values(RUN_KEY + ["run_id"], kind="mergesort")  # float sums depend on order: fix it
    keys = df[ENTRY].astype(object)
    num = df[["top1_pct", *_MEAN_COLS.values()]].astype("float64")
    ok = (df["status"] == "ok").to_numpy()
    ok_num = num.copy()
    ok_num.loc[~ok, :] = np.nan  # failed runs drop out of every statistic
    grouped = pd.concat([keys, ok_num], axis=1).groupby(ENTRY, sort=True, dropna=False)
    out = grouped.agg(n_seeds=("top1_pct", "count"), top1_mean=("top1_pct", "mean"),
                      top1_std=("top1_pct", "std"), **{c: (src, "mean") for c, src in _MEAN_COLS.items()})
    matched = df["budget_matched"].astype("object").where(ok, None)
    extra = pd.concat([keys, pd.DataFrame({
        "ok": ok, "seed_ok": df["seed"].astype("float64").where(ok),
        "repaired_ok": df["search_repaired"].fillna(False).astype(bool).to_numpy() & ok,
        "matched_ok": matched, "curve": df["search_curve"].astype(object),
        "length": df["search_length"].astype("float64"),
        "extraction": df["search_extraction"].astype(object).where(ok, None),
        "run_id": df["run_id"].astype(str)}, index=df.index)], axis=1).groupby(ENTRY, sort=True, dropna=False)
    out["n_runs"] = extra.size()
    out["repaired"] = extra["repaired_ok"].any()
    out["seeds"] = extra["seed_ok"].agg(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna())))
    out["run_ids"] = extra["run_id"].agg(",".join)
    out["search_curve"] = extra["curve"].first()
    out["search_length"] = extra["length"].mean()  # a setting of the entry: failed runs count too
    out["search_extraction"] = extra["extraction"].agg(
        lambda s: ",".join(sorted({str(v) for v in s if v is not None and v is not pd.NA})) or None)

    def _all_matched(s: pd.Series) -> Any:
        values = [v for v in s if v is not None]
        if not values or any(v is pd.NA for v in values):
            return pd.NA
        return all(bool(v) for v in values)

    out["budget_matched"] = extra["matched_ok"].agg(_all_matched).astype("boolean")
    out = out.reset_index()
    out["n_failed"] = out["n_runs"] - out["n_seeds"]
    out["status"] = ["ok" if f == 0 else f"{n} ok, {f} failed" for n, f in zip(out["n_seeds"], out["n_failed"])]
    out["role"] = out["method"].map(role)
    n = out["n_seeds"].to_numpy()
    dof = np.where(n > 1, n - 1, 1)
    out["top1_ci"] = np.where(n > 1, t_quantile(confidence, dof) * out["top1_std"] / np.sqrt(np.maximum(n, 1)),
                              np.nan)
    out.loc[n < 2, "top1_std"] = np.nan
    default_length = (out["search_length"] - 1.0).abs() <= _LENGTH_TOL
    is_matched = out["budget_matched"].fillna(False).astype(bool)
    rankable = (out["n_seeds"] > 0) & default_length & (is_matched | include_unmatched)
    out["unranked"] = [_unranked_reason(r, include_unmatched) for r in out.to_dict("records")]
    out.loc[rankable, "unranked"] = None
    scores = out["top1_mean"].where(rankable)
    out["rank"] = scores.groupby([out[c] for c in GROUP], sort=False).rank(method="min", ascending=False).astype("Int64")
    out = out.sort_values(GROUP + ["rank", "method", "proxy"], na_position="last", kind="mergesort")
    out = out.reset_index(drop=True)
    _paired_ties(out, _seed_top1(df), confidence)
    return out[cols]


def _unranked_reason(r: Mapping[str, Any], include_unmatched: bool) -> str | None:
    if not r["n_seeds"] > 0:
        return "no ok run"
    if not abs(r["search_length"] - 1.0) <= _LENGTH_TOL:
        return f"search length {r['search_length']:g}x: a point of the {r['search_curve']} cost curve"
    if include_unmatched or r["budget_matched"] is True:
        return None
    used = _clean(r["budget_used"])
    if used is None:
        return "not budget-matched (budget used unknown)"
    return f"not budget-matched (budget used {used:.1%}, window [{r['budget_floor']:g}, 1])"


def _paired_ties(out: pd.DataFrame, per_seed: Mapping[tuple, Mapping[int, float]], confidence: float) -> None:
    """Fill the paired-difference columns of a sorted ranking in place (see :func:`rank_methods`)."""
    diff, half, n_common, tied = ([math.nan] * len(out), [math.nan] * len(out), [pd.NA] * len(out),
                                  [pd.NA] * len(out))
    ranked = out[out["rank"].notna()]
    for _, part in ranked.groupby(GROUP, sort=False):
        best_key = tuple(part.iloc[0][ENTRY])
        best = per_seed.get(best_key, {})
        for i, row in part.iterrows():
            key = tuple(row[ENTRY])
            if key == best_key:
                diff[i], half[i], n_common[i], tied[i] = 0.0, 0.0, len(best), True
                continue
            d, h, k = paired_difference(per_seed.get(key, {}), best, confidence=confidence)
            diff[i], half[i], n_common[i] = d, h, k
            tied[i] = pd.NA if k < 2 else bool(d - h <= 0.0 <= d + h)
    out["paired_diff_pp"] = pd.array(diff, dtype="Float64")
    out["paired_diff_ci"] = pd.array(half, dtype="Float64")
    out["paired_n"] = pd.array(n_common, dtype="Int64")
    out["tied_with_best"] = pd.array(tied, dtype="boolean")
    for col in ("paired_diff_pp", "paired_diff_ci"):
        out[col] = out[col].where(~out[col].isna() & np.isfinite(out[col].astype("float64").fillna(np.nan)))


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
    its (suite, arch, target), across budgets. Every entry given takes part (budget-matched or not:
    each sits at its own BitOPs); the caller chooses which entries to pass."""
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


def _comparable(ranked: pd.DataFrame, include_unmatched: bool) -> pd.DataFrame:
    """Entries that take part in gains: an ok run, the default search length, budget-matched unless
    ``include_unmatched`` (columns a ranking lacks count as the default: length 1, matched)."""
    if not len(ranked):
        return ranked
    keep = ranked["n_seeds"] > 0
    if "search_length" in ranked:
        keep &= (ranked["search_length"].astype("float64").fillna(1.0) - 1.0).abs() <= _LENGTH_TOL
    if not include_unmatched and "budget_matched" in ranked:
        keep &= ranked["budget_matched"].astype("boolean").fillna(False).astype(bool)
    return ranked[keep]


def efficiency_gains(ranked: pd.DataFrame, *, methods: Sequence[str] = PROPOSED,
                     include_unmatched: bool = False) -> pd.DataFrame:
    """Fixed-length efficiency gains: every (entry M with method in ``methods``) x (entry B of another
    method not in ``methods``) in the same group, both at the suite's default search length and, unless
    ``include_unmatched``, budget-matched: ``gain_macs`` and ``gain_wall_s`` (cost_B / cost_M - 1, on
    mean search MACs processed and mean search wall seconds), ``gain_macs_with_teacher`` (the same on
    search MACs plus the MACs of training the FP proxy teacher a method needs, GMPQ's and HAWQ's; records
    without the field count 0), ``gain_macs_to_settle`` (the same on the MACs processed until each
    search's argmax policy reached its final value; NaN for one-shot methods) and ``top1_diff_pp`` (mean
    top-1 of M - of B). These compare the costs of two fixed search lengths whatever accuracy each
    reached; :func:`equal_accuracy_gains` measures the gain at equal accuracy."""
    cols = GROUP + ["method", "proxy", "baseline", "baseline_proxy", "baseline_role", "gain_macs",
                    "gain_wall_s", "gain_macs_with_teacher", "gain_macs_to_settle", "top1_diff_pp", "top1_mean", "baseline_top1_mean",
                    "search_macs_processed", "baseline_search_macs_processed"]
    rows = []
    scored = _comparable(ranked, include_unmatched)
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


# --------------------------------------------------------------------------------------------------
# Efficiency at equal accuracy: accuracy-vs-search-cost curves, isotonic fit, bootstrap over seeds


def isotonic_increasing(x: Sequence[float], y: Sequence[float], w: Sequence[float] | None = None) -> np.ndarray:
    """The non-decreasing function of ``x`` closest to ``y`` in weighted least squares (pool-adjacent-
    violators). Points with equal ``x`` are pooled first (they get one value). Returns the fitted value
    of every point, in the input order. Weights default to 1 and must be positive."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    order = np.argsort(x, kind="mergesort")
    # blocks: [sum w*y, sum w, member indices]; equal x start in one block
    blocks: list[list] = []
    for i in order:
        if blocks and x[blocks[-1][2][-1]] == x[i]:
            b = blocks[-1]
            b[0] += w[i] * y[i]
            b[1] += w[i]
            b[2].append(i)
        else:
            blocks.append([w[i] * y[i], w[i], [i]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            b = blocks.pop()
            blocks[-1][0] += b[0]
            blocks[-1][1] += b[1]
            blocks[-1][2].extend(b[2])
    fit = np.empty_like(y)
    for total, weight, members in blocks:
        fit[members] = total / weight
    return fit


def cost_at_accuracy(cost: Sequence[float], fit: Sequence[float], accuracy: float) -> tuple[float, str | None]:
    """The smallest cost at which a non-decreasing curve (points ``cost`` ascending, fitted values
    ``fit``, joined by straight lines) reaches ``accuracy``. Outside the measured range a bound:
    ``(cost[0], "<")`` when the cheapest point already reaches it (the true cost is at most that),
    ``(cost[-1], ">")`` when even the most expensive point stays below (the true cost is more)."""
    cost = np.asarray(cost, dtype=float)
    fit = np.asarray(fit, dtype=float)
    if fit[0] >= accuracy:
        return float(cost[0]), "<"
    if fit[-1] < accuracy:
        return float(cost[-1]), ">"
    i = int(np.argmax(fit >= accuracy))  # first point at or above; i >= 1 and fit[i - 1] < accuracy
    x0, x1, y0, y1 = cost[i - 1], cost[i], fit[i - 1], fit[i]
    return float(x0 + (accuracy - y0) / (y1 - y0) * (x1 - x0)), None


def equal_accuracy_gain(ref_cost: Sequence[float], ref_top1: Sequence[float], cost: float, top1: float, *,
                        weights: Sequence[float] | None = None) -> tuple[float, str | None]:
    """Gain at equal accuracy of an entry (search ``cost``, mean ``top1``) over a reference curve
    (points ``ref_cost``, mean ``ref_top1``, optional ``weights``): the reference's top-1 is fitted
    non-decreasing in cost (:func:`isotonic_increasing`), the cost C_ref at which the fit reaches
    ``top1`` is read off (:func:`cost_at_accuracy`), and the gain is C_ref / cost - 1. Returns
    (gain, bound): bound ``">"``/``"<"`` means the gain is more/less than the value (the curves do not
    cross in the measured range); NaN when undefined (no reference point, cost not positive)."""
    x = np.asarray(ref_cost, dtype=float)
    y = np.asarray(ref_top1, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (w > 0)
    if not keep.any() or not (math.isfinite(cost) and cost > 0 and math.isfinite(top1)):
        return math.nan, None
    x, y, w = x[keep], y[keep], w[keep]
    order = np.argsort(x, kind="mergesort")
    x, y, w = x[order], y[order], w[order]
    c_ref, bound = cost_at_accuracy(x, isotonic_increasing(x, y, w), top1)
    return efficiency_gain(c_ref, cost), bound


def _percentile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile of values that may hold +-inf (inf where it touches one)."""
    v = np.sort(np.asarray(values, dtype=float))
    pos = q / 100 * (len(v) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    if not (math.isfinite(v[lo]) and math.isfinite(v[hi])):
        return float(v[hi] if not math.isfinite(v[hi]) else v[lo])
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def _isotonic_rows(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) fit of every row of ``y`` (points already in cost order, all
    weights > 0), by the min-max formula fit_i = max_{j<=i} min_{k>=i} mean(y[j..k]): exact, and
    vectorised over rows (the curves here have a handful of points)."""
    n = y.shape[1]
    cw = np.concatenate([np.zeros((len(y), 1)), np.cumsum(w, axis=1)], axis=1)
    cy = np.concatenate([np.zeros((len(y), 1)), np.cumsum(w * y, axis=1)], axis=1)
    fit = np.empty_like(y)
    for i in range(n):
        best = np.full(len(y), -np.inf)
        for j in range(i + 1):
            k = np.arange(i, n)
            means = (cy[:, k + 1] - cy[:, [j]]) / (cw[:, k + 1] - cw[:, [j]])
            best = np.maximum(best, means.min(axis=1))
        fit[:, i] = best
    return fit


def _equal_accuracy_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray, cost: float,
                         top1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`equal_accuracy_gain` for many resamples at once: reference points ``x`` (ascending),
    per-row top-1 ``y`` and weights ``w`` (B x n), the entry's per-row top-1. Returns (gain, bound code:
    0 crossing, -1 "<", +1 ">"); rows where a point has zero weight go through the scalar path."""
    gains = np.full(len(y), np.nan)
    codes = np.zeros(len(y), dtype=int)
    full = (w > 0).all(axis=1) & np.isfinite(top1)
    if full.any():
        fit = _isotonic_rows(y[full], w[full])
        a = top1[full]
        below, above = fit[:, 0] >= a, fit[:, -1] < a
        i = np.clip(np.argmax(fit >= a[:, None], axis=1), 1, max(len(x) - 1, 1)) if len(x) > 1 else np.zeros(len(a), int)
        rows = np.arange(len(a))
        if len(x) > 1:
            y0, y1 = fit[rows, i - 1], fit[rows, i]
            with np.errstate(divide="ignore", invalid="ignore"):
                c = x[i - 1] + (a - y0) / (y1 - y0) * (x[i] - x[i - 1])
        else:
            c = np.full(len(a), x[0])
        c = np.where(below, x[0], np.where(above, x[-1], c))
        gains[full] = c / cost - 1.0
        codes[full] = np.where(below, -1, np.where(above, 1, 0))
    for b in np.flatnonzero(~full):
        g, bound = equal_accuracy_gain(x, y[b], cost, float(top1[b]), weights=w[b])
        gains[b], codes[b] = g, {"<": -1, ">": 1}.get(bound, 0)
    return gains, codes


def curve_points(df: pd.DataFrame, *, include_unmatched: bool = False, confidence: float = 0.95) -> pd.DataFrame:
    """Every entry as a point of its accuracy-vs-search-cost curve: GROUP, ``curve`` (the length-1
    method label it belongs to: ``search_curve``, else its own label), proxy, method, ``length``,
    ``macs``/``wall_s`` (mean search cost), ``top1_mean``, ``top1_ci``, ``n_seeds``, ``n_points`` (of
    its curve), sorted by group, curve, proxy, length. Entries without an ok run and, unless
    ``include_unmatched``, entries that are not budget-matched are left out."""
    cols = GROUP + ["curve", "proxy", "method", "length", "macs", "wall_s", "top1_mean", "top1_ci",
                    "n_seeds", "n_points"]
    ranked = rank_methods(df, confidence=confidence, include_unmatched=True) if len(df) else pd.DataFrame()
    if not len(ranked):
        return pd.DataFrame(columns=cols)
    keep = ranked["n_seeds"] > 0
    if not include_unmatched:
        keep &= ranked["budget_matched"].fillna(False).astype(bool)
    r = ranked[keep]
    if not len(r):
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({**{c: r[c] for c in GROUP}, "curve": r["search_curve"].astype(str), "proxy": r["proxy"],
                        "method": r["method"], "length": r["search_length"].astype(float),
                        "macs": r["search_macs_processed"].astype(float), "wall_s": r["search_wall_s"].astype(float),
                        "top1_mean": r["top1_mean"].astype(float), "top1_ci": r["top1_ci"].astype(float),
                        "n_seeds": r["n_seeds"].astype(int)})
    out["n_points"] = out.groupby(GROUP + ["curve", "proxy"])["method"].transform("size").astype(int)
    return out.sort_values(GROUP + ["curve", "proxy", "length", "method"], kind="mergesort")[cols].reset_index(drop=True)


def equal_accuracy_gains(df: pd.DataFrame, *, reference: str = REFERENCE, methods: Sequence[str] | None = None,
                         include_unmatched: bool = False, confidence: float = 0.95, n_boot: int = 2000,
                         rng_seed: int = 0) -> list[dict]:
    """Efficiency gain at equal accuracy of each proposed entry over the ``reference``'s curve, per group.

    The reference's curve is every entry of the group whose curve is ``reference`` (its length-1 entry
    and the entries searched at other lengths, ``search_curve == reference``): points (mean search MACs,
    top-1 of each seed). Proposed entries: length-1 entries of the methods in ``methods`` (default: the
    proposed methods :data:`PROPOSED` and every method that has a curve of its own, e.g. ASGA and its
    radius variant), never the reference. For each, C_ref = the smallest search cost at which the
    reference's top-1, fitted non-decreasing in cost by isotonic regression (weighted by seeds) and
    joined linearly between fitted points (linear in cost), reaches the entry's mean top-1; the gain is
    C_ref / C_entry - 1 on mean search MACs processed (``value``) and the same on wall seconds
    (``wall_s``). Where the curves do not cross in the measured range the result is a bound: ``bound``
    ">" (even the reference's longest search stays below; value = the gain at its longest length) or "<"
    (its shortest already reaches it; value = the gain at its shortest length).

    Uncertainty: a bootstrap over seeds. Runs are paired by seed, so one draw of seeds (``n_boot``
    resamples of the group's seeds with replacement, ``numpy.random.default_rng(rng_seed)``) is shared by
    every point of both curves and every entry of the group; each point's top-1 is the mean over the
    drawn seeds it has (counted with multiplicity; a point none of whose seeds were drawn drops out of
    that resample). Costs are the points' mean costs in every resample (a search's MACs do not depend
    on the seed). ``ci_low``/``ci_high``: the ``confidence`` percentile interval of the resampled gains,
    where a resample whose curves do not cross is a bound and counts as the most extreme gain it allows
    on each side (a ">" x resample as x for the lower end and +inf for the upper; a "<" x resample as -1,
    zero reference cost, for the lower end and x for the upper), so the interval is conservative; an
    infinite end is reported as None (unbounded); ``bootstrap`` says how many resamples were censored
    each way. With fewer than 2 seeds there is no interval.

    Entries that are not budget-matched take no part unless ``include_unmatched``. With the reference
    searched on several proxies, the one named like the target is used, else the first by name.
    Returns one dict per (group, proposed entry), with its curve points (:func:`curve_points` fields)
    and, for comparison, ``fixed_length_gain`` (the reference's length-1 cost / the entry's - 1, whatever
    accuracy each reached; None without a length-1 reference entry).
    """
    points = curve_points(df, include_unmatched=include_unmatched, confidence=confidence)
    if not len(points):
        return []
    per_seed = _seed_top1(_derived(df))
    results = []
    for gkey, part in points.groupby(GROUP, sort=True):
        ref_all = part[part["curve"] == reference]
        if not len(ref_all):
            continue
        proxies = sorted(ref_all["proxy"].unique())
        target = dict(zip(GROUP, gkey))["target"]
        ref_proxy = target if target in proxies else proxies[0]
        ref = ref_all[ref_all["proxy"] == ref_proxy].sort_values(["macs", "length"], kind="mergesort")
        heads = part[((part["length"] - 1.0).abs() <= _LENGTH_TOL) & (part["method"] == part["curve"])
                     & (part["curve"] != reference)]
        if methods is None:
            own_curve = {(c, p) for (c, p), n in part.groupby(["curve", "proxy"])["method"].size().items() if n > 1}
            heads = heads[[m in PROPOSED or (m, p) in own_curve for m, p in zip(heads["method"], heads["proxy"])]]
        else:
            heads = heads[heads["method"].isin(list(methods))]
        if not len(heads):
            continue
        seeds = sorted({s for m, p in zip(pd.concat([ref, heads])["method"], pd.concat([ref, heads])["proxy"])
                        for s in per_seed.get((*gkey, m, p), {})})
        counts = None
        if len(seeds) >= 2 and n_boot > 0:
            draws = np.random.default_rng(rng_seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
            counts = np.zeros((n_boot, len(seeds)))
            np.add.at(counts, (np.repeat(np.arange(n_boot), len(seeds)), draws.ravel()), 1.0)

        def values(method: str, proxy: str) -> tuple[np.ndarray, np.ndarray]:
            got = per_seed.get((*gkey, method, proxy), {})
            v = np.array([got.get(s, np.nan) for s in seeds], dtype=float)
            return np.nan_to_num(v), np.isfinite(v).astype(float)

        ref_vals = [values(m, ref_proxy) for m in ref["method"]]
        for _, h in heads.iterrows():
            res = {**dict(zip(GROUP, gkey)), "method": h["method"], "proxy": h["proxy"],
                   "reference": f"{reference}@{ref_proxy}", "proposed_top1_mean": float(h["top1_mean"]),
                   "proposed_top1_ci": _clean(h["top1_ci"]), "proposed_n_seeds": int(h["n_seeds"]),
                   "proposed_macs": float(h["macs"]), "proposed_wall_s": float(h["wall_s"])}
            mine = part[(part["curve"] == h["method"]) & (part["proxy"] == h["proxy"])]
            for name, cost_col in (("macs", "macs"), ("wall_s", "wall_s")):
                value, bound = equal_accuracy_gain(ref[cost_col], ref["top1_mean"], float(h[cost_col]),
                                                   float(h["top1_mean"]), weights=ref["n_seeds"])
                block = {"value": _clean(value), "bound": bound, "ci_low": None, "ci_high": None}
                if counts is not None:
                    pv, pm = values(h["method"], h["proxy"])
                    p_w = counts @ pm
                    p_mean = np.divide(counts @ pv, p_w, out=np.full(n_boot, np.nan), where=p_w > 0)
                    r_w = np.stack([counts @ m for _, m in ref_vals], axis=1)
                    r_mean = np.divide(np.stack([counts @ v for v, _ in ref_vals], axis=1), r_w,
                                       out=np.zeros(r_w.shape), where=r_w > 0)
                    g, code = _equal_accuracy_rows(ref[cost_col].to_numpy(float), r_mean, r_w, float(h[cost_col]),
                                                   p_mean)
                    keep = np.isfinite(g)
                    g, code = g[keep], code[keep]
                    if len(g):  # censored resamples count as the most extreme gain they allow, on each side
                        low = np.where(code == -1, -1.0, g)
                        high = np.where(code == 1, np.inf, g)
                        block["ci_low"] = _clean(_percentile(low, 50 * (1 - confidence)))
                        block["ci_high"] = _clean(_percentile(high, 50 * (1 + confidence)))
                    block["bootstrap"] = {"resamples": int(len(g)), "censored_below": int((code == -1).sum()),
                                          "censored_above": int((code == 1).sum())}
                c_ref = None if block["value"] is None else (block["value"] + 1.0) * float(h[cost_col])
                block["reference_cost_at_equal_accuracy"] = c_ref
                res[name] = block
            res.update({k: res["macs"][k] for k in ("value", "bound", "ci_low", "ci_high")})
            at_default = ref[(ref["length"] - 1.0).abs() <= _LENGTH_TOL]  # the fixed-length gain, for comparison
            res["fixed_length_gain"] = {
                c: (_clean(efficiency_gain(float(at_default.iloc[0][c]), float(h[c]))) if len(at_default) else None)
                for c in ("macs", "wall_s")}
            res["bootstrap"] = {"n_boot": n_boot if counts is not None else 0, "rng_seed": rng_seed,
                                "seeds": seeds, "confidence": confidence}
            ref_fit = isotonic_increasing(ref["macs"], ref["top1_mean"], ref["n_seeds"])
            res["curves"] = {
                "reference": [{**_point(p), "top1_fit": _clean(f)} for p, f in zip(ref.to_dict("records"), ref_fit)],
                "proposed": [_point(p) for p in mine.sort_values(["length", "method"]).to_dict("records")],
            }
            results.append(res)
    return results


def _point(p: Mapping[str, Any]) -> dict:
    return {"method": p["method"], "length": _clean(p["length"]), "macs": _clean(p["macs"]),
            "wall_s": _clean(p["wall_s"]), "top1_mean": _clean(p["top1_mean"]), "top1_ci": _clean(p["top1_ci"]),
            "n_seeds": _clean(p["n_seeds"])}


def equal_accuracy_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`equal_accuracy_gains` as one row per (group, entry): the gain on MACs and on wall seconds
    (value, bound, interval), the reference and the entry's mean top-1 and costs."""
    cols = GROUP + ["method", "proxy", "reference", "gain", "bound", "ci_low", "ci_high", "gain_wall_s",
                    "bound_wall_s", "ci_low_wall_s", "ci_high_wall_s", "fixed_length_gain_macs",
                    "fixed_length_gain_wall_s", "top1_mean", "top1_ci", "search_macs_processed",
                    "reference_macs_at_equal_accuracy", "search_wall_s"]
    rows = [{**{c: r[c] for c in GROUP}, "method": r["method"], "proxy": r["proxy"], "reference": r["reference"],
             "gain": r["value"], "bound": r["bound"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
             "gain_wall_s": r["wall_s"]["value"], "bound_wall_s": r["wall_s"]["bound"],
             "ci_low_wall_s": r["wall_s"]["ci_low"], "ci_high_wall_s": r["wall_s"]["ci_high"],
             "fixed_length_gain_macs": r["fixed_length_gain"]["macs"],
             "fixed_length_gain_wall_s": r["fixed_length_gain"]["wall_s"],
             "top1_mean": r["proposed_top1_mean"], "top1_ci": r.get("proposed_top1_ci"),
             "search_macs_processed": r["proposed_macs"],
             "reference_macs_at_equal_accuracy": r["macs"]["reference_cost_at_equal_accuracy"],
             "search_wall_s": r["proposed_wall_s"]} for r in results]
    return pd.DataFrame(rows, columns=cols)


def format_gain(value: float | None, bound: str | None, ci_low: float | None = None,
                ci_high: float | None = None) -> str:
    """A gain for people: ``+471% [+300%, +620%]``, ``> +700%``, ``n/a``; an unbounded end is ``∞``
    (missing values may be None, NaN or NA)."""
    value, ci_low, ci_high = _clean(value), _clean(ci_low), _clean(ci_high)
    bound = bound if bound in ("<", ">") else None
    if value is None:
        return "n/a"
    text = f"{value:+.0%}" if bound is None else f"{bound} {value:+.0%}"
    if ci_low is not None or ci_high is not None:
        lo = "-∞" if ci_low is None else f"{ci_low:+.0%}"
        hi = "+∞" if ci_high is None else f"{ci_high:+.0%}"
        text += f" [{lo}, {hi}]"
    return text


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


def summary(df: pd.DataFrame, *, confidence: float = 0.95, include_unmatched: bool = False,
            reference: str = REFERENCE) -> dict:
    """The content of ``results/summary.json`` from the flat frame (all runs; failed ones counted).

    ``{"schema_version": 1, "conventions": {...}, "groups": {suite: {arch: {target: {budget: {
    "budget_bitops_g", "entries": {"<method>@<proxy>": {rank, unranked, n_seeds, n_failed, top1_mean,
    top1_std, top1_ci, tied_with_best, paired_diff_pp, paired_diff_ci, paired_n, budget_used,
    budget_matched, bitops_g_all, ..., search_macs_processed, search_wall_s, ...}},
    "gains": {"<method>@<proxy>": {"<baseline>@<proxy>": {gain_macs, gain_wall_s, top1_diff_pp, ...}}},
    "gain_at_equal_accuracy": {"<method>@<proxy>": {value, bound, ci_low, ci_high, reference, wall_s,
    curves, ...}}}}}}}}``. ``gains`` are fixed-length gains (see the conventions). Every entry is listed;
    those without a rank say why (``unranked``). Means are over seeds with status ok. Deterministic.
    """
    ranked = rank_methods(df, confidence=confidence, include_unmatched=include_unmatched)
    gains = efficiency_gains(ranked, include_unmatched=include_unmatched)
    equal = equal_accuracy_gains(df, reference=reference, include_unmatched=include_unmatched,
                                 confidence=confidence) if len(df) else []
    groups: dict = {}
    stat_cols = ["rank", "unranked", "role", "n_seeds", "n_failed", "seeds", "top1_mean", "top1_std", "top1_ci",
                 "tied_with_best", "paired_diff_pp", "paired_diff_ci", "paired_n", *_MEAN_COLS, "budget_matched",
                 "search_curve", "search_extraction", "repaired"]
    for _, r in ranked.iterrows():
        cell = groups.setdefault(r["suite"], {}).setdefault(r["arch"], {}).setdefault(r["target"], {})
        node = cell.setdefault(r["budget"], {"budget_bitops_g": None, "entries": {}, "gains": {},
                                             "gain_at_equal_accuracy": {}})
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
    for e in equal:
        node = groups[e["suite"]][e["arch"]][e["target"]][e["budget"]]["gain_at_equal_accuracy"]
        node[f"{e['method']}@{e['proxy']}"] = {k: v for k, v in e.items() if k not in GROUP + ["method", "proxy"]}
    pct = f"{confidence:.0%}"
    return {
        "schema_version": 1,
        "conventions": {
            "top1": "percent; mean over seeds with status ok; top1_std with ddof=1; "
                    f"top1_ci = half-width of the {pct} Student-t interval of the mean (seeds vary search, "
                    "fine-tune and evaluation; the FP start model is shared, so its variance is not in it)",
            "budget_used": "searchable BitOPs / budget BitOPs, mean over ok seeds; budget_matched = every ok seed "
                           "in [budget_floor, 1] (1e-9 slack); budget_floor is the suite's (0.9 when a record "
                           "does not carry it)",
            "rank": "within (suite, arch, target, budget) by mean top-1, over entries at the default search length "
                    + ("(budget-matched or not)" if include_unmatched else "that are budget-matched")
                    + "; ties share a rank; 'unranked' says why an entry has no rank",
            "tied_with_best": f"the {pct} Student-t interval of the mean paired top-1 difference to the group's best "
                              "entry (pairs = runs of the same seed, paired_n of them) contains 0 "
                              "(paired_diff_pp, paired_diff_ci); null with fewer than 2 common seeds",
            "gain": "fixed-length efficiency gain (each search at its configured length, whatever accuracy it "
                    "reached): cost_baseline / cost_method - 1 on mean search MACs processed (gain_macs) "
                    "or mean search wall seconds (gain_wall_s); gain_macs_with_teacher adds the MACs of training "
                    "the FP proxy teacher that gmpq, gmpq-asga and hawq need (teacher_macs); gain_macs_to_settle uses "
                    "the MACs processed until each search's argmax policy reached its final value "
                    "(search_macs_to_settle, checked every quarter epoch; iterative searches only)",
            "gain_at_equal_accuracy": f"C_ref / C_method - 1 on mean search MACs (value; wall_s beside it), where "
                                      f"C_ref is the smallest search cost at which {reference}'s top-1, measured at "
                                      "several search lengths and fitted non-decreasing in cost (isotonic, linear "
                                      "between fitted points), reaches the method's mean top-1; bound '>' / '<' "
                                      "when the curves do not cross in the measured range (value = the gain at "
                                      f"the reference's longest / shortest search); ci_low/ci_high = {pct} "
                                      "percentile interval of a paired bootstrap over seeds (null end = unbounded)",
            "top1_diff_pp": "mean top-1 of method - mean top-1 of baseline, percentage points",
            "proposed": list(PROPOSED),
            "reference": reference,
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


class _Verbatim(str):
    """A shell word the harness wrote itself (the seed loop's ``"$s"``): the only thing left unquoted.
    Never built from record data."""


_LOOP_SEED = _Verbatim('"$s"')
_LOOP_OUT = _Verbatim('"policy-s$s.json"')


def _shell_word(v: Any) -> str:
    """One shell word: ``shlex.quote`` of the value's text, whatever it holds ($, backticks, ;, quotes)."""
    return str(v) if isinstance(v, _Verbatim) else shlex.quote(str(v))


def _given(v: Any) -> bool:
    return _clean(v) is not None


def reproduce_commands(row: Mapping[str, Any], *, seed: Any = None, out: str = "policy.json") -> dict[str, str]:
    """Commands that recreate one run, from a row of the flat frame: ``search`` (the policy search
    alone, with every setting the record stores: method, label, proxy dataset, label and subset, input
    sizes, width, candidates, budget, seed and hyper-parameters, plus ``--teacher`` for a method that
    needs the FP proxy teacher) and ``snakemake`` (the exact run: search, fine-tune and evaluate,
    producing the record file). ``seed``/``out`` override the row's.

    Every word that comes from the record (or from ``seed``/``out``) is quoted with ``shlex.quote``, the
    record path too, so a record whose method, label, proxy or hyper-parameters hold ``$(...)``,
    backticks, ``;`` or quotes gives a line that passes those characters literally and runs nothing.
    The lines are for bash/POSIX sh."""
    base = row.get("base_method")
    base = row["method"] if not _given(base) else base
    parts: list[Any] = ["mpqbench", "search", "--method", base]
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
    return {
        "search": " ".join(_shell_word(p) for p in parts),
        "snakemake": "snakemake --cores 8 " + _shell_word(row["record_path"]),
    }


def entry_commands(runs: pd.DataFrame) -> dict[str, str]:
    """Reproduce commands for every seed of one entry (rows of the flat frame): a shell loop over
    the seeds for the search (``for s in 0 1 2; do mpqbench search ... --seed "$s" --out
    "policy-s$s.json"; done``: the loop variable is the only expansion, every record value is quoted),
    and one Snakemake call naming every record file."""
    runs = runs.sort_values("seed")
    seeds = [int(s) for s in runs["seed"]]
    first = runs.iloc[0]
    if len(seeds) == 1:
        return reproduce_commands(first)
    loop = reproduce_commands(first, seed=_LOOP_SEED, out=_LOOP_OUT)["search"]
    return {
        "search": f"for s in {' '.join(map(str, seeds))}; do {loop}; done",
        "snakemake": "snakemake --cores 8 " + " ".join(_shell_word(p) for p in runs["record_path"]),
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
