"""Method registry and the contract every MPQ search method fulfils.

A method is a class registered with ``@register_method("name")``. It declares its hyper-parameters as a
pydantic model ``Hparams`` (defaults = the reference values of methods.md; the record keeps them) and
implements ``search(ctx, hp) -> SearchOutcome``. The harness (``mpqbench.search.run``) builds the
context, measures nothing itself — each method wraps its real step function in ``ctx.meter`` — and turns
the outcome into a policy JSON that always meets the budget.

Baselines live in ``baselines/``, one file per method; :func:`load_plugins` imports them so they
register themselves exactly like the built-in methods.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Dataset

from mpqbench.runs import DEFAULT_BUDGET_FLOOR
from mpqbench.cost import SearchCostMeter
from mpqbench.registry import Registry


class NoHparams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class SearchContext:
    """Everything a method may use. The proxy data are at the proxy geometry; costs are on the target's."""

    arch: str
    proxy: str  # label of the proxy (dataset name, or e.g. "fashion-mnist-subset")
    proxy_train: Dataset
    num_classes: int
    in_channels: int
    input_size: int  # proxy input size (the supernet is built at this geometry)
    width: float
    target_macs: dict[str, int]  # per-layer MACs of the deployed (target-geometry) model
    searchable: list[str]
    fixed: list[str]
    budget_name: str
    budget_bitops_g: float  # searchable-only BitOPs of the budget on the target geometry, in 1e9
    w_candidates: list[int]
    a_candidates: list[int]
    seed: int
    device: torch.device
    meter: SearchCostMeter
    teacher_ckpt: Path | None = None
    progress: bool = True
    work_dir: Path | None = None  # where a method may checkpoint to resume a long search
    teacher_meta: dict[str, Any] | None = None  # set by load_teacher: the teacher checkpoint's meta (its cost)
    # the budget window is [budget_floor, 1] × budget: methods that can choose how much to spend aim inside it
    budget_floor: float = DEFAULT_BUDGET_FLOOR
    precision: str = "fp32"  # "bf16": the network's forward under CPU/CUDA bf16 autocast (quantizers in fp32)

    def bitops_g(self, layers: dict[str, tuple[int, int]]) -> float:
        """Searchable-only BitOPs (1e9) of a per-layer assignment on the target geometry."""
        from mpqbench.cost import bitops_g

        return bitops_g(self.target_macs, layers)

    def load_teacher(self, what: str = "FP teacher") -> torch.nn.Module:
        """The FP model pretrained on the proxy (``--teacher``), checked against this search, on ``device``."""
        from mpqbench.errors import UserError
        from mpqbench.models import get_model
        from mpqbench.pipeline import load_checkpoint

        if self.teacher_ckpt is None:
            raise UserError(f"this method needs an {what} pretrained on the proxy; pass --teacher FP.pt")
        ckpt = load_checkpoint(self.teacher_ckpt, what)
        meta = self.teacher_meta = ckpt["meta"]
        want = (self.arch, self.num_classes, self.in_channels, self.input_size, self.width)
        have = (meta["arch"], meta["num_classes"], meta["in_channels"], meta["input_size"], meta["width"])
        if have != want:
            raise UserError(
                f"the {what} {self.teacher_ckpt} is (arch, classes, channels, input size, width) = {have}, the "
                f"search needs {want}; pretrain it with `mpqbench pretrain --arch {self.arch} --dataset <proxy> "
                f"--input-size {self.input_size} --width {self.width}`"
            )
        model = get_model(self.arch, num_classes=self.num_classes, in_channels=self.in_channels,
                          input_size=self.input_size, width=self.width)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(self.device)


@dataclass
class SearchOutcome:
    layers: dict[str, tuple[int, int]]
    epochs: float
    repaired: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # iterative searches: the step and the MACs processed by the time the argmax policy reached its
    # final value (see :func:`settle_point`); None for one-shot methods
    settled_step: int | None = None
    settled_macs: float | None = None
    # how the policy was read from the method's preferences ("ilp", "argmax", "uniform-p"; None: no such step)
    extraction: str | None = None
    # per layer {"w": nats, "a": nats}: how decided the method's final distributions were (None: no distributions)
    entropy: dict[str, dict[str, float]] | None = None
    # compact per-quarter-epoch log {"step", "macs", "loss", "bitops_ratio"[, "rho", "gap", "grad_norm"]}
    trace: list[dict[str, Any]] | None = None


def settle_point(history: list[dict[str, Any]]) -> tuple[int, float] | None:
    """(step, MACs processed) of the first history entry from which on the recorded argmax policy
    (``"policy"``) never differs from the last entry's; None without a recorded policy.

    A retrospective convergence measure of a fixed-length search: entries are the periodic snapshots
    ``{"step", "macs", "policy", ...}`` of the search loop, the last one taken at the final step.
    """
    marks = [h for h in history if "policy" in h and "macs" in h]
    if not marks:
        return None
    final, first = marks[-1]["policy"], len(marks) - 1
    while first > 0 and marks[first - 1]["policy"] == final:
        first -= 1
    return int(marks[first]["step"]), float(marks[first]["macs"])


class Method:
    """Base class: subclasses set ``Hparams`` and implement :meth:`search`."""

    name: ClassVar[str] = ""
    Hparams: ClassVar[type[BaseModel]] = NoHparams
    needs_teacher: ClassVar[bool] = False
    # Searches directly on the target dataset (the expensive conventional reference).
    searches_on_target: ClassVar[bool] = False
    # False for the controls, which choose a policy without running a network (0 MACs of search cost)
    runs_network: ClassVar[bool] = True
    # True for searches that iterate over the proxy and record a settle point; False for one-shot methods
    iterative: ClassVar[bool] = True

    def search(self, ctx: SearchContext, hp: BaseModel) -> SearchOutcome:  # pragma: no cover - interface
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator: register ``cls`` under ``name`` (raises on a duplicate name)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Import the built-in methods and every module of the ``baselines`` package (once)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    importlib.import_module("mpqbench.search.controls")
    importlib.import_module("mpqbench.search.differentiable")
    try:
        import baselines
    except ImportError:  # pragma: no cover - baselines ship with mpqbench
        return
    for info in pkgutil.iter_modules(baselines.__path__):
        importlib.import_module(f"baselines.{info.name}")


def get_method(name: str) -> type[Method]:
    load_plugins()
    return METHODS.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    load_plugins()
    return METHODS.names(pattern)
