"""Fixed-precision LSQ layers: QConv2d / QLinear quantize their input and their weight, then run the FP op.

`.weight` / `.bias` stay the full-precision parameters (the latent weights QAT trains); the quantizers are
`act_quant` (signedness detected on the first batch) and `weight_quant` (signed, per output channel by default).
"""

from __future__ import annotations

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


class _Quantized:
    """Mixin: attaches `act_quant` / `weight_quant` for `w_bits` / `a_bits`."""

    def _attach(self, w_bits: int, a_bits: int, w_per_channel: bool) -> None:
        self.w_bits, self.a_bits = w_bits, a_bits
        out = self.weight.shape[0]
        self.act_quant = LsqQuantizer(a_bits)
        self.weight_quant = LsqQuantizer(w_bits, signed=True, per_channel=w_per_channel, channels=out)
        self.to(self.weight.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"


class QConv2d(_Quantized, nn.Conv2d):
    """nn.Conv2d on LSQ-quantized input and weight. Extra keywords: w_bits, a_bits, w_per_channel."""

    def __init__(self, *args, w_bits: int = 8, a_bits: int = 8, w_per_channel: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attach(w_bits, a_bits, w_per_channel)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, w_bits: int, a_bits: int, *, w_per_channel: bool = True) -> QConv2d:
        return conv_like(cls, module, w_bits=w_bits, a_bits=a_bits, w_per_channel=w_per_channel)


class QLinear(_Quantized, nn.Linear):
    """nn.Linear on LSQ-quantized input and weight. Extra keywords: w_bits, a_bits, w_per_channel."""

    def __init__(self, *args, w_bits: int = 8, a_bits: int = 8, w_per_channel: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attach(w_bits, a_bits, w_per_channel)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, w_bits: int, a_bits: int, *, w_per_channel: bool = True) -> QLinear:
        return conv_like(cls, module, w_bits=w_bits, a_bits=a_bits, w_per_channel=w_per_channel)
