"""The extraction step: from per-layer bit preferences to a policy inside the budget window."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mpqbench.cost import bitops_g
from mpqbench.errors import UserError
from mpqbench.search.extract import entropies, extract

CANDS = [2, 3, 4]


def undecided(n_layers: int, probs=(0.6, 0.3, 0.1)) -> dict:
    """Every layer prefers 2 bits a little (p(2, 3, 4) = 0.6/0.3/0.1): the shape the equal-terms check saw."""
    lp = {b: math.log(p) for b, p in zip(CANDS, probs)}
    return {f"l{i}": {"w": dict(lp), "a": dict(lp)} for i in range(n_layers)}


def macs_of(n_layers: int, seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    return {f"l{i}": int(m) for i, m in enumerate(rng.integers(10_000, 200_000, size=n_layers))}


def w3a3_budget(macs) -> float:
    return bitops_g(macs, {n: (3, 3) for n in macs})


@pytest.mark.parametrize("budget_scale", [1.0, 2.5 * 2.5 / 9])  # w3a3 and w2.5a2.5
def test_undecided_softmaxes_give_a_policy_inside_the_window(budget_scale):
    macs = macs_of(20)
    budget = w3a3_budget(macs) * budget_scale
    prefs = undecided(20)
    argmax, _ = extract(prefs, macs, budget, mode="argmax")
    assert set(argmax.values()) == {(2, 2)}  # argmax rounds every layer down: far below the budget
    assert bitops_g(macs, argmax) / budget < 0.9
    layers, repaired = extract(prefs, macs, budget, mode="ilp", floor=0.9)
    used = bitops_g(macs, layers) / budget
    assert 0.9 - 1e-9 <= used <= 1 + 1e-9 and not repaired
    # and it is the most probable policy in the window (checked against a greedy-free bound: no in-window
    # policy that differs in one layer's pair has a higher joint log-probability)
    score = lambda ls: sum(prefs[n]["w"][w] + prefs[n]["a"][a] for n, (w, a) in ls.items())  # noqa: E731
    best = score(layers)
    for n in layers:
        for w, a in itertools.product(CANDS, CANDS):
            alt = dict(layers, **{n: (w, a)})
            if 0.9 * budget <= bitops_g(macs, alt) <= budget:
                assert score(alt) <= best + 1e-9


def test_ilp_matches_brute_force_on_a_small_case():
    macs = {"a": 1000, "b": 3000, "c": 500}
    rng = np.random.default_rng(3)
    prefs = {}
    for n in macs:
        pw, pa = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3))
        prefs[n] = {"w": {b: math.log(p) for b, p in zip(CANDS, pw)}, "a": {b: math.log(p) for b, p in zip(CANDS, pa)}}
    budget = bitops_g(macs, {n: (3, 3) for n in macs})
    layers, _ = extract(prefs, macs, budget, mode="ilp", floor=0.9)
    best, best_score = None, -math.inf
    for pairs in itertools.product(itertools.product(CANDS, CANDS), repeat=3):
        ls = dict(zip(macs, pairs))
        if not 0.9 * budget <= bitops_g(macs, ls) <= budget:
            continue
        sc = sum(prefs[n]["w"][w] + prefs[n]["a"][a] for n, (w, a) in ls.items())
        if sc > best_score:
            best, best_score = ls, sc
    assert layers == best


def test_argmax_extraction_repairs_over_budget_and_says_so():
    macs = macs_of(6)
    lp = {2: math.log(0.1), 3: math.log(0.2), 4: math.log(0.7)}
    prefs = {n: {"w": dict(lp), "a": dict(lp)} for n in macs}
    budget = w3a3_budget(macs)
    layers, repaired = extract(prefs, macs, budget, mode="argmax")
    assert repaired and bitops_g(macs, layers) <= budget * (1 + 1e-9)


def test_uniform_p_is_seeded_and_in_window():
    macs = macs_of(20, seed=1)
    budget = w3a3_budget(macs) * 0.7
    flat = undecided(20, probs=(1 / 3, 1 / 3, 1 / 3))
    a, _ = extract(flat, macs, budget, mode="uniform-p", seed=0)
    b, _ = extract(flat, macs, budget, mode="uniform-p", seed=0)
    c, _ = extract(flat, macs, budget, mode="uniform-p", seed=1)
    assert a == b and a != c
    for ls in (a, c):
        assert 0.9 - 1e-9 <= bitops_g(macs, ls) / budget <= 1 + 1e-9


def test_entropies_by_hand_and_bad_inputs():
    h = entropies(undecided(1))["l0"]
    want = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    assert h["w"] == pytest.approx(want) and h["a"] == pytest.approx(want)
    assert entropies(undecided(1, (1 / 3, 1 / 3, 1 / 3)))["l0"]["w"] == pytest.approx(math.log(3))
    macs = macs_of(3)
    with pytest.raises(UserError, match="unknown"):
        extract(undecided(3), macs, w3a3_budget(macs), mode="best")
    with pytest.raises(UserError, match="floor"):
        extract(undecided(3), macs, w3a3_budget(macs), mode="ilp", floor=1.5)
    # a window that no policy reaches: W4A4 everywhere is 16/9 of w3a3, so a floor of 0.9 × (2 × w3a3) fails
    with pytest.raises(UserError, match="spends"):
        extract(undecided(3), macs, 2 * w3a3_budget(macs), mode="ilp", floor=0.9)
