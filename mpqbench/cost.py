"""Cost accounting: MACs, BitOPs, model size, budgets, and what a search cost.

Conventions (docs/architecture "Conventions"):

* MACs of a conv = C_in/groups · C_out · k_h · k_w · H_out · W_out, of a linear layer in · out (batch 1).
* BitOPs of a layer = MACs · w_bits · a_bits. Two totals: **all** layers (stem conv and classifier at their
  fixed bits, W8A8 by default) and **searchable** layers only (EdMIPS/GMPQ style). Reported in G (1e9).
* Size = Σ quantized weight elements · w_bits / 8 + every other parameter (biases, BN) at 32 bit, in MB (1e6 B).
* A budget ``w3a3`` is the BitOPs of uniform W3A3 on the searchable layers of the target geometry;
  fractional references (``w2.5a2.5``) mean MACs · 2.5 · 2.5 per layer.
* Search cost: ``macs_processed`` = MACs per sample of one real step (forward + backward, measured with
  ``torch.utils.flop_counter.FlopCounterMode`` on the first step, FLOPs / 2) × samples processed.
  FlopCounterMode counts matmul/conv work only: a layer's backward costs 2× its forward MACs (input and
  weight gradients) except where no input gradient is needed (the first layer), which costs 1×.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from mpqbench import runs
from mpqbench.errors import UserError
from mpqbench.models import fixed_layer_names, get_model, searchable_layer_names
from mpqbench.utils import device_name

log = logging.getLogger(__name__)

Bits = tuple[float, float]
"""(weight bits, activation bits) of one layer."""

FIXED_BITS: Bits = runs.FIXED_BITS


# --------------------------------------------------------------------------------------------- geometry


def layer_macs(model: nn.Module, *, input_size: int, in_channels: int) -> dict[str, int]:
    """MACs of every Conv2d/Linear (subclasses included) for one ``in_channels×input_size×input_size`` sample.

    Measured with forward hooks on a copy of ``model`` in eval mode, so neither BN statistics nor
    data-initialised quantizer steps of ``model`` change. A layer run twice counts twice.
    """
    probe = copy.deepcopy(model).eval()
    macs: dict[str, int] = {}

    def hook(name: str, module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = module.in_channels // module.groups * kh * kw
        else:
            per_output = module.in_features
        macs[name] = macs.get(name, 0) + output.numel() * per_output

    handles = [
        m.register_forward_hook(functools.partial(hook, n))
        for n, m in probe.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    param = next(probe.parameters())
    try:
        with torch.no_grad():
            probe(torch.randn(1, in_channels, input_size, input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    return macs


def layer_params(model: nn.Module) -> tuple[dict[str, int], int]:
    """(weight elements per Conv2d/Linear, count of every other parameter).

    "Other" = biases of those layers plus the parameters of every module that is not a Conv2d/Linear or
    inside one; quantizer steps and architecture logits living inside quantized/mixed layers are therefore
    not counted (they are not part of the deployed FP weights).
    """
    weights: dict[str, int] = {}
    other = 0
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            inside.append(name)
            weights[name] = module.weight.numel()
            other += module.bias.numel() if module.bias is not None else 0
        else:
            other += sum(p.numel() for p in module.parameters(recurse=False))
    return weights, other


@dataclass(frozen=True)
class ArchCost:
    """Everything the cost figures of one model geometry depend on (per-layer dicts keyed by module path)."""

    macs: dict[str, int]
    weight_params: dict[str, int]
    other_params: int
    searchable: list[str]
    fixed: tuple[str, str]
    kinds: dict[str, str]  # "Conv2d" / "DWConv2d" (depthwise) / "Linear"

    @classmethod
    def from_model(cls, model: nn.Module, *, input_size: int, in_channels: int) -> "ArchCost":
        weights, other = layer_params(model)
        return cls(
            macs=layer_macs(model, input_size=input_size, in_channels=in_channels),
            weight_params=weights,
            other_params=other,
            searchable=searchable_layer_names(model),
            fixed=fixed_layer_names(model),
            kinds={n: _kind(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))},
        )


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "Linear"
    return "DWConv2d" if module.groups > 1 and module.groups == module.in_channels else "Conv2d"


@functools.lru_cache(maxsize=64)
def _arch_cost_cached(arch: str, input_size: int, num_classes: int, in_channels: int, width: float) -> ArchCost:
    with torch.random.fork_rng(devices=[]):  # building a model must not move the caller's RNG
        model = get_model(arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width)
    return ArchCost.from_model(model, input_size=input_size, in_channels=in_channels)


def arch_cost(arch: str, *, input_size: int, num_classes: int, in_channels: int = 3, width: float = 1.0) -> ArchCost:
    """:class:`ArchCost` of a registered arch at a geometry (cached; returns a fresh copy each call)."""
    return copy.deepcopy(_arch_cost_cached(arch, input_size, num_classes, in_channels, float(width)))


# --------------------------------------------------------------------------------------------- budgets

_BUDGET_RE = re.compile(r"w(\d+(?:\.\d+)?)a(\d+(?:\.\d+)?)")


def parse_budget(name: str) -> tuple[float, float]:
    """``"w3a3"`` → (3.0, 3.0); ``"w2.5a2.5"`` → (2.5, 2.5). Bits must lie in (0, 32]."""
    match = _BUDGET_RE.fullmatch(name.strip().lower()) if isinstance(name, str) else None
    if match is None:
        raise UserError(f"bad budget/policy name {name!r}; use w<bits>a<bits>, e.g. w3a3 or w2.5a2.5")
    w, a = float(match[1]), float(match[2])
    if not (0 < w <= 32 and 0 < a <= 32):
        raise UserError(f"bad budget/policy name {name!r}: bit-widths must lie in (0, 32]")
    return w, a


def bitops_g(macs: Mapping[str, int], bits: Mapping[str, Bits]) -> float:
    """Σ MACs · w · a / 1e9 over the layers named in ``bits``."""
    unknown = sorted(set(bits) - set(macs))
    if unknown:
        raise UserError(f"layers {unknown} are not in the model; the policy does not fit this arch")
    return sum(macs[n] * w * a for n, (w, a) in bits.items()) / 1e9


def budget_bitops_g(name: str, macs: Mapping[str, int], searchable: list[str]) -> float:
    """BitOPs (G) of the uniform reference policy ``name`` on the searchable layers."""
    w, a = parse_budget(name)
    return bitops_g(macs, {n: (w, a) for n in searchable})


# --------------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class CostSummary:
    bitops_g_all: float  # searchable + fixed layers, G
    bitops_g_searchable: float  # searchable layers only, G
    size_mb: float  # quantized weights at their bits, everything else at 32 bit, 1e6 bytes
    avg_w_bits: float  # MAC-weighted over searchable layers
    avg_a_bits: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(cost: ArchCost, bits: Mapping[str, Bits], fixed: Mapping[str, Bits] | None = None) -> CostSummary:
    """Cost of a policy: ``bits`` for exactly the searchable layers, ``fixed`` (default W8A8) for stem/classifier.

    Pass the :class:`ArchCost` of the deployed (target) geometry, e.g. from :func:`arch_cost`.
    """
    fixed = dict(fixed) if fixed is not None else {n: FIXED_BITS for n in cost.fixed}
    missing = [n for n in cost.searchable if n not in bits]
    extra = [n for n in bits if n not in cost.searchable]
    if missing or extra or set(fixed) != set(cost.fixed):
        raise UserError(
            f"policy does not fit the arch: searchable layers without bits {missing}, unknown or fixed layers "
            f"given as searchable {extra}, fixed layers {sorted(fixed)} vs expected {sorted(cost.fixed)}"
        )
    searchable_g = bitops_g(cost.macs, bits)
    all_bits = {**bits, **fixed}
    quant_bytes = sum(cost.weight_params[n] * w / 8 for n, (w, _) in all_bits.items())
    size_mb = (quant_bytes + 4 * cost.other_params) / 1e6
    total_macs = sum(cost.macs[n] for n in cost.searchable)
    avg_w = sum(cost.macs[n] * bits[n][0] for n in cost.searchable) / total_macs if total_macs else 0.0
    avg_a = sum(cost.macs[n] * bits[n][1] for n in cost.searchable) / total_macs if total_macs else 0.0
    return CostSummary(
        bitops_g_all=searchable_g + bitops_g(cost.macs, fixed),
        bitops_g_searchable=searchable_g,
        size_mb=size_mb,
        avg_w_bits=avg_w,
        avg_a_bits=avg_a,
    )


def _policy_bits(policy: Any, cost: ArchCost) -> tuple[dict[str, Bits], dict[str, Bits], str]:
    """(searchable bits, fixed bits, label) from a uniform name, a {name: (w, a) | {w, a}} dict or a Policy."""
    if isinstance(policy, str):
        w, a = parse_budget(policy)
        if not (w.is_integer() and a.is_integer()):
            raise UserError(
                f"{policy!r} is a fractional reference: it names a budget, not a policy; "
                "use integer bits such as w3a3 or a policy JSON"
            )
        return {n: (int(w), int(a)) for n in cost.searchable}, {n: FIXED_BITS for n in cost.fixed}, policy
    label = "custom"
    if hasattr(policy, "bits") and callable(policy.bits):  # mpqbench.policy.Policy: bits incl. fixed layers
        label = str(getattr(policy, "method", "policy"))
        policy = policy.bits()
    if not isinstance(policy, Mapping):
        raise UserError(f"cannot read a policy from {type(policy).__name__}; pass w<b>a<b> or a policy file")
    per_layer: dict[str, Bits] = {}
    for name, value in policy.items():
        w, a = (value["w"], value["a"]) if isinstance(value, Mapping) else value
        per_layer[name] = (w, a)
    fixed = {n: per_layer.pop(n, FIXED_BITS) for n in cost.fixed}
    return per_layer, fixed, label


def complexity_report(
    arch: str,
    input_size: int,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    policy: Any = "w8a8",
) -> dict[str, Any]:
    """Totals and a per-layer table of an arch under a policy (backs ``mpqbench complexity``).

    ``policy``: a uniform name ``w4a4`` (searchable at W4A4, stem/classifier at W8A8), a dict
    ``{layer: (w, a) | {"w": w, "a": a}}`` (fixed layers default to W8A8), or an object with ``bits()``
    (mpqbench.policy.Policy). ``params`` per layer = weight elements.
    """
    cost = arch_cost(arch, input_size=input_size, num_classes=num_classes, in_channels=in_channels, width=width)
    bits, fixed, label = _policy_bits(policy, cost)
    summary = summarize(cost, bits, fixed)
    all_bits = {**bits, **fixed}
    layers = [
        {
            "name": name,
            "type": cost.kinds[name],
            "macs": cost.macs[name],
            "w": all_bits[name][0],
            "a": all_bits[name][1],
            "bitops_g": cost.macs[name] * all_bits[name][0] * all_bits[name][1] / 1e9,
            "params": cost.weight_params[name],
            "searchable": name in bits,
        }
        for name in cost.weight_params
    ]
    return {
        "arch": arch,
        "input_size": input_size,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "width": width,
        "policy": label,
        "totals": {
            "macs_g_all": sum(cost.macs.values()) / 1e9,
            "macs_g_searchable": sum(cost.macs[n] for n in cost.searchable) / 1e9,
            **summary.to_dict(),
        },
        "layers": layers,
    }


# --------------------------------------------------------------------------------------------- search cost


class CostMeter:
    """Counts what a search or a training run (pretrain, fine-tune) cost: wall time, steps, samples and MACs
    processed.

    Wrap each real step (forward, backward, optimizer update, whatever the method does per batch)::

        meter = CostMeter(device)
        for x, y in loader:
            with meter.step(len(x)):
                ...

    The first step of each ``kind`` runs under FlopCounterMode and fixes ``macs_per_sample`` for that kind
    (methods alternating weight and architecture steps pass ``kind="weight"`` / ``kind="arch"``); later steps
    only count samples. ``wall_s`` runs from entering the first step to leaving the last one (data loading
    between steps included). With ``world_size`` > 1 (DDP, per-rank batch sizes) samples, MACs and GPU-hours
    are scaled to all ranks. Eager mode only: FlopCounterMode does not see inside torch.compile'd kernels.
    """

    def __init__(self, device: torch.device | str = "cpu", *, world_size: int = 1) -> None:
        self._device = torch.device(device)
        self.device = device_name(self._device)
        self.world_size = world_size
        self.steps = 0
        self._samples = 0
        self._macs_per_sample: dict[str, float] = {}
        self._macs = 0.0
        self._start: float | None = None
        self._end: float | None = None

    @contextlib.contextmanager
    def step(self, batch_size: int, kind: str = "step") -> Iterator[None]:
        """Account one step over ``batch_size`` samples (per rank); a step that raises is not counted."""
        if self._start is None:
            self._start = time.perf_counter()
        if kind in self._macs_per_sample:
            yield
        else:
            # imported here, not with the module: it loads triton where installed (~0.1-0.2 s), which jobs
            # that never count MACs (evaluate, complexity, aggregate) do not need
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                yield
            self._macs_per_sample[kind] = counter.get_total_flops() / 2 / batch_size
            if not self._macs_per_sample[kind]:
                log.warning("CostMeter: FlopCounterMode saw no matmul/conv work in a %r step", kind)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        self._end = time.perf_counter()
        self.steps += 1
        self._samples += batch_size
        self._macs += self._macs_per_sample[kind] * batch_size

    @property
    def wall_s(self) -> float:
        return 0.0 if self._start is None or self._end is None else self._end - self._start

    @property
    def samples(self) -> int:
        return self._samples * self.world_size

    @property
    def macs_processed(self) -> int:
        return int(round(self._macs * self.world_size))

    @property
    def macs_per_sample(self) -> float:
        """Mean over all steps (exactly the per-step figure when there is one kind of step)."""
        return self._macs / self._samples if self._samples else 0.0

    @property
    def gpu_hours(self) -> float:
        return self.wall_s * self.world_size / 3600 if self._device.type == "cuda" else 0.0

    def state_dict(self) -> dict[str, Any]:
        """Counters to carry across a kill/resume (plain numbers: loadable with weights_only=True)."""
        return {"wall_s": self.wall_s, "steps": self.steps, "samples": self._samples, "macs": self._macs,
                "macs_per_sample": dict(self._macs_per_sample)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue counting from ``state``; the wall clock resumes as if the pause had not happened."""
        now = time.perf_counter()
        self._start, self._end = now - float(state["wall_s"]), now
        self.steps, self._samples, self._macs = int(state["steps"]), int(state["samples"]), float(state["macs"])
        self._macs_per_sample = {str(k): float(v) for k, v in state["macs_per_sample"].items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "steps": self.steps,
            "samples": self.samples,
            "macs_processed": self.macs_processed,
            "macs_per_sample": self.macs_per_sample,
            "device": self.device,
            "gpu_hours": self.gpu_hours,
        }
