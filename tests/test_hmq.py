"""HMQ (baselines/hmq.py): the block, its schedule and loss, and the search's policy.

- the temperature schedule at given steps equals max(τ_min, τ0·exp(−r·round(i·N_τ/S))) by hand, with and
  without the code's restart cycle;
- thresholds are powers of two: weights' largest is 2^(⌈log2 max|W|⌉ + 1), activations' 2^⌈log2 m̂⌉ with m̂ the
  IIR estimate (hand values), and the set brackets the tensor's max;
- with a one-hot sample the block's forward equals the plain b-bit uniform quantizer of that (b, t) on hand
  tensors (signed and unsigned), the soft sample's parameters are the sample-weighted Δ and t, a hard
  (straight-through) Gumbel sample is one-hot in the forward and still sends gradient to the logits;
- the expected BitOPs of hand distributions, and the constraint term: zero inside the budget, the hand value
  above it;
- a search on synthetic data ends inside the budget window, records its cost, the calibration and the settle
  point, reads out the published argmax with ``extraction="argmax"``, and resumes a killed run exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.hmq import (
    Hmq,
    HmqHparams,
    HmqQuantizer,
    build_hmq,
    calibrate,
    constraint_loss,
    expected_bitops_ratio,
    iir_max,
    temperature,
    top_exponent,
    uniform_quantize,
)
from mpqbench.cost import CostMeter
from searchkit import tiny_context


# ---------------------------------------------------------------------------------------------- temperature
def test_temperature_schedule_by_hand():
    # S = 100 steps per epoch, N_τ = 25 decrements per epoch: k = round(i / 4)
    tau = lambda i, **kw: temperature(i, 100, **kw)  # noqa: E731
    assert tau(0) == 1.0
    assert tau(1) == 1.0  # round(0.25) = 0
    assert tau(3) == pytest.approx(math.exp(-0.01))  # round(0.75) = 1
    assert tau(4) == pytest.approx(0.990049833749168)
    assert tau(100) == pytest.approx(math.exp(-0.25))  # one epoch: 25 decrements
    assert tau(276) == pytest.approx(math.exp(-0.69))  # 0.5016 > 0.5
    assert tau(280) == 0.5 and tau(10_000) == 0.5  # exp(-0.70) = 0.4966 is floored at τ_min
    assert tau(100, tau0=2.0, tau_min=0.1, temp_step=0.1) == pytest.approx(2 * math.exp(-2.5))
    # the code's restart cycle: every 5 epochs τ is back to τ0
    assert tau(500, cycle_epochs=5) == 1.0 and tau(604, cycle_epochs=5) == pytest.approx(math.exp(-0.26))
    assert tau(604) == 0.5


# ---------------------------------------------------------------------------------------------- thresholds
def test_thresholds_are_powers_of_two_bracketing_the_max():
    assert top_exponent(0.7, 1) == 1 and top_exponent(1.0, 1) == 1 and top_exponent(1.01, 1) == 2
    assert top_exponent(2.79) == 2 and top_exponent(4.0) == 2 and top_exponent(0.0) == -24
    # the activation estimate: m ← m + 0.9 (max − m) from 0 over batch maxima 1 and 3: 0.9, then 2.79
    assert iir_max([1.0]) == pytest.approx(0.9) and iir_max([1.0, 3.0]) == pytest.approx(2.79)
    for max_abs, extra in ((0.7, 1), (0.013, 1), (2.79, 0), (4.0, 0), (37.5, 0)):
        q = HmqQuantizer([2, 3, 4], 8, signed=True, sample_dim=1)
        q.set_top(top_exponent(max_abs, extra))
        t = q.thresholds()
        assert torch.equal(torch.log2(t), torch.log2(t).round())  # powers of two
        assert torch.equal(t, t[0] * 0.5 ** torch.arange(8.0))  # descending by halves
        assert t[0] >= max_abs > t[-1] and t[0] < 2 ** (extra + 1) * max_abs  # brackets, and the top is near it


def test_calibration_iir_and_sign_through_a_model():
    model = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    batches = [torch.tensor([[0.5, -1.0]]), torch.tensor([[3.0, 0.25]])]
    meter = CostMeter("cpu")
    stats = calibrate(model, ["1"], batches, alpha=0.9, meter=meter)
    assert stats["1"][0] == pytest.approx(2.79) and stats["1"][1] is True
    assert meter.steps == 2 and meter.macs_processed == 2 * 4  # two forwards of a 2×2 linear layer
    pos = calibrate(model, ["1"], [b.abs() for b in batches], alpha=0.5)
    assert pos["1"] == (pytest.approx(1.75), False)  # α = ½: 0.5, then 0.5 + ½(3 − 0.5)


# ---------------------------------------------------------------------------------------------- the block
def _block(bits, signed, top, n_t=3, sample_dim=0):
    q = HmqQuantizer(bits, n_t, signed=signed, sample_dim=sample_dim)
    q.set_top(top)
    return q


def _one_hot(q, b, exponent):
    k = q.bits.index(b) * q.n_thresholds + (int(q.top.item()) - exponent)
    y = torch.zeros(1, q.logits.numel())
    y[0, k] = 1.0
    return y


def test_one_hot_sample_is_the_plain_uniform_quantizer_by_hand():
    # signed, b = 2, t = 1: Δ = 1/2, integer levels −2..1 → values {−1, −½, 0, ½}
    q = _block([2, 3, 4], True, top=1)
    x = torch.tensor([-1.3, -0.26, 0.2, 0.3, 0.74, 2.0])
    out = q.quantize_with(x, _one_hot(q, 2, 0))
    assert torch.equal(out, torch.tensor([-1.0, -0.5, 0.0, 0.5, 0.5, 0.5]))
    # unsigned, b = 3, t = 2: Δ = 2/8, levels 0..7 → 0 … 1.75
    q = _block([2, 3, 4], False, top=1)
    x = torch.tensor([-0.3, 0.1, 0.3, 1.0, 1.9, 5.0])
    out = q.quantize_with(x, _one_hot(q, 3, 1))
    assert torch.equal(out, torch.tensor([0.0, 0.0, 0.25, 1.0, 1.75, 1.75]))
    # the same as uniform_quantize with (Δ, t) of that pair, on a random tensor, for every pair
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2
    for signed in (True, False):
        q = _block([2, 3, 4], signed, top=2)
        for b in q.bits:
            for e in (2, 1, 0):
                t = torch.tensor(2.0 ** e)
                ref = uniform_quantize(x, t / 2 ** (b - int(signed)), t, torch.tensor(float(signed)))
                assert torch.equal(q.quantize_with(x, _one_hot(q, b, e)), ref)
                levels = torch.unique(ref / (t / 2 ** (b - int(signed))))
                assert len(levels) <= 2 ** b and levels.min() >= (-(2 ** (b - 1)) if signed else 0)


def test_soft_sample_estimates_the_parameters_and_reaches_the_logits():
    q = _block([2, 4], True, top=0, n_t=2, sample_dim=0)  # pairs (2, 1), (2, ½), (4, 1), (4, ½)
    delta, t = q.pair_steps()
    assert torch.equal(delta, torch.tensor([0.5, 0.25, 0.125, 0.0625]))
    assert torch.equal(t, torch.tensor([1.0, 0.5, 1.0, 0.5]))
    y = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]])  # one sample per image (sample_dim 0)
    x = torch.tensor([[0.3, -0.9], [0.3, -0.9]])
    out = q.quantize_with(x, y)
    # image 0: Δ̂ = 0.3125, t̂ = 1, q̂ = 3.2: round(0.96) = 1, round(−2.88) = −3 → 0.3125, −0.9375
    # image 1: (2, ½): Δ = ¼, levels −2..1 → round(1.2) = 1 → 0.25, −0.9 → −2 → −0.5
    assert torch.allclose(out, torch.tensor([[0.3125, -0.9375], [0.25, -0.5]]))
    # a training forward with a soft Gumbel sample sends gradient to the logits; a hard one is one-hot forward
    torch.manual_seed(0)
    q.train()
    q.tau = 1.0
    q(torch.randn(8, 4)).pow(2).sum().backward()
    assert q.logits.grad is not None and q.logits.grad.abs().sum() > 0
    y = q.sample(5, tau=0.5, hard=True)
    assert torch.equal(y.detach().sum(1), torch.ones(5)) and set(y.detach().flatten().tolist()) <= {0.0, 1.0}
    q.logits.grad = None
    (y * torch.arange(4.0)).sum().backward()
    assert q.logits.grad.abs().sum() > 0  # the straight-through sample still has the soft gradient


def test_eval_uses_the_most_probable_bit_then_threshold():
    q = _block([2, 3, 4], True, top=0, n_t=3)
    with torch.no_grad():
        # p(b) marginals: bit 3 wins with 0.45 though its best pair (0.25) is below bit 2's best pair (0.3)
        p = torch.tensor([[0.30, 0.05, 0.05], [0.20, 0.25, 0.0001], [0.1, 0.03, 0.0199]])
        q.logits.copy_(p.log())
    assert q.argmax_pair() == (3, -1)
    q.eval()
    x = torch.tensor([0.3, -0.6, 0.1])
    assert torch.equal(q(x), q.quantize_with(x, _one_hot(q, 3, -1)))  # Δ = ½/4: 0.25, −0.5, 0.125
    assert q.bit_log_probs().exp().tolist() == pytest.approx([0.4, 0.4501, 0.1499], abs=1e-6)


def test_init_logits_put_p_init_on_highest_bits_largest_threshold():
    torch.manual_seed(0)
    q = _block([2, 3, 4], True, top=0, n_t=8)
    q.init_logits(0.95)
    p = q.pair_log_probs().exp()
    assert int(p.flatten().argmax()) == 2 * 8 and q.argmax_pair() == (4, 0)
    assert 0.95 < p[2, 0] < 0.99  # e^6.12 = 456 against 23 logits in (−1, 0]: 456/479 … 456/465
    assert (q.logits.flatten()[:16] <= 0).all() and (q.logits.flatten()[:16] > -1).all()


# ---------------------------------------------------------------------------------------------- BitOPs and loss
def test_expected_bitops_and_constraint_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Linear(2, 2))
    layers = build_hmq(model, ["0", "1"], [2, 4], [2, 4], n_thresholds=2)
    with torch.no_grad():
        # weight of layer 0: p(2) = ¼, p(4) = ¾ → E = 3.5; its activation: uniform pairs → E = 3
        layers["0"].wq.logits.copy_(torch.tensor([[0.0, -1e9], [math.log(3), -1e9]]))
        layers["0"].aq.logits.zero_()
        layers["1"].wq.logits.copy_(torch.tensor([[-1e9, -1e9], [0.0, 0.0]]))  # E = 4
        layers["1"].aq.logits.copy_(torch.tensor([[0.0, 0.0], [-1e9, -1e9]]))  # E = 2
    macs = {"0": 1000, "1": 500}
    expected = 1000 * 3.5 * 3 + 500 * 4 * 2  # 14,500 BitOPs
    ratio = expected_bitops_ratio(layers, macs, expected / 1e9 / 2)  # budget half of it
    assert ratio.item() == pytest.approx(2.0)
    assert constraint_loss(ratio).item() == pytest.approx(32 * 0.5 ** 2)  # γ (1 − B/C)² = 8
    assert constraint_loss(torch.tensor(1.25), gamma=10, rate=2).item() == pytest.approx(10 * 0.2 ** 2)
    for inside in (0.3, 0.9, 1.0):
        assert constraint_loss(torch.tensor(inside)).item() == 0.0
    above = torch.tensor(1.1, requires_grad=True)
    constraint_loss(above).backward()
    assert constraint_loss(above).item() > 0 and above.grad.item() > 0  # pushes the expected BitOPs down


# ---------------------------------------------------------------------------------------------- the search
def _ctx(tmp_path, budget="w2.5a2.5", work_dir=None, meter=None, key=None):
    from mpqbench.data import TensorImageDataset
    from mpqbench.models import get_model
    from mpqbench.utils import torch_save

    arch, size, width = "resnet20", 8, 0.25
    path = tmp_path / "fp.pt"
    if not path.exists():
        torch.manual_seed(123)
        model = get_model(arch, num_classes=10, in_channels=1, input_size=size, width=width)
        meta = {"arch": arch, "dataset": "digits", "num_classes": 10, "in_channels": 1, "input_size": size,
                "width": width, "epochs": 0, "seed": 0, "top1": 0.0, "top5": 0.0, "wall_s": 1.0, "macs_processed": 5}
        torch_save({"state_dict": model.state_dict(), "meta": meta}, path)
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.rand(48, 1, size, size, generator=g), torch.randint(0, 10, (48,), generator=g),
                              mean=[0.5], std=[0.25], classes=[str(i) for i in range(10)], crop_pad_px=0, flip=False)
    return tiny_context(path, proxy_train=data, arch=arch, width=width, input_size=size, budget=budget, seed=3,
                        meter=meter or CostMeter("cpu"), work_dir=work_dir, state_key=key)


HP = dict(epochs=2, batch_size=16, lr_hmq=0.5, lr_w=1e-3, calib_batches=2)


def test_search_policy_meets_the_budget_window_and_records_its_work(tmp_path):
    torch.set_num_threads(1)
    ctx = _ctx(tmp_path)
    out = Hmq().search(ctx, HmqHparams(**HP))
    used = ctx.bitops_g(out.layers) / ctx.budget_bitops_g
    assert 0.9 <= used <= 1 + 1e-9 and out.extraction == "ilp" and not out.repaired
    assert set(out.layers) == set(ctx.searchable)
    # 2 calibration forwards + 2 epochs × 3 steps, each metered
    assert ctx.meter.steps == 2 + 6 and ctx.meter.macs_processed > 0 and out.epochs == 2
    hist = out.extra["history"]
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5, 6] and hist[0]["tau"] == 1.0
    assert hist[-1]["tau"] == pytest.approx(math.exp(-0.01 * round(5 * 25 / 3)))
    assert 0 < out.settled_step <= 6 and 0 < out.settled_macs <= ctx.meter.macs_processed
    read = out.extra["readout"]
    assert set(read) == set(ctx.searchable) and all(r["w"] in (2, 3, 4) for r in read.values())
    assert not any(r["a_signed"] for r in read.values())  # ResNet-20's searchable inputs follow a ReLU
    assert out.entropy is not None and set(out.entropy) == set(ctx.searchable)

    # the published read-out: b* per tensor, repaired only if over budget
    pub = Hmq().search(_ctx(tmp_path), HmqHparams(**HP, extraction="argmax"))
    argmax = {n: (r["w"], r["a"]) for n, r in pub.extra["readout"].items()}
    assert pub.extraction == "argmax"
    assert pub.extra["argmax_bitops_g"] == pytest.approx(ctx.bitops_g(argmax))
    if pub.extra["argmax_bitops_g"] <= ctx.budget_bitops_g:
        assert pub.layers == argmax and not pub.repaired
    else:
        assert pub.repaired and ctx.bitops_g(pub.layers) <= ctx.budget_bitops_g


def test_search_kill_and_resume(tmp_path, monkeypatch):
    from killswitch import killed_after_first_save

    import mpqbench.search as search_mod

    torch.set_num_threads(1)
    hp = HmqHparams(**HP)  # killed after its first epoch, resumed for the second
    ref = Hmq().search(_ctx(tmp_path, work_dir=tmp_path / "ref", key="r" * 64), hp)
    with killed_after_first_save(monkeypatch, search_mod):
        Hmq().search(_ctx(tmp_path, work_dir=tmp_path / "run", key="k" * 64), hp)
    torch.manual_seed(999)
    meter = CostMeter("cpu")
    resumed = Hmq().search(_ctx(tmp_path, work_dir=tmp_path / "run", meter=meter, key="k" * 64), hp)
    assert resumed.layers == ref.layers and resumed.extra["probs"] == ref.extra["probs"]
    assert [h["policy"] for h in resumed.extra["history"]] == [h["policy"] for h in ref.extra["history"]]
    assert meter.steps == 2 + 6  # calibration and both epochs, counted across the kill
    assert not list((tmp_path / "run").glob("*.ckpt"))
