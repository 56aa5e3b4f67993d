"""From a search's per-layer bit preferences to one policy: the extraction step.

A differentiable search ends with a softmax over the bit candidates of every layer, p_l(w) for the weight
and q_l(a) for the activation bits. Three extractions turn that into one (w, a) pair per layer:

``ilp`` (default, budget-matched)
    maximise Σ_l [log p_l(w_l) + log q_l(a_l)] subject to floor·B ≤ Σ_l MACs_l·w_l·a_l ≤ B, solved exactly by
    :func:`mpqbench.ilp.solve_bit_allocation` over the |W|·|A| pairs of each layer (B = the budget's searchable
    BitOPs on the target geometry, floor = the suite's budget window, 0.9 by default). Every policy then
    spends 90–100 % of its budget, so entries are compared at the same BitOPs. The objective is the most
    probable joint assignment under the search's own (independent per layer) distributions.
``argmax`` (as published by EdMIPS/GMPQ/ASGA)
    the most probable candidate per layer, then the greedy repair of :mod:`mpqbench.search.repair` if the
    result is over budget. It may leave much of the budget unused (undecided softmaxes round down).
``uniform-p`` (control)
    the ``ilp`` extraction with uniform p and q: every in-window policy is equally probable, so the choice
    among them is made by seeded i.i.d. tie-breaking costs (uniform on [0, 1) per layer and pair). It shows
    what filling the budget alone gives, without any preference learned by a search; it costs no search.

What the ILP rewards (a caveat for readers): with undecided softmaxes, log-probabilities differ little
between candidates, and the budget constraint decides most layers; a layer whose softmax is flattest is
the cheapest place to spend spare BitOPs. The per-layer entropy (:func:`entropies`) is recorded with every
policy so that a reader can see how decided a search was.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, Sequence

import numpy as np

from mpqbench.runs import DEFAULT_BUDGET_FLOOR
from mpqbench.cost import bitops_g
from mpqbench.errors import UserError
from mpqbench.ilp import solve_bit_allocation

Extraction = Literal["ilp", "argmax", "uniform-p"]
EXTRACTIONS: tuple[str, ...] = ("ilp", "argmax", "uniform-p")

# name -> {"w": {bits: log_prob}, "a": {bits: log_prob}} (natural log)
LogProbs = Mapping[str, Mapping[str, Mapping[int, float]]]


def entropies(log_probs: LogProbs) -> dict[str, dict[str, float]]:
    """Per layer, the entropy (nats) of the weight and activation distributions: 0 = decided,
    ln K = uniform over K candidates."""
    out = {}
    for name, sides in log_probs.items():
        out[name] = {side: float(-sum(math.exp(lp) * lp for lp in sides[side].values() if math.isfinite(lp)))
                     for side in ("w", "a")}
    return out


def window_ilp(costs: Mapping[str, Mapping[tuple[int, int], float]], macs: Mapping[str, int],
               budget_bitops_g: float, floor: float) -> dict[str, tuple[int, int]]:
    """The (w, a) pair per layer minimising Σ costs under floor·B ≤ BitOPs ≤ B (exact ILP)."""
    if not 0 <= floor <= 1:
        raise UserError(f"budget floor {floor} must be within [0, 1] (0.9 = spend at least 90 % of the budget)")
    names = list(costs)
    pairs = [sorted(costs[n]) for n in names]
    width = max(len(p) for p in pairs)
    cost_m = np.full((len(names), width), np.inf)
    bitops_m = np.zeros((len(names), width))
    for i, (name, cands) in enumerate(zip(names, pairs)):
        for k, (w, a) in enumerate(cands):
            cost_m[i, k] = costs[name][(w, a)]
            bitops_m[i, k] = macs[name] * w * a / 1e9
    try:
        choice = solve_bit_allocation(cost_m, bitops_m, budget_bitops_g,
                                      lower=floor * budget_bitops_g if floor > 0 else None)
    except UserError as exc:
        raise UserError(f"no policy of the candidates spends {floor:.0%}–100 % of the budget "
                        f"({budget_bitops_g:.4g} GBitOPs): {exc}") from None
    return {name: pairs[i][int(choice[i])] for i, name in enumerate(names)}


def extract(log_probs: LogProbs, macs: Mapping[str, int], budget_bitops_g: float, *,
            mode: Extraction = "ilp", floor: float = DEFAULT_BUDGET_FLOOR, seed: int = 0,
            order: Sequence[str] | None = None) -> tuple[dict[str, tuple[int, int]], bool]:
    """``(layers, repaired)`` for ``mode`` (see the module docstring). ``repaired`` is True only for
    ``argmax`` when the greedy repair had to lower bits. ``order`` fixes the layer order (default: as given)."""
    from mpqbench.search.repair import repair_to_budget

    names = list(order or log_probs)
    if mode not in EXTRACTIONS:
        raise UserError(f"extraction {mode!r} is unknown; use one of {', '.join(EXTRACTIONS)}")
    w_cands = sorted(next(iter(log_probs.values()))["w"])
    a_cands = sorted(next(iter(log_probs.values()))["a"])
    if mode == "argmax":
        layers = {}
        for n in names:  # first candidate on ties, as argmax_bits
            lw, la = log_probs[n]["w"], log_probs[n]["a"]
            layers[n] = (max(w_cands, key=lambda b: (lw[b], -w_cands.index(b))),
                         max(a_cands, key=lambda b: (la[b], -a_cands.index(b))))
        return repair_to_budget(layers, macs, budget_bitops_g, w_cands, a_cands, preferences=log_probs)
    if mode == "uniform-p":
        rng = np.random.default_rng(seed)
        costs = {n: {(w, a): float(rng.random()) for w in w_cands for a in a_cands} for n in names}
    else:
        costs = {n: {(w, a): -(log_probs[n]["w"][w] + log_probs[n]["a"][a]) for w in w_cands for a in a_cands}
                 for n in names}
    return window_ilp(costs, macs, budget_bitops_g, floor), False


def budget_used(layers: Mapping[str, tuple[int, int]], macs: Mapping[str, int], budget_bitops_g: float) -> float:
    """Searchable BitOPs of ``layers`` over the budget (1.0 = exactly at the budget)."""
    return bitops_g(macs, layers) / budget_bitops_g if budget_bitops_g > 0 else math.nan
