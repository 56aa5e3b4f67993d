"""HAWQ-V3-style sensitivity: Hutchinson estimates of per-layer Hessian traces, and the ILP policy.

Ω_l(b) = (Tr(H_l)/n_l) · ‖Q_b(W_l) − W_l‖², with H_l the Hessian block of layer l's weight (n_l entries)
and Q_b the LSQ-initialised per-tensor quantizer; one bit-width per layer (weights and activations tied,
as in HAWQ-V3) is picked by :func:`mpqbench.ilp.solve_bit_allocation` minimising Σ Ω under the BitOPs budget.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mpqbench.errors import UserError
from mpqbench.ilp import solve_bit_allocation
from mpqbench.quant.lsq import quant_error_sq

if TYPE_CHECKING:
    from mpqbench.cost import SearchCostMeter

QuantError = Callable[[Tensor, int], float]


def layer_weights(model: nn.Module, layer_names: Sequence[str]) -> dict[str, nn.Parameter]:
    """``{name: module.weight}`` for the named layers (the parameters whose Hessian blocks HAWQ uses)."""
    modules = dict(model.named_modules())
    missing = [n for n in layer_names if not isinstance(getattr(modules.get(n), "weight", None), nn.Parameter)]
    if missing:
        raise UserError(
            f"layers {missing} are not weighted modules of this model; use searchable layer names of the same arch"
        )
    return {n: modules[n].weight for n in layer_names}


def hutchinson_traces(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Sequence[tuple[Tensor, Tensor]],
    params_by_layer: dict[str, nn.Parameter],
    *,
    tol: float = 1e-3,
    max_probes: int = 100,
    seed: int = 0,
    stats: dict | None = None,
    meter: SearchCostMeter | None = None,
) -> dict[str, float]:
    """Average Hessian trace Tr(H_l)/n_l of the loss w.r.t. each layer's parameter (PyHessian-style).

    The loss is the sample-weighted mean of ``loss_fn(model(x), y)`` (a batch mean) over ``batches``, with
    the model in eval mode. Each probe draws one Rademacher vector z over all listed parameters and
    computes Hz by double backward; z_lᵀ(Hz)_l is an unbiased sample of Tr(H_l) (cross-layer terms have
    mean zero). Probing stops when every layer's running mean changes by less than ``tol`` (relative)
    or after ``max_probes``. The gradient graph of all batches is built once and kept, so the batches
    must fit in memory together. Probes are drawn on the CPU from ``seed``: same z on any device.
    ``stats``, if given, receives ``probes`` (Hessian-vector products done) and ``samples`` (per product).
    ``meter`` (a :class:`~mpqbench.cost.SearchCostMeter`) counts the graph build as one step of kind
    ``"hessian-grad"`` and each probe as one step of kind ``"hvp"``, both over all batches' samples.
    """
    if not batches:
        raise ValueError("hutchinson_traces needs at least one (x, y) batch")
    if max_probes < 1:
        raise ValueError(f"max_probes must be >= 1, got {max_probes}")
    names = list(params_by_layer)
    params = [params_by_layer[n] for n in names]
    device = params[0].device
    samples = sum(int(x.shape[0]) for x, _ in batches)
    was_training = model.training
    requires_grad = [p.requires_grad for p in params]
    generator = torch.Generator().manual_seed(seed)

    def step(kind: str):
        return meter.step(samples, kind=kind) if meter is not None else contextlib.nullcontext()

    model.eval()
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            with step("hessian-grad"):
                loss = sum(
                    loss_fn(model(x.to(device)), y.to(device)) * (x.shape[0] / samples) for x, y in batches
                )
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            # A parameter the loss is linear in (or ignores) has a zero Hessian row: leave it out of the HVP.
            curved = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            sums = np.zeros(len(params))
            means = np.zeros(len(params))
            for probe in range(1, max_probes + 1):
                zs = [
                    torch.randint(0, 2, p.shape, generator=generator).to(device=device, dtype=p.dtype) * 2 - 1
                    for p in params
                ]
                vhv = np.zeros(len(params))
                if curved:
                    with step("hvp"):
                        hz = torch.autograd.grad(
                            [grads[i] for i in curved], params, grad_outputs=[zs[i] for i in curved],
                            retain_graph=True, allow_unused=True,
                        )
                        terms = [(h * z).sum() if h is not None else z.new_zeros(()) for h, z in zip(hz, zs)]
                        vhv = torch.stack(terms).double().cpu().numpy()
                sums += vhv
                previous, means = means, sums / probe
                if probe > 1 and (np.abs(means - previous) <= tol * np.abs(previous)).all():
                    break
    finally:
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)
        model.train(was_training)
    if stats is not None:
        stats.update(probes=probe, samples=samples)
    return {n: float(means[i]) / params[i].numel() for i, n in enumerate(names)}


def sensitivity_table(
    model_fp: nn.Module,
    layer_names: Sequence[str],
    candidates: Sequence[int],
    traces: dict[str, float],
    *,
    quant_error: QuantError | None = None,
) -> np.ndarray:
    """Ω [L, K] = max(Tr(H_l)/n_l, 0) · ‖Q_b(W_l) − W_l‖² for each layer and candidate bit-width.

    A negative trace estimate (indefinite curvature) counts as zero sensitivity: the second-order model
    then predicts no loss increase from quantizing that layer.
    """
    quant_error = quant_error or quant_error_sq
    weights = layer_weights(model_fp, layer_names)
    missing = [n for n in layer_names if n not in traces]
    if missing:
        raise ValueError(f"no Hessian trace for layers {missing}")
    return np.array(
        [[max(traces[n], 0.0) * quant_error(weights[n], int(b)) for b in candidates] for n in layer_names],
        dtype=np.float64,
    )


def hawq_policy(
    model_fp: nn.Module,
    layer_names: Sequence[str],
    macs: dict[str, int],
    candidates: Sequence[int],
    budget_bitops_g: float,
    traces: dict[str, float],
    *,
    quant_error: QuantError | None = None,
) -> dict[str, tuple[int, int]]:
    """HAWQ-V3 bit allocation: ``{name: (b, b)}`` minimising Σ_l Ω_l(b_l) s.t. Σ_l MACs_l·b_l²/1e9 ≤ budget.

    ``macs`` must be of the deployed (target) geometry, the geometry the budget is defined on; ``traces``
    come from :func:`hutchinson_traces` (already divided by n_l). Raises UserError if even the lowest
    candidate for every layer exceeds the budget.
    """
    missing = [n for n in layer_names if n not in macs]
    if missing:
        raise ValueError(f"no MAC count for layers {missing}")
    bits = np.asarray(candidates, dtype=np.float64)
    costs = sensitivity_table(model_fp, layer_names, candidates, traces, quant_error=quant_error)
    bitops_g = np.array([macs[n] for n in layer_names], dtype=np.float64)[:, None] * bits[None, :] ** 2 / 1e9
    choice = solve_bit_allocation(costs, bitops_g, budget_bitops_g)
    return {n: (int(candidates[k]), int(candidates[k])) for n, k in zip(layer_names, choice)}
