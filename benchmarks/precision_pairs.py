"""Paired top-1 differences between two runs of one suite at two precisions (bf16 against fp32).

Reads the run records of a results folder (the new run) and the records committed under the same folder at a
git revision (the other precision), pairs the runs of every entry by seed (same suite, arch, target, budget,
method, proxy, seed) and prints, per entry (method at a budget), the mean top-1 at both precisions, the mean
paired difference with its 95 % Student-t interval, the entry's seed noise (the half-width of the 95 %
interval of the reference's mean over its seeds, as ``mpqbench compare`` uses it), and whether the
difference is within that noise (|Δ| ≤ noise). The last lines count the entries outside.

    python benchmarks/precision_pairs.py --runs results/runs --against <rev with the fp32 records>
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

from mpqbench.board.compare import committed_records, seed_noise
from mpqbench.board.records import load_records, run_identity
from mpqbench.board.stats import t_quantile


def _precision(rec: dict) -> str:
    return (rec.get("finetune") or {}).get("precision") or (rec.get("search") or {}).get("precision") or "fp32"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/runs", help="the new run's records folder")
    ap.add_argument("--against", required=True, help="git revision whose committed records are the reference")
    args = ap.parse_args(argv)
    now, _ = load_records(args.runs)
    old, name = committed_records(args.runs, args.against)
    if old is None:
        print(f"error: no reference records: {name}", file=sys.stderr)
        return 2
    top1 = lambda r: (r.get("metrics") or {}).get("top1")  # noqa: E731
    cur = {run_identity(r): r for r in now if top1(r) is not None}
    ref = {run_identity(r): r for r in old if top1(r) is not None}
    p_now = sorted({_precision(r) for r in cur.values()})
    p_ref = sorted({_precision(r) for r in ref.values()})
    entries = sorted({k[:-1] for k in cur if k in ref}, key=lambda e: (e[3], e[4], e[5]))
    print(f"{len(cur)} runs ({'/'.join(p_now)}) against {len(ref)} runs ({'/'.join(p_ref)}, git {args.against} "
          f"{name}); {sum(1 for k in cur if k in ref)} pairs\n")
    print("| budget | entry | ref top-1 | new top-1 | Δ new − ref (pp) | 95 % CI of Δ | seed noise | within |")
    print("|---|---|---|---|---|---|---|---|")
    outside, diffs = [], []
    for e in entries:
        keys = sorted(k for k in cur if k[:-1] == e and k in ref)
        d = [top1(cur[k]) - top1(ref[k]) for k in keys]
        diffs.extend(d)
        mean = statistics.fmean(d)
        half = (float(t_quantile(0.95, len(d) - 1)) * statistics.stdev(d) / math.sqrt(len(d))) if len(d) > 1 else math.nan
        noise = seed_noise([top1(ref[k]) for k in ref if k[:-1] == e])
        ok = noise is not None and abs(mean) <= noise
        if not ok:
            outside.append(e)
        print(f"| {e[3]} | {e[4]} | {statistics.fmean(top1(ref[k]) for k in keys):.2f} | "
              f"{statistics.fmean(top1(cur[k]) for k in keys):.2f} | {mean:+.2f} | ±{half:.2f} | "
              f"{'n/a' if noise is None else f'±{noise:.2f}'} | {'yes' if ok else '**no**'} |")
    print(f"\n{len(entries) - len(outside)} of {len(entries)} entries within their seed noise; "
          f"mean paired difference over all {len(diffs)} pairs {statistics.fmean(diffs):+.3f} pp "
          f"(sd {statistics.stdev(diffs):.2f} pp)")
    for e in outside:
        print(f"outside: {e[3]} {e[4]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
