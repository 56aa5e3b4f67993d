"""mpqbench leaderboard: ``streamlit run app/leaderboard.py``.

Which method is best at a BitOPs budget, what its search cost, and which per-layer policy it picked.
All logic lives in :mod:`mpqbench.board`; charts and formatted tables in :mod:`app.views`; this file only
wires widgets to them.

Results are read from ``results/`` next to this file's folder, or from ``$MPQBENCH_RESULTS``, together with the
results folders of the other suites inside it (``results/extended``: one more choice in the Suite filter);
published numbers from ``baselines/published.csv`` (or ``$MPQBENCH_PUBLISHED``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a plain checkout works without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.views import (COST_LABELS, GAIN_COLS, NO_SEARCH, NONE, TMAC, cite_bibtex, cost_chart,  # noqa: E402
                       curves_chart, entry_label, equal_table, fmt_gain_vs, gains_table, md, tied_text, trace_chart,
                       tradeoff_chart)
from mpqbench import board as lb  # noqa: E402
from mpqbench.errors import UserError  # noqa: E402

st.set_page_config(page_title="mpqbench leaderboard", page_icon="📊", layout="wide")

RESULTS_DIR = lb.resolve_results_dir(ROOT / "results")
PUBLISHED_CSV = Path(os.environ.get("MPQBENCH_PUBLISHED") or ROOT / "baselines" / "published.csv")
MEASURED, PUBLISHED = "Measured leaderboard", "Published numbers (not comparable)"
# the measured tab's sections below the ranking (lazy tabs)
POLICY, CHARTS, EQUAL, PROVENANCE = SECTIONS = ("Per-layer policy", "Accuracy vs BitOPs and search cost",
                                                "Search cost at equal accuracy", "Provenance")


@st.cache_data(show_spinner=False, max_entries=4)
def load(path: str, fingerprint: tuple) -> lb.Results:
    """Cached on the folder and a fingerprint of its files, so new results show up on reload."""
    return lb.load_results(path)


@st.cache_data(show_spinner=False, max_entries=2)
def load_published(path: str, mtime: float) -> pd.DataFrame:
    return lb.load_published(path)


@st.cache_data(show_spinner=False, max_entries=16)
def equal_terms(runs: pd.DataFrame, unmatched: bool) -> tuple[list[dict], pd.DataFrame]:
    """Equal-accuracy gains (a 2,000-resample bootstrap) and curve points of one budget's runs, cached on
    the runs, so widget changes that keep them do not recompute."""
    if runs.empty:
        return [], pd.DataFrame()
    return (lb.equal_accuracy_gains(runs, include_unmatched=unmatched),
            lb.curve_points(runs, include_unmatched=unmatched))


@st.cache_data(show_spinner=False, max_entries=32)
def board_frames(key: tuple, _res: lb.Results, _f: dict) -> dict[str, pd.DataFrame]:
    """The frames of one view (its runs, the ranking of every budget, the Pareto front, the table without its
    reproduce commands), cached on ``key``: the results' fingerprint and every filter, so a reload or a widget
    change that comes back to a view does not recompute them."""
    f = _f
    crit = dict(suite=f["suite"], arch=f["arch"], target=f["target"], proxy=f["proxy"], method=f["method"])
    # Statistics always use ok runs only; failed runs still count in each entry's status. The toggle shows
    # entries without any ok run and lists failed runs in the detail, provenance and downloads.
    every_all = lb.filter_frame(_res.frame, include_failed=True, **crit)
    runs_all = every_all if f["failed"] else every_all[every_all["status"] == "ok"]
    out = {"every": every_all[every_all["budget"] == f["budget"]],
           "runs": runs_all[runs_all["budget"] == f["budget"]]}
    if out["runs"].empty:
        return out | {k: pd.DataFrame() for k in ("ranked_all", "hidden", "ranked", "table")} | {
            "pareto": pd.Series(dtype=bool), "pareto_b": pd.Series(dtype=bool)}
    ranked_every = lb.rank_methods(every_all, include_unmatched=f["unmatched"])
    default_length = (ranked_every["search_length"].astype(float) - 1.0).abs() <= 1e-9
    shown = default_length & (ranked_every["rank"].notna() | (f["failed"] & (ranked_every["n_seeds"] == 0)))
    ranked_all = ranked_every[shown].reset_index(drop=True)
    pareto = lb.pareto_front(ranked_all)
    at_budget = ranked_all["budget"] == f["budget"]
    out |= {"ranked_all": ranked_all, "pareto": pareto,
            "hidden": ranked_every[default_length & ranked_every["rank"].isna() & (ranked_every["n_seeds"] > 0)
                                   & (ranked_every["budget"] == f["budget"])],
            "ranked": ranked_all[at_budget].reset_index(drop=True),
            "pareto_b": pareto[at_budget].reset_index(drop=True)}
    out["table"] = ranked_table(out["ranked"], out["pareto_b"])
    return out


@st.cache_data(show_spinner=False, max_entries=32)
def table_with_commands(key: tuple, _table: pd.DataFrame, _ranked: pd.DataFrame, _every: pd.DataFrame) -> pd.DataFrame:
    """:func:`with_commands`, cached on the view's ``key`` (as board_frames)."""
    return with_commands(_table, _ranked, _every)


def show_chart(chart) -> None:
    """An Altair chart, converted without validating it against Vega-Lite's JSON schema (``st.altair_chart``
    validates on every run: 0.2 s for a view's three charts, which delays the ranking's paint above them); the
    charts are this app's own, and the browser tests draw each of them."""
    st.vega_lite_chart(chart.to_dict(validate=False), width="stretch")


# ---------------------------------------------------------------------------------------------- filters
def _sync(key: str, options: list, *, multi: bool, default) -> None:
    """Initialise a widget's state from the URL on first sight; drop values the options no longer have."""
    if key not in st.session_state:
        if multi:
            wanted = [v for v in st.query_params.get_all(key) if v in options]
            st.session_state[key] = wanted or list(default)
        else:
            wanted = st.query_params.get(key)
            st.session_state[key] = wanted if wanted in options else default
    elif multi:
        kept = [v for v in st.session_state[key] if v in options]
        st.session_state[key] = kept if kept or not st.session_state[key] else list(default)
    elif st.session_state[key] not in options:
        st.session_state[key] = default


def select(label: str, key: str, options: list, *, counts: pd.Series, help: str | None = None) -> str | None:
    """A sidebar selectbox whose default is the option with the most runs (``counts``)."""
    if not options:
        return None
    default = max(options, key=lambda o: (counts.get(o, 0), -options.index(o)))
    _sync(key, options, multi=False, default=default)
    return st.sidebar.selectbox(label, options, key=key, help=help)


def multiselect(label: str, key: str, options: list, *, help: str | None = None) -> list[str]:
    _sync(key, options, multi=True, default=options)
    return st.sidebar.multiselect(label, options, key=key, help=help)


def sidebar_filters(frame: pd.DataFrame) -> dict:
    st.sidebar.header("Filters")
    f: dict = {}
    sub = frame
    f["suite"] = select("Suite", "suite", sorted(sub["suite"].unique()), counts=sub["suite"].value_counts(),
                        help="one config file = one suite")
    sub = sub[sub["suite"] == f["suite"]]
    f["arch"] = select("Architecture", "arch", sorted(sub["arch"].unique()), counts=sub["arch"].value_counts())
    sub = sub[sub["arch"] == f["arch"]]
    f["target"] = select("Target dataset", "target", sorted(sub["target"].unique()),
                         counts=sub["target"].value_counts(), help="where the policy is fine-tuned and evaluated")
    sub = sub[sub["target"] == f["target"]]
    budgets = sub.groupby("budget")["budget_bitops_g"].mean().sort_values(kind="mergesort").index.tolist()
    f["budget"] = select("BitOPs budget", "budget", budgets, counts=sub["budget"].value_counts(),
                         help="named by the uniform policy with the same BitOPs on the searchable layers")
    f["proxy"] = multiselect("Proxy (search data)", "proxy", sorted(sub["proxy"].unique()))
    f["method"] = multiselect("Method", "method", sorted(sub["method"].unique()))
    if "failed" not in st.session_state:
        st.session_state["failed"] = st.query_params.get("failed") == "1"
    f["failed"] = st.sidebar.toggle("Show failed runs", key="failed")
    if "unmatched" not in st.session_state:
        st.session_state["unmatched"] = st.query_params.get("unmatched") == "1"
    f["unmatched"] = st.sidebar.toggle(
        "Include entries outside the budget window", key="unmatched",
        help="An entry is budget-matched when every seed's policy uses between the suite's floor (e.g. 0.9) and "
             "1.0 of the BitOPs budget on the searchable layers. Others are left out of the ranking, the ties and "
             "the gains by default; switched on, they compete, marked 'not budget-matched'.")
    _sync("cost", list(COST_LABELS), multi=False, default="macs")
    f["cost"] = st.sidebar.radio("Search cost measure", list(COST_LABELS), key="cost",
                                 format_func=COST_LABELS.get,
                                 help="MACs processed is hardware independent; 'incl. proxy teacher' adds the training of the "
                                      "FP teacher on the proxy that GMPQ, GMPQ-ASGA and HAWQ need; wall seconds "
                                      "depend on the device")
    # Mirror the view into the URL so it can be shared.
    params: dict = {k: f[k] for k in ("suite", "arch", "target", "budget") if f[k] is not None}
    for k in ("proxy", "method"):
        if sorted(f[k]) != sorted(sub[k].unique()):
            params[k] = f[k]
    if f["failed"]:
        params["failed"] = "1"
    if f["unmatched"]:
        params["unmatched"] = "1"
    if f["cost"] != "macs":
        params["cost"] = f["cost"]
    set_query(params, FILTER_KEYS)
    f["query"] = urlencode(params, doseq=True)
    return f


FILTER_KEYS = ("suite", "arch", "target", "budget", "proxy", "method", "failed", "unmatched", "cost")


def set_query(params: dict, keys: tuple[str, ...]) -> None:
    """Write ``params`` into the URL for ``keys`` only (other keys, e.g. the tab, stay as they are)."""
    for k in keys:
        current = st.query_params.get_all(k)
        wanted = params.get(k)
        wanted = [] if wanted is None else [wanted] if isinstance(wanted, str) else list(wanted)
        if current != wanted:
            if wanted:
                st.query_params[k] = wanted if len(wanted) > 1 else wanted[0]
            else:
                del st.query_params[k]


# ---------------------------------------------------------------------------------------------- sections
def headline(ranked: pd.DataFrame, gains: pd.DataFrame, equal: list[dict], budget: str, cost: str) -> None:
    scored = ranked[ranked["rank"].notna()]
    if scored.empty:
        st.info(f"No successful run at {budget} in this selection.")
        return
    best = scored.iloc[0]
    ci = "" if pd.isna(best["top1_ci"]) else f" ± {best['top1_ci']:.2f}"
    cols = st.columns([2, 1, 1, 1])
    cols[0].metric(f"Best at {budget} (searched on {best['proxy']})", best["method"],
                   help="highest mean top-1 over seeds on the target test split")
    cols[1].metric("Its top-1 (%)", f"{best['top1_mean']:.2f}{ci}",
                   help=f"mean ± 95 % CI (Student-t half-width) over {best['n_seeds']} seed(s)")
    cols[2].metric("FP start model top-1 (%)", "n/a" if pd.isna(best["fp_top1_pct"]) else f"{best['fp_top1_pct']:.2f}")
    cols[3].metric("Its search cost (TMAC)", f"{best['search_macs_processed'] / TMAC:.3g}",
                   help=f"MACs processed by the search; {best['search_wall_s']:.0f} s wall")
    tied = [entry_label(m, p) for m, p, t in zip(scored["method"], scored["proxy"], scored["tied_with_best"])
            if not pd.isna(t) and bool(t)][1:]
    if tied:
        st.caption("Statistically tied with the best (95 % t-interval of the paired top-1 difference over common "
                   "seeds contains 0): " + ", ".join(md(t) for t in tied))
    asga = gains[gains["method"] == "asga"]
    if asga.empty:
        st.caption("ASGA has no budget-matched successful run in this selection, so no efficiency gains are shown.")
        return
    proxies = list(dict.fromkeys(ranked.loc[(ranked["method"] == "asga") & ranked["rank"].notna(), "proxy"]))
    proxy = proxies[0]
    if len(proxies) > 1:
        proxy = st.radio("ASGA searched on", proxies, horizontal=True, key="asga_proxy")
    asga = asga[asga["proxy"] == proxy]
    eq = [e for e in equal if e["method"] == "asga" and e["proxy"] == proxy]
    if eq:
        e = eq[0]
        key = "macs" if cost != "wall_s" else "wall_s"
        block = e[key]
        st.markdown(f"**ASGA (searched on {md(proxy)}) at equal accuracy** — against {md(e['reference'])} searched "
                    f"at several lengths: the search cost at which its fitted accuracy curve reaches ASGA's "
                    f"{e['proposed_top1_mean']:.2f}"
                    + ("" if e.get("proposed_top1_ci") is None else f" ± {e['proposed_top1_ci']:.2f}")
                    + " %, over ASGA's cost, − 1 (95 % bootstrap interval over seeds)")
        c1, c2 = st.columns([2, 2])
        c1.metric(f"At equal accuracy vs {e['reference'].replace('@', ' @ ')} "
                  f"({'wall seconds' if key == 'wall_s' else 'search MACs'})",
                  lb.format_gain(block["value"], block["bound"], block["ci_low"], block["ci_high"]), border=True,
                  help="'>' / '<': the curves do not cross in the measured range, so only a bound is known")
        ref_cost = block.get("reference_cost_at_equal_accuracy")
        if ref_cost is not None:
            unit = "s" if key == "wall_s" else "TMAC"
            scale = 1.0 if key == "wall_s" else TMAC
            c2.metric(f"Reference cost at ASGA's accuracy ({unit})",
                      f"{'' if block['bound'] is None else block['bound'] + ' '}{ref_cost / scale:.3g}", border=True)
    gain_col = GAIN_COLS[cost]
    st.markdown(f"**ASGA (searched on {md(proxy)}) against each baseline at {budget}, fixed length** — efficiency "
                f"gain = cost_baseline / cost_ASGA − 1 on search {COST_LABELS[cost]}, each search at its configured "
                f"length whatever accuracy it reached; delta = top-1 difference (pp)")
    items = list(asga.itertuples(index=False))
    for start in range(0, len(items), 4):
        cols = st.columns(4)
        for col, g in zip(cols, items[start:start + 4]):
            col.metric(f"vs {entry_label(g.baseline, g.baseline_proxy)}",
                       fmt_gain_vs(getattr(g, gain_col), g.baseline_search_macs_processed),
                       delta=f"{g.top1_diff_pp:+.2f} pp top-1", border=True,
                       help=f"{g.baseline_role}; {NO_SEARCH} = a control that does not search (0 MACs), so there is "
                            "no search cost to compare; n/a = ASGA's search cost is zero or missing")


def with_commands(table: pd.DataFrame, ranked: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of the ranking ``table`` with each entry's reproduce commands, from ``runs`` (failed ones included)."""
    cmds = {key: lb.entry_commands(part) for key, part in runs.groupby(["method", "proxy"], sort=False)}
    keys = list(zip(ranked["method"], ranked["proxy"]))
    return table.assign(**{"Reproduce (snakemake)": [cmds[k]["snakemake"] for k in keys],
                           "Reproduce search (mpqbench)": [cmds[k]["search"] for k in keys]})


def ranked_table(ranked: pd.DataFrame, pareto: pd.Series) -> pd.DataFrame:
    """The displayed table (labelled columns, units in the headers), without the reproduce commands."""
    matched = ranked["budget_matched"]
    return pd.DataFrame({
        "Rank": ranked["rank"],
        "Method": ranked["method"],
        "Proxy (search data)": ranked["proxy"],
        "Role": ranked["role"],
        "Top-1 (%)": ranked["top1_mean"],
        "± 95% CI (pp)": ranked["top1_ci"],
        "Tied with best": [tied_text(r) for _, r in ranked.iterrows()],
        "Paired diff vs best (pp)": ranked["paired_diff_pp"].astype("Float64"),
        "± paired 95% CI (pp)": ranked["paired_diff_ci"].astype("Float64"),
        "Std (pp)": ranked["top1_std"],
        "Seeds (n)": ranked["n_seeds"],
        "Status": ranked["status"],
        "Budget used (%)": ranked["budget_used"].astype("Float64") * 100,
        "Budget window": ["" if pd.isna(m) else "matched" if m else "not budget-matched" for m in matched],
        "Extraction": ranked["search_extraction"],
        "FP top-1 (%)": ranked["fp_top1_pct"],
        "BitOPs all (G)": ranked["bitops_g_all"],
        "BitOPs searchable (G)": ranked["bitops_g_searchable"],
        "Pareto (BitOPs)": pareto.reindex(ranked.index).fillna(False).astype(bool),
        "Size (MB)": ranked["size_mb"],
        "Avg W (bits)": ranked["avg_w_bits"],
        "Avg A (bits)": ranked["avg_a_bits"],
        "Search cost (TMAC)": ranked["search_macs_processed"] / TMAC,
        "Search wall (s)": ranked["search_wall_s"],
        "Search GPU (h)": ranked["search_gpu_hours"],
        "Search to settle (TMAC)": ranked["search_macs_to_settle"] / TMAC,
        "Proxy teacher (TMAC)": ranked["teacher_macs"] / TMAC,
        "Budget repaired": ranked["repaired"],
    }).reset_index(drop=True)


TABLE_CONFIG = {
    "Rank": st.column_config.NumberColumn("Rank", format="%d", help="by mean top-1 within suite/arch/target/budget"),
    "Top-1 (%)": st.column_config.NumberColumn(format="%.2f", help="mean over seeds, target test split"),
    "± 95% CI (pp)": st.column_config.NumberColumn(format="%.2f", help="Student-t half-width; empty for one seed"),
    "Tied with best": st.column_config.TextColumn(
        help="paired test against the best entry: the 95 % t-interval of the mean top-1 difference over the seeds "
             "both have (same search and fine-tune seed) contains 0; n/a with fewer than 2 common seeds"),
    "Paired diff vs best (pp)": st.column_config.NumberColumn(format="%+.2f", help="mean over common seeds"),
    "± paired 95% CI (pp)": st.column_config.NumberColumn(format="%.2f"),
    "Budget used (%)": st.column_config.NumberColumn(
        format="%.1f", help="searchable BitOPs / budget, mean over seeds; matched = every seed in [floor, 1]"),
    "Extraction": st.column_config.TextColumn(
        help="how a differentiable search turned its bit logits into a policy: ilp (budget-matched), argmax "
             "(as published), uniform-p (control: the ILP with uniform preferences)"),
    "Std (pp)": st.column_config.NumberColumn(format="%.2f"),
    "FP top-1 (%)": st.column_config.NumberColumn(format="%.2f", help="full-precision start model"),
    "BitOPs all (G)": st.column_config.NumberColumn(format="%.4g", help="stem and classifier at 8x8 included"),
    "BitOPs searchable (G)": st.column_config.NumberColumn(format="%.4g"),
    "Size (MB)": st.column_config.NumberColumn(format="%.3f"),
    "Avg W (bits)": st.column_config.NumberColumn(format="%.2f", help="MAC-weighted over searchable layers"),
    "Avg A (bits)": st.column_config.NumberColumn(format="%.2f"),
    "Search cost (TMAC)": st.column_config.NumberColumn(format="%.4g", help="MACs processed by the search / 1e12"),
    "Search wall (s)": st.column_config.NumberColumn(format="%.1f"),
    "Search GPU (h)": st.column_config.NumberColumn(format="%.3f"),
    "Search to settle (TMAC)": st.column_config.NumberColumn(
        format="%.4g", help="MACs processed until the argmax policy reached its final value (checked every "
                            "quarter epoch); empty for one-shot methods"),
    "Proxy teacher (TMAC)": st.column_config.NumberColumn(
        format="%.4g", help="training the FP teacher on the proxy that the method needs first (0: none)"),
    "Reproduce (snakemake)": st.column_config.TextColumn(width="medium", help="recreates the record files"),
    "Reproduce search (mpqbench)": st.column_config.TextColumn(width="medium"),
}


def policy_section(res: lb.Results, runs_budget: pd.DataFrame, ranked: pd.DataFrame, labels: list[str]) -> None:
    if not res.records:
        st.info("Per-layer policies are stored only in the run records (results/runs/**.json); this view was "
                "loaded from leaderboard.csv, so only the reproduce commands are shown.")
    _sync("detail", [NONE] + labels, multi=False, default=NONE)
    c1, c2 = st.columns([3, 1])
    label = c1.selectbox("Policy of (or select a row in the table above)", [NONE] + labels, key="detail")
    set_query({"detail": label} if label != NONE else {}, ("detail",))
    if label == NONE:
        st.caption("Select a row in the ranking (or pick an entry here) to see its per-layer weight and activation "
                   "bits next to the other methods' policies at the same arch and budget, and its reproduce commands.")
        return
    method, proxy = ranked.iloc[labels.index(label)][["method", "proxy"]]
    mine = runs_budget[(runs_budget["method"] == method) & (runs_budget["proxy"] == proxy)].sort_values("seed")
    seeds = [int(s) for s in mine["seed"]]
    _sync("detail_seed", seeds, multi=False, default=seeds[0])
    seed = c2.selectbox("Seed", seeds, key="detail_seed")

    run = mine[mine["seed"] == seed].iloc[0]
    cmds = lb.reproduce_commands(run)
    used = run.get("budget_used")
    budget_note = "" if pd.isna(used) else (
        f", budget used {used:.1%} (window [{run['budget_floor']:g}, 1]: "
        f"{'matched' if run['budget_matched'] else 'not budget-matched'})")
    extraction = run.get("search_extraction")
    st.markdown(f"**{md(label)}, seed {seed}** — status {md(run['status'])}"
                + (f" ({md(run['reason'])})" if run["status"] != "ok" and pd.notna(run["reason"]) else "")
                + budget_note + ("" if pd.isna(extraction) else f", extraction {md(extraction)}")
                + f", record {md(run['record_path'])}, run id {md(run['run_id'])}")
    st.code(f"{cmds['snakemake']}\n{cmds['search']}", language="bash", wrap_lines=True)
    st.caption("Snakemake reproduces the run exactly (search, fine-tune, evaluate); the `mpqbench search` line "
               "restates every search setting the record stores (method, proxy data and subset, input sizes, "
               "width, candidates, budget, seed, hyper-parameters; the teacher path is where the workflow "
               "writes it). Records written before these fields existed give a shorter line.")

    if not res.records:
        return
    record = res.records.get(run["run_id"]) or {}
    search = record.get("search") if isinstance(record.get("search"), dict) else {}
    chart, text = trace_chart(search.get("trace"))
    if chart is not None:
        show_chart(chart)
        st.caption(text + " (search.trace of this record, every quarter epoch).")
    entropy = search.get("entropy")
    if isinstance(entropy, dict) and entropy:
        with st.expander("Entropy of each layer's final bit-width softmax (nats)"):
            ent = pd.DataFrame([{"Layer": k, "Weights (nats)": v.get("w"), "Activations (nats)": v.get("a")}
                                for k, v in sorted(entropy.items(), key=lambda kv: lb.natural_key(kv[0]))
                                if isinstance(v, dict)])
            st.dataframe(ent, hide_index=True)
            st.caption("ln 3 = 1.10 nats is an undecided choice among three bit-widths; 0 a decided one.")
    # Every method's policy at the same suite/arch/target/budget: the chosen seed, else the entry's lowest seed.
    shown = set(zip(ranked["method"], ranked["proxy"]))
    picked = []
    for (m, p), part in runs_budget.groupby(["method", "proxy"], sort=False):
        if (m, p) not in shown:
            continue
        part = part.sort_values("seed")
        row = part[part["seed"] == seed]
        picked.append((row if len(row) else part).iloc[0]["run_id"])
    recs = [res.records[r] for r in picked if r in res.records]
    pol = lb.policy_frame(recs)
    if pol.empty:
        st.info("These records carry no per-layer policy.")
        return
    pol["entry"] = [entry_label(m, p) for m, p in zip(pol["method"], pol["proxy"])]
    order = [label] + [lab for lab in labels if lab != label and lab in set(pol["entry"])]
    layers = pol.sort_values("layer_index")["layer"].drop_duplicates().tolist()
    charts = []
    import altair as alt  # not needed before the ranking is on the page

    for kind, name in (("w", "Weight bits"), ("a", "Activation bits")):
        base = alt.Chart(pol).encode(
            x=alt.X("layer:N", sort=layers, title="Layer (module order)",
                    axis=alt.Axis(labelAngle=-60, labelOverlap=False)),
            y=alt.Y("entry:N", sort=order, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=260)))
        heat = base.mark_rect().encode(
            color=alt.Color(f"{kind}:O", title=name, scale=alt.Scale(scheme="viridis")),
            tooltip=["entry:N", "layer:N", alt.Tooltip("seed:Q"), alt.Tooltip("w:Q", title="W bits"),
                     alt.Tooltip("a:Q", title="A bits")])
        text = base.mark_text(fontSize=10, color="white").encode(text=f"{kind}:Q")
        charts.append((heat + text).properties(title=f"{name} — {label} first, then the other methods",
                                               height=24 * len(order) + 150))  # + rotated layer names
    for chart in charts:
        show_chart(chart)
    fixed = next(iter(recs)).get("fixed") or {}
    if fixed:
        st.caption("Fixed layers (not searched): " + ", ".join(f"{k} W{v['w']}A{v['a']}" for k, v in fixed.items()))
    with st.expander("Policy table (W/A bits per layer)"):
        table = lb.policy_table(pol)
        st.dataframe(table[["layer"] + [c for c in order if c in table.columns]], hide_index=True,
                     column_config={"layer": st.column_config.TextColumn("Layer")})


def provenance_section(runs: pd.DataFrame, res: lb.Results) -> None:
    cols = ["git_commit", "git_dirty", "mpqbench", "python", "torch", "device", "search_device"]
    prov = (runs[cols].astype("string").fillna("unknown").value_counts().rename("Runs (n)").reset_index()
            .rename(columns={"git_commit": "Commit", "git_dirty": "Dirty tree", "mpqbench": "mpqbench",
                             "python": "Python", "torch": "PyTorch", "device": "Fine-tune/eval device",
                             "search_device": "Search device"}))
    st.dataframe(prov, hide_index=True)
    if runs["git_dirty"].fillna(False).astype(bool).any():
        st.warning("Some runs came from a checkout with uncommitted changes (dirty tree).")
    st.caption(f"Source: `{res.source}` · {len(runs)} run(s) in this view · "
               f"created {runs['created_utc'].min()} – {runs['created_utc'].max()}")


def published_tab() -> None:
    st.markdown("Numbers **as published** by the papers and their repositories (ImageNet unless stated). "
                "They use other quantizers, training recipes, BitOPs conventions and start models, so they "
                "are **not comparable** with the measured leaderboard and never enter its ranking.")
    if not PUBLISHED_CSV.is_file():
        st.info(f"No published numbers file at {PUBLISHED_CSV}.")
        return
    try:
        pub = load_published(str(PUBLISHED_CSV), PUBLISHED_CSV.stat().st_mtime)
    except UserError as exc:
        st.error(str(exc))
        return
    archs = sorted(pub["arch"].unique())
    chosen = st.multiselect("Architecture", archs, default=archs, key="pub_arch")
    view = pub[pub["arch"].isin(chosen)]
    st.dataframe(view, hide_index=True, column_config={
        "method": "Method", "arch": "Arch", "dataset": "Dataset", "w_bits": "W (bits)", "a_bits": "A (bits)",
        "bitops_g": st.column_config.NumberColumn("BitOPs (G)", format="%.4g"),
        "top1": st.column_config.NumberColumn("Top-1 (%)", format="%.2f"),
        "source_url": st.column_config.LinkColumn("Source"), "source_table": "Table", "note": "Note"})
    st.download_button("Download published.csv", lb.csv_bytes(view), "published.csv", "text/csv")


def ranking_slots() -> dict:
    """The measured tab's places, created before the results are loaded: notices, the headline, the ranking's
    title and its table. The table slot first holds an empty table, so that on a fresh page the browser fetches
    and starts the table component while the server loads the results."""
    slots = {"notes": st.container(), "head": st.container(), "title": st.empty(), "table": st.empty()}
    slots["title"].subheader("Ranking")
    slots["table"].dataframe(pd.DataFrame(), hide_index=True)
    return slots


def board_tab(res: lb.Results, f: dict | None, slots: dict) -> None:
    with slots["notes"]:
        ready = board_notes(res, f)
    if not ready:
        slots["title"].empty()
        slots["table"].empty()
        return
    board_body(res, f, slots)


def board_notes(res: lb.Results, f: dict | None) -> bool:
    """Errors and skipped files of the results; whether there is a board to show."""
    if res.error:
        (st.info if res.error_kind == "empty" else st.error)(res.error)
    if res.problems:
        with st.expander(f"⚠️ {len(res.problems)} results file(s) skipped (malformed or duplicate runs)",
                         expanded=bool(res.error)):
            st.code("\n".join(res.problems), language=None, wrap_lines=True)
    return not (res.error or f is None)


def board_body(res: lb.Results, f: dict, slots: dict) -> None:
    key = (f["results_key"], *(tuple(f[k]) if isinstance(f[k], list) else f[k] for k in FILTER_KEYS))
    v = board_frames(key, res, f)
    runs, every = v["runs"], v["every"]
    ranked_all, hidden, pareto, ranked, pareto_b = (v[k] for k in ("ranked_all", "hidden", "pareto", "ranked",
                                                                    "pareto_b"))
    slots["notes"].caption(f"{f['suite']} · {f['arch']} → {f['target']} · budget {f['budget']} · "
                           f"{len(runs)} run(s) shown · share this view: `?{f['query']}`")
    if runs.empty:
        slots["title"].empty()
        slots["table"].info("No runs match these filters at this budget. Widen the proxy or method selection, "
                            "choose another budget, or switch on 'Show failed runs'.")
        return

    # The ranking first: the headline above it needs the gains at equal accuracy (a bootstrap), so its place is
    # kept and it is filled once the ranking has been sent to the browser.
    slots["title"].subheader(f"Ranking at {f['budget']}")
    slot = slots["table"]
    deferred = not lb.commands_are_cheap()
    if deferred:
        # A fresh server: the reproduce commands need the method registry (torch, ~3 s of CPU), so the ranking
        # is sent without them, the rest of the page follows, and the table is redrawn with them at the end.
        slot.dataframe(v["table"], hide_index=True, column_config=TABLE_CONFIG)
        board_rows: list[int] = []
    else:
        table = table_with_commands(key, v["table"], ranked, every)
        board_rows = ranking(slot, table)
    st.caption("Entries = method × proxy at the suite's default search length, aggregated over seeds (status ok "
               "only); mean ± 95 % Student-t interval; 'Tied with best' by paired differences across seeds. "
               "Efficiency gain of M over B = cost_B / cost_M − 1 on search cost. Select a row to see its policy "
               "below; charts, the curves at equal accuracy and the provenance are in the tabs below.")
    if len(hidden):
        st.warning("Not budget-matched, left out of the ranking, ties and gains (switch on 'Include entries outside "
                   "the budget window' to include them): "
                   + "; ".join(f"{md(entry_label(m, p))}: {md(r)}" for m, p, r in
                               zip(hidden["method"], hidden["proxy"], hidden["unranked"])))

    gains = lb.efficiency_gains(ranked, include_unmatched=f["unmatched"])
    equal, points = equal_terms(every, f["unmatched"])
    with slots["head"]:
        headline(ranked, gains, equal, f["budget"], f["cost"])

    labels = [entry_label(m, p) for m, p in zip(ranked["method"], ranked["proxy"])]
    clicked = board_rows[0] if board_rows and board_rows[0] < len(labels) else None
    if clicked is not None and st.session_state.get("_board_row") != clicked:
        st.session_state["detail"] = labels[clicked]  # a row clicked in the table opens its policy
        st.session_state["section"] = POLICY
    st.session_state["_board_row"] = clicked
    # Lazy sections: only the open one runs and is sent (its name is kept in the URL as ?section=...), so the
    # first view is the headline, the ranking and the policy picker, and the browser draws the ranking sooner.
    tabs = dict(zip(SECTIONS, st.tabs(SECTIONS, key="section", on_change="rerun", bind="query-params")))
    if tabs[POLICY].open:
        with tabs[POLICY]:
            policy_section(res, runs, ranked, labels)
    if tabs[CHARTS].open:
        with tabs[CHARTS]:
            charts_section(ranked_all, pareto, ranked, f)
    if tabs[EQUAL].open:
        with tabs[EQUAL]:
            equal_section(points, equal, gains, f["budget"])
    if tabs[PROVENANCE].open:
        with tabs[PROVENANCE]:
            provenance_section(runs, res)
    if deferred:
        table = table_with_commands(key, v["table"], ranked, every)
        ranking(slot, table)

    c1, c2 = st.columns(2)
    c1.download_button("Download filtered runs (CSV)", lb.frame_to_csv(runs).encode(),
                       f"mpqbench_{f['suite']}_{f['arch']}_{f['target']}_{f['budget']}_runs.csv", "text/csv")
    c2.download_button("Download ranking (CSV)", lb.csv_bytes(table),
                       f"mpqbench_{f['suite']}_{f['arch']}_{f['target']}_{f['budget']}_ranking.csv", "text/csv")
    cite_section(runs, ranked, f)


def charts_section(ranked_all: pd.DataFrame, pareto: pd.Series, ranked: pd.DataFrame, f: dict) -> None:
    left, right = st.columns(2)
    with left:
        show_chart(tradeoff_chart(ranked_all, pareto, f["budget"]))
    with right:
        chart, zero = cost_chart(ranked, f["cost"], f["budget"])
        if chart is not None:
            show_chart(chart)
        if zero:
            st.caption("Zero search cost (not drawn on the log axis): " + ", ".join(zero))


def equal_section(points: pd.DataFrame, equal: list[dict], gains: pd.DataFrame, budget: str) -> None:
    curves = curves_chart(points, budget) if len(points) else None
    if curves is None:
        st.info(f"No method was searched at several lengths at {budget} in this selection, so there is no curve "
                "of accuracy against search cost to compare at equal accuracy.")
    else:
        show_chart(curves)
        if equal:
            st.dataframe(equal_table(equal), hide_index=True)
        st.caption("Each line is one method searched at several lengths (fractions and multiples of the suite's "
                   "default search, each a full schedule, fine-tuned and evaluated like any entry). The gain at "
                   "equal accuracy reads the reference's cost off its curve, fitted non-decreasing (isotonic) and "
                   "joined linearly, at the entry's mean top-1; '>' / '<' = the curves do not cross in the measured "
                   "range; intervals: bootstrap over seeds (paired), 95 %.")
    if not gains.empty:
        with st.expander("Fixed-length efficiency gains of ASGA and GMPQ-ASGA over every other method (this budget)"):
            st.dataframe(gains_table(gains), hide_index=True, column_config={
                c: st.column_config.NumberColumn(format="%+.1f") for c in
                ("Efficiency gain, MACs (%)", "Efficiency gain, wall (%)", "Top-1 difference (pp)")})


def ranking(slot, table: pd.DataFrame) -> list[int]:
    """The ranking table with its reproduce commands, selectable by row; the selected rows."""
    event = slot.dataframe(table, hide_index=True, column_config=TABLE_CONFIG, on_select="rerun",
                           selection_mode="single-row", key="board")
    return list(getattr(getattr(event, "selection", None), "rows", []) or [])


def cite_section(runs: pd.DataFrame, ranked: pd.DataFrame, f: dict) -> None:
    """The "Cite" button: BibTeX for mpqbench at the exact commit of the runs in view plus the chosen method's own
    reference (default: the entry open in the policy view, else the best entry), and this view's line."""
    commits = sorted(set(runs["git_commit"].dropna().astype(str)))
    dirty = bool(runs["git_dirty"].fillna(False).astype(bool).any())
    bases = runs.groupby("method")["base_method"].first()
    methods = list(dict.fromkeys(ranked["method"]))
    if not methods:
        return
    detail = st.session_state.get("detail")
    default = detail.rsplit(" @ ", 1)[0] if isinstance(detail, str) and " @ " in detail else methods[0]
    with st.popover("Cite", help="BibTeX for mpqbench at the commit of these runs, and the method's own paper"):
        _sync("cite_method", methods, multi=False, default=default if default in methods else methods[0])
        method = st.selectbox("Method", methods, key="cite_method")
        st.code(cite_bibtex(commits, [(method, bases.get(method))], dirty=dirty), language="latex")
        st.caption(f"mpqbench leaderboard, suite {md(f['suite'])}, {md(f['arch'])} on {md(f['target'])} at "
                   f"{md(f['budget'])}; code commit(s) {md(', '.join(c[:12] for c in commits) or 'unknown')}; "
                   f"view `?{f['query']}`")


def main() -> None:
    st.title("mpqbench leaderboard")
    st.caption("Mixed-precision quantization policies searched on a proxy dataset, fine-tuned and evaluated on "
               "the target at a matched BitOPs budget — accuracy, search cost and the per-layer policy.")
    # Lazy tabs: only the open one runs (its name is kept in the URL as ?tab=...).
    measured, published = st.tabs([MEASURED, PUBLISHED], key="tab", on_change="rerun", bind="query-params")
    if measured.open:
        with measured:
            slots = ranking_slots()
    fingerprint = lb.results_fingerprint(RESULTS_DIR) if RESULTS_DIR.is_dir() else ()
    res = load(str(RESULTS_DIR), fingerprint)
    f = None if res.error else sidebar_filters(res.frame)
    if f is not None:
        f["results_key"] = (str(RESULTS_DIR), hash(fingerprint))
    if measured.open:
        with measured:
            board_tab(res, f, slots)
    if published.open:
        with published:
            published_tab()


main()
