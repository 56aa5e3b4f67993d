"""Reading run records: the one loader behind ``mpqbench aggregate`` and the leaderboard app.

Every file is checked by the record model itself (:func:`mpqbench.records.read_record`, i.e.
``RunRecord.model_validate``), so both readers accept, skip and report exactly the same files.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from mpqbench.errors import UserError
from mpqbench.records import RecordProblem, RunRecord, check_record, read_record

# the run identity: one entry of the leaderboard per (group, method, proxy), one run per seed
IDENTITY = "suite/arch/target/budget/method/proxy/seed"


def validate_record(rec: Any) -> list[str]:
    """What is wrong with one parsed run record: [] when it is usable, else one line (the model's verdict).
    A record as :func:`load_records` returns it may be passed back: its ``_path`` is not part of the record."""
    if isinstance(rec, dict):
        rec = {k: v for k, v in rec.items() if k != "_path"}
    try:
        check_record(rec)
    except RecordProblem as exc:
        return [str(exc)]
    return []


def run_identity(rec: Any) -> tuple:
    """The run identity (:data:`IDENTITY`) of a record, as a model or in the plain JSON form load_records returns."""
    if isinstance(rec, RunRecord):
        rec = rec.model_dump(include=set(IDENTITY.split("/")))
    return tuple(rec[k]["name"] if k == "budget" else rec[k] for k in IDENTITY.split("/"))


def _candidates(runs_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every ``*.json`` below ``runs_dir`` (files, and directories so named: those are reported), and
    the folders that could not be listed (whose records would otherwise vanish without a word)."""
    found: list[Path] = []
    unlisted: list[tuple[Path, str]] = []

    def onerror(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else runs_dir
        rel = where.relative_to(runs_dir).as_posix() if where != runs_dir else "."
        unlisted.append((where, f"{rel}/: folder not readable ({exc.strerror or exc}); records in it are left out"))

    for dirpath, dirnames, filenames in os.walk(runs_dir, onerror=onerror):
        found.extend(Path(dirpath) / n for n in dirnames + filenames if fnmatchcase(n, "*.json"))
    return sorted(found), unlisted


def load_records(runs_dir: str | os.PathLike, *, strict: bool = False) -> tuple[list[dict], list[str]]:
    """Read every ``**/*.json`` below ``runs_dir`` (sorted by path).

    Returns (valid records, problems). Each record is validated by :class:`mpqbench.records.RunRecord`
    and returned as its plain JSON form (``model_dump(mode="json")``: fields the file leaves out get the
    model's defaults) with ``_path`` (path relative to ``runs_dir``). A file that is not a valid record
    (unreadable, binary, a directory, broken JSON, invalid content) is skipped with one problem line
    naming it. Duplicates are skipped too: two records with the same run identity (suite, arch, target,
    budget, method, proxy, seed) or the same ``run_id`` are one run, the first by path is kept. With
    ``strict=True`` any problem raises :class:`UserError` listing them all instead.
    """
    runs_dir = Path(runs_dir)
    records: list[dict] = []
    problems: list[tuple[Path, str]] = []
    if runs_dir.is_dir():
        paths, problems = _candidates(runs_dir)
    else:
        paths = []
    by_identity: dict[tuple, str] = {}
    by_run_id: dict[str, str] = {}
    for path in paths:
        rel = path.relative_to(runs_dir).as_posix()
        try:
            rec = read_record(path)
        except RecordProblem as exc:
            problems.append((path, f"{rel}: {exc}"))
            continue
        key = run_identity(rec)
        if key in by_identity:
            problems.append((path, f"{rel}: duplicate of {by_identity[key]} (same {IDENTITY}); left out"))
            continue
        if rec.run_id in by_run_id:
            problems.append((path, f"{rel}: duplicate of {by_run_id[rec.run_id]} (same run_id {rec.run_id}); "
                                   "left out"))
            continue
        by_identity[key] = by_run_id[rec.run_id] = rel
        records.append({**rec.model_dump(mode="json"), "_path": rel})
    lines = [line for _, line in sorted(problems, key=lambda p: p[0])]
    if strict and lines:
        raise UserError(
            f"{len(lines)} bad run record(s) under {runs_dir}: " + " | ".join(lines)
            + "; fix or delete these files and run again"
        )
    return records, lines
