"""Statistics over the flat frame: ranking entries within a group, statistical ties, the Pareto front."""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mpqbench.board.common import ENTRY, GROUP, RUN_KEY, _LENGTH_TOL, _clean
from mpqbench.board.frame import _derived

def t_quantile(confidence: float, dof: int | np.ndarray) -> float | np.ndarray:
    """Two-sided Student-t critical value (e.g. 4.303 for 95 % and 2 degrees of freedom); NaN where ``dof`` is
    not positive. Computed here (the tail probability is a regularized incomplete beta function, inverted by
    bisection to machine precision) rather than with scipy.special, whose import costs the leaderboard's first
    view about 0.3 s; tests check it against scipy."""
    if np.ndim(dof) == 0:
        return _t_quantile(float(confidence), float(dof))
    arr = np.asarray(dof, dtype=float)
    return np.array([_t_quantile(float(confidence), float(d)) for d in arr.ravel()]).reshape(arr.shape)


@functools.lru_cache(maxsize=512)
def _t_quantile(confidence: float, dof: float) -> float:
    if not (dof > 0 and 0 < confidence < 1):
        return math.nan
    alpha = 1.0 - confidence  # P(|T| > t) = I_{dof / (dof + t^2)}(dof / 2, 1 / 2)

    def tail(t: float) -> float:
        return _betainc(dof / 2, 0.5, dof / (dof + t * t))

    lo, hi = 0.0, 1.0
    while tail(hi) > alpha:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if tail(mid) > alpha else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


_MEAN_COLS = {
    "fp_top1_pct": "fp_top1_pct",
    "budget_bitops_g": "budget_bitops_g",
    "budget_used": "budget_used",
    "budget_floor": "budget_floor",
    "bitops_g_all": "bitops_g_all",
    "bitops_g_searchable": "bitops_g_searchable",
    "size_mb": "size_mb",
    "avg_w_bits": "avg_w_bits",
    "avg_a_bits": "avg_a_bits",
    "search_length": "search_length",
    "search_macs_processed": "search_macs_processed",
    "search_wall_s": "search_wall_s",
    "search_gpu_hours": "search_gpu_hours",
    "search_macs_to_settle": "search_macs_to_settle",
    "teacher_macs": "teacher_macs",
    "teacher_wall_s": "teacher_wall_s",
    "finetune_wall_s": "finetune_wall_s",
}


def _seed_top1(df: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """{entry key (ENTRY values): {seed: top-1}} over runs with status ok and a finite top-1."""
    out: dict[tuple, dict[int, float]] = {}
    ok = df[(df["status"] == "ok") & df["top1_pct"].notna()]
    for key, seed, top1 in zip(ok[ENTRY].itertuples(index=False, name=None), ok["seed"], ok["top1_pct"]):
        if math.isfinite(float(top1)):
            out.setdefault(tuple(key), {})[int(seed)] = float(top1)
    return out


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], *,
                      confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean and ``confidence`` t-interval half-width of top-1(a) - top-1(b) over the seeds both have
    (runs are paired by seed: the fine-tune seed equals the search seed), and that number of seeds.
    Half-width NaN with fewer than 2 common seeds; mean NaN with none."""
    common = sorted(set(a) & set(b))
    diffs = np.array([a[s] - b[s] for s in common], dtype=float)
    if len(diffs) == 0:
        return math.nan, math.nan, 0
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, math.nan, 1
    half = t_quantile(confidence, len(diffs) - 1) * float(diffs.std(ddof=1)) / math.sqrt(len(diffs))
    return mean, float(half), len(diffs)


def rank_methods(df: pd.DataFrame, *, confidence: float = 0.95, include_unmatched: bool = False) -> pd.DataFrame:
    """One row per entry (suite, arch, target, budget, method, proxy), aggregated over seeds.

    Statistics use only runs with status ok: ``top1_mean``, ``top1_std`` (sample, ddof=1),
    ``top1_ci`` = t-based half-width of the ``confidence`` interval of the mean (NA for one seed),
    and the mean of every cost column (``budget_used`` too). ``budget_matched``: every ok run of the
    entry lies in its budget window (NA without an ok run).

    Ranked entries: at least one ok run, at the suite's default search length (``search_length`` 1;
    the other lengths are points of an accuracy-vs-search-cost curve, see :func:`curve_points`) and,
    unless ``include_unmatched``, budget-matched. ``rank`` = 1 + number of ranked entries in the group
    with a higher mean top-1 (ties share a rank); the others get no rank and say why in ``unranked``.
    Failed runs only show up in ``n_failed`` and ``status``.

    Statistical ties by paired differences: the group's best ranked entry (first by rank, then method,
    proxy) is compared with every ranked entry over the seeds both have: ``paired_diff_pp`` (mean of
    top-1(entry) - top-1(best) per seed), ``paired_diff_ci`` (its t-interval half-width), ``paired_n``
    (common seeds) and ``tied_with_best`` (the interval contains 0; NA with fewer than 2 common seeds;
    True for the best itself). This is not the overlap of the two entries' intervals: pairing by seed
    removes the variance the runs of one seed share (the same fine-tune seed and data order).
    """
    cols = ENTRY + ["rank", "role", "unranked", "n_seeds", "n_failed", "status", "seeds", "top1_mean", "top1_std",
                    "top1_ci", "tied_with_best", "paired_diff_pp", "paired_diff_ci", "paired_n", *_MEAN_COLS,
                    "budget_matched", "search_curve", "search_extraction", "repaired", "run_ids"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = _derived(df).sort_values(RUN_KEY + ["run_id"], kind="mergesort")  # float sums depend on order: fix it
    keys = df[ENTRY].astype(object)
    num = df[["top1_pct", *_MEAN_COLS.values()]].astype("float64")
    ok = (df["status"] == "ok").to_numpy()
    ok_num = num.copy()
    ok_num.loc[~ok, :] = np.nan  # failed runs drop out of every statistic
    grouped = pd.concat([keys, ok_num], axis=1).groupby(ENTRY, sort=True, dropna=False)
    out = grouped.agg(n_seeds=("top1_pct", "count"), top1_mean=("top1_pct", "mean"),
                      top1_std=("top1_pct", "std"), **{c: (src, "mean") for c, src in _MEAN_COLS.items()})
    matched = df["budget_matched"].astype("object").where(ok, None)
    extra = pd.concat([keys, pd.DataFrame({
        "ok": ok, "seed_ok": df["seed"].astype("float64").where(ok),
        "repaired_ok": df["search_repaired"].fillna(False).astype(bool).to_numpy() & ok,
        "matched_ok": matched, "curve": df["search_curve"].astype(object),
        "length": df["search_length"].astype("float64"),
        "extraction": df["search_extraction"].astype(object).where(ok, None),
        "run_id": df["run_id"].astype(str)}, index=df.index)], axis=1).groupby(ENTRY, sort=True, dropna=False)
    out["n_runs"] = extra.size()
    out["repaired"] = extra["repaired_ok"].any()
    out["seeds"] = extra["seed_ok"].agg(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna())))
    out["run_ids"] = extra["run_id"].agg(",".join)
    out["search_curve"] = extra["curve"].first()
    out["search_length"] = extra["length"].mean()  # a setting of the entry: failed runs count too
    out["search_extraction"] = extra["extraction"].agg(
        lambda s: ",".join(sorted({str(v) for v in s if v is not None and v is not pd.NA})) or None)

    def _all_matched(s: pd.Series) -> Any:
        values = [v for v in s if v is not None]
        if not values or any(v is pd.NA for v in values):
            return pd.NA
        return all(bool(v) for v in values)

    out["budget_matched"] = extra["matched_ok"].agg(_all_matched).astype("boolean")
    out = out.reset_index()
    out["n_failed"] = out["n_runs"] - out["n_seeds"]
    out["status"] = ["ok" if f == 0 else f"{n} ok, {f} failed" for n, f in zip(out["n_seeds"], out["n_failed"])]
    roles = df.groupby(ENTRY, sort=False)["role"].first()
    out["role"] = [roles.get(tuple(k), "baseline") for k in out[ENTRY].itertuples(index=False)]
    n = out["n_seeds"].to_numpy()
    dof = np.where(n > 1, n - 1, 1)
    out["top1_ci"] = np.where(n > 1, t_quantile(confidence, dof) * out["top1_std"] / np.sqrt(np.maximum(n, 1)),
                              np.nan)
    out.loc[n < 2, "top1_std"] = np.nan
    default_length = (out["search_length"] - 1.0).abs() <= _LENGTH_TOL
    is_matched = out["budget_matched"].fillna(False).astype(bool)
    rankable = (out["n_seeds"] > 0) & default_length & (is_matched | include_unmatched)
    out["unranked"] = [_unranked_reason(r, include_unmatched) for r in out.to_dict("records")]
    out.loc[rankable, "unranked"] = None
    scores = out["top1_mean"].where(rankable)
    out["rank"] = scores.groupby([out[c] for c in GROUP], sort=False).rank(method="min", ascending=False).astype("Int64")
    out = out.sort_values(GROUP + ["rank", "method", "proxy"], na_position="last", kind="mergesort")
    out = out.reset_index(drop=True)
    _paired_ties(out, _seed_top1(df), confidence)
    return out[cols]


def _unranked_reason(r: Mapping[str, Any], include_unmatched: bool) -> str | None:
    if not r["n_seeds"] > 0:
        return "no ok run"
    if not abs(r["search_length"] - 1.0) <= _LENGTH_TOL:
        return f"search length {r['search_length']:g}x: a point of the {r['search_curve']} cost curve"
    if include_unmatched or r["budget_matched"] is True:
        return None
    used = _clean(r["budget_used"])
    if used is None:
        return "not budget-matched (budget used unknown)"
    return f"not budget-matched (budget used {used:.1%}, window [{r['budget_floor']:g}, 1])"


def _paired_ties(out: pd.DataFrame, per_seed: Mapping[tuple, Mapping[int, float]], confidence: float) -> None:
    """Fill the paired-difference columns of a sorted ranking in place (see :func:`rank_methods`)."""
    diff, half, n_common, tied = ([math.nan] * len(out), [math.nan] * len(out), [pd.NA] * len(out),
                                  [pd.NA] * len(out))
    ranked = out[out["rank"].notna()]
    for _, part in ranked.groupby(GROUP, sort=False):
        best_key = tuple(part.iloc[0][ENTRY])
        best = per_seed.get(best_key, {})
        for i, row in part.iterrows():
            key = tuple(row[ENTRY])
            if key == best_key:
                diff[i], half[i], n_common[i], tied[i] = 0.0, 0.0, len(best), True
                continue
            d, h, k = paired_difference(per_seed.get(key, {}), best, confidence=confidence)
            diff[i], half[i], n_common[i] = d, h, k
            tied[i] = pd.NA if k < 2 else bool(d - h <= 0.0 <= d + h)
    out["paired_diff_pp"] = pd.array(diff, dtype="Float64")
    out["paired_diff_ci"] = pd.array(half, dtype="Float64")
    out["paired_n"] = pd.array(n_common, dtype="Int64")
    out["tied_with_best"] = pd.array(tied, dtype="boolean")
    for col in ("paired_diff_pp", "paired_diff_ci"):
        out[col] = out[col].where(~out[col].isna() & np.isfinite(out[col].astype("float64").fillna(np.nan)))


def pareto_mask(cost: Sequence[float], gain: Sequence[float]) -> np.ndarray:
    """True where no other point has cost <= and gain >= with at least one strict (minimise
    ``cost``, maximise ``gain``). Points with a missing value are never on the front."""
    cost = np.asarray(cost, dtype=float)
    gain = np.asarray(gain, dtype=float)
    valid = np.isfinite(cost) & np.isfinite(gain)
    mask = np.zeros(len(cost), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid & (cost <= cost[i]) & (gain >= gain[i]) & ((cost < cost[i]) | (gain > gain[i]))
        mask[i] = not others.any()
    return mask


def pareto_front(ranked: pd.DataFrame, *, x: str = "bitops_g_all", y: str = "top1_mean",
                 by: Sequence[str] = ("suite", "arch", "target")) -> pd.Series:
    """Boolean Series (index of ``ranked``): the entry is on the accuracy-vs-``x`` Pareto front of
    its (suite, arch, target), across budgets. Every entry given takes part (budget-matched or not:
    each sits at its own BitOPs); the caller chooses which entries to pass."""
    out = pd.Series(False, index=ranked.index, dtype=bool)
    for _, part in ranked.groupby(list(by), sort=False):
        out[part.index] = pareto_mask(part[x], part[y])
    return out

