"""Optimizers for the weight step of the differentiable MPQ search."""

from mpqbench.optim.asga import ASGA, EXTRA_GRAD_MODES, bn_stats_frozen

__all__ = ["ASGA", "EXTRA_GRAD_MODES", "bn_stats_frozen"]
