"""Static seaborn figures of a results set (results/figures/*.png), written by ``mpqbench figures``.

Every method @ proxy entry has one colour in every panel of a figure (:func:`entry_palette`).

- ``pareto_<suite>_<arch>.png``: target top-1 vs BitOPs (all layers), mean ± std over seeds, the
  accuracy-vs-BitOPs Pareto front drawn as a step line;
- ``cost_<suite>_<arch>.png``: target top-1 vs search cost (MACs processed, log scale), one panel per budget;
- ``policies_<suite>_<arch>_<budget>.png``: per-layer weight and activation bits of every method's policy
  (seed of the first record), layers in module order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mpqbench import leaderboard as lb  # noqa: E402
from mpqbench.utils import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        # Fixed metadata so that the same results give byte-identical PNGs.
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _entry_label(row: Mapping[str, Any]) -> str:
    return f"{row['method']}" if row["proxy"] in ("", None) else f"{row['method']} ({row['proxy']})"


def entry_palette(entries: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per entry label, in sorted order, shared by every panel that draws the entries."""
    names = sorted(set(entries))
    colours = sns.color_palette("tab10" if len(names) <= 10 else "tab20" if len(names) <= 20 else "husl", len(names))
    return dict(zip(names, colours))


def write_figures(df: pd.DataFrame, records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Write every figure for the flat frame ``df`` (from :func:`mpqbench.leaderboard.records_to_frame`)."""
    os.makedirs(out_dir, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    ranked = lb.rank_methods(df)
    ranked = ranked[ranked["n_seeds"] > 0]
    written: list[Path] = []
    for (suite, arch), part in ranked.groupby(["suite", "arch"], sort=True):
        part = part.assign(entry=[_entry_label(r) for _, r in part.iterrows()])
        palette = entry_palette(part["entry"])
        front = lb.pareto_front(part)
        # -- accuracy vs BitOPs with the Pareto front
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        sns.scatterplot(data=part, x="bitops_g_all", y="top1_mean", hue="entry", hue_order=list(palette),
                        palette=palette, style="budget", s=70, ax=ax)
        ax.errorbar(part["bitops_g_all"], part["top1_mean"], yerr=part["top1_std"].fillna(0), fmt="none",
                    ecolor="0.6", elinewidth=0.8, zorder=0)
        pf = part[front.to_numpy()].sort_values("bitops_g_all")
        ax.step(pf["bitops_g_all"], pf["top1_mean"], where="post", color="black", lw=1.0, label="Pareto front")
        ax.set(xlabel="BitOPs, all layers (G)", ylabel=f"top-1 on {part['target'].iloc[0]} (%)",
               title=f"{arch}: accuracy vs BitOPs ({suite})")
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
        path = out_dir / f"pareto_{suite}_{arch}.png"
        _save(fig, path)
        written.append(path)
        # -- accuracy vs search cost (log scale), one panel per budget
        costed = part[part["search_macs_processed"] > 0]
        if len(costed):
            budgets = sorted(costed["budget"].unique())
            fig, axes = plt.subplots(1, len(budgets), figsize=(5.2 * len(budgets), 4.2), squeeze=False)
            handles = {}
            for ax, budget in zip(axes[0], budgets):
                sub = costed[costed["budget"] == budget]
                for entry, pts in sub.groupby("entry", sort=True):  # the entry's colour in every panel
                    handles[entry] = ax.scatter(pts["search_macs_processed"], pts["top1_mean"], s=45,
                                                color=palette[entry], label=entry, zorder=3)
                ax.set_xscale("log")
                ax.set(xlabel="search cost (MACs processed, log)", ylabel="top-1 (%)", title=f"{arch} @ {budget}")
            names = sorted(handles)
            axes[0][-1].legend([handles[n] for n in names], names, fontsize=7, bbox_to_anchor=(1.01, 1),
                               loc="upper left")
            path = out_dir / f"cost_{suite}_{arch}.png"
            _save(fig, path)
            written.append(path)
    # -- per-layer policy heatmaps
    ok = [r for r in records if r.get("status") == "ok"]
    keys = sorted({(r["suite"], r["arch"], r["budget"]["name"]) for r in ok})
    for suite, arch, budget in keys:
        recs = [r for r in ok if (r["suite"], r["arch"], r["budget"]["name"]) == (suite, arch, budget)]
        first: dict[str, Mapping[str, Any]] = {}
        for r in sorted(recs, key=lambda r: (r["method"], r["proxy"], r["seed"])):
            first.setdefault(f"{r['method']} ({r['proxy']}, s{r['seed']})", r)
        pol = lb.policy_frame([{**r, "method": k} for k, r in first.items()])
        if pol.empty:
            continue
        layers = pol.sort_values("layer_index")["layer"].drop_duplicates().tolist()
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.45 * len(layers) * 2), 0.42 * len(first) + 2.2), sharey=True)
        for ax, kind in zip(axes, ("w", "a")):
            grid = pol.pivot_table(index="method", columns="layer", values=kind, aggfunc="first")[layers]
            sns.heatmap(grid, annot=True, fmt="d", cmap="viridis", cbar=False, ax=ax, vmin=1, vmax=8,
                        annot_kws={"fontsize": 6})
            ax.set(title=f"{'weight' if kind == 'w' else 'activation'} bits", xlabel="layer (module order)", ylabel="")
            ax.tick_params(axis="x", labelsize=6, rotation=90)
        fig.suptitle(f"{arch} policies at {budget} ({suite})")
        path = out_dir / f"policies_{suite}_{arch}_{budget}.png"
        _save(fig, path)
        written.append(path)
    return written
