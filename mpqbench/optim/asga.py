"""ASGA: adaptive sharpness-aware gradient aligning (Ma et al., ICML 2025) as an optimizer wrapper.

One :meth:`ASGA.step` on the wrapped parameters θ (the network weights; not the α logits, not the
quantizer steps) does, with the loss L computed by the caller's closure:

1. L and g = ∇θ L at θ (first closure call);
2. ε = ρ_t · g / ‖g‖₂ − β · g   (``align=False``: ε = ρ_t · g / ‖g‖₂, i.e. SAM). ‖g‖₂ is the global
   L2 norm over all of ASGA's parameters; ‖g‖₂ = 0 gives ε = 0;
3. L_p and g_p = ∇θ L_p at θ + ε (second closure call, BatchNorm running statistics of ``model`` left
   unchanged); θ restored;
4. d = ½ (g + g_p)   (``align=False``: d = g_p) is put in ``.grad`` and the base optimizer steps θ;
5. h_t = L_p − L; ρ_{t+1} = min(ρ_max, ln(1 + max(h_t, 0)))   (``adaptive_rho=False``: ρ stays ρ_init).

Step 5 is the rule as published (``rho_rule="published"``; our reading of the paper's text, with ρ_0, ρ_max
and β as our defaults). It collapses: to first order h_t ≈ ρ_t‖g‖ − β‖g‖², so once ‖g‖ < 1 each step
multiplies ρ by less than ‖g‖ (ln(1 + x) < x), and at ρ = 0 the gap is −β‖g‖² < 0, which keeps it at 0 —
an absorbing state in which ASGA is the host step at twice its cost. ``rho_rule="probe"`` is our variant
that does not collapse: the gap is read at the fixed probe radius ρ_0 instead of at ρ_t, by removing the
alignment part and rescaling the first-order gap to ρ_0,
    h̃_t = (h_t + β‖g‖²) · ρ_0 / ρ_t,   ρ_{t+1} = clip(ln(1 + max(h̃_t, 0)), ρ_min, ρ_max),
so ρ_{t+1} depends on the landscape at θ_t (≈ ρ_0‖g‖ plus the curvature along g) and not on ρ_t itself;
ρ_min (default 0.001) keeps the division defined. ``grad_norm`` (‖g‖ of the clean pass) is logged with ρ
and h after every step.

``sam=False`` is the plain host step: one closure call, the base optimizer steps θ with g.
The design text is ``docs/methods.md`` (section "ASGA").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from mpqbench.errors import UserError

ExtraGrad = Literal["mean", "clean", "perturbed"]
EXTRA_GRAD_MODES: tuple[str, ...] = ("mean", "clean", "perturbed")
RhoRule = Literal["published", "probe"]
RHO_RULES: tuple[str, ...] = ("published", "probe")


@contextmanager
def bn_stats_frozen(model: nn.Module | None) -> Iterator[None]:
    """Leave the running statistics of every BatchNorm/InstanceNorm layer of ``model`` untouched.

    The buffers (running_mean, running_var, num_batches_tracked) are copied on entry and copied back
    in place on exit, so the result is exact whatever the momentum (including ``momentum=None``,
    the cumulative average) and whether the layers are in train or eval mode. Forward passes inside
    the context still normalise with the batch statistics in train mode, as without the context.
    ``model=None`` does nothing.
    """
    saved: list[tuple[Tensor, Tensor]] = []
    if model is not None:
        for module in model.modules():
            if isinstance(module, _NormBase) and module.track_running_stats:
                saved += [(buf, buf.clone()) for buf in module.buffers(recurse=False) if buf is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def _global_norm(grads: list[Tensor]) -> Tensor:
    """‖concat(grads)‖₂ as a 0-dim tensor on the first gradient's device."""
    device = grads[0].device
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(device) for g in grads]))


def _mix_grads(clean: Tensor | None, perturbed: Tensor | None, mode: str) -> Tensor | None:
    """½(clean + perturbed), clean or perturbed; a missing (None) gradient counts as zero."""
    if mode == "clean":
        return clean
    if mode == "perturbed":
        return perturbed
    if clean is None or perturbed is None:
        present = clean if clean is not None else perturbed
        return None if present is None else present.mul(0.5)
    return clean.add(perturbed).mul_(0.5)


class ASGA(torch.optim.Optimizer):
    """Sharpness-aware wrapper around a base optimizer (SGD by default); see the module docstring.

    Args:
        params: the parameters θ to perturb and step (iterable of tensors or of param-group dicts).
        base_optimizer_cls: class of the base optimizer, constructed here as
            ``base_optimizer_cls(param_groups, **base_kwargs)``; ASGA shares its ``param_groups`` and
            ``state``, so LR schedulers built on the ASGA object drive the base optimizer.
        model: the module whose BatchNorm running statistics must not change in the perturbed pass
            (:func:`bn_stats_frozen`). Without it, BN statistics are updated by both passes.
        rho_init: ρ_0, the first perturbation radius (and the fixed one when ``adaptive_rho=False``).
        rho_max: upper clip of the adaptive radius.
        beta: alignment step β in ε = ρ g/‖g‖ − β g.
        sam: False → plain base-optimizer step with g (one closure call).
        align: False → ε = ρ g/‖g‖ and d = g_p (SAM).
        adaptive_rho: False → ρ stays ``rho_init``.
        rho_rule: "published" (ρ_{t+1} = min(ρ_max, ln(1 + max(h_t, 0)))) or "probe" (the gap rescaled to
            the probe radius ρ_0, clipped to [ρ_min, ρ_max]; see the module docstring).
        rho_min: lower clip of the "probe" rule (ignored by "published").
        **base_kwargs: passed to ``base_optimizer_cls`` (lr, momentum, weight_decay, ...).

    Logging attributes after each step: ``rho`` (radius for the *next* step), ``last_loss`` (L),
    ``last_perturbed_loss`` (L_p, None when ``sam=False``), ``last_gap`` (h = L_p − L, None when
    ``sam=False``), ``last_grad_norm`` (‖g‖ of the clean pass over θ), ``steps`` (number of completed steps). All are Python floats/ints and are saved in
    :meth:`state_dict`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer_cls: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        model: nn.Module | None = None,
        rho_init: float = 0.05,
        rho_max: float = 0.1,
        beta: float = 0.001,
        sam: bool = True,
        align: bool = True,
        adaptive_rho: bool = True,
        rho_rule: RhoRule = "published",
        rho_min: float = 0.001,
        **base_kwargs: Any,
    ) -> None:
        if rho_rule not in RHO_RULES:
            raise UserError(f"rho_rule={rho_rule!r} is unknown; use one of {', '.join(RHO_RULES)}")
        for name, value in (("rho_init", rho_init), ("rho_max", rho_max), ("beta", beta), ("rho_min", rho_min)):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"ASGA hyper-parameter {name}={value} is invalid; give a finite value >= 0")
        super().__init__(params, {})
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self._share_base()
        self.model = model
        self.rho_init, self.rho_max, self.beta = float(rho_init), float(rho_max), float(beta)
        self.sam, self.align, self.adaptive_rho = bool(sam), bool(align), bool(adaptive_rho)
        self.rho_rule, self.rho_min = rho_rule, float(rho_min)
        if rho_rule == "probe" and not 0 < self.rho_min <= self.rho_max:
            raise UserError(f"rho_rule='probe' needs 0 < rho_min <= rho_max, got rho_min={rho_min}, rho_max={rho_max}")
        self.rho = self.rho_init
        self.last_grad_norm: float | None = None
        self.steps = 0
        self.last_loss: float | None = None
        self.last_perturbed_loss: float | None = None
        self.last_gap: float | None = None

    def _share_base(self) -> None:
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = self.base_optimizer.defaults

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _run(closure: Callable[[], Any], params: list[Tensor]) -> float:
        """Clear the grads of ``params``, call the closure with grad enabled, return its loss as float."""
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise ValueError("the ASGA closure must return the loss (after calling loss.backward())")
        return float(loss.detach()) if isinstance(loss, Tensor) else float(loss)

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        *,
        extra_params: Iterable[Tensor] = (),
        extra_grad: ExtraGrad = "mean",
    ) -> float:
        """One ASGA step; returns the clean loss L.

        ``closure()`` must run the forward pass, compute the loss, call ``loss.backward()`` and return
        the loss; it must not zero gradients: ASGA sets ``.grad = None`` on θ and on ``extra_params``
        before each call. Parameters that are neither θ nor extra (e.g. quantizer steps) accumulate
        the sum of both passes' gradients. With ``sam=True`` the closure is called twice (at θ, then
        at θ + ε), with ``sam=False`` once. After the step θ's ``.grad`` holds the direction d.

        ``extra_params`` (e.g. the α logits) are never perturbed nor stepped; after the step their
        ``.grad`` holds, per ``extra_grad``: "mean" ½(∂L/∂α + ∂L_p/∂α), "clean" ∂L/∂α (at θ),
        "perturbed" ∂L_p/∂α (at θ + ε). A gradient missing in one pass counts as zero; missing in
        both leaves ``.grad = None``. With ``sam=False`` it is ∂L/∂α whatever the mode. The caller
        then steps its own α optimizer.
        """
        if closure is None:
            raise ValueError("ASGA.step needs a closure that computes the loss, calls backward and returns it")
        if extra_grad not in EXTRA_GRAD_MODES:
            raise UserError(f"extra_grad={extra_grad!r} is unknown; use one of {', '.join(EXTRA_GRAD_MODES)}")
        params = self._params()
        extra = list(extra_params)
        if {id(p) for p in extra} & {id(p) for p in params}:
            raise ValueError("extra_params must not overlap the parameters ASGA perturbs and steps")

        loss = self._run(closure, params + extra)
        self.last_loss = loss
        with torch.no_grad():
            present = [p.grad for p in params if p.grad is not None]
            self.last_grad_norm = float(_global_norm(present)) if present else 0.0
        if not self.sam:
            self.base_optimizer.step()
            self.last_perturbed_loss = self.last_gap = None
            self.steps += 1
            return loss

        grads = [p.grad for p in params]
        extra_clean = [p.grad for p in extra]
        with torch.no_grad():
            present = [g for g in grads if g is not None]
            perturbations: list[Tensor | None] = [None] * len(params)
            rho_used = self.rho
            if present:
                norm = _global_norm(present)
                scale = torch.where(norm > 0, self.rho / norm, torch.zeros_like(norm))
                for i, (p, g) in enumerate(zip(params, grads)):
                    if g is None:
                        continue
                    eps = g * scale.to(g.device)
                    if self.align:
                        eps.sub_(g, alpha=self.beta)
                    p.add_(eps)
                    perturbations[i] = eps
        try:
            with bn_stats_frozen(self.model):
                perturbed_loss = self._run(closure, params + extra)
        finally:
            with torch.no_grad():
                for p, eps in zip(params, perturbations):
                    if eps is not None:
                        p.sub_(eps)

        with torch.no_grad():
            for p, g in zip(params, grads):
                if self.align:
                    p.grad = _mix_grads(g, p.grad, "mean")
                elif p.grad is None and g is not None:
                    p.grad = torch.zeros_like(g)
            for p, clean in zip(extra, extra_clean):
                p.grad = _mix_grads(clean, p.grad, extra_grad)
        self.base_optimizer.step()

        gap = perturbed_loss - loss
        self.last_perturbed_loss, self.last_gap = perturbed_loss, gap
        if self.adaptive_rho and math.isfinite(gap):
            self.rho = self._next_rho(gap, rho_used)
        self.steps += 1
        return loss

    def _next_rho(self, gap: float, rho_used: float) -> float:
        """ρ_{t+1} from the gap h_t measured at radius ``rho_used`` (= ρ_t), per ``rho_rule``."""
        if self.rho_rule == "published":
            return min(self.rho_max, math.log1p(max(gap, 0.0)))
        g2 = (self.last_grad_norm or 0.0) ** 2
        ascent = gap + (self.beta * g2 if self.align else 0.0)  # the part of h due to the ρ·g/‖g‖ move
        probe_gap = ascent * self.rho_init / max(rho_used, self.rho_min)
        return min(self.rho_max, max(self.rho_min, math.log1p(max(probe_gap, 0.0))))

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus an ``"asga"`` entry (ρ, step count, last losses)."""
        state = self.base_optimizer.state_dict()
        state["asga"] = {
            "rho": self.rho,
            "steps": self.steps,
            "last_loss": self.last_loss,
            "last_perturbed_loss": self.last_perturbed_loss,
            "last_gap": self.last_gap,
            "last_grad_norm": self.last_grad_norm,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        asga = state.pop("asga")
        self.base_optimizer.load_state_dict(state)
        self._share_base()
        self.rho, self.steps = float(asga["rho"]), int(asga["steps"])
        self.last_loss, self.last_perturbed_loss = asga["last_loss"], asga["last_perturbed_loss"]
        self.last_gap = asga["last_gap"]
        self.last_grad_norm = asga.get("last_grad_norm")
