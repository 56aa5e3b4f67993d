"""LIMPQ (Tang et al., ECCV 2022): learned LSQ step sizes as layer importance, then one ILP.

*Mixed-Precision Neural Network Quantization via Learned Layer-wise Importance*; reference code
``1hunters/LIMPQ`` (``indicators_pretraining/process.py``, ``quan/quantizer/lsq.py``, ``quan/func.py``,
``config_resnet18.yaml``, ``quantization_search/search.py``). The whole baseline is this file.

**Indicators.** The target FP start model (``--teacher``, ``ctx.load_target_fp()``; the paper starts from a
trained model) is rebuilt at the proxy geometry. Every searchable layer l gets one per-tensor LSQ quantizer
per candidate bit-width for its weight, s_l^w(b), and one for its input activation, s_l^a(b) (the layer
quantizes with the quantizers of its current bits; weights signed, activations' signedness from the first
batch); every BatchNorm that follows a searchable layer becomes *switchable*: one copy per bit rank,
selected by that layer's current bits (the code's ``SwithableBatchNorm``). The stem conv and the classifier
stay full precision, as the code's ``excepts``. Weight steps start at max(|μ−3σ|, |μ+3σ|)/2^(b−1) of the
FP weight (the code's ``init_from``), activation steps at LSQ's 2·mean|x|/√Q_P of the first training batch
at each rank (one no-grad forward per rank before the first step, metered as kind ``calibrate``: the values
the code sets in its first step's uniform passes, which see the same network before any update; done
up front so that the untrained indicators and their ILP policy are recorded, ``policy_at_init``). On every
proxy batch (the code's joint training, ``process.train``):

1. for every bit rank r (descending bits), set the whole network to the r-th pair and run forward +
   backward of the label-smoothed cross-entropy (ε = 0.1), accumulating gradients;
2. draw ``mixed_policies`` random per-layer policies (:func:`random_mixed_policy`; the code draws one),
   each one more forward + backward;
3. clip every gradient element to [−1, 1] (``clip_grad_value_``), drop gradients that are exactly zero
   (the code sets them to None, so momentum and weight decay leave those parameters alone), one SGD step.

The pairs are tied by rank: with weight candidates W and activation candidates A sorted descending, rank
r is (W[min(r, |W|−1)], A[min(r, |A|−1)]), r < max(|W|, |A|) — with W = A (the default and the paper's
setting) that is uniform b-bit weights *and* activations, as the code's single ``bits`` per layer. A random
mixed policy draws one rank per searchable layer, uniformly and independently; its BatchNorms follow their
layer's rank. Optimiser (``config_resnet18.yaml`` via timm's ``sgd``): SGD, Nesterov momentum 0.9, weight
decay 2.5e-5 on conv/linear weights only, lr 0.01 cosine-annealed to 1e-5, 5 epochs, batch 256.

**Importance and ILP** (``quantization_search/search.py``). The learned step sizes themselves are the
importance indicators, unscaled: I_l^w(b) = s_l^w(b), I_l^a(b) = s_l^a(b). An indicator that breaks
monotonicity — for consecutive candidates b < b', s(b) < s(b') (a "wired point" of the joint training) —
is penalised so that it is never chosen while any policy without it fits (the code adds 1e8; here
M = 1 + Σ_l (largest − smallest regular cost of l), the smallest penalty with that lexicographic effect,
which keeps the ILP's scaled objective well conditioned). One (w, a) pair per layer by the exact ILP of
:func:`mpqbench.ilp.solve_bit_allocation`:

    minimise Σ_l [I_l^a(a_l) + α · I_l^w(w_l)]   s.t.   floor · B ≤ Σ_l MACs_l · w_l · a_l ≤ B,

α = 2 (the code's ``--alpha``), MACs and the budget B of the target geometry, weights and activations
searched jointly over all |W|·|A| pairs per layer (as the code's x_{l,i,j}).

**Settle point.** Every quarter epoch and at the end the ILP is solved on the current indicators (a few
ms; not a network pass) and the policy recorded; ``settled_step`` is the first snapshot from which it
never changed (:func:`mpqbench.search.settle_point`), so the search is ``iterative``. The outcome's
``extra`` also records the learned and the initial indicators, the ILP policy of the initial ones
(``policy_at_init``), how many layers the training changed (``layers_changed_by_training``), the wired
points and the rank pairs.

Hyper-parameters (defaults = the code's): ``epochs`` 5, ``batch_size`` 256 (the workflow passes the suite's
search epochs and batch size), ``lr`` 0.01, ``min_lr`` 1e-5, ``momentum`` 0.9, ``nesterov`` True,
``weight_decay`` 2.5e-5, ``label_smoothing`` 0.1, ``grad_clip`` 1.0, ``mixed_policies`` 1, ``alpha`` 2.0,
``erase_wired`` True, ``budget_floor`` None (= the suite's window, 0.9 by default).

Deviations from the paper and the code: (1) trained on the proxy (the paper and the code train on the
target's training set); (2) the ILP has a BitOPs lower bound (the window) besides the upper one; no
model-size constraint; (3) the cosine schedule is per step (the code's timm scheduler steps per epoch: the
same curve as a staircase); (4) no clamp of the step to [1e-5, 1] in the forward (the code clamps; the
harness's LSQ quantizer does not, and a clamp at 1 would freeze any activation step that starts above 1);
(5) activation signedness is detected per layer (the code quantizes every activation as unsigned);
(6) unequal W and A candidate sets are tied by rank (above), where the code has one set; (7) the wired-point
penalty is the smallest lexicographic one instead of 1e8; (8) no distributed BN synchronisation, no in-place
distillation (off in the code too). Measured on the default suite (docs/methods.md, "LIMPQ"): 875 G MACs
(4 passes per step), and the joint training changed none of the ILP's decisions — the policy of the initial
step sizes was the final one.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from mpqbench.data import make_loader
from mpqbench.errors import UserError
from mpqbench.ilp import solve_bit_allocation
from mpqbench.quant.layers import conv_like
from mpqbench.quant.lsq import LsqQuantizer
from mpqbench.search import Method, SearchContext, SearchOutcome, register_method, settle_point
from mpqbench.train import autocast_for, default_param_groups

Pair = tuple[int, int]


# ---- the indicator network: per-bit LSQ steps, switchable BatchNorm -----------------------------------------
class _IndicatorLayer:
    """Mixin over nn.Conv2d / nn.Linear: one per-tensor LSQ quantizer per weight candidate
    (``weight_quants``) and per activation candidate (``act_quants``); ``bits`` = (w, a) in use."""

    def __init__(self, *args, w_candidates: Sequence[int], a_candidates: Sequence[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.w_candidates, self.a_candidates = [int(b) for b in w_candidates], [int(b) for b in a_candidates]
        self.weight_quants = nn.ModuleList(LsqQuantizer(b, signed=True) for b in self.w_candidates)
        self.act_quants = nn.ModuleList(LsqQuantizer(b) for b in self.a_candidates)
        self.bits: Pair = (max(self.w_candidates), max(self.a_candidates))
        self.to(self.weight.device)

    @classmethod
    def from_float(cls, module: nn.Module, w_candidates: Sequence[int], a_candidates: Sequence[int]):
        layer = conv_like(cls, module, w_candidates=w_candidates, a_candidates=a_candidates)
        layer.init_weight_steps()
        return layer

    @torch.no_grad()
    def init_weight_steps(self) -> None:
        """The code's weight initialisation: s(b) = max(|μ − 3σ|, |μ + 3σ|) / 2^(b−1) of the FP weight."""
        w = self.weight.detach().float()
        mean, std = w.mean(), w.std()
        spread = torch.maximum((mean - 3 * std).abs(), (mean + 3 * std).abs())
        for b, q in zip(self.w_candidates, self.weight_quants):
            q.initialize(w)  # signedness and the "initialised" flag; the value is replaced below
            q.step.copy_((spread / 2 ** (b - 1)).clamp_min(torch.finfo(torch.float32).eps))

    def quantized_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_bits, a_bits = self.bits
        xq = self.act_quants[self.a_candidates.index(a_bits)](x)
        wq = self.weight_quants[self.w_candidates.index(w_bits)](self.weight)
        return xq, wq

    def steps(self) -> dict[str, dict[int, float]]:
        """The learned step sizes: {"w": {bits: s}, "a": {bits: s}}."""
        return {"w": {b: float(q.step.detach()) for b, q in zip(self.w_candidates, self.weight_quants)},
                "a": {b: float(q.step.detach()) for b, q in zip(self.a_candidates, self.act_quants)}}


class IndicatorConv2d(_IndicatorLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self.quantized_inputs(x)
        return self._conv_forward(xq, wq, self.bias)


class IndicatorLinear(_IndicatorLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, wq = self.quantized_inputs(x)
        return F.linear(xq, wq, self.bias)


class SwitchableBatchNorm(nn.Module):
    """One copy of a BatchNorm per bit rank; ``index`` selects the copy in use (the code's
    ``SwithableBatchNorm``). Every copy starts as the FP model's BatchNorm."""

    def __init__(self, bn: nn.Module, copies: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(copies))
        self.index = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.index](x)


def rank_pairs(w_candidates: Sequence[int], a_candidates: Sequence[int]) -> list[Pair]:
    """The uniform passes' (w, a) pairs, descending: rank r = (W[min(r, |W|−1)], A[min(r, |A|−1)])."""
    w = sorted({int(b) for b in w_candidates}, reverse=True)
    a = sorted({int(b) for b in a_candidates}, reverse=True)
    if not w or not a:
        raise ValueError("LIMPQ needs at least one weight and one activation candidate")
    return [(w[min(r, len(w) - 1)], a[min(r, len(a) - 1)]) for r in range(max(len(w), len(a)))]


def random_mixed_policy(names: Sequence[str], w_candidates: Sequence[int], a_candidates: Sequence[int],
                        seed: int | Sequence[int]) -> dict[str, Pair]:
    """One random mixed-precision policy of the joint training: per layer, a bit rank drawn uniformly and
    independently (numpy's PCG64 seeded by ``seed``, e.g. ``[search seed, step, draw]``), and its pair of
    :func:`rank_pairs` — with W = A one bit-width for weights and activations, as the code's
    ``sample_and_activate_one_sampled_policy``. Only candidates are drawn; the same seed gives the same policy."""
    pairs = rank_pairs(w_candidates, a_candidates)
    ranks = np.random.default_rng(seed).integers(0, len(pairs), size=len(names))
    return {n: pairs[int(r)] for n, r in zip(names, ranks)}


class IndicatorNet:
    """The FP model with indicator layers and switchable BatchNorms, and a way to set a policy."""

    def __init__(self, model: nn.Module, searchable: Sequence[str], w_candidates: Sequence[int],
                 a_candidates: Sequence[int]) -> None:
        self.model = model
        self.w_candidates, self.a_candidates = list(w_candidates), list(a_candidates)
        self.pairs = rank_pairs(w_candidates, a_candidates)
        found = dict(model.named_modules())
        bad = [n for n in searchable if not isinstance(found.get(n), (nn.Conv2d, nn.Linear))]
        if bad:
            raise UserError(f"LIMPQ cannot quantize {bad}: not plain Conv2d/Linear layers of this model")
        # the BatchNorm right after a searchable layer (module order) switches with that layer's bits
        follows: dict[str, str] = {}
        last = None
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                last = name
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and last in searchable and last not in follows:
                follows[last] = name
                last = None
        self.layers: dict[str, _IndicatorLayer] = {}
        for name in searchable:
            m = found[name]
            cls = IndicatorConv2d if isinstance(m, nn.Conv2d) else IndicatorLinear
            self.layers[name] = cls.from_float(m, w_candidates, a_candidates)
            _replace(model, name, self.layers[name])
        self.bns: dict[str, SwitchableBatchNorm] = {}
        for layer_name, bn_name in follows.items():
            self.bns[layer_name] = SwitchableBatchNorm(found[bn_name], len(self.pairs))
            _replace(model, bn_name, self.bns[layer_name])

    def set_policy(self, policy: Mapping[str, Pair]) -> None:
        for name, layer in self.layers.items():
            pair = tuple(policy[name])
            layer.bits = pair
            if name in self.bns:
                self.bns[name].index = self.pairs.index(pair)

    def set_rank(self, rank: int) -> None:
        self.set_policy({n: self.pairs[rank] for n in self.layers})

    def indicators(self) -> dict[str, dict[str, dict[int, float]]]:
        return {n: layer.steps() for n, layer in self.layers.items()}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def joint_step(net: IndicatorNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, mixed_policies: int = 1,
               grad_clip: float = 1.0, seed: int | Sequence[int] = 0) -> list[float]:
    """One step of the joint training on the batch (x, y): forward + backward at every uniform rank (highest
    bits first), then at ``mixed_policies`` random mixed policies (seeded by ``[*seed, draw]``), gradients
    accumulated; every gradient element clipped to ±``grad_clip``, all-zero gradients dropped; one
    ``opt.step()``. Returns the passes' losses."""
    params = [p for group in opt.param_groups for p in group["params"]]
    opt.zero_grad(set_to_none=True)
    losses = []
    for rank in range(len(net.pairs)):
        net.set_rank(rank)
        loss = loss_fn(x, y)
        loss.backward()
        losses.append(float(loss.detach()))
    key = [seed] if isinstance(seed, int) else list(seed)
    for draw in range(mixed_policies):
        net.set_policy(random_mixed_policy(list(net.layers), net.w_candidates, net.a_candidates, [*key, draw]))
        loss = loss_fn(x, y)
        loss.backward()
        losses.append(float(loss.detach()))
    if all(math.isfinite(v) for v in losses):
        torch.nn.utils.clip_grad_value_(params, grad_clip)
        for p in params:  # the code drops all-zero gradients (no momentum or weight-decay step for them)
            if p.grad is not None and not bool(p.grad.any()):
                p.grad = None
        opt.step()
    return losses


# ---- importance → ILP ----------------------------------------------------------------------------------------
def wired_points(steps: Mapping[int, float]) -> set[int]:
    """Bit-widths whose indicator breaks monotonicity: for consecutive candidates b < b', s(b) < s(b')
    marks b (the code's ``pre_process_indicators``, generalised from consecutive integers to the candidates)."""
    bits = sorted(steps)
    return {lo for lo, hi in zip(bits, bits[1:]) if steps[lo] < steps[hi]}


def limpq_costs(indicators: Mapping[str, Mapping[str, Mapping[int, float]]], w_candidates: Sequence[int],
                a_candidates: Sequence[int], *, alpha: float = 2.0,
                erase_wired: bool = True) -> tuple[np.ndarray, list[Pair], dict[str, dict[str, list[int]]]]:
    """ILP cost table [L, |W|·|A|]: I^a(a) + α·I^w(w) per layer and pair (pairs in ``product(W, A)`` order),
    plus M per wired indicator used (M = 1 + Σ_l range of layer l's regular costs: a policy with fewer wired
    choices always costs less). Returns (costs, pairs, wired per layer)."""
    pairs = [(int(w), int(a)) for w in w_candidates for a in a_candidates]
    names = list(indicators)
    regular = np.array([[indicators[n]["a"][a] + alpha * indicators[n]["w"][w] for w, a in pairs] for n in names],
                       dtype=np.float64)
    if not np.isfinite(regular).all():
        raise UserError("LIMPQ's learned step sizes are not finite; the indicator training diverged — lower --hp lr")
    wired = {n: {"w": sorted(wired_points(indicators[n]["w"])), "a": sorted(wired_points(indicators[n]["a"]))}
             for n in names}
    if not erase_wired:
        return regular, pairs, wired
    penalty = 1.0 + float((regular.max(axis=1) - regular.min(axis=1)).sum())
    count = np.array([[(w in wired[n]["w"]) + (a in wired[n]["a"]) for w, a in pairs] for n in names],
                     dtype=np.float64)
    return regular + penalty * count, pairs, wired


def limpq_policy(indicators: Mapping[str, Mapping[str, Mapping[int, float]]], macs: Mapping[str, int],
                 w_candidates: Sequence[int], a_candidates: Sequence[int], budget_bitops_g: float, *,
                 floor: float | None, alpha: float = 2.0, erase_wired: bool = True) -> dict[str, Pair]:
    """The LIMPQ bit allocation: the (w, a) per layer minimising Σ_l [I^a + α·I^w] (wired points penalised)
    under floor·B ≤ Σ_l MACs_l·w_l·a_l/1e9 ≤ B (``macs`` of the target geometry, B in G)."""
    names = list(indicators)
    missing = [n for n in names if n not in macs]
    if missing:
        raise ValueError(f"no MAC count for layers {missing}")
    costs, pairs, _ = limpq_costs(indicators, w_candidates, a_candidates, alpha=alpha, erase_wired=erase_wired)
    per_pair = np.array([w * a for w, a in pairs], dtype=np.float64)
    bitops = np.array([macs[n] for n in names], dtype=np.float64)[:, None] * per_pair[None, :] / 1e9
    lower = floor * budget_bitops_g if floor else None
    choice = solve_bit_allocation(costs, bitops, budget_bitops_g, lower=lower)
    return {n: pairs[int(k)] for n, k in zip(names, choice)}


# ---- the method ----------------------------------------------------------------------------------------------
class LimpqHparams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(5, gt=0, description="indicator training epochs over the proxy")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.01, gt=0, description="SGD lr, cosine-annealed per step to min_lr")
    min_lr: float = Field(1e-5, ge=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = True
    weight_decay: float = Field(2.5e-5, ge=0, description="on conv/linear weights only")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0, description="clip every gradient element to [-grad_clip, grad_clip]")
    mixed_policies: int = Field(1, ge=0, description="random mixed policies per batch, after the uniform passes")
    alpha: float = Field(2.0, ge=0, description="ILP weight of the weight indicators against the activation ones")
    erase_wired: bool = Field(True, description="never choose an indicator that breaks monotonicity in the bits "
                              "unless the budget forces it")
    budget_floor: float | None = Field(None, ge=0, le=1, description="spend at least this fraction of the budget; "
                                       "None = the suite's budget window (--budget-floor, 0.9 by default)")


def _policy_code(policy: Mapping[str, Pair]) -> str:
    return ",".join(f"{w}{a}" for w, a in policy.values())


@register_method("limpq")
class Limpq(Method):
    """Per-bit LSQ step sizes trained jointly on the proxy from the target FP model, then one ILP."""

    Hparams = LimpqHparams
    needs_teacher = True
    teacher_from = "target"
    iterative = True  # the ILP policy is recorded every quarter epoch: settle point
    smoke_hparams = {"epochs": 0.3, "batch_size": 64}

    def search(self, ctx: SearchContext, hp: LimpqHparams) -> SearchOutcome:
        floor = ctx.budget_floor if hp.budget_floor is None else hp.budget_floor
        model = ctx.load_target_fp("LIMPQ start model (target FP)")
        net = IndicatorNet(model, ctx.searchable, ctx.w_candidates, ctx.a_candidates)
        model.to(ctx.device).train()

        opt = torch.optim.SGD(default_param_groups(model, hp.weight_decay), lr=hp.lr, momentum=hp.momentum,
                              nesterov=hp.nesterov and hp.momentum > 0)
        steps_per_epoch = len(make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=0))
        total_steps = max(1, math.ceil(hp.epochs * steps_per_epoch))
        every = max(1, steps_per_epoch // 4)

        def policy_now() -> dict[str, Pair]:
            return limpq_policy(net.indicators(), ctx.target_macs, ctx.w_candidates, ctx.a_candidates,
                                ctx.budget_bitops_g, floor=floor, alpha=hp.alpha, erase_wired=hp.erase_wired)

        step, epoch = 0, 0
        history: list[dict[str, Any]] = []
        state = ctx.resume_state()
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step, epoch = state["step"], state["epoch"]
            ctx.meter.load_state_dict(state["meter"])
            history = json.loads(state["history"])
            init = json.loads(state["init"], object_hook=_int_keys)
            init_policy = {n: tuple(p) for n, p in json.loads(state["init_policy"]).items()}
        else:
            # The activation steps are initialised from the first training batch, at every rank (the code does it
            # in the first step's uniform passes, before any update: the same values). Done here in one forward
            # per rank so that the untrained indicators and their ILP policy can be recorded.
            x0, _ = next(iter(make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True,
                                          seed=ctx.seed * 100_003)))
            with ctx.meter.step(batch_size=x0.shape[0], kind="calibrate"), torch.no_grad():
                for rank in range(len(net.pairs)):
                    net.set_rank(rank)
                    with autocast_for(ctx.device, ctx.precision):
                        model(x0.to(ctx.device))
            init, init_policy = net.indicators(), policy_now()

        def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with autocast_for(ctx.device, ctx.precision):
                logits = model(x)
            return F.cross_entropy(logits.float(), y, label_smoothing=hp.label_smoothing)

        pbar = tqdm(total=total_steps, initial=step, desc="search limpq", disable=not ctx.progress, leave=False)
        while step < total_steps:
            loader = make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True,
                                 seed=ctx.seed * 100_003 + epoch)
            for x, y in loader:
                if step >= total_steps:
                    break
                lr = hp.min_lr + (hp.lr - hp.min_lr) * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                for g in opt.param_groups:
                    g["lr"] = lr
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                with ctx.meter.step(batch_size=x.shape[0]):
                    losses = joint_step(net, opt, x, y, loss_of, mixed_policies=hp.mixed_policies,
                                        grad_clip=hp.grad_clip, seed=[ctx.seed, step])
                if not all(math.isfinite(v) for v in losses):
                    raise UserError(f"LIMPQ's indicator training loss is not finite at step {step + 1} of "
                                    f"{total_steps}; lower the learning rate (--hp lr=...)")
                step += 1
                pbar.update(1)
                if step % every == 0 or step == total_steps:  # the ILP policy of the current indicators
                    now = policy_now()
                    history.append({"step": step, "macs": float(ctx.meter.macs_processed),
                                    "loss": float(np.mean(losses)),
                                    "bitops_ratio": ctx.bitops_g(now) / ctx.budget_bitops_g,
                                    "policy": _policy_code(now)})
            epoch += 1
            if step < total_steps:
                ctx.save_state({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                "epoch": epoch, "meter": ctx.meter.state_dict(), "history": json.dumps(history),
                                "init": json.dumps(init), "init_policy": json.dumps(init_policy)})
        pbar.close()

        indicators = net.indicators()
        layers = limpq_policy(indicators, ctx.target_macs, ctx.w_candidates, ctx.a_candidates, ctx.budget_bitops_g,
                              floor=floor, alpha=hp.alpha, erase_wired=hp.erase_wired)
        _, _, wired = limpq_costs(indicators, ctx.w_candidates, ctx.a_candidates, alpha=hp.alpha)
        ctx.clear_state()
        settled = settle_point(history)
        trace = [{k: v for k, v in h.items() if k != "policy"} for h in history]
        return SearchOutcome(
            layers=layers, epochs=total_steps / steps_per_epoch, extraction="ilp",
            settled_step=settled[0] if settled else None, settled_macs=settled[1] if settled else None,
            trace=trace,
            extra={"history": history, "budget_floor": floor, "alpha": hp.alpha, "passes_per_step":
                   len(net.pairs) + hp.mixed_policies, "rank_pairs": [list(p) for p in net.pairs],
                   "indicators": {n: {s: {str(b): v for b, v in d.items()} for s, d in i.items()}
                                  for n, i in indicators.items()},
                   "initial_indicators": {n: {s: {str(b): v for b, v in d.items()} for s, d in i.items()}
                                          for n, i in init.items()},
                   "policy_at_init": {n: list(p) for n, p in init_policy.items()},
                   "layers_changed_by_training": sum(init_policy[n] != layers[n] for n in layers),
                   "wired_points": wired},
        )


def _int_keys(d: dict) -> dict:
    return {int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v for k, v in d.items()}
