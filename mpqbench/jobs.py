"""What a suite cost to run: one row per workflow job, from Snakemake's own records.

Sources
    Benchmark TSVs: every rule of the workflow has ``benchmark: <log_dir>/benchmarks/<suite>/<rule>/<wildcard
    path>.tsv`` (rules that run once per suite, e.g. ``aggregate``, write ``<suite>/<rule>.tsv``). Snakemake
    writes a header and one row per run of the job with the columns ``s`` (wall seconds), ``h:m:s``,
    ``max_rss``, ``max_vms``, ``max_uss``, ``max_pss`` (MB), ``io_in``, ``io_out`` (MB), ``mean_load`` and
    ``cpu_time`` (CPU seconds, user + system, of the job's process tree), ``NA`` where it could not sample
    the process (a job shorter than its sampling interval); ``benchmark: repeat(...)`` gives several rows,
    which count as one job whose wall and CPU time are the sums and whose max RSS is the maximum.
    Job start and end: Snakemake's run logs (``.snakemake/log/*.snakemake.log`` in the working directory of
    the workflow), which hold, per job, a ``[<local time>]`` line, a ``rule <name>:`` (or ``localrule``)
    block naming its ``jobid`` and ``benchmark`` file, and a ``[<local time>]`` / ``Finished jobid: <n>``
    pair when it ends. A benchmark file is matched to the latest log block naming it whose end lies within
    :data:`MATCH_TOLERANCE_S` of the file's modification time (the file is written as the job ends), so a
    file rewritten by a run whose log is gone is not given the older run's times. The job's start is the
    log's time (whole seconds, truncated; in the local time zone of the machine that ran the workflow),
    its end the benchmark file's modification time (finer than the log's "Finished" second).
    Fallback, for a benchmark file no log block matches (logs deleted, another executor's log format): the
    file's modification time as the end and end - ``s`` as the start (``time_source`` "mtime").

CPU time and peak RSS: Snakemake samples the job's process tree (and misses the part of a job shorter than
its sampling interval); a job run through the workflow's job server (:mod:`mpqbench.jobserver`) does its work
outside that tree. Every ``mpqbench`` command of the workflow therefore ends its log with a usage line of its
own measurement, which :func:`collect_jobs` prefers when given the job log folder.

Caveat: a benchmark file is only written when its job has finished, so the job that collects them (the
aggregate step) sees its own and later jobs' files from the previous run, if any.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from mpqbench.errors import UserError

JOB_COLUMNS: list[str] = ["rule", "wildcards", "wall_s", "cpu_s", "max_rss_mb", "start_utc", "end_utc",
                          "time_source"]
MATCH_TOLERANCE_S = 60.0
_NA = {"", "NA", "-", "nan", "NaN"}
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d{1,2} \d{2}:\d{2}:\d{2} \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_FIELD = re.compile(r"^\s+(\w+): (.*)$")
_FINISHED = (re.compile(r"^Finished jobid: (\d+)\b"), re.compile(r"^Finished job (\d+)\.$"))


def _number(text: str, path: Path, column: str) -> float:
    text = text.strip()
    if text in _NA:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path}: column {column!r} holds {text!r}, not a number; delete the file "
                        "(Snakemake rewrites it when its job runs again)") from None


def read_benchmark_tsv(path: str | os.PathLike) -> dict[str, float]:
    """One Snakemake benchmark file as {wall_s, cpu_s, max_rss_mb} (sums over repeat rows, max RSS);
    NaN where Snakemake wrote NA. A file without the ``s`` column or without a row -> UserError."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read benchmark file {path} ({exc}); delete it and run its job again") from None
    if not rows or "s" not in rows[0]:
        raise UserError(f"{path} is not a Snakemake benchmark file (no 's' column or no row); delete it "
                        "and run its job again")
    wall = [_number(r.get("s") or "", path, "s") for r in rows]
    cpu = [_number(r.get("cpu_time") or "", path, "cpu_time") for r in rows]
    rss = [_number(r.get("max_rss") or "", path, "max_rss") for r in rows]
    if any(math.isnan(w) for w in wall):
        raise UserError(f"{path}: the wall time 's' is missing; delete the file and run its job again")
    return {"wall_s": sum(wall), "cpu_s": math.nan if any(math.isnan(c) for c in cpu) else sum(cpu),
            "max_rss_mb": math.nan if all(math.isnan(r) for r in rss) else max(r for r in rss if not math.isnan(r))}


def _local_to_utc(stamp: str) -> dt.datetime:
    """A Snakemake log time (``Sun Nov 29 09:06:45 2026``, local time) in UTC."""
    return dt.datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y").astimezone(dt.timezone.utc)


def parse_snakemake_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished jobs of one Snakemake run log: [{rule, jobid, benchmark (path as written), start,
    end (UTC datetimes), workdir (the log's "Working directory", else the folder holding .snakemake)}]."""
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    workdir = path.resolve().parent.parent.parent  # <workdir>/.snakemake/log/<file>
    for line in lines[:40]:
        if line.strip().startswith("Working directory:"):
            workdir = Path(line.split(":", 1)[1].strip())
            break
    started: dict[str, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    stamp: dt.datetime | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _STAMP.match(line.strip()):
            try:
                stamp = _local_to_utc(m.group(1))
            except ValueError:
                stamp = None
        elif (m := _RULE.match(line)) and stamp is not None:
            fields: dict[str, str] = {}
            while i + 1 < len(lines) and (f := _FIELD.match(lines[i + 1])):
                fields[f.group(1)] = f.group(2).strip()
                i += 1
            if "jobid" in fields:
                started[fields["jobid"]] = {"rule": m.group(1), "jobid": int(fields["jobid"]),
                                            "benchmark": fields.get("benchmark"), "start": stamp,
                                            "workdir": workdir}
        else:
            for pattern in _FINISHED:
                if (m := pattern.match(line.strip())) and stamp is not None and m.group(1) in started:
                    done.append({**started.pop(m.group(1)), "end": stamp})
                    break
        i += 1
    return done


def _log_times(log_dir: Path | None) -> dict[Path, list[dict[str, Any]]]:
    """{resolved benchmark path: [finished job blocks naming it, oldest log first]}."""
    out: dict[Path, list[dict[str, Any]]] = {}
    if log_dir is None or not Path(log_dir).is_dir():
        return out
    for log in sorted(Path(log_dir).glob("*.snakemake.log")):  # names start with the run's ISO time
        try:
            jobs = parse_snakemake_log(log)
        except OSError:
            continue
        for job in jobs:
            if job["benchmark"]:
                bench = Path(job["benchmark"])
                bench = (bench if bench.is_absolute() else job["workdir"] / bench).resolve()
                out.setdefault(bench, []).append(job)
    return out


def collect_jobs(bench_dir: str | os.PathLike, *,
                 snakemake_log_dir: str | os.PathLike | None = ".snakemake/log",
                 job_log_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per benchmark file under ``bench_dir`` (``<log_dir>/benchmarks/<suite>``): ``rule`` (the
    first folder below ``bench_dir``, or the file's stem for a file directly in it), ``wildcards`` (the
    rest of the relative path without ``.tsv``, e.g. ``resnet20/w3a3/asga/digits-to-fashion-mnist-s0``),
    ``wall_s``, ``cpu_s``, ``max_rss_mb`` (from the file), ``start_utc``/``end_utc`` (tz-aware) and
    ``time_source`` ("snakemake-log" or "mtime"; see the module docstring). ``snakemake_log_dir`` is the
    workflow's ``.snakemake/log`` (relative paths are taken from the current directory; None: use file
    times only). With ``job_log_dir`` (the workflow's ``<log_dir>/<suite>``, where job ``<rule>`` with
    wildcards ``w`` logs to ``<rule>/<w>.log``, or ``<rule>.log`` without wildcards), ``cpu_s`` and
    ``max_rss_mb`` come from the usage line the job's log ends with (exact, measured by the process that did
    the work, see :mod:`mpqbench.jobserver`) instead of Snakemake's sampled ones. Sorted by rule, then
    wildcards. A missing ``bench_dir`` gives an empty frame."""
    from mpqbench.jobserver import read_usage

    bench_dir = Path(bench_dir)
    logged = _log_times(Path(snakemake_log_dir) if snakemake_log_dir is not None else None)
    rows = []
    for path in sorted(bench_dir.rglob("*.tsv")) if bench_dir.is_dir() else []:
        rel = path.relative_to(bench_dir).with_suffix("")
        rule, wildcards = (rel.parts[0], Path(*rel.parts[1:]).as_posix()) if len(rel.parts) > 1 else (rel.name, "")
        stats = read_benchmark_tsv(path)
        if job_log_dir is not None:
            log = Path(job_log_dir) / (f"{rule}/{wildcards}.log" if wildcards else f"{rule}.log")
            if (measured := read_usage(log)) is not None:
                stats = {**stats, "cpu_s": measured[0], "max_rss_mb": measured[1]}
        mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc)
        match = [j for j in logged.get(path.resolve(), [])
                 if abs((j["end"] - mtime).total_seconds()) <= MATCH_TOLERANCE_S]
        if match:  # the log's start (whole seconds); the file's write time is the end, to sub-second
            start, end, source = match[-1]["start"], max(mtime, match[-1]["start"]), "snakemake-log"
        else:
            start, end, source = mtime - dt.timedelta(seconds=stats["wall_s"]), mtime, "mtime"
        rows.append({"rule": rule, "wildcards": wildcards, **stats, "start_utc": start, "end_utc": end,
                     "time_source": source})
    frame = pd.DataFrame(rows, columns=JOB_COLUMNS)
    frame["start_utc"] = pd.to_datetime(frame["start_utc"], utc=True)
    frame["end_utc"] = pd.to_datetime(frame["end_utc"], utc=True)
    for col in ("wall_s", "cpu_s", "max_rss_mb"):
        frame[col] = frame[col].astype("float64")
    return frame.sort_values(["rule", "wildcards"], kind="mergesort", ignore_index=True)


def _iso(ts: Any) -> str:
    return "NA" if pd.isna(ts) else pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def jobs_tsv(frame: pd.DataFrame) -> str:
    """The text of ``results/jobs.tsv``: the columns of :data:`JOB_COLUMNS`, rows by rule then wildcards,
    seconds and MB with 2 decimals, times as ISO 8601 UTC with milliseconds, ``NA`` for missing values."""
    frame = frame.sort_values(["rule", "wildcards"], kind="mergesort")
    lines = ["\t".join(JOB_COLUMNS)]
    for r in frame.itertuples(index=False):
        nums = ["NA" if pd.isna(v) else f"{float(v):.2f}" for v in (r.wall_s, r.cpu_s, r.max_rss_mb)]
        lines.append("\t".join([r.rule, r.wildcards, *nums, _iso(r.start_utc), _iso(r.end_utc), r.time_source]))
    return "\n".join(lines) + "\n"


def write_jobs_tsv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write :func:`jobs_tsv` atomically (the same frame gives the same bytes)."""
    from mpqbench.utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(jobs_tsv(frame).encode())


def suite_cost(frame: pd.DataFrame) -> dict[str, Any]:
    """What the jobs cost: ``job_time_s`` (sum of wall seconds), ``cpu_time_s`` (sum of CPU seconds over
    the jobs that have one; ``cpu_time_missing`` counts the others), ``elapsed_s`` (last end - first
    start: the wall time of the workflow, None without jobs), ``jobs``, ``time_source`` (jobs per source
    of start/end) and ``per_rule`` {rule: {jobs, total_s, mean_s}}. Seconds rounded to 0.01."""
    if frame.empty:
        return {"job_time_s": 0.0, "cpu_time_s": 0.0, "cpu_time_missing": 0, "elapsed_s": None, "jobs": 0,
                "time_source": {}, "per_rule": {}}
    frame = frame.sort_values(["rule", "wildcards"], kind="mergesort")
    per_rule = {}
    for rule, part in frame.groupby("rule", sort=True):
        total = float(part["wall_s"].sum())
        per_rule[str(rule)] = {"jobs": int(len(part)), "total_s": round(total, 2), "mean_s": round(total / len(part), 2)}
    elapsed = (frame["end_utc"].max() - frame["start_utc"].min()).total_seconds()
    return {
        "job_time_s": round(float(frame["wall_s"].sum()), 2),
        "cpu_time_s": round(float(frame["cpu_s"].sum(skipna=True)), 2),
        "cpu_time_missing": int(frame["cpu_s"].isna().sum()),
        "elapsed_s": round(float(elapsed), 2),
        "jobs": int(len(frame)),
        "time_source": {str(k): int(v) for k, v in sorted(frame["time_source"].value_counts().items())},
        "per_rule": per_rule,
    }


def read_jobs_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``jobs.tsv`` written by :func:`write_jobs_tsv` back into the frame of :func:`collect_jobs`
    (so a committed suite cost can be re-aggregated without the workflow's logs); malformed → UserError."""
    from mpqbench.errors import UserError

    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=["NA"])
        missing = [c for c in JOB_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"missing column(s) {', '.join(missing)}")
        for col in ("wall_s", "cpu_s", "max_rss_mb"):
            frame[col] = pd.to_numeric(frame[col], errors="raise").astype("float64")
        for col in ("start_utc", "end_utc"):
            frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
        frame["wildcards"] = frame["wildcards"].fillna("")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {path} ({exc}); regenerate it with `mpqbench aggregate --bench-dir ...`") from None
    return frame[JOB_COLUMNS].sort_values(["rule", "wildcards"], kind="mergesort", ignore_index=True)
