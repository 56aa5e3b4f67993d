"""The results README's tables.

    python scripts/results_table.py [results]                 # the generated table block (= `mpqbench export`'s
                                                              #   leaderboard.md), printed
    python scripts/results_table.py [results] --write-readme  # ... and written between the markers of
                                                              #   results/README.md (a test compares the two)
    python scripts/results_table.py results/leaderboard.csv   # the detailed tables below, printed

The block is :func:`mpqbench.board.export.render_markdown` of the results folder: one table per (suite, arch,
target, budget) with rank, top-1 mean ± 95 % CI (n seeds), ties with the best, BitOPs and budget used, size,
search cost and the gains over the reference, and the reference of each method.

The detailed tables (:func:`table`, :func:`gains_table`), from a leaderboard CSV:

First table: one row per entry (method @ proxy at the suite's default search length), by budget (largest
first) then mean top-1 (best first): mean top-1 ± the half-width of its 95 % Student-t interval over the
seeds, the seeds, whether the entry is statistically tied with the best entry of its budget (paired
differences across seeds; "best" marks the best, "n/a" fewer than 2 common seeds), budget used (searchable
BitOPs / budget; entries outside the budget window are marked "not matched" and have no rank), the
extraction, BitOPs, average bits and the search cost (MACs processed, hardware independent, and wall
seconds); settled = MACs processed until the argmax policy reached its final value; teacher = the MACs of
the FP proxy teacher a method needs.

Second table (when the runs hold accuracy-vs-search-cost curves): the efficiency gain at equal accuracy
against the reference (see mpqbench.board.equal_accuracy_gains), with its bootstrap interval, beside
the fixed-length gain over the same reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from mpqbench import board as lb
from mpqbench import runs


def _num(v, fmt: str, scale: float = 1.0) -> str:
    return "" if pd.isna(v) else format(float(v) / scale, fmt)


def _tied(r) -> str:
    if pd.isna(r["rank"]):
        return ""
    if r["rank"] == 1 and r["paired_diff_pp"] == 0 and r["paired_diff_ci"] == 0:
        return "best"
    if pd.isna(r["tied_with_best"]):
        return "n/a"
    return (f"{'yes' if r['tied_with_best'] else 'no'} ({r['paired_diff_pp']:+.2f} ± "
            f"{r['paired_diff_ci']:.2f})")


def table(csv: Path) -> str:
    """The entries table (markdown) of a leaderboard CSV."""
    ranked = lb.rank_methods(lb.read_leaderboard_csv(csv))
    ranked = ranked[(ranked["n_seeds"] > 0) & ((ranked["search_length"] - 1.0).abs() <= 1e-9)].copy()
    ranked["_matched"] = ranked["budget_matched"].fillna(False).astype(bool)
    ranked = ranked.sort_values(["budget_bitops_g", "_matched", "top1_mean", "method", "proxy"],
                                ascending=[False, False, False, True, True], kind="mergesort")
    lines = ["| budget | method | proxy | top-1 (%) mean ± 95% CI | seeds | tied with best (paired diff, pp) "
             "| budget used | extraction | BitOPs all (G) | avg W/A bits | search MACs (G) | settled at (G MACs) "
             "| + teacher MACs (G) | search s | repaired |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in ranked.iterrows():
        top1 = f"{r['top1_mean']:.2f}" + ("" if pd.isna(r["top1_ci"]) else f" ± {r['top1_ci']:.2f}")
        used = "" if pd.isna(r["budget_used"]) else f"{r['budget_used']:.1%}"
        if not r["_matched"]:
            used += " (not matched)"
        teacher = r["teacher_macs"]
        teacher = f"{teacher / 1e9:.0f}" if pd.notna(teacher) and teacher > 0 else ""
        extraction = "" if pd.isna(r["search_extraction"]) else r["search_extraction"]
        lines.append(
            f"| {r['budget']} | {r['method']} | {r['proxy']} | {top1} | {r['n_seeds']} | {_tied(r)} | {used} "
            f"| {extraction} | {_num(r['bitops_g_all'], '.3f')} "
            f"| {_num(r['avg_w_bits'], '.2f')}/{_num(r['avg_a_bits'], '.2f')} "
            f"| {_num(r['search_macs_processed'], '.0f', 1e9)} | {_num(r['search_macs_to_settle'], '.0f', 1e9)} "
            f"| {teacher} | {_num(r['search_wall_s'], '.1f')} | {'yes' if r['repaired'] else ''} |")
    return "\n".join(lines)


def gains_table(csv: Path) -> str:
    """The equal-accuracy gains (markdown) of a leaderboard CSV; empty when it has no reference curve."""
    df = lb.read_leaderboard_csv(csv)
    equal = lb.equal_accuracy_table(lb.equal_accuracy_gains(df))
    if equal.empty:
        return ""
    lines = ["| budget | method | proxy | reference | gain at equal accuracy, MACs [95% CI] | same, wall s "
             "| fixed-length gain, MACs | top-1 (%) | reference MACs at equal accuracy (G) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in equal.iterrows():
        fixed_gain = lb.format_gain(r["fixed_length_gain_macs"], None)
        lines.append(
            f"| {r['budget']} | {r['method']} | {r['proxy']} | {r['reference']} "
            f"| {lb.format_gain(r['gain'], r['bound'], r['ci_low'], r['ci_high'])} "
            f"| {lb.format_gain(r['gain_wall_s'], r['bound_wall_s'], r['ci_low_wall_s'], r['ci_high_wall_s'])} "
            f"| {fixed_gain} | {r['top1_mean']:.2f} | {_num(r['reference_macs_at_equal_accuracy'], '.0f', 1e9)} |")
    return "\n".join(lines)


def readme_block(results_dir: Path) -> str:
    """The results README's generated table block: ``mpqbench export``'s Markdown of ``results_dir``."""
    from mpqbench.board import export

    return export.render_markdown(export.load(results_dir))


def write_readme(results_dir: Path, readme: Path) -> bool:
    """Replace the generated block of ``readme``; True when it changed."""
    from mpqbench.board import export

    text = readme.read_text()
    new = export.replace_readme_block(text, readme_block(results_dir))
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--write-readme"]
    default = runs.Layout(suite="default", target="").results_dir
    path = Path(args[0] if args else default)
    if path.suffix == ".csv":  # the detailed tables of a leaderboard CSV
        print(table(path))
        gains = gains_table(path)
        if gains:
            print()
            print(gains)
        return 0
    if "--write-readme" in argv:
        changed = write_readme(path, path / "README.md")
        print(f"{path / 'README.md'}: {'table block updated' if changed else 'table block already up to date'}")
        return 0
    print(readme_block(path), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
