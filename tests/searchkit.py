"""Tiny search contexts for the method tests: the same SearchContext every method test builds, written once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpqbench.cost import CostMeter, arch_cost, budget_bitops_g
from mpqbench.search import SearchContext


def tiny_context(teacher: Path | None, *, proxy_train: Any = None, arch: str = "resnet20", width: float = 0.25,
                 input_size: int = 8, num_classes: int = 10, in_channels: int = 1, budget: str = "w3a3",
                 budget_g: float | None = None, meter: CostMeter | None = None, **extra: Any) -> SearchContext:
    """A search context on the ``arch`` geometry with candidates {2, 3, 4}, seed 0, CPU, no progress bars and
    the digits proxy. ``budget_g`` is the budget in G BitOPs (default: the uniform reference ``budget`` on the
    searchable layers); ``extra`` passes the other SearchContext fields (seed, work_dir, state_key, ...)."""
    cost = arch_cost(arch, input_size=input_size, num_classes=num_classes, in_channels=in_channels, width=width)
    searchable = list(cost.searchable)
    fields: dict[str, Any] = dict(
        arch=arch, proxy="digits", proxy_train=proxy_train, num_classes=num_classes, in_channels=in_channels,
        input_size=input_size, width=width, target_macs=cost.macs, searchable=searchable, fixed=list(cost.fixed),
        budget_name=budget,
        budget_bitops_g=budget_bitops_g(budget, cost.macs, searchable) if budget_g is None else budget_g,
        w_candidates=[2, 3, 4], a_candidates=[2, 3, 4], seed=0, device=torch.device("cpu"),
        meter=meter if meter is not None else CostMeter(), progress=False, teacher_ckpt=teacher,
        proxy_dataset="digits")
    fields.update(extra)
    return SearchContext(**fields)
