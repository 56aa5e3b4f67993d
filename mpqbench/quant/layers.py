"""Fixed-precision LSQ layers: QConv2d / QLinear quantize their input and their weight, then run the FP op.

`.weight` / `.bias` stay the full-precision parameters (the latent weights QAT trains); the quantizers are
`act_quant` (signedness detected on the first batch) and `weight_quant` (signed, per output channel by default).
Inside :func:`mpqbench.quant.frozen_weights` a layer uses the quantized weight computed on entry instead of
quantizing its weight on every forward.
"""

from __future__ import annotations

from typing import TypeVar

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mpqbench.quant.lsq import LsqQuantizer


def conv_like(cls: type[nn.Module], module: nn.Module, **extra) -> nn.Module:
    """A new `cls` with the geometry of `module` (nn.Conv2d or nn.Linear) and a copy of its parameters/buffers."""
    p = module.weight
    if isinstance(module, nn.Conv2d):
        new = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                  padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=module.bias is not None, padding_mode=module.padding_mode, device=p.device, dtype=p.dtype,
                  **extra)
    else:
        new = cls(module.in_features, module.out_features, bias=module.bias is not None, device=p.device,
                  dtype=p.dtype, **extra)
    new.load_state_dict(module.state_dict(), strict=False)  # copies weight/bias data, no shared storage
    new.train(module.training)
    return new

Q = TypeVar("Q", bound="_Quantized")


class _Quantized:
    """Mixin over nn.Conv2d / nn.Linear: `act_quant` / `weight_quant` for `w_bits` / `a_bits`.

    Constructor = the FP layer's arguments plus keywords w_bits, a_bits, w_per_channel.
    """

    def __init__(self, *args, w_bits: int = 8, a_bits: int = 8, w_per_channel: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.w_bits, self.a_bits = w_bits, a_bits
        self.act_quant = LsqQuantizer(a_bits)
        self.weight_quant = LsqQuantizer(w_bits, signed=True, per_channel=w_per_channel, channels=self.weight.shape[0])
        self.to(self.weight.device)

    @classmethod
    def from_float(cls: type[Q], module: nn.Module, w_bits: int, a_bits: int, *, w_per_channel: bool = True) -> Q:
        """A quantized copy of `module` (same geometry, copied FP weight/bias) at (w_bits, a_bits)."""
        return conv_like(cls, module, w_bits=w_bits, a_bits=a_bits, w_per_channel=w_per_channel)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight the forward uses (computed now)."""
        return self.weight_quant(self.weight)

    def _weight(self) -> Tensor:
        frozen = getattr(self, "_frozen_weight", None)
        return self.quantized_weight() if frozen is None else frozen


class QConv2d(_Quantized, nn.Conv2d):
    """nn.Conv2d on LSQ-quantized input and weight."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self._weight(), self.bias)


class QLinear(_Quantized, nn.Linear):
    """nn.Linear on LSQ-quantized input and weight."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self._weight(), self.bias)
