"""DQ (Uhlich et al., "Mixed Precision DNNs: All you need is a good parametrization", ICLR 2020): learned step
size and dynamic range per layer, the bit-width derived from them, trained under a resource penalty.

Reference code: ``sony/ai-research-code``, folder ``mixed-precision-dnns`` (nnabla; ``parametric_quantization.py``
``parametric_fixed_point_quantize_d_xmax``, ``train_resnet.py``, ``train_resnet_quant_fp.cfg``).

**Quantizer (the paper's case U3).** Every searchable layer has two quantizers, one for its weight (signed) and one
for its input activation (signed or unsigned, decided on the first batch: unsigned when no value is negative), each
with two learned scalars, the step size d and the dynamic range q_max (per tensor):

    Q(x) = sign(x) · d · ⌊|x|/d + 1/2⌋   for |x| ≤ q_max,     Q(x) = sign(x) · q_max   for |x| > q_max

(unsigned: x is first clipped at 0, sign(x) = 1). Straight-through gradients as the paper gives them:

    ∂Q/∂x = 1 inside (|x| ≤ q_max), 0 outside;
    ∂Q/∂d = (Q(x) − x)/d inside, 0 outside;
    ∂Q/∂q_max = 0 inside, sign(x) outside

(unsigned: for x < 0 all three are 0). The bit-width is derived, never learned directly:

    signed (weights):      b = ⌈log2(q_max/d + 1)⌉ + 1        unsigned (activations):  b = ⌈log2(q_max/d + 1)⌉

i.e. the least b with q_max ≤ R(b)·d, R(b) = 2^(b−1) − 1 signed, 2^b − 1 unsigned — the reference code's bit count
(``train_resnet.py``: ``ceil(log2(xmax/d + 1) + 1)`` for weights, ``ceil(log2(xmax/d + 1))`` for activations), with
its lower limit: b is at least the smallest candidate (the code's ``bitwidth_min``). A tolerance of 1e-5 bit in the
ceiling absorbs float rounding at the exact powers of two (q_max = R(b)·d gives b, not b + 1).

**Constraint → BitOPs penalty (adapted).** The paper constrains the weight memory (and the activation memory) and
trains with the penalty λ · max(0, S − S_0)² (``train_resnet.py``: ``F.relu(kbytes_weights − target) ** 2``, λ = 0.1
per KB², S_0 = 70.1 KB for ResNet-20 on CIFAR-10). The harness budgets BitOPs on the target geometry, so the
constraint becomes g = Σ_l MACs_l · b_w,l · b_a,l / B (B = the budget's searchable BitOPs) and the penalty

    λ · max(0, g − 1)²,    λ = 491.4 = 0.1 · 70.1²

— the reference's penalty written on the relative excess S/S_0 − 1, so that a given relative overshoot costs what it
costs in the reference ResNet-20 setting. b enters as the reference code does: the forward value is the integer b
above (so the penalty is 0 exactly when the integer policy is inside the budget), the gradient is that of the
continuous b̃ = log2(q_max/d + 1) (+1 signed) — nnabla's ``ceil`` is straight-through —, and 0 where b sits at its
lower limit (nnabla's ``maximum_scalar`` passes the gradient only strictly above the limit):
∂b/∂q_max = 1/((q_max + d) ln 2), ∂b/∂d = −q_max/(d (q_max + d) ln 2).

**Training (as the reference code).** From the FP model pretrained on the proxy (``--teacher``; the paper starts
from a pretrained FP network of the same data — the proxy is the data this search sees), searchable layers get DQ
quantizers, the stem and the classifier stay FP (the harness fixes them at W8A8 for fine-tuning), BatchNorm in
train mode. One loss, CE + penalty, one SGD step per batch on the weights (lr ``lr_w``) and on every d and q_max
(lr ``lr_q``), momentum 0.9, both lrs ×0.1 at 50 % and 75 % of the run (the reference's epochs 80 and 120 of 160).
As in the reference code when a constraint is set, the gradients of d and of q_max are clipped to [−d, d]
(``clip_quant_grads``), and after every step the values are projected: d ≥ 1.2e-7 and
q_max ∈ [d · max(R(b_lo − 1), 1), d · R(b_hi)] with b_lo, b_hi the smallest and largest candidate, so the trained
bit-width stays in the candidates' range (the reference keeps only d ≤ q_max and absolute ranges of d and q_max).
Initialisation at ``init_bits`` (default: the largest candidate): weight q_max = max|W|, d = q_max/R(b) (the
reference's ``find_delta`` without its power-of-two rounding); activation d = 2·mean|x|/√R(b), q_max = R(b)·d from
the first proxy batch (the LSQ rule the harness uses; the reference starts every activation at d = 2^-3).

**Final policy (ours, for comparability).** The trained integer bits b_l (clipped to the candidates' range by the
projection) give each layer a cost over the candidates c,

    cost_l(c) = (c − b_l)² + 0.1 · (c − b̃_l)²,

minimal at the trained bits; the continuous b̃_l orders the layers (a layer whose b̃ lies just above b_l − 1 is the
cheapest to lower, one just below b_l the cheapest to raise). The policy is the (w, a) pair per layer minimising
Σ_l [cost_l(w) + cost_l(a)] with its searchable BitOPs in the budget window [floor · B, B] — the harness's exact ILP
(:func:`mpqbench.search.extract.window_ilp`). The paper deploys its trained bits as they are; the ILP makes the
entry comparable with the others at the same BitOPs. Inside the window, the trained policy is kept unchanged. The
trained policy itself (``raw_policy``), its budget use, the learned d, q_max and bits of every layer, and how many
layers the ILP changed are in the outcome's ``extra``. The rounded policy is recorded every quarter epoch
(``history``), and the settle point is the first record from which it no longer changed.

Hyper-parameters (defaults; the reference code's where one applies): ``epochs`` 160, ``batch_size`` 128, ``lr_w``
0.01, ``lr_q`` 0.01 (the reference trains all parameters with one lr: 0.01 in its ``_RLR`` constrained runs from the
pretrained net, 0.03 in others), ``momentum`` 0.9, ``weight_decay`` 2e-4 (on conv/linear weights only; the
reference decays every parameter, d and q_max included), ``lr_milestones`` [0.5, 0.75], ``penalty_weight`` 491.4,
``clip_quant_grads`` True, ``init_bits`` None (= the largest candidate).

Other deviations: d is any positive number (the reference code rounds d to a power of two, fixed-point hardware;
the harness deploys LSQ quantizers with real steps) and q_max is not rounded to a multiple of d (the paper's Q
outputs q_max itself above the range, which is what the ceiling counts); when q_max/d has a fractional part of at
least ½, |x| just below q_max rounds to the grid level above q_max and Q takes 2^b + 1 values — the paper's
definitions, kept (the reference code's size term avoids it by rounding q_max to a multiple of d). Activations are
quantized at each searchable layer's input (the harness's convention; the reference quantizes each ReLU's output,
which feeds a block's first conv and its downsample conv through one quantizer where we have two), the stem and the
classifier are not quantized during the search (the reference quantizes every layer). No data augmentation (the
harness's searches see the proxy as it is; the reference uses shifts and flips on CIFAR-10). One BitOPs constraint
replaces the separate weight and activation memory constraints. Every proxy forward/backward is metered, the
calibration forward too (its own meter kind ``calibrate``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from mpqbench.data import make_loader
from mpqbench.errors import UserError
from mpqbench.quant.layers import conv_like
from mpqbench.search import Method, SearchContext, SearchOutcome, register_method, settle_point
from mpqbench.search.extract import window_ilp
from mpqbench.train import autocast_for
from mpqbench.utils import seed_everything

BIT_TOL = 1e-5  # bits: float rounding at q_max = R(b)·d must not add a bit
TIE_WEIGHT = 0.1  # weight of the continuous-bit term of the final per-layer costs
D_MIN = float(torch.finfo(torch.float32).eps)  # the smallest step size the projection allows


# ---- the quantizer ----------------------------------------------------------------------------------------------
def max_level(bits: int | float, signed: bool) -> float:
    """R(b): the largest level index of a b-bit quantizer, q_max = R(b)·d (2^(b−1) − 1 signed, 2^b − 1 unsigned)."""
    return 2.0 ** (bits - 1) - 1 if signed else 2.0**bits - 1


def continuous_bits(d: Tensor | float, q: Tensor | float, signed: bool) -> Tensor | float:
    """b̃ = log2(q_max/d + 1) (+1 signed): the bit-width before the ceiling (tensor in, tensor out)."""
    if isinstance(d, Tensor) or isinstance(q, Tensor):
        return torch.log2(q / d + 1) + (1.0 if signed else 0.0)
    return math.log2(q / d + 1) + (1.0 if signed else 0.0)


def integer_bits(d: float, q: float, signed: bool, floor_bits: int = 1) -> int:
    """The paper's bit-width: ⌈log2(q_max/d + 1)⌉ + 1 signed, ⌈log2(q_max/d + 1)⌉ unsigned, at least ``floor_bits``."""
    return max(int(math.ceil(continuous_bits(float(d), float(q), signed) - BIT_TOL)), int(floor_bits))


def relaxed_bits(d: Tensor, q: Tensor, signed: bool, floor_bits: int) -> Tensor:
    """The bit-width as the penalty uses it: value = :func:`integer_bits`, gradient = that of b̃ (straight-through
    ceiling), 0 where the value sits at ``floor_bits``."""
    cont = continuous_bits(d, q, signed)
    hard = torch.ceil(cont.detach() - BIT_TOL)
    ste = cont + (hard - cont).detach()
    return floor_bits + F.relu(ste - floor_bits)


def _dq_forward(x: Tensor, d: Tensor, q: Tensor, signed: bool) -> Tensor:
    a = x.abs() if signed else x.clamp_min(0)
    mag = torch.where(a <= q, torch.floor(a / d + 0.5) * d, q)
    return mag * torch.sign(x) if signed else mag


class _DQQuantize(torch.autograd.Function):
    """Q(x; d, q_max) with the paper's straight-through gradients (module docstring). d, q: 0-dim tensors."""

    @staticmethod
    def forward(ctx, x: Tensor, d: Tensor, q: Tensor, signed: bool) -> Tensor:
        ctx.save_for_backward(x, d, q)
        ctx.signed = signed
        return _dq_forward(x, d, q, signed)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, d, q = ctx.saved_tensors
        y = _dq_forward(x, d, q, ctx.signed)
        if ctx.signed:
            inside = x.abs() <= q
            above = torch.sign(x)  # ±1 outside the range
        else:
            inside = (x >= 0) & (x <= q)
            above = (x > q).to(x.dtype)  # 1 above q_max, 0 below zero
        zero = grad.new_zeros(())
        gx = torch.where(inside, grad, zero) if ctx.needs_input_grad[0] else None
        gd = (torch.where(inside, grad * (y - x), zero).sum() / d).reshape(d.shape)
        gq = torch.where(inside, zero, grad * above).sum().reshape(q.shape)
        return gx, gd, gq, None


def dq_quantize(x: Tensor, d: Tensor, q: Tensor, signed: bool) -> Tensor:
    """The DQ uniform quantizer Q(x; d, q_max) (signed or unsigned) with the paper's straight-through gradients."""
    return _DQQuantize.apply(x, d, q, signed)


class DQQuantizer(nn.Module):
    """Learned step size ``d`` and dynamic range ``q`` (= q_max), per tensor; the bit-width derives from them.

    ``signed=None`` decides signedness on the first batch (any negative value → signed). Before its first forward
    the quantizer is initialised at ``init_bits`` by :meth:`initialize` (``rule="max"``: q_max = max|v|;
    ``rule="mean"``: d = 2·mean|v|/√R, the LSQ rule; the other follows from q_max = R·d). Inputs in float16/bfloat16
    are quantized in float32.
    """

    def __init__(self, *, signed: bool | None, init_bits: int) -> None:
        super().__init__()
        self.auto_signed = signed is None
        self.init_bits = int(init_bits)
        self.d = nn.Parameter(torch.ones(()))
        self.q = nn.Parameter(torch.ones(()))
        self.register_buffer("signed", torch.tensor(bool(signed)))
        self.register_buffer("initialized", torch.tensor(False))
        self._signed, self._ready = bool(signed), False  # mirrors of the buffers (no device sync per forward)

    def extra_repr(self) -> str:
        if not self._ready:
            return f"init_bits={self.init_bits}, uninitialized"
        return f"{'signed' if self._signed else 'unsigned'}, d={self.d.item():.4g}, q_max={self.q.item():.4g}"

    def _sync(self) -> None:
        self._signed, self._ready = bool(self.signed), bool(self.initialized)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # re-read the buffers on the next use

    @property
    def is_signed(self) -> bool:
        if not self._ready:
            self._sync()
        return self._signed

    @torch.no_grad()
    def initialize(self, v: Tensor, rule: str = "mean") -> None:
        """Set signedness (if automatic), d and q_max from ``v`` at ``init_bits``."""
        v = v.detach().float()
        if self.auto_signed:
            self.signed.fill_(bool(v.min() < 0))
        r = max_level(self.init_bits, bool(self.signed))
        if r < 1:
            raise UserError(f"a {'signed' if bool(self.signed) else 'unsigned'} {self.init_bits}-bit DQ quantizer has "
                            "no non-zero level; start from more bits (--hp init_bits=...)")
        if rule == "max":
            q = v.abs().max().clamp_min(D_MIN * r)
            d = q / r
        elif rule == "mean":
            d = (2 * v.abs().mean() / math.sqrt(r)).clamp_min(D_MIN)
            q = d * r
        else:
            raise ValueError(f"unknown initialisation rule {rule!r}")
        self.d.copy_(d)
        self.q.copy_(q)
        self.initialized.fill_(True)
        self._sync()

    def forward(self, v: Tensor) -> Tensor:
        if not self._ready:
            self._sync()
            if not self._ready:
                self.initialize(v, "mean")
        if v.dtype in (torch.float16, torch.bfloat16):
            v = v.float()
        return dq_quantize(v, self.d, self.q, self._signed)

    # -- bits --------------------------------------------------------------------------------------------------
    def bits(self, floor_bits: int = 1) -> int:
        """The current integer bit-width (at least ``floor_bits``)."""
        return integer_bits(self.d.item(), self.q.item(), self.is_signed, floor_bits)

    def continuous_bits(self) -> float:
        return float(continuous_bits(self.d.item(), self.q.item(), self.is_signed))

    def relaxed_bits(self, floor_bits: int) -> Tensor:
        """Differentiable bit-width for the penalty (:func:`relaxed_bits`)."""
        return relaxed_bits(self.d, self.q, self.is_signed, floor_bits)

    # -- the reference code's per-step housekeeping --------------------------------------------------------------
    @torch.no_grad()
    def clip_grads(self) -> None:
        """Clip the gradients of d and q_max to [−d, d] (the reference code's ``clip_quant_grads``)."""
        d = self.d.detach()
        for p in (self.d, self.q):
            if p.grad is not None:
                p.grad.copy_(torch.maximum(torch.minimum(p.grad, d), -d))

    @torch.no_grad()
    def project(self, lo_bits: int, hi_bits: int) -> None:
        """d ≥ D_MIN and q_max ∈ [d · max(R(lo − 1), 1), d · R(hi)]: the bit-width stays within [lo, hi]."""
        signed = self.is_signed
        self.d.clamp_(min=D_MIN)
        r_lo, r_hi = max(max_level(lo_bits - 1, signed), 1.0), max_level(hi_bits, signed)
        self.q.copy_(torch.minimum(torch.maximum(self.q, self.d * r_lo), self.d * r_hi))


class _DQLayer:
    """Mixin over nn.Conv2d / nn.Linear: ``weight_quant`` (signed) and ``act_quant`` (signedness from data)."""

    def __init__(self, *args, init_bits_w: int = 4, init_bits_a: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weight_quant = DQQuantizer(signed=True, init_bits=init_bits_w)
        self.act_quant = DQQuantizer(signed=None, init_bits=init_bits_a)
        self.to(self.weight.device)

    @classmethod
    def from_float(cls, module: nn.Module, init_bits_w: int, init_bits_a: int):
        """A DQ copy of ``module`` (same geometry, copied weight/bias); the weight quantizer is initialised from the
        weight (q_max = max|W|), the activation quantizer on its first forward."""
        new = conv_like(cls, module, init_bits_w=init_bits_w, init_bits_a=init_bits_a)
        new.weight_quant.initialize(new.weight, "max")
        return new

    def quantizers(self) -> tuple[DQQuantizer, DQQuantizer]:
        return self.weight_quant, self.act_quant


class DQConv2d(_DQLayer, nn.Conv2d):
    """nn.Conv2d on DQ-quantized input and weight."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)


class DQLinear(_DQLayer, nn.Linear):
    """nn.Linear on DQ-quantized input and weight."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)


def to_dq_model(model: nn.Module, names: Sequence[str], init_bits_w: int, init_bits_a: int) -> nn.Module:
    """Swap the named Conv2d/Linear of ``model`` for DQ layers, in place (all names checked first)."""
    found = dict(model.named_modules())
    for name in names:
        m = found.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or isinstance(m, _DQLayer):
            raise UserError(f"DQ cannot quantize layer {name!r}: it is not a plain Conv2d/Linear of the model")
    for name in names:
        parent, _, child = name.rpartition(".")
        cls = DQConv2d if isinstance(found[name], nn.Conv2d) else DQLinear
        setattr(model.get_submodule(parent), child, cls.from_float(found[name], init_bits_w, init_bits_a))
    return model


def dq_layers(model: nn.Module) -> dict[str, DQConv2d | DQLinear]:
    """The DQ layers of ``model`` by module name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _DQLayer)}


# ---- the BitOPs penalty -----------------------------------------------------------------------------------------
def bitops_ratio(bits: Mapping[str, tuple[Tensor, Tensor]], macs: Mapping[str, int], budget_bitops_g: float) -> Tensor:
    """g = Σ_l MACs_l · b_w,l · b_a,l / B, with ``bits`` {layer: (b_w, b_a)} tensors and B in GBitOPs."""
    total = sum(macs[n] * bw * ba for n, (bw, ba) in bits.items())
    return total / (budget_bitops_g * 1e9)


def budget_penalty(ratio: Tensor, weight: float) -> Tensor:
    """λ · max(0, g − 1)²: zero inside the budget, the reference code's squared hinge above it."""
    return weight * F.relu(ratio - 1).pow(2)


def model_bitops_ratio(model: nn.Module, macs: Mapping[str, int], budget_bitops_g: float, w_floor: int,
                       a_floor: int) -> Tensor:
    """:func:`bitops_ratio` of a DQ model's relaxed bits (value: the integer bits; gradient: the continuous ones)."""
    bits = {n: (layer.weight_quant.relaxed_bits(w_floor), layer.act_quant.relaxed_bits(a_floor))
            for n, layer in dq_layers(model).items()}
    return bitops_ratio(bits, macs, budget_bitops_g)


# ---- from trained bits to the policy ----------------------------------------------------------------------------
def candidate_costs(bits: int, cont: float, candidates: Sequence[int]) -> dict[int, float]:
    """cost(c) = (c − b)² + 0.1 · (c − b̃)²: minimal at the trained bits b, ordered by the continuous b̃."""
    return {int(c): (c - bits) ** 2 + TIE_WEIGHT * (c - cont) ** 2 for c in candidates}


def trained_bits(model: nn.Module, w_floor: int, a_floor: int) -> dict[str, dict[str, tuple[int, float]]]:
    """{layer: {"w": (b, b̃), "a": (b, b̃)}} of a DQ model."""
    return {n: {"w": (layer.weight_quant.bits(w_floor), layer.weight_quant.continuous_bits()),
                "a": (layer.act_quant.bits(a_floor), layer.act_quant.continuous_bits())}
            for n, layer in dq_layers(model).items()}


def _costs(bits: Mapping[str, Mapping[str, tuple[int, float]]], w_candidates: Sequence[int],
           a_candidates: Sequence[int]) -> dict[str, dict[str, dict[int, float]]]:
    return {n: {"w": candidate_costs(*b["w"], w_candidates), "a": candidate_costs(*b["a"], a_candidates)}
            for n, b in bits.items()}


def rounded_policy(bits: Mapping[str, Mapping[str, tuple[int, float]]], w_candidates: Sequence[int],
                   a_candidates: Sequence[int]) -> dict[str, tuple[int, int]]:
    """The trained policy on the candidates: per layer and side the candidate of least cost (the trained bits when
    they are a candidate), without the budget."""
    out = {}
    for n, c in _costs(bits, w_candidates, a_candidates).items():
        out[n] = (min(c["w"], key=lambda b: (c["w"][b], b)), min(c["a"], key=lambda b: (c["a"][b], b)))
    return out


def dq_policy(bits: Mapping[str, Mapping[str, tuple[int, float]]], macs: Mapping[str, int], budget_bitops_g: float,
              w_candidates: Sequence[int], a_candidates: Sequence[int], floor: float) -> dict[str, tuple[int, int]]:
    """The (w, a) pair per layer minimising Σ_l [cost_l(w) + cost_l(a)] with floor·B ≤ BitOPs ≤ B (exact ILP)."""
    costs = {n: {(w, a): c["w"][w] + c["a"][a] for w in w_candidates for a in a_candidates}
             for n, c in _costs(bits, w_candidates, a_candidates).items()}
    return window_ilp(costs, macs, budget_bitops_g, floor)


def _policy_code(layers: Mapping[str, tuple[int, int]]) -> str:
    return ",".join(f"{w}{a}" for w, a in layers.values())


# ---- the method -------------------------------------------------------------------------------------------------
class DQHparams(BaseModel):
    """Defaults: the reference code's (module docstring); every field is recorded in the policy."""

    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(160, gt=0, description="training epochs over the proxy train split")
    batch_size: int = Field(128, gt=0)
    lr_w: float = Field(0.01, gt=0, description="SGD lr of the network weights")
    lr_q: float = Field(0.01, gt=0, description="SGD lr of every step size d and dynamic range q_max")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(2e-4, ge=0, description="on conv/linear weights only")
    lr_milestones: list[float] = Field([0.5, 0.75], description="fractions of the run where both lrs ×0.1")
    penalty_weight: float = Field(491.4, ge=0, description="λ of λ·max(0, BitOPs/B − 1)² (0.1 per KB² at the "
                                  "reference's 70.1 KB target, on the relative excess)")
    clip_quant_grads: bool = Field(True, description="clip the gradients of d and q_max to [−d, d]")
    init_bits: int | None = Field(None, ge=1, description="bits every quantizer starts at (None: the largest "
                                  "candidate)")


@register_method("dq")
class DQ(Method):
    """DQ: learned (d, q_max) per layer and side, derived bit-widths, BitOPs penalty; budget-matched ILP policy."""

    Hparams = DQHparams
    role = "baseline"
    needs_teacher = True
    teacher_from = "proxy"
    smoke_hparams = {"epochs": 0.3, "batch_size": 64}

    def search(self, ctx: SearchContext, hp: DQHparams) -> SearchOutcome:
        seed_everything(ctx.seed)
        w_lo, w_hi = min(ctx.w_candidates), max(ctx.w_candidates)
        a_lo, a_hi = min(ctx.a_candidates), max(ctx.a_candidates)
        if w_hi < 2:
            raise UserError(f"DQ's weight quantizer is signed and needs at least 2 bits; the weight candidates "
                            f"{ctx.w_candidates} have none")
        init_w = w_hi if hp.init_bits is None else min(max(hp.init_bits, w_lo), w_hi)
        init_a = a_hi if hp.init_bits is None else min(max(hp.init_bits, a_lo), a_hi)

        model = ctx.load_teacher("DQ FP start model")
        to_dq_model(model, ctx.searchable, max(init_w, 2), init_a)
        model.train()
        layers = dq_layers(model)
        bounds = [(layer.weight_quant, w_lo, w_hi) for layer in layers.values()] + \
                 [(layer.act_quant, a_lo, a_hi) for layer in layers.values()]
        q_params = [p for qz, _, _ in bounds for p in (qz.d, qz.q)]
        q_ids = {id(p) for p in q_params}
        weights = [p for p in model.parameters() if id(p) not in q_ids]
        opt_w = torch.optim.SGD([{"params": [p for p in weights if p.ndim > 1], "weight_decay": hp.weight_decay},
                                 {"params": [p for p in weights if p.ndim <= 1], "weight_decay": 0.0}],
                                lr=hp.lr_w, momentum=hp.momentum)
        opt_q = torch.optim.SGD(q_params, lr=hp.lr_q, momentum=hp.momentum)
        optimizers = [opt_w, opt_q]
        base_lrs = [[g["lr"] for g in o.param_groups] for o in optimizers]

        steps_per_epoch = len(make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=0))
        total_steps = max(1, math.ceil(hp.epochs * steps_per_epoch))
        milestones = [int(m * total_steps) for m in hp.lr_milestones]
        record_every = max(1, steps_per_epoch // 4)

        def project() -> None:
            for qz, lo, hi in bounds:
                qz.project(lo, hi)

        def bits_now() -> dict[str, dict[str, tuple[int, float]]]:
            return trained_bits(model, w_lo, a_lo)

        step, epoch = 0, 0
        history: list[dict[str, Any]] = []
        state = ctx.resume_state()
        if state is not None:
            model.load_state_dict(state["model"])
            for o, s in zip(optimizers, state["optimizers"]):
                o.load_state_dict(s)
            step, epoch = state["step"], state["epoch"]
            ctx.meter.load_state_dict(state["meter"])
            torch.set_rng_state(state["rng"])
            history = json.loads(state.get("history", "[]"))
        else:
            # Activation quantizers initialise (and decide their sign) on their first batch: one metered forward
            # without a parameter update.
            first_x, _ = next(iter(make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True,
                                               seed=ctx.seed)))
            with ctx.meter.step(batch_size=first_x.shape[0], kind="calibrate"), torch.no_grad():
                with autocast_for(ctx.device, ctx.precision):
                    model(first_x.to(ctx.device))
            project()

        pbar = tqdm(total=total_steps, initial=step, desc=f"search {self.name}", disable=not ctx.progress,
                    leave=False)
        while step < total_steps:
            loader = make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True,
                                 seed=ctx.seed * 100_003 + epoch)
            for x, y in loader:
                if step >= total_steps:
                    break
                factor = 0.1 ** sum(step >= m for m in milestones)
                for o, lrs in zip(optimizers, base_lrs):
                    for g, lr in zip(o.param_groups, lrs):
                        g["lr"] = lr * factor
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                with ctx.meter.step(batch_size=x.shape[0]):
                    for o in optimizers:
                        o.zero_grad(set_to_none=True)
                    with autocast_for(ctx.device, ctx.precision):
                        logits = model(x)
                    ce = F.cross_entropy(logits.float(), y)
                    ratio = model_bitops_ratio(model, ctx.target_macs, ctx.budget_bitops_g, w_lo, a_lo)
                    penalty = budget_penalty(ratio, hp.penalty_weight)
                    loss = ce + penalty
                    loss.backward()
                    loss, ce, penalty = loss.detach(), ce.detach(), penalty.detach()
                    if not math.isfinite(float(loss)):
                        raise UserError(f"the DQ loss is {float(loss)} at step {step + 1} of {total_steps}; the "
                                        "search diverged — lower the learning rates (--hp lr_w=..., lr_q=...)")
                    if hp.clip_quant_grads:
                        for qz, _, _ in bounds:
                            qz.clip_grads()
                    opt_w.step()
                    opt_q.step()
                    project()
                step += 1
                pbar.update(1)
                if step % record_every == 0 or step == total_steps:
                    rounded = rounded_policy(bits_now(), ctx.w_candidates, ctx.a_candidates)
                    history.append({"step": step, "macs": float(ctx.meter.macs_processed), "loss": float(loss),
                                    "ce": float(ce), "penalty": float(penalty),
                                    "bitops_ratio": ctx.bitops_g(rounded) / ctx.budget_bitops_g,
                                    "policy": _policy_code(rounded)})
            epoch += 1
            if step < total_steps:
                ctx.save_state({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                                "step": step, "epoch": epoch, "meter": ctx.meter.state_dict(),
                                "rng": torch.get_rng_state(), "history": json.dumps(history)})
        pbar.close()

        bad = [n for n, layer in layers.items()
               if not all(math.isfinite(p.item()) for qz in layer.quantizers() for p in (qz.d, qz.q))]
        if bad:
            raise UserError(f"DQ's step sizes or ranges are not finite ({len(bad)} layers, e.g. {bad[0]}); the "
                            "search diverged — lower the learning rates (--hp lr_w=..., lr_q=...)")
        bits = bits_now()
        raw = rounded_policy(bits, ctx.w_candidates, ctx.a_candidates)
        policy = dq_policy(bits, ctx.target_macs, ctx.budget_bitops_g, ctx.w_candidates, ctx.a_candidates,
                           ctx.budget_floor)
        policy = {n: policy[n] for n in layers}
        ctx.clear_state()
        settled = settle_point(history)
        learned = {n: {"w": {"d": layer.weight_quant.d.item(), "q_max": layer.weight_quant.q.item(),
                             "bits": bits[n]["w"][0], "bits_continuous": round(bits[n]["w"][1], 6)},
                       "a": {"d": layer.act_quant.d.item(), "q_max": layer.act_quant.q.item(),
                             "signed": layer.act_quant.is_signed,
                             "bits": bits[n]["a"][0], "bits_continuous": round(bits[n]["a"][1], 6)}}
                   for n, layer in layers.items()}
        return SearchOutcome(
            layers=policy, epochs=total_steps / steps_per_epoch,
            extra={"raw_policy": {n: list(v) for n, v in raw.items()},
                   "raw_bitops_g": ctx.bitops_g(raw), "raw_budget_used": ctx.bitops_g(raw) / ctx.budget_bitops_g,
                   "ilp_changed_layers": sum(policy[n] != raw[n] for n in policy), "learned": learned,
                   "history": history},
            settled_step=settled[0] if settled else None, settled_macs=settled[1] if settled else None,
            extraction="ilp", entropy=None, trace=[{k: v for k, v in h.items() if k != "policy"} for h in history],
        )
