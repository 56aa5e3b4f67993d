"""Static figures of a results set for papers (results/figures/), written by ``mpqbench figures``.

Every figure is written three times, ``<name>.png`` (110 dpi, for the README and the app), ``<name>.pdf`` and
``<name>.svg`` (vector, for papers), byte-identical on regeneration from the same records. Conventions shared
by all figures:

- one panel per budget;
- one fixed colour per method in every figure, the app and the static page (:mod:`mpqbench.board.palette`,
  colour-blind-safe palettes), one marker per proxy dataset;
- top-1 as mean with 95 % CI error bars (Student-t over seeds), and the caption under the figure says over
  how many seeds ("n = k seeds");
- search cost in G or T MACs processed on a log axis; controls that do not search (0 MACs) cannot sit on it
  and are drawn as dashed horizontal lines at their top-1, named in the caption.

Figures:

- ``pareto_<suite>_<arch>``: top-1 vs BitOPs (all layers), the accuracy-vs-BitOPs Pareto front of each budget
  as a step line; entries outside the budget window hollow;
- ``cost_<suite>_<arch>``: top-1 vs search cost;
- ``curves_<suite>_<arch>`` (when a method was searched at several lengths): accuracy-vs-search-cost curves,
  the reference's isotonic fit dashed, the equal-accuracy points as crosses, the gains at equal accuracy under
  each panel;
- ``policies_<suite>_<arch>_<budget>``: per-layer weight and activation bits of every policy (one row per entry
  and seed), layers in module order, coloured over the candidate bit-widths with a colour bar.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from mpqbench import board as lb  # noqa: E402
from mpqbench.board import palette  # noqa: E402
from mpqbench.utils import atomic_path  # noqa: E402

FORMATS = ("png", "pdf", "svg")
# fixed metadata, so the same results give byte-identical files
_METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
             "svg": {"Creator": None, "Date": None}}
_RC = {"svg.hashsalt": "mpqbench", "svg.fonttype": "path", "pdf.fonttype": 42, "font.size": 9,
       "axes.grid": True, "grid.alpha": 0.35, "axes.spines.top": False, "axes.spines.right": False}


def _save(fig: plt.Figure, path: Path) -> None:
    """``path`` (the .png) and its .pdf and .svg siblings."""
    path = Path(path)
    with plt.rc_context({"svg.hashsalt": "mpqbench"}):
        for fmt in FORMATS:
            with atomic_path(path.with_suffix(f".{fmt}")) as tmp:
                fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight", metadata=_METADATA[fmt])
    plt.close(fig)


def _entry_label(row: Mapping[str, Any]) -> str:
    return f"{row['method']}" if row["proxy"] in ("", None) else f"{row['method']} ({row['proxy']})"


def entry_palette(entries: Sequence[str]) -> dict[str, str]:
    """Colour of each ``method (proxy)`` entry label: its method's fixed colour (the same proxy-independent
    colour in every figure; proxies differ by marker)."""
    return {e: palette.method_colour(e.split(" (")[0]) for e in sorted(set(entries))}


def _seeds_text(n: pd.Series) -> str:
    n = pd.to_numeric(n, errors="coerce").dropna().astype(int)
    if n.empty:
        return "n = ? seeds"
    lo, hi = int(n.min()), int(n.max())
    return f"n = {lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"n = {lo}–{hi} seeds"


def _caption(fig: plt.Figure, text: str) -> None:
    fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=7.5, wrap=True)


def _unit(values: Sequence[float]) -> tuple[float, str]:
    """G or T MACs for a cost axis, by the largest value."""
    top = max((float(v) for v in values if np.isfinite(v)), default=0.0)
    return (1e12, "T") if top >= 1e12 else (1e9, "G")


def _legend(fig: plt.Figure, axes: Sequence[plt.Axes], methods: Mapping[str, str], markers: Mapping[str, str],
            extra: Sequence[Line2D] = ()) -> None:
    """One legend for the figure: a colour per method, a marker per proxy (and ``extra`` handles)."""
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in methods.items()]
    if len(markers) > 1:
        handles += [Line2D([], [], color="0.3", marker=mk, ls="", label=f"proxy: {p}") for p, mk in markers.items()]
    handles += list(extra)
    axes[-1].legend(handles=handles, fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)


def _log_axis(ax: plt.Axes) -> None:
    """A log x axis with plain tick labels at 1, 2, 5 x 10^k."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _point(ax: plt.Axes, x: float, y: float, ci: float, colour: str, marker: str, label: str, *,
           hollow: bool = False) -> None:
    ax.errorbar([x], [y], yerr=[0.0 if not np.isfinite(ci) else ci], fmt=marker, ms=6, capsize=2.5, elinewidth=0.9,
                color=colour, mfc="white" if hollow else colour, mec=colour, label=label, zorder=3)


def _zero_cost_lines(ax: plt.Axes, zero: pd.DataFrame) -> list[str]:
    """Controls without a search: dashed horizontal lines at their top-1 (a log axis has no 0)."""
    names = []
    for _, r in zero.sort_values(["method", "proxy"]).iterrows():
        ax.axhline(r["top1_mean"], ls="--", lw=0.9, color=palette.method_colour(r["method"], r.get("base_method")),
                   zorder=1, label=f"_{r['entry']}")
        names.append(r["entry"])
    return names


def write_figures(df: pd.DataFrame, records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Write every figure for the flat frame ``df`` (from :func:`mpqbench.board.records_to_frame`); returns the
    PNG paths (each has a .pdf and an .svg beside it)."""
    os.makedirs(out_dir, exist_ok=True)
    with plt.rc_context(_RC):
        ranked = lb.rank_methods(df, include_unmatched=True)
        default = (ranked["search_length"].astype(float) - 1.0).abs() <= 1e-9
        ranked = ranked[(ranked["n_seeds"] > 0) & default]
        bases = df.groupby("method")["base_method"].first() if len(df) else pd.Series(dtype=object)
        written: list[Path] = []
        for (suite, arch), part in ranked.groupby(["suite", "arch"], sort=True):
            part = part.assign(entry=[_entry_label(r) for _, r in part.iterrows()],
                               base_method=[bases.get(m) for m in part["method"]],
                               matched=part["budget_matched"].fillna(False).astype(bool)).reset_index(drop=True)
            written.append(_pareto(part, suite, arch, out_dir))
            path = _cost(part, suite, arch, out_dir)
            if path is not None:
                written.append(path)
        written += _curve_figures(df, out_dir)
        written += _policy_figures(df, records, out_dir)
    return written


def _budgets(part: pd.DataFrame) -> list[str]:
    """The budgets of a frame, largest BitOPs first (the order of the panels)."""
    order = part.groupby("budget")["budget_bitops_g"].mean().sort_values(ascending=False, kind="mergesort")
    return list(order.index)


def _pareto(part: pd.DataFrame, suite: str, arch: str, out_dir: Path) -> Path:
    """Top-1 vs BitOPs, one panel per budget, with each budget's Pareto front."""
    budgets = _budgets(part)
    markers = palette.proxy_markers(part["proxy"])
    methods = palette.colour_map(part["method"], part["base_method"])
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets), 3.8), squeeze=False)
    for ax, budget in zip(axes[0], budgets):
        sub = part[part["budget"] == budget]
        for _, r in sub.sort_values(["method", "proxy"]).iterrows():
            _point(ax, r["bitops_g_all"], r["top1_mean"], r["top1_ci"], methods[r["method"]], markers[r["proxy"]],
                   r["entry"], hollow=not r["matched"])
        front = lb.pareto_front(sub, by=("suite", "arch", "target", "budget"))
        pf = sub[front.to_numpy()].sort_values("bitops_g_all")
        ax.step(pf["bitops_g_all"], pf["top1_mean"], where="post", color="black", lw=1.0, zorder=2)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set(xlabel="BitOPs, all layers (G)", ylabel=f"top-1 on {sub['target'].iloc[0]} (%)", title=f"{arch} @ {budget}")
    _legend(fig, axes[0], methods, markers, [Line2D([], [], color="black", lw=1.0, label="Pareto front")])
    _caption(fig, f"{arch}, suite {suite}: target top-1, mean ± 95 % CI (Student-t) over {_seeds_text(part['n_seeds'])}, "
                  "against the BitOPs of the policy (all layers). Black: the accuracy-vs-BitOPs Pareto front of each "
                  "budget; hollow markers: entries outside the budget window (not ranked).")
    path = out_dir / f"pareto_{suite}_{arch}.png"
    _save(fig, path)
    return path


def _cost(part: pd.DataFrame, suite: str, arch: str, out_dir: Path) -> Path | None:
    """Top-1 vs search MACs (log), one panel per budget; zero-cost controls as dashed lines."""
    costed = part[part["search_macs_processed"] > 0]
    if costed.empty:
        return None
    scale, unit = _unit(costed["search_macs_processed"])
    budgets = _budgets(part)
    markers = palette.proxy_markers(part["proxy"])
    methods = palette.colour_map(part["method"], part["base_method"])
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets), 3.8), squeeze=False)
    zero_names: set[str] = set()
    for ax, budget in zip(axes[0], budgets):
        sub = part[part["budget"] == budget]
        for _, r in sub[sub["search_macs_processed"] > 0].sort_values(["method", "proxy"]).iterrows():
            _point(ax, r["search_macs_processed"] / scale, r["top1_mean"], r["top1_ci"], methods[r["method"]],
                   markers[r["proxy"]], r["entry"], hollow=not r["matched"])
        zero_names.update(_zero_cost_lines(ax, sub[~(sub["search_macs_processed"] > 0)]))
        _log_axis(ax)
        ax.set(xlabel=f"search cost ({unit} MACs processed, log)", ylabel=f"top-1 on {sub['target'].iloc[0]} (%)",
               title=f"{arch} @ {budget}")
    extra = [Line2D([], [], color="0.3", ls="--", lw=0.9, label="no search (0 MACs)")] if zero_names else []
    _legend(fig, axes[0], methods, markers, extra)
    zero = (f" Dashed lines: controls that do not search (0 MACs, not on the log axis): {', '.join(sorted(zero_names))}."
            if zero_names else "")
    _caption(fig, f"{arch}, suite {suite}: target top-1, mean ± 95 % CI (Student-t) over {_seeds_text(part['n_seeds'])}, "
                  f"against the MACs the search processed ({unit} = 1e{12 if unit == 'T' else 9}).{zero}")
    path = out_dir / f"cost_{suite}_{arch}.png"
    _save(fig, path)
    return path


def _curve_figures(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``curves_<suite>_<arch>``: one panel per budget with a curve of two or more points. Each curve is drawn
    as mean ± 95 % CI per search length; the reference's isotonic fit (the curve the equal-accuracy gain reads) is
    dashed, and a proposed entry's equal-accuracy point on it is a cross. Proposed entries searched at one length
    only are single points."""
    points = lb.curve_points(df)
    if points.empty:
        return []
    equal = lb.equal_accuracy_gains(df)
    heads = {(e["suite"], e["arch"], e["budget"], e["method"], e["proxy"]) for e in equal}
    keep = [n > 1 or (su, a, b, c, p) in heads for n, su, a, b, c, p in
            zip(points["n_points"], points["suite"], points["arch"], points["budget"], points["curve"], points["proxy"])]
    points = points[keep]
    bases = df.groupby("method")["base_method"].first()
    written = []
    for (suite, arch), part in points.groupby(["suite", "arch"], sort=True):
        if not (part["n_points"] > 1).any():
            continue
        part = part.assign(label=[f"{c} ({p})" for c, p in zip(part["curve"], part["proxy"])])
        colours = {lab: palette.method_colour(c, bases.get(c)) for lab, c in zip(part["label"], part["curve"])}
        scale, unit = _unit(part["macs"])
        budgets = [b for b in _budgets(df[(df["suite"] == suite) & (df["arch"] == arch)])
                   if b in set(part.loc[part["n_points"] > 1, "budget"])]
        fig, axes = plt.subplots(1, len(budgets), figsize=(5.4 * len(budgets), 4.2), squeeze=False)
        for ax, budget in zip(axes[0], budgets):
            sub = part[part["budget"] == budget]
            for label, pts in sub.groupby("label", sort=True):
                pts = pts.sort_values("macs")
                ax.errorbar(pts["macs"] / scale, pts["top1_mean"], yerr=pts["top1_ci"].fillna(0).to_numpy(), marker="o",
                            ms=5, capsize=3, lw=1.3, color=colours[label], label=label)
                for x, y, length in zip(pts["macs"] / scale, pts["top1_mean"], pts["length"]):
                    ax.annotate(f"{length:g}x", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6,
                                color=colours[label])
            mine = [e for e in equal if (e["suite"], e["arch"], e["budget"]) == (suite, arch, budget)]
            lines = []
            for e in mine:
                ref = e["curves"]["reference"]
                ref_label = f"{e['reference'].rsplit('@', 1)[0]} ({e['reference'].rsplit('@', 1)[1]})"
                ax.plot([p["macs"] / scale for p in ref], [p["top1_fit"] for p in ref], ls="--", lw=0.9,
                        color=colours.get(ref_label, "0.4"), zorder=1)
                c_ref = e["macs"]["reference_cost_at_equal_accuracy"]
                own = f"{e['method']} ({e['proxy']})"
                if e["bound"] is None and c_ref is not None:
                    ax.plot([c_ref / scale], [e["proposed_top1_mean"]], marker="x", ms=8, mew=1.5,
                            color=colours.get(own, "black"), zorder=4)
                lines.append(f"{own}: {lb.format_gain(e['value'], e['bound'], e['ci_low'], e['ci_high'])}")
            _log_axis(ax)
            ax.set(xlabel=f"search cost ({unit} MACs processed, log)", ylabel=f"top-1 on {sub['target'].iloc[0]} (%)",
                   title=f"{arch} @ {budget}")
            ax.legend(fontsize=7, loc="best")
            if lines:
                ref = mine[0]["reference"]
                ax.text(0.0, -0.2, f"gain at equal accuracy vs {ref} (search MACs, 95 % CI):\n" + "\n".join(lines),
                        transform=ax.transAxes, va="top", fontsize=7)
        fig.suptitle(f"{arch}: top-1 mean ± 95 % CI vs search cost at several search lengths ({suite}); "
                     "dashed: isotonic fit, x: equal accuracy\n"
                     f"error bars: 95 % CI (Student-t) over {_seeds_text(part['n_seeds'])}; each point is a full search "
                     "of that length, fine-tuned and evaluated like every entry", fontsize=9, y=1.06)
        path = out_dir / f"curves_{suite}_{arch}.png"
        _save(fig, path)
        written.append(path)
    return written


def _length(rec: Mapping[str, Any]) -> float:
    search = rec.get("search") if isinstance(rec.get("search"), Mapping) else {}
    length = search.get("length")
    return 1.0 if length is None else float(length)


def _candidates(df: pd.DataFrame, pol: pd.DataFrame) -> list[int]:
    """The bit-widths a colour bar spans: the suite's W and A candidates and every value drawn."""
    found = {int(v) for v in pd.concat([pol["w"], pol["a"]]).dropna()}
    for col in ("w_candidates", "a_candidates"):
        for text in df[col].dropna().astype(str) if col in df else []:
            found.update(int(t) for t in text.split(",") if t.strip().isdigit())
    return sorted(found)


def _policy_figures(df: pd.DataFrame, records: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Per-layer W and A bits of every policy (entry and seed) at the default search length, one figure per
    (suite, arch, budget), coloured over the candidate bit-widths (cividis, with a colour bar)."""
    ok = [r for r in records if r.get("status") == "ok" and _length(r) == 1.0]
    keys = sorted({(r["suite"], r["arch"], r["budget"]["name"]) for r in ok})
    written = []
    for suite, arch, budget in keys:
        recs = [r for r in ok if (r["suite"], r["arch"], r["budget"]["name"]) == (suite, arch, budget)]
        first: dict[str, Mapping[str, Any]] = {}
        for r in sorted(recs, key=lambda r: (r["method"], r["proxy"], r["seed"])):
            first.setdefault(f"{r['method']} ({r['proxy']}, s{r['seed']})", r)
        pol = lb.policy_frame([{**r, "method": k} for k, r in first.items()])
        if pol.empty:
            continue
        sub = df[(df["suite"] == suite) & (df["arch"] == arch) & (df["budget"] == budget)]
        cands = _candidates(sub, pol)
        cmap = ListedColormap(plt.get_cmap("cividis")(np.linspace(0.08, 0.92, len(cands))))
        bounds = [c - 0.5 for c in cands] + [cands[-1] + 0.5]
        norm = BoundaryNorm(bounds, cmap.N) if len(cands) > 1 else None
        layers = pol.sort_values("layer_index")["layer"].drop_duplicates().tolist()
        rows = list(first)
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.45 * len(layers) * 2), 0.42 * len(rows) + 2.4), sharey=True)
        image = None
        for ax, kind in zip(axes, ("w", "a")):
            grid = pol.pivot_table(index="method", columns="layer", values=kind, aggfunc="first").reindex(
                index=rows, columns=layers)
            values = grid.to_numpy(dtype=float)
            image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto",
                              vmin=None if norm else cands[0] - 0.5, vmax=None if norm else cands[0] + 0.5)
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    rgb = image.cmap(image.norm(v))[:3]
                    light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.55
                    ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=6, color="black" if light else "white")
            ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
            ax.grid(False)
            ax.set(title=f"{'weight' if kind == 'w' else 'activation'} bits", xlabel="layer (module order)")
        bar = fig.colorbar(image, ax=list(axes), ticks=cands, fraction=0.025, pad=0.01)
        bar.set_label("bits (candidate range)")
        fig.suptitle(f"{arch} policies at {budget} ({suite})")
        _caption(fig, f"Searchable layers only (the stem and the classifier stay W8A8); colours span the candidate "
                      f"bit-widths {', '.join(map(str, cands))}; one row per entry and seed.")
        path = out_dir / f"policies_{suite}_{arch}_{budget}.png"
        _save(fig, path)
        written.append(path)
    return written

