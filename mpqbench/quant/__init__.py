"""LSQ quantization: fixed-precision layers for fine-tuning and mixed-precision supernet layers for search.

    quantize_model(model, {"layer1.0.conv1": (3, 3), "conv1": (8, 8), ...})   # in place, QAT model
    build_supernet(model, names, [2, 3, 4], [2, 3, 4])                          # in place, search model
    opt_w = SGD(weight_parameters(model) + quantizer_parameters(model)); opt_a = SGD(arch_parameters(model))

Quantizer steps and signedness are initialised from the first batch a layer sees: run one forward pass
(e.g. under torch.no_grad()) on a representative batch before training to calibrate them.
Backends: `set_backend("native" | "eager" | "compiled" | "reference")` or MPQBENCH_LSQ_BACKEND (see lsq.py);
"native" (fused C kernels, compiled once per machine) is the default.
Evaluation: `with frozen_weights(model): ...` quantizes every layer's weight once for the whole block.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn

from mpqbench.errors import UserError
from mpqbench.quant.layers import QConv2d, QLinear
from mpqbench.quant.lsq import LsqQuantizer, get_backend, lsq_fake_quant, quant_error_sq, set_backend
from mpqbench.quant.supernet import MixedConv2d, MixedLinear

__all__ = ["LsqQuantizer", "QConv2d", "QLinear", "MixedConv2d", "MixedLinear", "quantize_model",
           "build_supernet", "mixed_layers", "arch_parameters", "weight_parameters", "quantizer_parameters",
           "lsq_fake_quant", "quant_error_sq", "set_backend", "get_backend", "frozen_weights"]

_SWAPPED = (QConv2d, QLinear, MixedConv2d, MixedLinear)


def _swap(model: nn.Module, names: list[str], make: Callable[[nn.Module, str], nn.Module]) -> None:
    """Replace each named plain Conv2d/Linear of `model` by make(module, name); all names checked first."""
    found = dict(model.named_modules())
    for name in names:
        m = found.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or isinstance(m, _SWAPPED):
            what = "no such module" if m is None else f"it is a {type(m).__name__}"
            raise UserError(f"cannot quantize layer {name!r}: {what}; name a plain Conv2d/Linear of the model "
                            "(see `mpqbench complexity` for the layer names)")
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make(found[name], name))


def quantize_model(model: nn.Module, bits: dict[str, tuple[int, int]]) -> nn.Module:
    """Swap the named Conv2d/Linear for QConv2d/QLinear at bits[name] = (w_bits, a_bits), in place."""
    def make(m: nn.Module, name: str) -> nn.Module:
        cls = QConv2d if isinstance(m, nn.Conv2d) else QLinear
        return cls.from_float(m, *bits[name])
    _swap(model, list(bits), make)
    return model


def build_supernet(model: nn.Module, names: list[str], w_candidates: list[int], a_candidates: list[int]) -> nn.Module:
    """Swap the named Conv2d/Linear for MixedConv2d/MixedLinear over the candidates, in place."""
    def make(m: nn.Module, name: str) -> nn.Module:
        cls = MixedConv2d if isinstance(m, nn.Conv2d) else MixedLinear
        return cls.from_float(m, w_candidates, a_candidates)
    _swap(model, list(names), make)
    return model


def mixed_layers(model: nn.Module) -> dict[str, MixedConv2d | MixedLinear]:
    """The supernet layers of `model` by module name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (MixedConv2d, MixedLinear))}


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All α logits (alpha_w, alpha_a of every mixed layer)."""
    return [p for m in mixed_layers(model).values() for p in (m.alpha_w, m.alpha_a)]


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All LSQ step sizes."""
    return [m.step for m in model.modules() if isinstance(m, LsqQuantizer)]


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is neither an α nor an LSQ step (conv/linear weights, biases, BatchNorm affine)."""
    other = {id(p) for p in arch_parameters(model) + quantizer_parameters(model)}
    return [p for p in model.parameters() if id(p) not in other]


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every quantized and supernet layer of ``model`` uses the (mixed) fake-quantized weight
    computed once on entry (without autograd) instead of quantizing its weight on every forward.

    For evaluation: nothing inside may change the weights, the quantizer steps or the α's (the layers would
    keep using the weights of the entry). Nested uses recompute on entry and restore the outer ones on exit.
    """
    layers = [m for m in model.modules() if isinstance(m, _SWAPPED)]
    saved = [getattr(m, "_frozen_weight", None) for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m._frozen_weight = None
                m._frozen_weight = m.quantized_weight()
        yield model
    finally:
        for m, w in zip(layers, saved):
            m._frozen_weight = w
