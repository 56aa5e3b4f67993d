"""LIMPQ (baselines/limpq.py): the joint training of per-bit step sizes, the random mixed policies, and the
importance → ILP step.

- the random mixed policy draws only candidate pairs (tied by rank), is a function of its seed, and draws
  every rank;
- on a tiny run of the joint training every step size — weights and activations, every layer, every
  candidate — moves from its initial value, and a layer's steps differ between bit-widths;
- the ILP picks the hand-computed optimum of a 3-layer toy (and the other one when an indicator is wired);
- the search ends inside the budget window, records a settle point, and meters every pass;
- a search killed after its first epoch's checkpoint resumes to exactly the uninterrupted result.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from baselines.limpq import (
    IndicatorNet,
    Limpq,
    LimpqHparams,
    SwitchableBatchNorm,
    joint_step,
    limpq_costs,
    limpq_policy,
    random_mixed_policy,
    rank_pairs,
    wired_points,
)
from mpqbench.cost import arch_cost
from mpqbench.data import load_split, make_loader, subset
from mpqbench.models import get_model
from mpqbench.search import SearchContext
from mpqbench.train import default_param_groups
from mpqbench.utils import torch_save
from searchkit import tiny_context

ARCH, WIDTH, SIZE = "resnet20", 0.25, 8


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------- random mixed policies
def test_rank_pairs_tie_weights_and_activations_by_rank():
    assert rank_pairs([2, 3, 4], [4, 2, 3]) == [(4, 4), (3, 3), (2, 2)]
    assert rank_pairs([2, 3, 4], [4, 8]) == [(4, 8), (3, 4), (2, 4)]  # the shorter side repeats its lowest


def test_random_mixed_policy_draws_only_candidates_and_is_seeded():
    names = [f"l{i}" for i in range(60)]
    a = random_mixed_policy(names, [2, 3, 4], [2, 3, 4], [0, 7, 0])
    assert list(a) == names
    assert set(a.values()) == {(2, 2), (3, 3), (4, 4)}  # only candidates, tied, and every rank drawn
    assert random_mixed_policy(names, [2, 3, 4], [2, 3, 4], [0, 7, 0]) == a  # same seed, same policy
    assert random_mixed_policy(names, [2, 3, 4], [2, 3, 4], [0, 8, 0]) != a  # another step, another one
    assert random_mixed_policy(names, [2, 3, 4], [2, 3, 4], [1, 7, 0]) != a  # another search seed
    odd = random_mixed_policy(names, [2, 3, 4], [4, 8], 3)
    assert set(odd.values()) <= {(4, 8), (3, 4), (2, 4)}
    assert all(w in (2, 3, 4) and a_ in (4, 8) for w, a_ in odd.values())


# ---------------------------------------------------------------------------------- the joint training
def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return get_model(ARCH, num_classes=10, in_channels=1, input_size=SIZE, width=WIDTH)


def _digits(count: int = 64):
    return subset(load_split("digits", "train", input_size=SIZE), count=count, seed=0)


def test_step_sizes_are_trained_and_differ_per_bit():
    model = _tiny_model()
    searchable = arch_cost(ARCH, input_size=SIZE, num_classes=10, in_channels=1, width=WIDTH).searchable
    net = IndicatorNet(model, searchable, [2, 3, 4], [2, 3, 4])
    model.train()
    assert set(net.bns) == set(searchable)  # every searchable conv here is followed by its BatchNorm
    assert all(isinstance(bn, SwitchableBatchNorm) and len(bn.bns) == 3 for bn in net.bns.values())
    x, y = next(iter(make_loader(_digits(), batch_size=32, shuffle=True, seed=0)))
    with torch.no_grad():  # initialise the activation steps of every rank from data
        for r in range(3):
            net.set_rank(r)
            model(x)
    before = net.indicators()
    opt = torch.optim.SGD(default_param_groups(model, 2.5e-5), lr=0.01, momentum=0.9, nesterov=True)
    for step in range(3):
        losses = joint_step(net, opt, x, y, lambda a, b: F.cross_entropy(model(a), b, label_smoothing=0.1),
                            mixed_policies=1, grad_clip=1.0, seed=[0, step])
        assert len(losses) == 4  # three uniform passes and one mixed policy
    after = net.indicators()
    for name in searchable:
        for side in ("w", "a"):
            for b in (2, 3, 4):
                assert after[name][side][b] != before[name][side][b], (name, side, b)  # trained
            values = [after[name][side][b] for b in (2, 3, 4)]
            assert len(set(values)) == 3, (name, side, values)  # one step per bit, and they differ
        # LSQ's step is larger at fewer bits from its initialisation on; a few small steps keep that order
        assert after[name]["w"][2] > after[name]["w"][3] > after[name]["w"][4]


def test_weight_steps_start_at_the_codes_three_sigma_init():
    model = _tiny_model()
    w = model.layer1[0].conv1.weight.detach().clone()
    net = IndicatorNet(model, ["layer1.0.conv1"], [2, 3, 4], [2, 3, 4])
    spread = max(abs(w.mean() - 3 * w.std()), abs(w.mean() + 3 * w.std()))
    for b in (2, 3, 4):
        assert net.indicators()["layer1.0.conv1"]["w"][b] == pytest.approx(float(spread) / 2 ** (b - 1), rel=1e-6)


# ---------------------------------------------------------------------------------- importance → ILP
# 3 layers, W = A = {2, 3}, α = 2: cost(w, a) = s_a(a) + 2·s_w(w) (hand table in the comments)
TOY = {
    "l0": {"w": {2: 0.10, 3: 0.05}, "a": {2: 0.50, 3: 0.30}},  # (2,2) .70 (2,3) .50 (3,2) .60 (3,3) .40
    "l1": {"w": {2: 0.04, 3: 0.03}, "a": {2: 0.20, 3: 0.15}},  # (2,2) .28 (2,3) .23 (3,2) .26 (3,3) .21
    "l2": {"w": {2: 0.08, 3: 0.02}, "a": {2: 0.60, 3: 0.20}},  # (2,2) .76 (2,3) .36 (3,2) .64 (3,3) .24
}
TOY_MACS = {"l0": 10**9, "l1": 10**9, "l2": 2 * 10**9}  # BitOPs (G) of a pair: w·a, w·a, 2·w·a
BUDGET = 25.0  # = Σ MACs · 2.5 · 2.5; the window [22.5, 25]


def test_ilp_picks_the_hand_computed_optimum():
    # By hand: l2 at (3,3) needs 18 G, leaving 7 < 8 for the other two: out. l2 at (2,3) (12 G, .36) leaves
    # [10.5, 13] G: (3,3)+(2,2) = .40+.28 = .68 (13 G), best; (2,3)+(2,3) = .73; (2,2)+(3,3) = .91.
    # l2 at (2,2) (8 G, .76) leaves [14.5, 17]: at best .40+.23 = .63 → 1.39. Optimum 1.04 at 25 G.
    best = {"l0": (3, 3), "l1": (2, 2), "l2": (2, 3)}
    assert limpq_policy(TOY, TOY_MACS, [2, 3], [2, 3], BUDGET, floor=0.9) == best
    costs, pairs, _ = limpq_costs(TOY, [2, 3], [2, 3], alpha=2.0)
    assert pairs == [(2, 2), (2, 3), (3, 2), (3, 3)]
    assert costs[0].tolist() == pytest.approx([0.70, 0.50, 0.60, 0.40])
    # the exhaustive check of the same hand table
    feasible = []
    for combo in itertools.product(range(4), repeat=3):
        bitops = sum(TOY_MACS[n] * pairs[k][0] * pairs[k][1] / 1e9 for n, k in zip(TOY, combo))
        if 22.5 <= bitops <= 25:
            feasible.append((sum(costs[i, k] for i, k in enumerate(combo)), combo))
    total, combo = min(feasible)
    assert total == pytest.approx(1.04) and {n: pairs[k] for n, k in zip(TOY, combo)} == best
    # α weighs the weight indicators: with α = 0 only the activation steps count
    assert limpq_policy(TOY, TOY_MACS, [2, 3], [2, 3], BUDGET, floor=0.9, alpha=0.0)["l2"][1] == 3


def test_wired_indicators_are_avoided_while_the_budget_allows():
    assert wired_points({2: 0.02, 3: 0.03, 4: 0.01}) == {2}  # s(2) < s(3) breaks the order; s(3) > s(4) does not
    assert wired_points({2: 0.5, 3: 0.3, 4: 0.2}) == set()
    wired = {**TOY, "l1": {"w": {2: 0.02, 3: 0.03}, "a": TOY["l1"]["a"]}}  # l1's 2-bit weight step is wired
    # By hand, l1 may not use w = 2: l2 (2,3) 12 G + l0 (2,3) .50 + l1 (3,2) .26 = 1.12 (24 G) is the best left
    # ((3,3) for l0 would need l1 at 4 G, i.e. w = 2).
    assert limpq_policy(wired, TOY_MACS, [2, 3], [2, 3], BUDGET, floor=0.9) == {"l0": (2, 3), "l1": (3, 2),
                                                                              "l2": (2, 3)}
    _, _, found = limpq_costs(wired, [2, 3], [2, 3])
    assert found["l1"] == {"w": [2], "a": []} and found["l0"] == {"w": [], "a": []}
    # without the erasure the raw indicator (0.02·2 + 0.20 = .24 for (2,2)) is used as it is
    raw = limpq_policy(wired, TOY_MACS, [2, 3], [2, 3], BUDGET, floor=0.9, erase_wired=False)
    assert raw["l1"][0] == 2
    # a budget that only the wired choice meets still gets a policy (a penalty, not a prohibition)
    assert limpq_policy(wired, TOY_MACS, [2, 3], [2, 3], 16.0, floor=0.0)["l1"] == (2, 2)


# ---------------------------------------------------------------------------------- the search
@pytest.fixture(scope="module")
def target_fp(tmp_path_factory):
    """A target FP checkpoint of the tiny geometry (random weights: what is tested here needs no accuracy)."""
    path = tmp_path_factory.mktemp("limpq") / "fp.pt"
    meta = {"arch": ARCH, "dataset": "fashion-mnist", "num_classes": 10, "in_channels": 1, "input_size": SIZE,
            "width": WIDTH, "macs_processed": 1, "wall_s": 1.0}
    torch_save({"state_dict": _tiny_model(1).state_dict(), "meta": meta}, path)
    return path


def _ctx(teacher, budget: str = "w2.5a2.5", count: int = 96) -> SearchContext:
    return tiny_context(teacher, proxy_train=_digits(count), arch=ARCH, width=WIDTH, input_size=SIZE, budget=budget)


def test_search_ends_in_the_window_with_a_settle_point_and_metered_passes(target_fp):
    ctx = _ctx(target_fp)
    out = Limpq().search(ctx, LimpqHparams(epochs=1, batch_size=32))  # 3 steps
    used = ctx.bitops_g(out.layers) / ctx.budget_bitops_g
    assert 0.9 - 1e-9 <= used <= 1 + 1e-9
    assert all(w in (2, 3, 4) and a in (2, 3, 4) for w, a in out.layers.values())
    assert ctx.meter.steps == 4 and out.epochs == pytest.approx(1.0)  # the calibration forward and 3 steps
    assert 0 < out.settled_step <= 3 and 0 < out.settled_macs <= ctx.meter.macs_processed
    assert out.extra["passes_per_step"] == 4 and out.extra["rank_pairs"] == [[4, 4], [3, 3], [2, 2]]
    history = out.extra["history"]
    assert [h["step"] for h in history] == [1, 2, 3]  # three steps per epoch: a snapshot after each
    assert history[-1]["policy"] == ",".join(f"{w}{a}" for w, a in out.layers.values())
    # the policy is the ILP's on the recorded indicators
    ind = {n: {s: {int(b): v for b, v in d.items()} for s, d in i.items()} for n, i in out.extra["indicators"].items()}
    assert limpq_policy(ind, ctx.target_macs, [2, 3, 4], [2, 3, 4], ctx.budget_bitops_g, floor=0.9) == out.layers
    # the untrained indicators' policy is recorded, and the activation steps start at LSQ's data init
    assert set(out.extra["policy_at_init"]) == set(ctx.searchable)
    assert 0 <= out.extra["layers_changed_by_training"] <= len(ctx.searchable)
    first = out.extra["initial_indicators"]["layer1.0.conv1"]["a"]
    assert first["2"] > first["3"] > first["4"] > 0  # 2·mean|x|/√Q_P: Q_P = 3, 7, 15
    assert first["2"] / first["4"] == pytest.approx(math.sqrt(15 / 3), rel=1e-5)
    # every pass is metered: one mixed policy adds a fourth pass of the same MACs to the three uniform ones
    base = _ctx(target_fp)
    Limpq().search(base, LimpqHparams(epochs=0.3, batch_size=32, mixed_policies=0))
    per_step = ctx.meter._macs_per_sample["step"] / base.meter._macs_per_sample["step"]
    assert per_step == pytest.approx(4 / 3, rel=1e-6)
    # the calibration is three forwards, about a third of three forward + backward passes
    assert ctx.meter._macs_per_sample["calibrate"] < base.meter._macs_per_sample["step"] / 2


def test_a_killed_search_resumes_to_the_same_result(target_fp, tmp_path, monkeypatch):
    import baselines.limpq as limpq

    hp = LimpqHparams(epochs=2, batch_size=32)  # 2 steps per epoch (64 images), a checkpoint after the first
    whole = Limpq().search(_ctx(target_fp, count=64), hp)

    def ctx_with_state():
        ctx = _ctx(target_fp, count=64)
        ctx.work_dir, ctx.state_key = tmp_path, "k" * 64
        return ctx

    real, calls = limpq.joint_step, []

    def dies_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first step of the second epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(limpq, "joint_step", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        Limpq().search(ctx_with_state(), hp)
    assert len(list(tmp_path.glob("search-*.ckpt"))) == 1
    monkeypatch.setattr(limpq, "joint_step", real)
    ctx = ctx_with_state()
    resumed = Limpq().search(ctx, hp)
    assert resumed.layers == whole.layers and resumed.extra["indicators"] == whole.extra["indicators"]
    assert resumed.extra["history"] == whole.extra["history"] and resumed.settled_step == whole.settled_step
    assert resumed.extra["policy_at_init"] == whole.extra["policy_at_init"]
    assert ctx.meter.steps == 5 and not list(tmp_path.glob("search-*.ckpt"))  # calibration + 4 steps; cleared
