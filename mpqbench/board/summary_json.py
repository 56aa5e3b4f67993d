"""``results/summary.json``: the ranking, the fixed-length gains and the gains at equal accuracy of every
group, with the conventions they follow spelled out."""

from __future__ import annotations

import pandas as pd

from mpqbench.board.common import GROUP, REFERENCE, _clean
from mpqbench.board.gains import efficiency_gains, equal_accuracy_gains
from mpqbench.board.stats import _MEAN_COLS, rank_methods


def summary(df: pd.DataFrame, *, confidence: float = 0.95, include_unmatched: bool = False,
            reference: str = REFERENCE) -> dict:
    """The content of ``results/summary.json`` from the flat frame (all runs; failed ones counted).

    ``{"schema_version": 1, "conventions": {...}, "groups": {suite: {arch: {target: {budget: {
    "budget_bitops_g", "entries": {"<method>@<proxy>": {rank, unranked, n_seeds, n_failed, top1_mean,
    top1_std, top1_ci, tied_with_best, paired_diff_pp, paired_diff_ci, paired_n, budget_used,
    budget_matched, bitops_g_all, ..., search_macs_processed, search_wall_s, ...}},
    "gains": {"<method>@<proxy>": {"<baseline>@<proxy>": {gain_macs, gain_wall_s, top1_diff_pp, ...}}},
    "gain_at_equal_accuracy": {"<method>@<proxy>": {value, bound, ci_low, ci_high, reference, wall_s,
    curves, ...}}}}}}}}``. ``gains`` are fixed-length gains (see the conventions). Every entry is listed;
    those without a rank say why (``unranked``). Means are over seeds with status ok. Deterministic.
    """
    ranked = rank_methods(df, confidence=confidence, include_unmatched=include_unmatched)
    gains = efficiency_gains(ranked, include_unmatched=include_unmatched)
    equal = equal_accuracy_gains(df, reference=reference, include_unmatched=include_unmatched,
                                 confidence=confidence) if len(df) else []
    groups: dict = {}
    stat_cols = ["rank", "unranked", "role", "n_seeds", "n_failed", "seeds", "top1_mean", "top1_std", "top1_ci",
                 "tied_with_best", "paired_diff_pp", "paired_diff_ci", "paired_n", *_MEAN_COLS, "budget_matched",
                 "search_curve", "search_extraction", "repaired"]
    for _, r in ranked.iterrows():
        cell = groups.setdefault(r["suite"], {}).setdefault(r["arch"], {}).setdefault(r["target"], {})
        node = cell.setdefault(r["budget"], {"budget_bitops_g": None, "entries": {}, "gains": {},
                                             "gain_at_equal_accuracy": {}})
        node["entries"][f"{r['method']}@{r['proxy']}"] = {c: _clean(r[c]) for c in stat_cols}
        if node["budget_bitops_g"] is None:
            node["budget_bitops_g"] = _clean(r["budget_bitops_g"])
    for _, g in gains.iterrows():
        node = groups[g["suite"]][g["arch"]][g["target"]][g["budget"]]["gains"]
        node.setdefault(f"{g['method']}@{g['proxy']}", {})[f"{g['baseline']}@{g['baseline_proxy']}"] = {
            "gain_macs": _clean(g["gain_macs"]),
            "gain_wall_s": _clean(g["gain_wall_s"]),
            "gain_macs_with_teacher": _clean(g["gain_macs_with_teacher"]),
            "gain_macs_to_settle": _clean(g["gain_macs_to_settle"]),
            "top1_diff_pp": _clean(g["top1_diff_pp"]),
        }
    for e in equal:
        node = groups[e["suite"]][e["arch"]][e["target"]][e["budget"]]["gain_at_equal_accuracy"]
        node[f"{e['method']}@{e['proxy']}"] = {k: v for k, v in e.items() if k not in GROUP + ["method", "proxy"]}
    pct = f"{confidence:.0%}"
    return {
        "schema_version": 1,
        "conventions": {
            "top1": "percent; mean over seeds with status ok; top1_std with ddof=1; "
                    f"top1_ci = half-width of the {pct} Student-t interval of the mean (seeds vary search, "
                    "fine-tune and evaluation; the FP start model is shared, so its variance is not in it)",
            "budget_used": "searchable BitOPs / budget BitOPs, mean over ok seeds; budget_matched = every ok seed "
                           "in [budget_floor, 1] (1e-9 slack); budget_floor is the suite's (0.9 when a record "
                           "does not carry it)",
            "rank": "within (suite, arch, target, budget) by mean top-1, over entries at the default search length "
                    + ("(budget-matched or not)" if include_unmatched else "that are budget-matched")
                    + "; ties share a rank; 'unranked' says why an entry has no rank",
            "tied_with_best": f"the {pct} Student-t interval of the mean paired top-1 difference to the group's best "
                              "entry (pairs = runs of the same seed, paired_n of them) contains 0 "
                              "(paired_diff_pp, paired_diff_ci); null with fewer than 2 common seeds",
            "gain": "fixed-length efficiency gain (each search at its configured length, whatever accuracy it "
                    "reached): cost_baseline / cost_method - 1 on mean search MACs processed (gain_macs) "
                    "or mean search wall seconds (gain_wall_s); gain_macs_with_teacher adds the MACs of training "
                    "the FP proxy teacher that gmpq, gmpq-asga and hawq need (teacher_macs); gain_macs_to_settle uses "
                    "the MACs processed until each search's argmax policy reached its final value "
                    "(search_macs_to_settle, checked every quarter epoch; iterative searches only)",
            "gain_at_equal_accuracy": f"C_ref / C_method - 1 on mean search MACs (value; wall_s beside it), where "
                                      f"C_ref is the smallest search cost at which {reference}'s top-1, measured at "
                                      "several search lengths and fitted non-decreasing in cost (isotonic, linear "
                                      "between fitted points), reaches the method's mean top-1; bound '>' / '<' "
                                      "when the curves do not cross in the measured range (value = the gain at "
                                      f"the reference's longest / shortest search); ci_low/ci_high = {pct} "
                                      "percentile interval of a paired bootstrap over seeds (null end = unbounded)",
            "top1_diff_pp": "mean top-1 of method - mean top-1 of baseline, percentage points",
            "proposed": sorted(set(df.loc[df["role"] == "proposed", "method"].dropna())) if "role" in df else [],
            "reference": reference,
        },
        "groups": groups,
    }
