"""Do the findings hold across architectures? The architecture suite's summary, one network beside the other.

    python scripts/arch_comparison.py [results/archs]

Reads ``summary.json`` of a results folder whose suite runs several architectures (``config/archs.yaml``) and
prints, in Markdown:

1. per budget level (each network's budgets in order of BitOPs: its lower one beside the other's lower one),
   every entry at the suite's default search length: mean top-1 ± the half-width of its 95 % Student-t interval
   over seeds, the paired difference to the best entry of its network and budget with its 95 % interval, and
   whether it is tied with that best (the interval contains 0);
2. the agreement of the two networks' rankings at each level: Kendall's tau of the mean top-1 orders over the
   common entries, and the entries whose verdict differs (statistically below the best on one network, tied
   with it on the other): a ranking inside the noise is a tie, so only those count as disagreements;
3. ASGA's efficiency gain at equal accuracy against the reference per network and budget (value, bound and
   95 % bootstrap interval, as the leaderboard shows it), and its fixed-length gain.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

from mpqbench.board.gains import format_gain


def _gain(block: dict) -> str:
    """A gain with its interval, as the leaderboard writes it (``> +150% [+30%, +∞]``)."""
    return format_gain(block.get("value"), block.get("bound"), block.get("ci_low"), block.get("ci_high"))


def _entries(group: dict) -> dict[str, dict]:
    return {k: e for k, e in group["entries"].items()
            if abs(float(e.get("search_length") or 1.0) - 1.0) <= 1e-9 and e.get("rank") is not None}


def _verdict(e: dict) -> str:
    if e.get("rank") == 1:
        return "best"
    if e.get("paired_diff_pp") is None:
        return "n/a"
    return "tied" if e.get("tied_with_best") else "below"


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's tau-a between two orders of the same items."""
    pos_a, pos_b = {k: i for i, k in enumerate(a)}, {k: i for i, k in enumerate(b)}
    pairs = list(itertools.combinations(a, 2))
    s = sum(1 if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) > 0 else -1 for x, y in pairs)
    return s / len(pairs) if pairs else math.nan


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "results/archs")
    path = folder / "summary.json"
    if not path.is_file():
        print(f"error: {path} does not exist; run the architecture suite first "
              "(snakemake --cores 2 all --configfile config/archs.yaml)", file=sys.stderr)
        return 2
    try:
        summary = json.loads(path.read_text())
        groups = summary["groups"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        print(f"error: {path} is not a summary.json written by `mpqbench aggregate`; re-run the suite's aggregate "
              "step (snakemake --cores 2 all --configfile config/archs.yaml)", file=sys.stderr)
        return 2
    levels: dict[str, list[tuple[str, str, dict]]] = {}
    for suite, by_arch in groups.items():
        for arch, by_target in by_arch.items():
            for target, by_budget in by_target.items():
                budgets = sorted(by_budget.items(), key=lambda kv: kv[1]["budget_bitops_g"])
                for i, (budget, group) in enumerate(budgets):
                    name = "lower budget" if i == 0 else "higher budget" if i == len(budgets) - 1 else f"budget {i + 1}"
                    levels.setdefault(name, []).append((arch, budget, group))
    archs = sorted({arch for rows in levels.values() for arch, _, _ in rows})
    print(f"# {path}: {', '.join(archs)}\n")
    for level, rows in levels.items():
        print(f"## {level}: " + "; ".join(f"{arch} at {budget}" for arch, budget, _ in rows) + "\n")
        ents = {arch: _entries(group) for arch, _, group in rows}
        common = sorted(set.intersection(*(set(e) for e in ents.values())),
                        key=lambda k: -ents[rows[0][0]][k]["top1_mean"])
        print("| entry | " + " | ".join(f"{arch} {budget}: top-1 (%) | vs best (pp) | verdict"
                                         for arch, budget, _ in rows) + " |")
        print("|---|" + "---:|---|---|" * len(rows))
        for k in common:
            cells = []
            for arch, _, _ in rows:
                e = ents[arch][k]
                ci = "" if e.get("top1_ci") is None else f" ± {e['top1_ci']:.2f}"
                diff = ("–" if e.get("paired_diff_pp") is None
                        else f"{e['paired_diff_pp']:+.2f} ± {e['paired_diff_ci']:.2f}")
                cells += [f"{e['top1_mean']:.2f}{ci}", diff, _verdict(e)]
            print(f"| {k} | " + " | ".join(cells) + " |")
        print()
        if len(rows) == 2:
            (a1, _, _), (a2, _, _) = rows
            order = {a: sorted(common, key=lambda k, a=a: -ents[a][k]["top1_mean"]) for a in (a1, a2)}
            tau = kendall_tau(order[a1], order[a2])
            differ = [k for k in common
                      if {_verdict(ents[a1][k]), _verdict(ents[a2][k])} in ({"below", "tied"}, {"below", "best"})]
            print(f"Kendall's tau of the mean top-1 orders ({len(common)} entries): {tau:+.2f}. Best: {a1} "
                  f"{order[a1][0]}, {a2} {order[a2][0]}. Verdicts that differ (below the best on one network, "
                  f"tied with or the best on the other): {', '.join(differ) or 'none'}.\n")
    print("## ASGA's efficiency gain at equal accuracy (search MACs) against the reference\n")
    print("| network | budget | entry | reference | ASGA top-1 (%) | gain at equal accuracy [95 % CI] | "
          "fixed-length gain |")
    print("|---|---|---|---|---:|---|---:|")
    for rows in levels.values():
        for arch, budget, group in rows:
            for name, g in sorted((group.get("gain_at_equal_accuracy") or {}).items()):
                if not name.startswith("asga"):
                    continue
                fixed = (g.get("fixed_length_gain") or {}).get("macs")
                print(f"| {arch} | {budget} | {name} | {g['reference']} | {g['proposed_top1_mean']:.2f} ± "
                      f"{g['proposed_top1_ci']:.2f} | {_gain(g['macs'])} | {format_gain(fixed, None)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
