"""Efficiency gains: fixed-length (cost ratio of two entries' searches) and at equal accuracy (the cost
at which the reference's isotonic accuracy-vs-search-cost curve reaches an entry's accuracy, with a
paired bootstrap over seeds); and their text form."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mpqbench.board.common import GROUP, REFERENCE, _LENGTH_TOL, _clean
from mpqbench.board.frame import _derived
from mpqbench.board.stats import _seed_top1, rank_methods


def efficiency_gain(cost_baseline: float, cost_method: float) -> float:
    """cost_B / cost_M - 1 (1.5 = the method needs 2.5x less search compute); NaN when undefined."""
    if not (math.isfinite(cost_baseline) and math.isfinite(cost_method)) or cost_method <= 0:
        return math.nan
    return cost_baseline / cost_method - 1.0


def _float(v: Any) -> float:
    v = _clean(v)
    return math.nan if v is None else float(v)


def _with_teacher(row: Mapping[str, Any]) -> float:
    return float(row["search_macs_processed"]) + (_clean(row.get("teacher_macs")) or 0.0)


def _comparable(ranked: pd.DataFrame, include_unmatched: bool) -> pd.DataFrame:
    """Entries that take part in gains: an ok run, the default search length, budget-matched unless
    ``include_unmatched`` (columns a ranking lacks count as the default: length 1, matched)."""
    if not len(ranked):
        return ranked
    keep = ranked["n_seeds"] > 0
    if "search_length" in ranked:
        keep &= (ranked["search_length"].astype("float64").fillna(1.0) - 1.0).abs() <= _LENGTH_TOL
    if not include_unmatched and "budget_matched" in ranked:
        keep &= ranked["budget_matched"].astype("boolean").fillna(False).astype(bool)
    return ranked[keep]


def efficiency_gains(ranked: pd.DataFrame, *, methods: Sequence[str] | None = None,
                     include_unmatched: bool = False) -> pd.DataFrame:
    """Fixed-length efficiency gains: every (entry M with method in ``methods``, default: the entries whose
    role is proposed) x (every other entry B) in the same group, both at the suite's default search length and, unless
    ``include_unmatched``, budget-matched: ``gain_macs`` and ``gain_wall_s`` (cost_B / cost_M - 1, on
    mean search MACs processed and mean search wall seconds), ``gain_macs_with_teacher`` (the same on
    search MACs plus the MACs of training the FP proxy teacher a method needs, GMPQ's and HAWQ's; records
    without the field count 0), ``gain_macs_to_settle`` (the same on the MACs processed until each
    search's argmax policy reached its final value; NaN for one-shot methods) and ``top1_diff_pp`` (mean
    top-1 of M - of B). These compare the costs of two fixed search lengths whatever accuracy each
    reached; :func:`equal_accuracy_gains` measures the gain at equal accuracy."""
    cols = GROUP + ["method", "proxy", "baseline", "baseline_proxy", "baseline_role", "gain_macs",
                    "gain_wall_s", "gain_macs_with_teacher", "gain_macs_to_settle", "top1_diff_pp", "top1_mean", "baseline_top1_mean",
                    "search_macs_processed", "baseline_search_macs_processed"]
    rows = []
    scored = _comparable(ranked, include_unmatched)
    for key, part in scored.groupby(GROUP, sort=True):
        mine = part["role"].eq("proposed") if methods is None else part["method"].isin(list(methods))
        for _, m in part[mine].iterrows():
            for _, b in part[~mine].iterrows():
                rows.append({
                    **dict(zip(GROUP, key)),
                    "method": m["method"], "proxy": m["proxy"],
                    "baseline": b["method"], "baseline_proxy": b["proxy"], "baseline_role": b["role"],
                    "gain_macs": efficiency_gain(b["search_macs_processed"], m["search_macs_processed"]),
                    "gain_wall_s": efficiency_gain(b["search_wall_s"], m["search_wall_s"]),
                    "gain_macs_with_teacher": efficiency_gain(_with_teacher(b), _with_teacher(m)),
                    "gain_macs_to_settle": efficiency_gain(_float(b["search_macs_to_settle"]),
                                                           _float(m["search_macs_to_settle"])),
                    "top1_diff_pp": m["top1_mean"] - b["top1_mean"],
                    "top1_mean": m["top1_mean"], "baseline_top1_mean": b["top1_mean"],
                    "search_macs_processed": m["search_macs_processed"],
                    "baseline_search_macs_processed": b["search_macs_processed"],
                })
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------------
# Efficiency at equal accuracy: accuracy-vs-search-cost curves, isotonic fit, bootstrap over seeds


def isotonic_increasing(x: Sequence[float], y: Sequence[float], w: Sequence[float] | None = None) -> np.ndarray:
    """The non-decreasing function of ``x`` closest to ``y`` in weighted least squares (pool-adjacent-
    violators). Points with equal ``x`` are pooled first (they get one value). Returns the fitted value
    of every point, in the input order. Weights default to 1 and must be positive."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    order = np.argsort(x, kind="mergesort")
    # blocks: [sum w*y, sum w, member indices]; equal x start in one block
    blocks: list[list] = []
    for i in order:
        if blocks and x[blocks[-1][2][-1]] == x[i]:
            b = blocks[-1]
            b[0] += w[i] * y[i]
            b[1] += w[i]
            b[2].append(i)
        else:
            blocks.append([w[i] * y[i], w[i], [i]])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            b = blocks.pop()
            blocks[-1][0] += b[0]
            blocks[-1][1] += b[1]
            blocks[-1][2].extend(b[2])
    fit = np.empty_like(y)
    for total, weight, members in blocks:
        fit[members] = total / weight
    return fit


def cost_at_accuracy(cost: Sequence[float], fit: Sequence[float], accuracy: float) -> tuple[float, str | None]:
    """The smallest cost at which a non-decreasing curve (points ``cost`` ascending, fitted values
    ``fit``, joined by straight lines) reaches ``accuracy``. Outside the measured range a bound:
    ``(cost[0], "<")`` when the cheapest point already reaches it (the true cost is at most that),
    ``(cost[-1], ">")`` when even the most expensive point stays below (the true cost is more)."""
    cost = np.asarray(cost, dtype=float)
    fit = np.asarray(fit, dtype=float)
    if fit[0] >= accuracy:
        return float(cost[0]), "<"
    if fit[-1] < accuracy:
        return float(cost[-1]), ">"
    i = int(np.argmax(fit >= accuracy))  # first point at or above; i >= 1 and fit[i - 1] < accuracy
    x0, x1, y0, y1 = cost[i - 1], cost[i], fit[i - 1], fit[i]
    return float(x0 + (accuracy - y0) / (y1 - y0) * (x1 - x0)), None


def equal_accuracy_gain(ref_cost: Sequence[float], ref_top1: Sequence[float], cost: float, top1: float, *,
                        weights: Sequence[float] | None = None) -> tuple[float, str | None]:
    """Gain at equal accuracy of an entry (search ``cost``, mean ``top1``) over a reference curve
    (points ``ref_cost``, mean ``ref_top1``, optional ``weights``): the reference's top-1 is fitted
    non-decreasing in cost (:func:`isotonic_increasing`), the cost C_ref at which the fit reaches
    ``top1`` is read off (:func:`cost_at_accuracy`), and the gain is C_ref / cost - 1. Returns
    (gain, bound): bound ``">"``/``"<"`` means the gain is more/less than the value (the curves do not
    cross in the measured range); NaN when undefined (no reference point, cost not positive)."""
    x = np.asarray(ref_cost, dtype=float)
    y = np.asarray(ref_top1, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (w > 0)
    if not keep.any() or not (math.isfinite(cost) and cost > 0 and math.isfinite(top1)):
        return math.nan, None
    x, y, w = x[keep], y[keep], w[keep]
    order = np.argsort(x, kind="mergesort")
    x, y, w = x[order], y[order], w[order]
    c_ref, bound = cost_at_accuracy(x, isotonic_increasing(x, y, w), top1)
    return efficiency_gain(c_ref, cost), bound


def _percentile(values: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile of values that may hold +-inf (inf where it touches one)."""
    v = np.sort(np.asarray(values, dtype=float))
    pos = q / 100 * (len(v) - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    if not (math.isfinite(v[lo]) and math.isfinite(v[hi])):
        return float(v[hi] if not math.isfinite(v[hi]) else v[lo])
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def _isotonic_rows(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) fit of every row of ``y`` (points already in cost order, all
    weights > 0), by the min-max formula fit_i = max_{j<=i} min_{k>=i} mean(y[j..k]): exact, and
    vectorised over rows (the curves here have a handful of points)."""
    n = y.shape[1]
    cw = np.concatenate([np.zeros((len(y), 1)), np.cumsum(w, axis=1)], axis=1)
    cy = np.concatenate([np.zeros((len(y), 1)), np.cumsum(w * y, axis=1)], axis=1)
    fit = np.empty_like(y)
    for i in range(n):
        best = np.full(len(y), -np.inf)
        for j in range(i + 1):
            k = np.arange(i, n)
            means = (cy[:, k + 1] - cy[:, [j]]) / (cw[:, k + 1] - cw[:, [j]])
            best = np.maximum(best, means.min(axis=1))
        fit[:, i] = best
    return fit


def _equal_accuracy_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray, cost: float,
                         top1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`equal_accuracy_gain` for many resamples at once: reference points ``x`` (ascending),
    per-row top-1 ``y`` and weights ``w`` (B x n), the entry's per-row top-1. Returns (gain, bound code:
    0 crossing, -1 "<", +1 ">"); rows where a point has zero weight go through the scalar path."""
    gains = np.full(len(y), np.nan)
    codes = np.zeros(len(y), dtype=int)
    full = (w > 0).all(axis=1) & np.isfinite(top1)
    if full.any():
        fit = _isotonic_rows(y[full], w[full])
        a = top1[full]
        below, above = fit[:, 0] >= a, fit[:, -1] < a
        i = np.clip(np.argmax(fit >= a[:, None], axis=1), 1, max(len(x) - 1, 1)) if len(x) > 1 else np.zeros(len(a), int)
        rows = np.arange(len(a))
        if len(x) > 1:
            y0, y1 = fit[rows, i - 1], fit[rows, i]
            with np.errstate(divide="ignore", invalid="ignore"):
                c = x[i - 1] + (a - y0) / (y1 - y0) * (x[i] - x[i - 1])
        else:
            c = np.full(len(a), x[0])
        c = np.where(below, x[0], np.where(above, x[-1], c))
        gains[full] = c / cost - 1.0
        codes[full] = np.where(below, -1, np.where(above, 1, 0))
    for b in np.flatnonzero(~full):
        g, bound = equal_accuracy_gain(x, y[b], cost, float(top1[b]), weights=w[b])
        gains[b], codes[b] = g, {"<": -1, ">": 1}.get(bound, 0)
    return gains, codes


def curve_points(df: pd.DataFrame, *, include_unmatched: bool = False, confidence: float = 0.95) -> pd.DataFrame:
    """Every entry as a point of its accuracy-vs-search-cost curve: GROUP, ``curve`` (the length-1
    method label it belongs to: ``search_curve``, else its own label), proxy, method, ``length``,
    ``macs``/``wall_s`` (mean search cost), ``top1_mean``, ``top1_ci``, ``n_seeds``, ``n_points`` (of
    its curve), sorted by group, curve, proxy, length. Entries without an ok run and, unless
    ``include_unmatched``, entries that are not budget-matched are left out."""
    cols = GROUP + ["curve", "proxy", "method", "role", "length", "macs", "wall_s", "top1_mean", "top1_ci",
                    "n_seeds", "n_points"]
    ranked = rank_methods(df, confidence=confidence, include_unmatched=True) if len(df) else pd.DataFrame()
    if not len(ranked):
        return pd.DataFrame(columns=cols)
    keep = ranked["n_seeds"] > 0
    if not include_unmatched:
        keep &= ranked["budget_matched"].fillna(False).astype(bool)
    r = ranked[keep]
    if not len(r):
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({**{c: r[c] for c in GROUP}, "curve": r["search_curve"].astype(str), "proxy": r["proxy"],
                        "method": r["method"], "role": r["role"], "length": r["search_length"].astype(float),
                        "macs": r["search_macs_processed"].astype(float), "wall_s": r["search_wall_s"].astype(float),
                        "top1_mean": r["top1_mean"].astype(float), "top1_ci": r["top1_ci"].astype(float),
                        "n_seeds": r["n_seeds"].astype(int)})
    out["n_points"] = out.groupby(GROUP + ["curve", "proxy"])["method"].transform("size").astype(int)
    return out.sort_values(GROUP + ["curve", "proxy", "length", "method"], kind="mergesort")[cols].reset_index(drop=True)


def equal_accuracy_gains(df: pd.DataFrame, *, reference: str = REFERENCE, methods: Sequence[str] | None = None,
                         include_unmatched: bool = False, confidence: float = 0.95, n_boot: int = 2000,
                         rng_seed: int = 0) -> list[dict]:
    """Efficiency gain at equal accuracy of each proposed entry over the ``reference``'s curve, per group.

    The reference's curve is every entry of the group whose curve is ``reference`` (its length-1 entry
    and the entries searched at other lengths, ``search_curve == reference``): points (mean search MACs,
    top-1 of each seed). Proposed entries: length-1 entries of the methods in ``methods`` (default: the
    entries whose role is proposed and every method that has a curve of its own, e.g. ASGA and its
    radius variant), never the reference. For each, C_ref = the smallest search cost at which the
    reference's top-1, fitted non-decreasing in cost by isotonic regression (weighted by seeds) and
    joined linearly between fitted points (linear in cost), reaches the entry's mean top-1; the gain is
    C_ref / C_entry - 1 on mean search MACs processed (``value``) and the same on wall seconds
    (``wall_s``). Where the curves do not cross in the measured range the result is a bound: ``bound``
    ">" (even the reference's longest search stays below; value = the gain at its longest length) or "<"
    (its shortest already reaches it; value = the gain at its shortest length).

    Uncertainty: a bootstrap over seeds. Runs are paired by seed, so one draw of seeds (``n_boot``
    resamples of the group's seeds with replacement, ``numpy.random.default_rng(rng_seed)``) is shared by
    every point of both curves and every entry of the group; each point's top-1 is the mean over the
    drawn seeds it has (counted with multiplicity; a point none of whose seeds were drawn drops out of
    that resample). Costs are the points' mean costs in every resample (a search's MACs do not depend
    on the seed). ``ci_low``/``ci_high``: the ``confidence`` percentile interval of the resampled gains,
    where a resample whose curves do not cross is a bound and counts as the most extreme gain it allows
    on each side (a ">" x resample as x for the lower end and +inf for the upper; a "<" x resample as -1,
    zero reference cost, for the lower end and x for the upper), so the interval is conservative; an
    infinite end is reported as None (unbounded); ``bootstrap`` says how many resamples were censored
    each way. With fewer than 2 seeds there is no interval.

    Entries that are not budget-matched take no part unless ``include_unmatched``. With the reference
    searched on several proxies, the one named like the target is used, else the first by name.
    Returns one dict per (group, proposed entry), with its curve points (:func:`curve_points` fields)
    and, for comparison, ``fixed_length_gain`` (the reference's length-1 cost / the entry's - 1, whatever
    accuracy each reached; None without a length-1 reference entry).
    """
    points = curve_points(df, include_unmatched=include_unmatched, confidence=confidence)
    if not len(points):
        return []
    per_seed = _seed_top1(_derived(df))
    results = []
    for gkey, part in points.groupby(GROUP, sort=True):
        ref_all = part[part["curve"] == reference]
        if not len(ref_all):
            continue
        proxies = sorted(ref_all["proxy"].unique())
        target = dict(zip(GROUP, gkey))["target"]
        ref_proxy = target if target in proxies else proxies[0]
        ref = ref_all[ref_all["proxy"] == ref_proxy].sort_values(["macs", "length"], kind="mergesort")
        heads = part[((part["length"] - 1.0).abs() <= _LENGTH_TOL) & (part["method"] == part["curve"])
                     & (part["curve"] != reference)]
        if methods is None:
            own_curve = {(c, p) for (c, p), n in part.groupby(["curve", "proxy"])["method"].size().items() if n > 1}
            heads = heads[[r == "proposed" or (m, p) in own_curve
                           for m, p, r in zip(heads["method"], heads["proxy"], heads["role"])]]
        else:
            heads = heads[heads["method"].isin(list(methods))]
        if not len(heads):
            continue
        seeds = sorted({s for m, p in zip(pd.concat([ref, heads])["method"], pd.concat([ref, heads])["proxy"])
                        for s in per_seed.get((*gkey, m, p), {})})
        counts = None
        if len(seeds) >= 2 and n_boot > 0:
            draws = np.random.default_rng(rng_seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
            counts = np.zeros((n_boot, len(seeds)))
            np.add.at(counts, (np.repeat(np.arange(n_boot), len(seeds)), draws.ravel()), 1.0)

        def values(method: str, proxy: str) -> tuple[np.ndarray, np.ndarray]:
            got = per_seed.get((*gkey, method, proxy), {})
            v = np.array([got.get(s, np.nan) for s in seeds], dtype=float)
            return np.nan_to_num(v), np.isfinite(v).astype(float)

        ref_vals = [values(m, ref_proxy) for m in ref["method"]]
        for _, h in heads.iterrows():
            res = {**dict(zip(GROUP, gkey)), "method": h["method"], "proxy": h["proxy"],
                   "reference": f"{reference}@{ref_proxy}", "proposed_top1_mean": float(h["top1_mean"]),
                   "proposed_top1_ci": _clean(h["top1_ci"]), "proposed_n_seeds": int(h["n_seeds"]),
                   "proposed_macs": float(h["macs"]), "proposed_wall_s": float(h["wall_s"])}
            mine = part[(part["curve"] == h["method"]) & (part["proxy"] == h["proxy"])]
            for name, cost_col in (("macs", "macs"), ("wall_s", "wall_s")):
                value, bound = equal_accuracy_gain(ref[cost_col], ref["top1_mean"], float(h[cost_col]),
                                                   float(h["top1_mean"]), weights=ref["n_seeds"])
                block = {"value": _clean(value), "bound": bound, "ci_low": None, "ci_high": None}
                if counts is not None:
                    pv, pm = values(h["method"], h["proxy"])
                    p_w = counts @ pm
                    p_mean = np.divide(counts @ pv, p_w, out=np.full(n_boot, np.nan), where=p_w > 0)
                    r_w = np.stack([counts @ m for _, m in ref_vals], axis=1)
                    r_mean = np.divide(np.stack([counts @ v for v, _ in ref_vals], axis=1), r_w,
                                       out=np.zeros(r_w.shape), where=r_w > 0)
                    g, code = _equal_accuracy_rows(ref[cost_col].to_numpy(float), r_mean, r_w, float(h[cost_col]),
                                                   p_mean)
                    keep = np.isfinite(g)
                    g, code = g[keep], code[keep]
                    if len(g):  # censored resamples count as the most extreme gain they allow, on each side
                        low = np.where(code == -1, -1.0, g)
                        high = np.where(code == 1, np.inf, g)
                        block["ci_low"] = _clean(_percentile(low, 50 * (1 - confidence)))
                        block["ci_high"] = _clean(_percentile(high, 50 * (1 + confidence)))
                    block["bootstrap"] = {"resamples": int(len(g)), "censored_below": int((code == -1).sum()),
                                          "censored_above": int((code == 1).sum())}
                c_ref = None if block["value"] is None else (block["value"] + 1.0) * float(h[cost_col])
                block["reference_cost_at_equal_accuracy"] = c_ref
                res[name] = block
            res.update({k: res["macs"][k] for k in ("value", "bound", "ci_low", "ci_high")})
            at_default = ref[(ref["length"] - 1.0).abs() <= _LENGTH_TOL]  # the fixed-length gain, for comparison
            res["fixed_length_gain"] = {
                c: (_clean(efficiency_gain(float(at_default.iloc[0][c]), float(h[c]))) if len(at_default) else None)
                for c in ("macs", "wall_s")}
            res["bootstrap"] = {"n_boot": n_boot if counts is not None else 0, "rng_seed": rng_seed,
                                "seeds": seeds, "confidence": confidence}
            ref_fit = isotonic_increasing(ref["macs"], ref["top1_mean"], ref["n_seeds"])
            res["curves"] = {
                "reference": [{**_point(p), "top1_fit": _clean(f)} for p, f in zip(ref.to_dict("records"), ref_fit)],
                "proposed": [_point(p) for p in mine.sort_values(["length", "method"]).to_dict("records")],
            }
            results.append(res)
    return results


def _point(p: Mapping[str, Any]) -> dict:
    return {"method": p["method"], "length": _clean(p["length"]), "macs": _clean(p["macs"]),
            "wall_s": _clean(p["wall_s"]), "top1_mean": _clean(p["top1_mean"]), "top1_ci": _clean(p["top1_ci"]),
            "n_seeds": _clean(p["n_seeds"])}


def equal_accuracy_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`equal_accuracy_gains` as one row per (group, entry): the gain on MACs and on wall seconds
    (value, bound, interval), the reference and the entry's mean top-1 and costs."""
    cols = GROUP + ["method", "proxy", "reference", "gain", "bound", "ci_low", "ci_high", "gain_wall_s",
                    "bound_wall_s", "ci_low_wall_s", "ci_high_wall_s", "fixed_length_gain_macs",
                    "fixed_length_gain_wall_s", "top1_mean", "top1_ci", "search_macs_processed",
                    "reference_macs_at_equal_accuracy", "search_wall_s"]
    rows = [{**{c: r[c] for c in GROUP}, "method": r["method"], "proxy": r["proxy"], "reference": r["reference"],
             "gain": r["value"], "bound": r["bound"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
             "gain_wall_s": r["wall_s"]["value"], "bound_wall_s": r["wall_s"]["bound"],
             "ci_low_wall_s": r["wall_s"]["ci_low"], "ci_high_wall_s": r["wall_s"]["ci_high"],
             "fixed_length_gain_macs": r["fixed_length_gain"]["macs"],
             "fixed_length_gain_wall_s": r["fixed_length_gain"]["wall_s"],
             "top1_mean": r["proposed_top1_mean"], "top1_ci": r.get("proposed_top1_ci"),
             "search_macs_processed": r["proposed_macs"],
             "reference_macs_at_equal_accuracy": r["macs"]["reference_cost_at_equal_accuracy"],
             "search_wall_s": r["proposed_wall_s"]} for r in results]
    return pd.DataFrame(rows, columns=cols)


def format_gain(value: float | None, bound: str | None, ci_low: float | None = None,
                ci_high: float | None = None) -> str:
    """A gain for people: ``+471% [+300%, +620%]``, ``> +700%``, ``n/a``; an unbounded end is ``∞``
    (missing values may be None, NaN or NA)."""
    value, ci_low, ci_high = _clean(value), _clean(ci_low), _clean(ci_high)
    bound = bound if bound in ("<", ">") else None
    if value is None:
        return "n/a"
    text = f"{value:+.0%}" if bound is None else f"{bound} {value:+.0%}"
    if ci_low is not None or ci_high is not None:
        lo = "-∞" if ci_low is None else f"{ci_low:+.0%}"
        hi = "+∞" if ci_high is None else f"{ci_high:+.0%}"
        text += f" [{lo}, {hi}]"
    return text

