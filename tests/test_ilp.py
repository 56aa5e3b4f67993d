import itertools

import numpy as np
import pytest

from mpqbench.errors import UserError
from mpqbench.ilp import solve_bit_allocation


def _brute_force(costs, bitops, budget, extra=()):
    """Best objective over all K^L assignments that fit every limit (None if none fits)."""
    n_layers, n_choices = costs.shape
    best = None
    for choice in itertools.product(range(n_choices), repeat=n_layers):
        idx = (np.arange(n_layers), np.array(choice))
        if bitops[idx].sum() > budget or any(m[idx].sum() > lim for m, lim in extra):
            continue
        obj = costs[idx].sum()
        best = obj if best is None else min(best, obj)
    return best


def _random_case(rng, n_layers=5, n_choices=3):
    bits = np.array([2, 4, 8][:n_choices], dtype=float)
    macs = rng.integers(1_000, 50_000, size=n_layers).astype(float)
    bitops = macs[:, None] * bits[None, :] ** 2 / 1e9  # GBitOPs, tiny numbers on purpose
    # Sensitivity decreasing in bits, with tiny magnitudes like Hessian-trace × quant error.
    scale = rng.uniform(0.1, 1.0, size=(n_layers, 1)) * rng.uniform(0.5, 2, (n_layers, n_choices))
    costs = scale * 1e-7 / bits[None, :] ** 2
    return costs, bitops


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_and_respects_budget(seed):
    rng = np.random.default_rng(seed)
    costs, bitops = _random_case(rng)
    lo, hi = bitops.min(axis=1).sum(), bitops.max(axis=1).sum()
    budget = lo + rng.uniform(0.2, 0.8) * (hi - lo)
    choice = solve_bit_allocation(costs, bitops, budget)
    idx = (np.arange(len(choice)), choice)
    assert choice.dtype == np.int64 and choice.shape == (costs.shape[0],)
    assert bitops[idx].sum() <= budget
    assert costs[idx].sum() == pytest.approx(_brute_force(costs, bitops, budget), rel=1e-9)


def test_negative_costs_and_extra_constraint_match_brute_force():
    rng = np.random.default_rng(42)
    costs, bitops = _random_case(rng, n_layers=6, n_choices=3)
    costs = np.log(costs)  # any sign, lower (better) for more bits
    costs = costs - costs.mean()
    size = rng.uniform(1, 3, size=(6, 1)) * np.array([[2.0, 4.0, 8.0]])
    budget = bitops.max(axis=1).sum() * 0.6
    size_limit = size.max(axis=1).sum() * 0.4
    choice = solve_bit_allocation(costs, bitops, budget, extra_constraints=[(size, size_limit)])
    idx = (np.arange(6), choice)
    assert bitops[idx].sum() <= budget and size[idx].sum() <= size_limit
    expected = _brute_force(costs, bitops, budget, [(size, size_limit)])
    assert costs[idx].sum() == pytest.approx(expected, rel=1e-9)
    # The size limit binds: without it the optimum is strictly better.
    free = solve_bit_allocation(costs, bitops, budget)
    assert costs[np.arange(6), free].sum() < expected


def test_exact_uniform_budget_is_feasible_and_loose_budget_takes_best():
    bits = np.array([2.0, 3.0, 4.0])
    macs = np.array([123_457.0, 98_765.0, 31_415.0, 27_182.0])
    bitops = macs[:, None] * bits**2 / 1e9
    costs = np.tile(1.0 / bits**2, (4, 1))
    budget = float(sum(m * 3 * 3 / 1e9 for m in macs))  # uniform 3-bit, summed in another order
    choice = solve_bit_allocation(costs, bitops, budget)
    assert bitops[np.arange(4), choice].sum() <= budget * (1 + 1e-9)
    assert solve_bit_allocation(costs, bitops, bitops.max(axis=1).sum() * 2).tolist() == [2, 2, 2, 2]


def test_forbidden_choice_is_never_picked():
    costs = np.array([[3.0, np.inf, 1.0], [3.0, 2.0, 1.0]])
    bitops = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    choice = solve_bit_allocation(costs, bitops, budget=5.0)
    # (2, 0) costs 4, (0, 2) costs 4; (1, 1) would cost 4 too but is forbidden; (2,0) or (0,2) only.
    assert choice[0] != 1
    assert costs[np.arange(2), choice].sum() == 4.0


def test_infeasible_budget_raises_user_error_with_minimum():
    costs = np.ones((3, 2))
    bitops = np.array([[4.0, 16.0], [4.0, 16.0], [2.0, 8.0]])
    with pytest.raises(UserError, match=r"at least 10"):
        solve_bit_allocation(costs, bitops, budget=9.0)


def test_jointly_infeasible_limits_raise_user_error():
    costs = np.ones((2, 2))
    bitops = np.array([[1.0, 2.0], [1.0, 2.0]])
    size = np.array([[2.0, 1.0], [2.0, 1.0]])  # small bitops means big size and vice versa
    with pytest.raises(UserError, match="relax"):
        solve_bit_allocation(costs, bitops, 2.5, extra_constraints=[(size, 2.5)])


def test_deterministic():
    rng = np.random.default_rng(3)
    costs, bitops = _random_case(rng, n_layers=12, n_choices=3)
    costs[:, :] = costs.round(12)
    budget = bitops.mean(axis=1).sum()
    first = solve_bit_allocation(costs, bitops, budget)
    for _ in range(3):
        assert np.array_equal(solve_bit_allocation(costs, bitops, budget), first)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        solve_bit_allocation(np.ones((2, 3)), np.ones((3, 2)), 10.0)


def _brute_force_window(costs, bitops, lower, upper):
    n_layers, n_choices = costs.shape
    best = None
    for choice in itertools.product(range(n_choices), repeat=n_layers):
        idx = (np.arange(n_layers), np.array(choice))
        total = bitops[idx].sum()
        if total > upper or total < lower:
            continue
        obj = costs[idx].sum()
        best = obj if best is None else min(best, obj)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_lower_bound_matches_brute_force(seed):
    # A cost that prefers the *cheapest* choice everywhere: without a floor the ILP spends little of the
    # budget; with lower = 0.9·budget it must land inside the window, at the best objective there.
    rng = np.random.default_rng(100 + seed)
    _, bitops = _random_case(rng)
    costs = rng.uniform(0, 1, size=bitops.shape) + np.arange(bitops.shape[1])[None, :]
    lo, hi = bitops.min(axis=1).sum(), bitops.max(axis=1).sum()
    budget = lo + rng.uniform(0.4, 0.8) * (hi - lo)
    unconstrained = solve_bit_allocation(costs, bitops, budget)
    idx = (np.arange(len(unconstrained)), unconstrained)
    assert bitops[idx].sum() < 0.9 * budget  # the case is one where the floor matters
    choice = solve_bit_allocation(costs, bitops, budget, lower=0.9 * budget)
    idx = (np.arange(len(choice)), choice)
    assert 0.9 * budget * (1 - 1e-9) <= bitops[idx].sum() <= budget * (1 + 1e-9)
    assert costs[idx].sum() == pytest.approx(_brute_force_window(costs, bitops, 0.9 * budget, budget), rel=1e-9)


def test_lower_bound_infeasible_is_one_line_user_error():
    bitops = np.array([[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(UserError, match="floor"):
        solve_bit_allocation(np.zeros((2, 2)), bitops, 10.0, lower=5.0)
    with pytest.raises(ValueError):
        solve_bit_allocation(np.zeros((2, 2)), bitops, 3.0, lower=4.0)
