"""HMQ (Habi, Jennings & Netzer, *HMQ: Hardware Friendly Mixed Precision Quantization Block for CNNs*, ECCV 2020).

Reference code: ``sony-si/ai-research``, folder ``HMQ`` (PyTorch; ``networks/layers/quantization.py``,
``networks/layers/gumbel_softmax.py``, ``common/annealing_functions.py``, ``training/training_functions.py``,
``main.py``). docs/methods.md, "HMQ", has the equations, the defaults and the measurements.

**The HMQ block.** Every quantized tensor of a searchable layer — its weight and its input activation — gets a
block with a search matrix π of logits over the pairs (b, t): b a bit-width candidate, t a power-of-two
threshold t_j = 2^(M − j), j = 0 … n_t − 1 (``n_thresholds``, 8). M is set once from the FP tensor:
``⌈log2 max|W|⌉ + 1`` for a weight (the code's extra doubling), ``⌈log2 m̂⌉`` for an activation, m̂ the IIR
estimate m̂ ← m̂ + α (max|x| − m̂) (α = ``iir_alpha`` = 0.9, from m̂ = 0) over a calibration pass of the FP
start model on the proxy (``calib_batches``; default one pass, as the code). A pair quantizes with the
uniform b-bit grid of threshold t:

    Q(x; b, t) = Δ · clip(⌊x/Δ⌉, −s·q, q − 1),   Δ = t / 2^(b−s),  q = t/Δ = 2^(b−s)

(s = 1 for signed tensors — weights, and activations where calibration saw a negative value — else 0), with
the straight-through estimator for ⌊·⌉. In training the block draws a Gumbel-softmax sample over the pairs,
ĝ = softmax((log softmax(π) + G)/τ), G_k = −log(−log(U_k + ε) + ε), ε = 1e-6, one sample per image for an
activation and one per input channel for a weight (the code's sampling axes); with ``hard=True`` the sample is
one-hot forward with the soft gradient (the code's ``--gumbel_ste``, off by default). As in the paper and the
code, the sample estimates the quantizer's *parameters*, not a mixture of quantizer outputs:

    Δ̂ = Σ_(b,t) ĝ_(b,t) Δ_(b,t),   t̂ = Σ_(b,t) ĝ_(b,t) t,   output = Q with Δ̂ and q̂ = t̂/Δ̂,

so a one-hot sample gives exactly Q(x; b, t) of its pair. In evaluation (and in the published read-out) the
block uses the pair of the noise-free distribution: b* = argmax_b Σ_t p(b, t), then t* = argmax_t p(b*, t).

**Temperature.** τ(i) = max(τ_min, τ_0 · exp(−r · round(i · N_τ / S))) at search step i, S steps per epoch:
τ_0 = 1, τ_min = 0.5, r = 0.01, N_τ = 25 decrements per epoch (the code's ``temp_step`` and ``n_gumbel``), so τ
reaches 0.5 after ≈ 2.8 epochs. ``temp_cycle_epochs`` restarts the schedule every that many epochs (the code's
5-epoch cycle; off by default).

**Loss (the paper's target-compression term on BitOPs).** The code adds γ · relu((T − R)/T)^ρ to the cross
entropy, R the expected weight compression (FP size over expected quantized size), T its target. Written
with expected BitOPs C = Σ_l MACs_l · E[b_w,l] · E[b_a,l] (MACs of the target geometry; E[b] = Σ_b b Σ_t p(b, t),
noise-free) in place of the expected size and the budget B in place of the target size, (T − R)/T = 1 − B/C:

    L = CE + γ · max(0, 1 − B/C)^ρ,   γ = 32, ρ = 2 (the code's ``--gamma``, ``--gamma_rate``):

zero inside the budget, positive above it, bounded by γ as C → ∞ (``constraint_loss``).

**Optimisation** (the code's): weights and logits trained jointly on the same batches, RAdam for both; the
network's parameters at ``lr_w`` = 1e-5 with weight decay 1e-4, the logits at ``lr_hmq`` = 0.01 without; no
learning-rate schedule. The logits start as −U[0, 1) with the pair (highest bit-width, largest threshold) set
to log(p·n/(1 − p)), n the number of pairs, p = ``p_init`` = 0.95. Search from the FP model pretrained on the
proxy (``needs_teacher``; the paper starts from pretrained weights). Defaults: ``epochs`` 30, ``batch_size``
256 (the code's; the workflow passes the suite's).

**Policy.** The published read-out is b* per tensor (``extraction="argmax"``: then the harness's greedy repair
if over budget). By default (``extraction="ilp"``) the per-layer log-marginals log Σ_t p(b, t) of the weight and
activation blocks are the preferences of the budget-matched extraction (:mod:`mpqbench.search.extract`), so the
policy spends 90–100 % of the budget. The argmax policy is recorded every quarter epoch (settle point).

**Deviations from the paper / code.** (1) Activation bit-widths are searched by the same block as weights;
the code fixes each activation's bit-width by a rule from tensor sizes and a max-activation compression target
and searches only its threshold — that rule has no BitOPs counterpart. (2) The target is the budget from the
first step; the code steps its compression target from 4× to the target over four 5-epoch cycles, which a
5-epoch search would never leave. (3) The b-bit grid [−s·2^(b−1), 2^(b−s) − 1]·Δ; the code clips to
[−(q−1)·s, q]·Δ, one level more than b bits for unsigned tensors. (4) Activation maxima are read from the FP
model in eval mode (the code reads them with its 8-bit start quantizers in place). (5) Thresholds are chosen
during the search but not carried to the fine-tune: the harness's common LSQ fine-tune learns its own steps
(the chosen exponents are recorded in the outcome's ``readout``). (6) The stem and classifier stay FP during
the search (the harness fixes them at W8A8 for deployment). (7) The Gumbel noise is drawn from the CPU
generator whatever the device (identical samples on CPU and GPU for a seed, exact resumes).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from mpqbench.data import make_loader
from mpqbench.errors import UserError
from mpqbench.quant.layers import conv_like
from mpqbench.search import Method, SearchContext, SearchOutcome, register_method, settle_point
from mpqbench.search.extract import entropies, extract
from mpqbench.train import autocast_for
from mpqbench.utils import seed_everything

GUMBEL_EPS = 1e-6  # the code's ε inside both logarithms of the Gumbel noise
WEIGHT_EXTRA_EXPONENT = 1  # the code's largest weight threshold: 2^(⌈log2 max|W|⌉ + 1)


class HmqHparams(BaseModel):
    """Defaults are the reference code's (``main.py``); every field is recorded in the policy."""

    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(30, gt=0, description="search epochs over the proxy train split (code: --n_epochs)")
    batch_size: int = Field(256, gt=0)
    lr_w: float = Field(1e-5, ge=0, description="RAdam lr of the network's parameters (code: --lr_start)")
    lr_hmq: float = Field(0.01, ge=0, description="RAdam lr of the HMQ logits (code: --lr_coefficient/--lr_activation)")
    weight_decay: float = Field(1e-4, ge=0, description="on the network's parameters (code: --weight_decay)")
    gamma: float = Field(32.0, ge=0, description="γ of the BitOPs constraint term (code: --gamma)")
    gamma_rate: float = Field(2.0, ge=1, description="power ρ of the constraint term (code: --gamma_rate)")
    n_thresholds: int = Field(8, ge=1, description="power-of-two thresholds per block (code: --n_thresholds_shifts)")
    p_init: float = Field(0.95, gt=0, lt=1, description="initial probability of (highest bits, largest threshold)")
    tau0: float = Field(1.0, gt=0, description="initial Gumbel-softmax temperature")
    tau_min: float = Field(0.5, gt=0, description="temperature floor")
    temp_step: float = Field(0.01, ge=0, description="r: τ = τ0·exp(−r·k) after k decrements (code: --temp_step)")
    temp_steps_per_epoch: float = Field(25, gt=0, description="temperature decrements per epoch (code: --n_gumbel)")
    temp_cycle_epochs: float | None = Field(None, gt=0, description="restart τ every that many epochs (code: 5; off)")
    hard: bool = Field(False, description="one-hot Gumbel samples with the soft gradient (code: --gumbel_ste)")
    iir_alpha: float = Field(0.9, gt=0, le=1, description="IIR factor of the activation-max estimate")
    calib_batches: int | None = Field(None, gt=0, description="calibration batches for activation maxima (None: one pass)")
    extraction: Literal["ilp", "argmax"] = Field(
        "ilp", description="ilp: most probable policy inside the budget window (default); argmax: published")


# ------------------------------------------------------------------------------------------ schedules and losses
def temperature(step: int, steps_per_epoch: int, *, tau0: float = 1.0, tau_min: float = 0.5, temp_step: float = 0.01,
                per_epoch: float = 25, cycle_epochs: float | None = None) -> float:
    """τ at search step ``step``: max(τ_min, τ0·exp(−r·round(i·N_τ/S))), i the step within its cycle."""
    i = step
    if cycle_epochs:
        i = step % max(1, round(cycle_epochs * steps_per_epoch))
    k = round(i * per_epoch / steps_per_epoch)  # half to even, as the code's np.round
    return max(tau_min, tau0 * math.exp(-temp_step * k))


def constraint_loss(ratio: Tensor, gamma: float = 32.0, rate: float = 2.0) -> Tensor:
    """γ · max(0, 1 − B/C)^ρ for ``ratio`` = C/B (expected BitOPs over the budget): the paper's
    γ · relu((T − R)/T)^ρ with the compression R = FP/C and its target T = FP/B."""
    return gamma * torch.relu(1 - 1 / ratio).pow(rate)


def top_exponent(max_abs: float, extra: int = 0) -> int:
    """M of the largest threshold 2^M: ⌈log2 max_abs⌉ + extra (a zero tensor counts as 2^-24)."""
    return int(math.ceil(math.log2(max(float(max_abs), 2.0 ** -24)))) + extra


def iir_max(maxima: Iterable[float], alpha: float = 0.9, start: float = 0.0) -> float:
    """The code's running estimate m ← m + α (max − m) over per-batch maxima, from ``start``."""
    m = start
    for v in maxima:
        m += alpha * (float(v) - m)
    return m


def uniform_quantize(x: Tensor, delta: Tensor, top: Tensor, signed: Tensor) -> Tensor:
    """Δ · clip(⌊x/Δ⌉, −s·q, q − 1) with q = top/Δ, STE for ⌊·⌉; delta/top broadcast against x, signed is 0/1."""
    q = top / delta
    v = x / delta
    r = v + (torch.round(v) - v).detach()
    r = torch.minimum(torch.maximum(r, -q * signed), q - 1)
    return r * delta


# ------------------------------------------------------------------------------------------ the HMQ block
class HmqQuantizer(nn.Module):
    """One HMQ block: logits over (bit-width, power-of-two threshold) pairs of one tensor.

    ``sample_dim``: the axis with one Gumbel sample per index (0: per image for activations; 1: per input
    channel for weights). ``tau`` is set by the search (:func:`set_temperature`); in eval mode, or with
    ``tau`` ≤ 0, the block quantizes with the most probable pair of the noise-free distribution.
    """

    def __init__(self, bits: list[int], n_thresholds: int, *, signed: bool, sample_dim: int) -> None:
        super().__init__()
        if not bits or n_thresholds < 1:
            raise ValueError("an HMQ block needs at least one bit-width and one threshold")
        self.bits = sorted(int(b) for b in bits)
        self.n_thresholds, self.sample_dim = int(n_thresholds), sample_dim
        self.tau, self.hard = 1.0, False
        self.logits = nn.Parameter(torch.zeros(len(self.bits), self.n_thresholds))
        self.register_buffer("bits_t", torch.tensor(self.bits, dtype=torch.float32))
        self.register_buffer("top", torch.tensor(0.0))  # M: thresholds 2^(M − j)
        self.register_buffer("signed", torch.tensor(float(signed)))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, n_thresholds={self.n_thresholds}, sample_dim={self.sample_dim}"

    # ---- the search space
    def set_top(self, exponent: int) -> None:
        self.top.fill_(float(exponent))

    def thresholds(self) -> Tensor:
        """[n_t]: 2^M, 2^(M−1), …"""
        j = torch.arange(self.n_thresholds, dtype=torch.float32, device=self.top.device)
        return torch.pow(2.0, self.top - j)

    def pair_steps(self) -> tuple[Tensor, Tensor]:
        """(Δ [n_b·n_t], t [n_b·n_t]) of every pair, bit-major (the order of ``logits.flatten()``)."""
        t = self.thresholds()
        delta = t.unsqueeze(0) / torch.pow(2.0, self.bits_t - self.signed).unsqueeze(1)
        return delta.flatten(), t.expand(len(self.bits), -1).flatten()

    @torch.no_grad()
    def init_logits(self, p_init: float) -> None:
        """−U[0, 1) everywhere (torch's global generator), the (highest bits, largest threshold) pair at
        log(p·n/(1 − p)), n = number of pairs: the code's start, p ≈ p_init on that pair."""
        n = self.logits.numel()
        self.logits.copy_(-torch.rand(self.logits.shape).to(self.logits.device))
        self.logits[len(self.bits) - 1, 0] = math.log(p_init * n / (1 - p_init))

    # ---- distributions
    def pair_log_probs(self) -> Tensor:
        return torch.log_softmax(self.logits.flatten(), 0).view_as(self.logits)

    def bit_log_probs(self) -> Tensor:
        """[n_b]: log Σ_t p(b, t) (noise-free)."""
        return torch.logsumexp(self.pair_log_probs(), dim=1)

    def expected_bits(self) -> Tensor:
        return (self.bit_log_probs().exp() * self.bits_t).sum()

    def argmax_index(self) -> Tensor:
        """Flat index of the published read-out: b* = argmax of the bit marginal, t* = argmax_t p(b*, t)."""
        bi = self.bit_log_probs().argmax()
        return bi * self.n_thresholds + self.logits[bi].argmax()

    def argmax_pair(self) -> tuple[int, int]:
        """(b*, exponent of t*)."""
        k = int(self.argmax_index())
        return self.bits[k // self.n_thresholds], int(self.top.item()) - k % self.n_thresholds

    # ---- sampling and quantizing
    def sample(self, n: int, tau: float, hard: bool = False) -> Tensor:
        """[n, n_pairs] Gumbel-softmax samples (noise from the CPU generator)."""
        u = torch.rand(n, self.logits.numel()).to(self.logits.device)
        g = -torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)
        y = torch.softmax((self.pair_log_probs().flatten() + g) / tau, dim=-1)
        if hard:
            one = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
            y = one + (y - y.detach())  # exactly one-hot forward, the soft sample's gradient
        return y

    def quantize_with(self, x: Tensor, y: Tensor) -> Tensor:
        """Quantize ``x`` with the parameters estimated by the samples ``y`` [n, n_pairs] (n = 1 or x's size
        along ``sample_dim``): Δ̂ = y·Δ, t̂ = y·t."""
        delta, t = self.pair_steps()
        d_hat, t_hat = y @ delta, y @ t
        shape = [1] * x.dim()
        shape[self.sample_dim] = -1
        return uniform_quantize(x, d_hat.view(shape), t_hat.view(shape), self.signed)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.training and self.tau > 0:
            y = self.sample(x.shape[self.sample_dim], self.tau, self.hard)
        else:
            y = F.one_hot(self.argmax_index(), self.logits.numel()).to(x.dtype).unsqueeze(0)
        return self.quantize_with(x, y)


class _HmqLayer:
    """Mixin over nn.Conv2d / nn.Linear: ``wq`` (signed, samples per input channel) on the weight, ``aq``
    (samples per image; signedness from calibration) on the input."""

    def __init__(self, *args, w_candidates: list[int], a_candidates: list[int], n_thresholds: int = 8,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.wq = HmqQuantizer(w_candidates, n_thresholds, signed=True, sample_dim=1)
        self.aq = HmqQuantizer(a_candidates, n_thresholds, signed=False, sample_dim=0)
        self.to(self.weight.device)

    def expected_bits(self) -> tuple[Tensor, Tensor]:
        return self.wq.expected_bits(), self.aq.expected_bits()

    def argmax_bits(self) -> tuple[int, int]:
        return self.wq.argmax_pair()[0], self.aq.argmax_pair()[0]


class HmqConv2d(_HmqLayer, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.aq(x), self.wq(self.weight), self.bias)


class HmqLinear(_HmqLayer, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.aq(x), self.wq(self.weight), self.bias)


def build_hmq(model: nn.Module, names: list[str], w_candidates: list[int], a_candidates: list[int],
              n_thresholds: int) -> dict[str, _HmqLayer]:
    """Swap the named Conv2d/Linear of ``model`` for HMQ layers (weights copied), in place; returns them."""
    found = dict(model.named_modules())
    for name in names:
        m = found.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or isinstance(m, _HmqLayer):
            raise UserError(f"HMQ cannot quantize layer {name!r}: name a plain Conv2d/Linear of the model")
    for name in names:
        m = found[name]
        cls = HmqConv2d if isinstance(m, nn.Conv2d) else HmqLinear
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, conv_like(cls, m, w_candidates=w_candidates,
                                                              a_candidates=a_candidates, n_thresholds=n_thresholds))
    return hmq_layers(model)


def hmq_layers(model: nn.Module) -> dict[str, _HmqLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _HmqLayer)}


def set_temperature(model: nn.Module, tau: float, hard: bool = False) -> None:
    for m in model.modules():
        if isinstance(m, HmqQuantizer):
            m.tau, m.hard = tau, hard


def expected_bitops_ratio(layers: dict[str, _HmqLayer], macs: dict[str, int], budget_bitops_g: float) -> Tensor:
    """C/B: Σ_l MACs_l·E[b_w,l]·E[b_a,l] over the budget (differentiable in the logits)."""
    total = sum(macs[n] * e_w * e_a for n, (e_w, e_a) in ((n, layer.expected_bits()) for n, layer in layers.items()))
    return total / (budget_bitops_g * 1e9)


@torch.no_grad()
def calibrate(model: nn.Module, names: list[str], batches: Iterable[Tensor], *, alpha: float = 0.9,
              meter=None) -> dict[str, tuple[float, bool]]:
    """Per named layer, (IIR estimate of max|input|, whether an input was negative) over ``batches`` of the
    model in eval mode; every forward inside ``meter.step(kind="calib")`` when a meter is given."""
    model.eval()
    seen: dict[str, tuple[float, bool]] = {}
    est = {n: 0.0 for n in names}
    neg = {n: False for n in names}

    def hook(name):
        def fn(_m, inputs):
            x = inputs[0].detach()
            seen[name] = (float(x.abs().max()), bool((x < 0).any()))
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for x in batches:
            seen.clear()
            if meter is not None:
                with meter.step(batch_size=x.shape[0], kind="calib"):
                    model(x)
            else:
                model(x)
            for n in names:
                m, is_neg = seen[n]
                est[n] = iir_max([m], alpha, start=est[n])
                neg[n] = neg[n] or is_neg
    finally:
        for h in handles:
            h.remove()
    return {n: (est[n], neg[n]) for n in names}


def _argmax_code(layers: dict[str, _HmqLayer]) -> str:
    return ",".join(f"{w}{a}" for w, a in (layer.argmax_bits() for layer in layers.values()))


# ------------------------------------------------------------------------------------------ the method
@register_method("hmq")
class Hmq(Method):
    """HMQ blocks on every searchable weight and activation, joint RAdam training, BitOPs target term."""

    Hparams = HmqHparams
    needs_teacher = True
    teacher_from = "proxy"
    smoke_hparams = {"epochs": 0.3, "batch_size": 64, "calib_batches": 1}

    def search(self, ctx: SearchContext, hp: HmqHparams) -> SearchOutcome:
        seed_everything(ctx.seed)
        if hp.tau_min > hp.tau0:
            raise UserError(f"tau_min {hp.tau_min} is above tau0 {hp.tau0}; the temperature only decays")
        model = ctx.load_teacher("HMQ's FP start model")
        steps_per_epoch = len(make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=0))
        total_steps = max(1, math.ceil(hp.epochs * steps_per_epoch))
        state = ctx.resume_state()

        stats = None
        if state is None:  # activation maxima of the FP model (metered), before any layer is swapped
            loader = make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=ctx.seed)
            n_calib = len(loader) if hp.calib_batches is None else min(hp.calib_batches, len(loader))
            batches = (x.to(ctx.device) for i, (x, _) in zip(range(n_calib), loader))
            stats = calibrate(model, ctx.searchable, batches, alpha=hp.iir_alpha, meter=ctx.meter)
        layers = build_hmq(model, ctx.searchable, ctx.w_candidates, ctx.a_candidates, hp.n_thresholds)
        if stats is not None:
            for name, layer in layers.items():
                layer.wq.set_top(top_exponent(layer.weight.detach().abs().max().item(), WEIGHT_EXTRA_EXPONENT))
                m_hat, negative = stats[name]
                layer.aq.set_top(top_exponent(m_hat))
                layer.aq.signed.fill_(float(negative))
                layer.wq.init_logits(hp.p_init)
                layer.aq.init_logits(hp.p_init)
        model.train()

        logits = [p for layer in layers.values() for p in (layer.wq.logits, layer.aq.logits)]
        ids = {id(p) for p in logits}
        net = [p for p in model.parameters() if id(p) not in ids]
        opt_w = torch.optim.RAdam(net, lr=hp.lr_w, weight_decay=hp.weight_decay)
        opt_h = torch.optim.RAdam(logits, lr=hp.lr_hmq, weight_decay=0.0)
        optimizers = [opt_w, opt_h]

        step, epoch = 0, 0
        history: list[dict[str, Any]] = []
        if state is not None:
            model.load_state_dict(state["model"])
            for o, s in zip(optimizers, state["optimizers"]):
                o.load_state_dict(s)
            step, epoch = state["step"], state["epoch"]
            ctx.meter.load_state_dict(state["meter"])
            torch.set_rng_state(state["rng"])
            history = json.loads(state.get("history", "[]"))

        def tau_at(i: int) -> float:
            return temperature(i, steps_per_epoch, tau0=hp.tau0, tau_min=hp.tau_min, temp_step=hp.temp_step,
                               per_epoch=hp.temp_steps_per_epoch, cycle_epochs=hp.temp_cycle_epochs)

        pbar = tqdm(total=total_steps, initial=step, desc=f"search {self.name}", disable=not ctx.progress, leave=False)
        while step < total_steps:
            loader = make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=ctx.seed * 100_003 + epoch)
            for x, y in loader:
                if step >= total_steps:
                    break
                tau = tau_at(step)
                set_temperature(model, tau, hp.hard)
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                with ctx.meter.step(batch_size=x.shape[0]):
                    for o in optimizers:
                        o.zero_grad(set_to_none=True)
                    with autocast_for(ctx.device, ctx.precision):
                        out = model(x)
                    ratio = expected_bitops_ratio(layers, ctx.target_macs, ctx.budget_bitops_g)
                    loss = F.cross_entropy(out.float(), y) + constraint_loss(ratio, hp.gamma, hp.gamma_rate)
                    loss.backward()
                    loss = loss.detach()
                    if not math.isfinite(float(loss)):
                        raise UserError(f"the HMQ search loss is {float(loss)} at step {step + 1} of {total_steps}; "
                                        "the search diverged — lower the learning rates (--hp lr_w=..., lr_hmq=...)")
                    for o in optimizers:
                        o.step()
                step += 1
                pbar.update(1)
                if step % max(1, steps_per_epoch // 4) == 0 or step == total_steps:
                    with torch.no_grad():
                        r = float(expected_bitops_ratio(layers, ctx.target_macs, ctx.budget_bitops_g))
                    history.append({"step": step, "loss": float(loss), "bitops_ratio": r, "tau": tau,
                                    "macs": float(ctx.meter.macs_processed), "policy": _argmax_code(layers)})
            epoch += 1
            if step < total_steps:
                ctx.save_state({"model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                                "step": step, "epoch": epoch, "meter": ctx.meter.state_dict(),
                                "rng": torch.get_rng_state(), "history": json.dumps(history)})
        pbar.close()

        bad = [n for n, layer in layers.items()
               if not (torch.isfinite(layer.wq.logits).all() and torch.isfinite(layer.aq.logits).all())]
        if bad:
            raise UserError(f"the HMQ logits are not finite ({len(bad)} layers, e.g. {bad[0]}); the search "
                            "diverged — lower the learning rates (--hp lr_w=..., lr_hmq=...)")
        prefs, probs, readout = {}, {}, {}
        for name, layer in layers.items():
            with torch.no_grad():
                lw = layer.wq.bit_log_probs().double().tolist()
                la = layer.aq.bit_log_probs().double().tolist()
            prefs[name] = {"w": dict(zip(layer.wq.bits, lw)), "a": dict(zip(layer.aq.bits, la))}
            probs[name] = {"w": [round(math.exp(v), 6) for v in lw], "a": [round(math.exp(v), 6) for v in la]}
            (bw, ew), (ba, ea) = layer.wq.argmax_pair(), layer.aq.argmax_pair()
            readout[name] = {"w": bw, "w_threshold_log2": ew, "a": ba, "a_threshold_log2": ea,
                             "a_signed": bool(layer.aq.signed.item())}
        argmax_layers = {n: layer.argmax_bits() for n, layer in layers.items()}
        raw_bitops_g = ctx.bitops_g(argmax_layers)
        chosen, repaired = extract(prefs, ctx.target_macs, ctx.budget_bitops_g, mode=hp.extraction,
                                   floor=ctx.budget_floor, seed=ctx.seed, order=list(prefs))
        ctx.clear_state()
        settled = settle_point(history)
        trace = [{k: v for k, v in h.items() if k != "policy"} for h in history]
        return SearchOutcome(layers=chosen, epochs=total_steps / steps_per_epoch, repaired=repaired,
                             extra={"raw_bitops_g": raw_bitops_g, "argmax_bitops_g": raw_bitops_g, "history": history,
                                    "probs": probs, "readout": readout,
                                    "final_tau": tau_at(total_steps - 1)},
                             settled_step=settled[0] if settled else None,
                             settled_macs=settled[1] if settled else None,
                             extraction=hp.extraction, entropy=entropies(prefs), trace=trace)
