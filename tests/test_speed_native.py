"""The native (fused C) LSQ kernels against the reference ops, on conv-sized tensors.

Hand-computed values are checked on every backend by tests/test_quant.py; here: random and boundary
inputs, per-tensor and per-channel steps, supernet mixtures, bfloat16 inputs, thread-count independence,
FLOP counting, and the fallback when no C compiler is available.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mpqbench.quant import lsq, native, set_backend
from mpqbench.quant.lsq import _LsqMix, lsq_fake_quant

pytestmark = pytest.mark.skipif(native.load() is None, reason=f"no native kernels: {native.load_error()}")


def _run(backend: str, v, steps, probs, bounds, grad_scales, upstream=None):
    """(output, ∂/∂v, ∂/∂steps[, ∂/∂probs]) of _LsqMix on ``backend`` for L = Σ upstream · output."""
    old = set_backend(backend)
    try:
        leaves = [t.detach().clone().requires_grad_() for t in (v, steps, probs) if t is not None]
        if backend == "reference":
            out = lsq._mix_reference(leaves[0], leaves[1], leaves[2] if probs is not None else None, bounds,
                                     grad_scales)
        else:
            out = _LsqMix.apply(leaves[0], leaves[1], leaves[2] if probs is not None else None, bounds, grad_scales)
        w = upstream if upstream is not None else torch.linspace(-1, 1, out.numel()).view_as(out)
        grads = torch.autograd.grad((out * w).sum(), leaves)
        return [out, *grads]
    finally:
        set_backend(old)


def _boundary_values(s: float, qn: int, qp: int) -> torch.Tensor:
    """v/s exactly at and around the clipping bounds and at half-integers (round half to even)."""
    xs = [qn - 1.0, qn, qn + 0.25, -0.5, 0.5, 1.5, 2.5, qp - 0.5, qp - 0.25, qp, qp + 0.25, qp + 0.5, qp + 3.0]
    return torch.tensor(xs) * s


CASES = {
    # name: (v shape, steps shape [K, *S], bounds); S = () per tensor, (C, 1, 1, 1) per output channel
    "act-unsigned": ((8, 16, 12, 12), (1,), ((0, 7),)),
    "act-signed": ((8, 16, 12, 12), (1,), ((-4, 3),)),
    "weight-per-channel": ((16, 8, 3, 3), (1, 16, 1, 1, 1), ((-2, 1),)),
    "linear-per-channel": ((10, 64), (1, 10, 1), ((-128, 127),)),
    "mix-act": ((8, 16, 12, 12), (3,), ((0, 3), (0, 7), (0, 15))),
    "mix-weight": ((16, 8, 3, 3), (3, 16, 1, 1, 1), ((-2, 1), (-4, 3), (-8, 7))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_native_matches_reference(case):
    shape, sshape, bounds = CASES[case]
    k = len(bounds)
    torch.manual_seed(7)
    v = torch.randn(shape) * 1.5
    if bounds[0][0] == 0:
        v = v.relu()
    steps = (torch.rand(sshape) * 0.2 + 0.05).float()
    flat = v.view(-1)
    s0 = float(steps.view(k, -1)[0, 0])
    b = _boundary_values(s0, *bounds[0])
    flat[: len(b)] = b  # exact bound and tie cases in the first row / channel
    probs = None if k == 1 else torch.tensor([0.2, 0.5, 0.3])
    grad_scales = tuple(1 / math.sqrt(v.numel() * qp) for _, qp in bounds)
    got = _run("native", v, steps, probs, bounds, grad_scales)
    want = _run("reference", v, steps, probs, bounds, grad_scales)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)  # forward
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)  # ∂/∂v: the strict-inside mask · p
    for a, w in zip(got[2:], want[2:]):  # ∂/∂steps, ∂/∂probs: sums (float64 in the kernel)
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-5)


def test_native_backend_is_the_default_and_runs_the_kernels(monkeypatch):
    assert lsq.DEFAULT_BACKEND == "native"
    calls = []
    real = native.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(native, "forward", counting)
    old = set_backend("native")
    try:
        lsq_fake_quant(torch.randn(100), torch.tensor(0.1), -4, 3, 1.0)
    finally:
        set_backend(old)
    assert calls


def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(8)
    v = torch.randn(4 * native.BLOCK + 123)  # several blocks, so several threads run
    steps, probs, bounds = torch.tensor([0.05, 0.02, 0.01]), torch.tensor([0.3, 0.3, 0.4]), ((-2, 1), (-4, 3), (-8, 7))
    old_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("native", v, steps, probs, bounds, (0.1, 0.2, 0.3))
        torch.set_num_threads(4)
        assert native._ranges(-(-v.numel() // native.BLOCK), v.numel())[1:], "expected a split over threads"
        four = _run("native", v, steps, probs, bounds, (0.1, 0.2, 0.3))
    finally:
        torch.set_num_threads(old_threads)
    for a, b in zip(one, four):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k", [1, 3])
def test_bfloat16_input_equals_float32_compute_rounded(k):
    """A bf16 input is read exactly, computed in fp32 and the result rounded once: bit-equal to casting up,
    running the fp32 kernels and casting the output and ∂/∂v back."""
    torch.manual_seed(9)
    v = torch.randn(4, 16, 10, 10).relu().bfloat16()
    up = torch.randn(v.shape).bfloat16()
    steps = torch.tensor([0.11, 0.05, 0.02][:k])
    probs = None if k == 1 else torch.tensor([0.2, 0.3, 0.5])
    bounds = ((0, 3), (0, 7), (0, 15))[:k]
    low = _run("native", v, steps, probs, bounds, (0.5,) * k, upstream=up)
    high = _run("native", v.float(), steps, probs, bounds, (0.5,) * k, upstream=up.float())
    assert low[0].dtype == torch.bfloat16 and low[1].dtype == torch.bfloat16
    assert torch.equal(low[0], high[0].bfloat16())
    assert torch.equal(low[1], high[1].bfloat16())
    for a, b in zip(low[2:], high[2:]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_quantizer_keeps_bfloat16_activations_on_native_only():
    from mpqbench.quant import LsqQuantizer

    q = LsqQuantizer(4)
    x = torch.rand(2, 3, 8, 8).bfloat16()
    first = q(x)  # initialisation batch: read in fp32
    assert first.dtype == torch.float32
    old = set_backend("native")
    try:
        y = q(x)
        assert y.dtype == torch.bfloat16
        assert torch.equal(y, first.bfloat16())
        set_backend("eager")
        assert q(x).dtype == torch.float32
    finally:
        set_backend(old)


def test_counted_step_gives_the_same_bits():
    torch.manual_seed(10)
    v, steps, bounds = torch.randn(2, 8, 16, 16), torch.tensor([0.2, 0.1]), ((-2, 1), (-4, 3))
    probs = torch.tensor([0.4, 0.6])
    plain = _run("native", v, steps, probs, bounds, (0.1, 0.1))
    with FlopCounterMode(display=False):  # CostMeter's first step
        counted = _run("native", v, steps, probs, bounds, (0.1, 0.1))
    for a, b in zip(plain, counted):
        assert torch.equal(a, b)


def test_meta_tensors_take_the_torch_ops():
    old = set_backend("native")
    try:
        y = lsq_fake_quant(torch.empty(4, 5, device="meta"), torch.tensor(0.5, device="meta"), -4, 3, 1.0)
    finally:
        set_backend(old)
    assert y.device.type == "meta" and y.shape == (4, 5)


def test_builds_into_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MPQBENCH_CACHE_DIR", str(tmp_path))
    for name, value in (("_tried", False), ("_lib", None), ("_error", None)):
        monkeypatch.setattr(native, name, value)
    lib = native.load()
    assert lib is not None, native.load_error()
    built = list((tmp_path / "kernels").glob("lsq-*"))
    assert len(built) == 1 and not [p for p in (tmp_path / "kernels").iterdir() if p.is_dir()]


def test_without_a_compiler_warns_once_and_uses_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("MPQBENCH_CACHE_DIR", str(tmp_path))  # nothing built there
    monkeypatch.setattr(native, "_compiler", lambda: None)
    for name, value in (("_tried", False), ("_lib", None), ("_error", None)):
        monkeypatch.setattr(native, name, value)
    old = set_backend("native")
    try:
        with pytest.warns(UserWarning, match="no C compiler"):
            y = lsq_fake_quant(torch.tensor([-3.0, 0.3, 1.7]), torch.tensor(0.5), -4, 3, 1.0)
        assert lsq.get_backend() == "eager"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lsq_fake_quant(torch.tensor([1.0]), torch.tensor(0.5), -4, 3, 1.0)  # no second warning
    finally:
        set_backend(old)
    torch.testing.assert_close(y, torch.tensor([-2.0, 0.5, 1.5]), rtol=0, atol=0)
