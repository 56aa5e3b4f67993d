"""LSQ: learned step size quantization (Esser et al., ICLR 2020).

    v̂ = round(clamp(v / s, Q_N, Q_P)) · s,   Q_N, Q_P = -2^(b-1), 2^(b-1)-1 (signed) or 0, 2^b-1 (unsigned)

Gradients, exactly as in the paper (strict inequalities):
    ∂v̂/∂v = 1 if Q_N < v/s < Q_P else 0                                   (straight-through estimator)
    ∂v̂/∂s = round(v/s) - v/s inside, Q_N below, Q_P above; then scaled by g = 1/√(N·Q_P)
with N the number of elements of v per step element (v.numel() per tensor, v.numel()/C per channel).

Four backends with these semantics (`set_backend`, or the env var MPQBENCH_LSQ_BACKEND):
- ``reference``: plain differentiable torch ops (`_lsq_reference`); any order of derivative.
- ``native`` (default): one autograd.Function (`_LsqMix`) that also mixes K candidates, Σ_k p_k·Q_k(v)
  (supernet), in one call, running fused C kernels (:mod:`mpqbench.quant.native`) on CPU tensors: one read
  of v forward, one read of v and the gradient backward (∂/∂v, and ∂/∂s, ∂/∂p as float64 sums), the K
  candidates mixed in registers. The kernels are compiled once per machine (about a second) and cached;
  without a C compiler the backend warns once and becomes ``eager``. Tensors the kernels do not take (CUDA,
  float16, per-channel steps on a dim other than 0, tensors under a tracing dispatch mode) run the eager
  kernels of the same Function.
- ``eager``: the same Function on torch ops: a few preallocated buffers with in-place passes, ∂/∂v from
  one ``hardtanh_backward`` (strict-inside mask) and ∂/∂s from dot products of exact residuals; it saves
  nothing but its input (which the previous layer keeps anyway) — K candidates are recomputed in the
  backward, not stored.
- ``compiled``: the same Function with its per-tensor kernels fused by torch.compile (dynamic shapes,
  bit-widths symbolic, so a handful of graphs per process; ~10-60 s compile on first use, cached on disk by
  inductor). Per-channel steps stay eager. Any compile failure warns once and falls back to ``eager``.
Under ``create_graph=True`` the Function's backward differentiates the reference, so double backward works
on every backend. The fused ATen op ``torch._fake_quantize_learnable_per_tensor_affine`` is *not* used: it
decides clipping on round(v/s) instead of v/s, so for Q_P < v/s < Q_P + ½ it passes ∂/∂v = 1 and
∂/∂s = round(v/s) - v/s instead of 0 and Q_P (checked by hand computation).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from mpqbench.quant import native

BACKENDS = ("reference", "eager", "native", "compiled")
DEFAULT_BACKEND = "native"
_BACKEND = os.environ.get("MPQBENCH_LSQ_BACKEND", DEFAULT_BACKEND)
if _BACKEND not in BACKENDS:
    warnings.warn(f"MPQBENCH_LSQ_BACKEND={_BACKEND!r} is not one of {BACKENDS}; using {DEFAULT_BACKEND!r}")
    _BACKEND = DEFAULT_BACKEND


def set_backend(name: str) -> str:
    """Select the LSQ implementation ("reference", "eager", "native", "compiled"); returns the previous one."""
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"unknown LSQ backend {name!r}; choose one of {BACKENDS}")
    old, _BACKEND = _BACKEND, name
    return old


def get_backend() -> str:
    return _BACKEND


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P) as integers, Q_N <= 0 < Q_P."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def init_step(v: Tensor, qp: int, dims: tuple[int, ...] | None = None) -> Tensor:
    """LSQ data initialisation 2·mean|v|/√Q_P, reduced over `dims` (all when None); never exactly zero."""
    mean_abs = v.detach().abs().mean() if dims is None else v.detach().abs().mean(dim=dims)
    return (2 * mean_abs / math.sqrt(qp)).clamp_min(torch.finfo(torch.float32).eps).float()


def _lsq_reference(v: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float) -> Tensor:
    """Reference LSQ from plain differentiable ops. `step` broadcasts against `v` ([] or e.g. [C, 1, 1, 1])."""
    s = step * grad_scale + (step - step * grad_scale).detach()  # value step, gradient scaled by g
    x = v / s
    inside = (x > qn) & (x < qp)
    q = x.detach().clamp(qn, qp).round()
    return (q + (x - x.detach()) * inside) * s  # value q·s; ∂/∂x = inside (STE), ∂/∂s = q - inside·v/s


def _mix_reference(v: Tensor, steps: Tensor, probs: Tensor | None, bounds, grad_scales) -> Tensor:
    """Σ_k probs[k] · LSQ_k(v) (just LSQ_0(v) when probs is None) from the reference ops."""
    out = None
    for k, ((qn, qp), g) in enumerate(zip(bounds, grad_scales)):
        y = _lsq_reference(v, steps[k], qn, qp, g)
        y = y if probs is None else probs[k] * y
        out = y if out is None else out + y
    return out


def _dot(a: Tensor, b: Tensor, s: Tensor) -> Tensor:
    """Σ a·b reduced to the shape of the step s ([] or broadcastable like [C, 1, 1, 1]); a, b: shape of v."""
    if s.dim() == 0 and a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))  # no temporary
    return (a * b).sum_to_size(s.shape)


def _eager_forward(v: Tensor, steps: Tensor, probs: Tensor | None, bounds) -> Tensor:
    """Σ_k p_k·round(clamp(v/s_k))·s_k in two buffers (allocating large CPU tensors costs more than a pass)."""
    out, x = torch.empty_like(v), None
    for k, (qn, qp) in enumerate(bounds):
        s = steps[k]
        scale = s if probs is None else s * probs[k]
        if k == 0:
            torch.div(v, s, out=out).clamp_(qn, qp).round_().mul_(scale)
        else:
            x = torch.empty_like(v) if x is None else x
            out.addcmul_(torch.div(v, s, out=x).clamp_(qn, qp).round_(), scale)
    return out


def _eager_backward(v: Tensor, grad: Tensor, steps: Tensor, probs: Tensor | None, bounds):
    """(∂L/∂v, ds [K, *S] = Σ grad·∂Q_k/∂s_k unscaled, gq [K, *S] = Σ grad·q_k or None without probs)."""
    grad = grad.contiguous()
    x, e = torch.empty_like(v), torch.empty_like(v)
    gv = None if probs is None else torch.empty_like(v)
    dv, ds, gq = None, [], []
    for k, (qn, qp) in enumerate(bounds):
        s = steps[k]
        torch.div(v, s, out=x)
        if probs is None:  # the STE input gradient: grad where Q_N < v/s < Q_P, else 0
            gv = dv = torch.ops.aten.hardtanh_backward(grad, x, qn, qp)
        else:
            torch.ops.aten.hardtanh_backward.grad_input(grad, x, qn, qp, grad_input=gv)
        c = x.clamp_(qn, qp)  # v/s inside, the bound outside
        outside = _dot(torch.sub(grad, gv, out=e), c, s)  # Σ_outside grad·Q
        inside = _dot(grad, torch.round(c, out=e).sub_(c), s)  # Σ grad·(round(c) - c): exact residuals
        ds.append(inside + outside)  # Σ grad·(q - [Q_N < v/s < Q_P]·v/s) = Σ grad·∂v̂/∂s
        if probs is not None:
            gq.append(inside + _dot(grad, c, s))
            dv = torch.mul(gv, probs[k]) if dv is None else dv.addcmul_(gv, probs[k])
    return dv, torch.stack(ds), None if probs is None else torch.stack(gq)


def _fused_forward(v: Tensor, steps: Tensor, probs: Tensor | None, bounds) -> Tensor:
    """_eager_forward for per-tensor steps [K], written for torch.compile to fuse into one pass."""
    out = None
    for k, (qn, qp) in enumerate(bounds):
        s = steps[k]
        y = torch.clamp(v / s, qn, qp).round() * (s if probs is None else s * probs[k])
        out = y if out is None else out + y
    return out


def _fused_backward(v: Tensor, grad: Tensor, steps: Tensor, probs: Tensor | None, bounds):
    """_eager_backward for per-tensor steps [K], written for torch.compile to fuse."""
    dv, ds, gq = None, [], []
    for k, (qn, qp) in enumerate(bounds):
        x = v / steps[k]
        inside = (x > qn) & (x < qp)
        q = x.clamp(qn, qp).round()
        gv = torch.where(inside, grad, 0.0)
        gv = gv if probs is None else gv * probs[k]
        dv = gv if dv is None else dv + gv
        ds.append((grad * torch.where(inside, q - x, q)).sum())
        gq.append((grad * q).sum())
    return dv, torch.stack(ds), None if probs is None else torch.stack(gq)


def _plain_dispatch() -> bool:
    """No dispatch mode active, or only FLOP counters (which pass real tensors through): raw-pointer
    kernels are safe. Fake-tensor, tracing and other modes get the torch-op kernels."""
    if torch._C._len_torch_dispatch_stack() == 0:
        return True
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return all(getattr(m, "lsq_native_ok", False) or type(m).__name__ == "_FlopCounterMode"
               for m in _get_current_dispatch_mode_stack())


def _native_low(v: Tensor) -> bool:
    """Whether a bfloat16 ``v`` goes to the native kernels as it is (they read it exactly as float32 and round
    the result back once: the same numbers as casting up, computing and casting down, half the traffic)."""
    return (v.dtype == torch.bfloat16 and _BACKEND == "native" and v.device.type == "cpu" and _plain_dispatch()
            and native.load() is not None)


def _use_native(v: Tensor, steps: Tensor) -> bool:
    """Whether this call runs the C kernels; the first failure to build them warns once and selects eager."""
    global _BACKEND
    if _BACKEND != "native" or not native.supports(v, steps) or not _plain_dispatch():
        return False
    if native.load() is None:
        warnings.warn(f"the native LSQ kernels are not available ({native.load_error()}); using the eager "
                      "LSQ backend (slower steps)")
        _BACKEND = "eager"
        return False
    return True


_compiled: dict[str, object] = {}


def _use_compiled(steps: Tensor) -> bool:
    return _BACKEND == "compiled" and steps.dim() == 1  # per-tensor steps only


def _compiled_call(name: str, *args):
    """Run the torch.compile'd `_fused_<name>`, or return None for the caller to run the eager kernels.

    Under FlopCounterMode (CostMeter's first step) the compiled kernel still runs, with the mode
    paused — it counts no elementwise op — so a step's numerics never depend on whether it was counted
    (bitwise-identical resumes). Under any other dispatch mode (fake tensors, tracing) the eager kernels
    run. A compile failure warns once and switches the backend to eager for good.
    """
    global _BACKEND
    try:
        from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode_stack
        from torch.utils.flop_counter import _FlopCounterMode

        if not all(isinstance(m, _FlopCounterMode) for m in _get_current_dispatch_mode_stack()):
            return None
        if name not in _compiled:
            _compiled[name] = torch.compile(globals()[f"_fused_{name}"], dynamic=True, fullgraph=True)
        with _disable_current_modes():
            # detached inputs: no autograd metadata to guard on or for dynamo to warn about
            return _compiled[name](*(a.detach() if isinstance(a, Tensor) else a for a in args))
    except Exception as err:  # no C++ compiler / Triton, unsupported op, platform or torch version
        warnings.warn(f"torch.compile of the LSQ kernels failed ({type(err).__name__}: {err}); "
                      "using the eager LSQ backend")
        _BACKEND = "eager"
        return None


class _LsqMix(torch.autograd.Function):
    """y = Σ_k p_k · round(clamp(v/s_k, Q_N,k, Q_P,k)) · s_k with LSQ gradients (p = None: K = 1, no mixing).

    v: any shape; steps: [K, *S] with S broadcastable to v ([] per tensor); probs: [K] or None;
    bounds: K × (Q_N, Q_P) ints; grad_scales: K floats.
    """

    @staticmethod
    def forward(ctx, v: Tensor, steps: Tensor, probs: Tensor | None, bounds, grad_scales) -> Tensor:
        out = None
        ctx.native = _use_native(v, steps)
        if ctx.native:
            out = native.forward(v, steps, probs, bounds)
        elif v.dtype in (torch.float16, torch.bfloat16):  # the torch-op kernels compute in float32
            out = _eager_forward(v.float(), steps, probs, bounds).to(v.dtype)
        elif _use_compiled(steps):
            out = _compiled_call("forward", v, steps, probs, bounds)
        if out is None:
            out = _eager_forward(v, steps, probs, bounds)
        ctx.save_for_backward(v, steps, probs)
        ctx.bounds, ctx.grad_scales = bounds, grad_scales
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, steps, probs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference instead
            return _reference_backward(ctx, grad, v, steps, probs)
        res = None
        if ctx.native or (_use_native(v, steps)):
            res = native.backward(v, grad, steps, probs, ctx.bounds, need_input_grad=ctx.needs_input_grad[0])
        elif v.dtype in (torch.float16, torch.bfloat16):
            dv, ds, gq = _eager_backward(v.float(), grad.float(), steps, probs, ctx.bounds)
            res = dv.to(v.dtype), ds, gq
        elif _use_compiled(steps):
            res = _compiled_call("backward", v, grad, steps, probs, ctx.bounds)
        dv, ds, gq = res if res is not None else _eager_backward(v, grad, steps, probs, ctx.bounds)
        k = len(ctx.grad_scales)  # the LSQ gradient scale g_k of each candidate (host floats)
        dsteps = ds * (ctx.grad_scales[0] if k == 1 else
                       torch.tensor(ctx.grad_scales, dtype=ds.dtype).view((k,) + (1,) * (ds.dim() - 1)))
        if probs is None:
            return dv, dsteps, None, None, None
        p = probs.view((-1,) + (1,) * (steps.dim() - 1))
        return dv, dsteps * p, (gq * steps).reshape(len(ctx.bounds), -1).sum(1), None, None


def _reference_backward(ctx, grad: Tensor, v: Tensor, steps: Tensor, probs: Tensor | None):
    inputs = (v, steps, probs)
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[i]]
    with torch.enable_grad():
        low = v.dtype in (torch.float16, torch.bfloat16)  # computed in float32, as the forward
        y = _mix_reference(v.float() if low else v, steps, probs, ctx.bounds, ctx.grad_scales)
        grad = grad.float() if low else grad
        grads = torch.autograd.grad(y, [inputs[i] for i in wanted], grad, create_graph=True, allow_unused=True)
    out: list[Tensor | None] = [None] * 5
    for i, gi in zip(wanted, grads):
        out[i] = gi
    return tuple(out)


def lsq_fake_quant(v: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float) -> Tensor:
    """LSQ fake quantization of `v` with step `step` ([] or broadcastable to v), on the selected backend."""
    if _BACKEND == "reference":
        return _lsq_reference(v, step, qn, qp, grad_scale)
    return _LsqMix.apply(v, step.unsqueeze(0), None, ((qn, qp),), (grad_scale,))


class LsqQuantizer(nn.Module):
    """LSQ fake quantizer with a learnable step `step` ([] per tensor, [C] per channel along `channel_dim`).

    `signed=None` decides signedness from the first batch (min < 0 → signed). The step is initialised
    from the first batch seen (2·mean|v|/√Q_P); both decisions are buffers (`signed`, `initialized`), so they
    survive state_dict round trips. Under torch.distributed the initial values are averaged over ranks.
    Inputs in float16/bfloat16 are quantized in float32: cast up (the result is float32), or, for a bfloat16
    input on the native backend with a per-tensor step, read as float32 by the kernel, the result rounded
    back to bfloat16 once (what a following autocast convolution would do to a float32 result anyway).
    The first batch (step initialisation) is always read in float32.
    """

    def __init__(self, bits: int, *, signed: bool | None = None, per_channel: bool = False, channel_dim: int = 0,
                 channels: int | None = None) -> None:
        super().__init__()
        self.bits, self.per_channel, self.channel_dim = bits, per_channel, channel_dim
        self.auto_signed = signed is None
        self.step = nn.Parameter(torch.ones(channels if per_channel and channels else ()))
        self.register_buffer("signed", torch.tensor(bool(signed)))
        self.register_buffer("initialized", torch.tensor(False))
        self._signed, self._ready = bool(signed), False  # mirror of the buffers (no device sync per forward)

    @property
    def qrange(self) -> tuple[int, int]:
        return qrange(self.bits, self._signed)

    def extra_repr(self) -> str:
        sign = ("signed" if self._signed else "unsigned") if self._ready else "uninitialized"
        return f"bits={self.bits}, {sign}, per_channel={self.per_channel}"

    def _reduce_dims(self, v: Tensor) -> tuple[int, ...] | None:
        if not self.per_channel:
            return None
        d = self.channel_dim % v.dim()
        return tuple(i for i in range(v.dim()) if i != d)

    @torch.no_grad()
    def initialize(self, v: Tensor) -> None:
        """Decide signedness (if automatic) and set the step from the batch `v`."""
        if self.auto_signed:
            neg = (v.min() < 0).float()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(neg, op=dist.ReduceOp.MAX)
            self.signed.fill_(bool(neg))
        qp = qrange(self.bits, bool(self.signed))[1]
        if qp < 1:
            raise ValueError(f"a signed {self.bits}-bit LSQ quantizer has no positive level; use bits >= 2")
        step = init_step(v, qp, self._reduce_dims(v)).to(self.step.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(step)
            step /= dist.get_world_size()
        if step.shape == self.step.shape:
            self.step.copy_(step)
        else:  # per-channel step whose channel count was unknown: resize, keeping the Parameter object
            self.step.data = step
        self.initialized.fill_(True)
        self._sync()

    def _sync(self) -> None:
        self._signed, self._ready = bool(self.signed), bool(self.initialized)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        step = state_dict.get(prefix + "step")
        if step is not None and step.shape != self.step.shape:  # per-channel step not materialised yet
            self.step.data = torch.empty_like(step, device=self.step.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = False

    def prepare(self, v: Tensor) -> tuple[Tensor, int, int, float]:
        """Initialise on first use; return (step broadcastable to v, Q_N, Q_P, grad scale g)."""
        if not self._ready:
            self._sync()
            if not self._ready:
                self.initialize(v)
        qn, qp = self.qrange
        step = self.step
        if self.per_channel:
            shape = [1] * v.dim()
            shape[self.channel_dim] = -1
            step = step.view(shape)
        return step, qn, qp, 1.0 / math.sqrt(v.numel() / self.step.numel() * qp)

    def forward(self, v: Tensor) -> Tensor:
        if v.dtype in (torch.float16, torch.bfloat16) and not (
                self._ready and not self.per_channel and _native_low(v)):
            v = v.float()
        return lsq_fake_quant(v, *self.prepare(v))


def lsq_mix(v: Tensor, quantizers: Sequence[LsqQuantizer], probs: Tensor) -> Tensor:
    """Σ_k probs[k] · quantizers[k](v) in one autograd node (or from the reference ops). probs: [K].

    Low-precision inputs as in :meth:`LsqQuantizer.forward` (bfloat16 kept for the native kernels once every
    quantizer is initialised and all steps are per tensor)."""
    if v.dtype in (torch.float16, torch.bfloat16) and not (
            all(q._ready and not q.per_channel for q in quantizers) and _native_low(v)):
        v = v.float()
    prepared = [q.prepare(v) for q in quantizers]
    steps = torch.stack([p[0] for p in prepared])
    bounds = tuple((qn, qp) for _, qn, qp, _ in prepared)
    grad_scales = tuple(g for *_, g in prepared)
    if _BACKEND == "reference":
        return _mix_reference(v, steps, probs, bounds, grad_scales)
    return _LsqMix.apply(v, steps, probs, bounds, grad_scales)


def quant_error_sq(weight: Tensor, bits: int) -> float:
    """‖Q_b(W) − W‖² with a signed per-tensor LSQ quantizer at its data-initialised step (no training)."""
    if bits < 2:
        raise ValueError(f"signed weight quantization needs at least 2 bits, got {bits}")
    w = weight.detach().float()
    qn, qp = qrange(bits, True)
    s = init_step(w, qp)
    return ((w / s).clamp(qn, qp).round() * s - w).pow(2).sum().item()
