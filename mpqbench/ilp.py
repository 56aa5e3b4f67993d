"""One-choice-per-layer integer program for bit allocation (HAWQ-V3, LIMPQ, OMPQ).

Each layer l picks exactly one of K choices (a bit-width, or a (w, a) pair); choice k of layer l costs
``costs[l, k]`` in the objective and ``bitops[l, k]`` in the resource budget. Solved exactly with
``scipy.optimize.milp`` (HiGHS, bundled with SciPy): binary x_lk, Σ_k x_lk = 1,
lower ≤ Σ bitops·x ≤ budget, minimise Σ costs·x. A choice with an infinite cost is forbidden for that
layer. The lower bound (default none) is how a policy is made to *use* its budget: with
``lower = 0.9 · budget`` every solution spends 90–100 % of it (the harness's budget window).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import LinearConstraint, milp

from mpqbench.errors import UserError

# Relative slack allowed on every resource limit: absorbs float-summation order (a budget that is the exact
# BitOPs of a uniform policy must admit that policy) and nothing a report would show.
_REL_SLACK = 1e-9
_MAX_RESOLVES = 5


def solve_bit_allocation(
    costs: np.ndarray,
    bitops: np.ndarray,
    budget: float,
    *,
    lower: float | None = None,
    extra_constraints: Sequence[tuple[np.ndarray, float]] | None = None,
) -> np.ndarray:
    """Choice index per layer (int64, shape [L]) minimising Σ_l costs[l, k_l] under resource limits.

    costs: [L, K] objective per layer per choice (any sign; ``np.inf`` forbids a choice).
    bitops: [L, K] resource per layer per choice, any unit, same unit as ``budget``.
    lower: the least BitOPs the assignment must use (same unit as ``budget``); None = no lower bound.
    extra_constraints: further resources, each ``(matrix [L, K], limit)`` with Σ matrix·x ≤ limit
    (e.g. model size in MB).
    Raises UserError when no assignment fits the limits. Deterministic for the same inputs.
    """
    if lower is not None and not (np.isfinite(lower) and lower <= budget):
        raise ValueError(f"lower bound {lower!r} must be finite and at most the budget {budget!r}")
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 2 or costs.shape[0] == 0 or costs.shape[1] == 0:
        raise ValueError(f"costs must be a non-empty [L, K] array, got shape {costs.shape}")
    if np.isnan(costs).any() or np.isneginf(costs).any():
        raise ValueError("costs contain NaN or -inf; every entry must be finite or +inf (forbidden)")
    allowed = np.isfinite(costs)
    if not allowed.any(axis=1).all():
        bad = np.flatnonzero(~allowed.any(axis=1)).tolist()
        raise ValueError(f"layers {bad} have every choice forbidden (all costs are +inf)")
    n_layers, n_choices = costs.shape

    resources = [("BitOPs", np.asarray(bitops, dtype=np.float64), float(budget))]
    for i, (matrix, limit) in enumerate(extra_constraints or ()):
        resources.append((f"extra constraint {i}", np.asarray(matrix, dtype=np.float64), float(limit)))
    for label, matrix, limit in resources:
        if matrix.shape != costs.shape:
            raise ValueError(f"{label} matrix has shape {matrix.shape}, expected {costs.shape} like costs")
        if not np.isfinite(matrix).all() or not np.isfinite(limit):
            raise ValueError(f"{label}: matrix and limit must be finite")
        cheapest = float(np.where(allowed, matrix, np.inf).min(axis=1).sum())
        if cheapest > limit + _REL_SLACK * abs(limit):
            raise UserError(
                f"{label} limit {limit:.6g} is infeasible: even the cheapest choice for every layer needs "
                f"{cheapest:.6g}; raise the budget to at least {cheapest:.6g} or add lower bit-widths to the "
                "candidates"
            )

    if lower is not None:
        richest = float(np.where(allowed, resources[0][1], -np.inf).max(axis=1).sum())
        if richest < lower - _REL_SLACK * abs(lower):
            raise UserError(
                f"BitOPs floor {lower:.6g} is infeasible: even the largest choice for every layer gives only "
                f"{richest:.6g}; lower the floor or add higher bit-widths to the candidates"
            )

    # Objective: subtracting each layer's minimum adds a constant (one choice per layer), and scaling to
    # max 1 keeps HiGHS's absolute gap tolerance meaningful for tiny sensitivities such as Hessian terms.
    c = np.where(allowed, costs, 0.0)
    c = c - np.where(allowed, costs, np.inf).min(axis=1, keepdims=True)
    c = np.where(allowed, c, 0.0)
    scale = float(np.abs(c).max())
    c = (c / scale if scale > 0 else c).ravel()

    one_hot = np.kron(np.eye(n_layers), np.ones((1, n_choices)))  # [L, L·K]: Σ_k x_lk
    # Resource rows are divided by their limit (or their largest entry) so HiGHS's feasibility tolerance
    # is relative; the achieved totals are checked exactly afterwards.
    row_scale = [abs(limit) if limit != 0 else max(float(np.abs(m).max()), 1.0) for _, m, limit in resources]
    resource_rows = np.stack([m.ravel() / s for (_, m, _), s in zip(resources, row_scale)])
    upper = np.array([limit / s for (_, _, limit), s in zip(resources, row_scale)])
    upper = upper + _REL_SLACK * np.abs(upper)
    low = np.full(len(resources), -np.inf)
    if lower is not None:
        low[0] = lower / row_scale[0] - _REL_SLACK * abs(lower / row_scale[0])

    for _ in range(_MAX_RESOLVES):
        result = milp(
            c,
            integrality=np.ones_like(c),
            bounds=(np.zeros_like(c), allowed.ravel().astype(np.float64)),
            constraints=[
                LinearConstraint(one_hot, 1.0, 1.0),
                LinearConstraint(resource_rows, low, upper),
            ],
            options={"mip_rel_gap": 0.0},
        )
        if result.status == 2:  # infeasible: each limit alone fits (checked above), together they do not
            limits = ", ".join(f"{label} ≤ {limit:.6g}" for label, _, limit in resources)
            if lower is not None:
                limits = f"BitOPs ≥ {lower:.6g}, " + limits
            raise UserError(f"no bit allocation meets all limits together ({limits}); relax one of them")
        if result.x is None:
            raise RuntimeError(f"bit-allocation ILP failed: {result.message}")
        choice = result.x.reshape(n_layers, n_choices).argmax(axis=1)
        achieved = resource_rows.reshape(len(resources), n_layers, n_choices)[
            :, np.arange(n_layers), choice
        ].sum(axis=1)
        excess = achieved - upper
        short = low - achieved
        if (excess <= 0).all() and (short <= 0).all():
            return choice.astype(np.int64)
        upper = upper - np.maximum(excess, 0) - 1e-12  # HiGHS tolerance let a rounded solution overshoot
        low = low + np.maximum(short, 0) + 1e-12
    raise RuntimeError("bit-allocation ILP kept overshooting a limit within solver tolerance")
