"""DQ (baselines/dq.py): the derived bit-width, the quantizer and its straight-through gradients, the BitOPs
penalty, the projection and gradient clipping of the reference code, and the budget-matched final policy.

Every expected number below is computed by hand in the comments (the paper's case U3:
Q(x) = sign(x)·d·⌊|x|/d + ½⌋ for |x| ≤ q_max, sign(x)·q_max above; b = ⌈log2(q_max/d + 1)⌉ + 1 signed,
⌈log2(q_max/d + 1)⌉ unsigned).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from baselines.dq import (
    DQ,
    DQConv2d,
    DQHparams,
    DQQuantizer,
    budget_penalty,
    bitops_ratio,
    candidate_costs,
    dq_layers,
    dq_policy,
    dq_quantize,
    integer_bits,
    max_level,
    model_bitops_ratio,
    relaxed_bits,
    rounded_policy,
    to_dq_model,
)
from mpqbench.cost import CostMeter, arch_cost, bitops_g
from mpqbench.data.datasets import TensorImageDataset
from mpqbench.models import get_model
from mpqbench.search import SearchContext
from mpqbench.utils import torch_save
from searchkit import tiny_context

D64 = torch.float64


# ---------------------------------------------------------------------------------------------- the bit-width
@pytest.mark.parametrize("d,q,signed,floor,expected", [
    (1.0, 1.0, True, 1, 2),     # log2(2) = 1 → 1 + 1: levels {−1, 0, 1}
    (1.0, 3.0, True, 1, 3),     # log2(4) = 2 → 3 = ⌈2⌉ + 1 (q_max = R(3)·d = 3d exactly)
    (1.0, 3.2, True, 1, 4),     # log2(4.2) = 2.07 → 3 + 1
    (0.5, 3.5, True, 1, 4),     # q/d = 7 = R(4): log2(8) = 3 → 4
    (0.1, 0.7, True, 1, 4),     # the same in floats that do not divide exactly (0.7/0.1 = 6.999…): still 4
    (1.0, 0.5, True, 1, 2),     # log2(1.5) = 0.58 → 1 + 1
    (1.0, 7.5, True, 1, 5),     # log2(8.5) = 3.09 → 4 + 1
    (1.0, 1.0, False, 1, 1),    # unsigned, no sign bit: log2(2) = 1
    (1.0, 2.0, False, 1, 2),    # log2(3) = 1.58 → 2
    (1.0, 3.0, False, 1, 2),    # log2(4) = 2 (q_max = R(2)·d = 3d)
    (1.0, 15.0, False, 1, 4),   # log2(16) = 4
    (1.0, 15.5, False, 1, 5),   # log2(16.5) = 4.04 → 5
    (0.25, 0.75, False, 1, 2),  # q/d = 3 → 2
    (1.0, 1.0, False, 2, 2),    # 1 bit lifted to the smallest candidate
    (1.0, 3.0, True, 4, 4),     # 3 bits lifted to 4
])
def test_bit_formula_hand_cases(d, q, signed, floor, expected):
    assert integer_bits(d, q, signed, floor) == expected
    b = relaxed_bits(torch.tensor(d, dtype=D64), torch.tensor(q, dtype=D64), signed, floor)
    assert b.item() == expected  # the penalty's forward value is the integer bit-width
    qz = DQQuantizer(signed=signed, init_bits=4)
    with torch.no_grad():
        qz.d.fill_(d)
        qz.q.fill_(q)
    qz.initialized.fill_(True)
    assert qz.bits(floor) == expected


def test_bit_formula_is_the_least_b_whose_range_covers_q_max():
    # b = min{b : q_max ≤ R(b)·d}, R(b) = 2^(b−1) − 1 signed, 2^b − 1 unsigned (property over random d, q)
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        d = float(torch.rand((), generator=g)) * 2 + 1e-3
        q = d * float(torch.rand((), generator=g)) * 300 + d
        for signed in (True, False):
            b = integer_bits(d, q, signed)
            assert q <= max_level(b, signed) * d * (1 + 1e-4)
            assert q > max_level(b - 1, signed) * d * (1 - 1e-4)


def test_relaxed_bits_gradient_is_the_continuous_formulas():
    # b̃ = log2(q/d + 1) + 1; at d = 1, q = 2.5: value ⌈2.807⌉ = 3,
    # ∂b/∂q = 1/((q + d) ln 2) = 1/(3.5 ln 2) = 0.41219, ∂b/∂d = −q/(d (q + d) ln 2) = −2.5/(3.5 ln 2) = −1.03048
    d = torch.tensor(1.0, dtype=D64, requires_grad=True)
    q = torch.tensor(2.5, dtype=D64, requires_grad=True)
    b = relaxed_bits(d, q, True, 2)
    b.backward()
    assert b.item() == 3
    assert q.grad.item() == pytest.approx(1 / (3.5 * math.log(2)), rel=1e-12)
    assert d.grad.item() == pytest.approx(-2.5 / (3.5 * math.log(2)), rel=1e-12)
    # at the lower limit (unsigned q/d = 2: ⌈1.58⌉ = 2 = the floor) the penalty has nothing to lower: gradient 0
    d2 = torch.tensor(1.0, dtype=D64, requires_grad=True)
    q2 = torch.tensor(2.0, dtype=D64, requires_grad=True)
    b2 = relaxed_bits(d2, q2, False, 2)
    b2.backward()
    assert b2.item() == 2 and d2.grad.item() == 0 and q2.grad.item() == 0


# ---------------------------------------------------------------------------------------------- the quantizer
def test_signed_quantizer_forward_by_hand():
    # d = 0.5, q_max = 1.2: inside, d·⌊|x|/d + ½⌋ (halves away from zero); outside, ±q_max
    x = torch.tensor([-2.0, -1.2, -0.8, -0.2, 0.0, 0.24, 0.25, 0.3, 0.74, 0.76, 1.1, 1.2, 1.3], dtype=D64)
    want = [-1.2, -1.0, -1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.2]
    # e.g. −1.2 is inside (|x| = q_max): ⌊2.4 + ½⌋ = 2 → −1.0; 0.25: ⌊0.5 + ½⌋ = 1 → 0.5; 0.74: ⌊1.98⌋ = 1 → 0.5
    y = dq_quantize(x, torch.tensor(0.5, dtype=D64), torch.tensor(1.2, dtype=D64), True)
    assert y.tolist() == want


def test_unsigned_quantizer_forward_by_hand():
    x = torch.tensor([-0.3, 0.0, 0.2, 0.3, 1.0, 1.3], dtype=D64)
    y = dq_quantize(x, torch.tensor(0.5, dtype=D64), torch.tensor(1.2, dtype=D64), False)
    assert y.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.2]  # below 0 → 0, above q_max → q_max


def test_signed_ste_gradients_by_hand():
    # d = 0.5, q_max = 1.2, x = (−2, −0.8, 0.3, 1.1, 1.3), upstream g = (1, 2, 3, 4, 5); Q(x) = (−1.2, −1, 0.5, 1, 1.2)
    # ∂L/∂x = g inside, 0 outside = (0, 2, 3, 4, 0)
    # ∂L/∂d = Σ_inside g·(Q − x)/d = 2·(−0.2)/0.5 + 3·(0.2)/0.5 + 4·(−0.1)/0.5 = −0.8 + 1.2 − 0.8 = −0.4
    # ∂L/∂q = Σ_outside g·sign(x) = −1 + 5 = 4
    x = torch.tensor([-2.0, -0.8, 0.3, 1.1, 1.3], dtype=D64, requires_grad=True)
    d = torch.tensor(0.5, dtype=D64, requires_grad=True)
    q = torch.tensor(1.2, dtype=D64, requires_grad=True)
    y = dq_quantize(x, d, q, True)
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=D64)).sum().backward()
    assert y.tolist() == pytest.approx([-1.2, -1.0, 0.5, 1.0, 1.2], abs=1e-15)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]
    assert d.grad.item() == pytest.approx(-0.4, abs=1e-12)
    assert q.grad.item() == pytest.approx(4.0, abs=1e-12)


def test_unsigned_ste_gradients_by_hand():
    # d = 0.5, q_max = 1.2, x = (−0.5, 0.3, 1.3, 2.0), g = (1, 1, 1, 2): Q = (0, 0.5, 1.2, 1.2)
    # ∂L/∂x = (0, 1, 0, 0) (below zero and above q_max: 0); ∂L/∂d = 1·(0.5 − 0.3)/0.5 = 0.4; ∂L/∂q = 1 + 2 = 3
    x = torch.tensor([-0.5, 0.3, 1.3, 2.0], dtype=D64, requires_grad=True)
    d = torch.tensor(0.5, dtype=D64, requires_grad=True)
    q = torch.tensor(1.2, dtype=D64, requires_grad=True)
    y = dq_quantize(x, d, q, False)
    (y * torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=D64)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert d.grad.item() == pytest.approx(0.4, abs=1e-12)
    assert q.grad.item() == pytest.approx(3.0, abs=1e-12)


def test_quantizer_initialisation_rules():
    w = torch.tensor([0.1, -0.7, 0.35, 0.0])
    qz = DQQuantizer(signed=True, init_bits=4)
    qz.initialize(w, "max")  # q_max = max|W| = 0.7, d = q_max / R(4) = 0.7 / 7
    assert qz.q.item() == pytest.approx(0.7) and qz.d.item() == pytest.approx(0.1) and qz.bits() == 4
    a = DQQuantizer(signed=None, init_bits=3)
    a(torch.tensor([0.0, 1.0, 2.0, 5.0]))  # first batch: no negative value → unsigned; d = 2·mean/√R(3) = 4/√7
    assert not a.is_signed
    assert a.d.item() == pytest.approx(4 / math.sqrt(7), rel=1e-6)
    assert a.q.item() == pytest.approx(7 * 4 / math.sqrt(7), rel=1e-6) and a.bits() == 3
    s = DQQuantizer(signed=None, init_bits=3)
    s(torch.tensor([-1.0, 1.0]))
    assert s.is_signed


def test_projection_keeps_bits_in_the_candidate_range_and_grads_are_clipped():
    qz = DQQuantizer(signed=True, init_bits=4)
    qz.initialize(torch.tensor([1.0, -1.0]), "max")
    with torch.no_grad():
        qz.d.fill_(0.1)
        qz.q.fill_(5.0)  # q/d = 50: 7 bits
    qz.project(2, 4)
    assert qz.q.item() == pytest.approx(0.7) and qz.bits() == 4  # q_max = R(4)·d
    with torch.no_grad():
        qz.q.fill_(0.01)  # below d
    qz.project(2, 4)
    assert qz.q.item() == pytest.approx(0.1) and qz.bits(2) == 2  # q_max = max(R(1), 1)·d = d
    u = DQQuantizer(signed=False, init_bits=4)
    u.initialize(torch.tensor([0.0, 1.0]), "mean")
    with torch.no_grad():
        u.d.fill_(-1.0)  # a step past zero is set back to the smallest step
        u.q.fill_(1.0)
    u.project(2, 4)
    assert u.d.item() > 0 and u.bits(2) <= 4
    # the reference code's clip_quant_grads: both gradients to [−d, d]
    qz.d.grad, qz.q.grad = torch.tensor(5.0), torch.tensor(-5.0)
    qz.clip_grads()
    assert (qz.d.grad.item(), qz.q.grad.item()) == pytest.approx((0.1, -0.1))


# ---------------------------------------------------------------------------------------------- the penalty
def test_penalty_zero_inside_the_budget_and_positive_above():
    macs = {"a": 100, "b": 300}
    bw_a = torch.tensor(3.0, dtype=D64, requires_grad=True)
    two = torch.tensor(2.0, dtype=D64)
    bits = {"a": (bw_a, torch.tensor(4.0, dtype=D64)), "b": (two, two)}
    # BitOPs = 100·3·4 + 300·2·2 = 2400
    for budget, want in ((2400e-9, 0.0), (3000e-9, 0.0)):  # at and below the budget: no penalty, no gradient
        bw_a.grad = None
        pen = budget_penalty(bitops_ratio(bits, macs, budget), 491.4)
        pen.backward()
        assert pen.item() == want and bw_a.grad.item() == 0.0
    bw_a.grad = None
    ratio = bitops_ratio(bits, macs, 2000e-9)  # 1.2
    pen = budget_penalty(ratio, 491.4)
    pen.backward()
    assert ratio.item() == pytest.approx(1.2)
    assert pen.item() == pytest.approx(491.4 * 0.2**2)  # λ (g − 1)² = 19.656
    assert bw_a.grad.item() == pytest.approx(2 * 491.4 * 0.2 * (100 * 4 / 2000))  # 2λ(g − 1)·∂g/∂b = 39.312


def _dq_resnet(seed: int = 0):
    torch.manual_seed(seed)
    model = get_model("resnet20", num_classes=10, in_channels=1, input_size=8, width=0.25)
    cost = arch_cost("resnet20", input_size=8, num_classes=10, in_channels=1, width=0.25)
    to_dq_model(model, list(cost.searchable), 4, 4).train()
    with torch.no_grad():
        model(torch.randn(8, 1, 8, 8))
    return model, cost


def test_dq_model_penalty_pushes_every_quantizer_toward_fewer_bits_only_above_budget():
    model, cost = _dq_resnet()
    layers = dq_layers(model)
    assert list(layers) == list(cost.searchable) and all(isinstance(m, (DQConv2d,)) for m in layers.values())
    assert all(not m.act_quant.is_signed for m in layers.values())  # post-ReLU inputs
    # every layer at W4A4: the ratio to a w2a2 budget is 4, so the penalty is λ·9 and
    start = bitops_g(cost.macs, {n: (4, 4) for n in layers})
    ratio = model_bitops_ratio(model, cost.macs, start / 4, 2, 2)
    assert ratio.item() == pytest.approx(4.0)
    budget_penalty(ratio, 1.0).backward()
    for m in layers.values():  # gradient descent lowers q_max and raises d: fewer bits
        for qz in m.quantizers():
            assert qz.q.grad.item() > 0 and qz.d.grad.item() < 0
    model.zero_grad(set_to_none=True)
    ratio = model_bitops_ratio(model, cost.macs, start, 2, 2)  # exactly at the budget
    budget_penalty(ratio, 1.0).backward()
    assert all(qz.q.grad.item() == 0 and qz.d.grad.item() == 0 for m in layers.values() for qz in m.quantizers())


# ---------------------------------------------------------------------------------------------- the final policy
def _bits(w, a):
    return {"w": w, "a": a}


def test_candidate_costs_by_hand():
    # trained b = 3 with b̃ = 2.2: cost(2) = 1 + 0.1·0.04 = 1.004, cost(3) = 0.1·0.64 = 0.064, cost(4) = 1 + 0.1·3.24
    c = candidate_costs(3, 2.2, [2, 3, 4])
    assert c == pytest.approx({2: 1.004, 3: 0.064, 4: 1.324})
    assert rounded_policy({"x": _bits((3, 2.2), (2, 1.5))}, [2, 4], [2, 3, 4]) == {"x": (2, 2)}  # 3 ∉ W: b̃ decides


def test_policy_keeps_the_trained_bits_inside_the_window():
    macs = {"a": 100, "b": 300}
    bits = {"a": _bits((3, 2.5), (4, 3.5)), "b": _bits((2, 2.0), (2, 1.4))}
    # trained BitOPs = 100·12 + 300·4 = 2400; budget 2500, window [2250, 2500]
    assert dq_policy(bits, macs, 2500e-9, [2, 3, 4], [2, 3, 4], 0.9) == {"a": (3, 4), "b": (2, 2)}


def test_policy_over_budget_lowers_the_side_whose_continuous_bit_is_lowest():
    # two equal layers trained at W4A4 (3,200 BitOPs); budget 2,800 (window [2,520, 2,800]): one side of one layer
    # drops to 3. Lowering a side costs 1 + 0.1·[(3 − b̃)² − (4 − b̃)²] = 1 + 0.1·(2b̃ − 7): 0.92 for b̃ = 3.1,
    # 1.08 for 3.9, 1.1 for 4.0 — layer a's weight goes.
    macs = {"a": 100, "b": 100}
    bits = {"a": _bits((4, 3.1), (4, 4.0)), "b": _bits((4, 3.9), (4, 4.0))}
    assert dq_policy(bits, macs, 2800e-9, [2, 3, 4], [2, 3, 4], 0.9) == {"a": (3, 4), "b": (4, 4)}


def test_policy_under_the_floor_raises_the_side_whose_continuous_bit_is_highest():
    # trained W2A2 twice = 800 BitOPs; budget 1,000 → floor 900: one side goes to 3 (1,000). Raising costs
    # 1 + 0.1·[(3 − b̃)² − (2 − b̃)²] = 1 + 0.1·(5 − 2b̃): weights (b̃ 1.5) 1.2, a's activation (1.2) 1.26,
    # b's activation (1.9) 1.12 — b's activation goes up.
    macs = {"a": 100, "b": 100}
    bits = {"a": _bits((2, 1.5), (2, 1.2)), "b": _bits((2, 1.5), (2, 1.9))}
    assert dq_policy(bits, macs, 1000e-9, [2, 3, 4], [2, 3, 4], 0.9) == {"a": (2, 2), "b": (2, 3)}


@pytest.mark.parametrize("scale", [1.0, 2.5 * 2.5 / 9, 0.5])
def test_policy_meets_the_budget_window_on_resnet20(scale):
    cost = arch_cost("resnet20", input_size=28, num_classes=10, in_channels=1, width=1.0)
    g = torch.Generator().manual_seed(3)
    bits = {}
    for n in cost.searchable:
        bw, ba = torch.randint(2, 5, (2,), generator=g).tolist()
        bits[n] = _bits((bw, bw - float(torch.rand((), generator=g))), (ba, ba - float(torch.rand((), generator=g))))
    budget = bitops_g(cost.macs, {n: (3, 3) for n in cost.searchable}) * scale
    layers = dq_policy(bits, cost.macs, budget, [2, 3, 4], [2, 3, 4], 0.9)
    used = bitops_g(cost.macs, layers) / budget
    assert 0.9 - 1e-9 <= used <= 1 + 1e-9


# ---------------------------------------------------------------------------------------------- a short search
def _ctx(tmp_path: Path, budget_bits: float, work_dir: Path | None = None) -> SearchContext:
    size, classes = 8, 10
    torch.manual_seed(1)
    teacher = get_model("resnet20", num_classes=classes, in_channels=1, input_size=size, width=0.25)
    meta = {"arch": "resnet20", "dataset": "digits", "num_classes": classes, "in_channels": 1, "input_size": size,
            "width": 0.25, "epochs": 0, "seed": 0, "top1": 0.0, "top5": 0.0, "wall_s": 1.0, "macs_processed": 1}
    torch_save({"state_dict": teacher.state_dict(), "meta": meta}, tmp_path / "fp.pt")
    g = torch.Generator().manual_seed(2)
    data = TensorImageDataset(torch.rand(64, 1, size, size, generator=g), torch.randint(0, classes, (64,), generator=g),
                              mean=[0.5], std=[0.25], classes=[str(i) for i in range(classes)], crop_pad_px=0,
                              flip=False)
    cost = arch_cost("resnet20", input_size=size, num_classes=classes, in_channels=1, width=0.25)
    budget = bitops_g(cost.macs, {n: (budget_bits, budget_bits) for n in cost.searchable})
    return tiny_context(tmp_path / "fp.pt", proxy_train=data, num_classes=classes, input_size=size,
                        budget=f"w{budget_bits}a{budget_bits}", budget_g=budget, meter=CostMeter("cpu"),
                        work_dir=work_dir, state_key="d" * 64)


def test_short_search_lowers_the_trained_bits_and_ends_in_the_window(tmp_path):
    torch.set_num_threads(1)
    ctx = _ctx(tmp_path, 2.5)
    hp = DQHparams(epochs=2, batch_size=16, lr_q=0.1)  # 8 steps; a larger lr for d and q_max so bits move fast
    out = DQ().search(ctx, hp)
    history = out.extra["history"]
    assert [h["step"] for h in history] == list(range(1, 9))
    assert history[0]["bitops_ratio"] == pytest.approx(16 / 6.25)  # W4A4 everywhere at the start
    assert history[-1]["bitops_ratio"] < 16 / 6.25  # the penalty lowered the trained bits
    assert history[0]["penalty"] > 0
    used = ctx.bitops_g(out.layers) / ctx.budget_bitops_g
    assert 0.9 - 1e-9 <= used <= 1 + 1e-9
    assert ctx.meter.steps == 8 + 1  # every training step and the calibration forward are metered
    assert ctx.meter.macs_processed > 0 and out.extraction == "ilp"
    assert 0 < out.settled_step <= 8 and out.settled_macs <= ctx.meter.macs_processed
    assert out.extra["raw_policy"] == {n: list(b) for n, b in
                                       rounded_policy({n: {s: (v[s]["bits"], v[s]["bits_continuous"]) for s in "wa"}
                                                       for n, v in out.extra["learned"].items()},
                                                      [2, 3, 4], [2, 3, 4]).items()}


def test_killed_search_resumes_to_the_same_result(tmp_path, monkeypatch):
    import mpqbench.search as search_mod
    from killswitch import killed_after_first_save

    torch.set_num_threads(1)
    hp = DQHparams(epochs=2, batch_size=32, lr_q=0.1)  # 2 epochs × 2 steps; a checkpoint after epoch 1
    ref = DQ().search(_ctx(tmp_path, 2.5), hp)
    with killed_after_first_save(monkeypatch, search_mod):
        DQ().search(_ctx(tmp_path, 2.5, tmp_path / "run"), hp)
    ctx = _ctx(tmp_path, 2.5, tmp_path / "run")
    assert ctx.state_path().exists()
    torch.manual_seed(4321)  # the resumed search must not depend on the global RNG at its start
    resumed = DQ().search(ctx, hp)
    assert resumed.layers == ref.layers
    assert resumed.extra["learned"] == ref.extra["learned"]
    assert [(h["step"], h["policy"]) for h in resumed.extra["history"]] == \
        [(h["step"], h["policy"]) for h in ref.extra["history"]]
    assert ctx.meter.steps == 4 + 1  # four training steps and the calibration, counted across the kill
    assert not ctx.state_path().exists()
