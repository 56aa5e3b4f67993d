"""Static seaborn figures of a results set (results/figures/*.png), written by ``mpqbench figures``.

Every method @ proxy entry has one colour in every panel of a figure (:func:`entry_palette`). The Pareto,
cost and policy figures draw the entries at the suite's default search length (budget-matched or not: each
sits at its own BitOPs); the curves figure draws the budget-matched entries of every length.

- ``pareto_<suite>_<arch>.png``: target top-1 vs BitOPs (all layers), mean ± 95 % CI (Student-t over
  seeds), the accuracy-vs-BitOPs Pareto front drawn as a step line;
- ``cost_<suite>_<arch>.png``: target top-1 (mean ± 95 % CI) vs search cost (MACs processed, log scale), one
  panel per budget;
- ``curves_<suite>_<arch>.png`` (when a method was searched at several lengths): accuracy-vs-search-cost
  curves, top-1 mean ± 95 % CI (Student-t over seeds) against mean search MACs (log scale), one line per
  curve, one panel per budget, with the gains at equal accuracy of that budget written under the panel;
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

from mpqbench import board as lb  # noqa: E402
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
    """Write every figure for the flat frame ``df`` (from :func:`mpqbench.board.records_to_frame`)."""
    os.makedirs(out_dir, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    ranked = lb.rank_methods(df, include_unmatched=True)
    ranked = ranked[(ranked["n_seeds"] > 0) & ((ranked["search_length"].astype(float) - 1.0).abs() <= 1e-9)]
    written: list[Path] = []
    for (suite, arch), part in ranked.groupby(["suite", "arch"], sort=True):
        part = part.assign(entry=[_entry_label(r) for _, r in part.iterrows()])
        palette = entry_palette(part["entry"])
        front = lb.pareto_front(part)
        # -- accuracy vs BitOPs with the Pareto front
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        sns.scatterplot(data=part, x="bitops_g_all", y="top1_mean", hue="entry", hue_order=list(palette),
                        palette=palette, style="budget", s=70, ax=ax)
        ax.errorbar(part["bitops_g_all"], part["top1_mean"], yerr=part["top1_ci"].fillna(0), fmt="none",
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
                    ax.errorbar(pts["search_macs_processed"], pts["top1_mean"], yerr=pts["top1_ci"].fillna(0),
                                fmt="none", ecolor=palette[entry], elinewidth=0.8, alpha=0.6, zorder=2)
                ax.set_xscale("log")
                ax.set(xlabel="search cost (MACs processed, log)", ylabel="top-1 (%), mean ± 95 % CI",
                       title=f"{arch} @ {budget}")
            names = sorted(handles)
            axes[0][-1].legend([handles[n] for n in names], names, fontsize=7, bbox_to_anchor=(1.01, 1),
                               loc="upper left")
            path = out_dir / f"cost_{suite}_{arch}.png"
            _save(fig, path)
            written.append(path)
    written += _curve_figures(df, out_dir)
    # -- per-layer policy heatmaps (entries at the default search length)
    ok = [r for r in records if r.get("status") == "ok" and _length(r) == 1.0]
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


def _length(rec: Mapping[str, Any]) -> float:
    search = rec.get("search") if isinstance(rec.get("search"), Mapping) else {}
    length = search.get("length")
    return 1.0 if length is None else float(length)


def _curve_figures(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``curves_<suite>_<arch>.png``: one panel per budget with a curve of two or more points. Each curve is
    drawn as mean ± 95 % CI per search length; the reference's isotonic fit (the curve the equal-accuracy gain
    reads) is dashed, and a proposed entry's equal-accuracy point on it is a cross. Proposed entries searched
    at one length only are single points."""
    from matplotlib.ticker import NullFormatter

    points = lb.curve_points(df)
    if points.empty:
        return []
    equal = lb.equal_accuracy_gains(df)
    heads = {(e["suite"], e["arch"], e["budget"], e["method"], e["proxy"]) for e in equal}
    keep = [n > 1 or (su, a, b, c, p) in heads for n, su, a, b, c, p in
            zip(points["n_points"], points["suite"], points["arch"], points["budget"], points["curve"], points["proxy"])]
    points = points[keep]
    written = []
    for (suite, arch), part in points.groupby(["suite", "arch"], sort=True):
        if not (part["n_points"] > 1).any():
            continue
        part = part.assign(label=[f"{c} ({p})" for c, p in zip(part["curve"], part["proxy"])])
        palette = entry_palette(part["label"])
        budgets = sorted(part.loc[part["n_points"] > 1, "budget"].unique())
        fig, axes = plt.subplots(1, len(budgets), figsize=(6.0 * len(budgets), 4.6), squeeze=False)
        for ax, budget in zip(axes[0], budgets):
            sub = part[part["budget"] == budget]
            for label, pts in sub.groupby("label", sort=True):
                pts = pts.sort_values("macs")
                ax.errorbar(pts["macs"], pts["top1_mean"], yerr=pts["top1_ci"].fillna(0).to_numpy(), marker="o",
                            ms=5, capsize=3, lw=1.3, color=palette[label], label=label)
                for x, y, length in zip(pts["macs"], pts["top1_mean"], pts["length"]):
                    ax.annotate(f"{length:g}x", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6,
                                color=palette[label])
            mine = [e for e in equal if (e["suite"], e["arch"], e["budget"]) == (suite, arch, budget)]
            lines = []
            for e in mine:
                ref = e["curves"]["reference"]
                ref_label = f"{e['reference'].rsplit('@', 1)[0]} ({e['reference'].rsplit('@', 1)[1]})"
                ax.plot([p["macs"] for p in ref], [p["top1_fit"] for p in ref], ls="--", lw=0.9,
                        color=palette.get(ref_label, "0.4"), zorder=1)
                c_ref = e["macs"]["reference_cost_at_equal_accuracy"]
                own = f"{e['method']} ({e['proxy']})"
                if e["bound"] is None and c_ref is not None:
                    ax.plot([c_ref], [e["proposed_top1_mean"]], marker="x", ms=8, mew=1.5,
                            color=palette.get(own, "black"), zorder=4)
                lines.append(f"{own}: {lb.format_gain(e['value'], e['bound'], e['ci_low'], e['ci_high'])}")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(xlabel="search cost (MACs processed, log)", ylabel=f"top-1 on {sub['target'].iloc[0]} (%)",
                   title=f"{arch} @ {budget}")
            ax.legend(fontsize=7, loc="best")
            if lines:
                ref = mine[0]["reference"]
                ax.text(0.0, -0.2, f"gain at equal accuracy vs {ref} (search MACs, 95 % CI):\n" + "\n".join(lines),
                        transform=ax.transAxes, va="top", fontsize=7)
        fig.suptitle(f"{arch}: top-1 mean ± 95 % CI over seeds vs search cost at several search lengths ({suite}); "
                     "dashed: isotonic fit, x: equal accuracy", fontsize=9)
        path = out_dir / f"curves_{suite}_{arch}.png"
        _save(fig, path)
        written.append(path)
    return written
