"""The documented budget repair: lower bits greedily until a policy meets its BitOPs budget.

Every final policy meets its budget. When a method's raw result does not (the argmax of the α's can land
above the expected BitOPs the penalty steered), the repair lowers one layer's weight or activation bits
one candidate step at a time, each time choosing the move with the least loss of the method's own
preference per BitOP saved — preference = log-probability of the candidate under softmax(α) where the
method has α's, otherwise 1 per move (so the largest saving goes first). Ties break on layer order.
The policy records ``repaired: true`` when this ran.
"""

from __future__ import annotations

from typing import Mapping

from mpqbench.cost import bitops_g
from mpqbench.errors import UserError

# name -> {"w": {bits: log_prob}, "a": {bits: log_prob}}
Preferences = Mapping[str, Mapping[str, Mapping[int, float]]]


def check_feasible(names: list[str], macs: Mapping[str, int], budget_bitops_g: float,
                   w_candidates: list[int], a_candidates: list[int], budget_name: str = "") -> None:
    """UserError unless the lowest candidates everywhere meet the budget (checked before any search runs)."""
    w, a = min(w_candidates), min(a_candidates)
    floor = bitops_g(macs, {n: (w, a) for n in names})
    if floor > budget_bitops_g * (1 + 1e-9):
        raise UserError(
            f"budget {budget_name + ' = ' if budget_name else ''}{budget_bitops_g:.4g} GBitOPs is below "
            f"the smallest policy the candidates allow "
            f"({floor:.4g} GBitOPs at W{w}A{a}); choose a larger budget or lower bit candidates"
        )


def repair_to_budget(
    layers: Mapping[str, tuple[int, int]],
    macs: Mapping[str, int],
    budget_bitops_g: float,
    w_candidates: list[int],
    a_candidates: list[int],
    preferences: Preferences | None = None,
) -> tuple[dict[str, tuple[int, int]], bool]:
    """Return ``(layers meeting the budget, whether anything changed)``; UserError if impossible."""
    out = {n: (int(w), int(a)) for n, (w, a) in layers.items()}
    ws, as_ = sorted(w_candidates), sorted(a_candidates)
    check_feasible(list(out), macs, budget_bitops_g, ws, as_)
    repaired = False
    while bitops_g(macs, out) > budget_bitops_g * (1 + 1e-9):
        best = None  # (score, index, name, kind, new_bits)
        for idx, (name, (w, a)) in enumerate(out.items()):
            for kind, cur, cands, other in (("w", w, ws, a), ("a", a, as_, w)):
                lower = [c for c in cands if c < cur]
                if not lower:
                    continue
                new = lower[-1]
                saving = macs[name] * (cur - new) * other
                if saving <= 0:
                    continue
                if preferences is not None:
                    pref = preferences[name][kind]
                    loss = max(pref[cur] - pref[new], 0.0) + 1e-6
                else:
                    loss = 1.0
                score = loss / saving
                if best is None or score < best[0] - 1e-15:
                    best = (score, idx, name, kind, new)
        assert best is not None, "no move left although the floor meets the budget"
        _, _, name, kind, new = best
        w, a = out[name]
        out[name] = (new, a) if kind == "w" else (w, new)
        repaired = True
    return out, repaired
