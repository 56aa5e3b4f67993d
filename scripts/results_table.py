"""Print the README's results table (markdown) from results/leaderboard.csv.

    python scripts/results_table.py [results/leaderboard.csv]

Rows: one per run, by budget (largest first) then top-1 (best first). Search cost is MACs processed
(hardware independent) and wall seconds; settled = MACs processed until the argmax policy reached its
final value; teacher = the MACs of the FP proxy teacher a method needs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def table(csv: Path) -> str:
    df = pd.read_csv(csv)
    df = df[df["status"] == "ok"].copy()
    df["_budget"] = df["budget_bitops_g"]
    df = df.sort_values(["_budget", "top1_pct", "method", "proxy"], ascending=[False, False, True, True])
    lines = ["| budget | method | proxy | top-1 (%) | BitOPs all (G) | avg W/A bits | search MACs (G) "
             "| settled at (G MACs) | + teacher MACs (G) | search s | repaired |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        teacher = r.get("teacher_macs")
        teacher = f"{teacher / 1e9:.0f}" if pd.notna(teacher) and teacher > 0 else ""
        settled = r.get("search_macs_to_settle")
        settled = f"{settled / 1e9:.0f}" if pd.notna(settled) else ""
        lines.append(
            f"| {r['budget']} | {r['method']} | {r['proxy']} | {r['top1_pct']:.2f} | {r['bitops_g_all']:.3f} "
            f"| {r['avg_w_bits']:.2f}/{r['avg_a_bits']:.2f} | {r['search_macs_processed'] / 1e9:.0f} | {settled} | {teacher} "
            f"| {r['search_wall_s']:.1f} | {'yes' if str(r['search_repaired']).lower() == 'true' else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "results/leaderboard.csv")))
