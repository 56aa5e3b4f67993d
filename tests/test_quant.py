"""LSQ quantizer, quantized layers and supernet layers against hand computations.

Every test runs on the fused "eager" backend and on the plain-ops "reference" backend; the "compiled"
backend is checked against them on conv-sized tensors (it compiles once per process, ~10-60 s cold).
"""

from __future__ import annotations

import copy
import io
import math
import shutil
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mpqbench.errors import UserError
from mpqbench.quant import (LsqQuantizer, MixedConv2d, MixedLinear, QConv2d, QLinear, arch_parameters,
                            build_supernet, lsq_fake_quant, mixed_layers, quant_error_sq, quantize_model,
                            quantizer_parameters, set_backend, weight_parameters)


@pytest.fixture(autouse=True, params=["native", "eager", "reference"])
def lsq_backend(request):
    old = set_backend(request.param)
    yield request.param
    set_backend(old)


# v/s for s = 0.5 at 3 bits signed (Q_N = -4, Q_P = 3): below, at-ish and inside the range, in the half-step
# band just above Q_P (where round(v/s) = Q_P but LSQ already clips) and far above.
V = torch.tensor([-3.0, -1.1, -0.2, 0.3, 0.74, 1.4, 1.6, 1.7, 5.0])
S, QN, QP = 0.5, -4, 3
V_HAT = torch.tensor([-2.0, -1.0, 0.0, 0.5, 0.5, 1.5, 1.5, 1.5, 1.5])  # round(clamp(v/s))·s by hand
INSIDE = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.float32)  # -4 < v/s < 3
# ∂v̂/∂s: Q_N below, round(v/s) - v/s inside, Q_P above (v/s = -6, -2.2, -.4, .6, 1.48, 2.8, 3.2, 3.4, 10)
DV_DS = torch.tensor([-4.0, 0.2, 0.4, 0.4, -0.48, 0.2, 3.0, 3.0, 3.0])


def test_forward_matches_hand():
    y = lsq_fake_quant(V, torch.tensor(S), QN, QP, 1.0)
    torch.testing.assert_close(y, V_HAT, rtol=0, atol=0)


def test_step_and_input_gradients_match_lsq():
    v = V.clone().requires_grad_()
    s = torch.tensor(S, requires_grad=True)
    w = torch.linspace(0.5, 2.0, len(V))  # upstream gradient, not all ones
    g = 1 / math.sqrt(len(V) * QP)
    (lsq_fake_quant(v, s, QN, QP, g) * w).sum().backward()
    torch.testing.assert_close(s.grad, (w * DV_DS).sum() * g, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v.grad, w * INSIDE, rtol=0, atol=0)  # STE: 1 strictly inside, 0 outside


def test_quantizer_grad_scale_and_data_init():
    q = LsqQuantizer(3, signed=True)
    v = V.clone().requires_grad_()
    y = q(v)
    s0 = 2 * V.abs().mean() / math.sqrt(QP)
    torch.testing.assert_close(q.step.detach(), s0)
    x = V / s0
    hand = torch.where(x <= QN, float(QN), torch.where(x >= QP, float(QP), x.clamp(QN, QP).round() - x))
    y.sum().backward()
    torch.testing.assert_close(q.step.grad, hand.sum() / math.sqrt(len(V) * QP), rtol=1e-5, atol=1e-6)
    assert q.initialized and q.signed


def test_per_channel():
    w = torch.randn(3, 2, 4, 4)
    q = LsqQuantizer(4, signed=True, per_channel=True)
    y = q(w.requires_grad_())
    qn, qp = -8, 7
    s0 = 2 * w.detach().abs().mean(dim=(1, 2, 3)) / math.sqrt(qp)
    torch.testing.assert_close(q.step.detach(), s0)
    s = s0.view(3, 1, 1, 1)
    torch.testing.assert_close(y, (w / s).clamp(qn, qp).round() * s)
    y.pow(2).sum().backward()  # upstream gradient 2y
    x = w.detach() / s
    dy_ds = torch.where(x <= qn, float(qn), torch.where(x >= qp, float(qp), x.round() - x))
    hand = (2 * y.detach() * dy_ds).sum(dim=(1, 2, 3)) / math.sqrt(w.numel() / 3 * qp)  # N per channel
    torch.testing.assert_close(q.step.grad, hand, rtol=1e-5, atol=1e-6)


def test_signed_auto_detection_and_state_dict():
    relu_out = torch.rand(64) * 3
    qu = LsqQuantizer(3)
    qu(relu_out)
    assert not qu.signed and qu.qrange == (0, 7)
    assert qu(torch.full((4,), -1.0)).eq(0).all()  # unsigned stays unsigned: negatives clip to 0
    qs = LsqQuantizer(3)
    qs(relu_out - 1)
    assert qs.signed and qs.qrange == (-4, 3)
    fresh = LsqQuantizer(3)
    fresh.load_state_dict(qs.state_dict())
    fresh(torch.rand(8) * 100)  # loaded: neither re-initialised nor re-detected by a different batch
    assert fresh.signed and fresh.step.item() == qs.step.item()


def test_qconv2d_equals_conv_on_hand_quantized_tensors():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    q = QConv2d.from_float(conv, w_bits=3, a_bits=4)
    x = torch.randn(2, 3, 6, 6)
    y = q(x)
    sa, sw = q.act_quant.step.detach(), q.weight_quant.step.detach().view(-1, 1, 1, 1)
    xq = (x / sa).clamp(-8, 7).round() * sa  # input has negatives → signed 4 bit
    wq = (conv.weight / sw).clamp(-4, 3).round() * sw  # signed 3 bit, per output channel
    torch.testing.assert_close(y, F.conv2d(xq, wq, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
    assert q.weight.data_ptr() != conv.weight.data_ptr() and torch.equal(q.weight, conv.weight)


def test_qlinear_matches_hand():
    lin = nn.Linear(5, 3)
    q = QLinear.from_float(lin, 8, 8)
    x = torch.rand(4, 5)
    y = q(x)
    sa, sw = q.act_quant.step.detach(), q.weight_quant.step.detach().view(-1, 1)
    ref = F.linear((x / sa).clamp(0, 255).round() * sa, (lin.weight / sw).clamp(-128, 127).round() * sw, lin.bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pick", [0, 1, 2])
def test_supernet_one_hot_equals_fixed_layer(pick):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, bias=False)
    x = torch.relu(torch.randn(2, 4, 9, 9))
    mixed = MixedConv2d.from_float(conv, [2, 3, 4], [2, 3, 4])
    mixed(x)  # initialise every candidate
    with torch.no_grad():
        mixed.alpha_w.copy_(torch.tensor([-1e9, -1e9, -1e9]).index_fill(0, torch.tensor(pick), 1e9))
        mixed.alpha_a.copy_(torch.tensor([-1e9, -1e9, -1e9]).index_fill(0, torch.tensor((pick + 1) % 3), 1e9))
    fixed = QConv2d.from_float(conv, w_bits=[2, 3, 4][pick], a_bits=[2, 3, 4][(pick + 1) % 3])
    fixed(x)
    fixed.weight_quant.load_state_dict(mixed.weight_quants[pick].state_dict())
    fixed.act_quant.load_state_dict(mixed.act_quants[(pick + 1) % 3].state_dict())
    torch.testing.assert_close(mixed(x), fixed(x), rtol=1e-6, atol=1e-6)
    assert mixed.argmax_bits() == (fixed.w_bits, fixed.a_bits)


def test_expected_bits_and_alpha_gradient():
    lin = MixedLinear.from_float(nn.Linear(6, 3), [2, 3, 4], [4, 8])
    with torch.no_grad():
        lin.alpha_w.copy_(torch.tensor([0.0, math.log(2), math.log(3)]))  # softmax = 1/6, 2/6, 3/6
    e_w, e_a = lin.expected_bits()
    assert e_w.item() == pytest.approx((2 + 2 * 3 + 3 * 4) / 6) and e_a.item() == pytest.approx(6.0)
    e_w.backward()
    p = torch.tensor([1, 2, 3]) / 6
    torch.testing.assert_close(lin.alpha_w.grad, p * (torch.tensor([2.0, 3, 4]) - 20 / 6))  # ∂E/∂α_i = p_i(b_i − E)
    lin.alpha_w.grad = None
    lin(torch.randn(5, 6)).pow(2).sum().backward()  # the task loss reaches both α's too
    assert lin.alpha_w.grad.abs().sum() > 0 and lin.alpha_a.grad.abs().sum() > 0
    assert lin.argmax_bits() == (4, 4)


def test_mixed_matches_explicit_sum_of_candidates():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    mixed = MixedConv2d.from_float(conv, [2, 3, 4], [2, 4])
    with torch.no_grad():
        mixed.alpha_w.copy_(torch.randn(3))
        mixed.alpha_a.copy_(torch.randn(2))
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = mixed(x)
    pw, pa = mixed.alpha_w.softmax(0), mixed.alpha_a.softmax(0)
    xm = sum(p * q(x) for p, q in zip(pa, mixed.act_quants))
    wm = sum(p * q(mixed.weight) for p, q in zip(pw, mixed.weight_quants))
    ref = F.conv2d(xm, wm, mixed.bias, padding=1)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    params = [x, mixed.weight, mixed.alpha_w, mixed.alpha_a] + quantizer_parameters(mixed)
    g1 = torch.autograd.grad((y * y).sum(), params)
    g2 = torch.autograd.grad((ref * ref).sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fast_and_reference_paths_agree_including_double_backward():
    torch.manual_seed(3)
    mixed = MixedConv2d.from_float(nn.Conv2d(2, 3, 3), [2, 4], [3, 4])
    x = torch.randn(2, 2, 6, 6)
    mixed(x)
    with torch.no_grad():
        mixed.alpha_a.copy_(torch.tensor([0.3, -0.2]))

    def grads(backend: str):
        old = set_backend(backend)
        try:
            xi = x.clone().requires_grad_()
            out = mixed(xi)
            (gx,) = torch.autograd.grad(out.pow(2).sum(), xi, create_graph=True)  # Grad-CAM style
            return [out] + list(torch.autograd.grad(gx.pow(2).sum(), [mixed.weight, mixed.alpha_a]))
        finally:
            set_backend(old)

    for a, b in zip(grads("eager"), grads("reference")):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 10))


def test_quantize_model_swaps_only_named_layers():
    torch.manual_seed(4)
    net = _net()
    fp = copy.deepcopy(net)
    quantize_model(net, {"0": (8, 8), "6": (4, 3)})
    assert type(net[0]) is QConv2d and type(net[3]) is nn.Conv2d and type(net[6]) is QLinear
    assert (net[6].w_bits, net[6].a_bits) == (4, 3)
    for name, p in fp.named_parameters():
        assert torch.equal(dict(net.named_parameters())[name], p)
    with pytest.raises(UserError, match="nope"):
        quantize_model(net, {"nope": (4, 4)})
    with pytest.raises(UserError, match="BatchNorm2d"):
        quantize_model(net, {"1": (4, 4)})


def test_supernet_parameter_partition():
    net = _net()
    quantize_model(net, {"0": (8, 8), "6": (8, 8)})
    build_supernet(net, ["3"], [2, 3, 4], [2, 3, 4])
    net(torch.randn(2, 1, 8, 8))
    assert list(mixed_layers(net)) == ["3"]
    arch, steps, weights = arch_parameters(net), quantizer_parameters(net), weight_parameters(net)
    assert len(arch) == 2 and len(steps) == 2 + 2 + 6
    ids = [id(p) for p in arch + steps + weights]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    assert all(p.requires_grad for p in arch + steps)
    with pytest.raises(UserError, match="MixedConv2d"):
        build_supernet(net, ["3"], [2], [2])


def test_quantized_model_state_dict_and_pickle_round_trip():
    torch.manual_seed(5)
    net = quantize_model(_net(), {"0": (8, 8), "3": (3, 3), "6": (8, 8)}).eval()
    x = torch.randn(3, 1, 8, 8)
    y = net(x)
    fresh = quantize_model(_net(), {"0": (8, 8), "3": (3, 3), "6": (8, 8)}).eval()
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), y, rtol=0, atol=0)


def test_quant_error_sq_hand_value():
    w = torch.tensor([[0.1, -0.4], [0.9, -1.2]])
    s = 2 * w.abs().mean() / math.sqrt(1)  # 2 bits signed: Q_P = 1
    hand = ((w / s).clamp(-2, 1).round() * s - w).pow(2).sum().item()
    assert quant_error_sq(w, 2) == pytest.approx(hand)
    assert quant_error_sq(w, 8) < quant_error_sq(w, 4) < quant_error_sq(w, 2)


def _run(backend: str, v, steps, probs, bounds, grad_scales):
    from mpqbench.quant.lsq import _LsqMix
    old = set_backend(backend)
    try:
        leaves = [t.detach().clone().requires_grad_() for t in (v, steps, probs) if t is not None]
        out = _LsqMix.apply(leaves[0], leaves[1], leaves[2] if probs is not None else None, bounds, grad_scales)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), leaves)
        return [out, *grads]
    finally:
        set_backend(old)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="inductor on CPU needs a C++ compiler")
@pytest.mark.parametrize("bounds", [((0, 7),), ((-4, 3), (-8, 7), (-128, 127))])
def test_compiled_backend_matches_eager(lsq_backend, bounds):
    if lsq_backend == "reference":
        pytest.skip("compiled vs eager needs one run only")
    torch.manual_seed(6)
    k = len(bounds)
    v = torch.randn(4, 8, 10, 10) * 2
    steps = torch.tensor([0.3, 0.11, 0.02][:k])
    probs = None if k == 1 else torch.tensor([0.2, 0.5, 0.3])
    grad_scales = tuple(0.1 * (i + 1) for i in range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a compile failure would silently test eager vs eager
        compiled = _run("compiled", v, steps, probs, bounds, grad_scales)
        with FlopCounterMode(display=False):  # CostMeter's counted step: same kernels, same bits
            counted = _run("compiled", v, steps, probs, bounds, grad_scales)
    for a, b, c in zip(compiled, _run("eager", v, steps, probs, bounds, grad_scales), counted):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a, c)


def test_compiled_backend_falls_back_to_eager(lsq_backend, monkeypatch):
    if lsq_backend == "reference":
        pytest.skip("one run is enough")
    from mpqbench.quant import lsq

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(lsq, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    old = set_backend("compiled")
    try:
        with pytest.warns(UserWarning, match="using the eager LSQ backend"):
            y = lsq_fake_quant(V, torch.tensor(S), QN, QP, 1.0)
        assert lsq.get_backend() == "eager"
    finally:
        set_backend(old)
    torch.testing.assert_close(y, V_HAT, rtol=0, atol=0)


def test_frozen_weights_quantize_once_and_change_nothing(monkeypatch):
    from mpqbench.quant import frozen_weights
    from mpqbench.quant.layers import _Quantized
    from mpqbench.quant.supernet import _Mixed

    torch.manual_seed(11)
    net = quantize_model(_net(), {"0": (8, 8), "6": (4, 4)})
    build_supernet(net, ["3"], [2, 3], [2, 4])
    x = torch.randn(3, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        want = net(x)
    calls = []
    for cls in (_Quantized, _Mixed):
        real = cls.quantized_weight
        monkeypatch.setattr(cls, "quantized_weight", lambda self, real=real: calls.append(1) or real(self))
    with torch.no_grad(), frozen_weights(net):
        assert len(calls) == 3  # once per quantized/supernet layer, on entry
        got = [net(x), net(x)]
        with frozen_weights(net):
            net(x)
        assert net[3]._frozen_weight is not None  # the outer block's weights are back
    assert len(calls) == 6  # nested entry recomputed; no forward quantized a weight
    for y in got:
        assert torch.equal(y, want)
    assert all(getattr(m, "_frozen_weight", None) is None for m in net.modules())
    with torch.no_grad():
        net(x)
    assert len(calls) == 9  # outside the block every forward quantizes its weights again
