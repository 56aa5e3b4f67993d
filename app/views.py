"""The leaderboard page's pure parts: text formatting, the Altair charts and the formatted tables.

No Streamlit state here (:mod:`app.leaderboard` wires these to widgets); all numbers come from
:mod:`mpqbench.board`.
"""

from __future__ import annotations

import re

import pandas as pd

from mpqbench import board as lb
from mpqbench.board import palette
from mpqbench.board import references as refs

COST_LABELS = {"macs": "MACs processed", "macs_teacher": "MACs incl. proxy teacher", "wall_s": "wall seconds"}
GAIN_COLS = {"macs": "gain_macs", "macs_teacher": "gain_macs_with_teacher", "wall_s": "gain_wall_s"}
TMAC = 1e12
NONE = "—"
NO_SEARCH = "n/a (no search)"  # a gain over a control that does not search (0 MACs): undefined, not -100 %


def entry_label(method: str, proxy: str) -> str:
    return f"{method} @ {proxy}"


def fmt_gain(gain: float) -> str:
    return "n/a" if pd.isna(gain) else f"{gain:+.0%}"


def searches(cost: float) -> bool:
    """False for an entry whose search processed no MACs (the controls uniform, random, uniform-p)."""
    return not pd.isna(cost) and float(cost) > 0


def fmt_gain_vs(gain: float, baseline_macs: float) -> str:
    """A fixed-length gain over a baseline; over a zero-cost control it is not a number of any meaning."""
    return fmt_gain(gain) if searches(baseline_macs) else NO_SEARCH


def method_colour(data: pd.DataFrame, field: str = "method", title: str = "Method") -> alt.Color:
    """The fixed colour of each method (the figures' and the static page's, :mod:`mpqbench.board.palette`)."""
    import altair as alt  # with the first chart: the ranking above it does not wait for it

    return alt.Color(f"{field}:N", title=title, scale=alt.Scale(**palette.altair_scale(sorted(set(data[field])))))


def cite_bibtex(commits: list[str], methods: list[tuple[str, str | None]], dirty: bool = False) -> str:
    """BibTeX for the software at the exact commit(s) of the runs in view, then each method's own reference."""
    commit = ", ".join(commits) if commits else None
    text = refs.software_bibtex(f"{commit} (with uncommitted changes)" if commit and dirty else commit,
                                key=refs.software_key(commits[0] if len(commits) == 1 else None))
    keys = [k for m, b in methods for k in refs.cite_keys(m, b)]
    return text + ("\n" + refs.bibtex(keys) if keys else "")


def md(text: object) -> str:
    """Record text (method, proxy, reason, path) for Markdown: links, emphasis, HTML and LaTeX stay literal."""
    return re.sub(r"([\\`*_{}\[\]<>#!|~$])", r"\\\1", str(text))


def tied_text(row: pd.Series) -> str:
    """'best', 'tied', 'no' or 'n/a' for the ranking's paired-difference test against the best entry."""
    if pd.isna(row["rank"]):
        return ""
    if row["rank"] == 1 and row["paired_diff_pp"] == 0 and row["paired_diff_ci"] == 0:
        return "best"
    if pd.isna(row["tied_with_best"]):
        return "n/a (< 2 common seeds)"
    return "tied" if row["tied_with_best"] else "no"


def tradeoff_chart(ranked_all: pd.DataFrame, pareto: pd.Series, budget: str) -> alt.Chart:
    import altair as alt  # with the first chart: the ranking above it does not wait for it

    data = ranked_all[ranked_all["n_seeds"] > 0].assign(
        entry=lambda d: [entry_label(m, p) for m, p in zip(d["method"], d["proxy"])],
        pareto=pareto, selected=lambda d: d["budget"] == budget,
        lo=lambda d: d["top1_mean"] - d["top1_ci"].fillna(0), hi=lambda d: d["top1_mean"] + d["top1_ci"].fillna(0),
    )[["method", "proxy", "entry", "budget", "bitops_g_all", "top1_mean", "top1_ci", "lo", "hi", "n_seeds",
       "size_mb", "pareto", "selected"]]  # only what the chart draws: the spec carries its data to the browser
    x = alt.X("bitops_g_all:Q", title="BitOPs, all layers (G)", scale=alt.Scale(zero=False, padding=14))
    y = alt.Y("top1_mean:Q", title="Top-1 on target (%)", scale=alt.Scale(zero=False, padding=14))
    tooltip = [alt.Tooltip("entry:N", title="method @ proxy"), "budget:N",
               alt.Tooltip("top1_mean:Q", title="top-1 (%)", format=".2f"),
               alt.Tooltip("top1_ci:Q", title="± CI (pp)", format=".2f"), alt.Tooltip("n_seeds:Q", title="seeds"),
               alt.Tooltip("bitops_g_all:Q", title="BitOPs (G)", format=".4g"),
               alt.Tooltip("size_mb:Q", title="size (MB)", format=".3f"), alt.Tooltip("pareto:N", title="Pareto")]
    base = alt.Chart(data)
    colour = method_colour(data)
    bars = base.mark_rule(opacity=0.5).encode(x=x, y="lo:Q", y2="hi:Q", color=colour)
    points = base.mark_point(filled=True, size=90).encode(
        x=x, y=y, color=colour, shape=alt.Shape("proxy:N", title="Proxy", legend=alt.Legend(orient="bottom")),
        opacity=alt.condition("datum.selected", alt.value(1.0), alt.value(0.35)), tooltip=tooltip)
    front = base.transform_filter("datum.pareto").mark_line(interpolate="step-after", color="black",
                                                            strokeDash=[4, 3]).encode(x=x, y=y)
    rings = base.transform_filter("datum.pareto").mark_point(size=260, color="black", strokeWidth=1.5).encode(
        x=x, y=y, tooltip=tooltip)
    return (bars + front + rings + points).properties(
        height=420, title=f"Accuracy vs BitOPs, all budgets (selected: {budget}); black rings = Pareto front"
    ).interactive()


def cost_chart(ranked: pd.DataFrame, cost: str, budget: str) -> tuple[alt.Chart | None, list[str]]:
    import altair as alt  # with the first chart: the ranking above it does not wait for it

    def cost_of(d: pd.DataFrame) -> pd.Series:
        if cost == "wall_s":
            return d["search_wall_s"]
        macs = d["search_macs_processed"].astype("float64")
        if cost == "macs_teacher":
            macs = macs + d["teacher_macs"].astype("float64").fillna(0.0)
        return macs / TMAC

    data = ranked[ranked["n_seeds"] > 0].assign(
        entry=lambda d: [entry_label(m, p) for m, p in zip(d["method"], d["proxy"])], cost=cost_of)
    zero = data.loc[~(data["cost"] > 0), "entry"].tolist()
    data = data[data["cost"] > 0]
    if data.empty:
        return None, zero
    title = {"macs": "Search cost (TMAC, log)", "macs_teacher": "Search + proxy-teacher cost (TMAC, log)",
             "wall_s": "Search wall time (s, log)"}[cost]
    data = data.assign(lo=data["top1_mean"] - data["top1_ci"].fillna(0), hi=data["top1_mean"] + data["top1_ci"].fillna(0))
    data = data[["method", "proxy", "entry", "cost", "top1_mean", "top1_ci", "lo", "hi", "search_wall_s"]]
    colour = method_colour(data)
    bars = alt.Chart(data).mark_rule(opacity=0.5).encode(
        x=alt.X("cost:Q", title=title, scale=alt.Scale(type="log", padding=14)), y="lo:Q", y2="hi:Q",
        color=colour)
    chart = alt.Chart(data).mark_point(filled=True, size=90).encode(
        x=alt.X("cost:Q", title=title, scale=alt.Scale(type="log", padding=14)),
        y=alt.Y("top1_mean:Q", title="Top-1 on target (%)", scale=alt.Scale(zero=False, padding=14)),
        color=colour, shape=alt.Shape("proxy:N", title="Proxy", legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("entry:N", title="method @ proxy"),
                 alt.Tooltip("top1_mean:Q", title="top-1 (%)", format=".2f"),
                 alt.Tooltip("top1_ci:Q", title="± CI (pp)", format=".2f"),
                 alt.Tooltip("cost:Q", title=title.replace(", log", ""), format=".4g"),
                 alt.Tooltip("search_wall_s:Q", title="wall (s)", format=".1f")],
    )
    return (bars + chart).properties(height=420, title=f"Accuracy vs search cost at {budget} (mean ± 95 % CI)"
                                     ).interactive(), zero


def curves_chart(points: pd.DataFrame, budget: str) -> alt.Chart | None:
    """Top-1 mean ± 95 % CI against mean search MACs, one line per accuracy-vs-search-cost curve (an entry
    searched at several lengths) at this budget; None when no curve has two points."""
    import altair as alt  # with the first chart: the ranking above it does not wait for it

    data = points[(points["n_points"] > 1) & (points["macs"] > 0)]
    if data.empty:
        return None
    data = data.assign(curve_label=[entry_label(c, p) for c, p in zip(data["curve"], data["proxy"])],
                       tmac=data["macs"] / TMAC, lo=data["top1_mean"] - data["top1_ci"].fillna(0),
                       hi=data["top1_mean"] + data["top1_ci"].fillna(0))
    x = alt.X("tmac:Q", title="Search cost (TMAC, log)", scale=alt.Scale(type="log", padding=14))
    y = alt.Y("top1_mean:Q", title="Top-1 on target (%)", scale=alt.Scale(zero=False, padding=14))
    color = method_colour(data, "curve", "Curve (method searched at several lengths)")
    tooltip = [alt.Tooltip("method:N", title="entry"), alt.Tooltip("length:Q", title="search length (x default)"),
               alt.Tooltip("top1_mean:Q", title="top-1 (%)", format=".2f"),
               alt.Tooltip("top1_ci:Q", title="± 95% CI (pp)", format=".2f"), alt.Tooltip("n_seeds:Q", title="seeds"),
               alt.Tooltip("tmac:Q", title="search TMAC", format=".4g"),
               alt.Tooltip("wall_s:Q", title="search wall (s)", format=".1f")]
    base = alt.Chart(data)
    line = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=70)).encode(
        x=x, y=y, color=color, detail="curve_label:N", order="tmac:Q", tooltip=[alt.Tooltip("curve_label:N",
                                                                                            title="curve"), *tooltip])
    bars = base.mark_rule(opacity=0.6).encode(x=x, y="lo:Q", y2="hi:Q", color=color)
    return (bars + line).properties(
        height=380, title=f"Accuracy vs search cost at several search lengths, {budget} (mean ± 95 % CI)").interactive()


def trace_chart(trace: list) -> tuple[alt.Chart | None, str]:
    """ASGA's perturbation radius ρ_t, sharpness gap h_t and gradient norm ‖g‖ over the search steps
    (``search.trace``, every quarter epoch), and a one-line summary; (None, "") for a trace without ρ."""
    import altair as alt  # with the first chart: the ranking above it does not wait for it

    rows = [t for t in trace or [] if isinstance(t, dict) and isinstance(t.get("step"), (int, float))
            and isinstance(t.get("rho"), (int, float))]
    if not rows:
        return None, ""
    names = {"rho": "ρ_t (radius)", "gap": "h_t = L_p − L (sharpness gap)", "grad_norm": "‖g‖ (gradient norm)"}
    long = pd.DataFrame([{"step": t["step"], "quantity": names[k], "value": float(t[k])}
                         for t in rows for k in names if isinstance(t.get(k), (int, float))])
    charts = [alt.Chart(long[long["quantity"] == q]).mark_line(point=True).encode(
        x=alt.X("step:Q", title="search step"), y=alt.Y("value:Q", title=q),
        tooltip=["step:Q", alt.Tooltip("value:Q", format=".4g")]).properties(height=140)
        for q in names.values() if (long["quantity"] == q).any()]
    rho = [float(t["rho"]) for t in rows]
    low = [t["step"] for t in rows if float(t["rho"]) < 1e-3]
    text = (f"ρ over {len(rho)} logged points: max {max(rho):.3g}, last {rho[-1]:.3g}; "
            + (f"below 0.001 at {len(low)} of them (first at step {low[0]:g})" if low else "never below 0.001"))
    return alt.vconcat(*charts).properties(title="ASGA's adaptive radius over the search"), text


def equal_table(equal: list[dict]) -> pd.DataFrame:
    """The equal-accuracy gains of this budget, formatted (value or bound, [95 % interval])."""
    t = lb.equal_accuracy_table(equal)
    return pd.DataFrame({
        "Method": t["method"], "Proxy": t["proxy"], "Reference": t["reference"],
        "Top-1 (%)": t["top1_mean"].round(2),
        "± 95% CI (pp)": t["top1_ci"].astype(float).round(2),
        "Gain at equal accuracy, MACs [95% CI]": [lb.format_gain(*v) for v in
                                                  zip(t["gain"], t["bound"], t["ci_low"], t["ci_high"])],
        "Gain at equal accuracy, wall [95% CI]": [lb.format_gain(*v) for v in zip(
            t["gain_wall_s"], t["bound_wall_s"], t["ci_low_wall_s"], t["ci_high_wall_s"])],
        "Fixed-length gain, MACs": [lb.format_gain(v, None) for v in t["fixed_length_gain_macs"]],
        "Reference cost at equal accuracy (TMAC)": t["reference_macs_at_equal_accuracy"] / TMAC,
        "Search cost (TMAC)": t["search_macs_processed"] / TMAC,
    })


def gains_table(gains: pd.DataFrame) -> pd.DataFrame:
    """The fixed-length gains, in percent; over a control that does not search (0 MACs) every gain is left
    empty and the note says so (the ratio would read -100 %, a number without meaning)."""
    real = gains["baseline_search_macs_processed"].astype("float64") > 0

    def pct(col: str) -> pd.Series:
        return (gains[col].astype("float64") * 100).where(real)

    return pd.DataFrame({
        "Method": gains["method"], "Proxy": gains["proxy"],
        "Baseline": gains["baseline"], "Baseline proxy": gains["baseline_proxy"],
        "Baseline role": gains["baseline_role"],
        "Efficiency gain, MACs (%)": pct("gain_macs"),
        "Efficiency gain, MACs incl. teacher (%)": pct("gain_macs_with_teacher"),
        "Efficiency gain, MACs to settle (%)": pct("gain_macs_to_settle"),
        "Efficiency gain, wall (%)": pct("gain_wall_s"),
        "Top-1 difference (pp)": gains["top1_diff_pp"],
        "Note": ["" if r else NO_SEARCH for r in real],
    })
