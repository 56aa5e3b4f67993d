"""How a results folder's run records compare with the ones committed in git (``mpqbench compare``).

``mpqbench reproduce`` ends with this comparison, and so does every workflow run that ran jobs: it says where
the records are and whether they equal the committed versions (by default those of ``git HEAD``).

Two records of one run (same suite, arch, target, budget, method, proxy, seed) are **identical** when everything
a run computes is equal: the policy, what it achieves, the metrics, the search's and the fine-tune's settings,
steps and MACs, its trace. What depends on the machine and the moment is left out (:data:`VOLATILE`): wall
times, timestamps, the environment block, the git commit, provenance paths. On the same software stack a
re-run is bit-for-bit identical; on another one, top-1 may move. A moved entry (its mean top-1 over the seeds
present in both) is **flagged** when the move exceeds its seed noise: the half-width of the committed entry's
95 % confidence interval of the mean (Student's t, n − 1 degrees of freedom); an entry with one seed has no
measured noise, so any move of it is flagged.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mpqbench.board.records import load_records, run_identity
from mpqbench.board.stats import t_quantile
from mpqbench.errors import UserError
from mpqbench.records import RecordProblem, check_record

# keys left out of the comparison wherever they occur: what the machine and the moment decide
VOLATILE = frozenset({"created_utc", "wall_s", "teacher_wall_s", "gpu_hours", "env", "git", "provenance",
                      "device", "run_id"})
CONFIDENCE = 0.95


def comparable(rec: Mapping[str, Any]) -> Any:
    """A record without its volatile parts (:data:`VOLATILE`, at any depth) and without the loader's ``_path``."""
    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE and k != "_path"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(rec)


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise UserError(f"git {args[0]} failed in {root}: {last}")
    return proc.stdout


def committed_records(runs_dir: str | Path, rev: str = "HEAD") -> tuple[list[dict] | None, str]:
    """The valid run records committed under ``runs_dir`` at ``rev`` and a short name of that commit.

    (None, reason) when there is nothing to compare with: not a git checkout, or no records at ``rev``."""
    runs_dir = Path(runs_dir).resolve()
    probe = runs_dir if runs_dir.is_dir() else runs_dir.parent
    while not probe.is_dir():
        probe = probe.parent
    try:
        inside = subprocess.run(["git", "-C", str(probe), "rev-parse", "--show-toplevel"], capture_output=True,
                                text=True, check=False)
    except FileNotFoundError:
        return None, "git is not installed"
    if inside.returncode != 0:
        return None, "not a git checkout"
    root = Path(inside.stdout.strip())
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=False)
    if commit.returncode != 0:
        return None, f"no commit {rev!r} in this checkout"
    short = commit.stdout.strip()
    rel = runs_dir.relative_to(root).as_posix()
    names = [n for n in _git(root, "ls-tree", "-r", "--name-only", short, "--", rel).decode().splitlines()
             if n.endswith(".json")]
    if not names:
        return None, f"no records under {rel}/ in git {rev} ({short})"
    batch = _git(root, "cat-file", "--batch", stdin="".join(f"{short}:{n}\n" for n in names).encode())
    records, pos = [], 0
    for name in names:
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split()[2])
        body = batch[header_end + 1: header_end + 1 + size]
        pos = header_end + 1 + size + 1
        try:
            rec = check_record(json.loads(body))
        except (RecordProblem, ValueError):
            continue  # a committed file that is not a record is not compared (aggregate reports it)
        records.append({**rec.model_dump(mode="json"), "_path": name[len(rel) + 1:]})
    return records, short


@dataclass
class Difference:
    """One run present on both sides whose computed content differs."""

    run: tuple
    top1_committed: float | None
    top1_now: float | None
    fields: list[str]  # the top-level record fields that differ

    @property
    def delta(self) -> float | None:
        if self.top1_committed is None or self.top1_now is None:
            return None
        return self.top1_now - self.top1_committed


@dataclass
class Comparison:
    """The outcome of comparing a results folder's records with the committed ones."""

    runs_dir: str
    against: str  # e.g. "git HEAD (677f7d3)"
    total: int = 0  # runs present now
    identical: int = 0
    differences: list[Difference] = field(default_factory=list)
    new: list[tuple] = field(default_factory=list)  # runs not committed
    missing: list[tuple] = field(default_factory=list)  # committed runs not present now
    flagged: list[tuple[tuple, float, float | None]] = field(default_factory=list)  # (entry, Δ mean, noise)
    within_noise: list[tuple[tuple, float, float]] = field(default_factory=list)
    unavailable: str | None = None  # why nothing could be compared

    @property
    def all_identical(self) -> bool:
        return (self.unavailable is None and not self.differences and not self.new and not self.missing
                and self.total > 0)


def _top1(rec: Mapping[str, Any]) -> float | None:
    metrics = rec.get("metrics") or {}
    return metrics.get("top1")


def seed_noise(top1s: list[float], confidence: float = CONFIDENCE) -> float | None:
    """Half-width of the confidence interval of the mean of ``top1s`` (None with fewer than two values)."""
    n = len(top1s)
    if n < 2:
        return None
    mean = sum(top1s) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in top1s) / (n - 1))
    return float(t_quantile(confidence, n - 1)) * sd / math.sqrt(n)


def compare(now: list[dict], committed: list[dict], *, runs_dir: str, against: str) -> Comparison:
    """Compare two sets of valid records run by run (see the module docstring for the rules)."""
    out = Comparison(runs_dir=runs_dir, against=against, total=len(now))
    old = {run_identity(r): r for r in committed}
    cur = {run_identity(r): r for r in now}
    for key, rec in sorted(cur.items(), key=lambda kv: str(kv[0])):
        before = old.get(key)
        if before is None:
            out.new.append(key)
            continue
        a, b = comparable(before), comparable(rec)
        if a == b:
            out.identical += 1
            continue
        fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        out.differences.append(Difference(key, _top1(before), _top1(rec), fields))
    out.missing = sorted((k for k in old if k not in cur), key=str)
    # entries (a run without its seed) that moved: mean over the seeds present on both sides
    moved: dict[tuple, list[Difference]] = {}
    for d in out.differences:
        if d.delta is not None and d.delta != 0:
            moved.setdefault(d.run[:-1], []).append(d)
    for entry in sorted(moved, key=str):
        seeds = {k[-1] for k in cur if k[:-1] == entry and k in old}
        both = [k for k in old if k[:-1] == entry and k[-1] in seeds]
        delta = sum(_top1(cur[k]) - _top1(old[k]) for k in both) / len(both)  # type: ignore[operator]
        noise = seed_noise([_top1(old[k]) for k in old if k[:-1] == entry])  # type: ignore[misc]
        if noise is None or abs(delta) > noise:
            out.flagged.append((entry, delta, noise))
        else:
            out.within_noise.append((entry, delta, noise))
    return out


def _name(run: tuple) -> str:
    suite, arch, target, budget, method, proxy, *seed = run
    text = f"{arch} {budget} {method}@{proxy}"
    return f"{text} s{seed[0]}" if seed else text


def format_comparison(c: Comparison, *, limit: int = 10) -> list[str]:
    """The comparison as lines: the first says where the records are and the verdict, the rest the details."""
    head = f"compare: {c.runs_dir}/ holds {c.total} run record{'s' if c.total != 1 else ''}"
    if c.unavailable is not None:
        return [f"{head}; nothing to compare them with ({c.unavailable})"]
    if c.all_identical:
        return [f"{head}, identical to the committed ones ({c.against})"]
    parts = [f"{c.identical} identical"]
    if c.differences:
        parts.append(f"{len(c.differences)} differ")
    if c.new:
        parts.append(f"{len(c.new)} not committed")
    if c.missing:
        parts.append(f"{len(c.missing)} committed but missing here")
    lines = [f"{head}; against the committed ones ({c.against}): {', '.join(parts)}"]
    for d in c.differences[:limit]:
        if d.delta is not None and "metrics" in d.fields:
            lines.append(f"  {_name(d.run)}: top-1 {d.top1_committed:.2f} -> {d.top1_now:.2f} ({d.delta:+.2f} pt)"
                         + (f"; also {', '.join(f for f in d.fields if f != 'metrics')}" if d.fields != ["metrics"]
                            else ""))
        else:
            lines.append(f"  {_name(d.run)}: {', '.join(d.fields)} differ")
    if len(c.differences) > limit:
        lines.append(f"  ... and {len(c.differences) - limit} more")
    for key, what in ((c.new, "not committed"), (c.missing, "committed but missing here")):
        for run in key[:limit]:
            lines.append(f"  {_name(run)}: {what}")
        if len(key) > limit:
            lines.append(f"  ... and {len(key) - limit} more {what}")
    for entry, delta, noise in c.flagged:
        bound = f"beyond its seed noise ±{noise:.2f}" if noise is not None else "one seed: no seed noise to judge by"
        lines.append(f"  FLAG {_name(entry)}: mean top-1 moved {delta:+.2f} pt, {bound}")
    if c.within_noise:
        lines.append(f"  {len(c.within_noise)} moved entr{'ies' if len(c.within_noise) != 1 else 'y'} within "
                     "their seed noise (the committed 95 % CI half-width)")
    return lines


def compare_with_git(runs_dir: str | Path, rev: str = "HEAD") -> Comparison:
    """Compare the records under ``runs_dir`` with those committed there at ``rev``."""
    runs_dir = Path(runs_dir)
    now, _ = load_records(runs_dir)  # unreadable files are reported by aggregate, not compared
    shown = runs_dir.as_posix()
    committed, name = committed_records(runs_dir, rev)
    if committed is None:
        c = Comparison(runs_dir=shown, against=f"git {rev}", total=len(now))
        c.unavailable = name
        return c
    return compare(now, committed, runs_dir=shown, against=f"git {rev} {name}")
