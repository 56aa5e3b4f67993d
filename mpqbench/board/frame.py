"""The flat frame: one row per run record with fixed, typed columns; the leaderboard CSV; loading results.

``records_to_frame`` and ``read_leaderboard_csv`` give the same frame for the same runs, and
``frame_to_csv`` writes it byte-identically on regeneration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mpqbench import runs
from mpqbench.board.common import (BUDGET_SLACK, DEFAULT_BUDGET_FLOOR, RESULTS_ENV, RUN_KEY, _canonical_json,
                                   _is_number, record_role)
from mpqbench.board.records import load_records
from mpqbench.board.reproduce import record_relpath
from mpqbench.errors import UserError

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
    "role": "string",
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


def _get(rec: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = rec
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


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
        row["role"] = record_role(rec)
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


def suite_results_dirs(results_dir: str | os.PathLike) -> list[Path]:
    """``results_dir`` and the results folders of other suites inside it (a sub-folder with its own ``runs/``,
    e.g. ``results/extended`` beside the default suite's ``results/runs``), so the app shows every suite."""
    results_dir = Path(results_dir)
    nested = sorted(d for d in results_dir.iterdir() if d.is_dir() and d.name != "runs" and (d / "runs").is_dir()) \
        if results_dir.is_dir() else []
    return [results_dir, *nested]


def results_fingerprint(results_dir: str | os.PathLike) -> tuple:
    """A cheap cache key that changes when any results file is added, removed or modified."""
    files = []
    for folder in suite_results_dirs(results_dir):
        files += sorted(folder.glob("runs/**/*.json")) + [folder / runs.AGGREGATE_FILES["leaderboard"]]
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.is_file())


def load_results(results_dir: str | os.PathLike) -> Results:
    """Load ``results_dir/runs/**.json`` (the source of truth) and the records of every other suite's results
    folder inside it (:func:`suite_results_dirs`) or, when there are no records, ``results_dir/leaderboard.csv``.
    Never raises for bad data: problems land in the result."""
    results_dir = Path(results_dir)

    def failed(error: str, kind: str, problems: list[str] | None = None) -> Results:  # nothing to show
        return Results(records_to_frame([]), problems=problems or [], error=error, error_kind=kind)

    how = (f"run `snakemake --cores {runs.WORKFLOW_CORES} all` to produce results, or set {RESULTS_ENV} "
           f"to a folder holding runs/**/*.json or leaderboard.csv")
    if not results_dir.is_dir():
        return failed(f"The results folder {results_dir} does not exist; {how}.", "missing")
    runs_dir = results_dir / "runs"
    records, problems, sources = [], [], []
    for folder in suite_results_dirs(results_dir):
        if (folder / "runs").is_dir():
            found, bad = load_records(folder / "runs")
            prefix = "" if folder == results_dir else f"{folder.name}/runs/"
            records += found
            problems += [prefix + line for line in bad]
            if found:
                sources.append(str(folder / "runs"))
    if records:
        return Results(records_to_frame(records), {r["run_id"]: r for r in records}, problems,
                       source=", ".join(sources))
    csv = results_dir / runs.AGGREGATE_FILES["leaderboard"]
    if csv.is_file():
        try:
            frame = read_leaderboard_csv(csv)
        except UserError as exc:
            return failed(str(exc), "malformed", problems)
        if len(frame):
            return Results(frame, problems=problems, source=str(csv))
    if problems:
        return failed(f"No valid run records under {runs_dir}: {len(problems)} file(s) are malformed.", "malformed",
                      problems)
    return failed(f"No results in {results_dir} yet; {how}.", "empty")


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


def _derived(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every column of :data:`COLUMNS` and its derived fields (hand-built frames lack some)."""
    return df if all(c in df for c in COLUMNS) else _fill_derived(_typed(df.copy()))

