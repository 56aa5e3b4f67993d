"""The shared differentiable search (the host of EdMIPS, GMPQ and ASGA) and the ASGA methods.

Single-level search as in EdMIPS/GMPQ's code: on each proxy batch one loss
``CE + aux + complexity`` is back-propagated, and the network weights θ, the bit logits α and the
LSQ step sizes step together (three SGD groups). Subclasses change two hooks only:

- :meth:`DifferentiableSearch.aux_loss` — an extra loss term (GMPQ's attribution imitation);
- :meth:`DifferentiableSearch.uses_asga` — the weight step becomes ASGA's two-pass step.

Complexity term (choice, methods.md): ``C(α) = Σ_l MACs_l · E[b_w,l] · E[b_a,l]`` with MACs of the
*target* geometry, divided by the budget's BitOPs so that the weight λ is comparable across archs and
budgets. ``complexity_mode="target"`` (default) adds ``λ · (C/B − target_ratio)²``, which steers the expected
BitOPs to the budget from either side, so the cross-entropy decides *where* the bits go while the total
stays at the budget; ``"hinge"`` adds ``λ · relu(C/B − target_ratio)`` (only pushes down);
``"linear"`` is EdMIPS's published ``λ · C/B``.

The final policy comes from the softmaxes by :mod:`mpqbench.search.extract`: by default (``extraction="ilp"``)
the most probable joint assignment whose BitOPs lie in the suite's budget window [floor·B, B]; the published
``"argmax"`` (argmax per layer, then the greedy repair of :mod:`mpqbench.search.repair`) is a named option.

``entropy_weight`` (default 0, off) is our option to make the α's decide during the search: it adds
``λ_H · (t/T) · mean_l [H(softmax α_w,l) + H(softmax α_a,l)]`` to the loss, ramped linearly from 0 at step 0
to λ_H at the last step T, so the bit logits explore first and commit by the end.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from mpqbench.data import make_loader
from mpqbench.models import get_model
from mpqbench.optim.asga import ASGA
from mpqbench.quant import arch_parameters, build_supernet, mixed_layers, quantizer_parameters, weight_parameters
from mpqbench.search import Method, SearchContext, SearchOutcome, register_method, settle_point
from mpqbench.search.extract import entropies, extract
from mpqbench.train import autocast_for
from mpqbench.errors import UserError
from mpqbench.utils import seed_everything


class DiffHparams(BaseModel):
    """Defaults are methods.md's (EdMIPS/GMPQ search recipe); every field is recorded in the policy."""

    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(25, gt=0, description="search epochs over the proxy train split")
    batch_size: int = Field(256, gt=0)
    lr_w: float = Field(0.1, description="SGD lr of the network weights (and LSQ steps)")
    lr_alpha: float = Field(0.01, description="SGD lr of the bit logits α")
    momentum: float = 0.9
    weight_decay: float = Field(1e-4, description="on conv/linear weights only")
    lr_milestones: list[float] = Field([0.4, 0.8], description="fractions of the run where both lrs ×0.1 (10 and 20 of 25 epochs)")
    complexity_weight: float = Field(5.0, ge=0, description="λ of the complexity term")
    complexity_mode: Literal["target", "hinge", "linear"] = "target"
    complexity_target: float = Field(1.0, gt=0, description="expected BitOPs aimed at, as a fraction of the budget")
    extraction: Literal["ilp", "argmax"] = Field(
        "ilp", description="ilp: most probable policy inside the budget window (default); argmax: published")
    entropy_weight: float = Field(0.0, ge=0, description="λ_H of the ramped entropy term that makes the α's decide (0 = off)")


class AsgaHparams(DiffHparams):
    """ASGA's optimizer settings (methods.md) on top of the host's."""

    rho_init: float = 0.05
    rho_max: float = 0.1
    beta: float = Field(0.001, description="alignment step β (SAGM's α)")
    sam: bool = True
    align: bool = True
    adaptive_rho: bool = True
    alpha_grad: Literal["mean", "clean", "perturbed"] = "mean"
    rho_rule: Literal["published", "probe"] = Field(
        "published", description="published: ρ = min(ρ_max, ln(1+h)) (collapses); probe: h read at ρ_0 (ours)")
    rho_min: float = Field(0.001, gt=0, description="lower clip of the probe rule")


class DifferentiableSearch(Method):
    """Host search with plain SGD on the weights — registered as ``edmips`` by ``baselines/edmips.py``."""

    Hparams = DiffHparams
    smoke_hparams = {"epochs": 0.3, "batch_size": 64}

    # ---- hooks ---------------------------------------------------------------------------------------
    def uses_asga(self, hp: BaseModel) -> bool:
        """The weight step is ASGA's whenever the method's hyper-parameters are ASGA's."""
        return isinstance(hp, AsgaHparams)

    def prepare(self, ctx: SearchContext, hp: BaseModel, supernet: nn.Module) -> None:
        """Called once before the loop (GMPQ loads its teacher here)."""

    def aux_loss(self, supernet: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: SearchContext, hp: BaseModel):
        """Return ``(logits, aux)`` where aux is an extra loss term or None. Default: plain forward."""
        return supernet(x), None

    # ---- pieces ---------------------------------------------------------------------------------------
    @staticmethod
    def complexity_ratio(supernet: nn.Module, ctx: SearchContext) -> torch.Tensor:
        """Expected searchable BitOPs on the target geometry divided by the budget (differentiable in α)."""
        total = None
        for name, layer in mixed_layers(supernet).items():
            e_w, e_a = layer.expected_bits()
            term = ctx.target_macs[name] * e_w * e_a
            total = term if total is None else total + term
        return total / (ctx.budget_bitops_g * 1e9)

    def complexity_loss(self, supernet: nn.Module, ctx: SearchContext, hp: DiffHparams) -> torch.Tensor:
        ratio = self.complexity_ratio(supernet, ctx)
        if hp.complexity_mode == "linear":
            return hp.complexity_weight * ratio
        if hp.complexity_mode == "hinge":
            return hp.complexity_weight * F.relu(ratio - hp.complexity_target)
        return hp.complexity_weight * (ratio - hp.complexity_target).pow(2)

    @staticmethod
    def mean_entropy(supernet: nn.Module) -> torch.Tensor:
        """mean over searchable layers of H(softmax α_w) + H(softmax α_a), in nats (differentiable)."""
        terms = []
        for layer in mixed_layers(supernet).values():
            for alpha in (layer.alpha_w, layer.alpha_a):
                logp = torch.log_softmax(alpha, 0)
                terms.append(-(logp.exp() * logp).sum())
        return torch.stack(terms).sum() / max(1, len(terms) // 2)

    def build_supernet(self, ctx: SearchContext) -> nn.Module:
        model = get_model(ctx.arch, num_classes=ctx.num_classes, in_channels=ctx.in_channels,
                          input_size=ctx.input_size, width=ctx.width)
        return build_supernet(model, ctx.searchable, ctx.w_candidates, ctx.a_candidates).to(ctx.device)

    # ---- the loop -------------------------------------------------------------------------------------
    def search(self, ctx: SearchContext, hp: DiffHparams) -> SearchOutcome:
        seed_everything(ctx.seed)
        supernet = self.build_supernet(ctx)
        supernet.train()
        self.prepare(ctx, hp, supernet)

        # LSQ steps are initialised from data on their first forward: do it once on a proxy batch before
        # the optimisers see them (not counted as a search step; no parameter update).
        first_x, _ = next(iter(make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=ctx.seed)))
        with torch.no_grad():
            supernet(first_x.to(ctx.device))

        alphas = arch_parameters(supernet)
        steps_q = quantizer_parameters(supernet)
        weights = weight_parameters(supernet)
        decay = [p for p in weights if p.ndim > 1]
        no_decay = [p for p in weights if p.ndim <= 1]
        w_groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        use_asga = self.uses_asga(hp)
        if use_asga:
            opt_w = ASGA(w_groups, torch.optim.SGD, rho_init=hp.rho_init, rho_max=hp.rho_max, beta=hp.beta,
                         sam=hp.sam, align=hp.align, adaptive_rho=hp.adaptive_rho, model=supernet,
                         rho_rule=hp.rho_rule, rho_min=hp.rho_min, lr=hp.lr_w, momentum=hp.momentum)
        else:
            opt_w = torch.optim.SGD(w_groups, lr=hp.lr_w, momentum=hp.momentum)
        opt_q = torch.optim.SGD(steps_q, lr=hp.lr_w, momentum=hp.momentum) if steps_q else None
        opt_a = torch.optim.SGD(alphas, lr=hp.lr_alpha, momentum=hp.momentum)
        optimizers = [o for o in (opt_w, opt_q, opt_a) if o is not None]

        steps_per_epoch = len(make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=0))
        total_steps = max(1, math.ceil(hp.epochs * steps_per_epoch))
        milestones = [int(m * total_steps) for m in hp.lr_milestones]

        def lr_factor(step: int) -> float:
            return 0.1 ** sum(step >= m for m in milestones)

        base_lrs = [[g["lr"] for g in o.param_groups] for o in optimizers]
        step, epoch = 0, 0
        history: list[dict[str, Any]] = []
        state = ctx.resume_state()
        if state is not None:
            supernet.load_state_dict(state["model"])
            for o, s in zip(optimizers, state["optimizers"]):
                o.load_state_dict(s)
            step, epoch = state["step"], state["epoch"]
            ctx.meter.load_state_dict(state["meter"])
            torch.set_rng_state(state["rng"])
            history = json.loads(state.get("history", "[]"))

        extra = alphas + steps_q
        pbar = tqdm(total=total_steps, initial=step, desc=f"search {self.name}", disable=not ctx.progress, leave=False)
        while step < total_steps:
            loader = make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=ctx.seed * 100_003 + epoch)
            for x, y in loader:
                if step >= total_steps:
                    break
                for o, lrs in zip(optimizers, base_lrs):
                    for g, lr in zip(o.param_groups, lrs):
                        g["lr"] = lr * lr_factor(step)
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)

                def closure() -> torch.Tensor:
                    with autocast_for(ctx.device, ctx.precision):  # the network's forward (and GMPQ's maps)
                        logits, aux = self.aux_loss(supernet, x, y, ctx, hp)
                    loss = F.cross_entropy(logits.float(), y)  # losses, complexity and entropy terms in fp32
                    if aux is not None:
                        loss = loss + aux.float()
                    loss = loss + self.complexity_loss(supernet, ctx, hp)
                    if hp.entropy_weight > 0:
                        loss = loss + hp.entropy_weight * (step / total_steps) * self.mean_entropy(supernet)
                    loss.backward()
                    return loss.detach()

                with ctx.meter.step(batch_size=x.shape[0]):
                    for o in optimizers:
                        o.zero_grad(set_to_none=True)
                    if use_asga:
                        loss = opt_w.step(closure, extra_params=extra, extra_grad=hp.alpha_grad)
                    else:
                        loss = closure()
                        opt_w.step()
                    if not math.isfinite(float(loss)):
                        raise UserError(f"the search loss is {float(loss)} at step {step + 1} of {total_steps}; the "
                                        "search diverged — lower the learning rates (--hp lr_w=..., lr_alpha=...) "
                                        "or check the hyper-parameters")
                    if opt_q is not None:
                        opt_q.step()
                    opt_a.step()
                step += 1
                pbar.update(1)
                if step % max(1, steps_per_epoch // 4) == 0 or step == total_steps:
                    rec = {"step": step, "loss": float(loss), "bitops_ratio": float(self.complexity_ratio(supernet, ctx).detach()),
                           "macs": float(ctx.meter.macs_processed), "policy": _argmax_code(supernet)}
                    if use_asga:
                        rec.update(rho=opt_w.rho, gap=opt_w.last_gap, grad_norm=opt_w.last_grad_norm)
                    history.append(rec)
            epoch += 1
            if step < total_steps:
                ctx.save_state({"model": supernet.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                                "step": step, "epoch": epoch, "meter": ctx.meter.state_dict(),
                                "rng": torch.get_rng_state(), "history": json.dumps(history)})
        pbar.close()

        bad = [n for n, layer in mixed_layers(supernet).items()
               if not (torch.isfinite(layer.alpha_w).all() and torch.isfinite(layer.alpha_a).all())]
        if bad:
            raise UserError(f"the search's bit-width logits are not finite ({len(bad)} layers, e.g. {bad[0]}); the "
                            "search diverged — lower the learning rates (--hp lr_w=..., lr_alpha=...)")
        prefs = {}
        for name, layer in mixed_layers(supernet).items():
            lw = torch.log_softmax(layer.alpha_w.detach().double(), 0).tolist()
            la = torch.log_softmax(layer.alpha_a.detach().double(), 0).tolist()
            prefs[name] = {"w": dict(zip(ctx.w_candidates, lw)), "a": dict(zip(ctx.a_candidates, la))}
        argmax_layers = {name: layer.argmax_bits() for name, layer in mixed_layers(supernet).items()}
        raw_bitops_g = ctx.bitops_g(argmax_layers)
        layers, repaired = extract(prefs, ctx.target_macs, ctx.budget_bitops_g, mode=hp.extraction,
                                   floor=ctx.budget_floor, seed=ctx.seed, order=list(prefs))
        ctx.clear_state()
        alpha_dump = {n: {"w": [round(v, 6) for v in mixed_layers(supernet)[n].alpha_w.detach().softmax(0).tolist()],
                          "a": [round(v, 6) for v in mixed_layers(supernet)[n].alpha_a.detach().softmax(0).tolist()]}
                      for n in layers}
        settled = settle_point(history)
        trace = [{k: v for k, v in h.items() if k != "policy"} for h in history]
        return SearchOutcome(layers=layers, epochs=total_steps / steps_per_epoch, repaired=repaired,
                             extra={"raw_bitops_g": raw_bitops_g, "argmax_bitops_g": raw_bitops_g, "history": history,
                                    "probs": alpha_dump},
                             settled_step=settled[0] if settled else None, settled_macs=settled[1] if settled else None,
                             extraction=hp.extraction, entropy=entropies(prefs), trace=trace)


def _argmax_code(supernet) -> str:
    """The current argmax policy as one string ("34,23,..." = W3A4, W2A3, ... in module order)."""
    return ",".join(f"{w}{a}" for w, a in (layer.argmax_bits() for layer in mixed_layers(supernet).values()))


@register_method("asga")
class Asga(DifferentiableSearch):
    """ASGA (ICML 2025) on the EdMIPS host: the weight step is :class:`mpqbench.optim.asga.ASGA`."""

    Hparams = AsgaHparams
    role = "proposed"
