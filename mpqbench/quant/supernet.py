"""Mixed-precision supernet layers (EdMIPS-style composite convolution with LSQ candidates).

Forward of a searchable layer with weight candidates B_w (logits α_w) and activation candidates B_a (α_a):
    x̃ = Σ_i softmax(α_a)_i · Q_a,i(x),   W̃ = Σ_j softmax(α_w)_j · Q_w,j(W),   y = conv(x̃, W̃)
— one shared FP weight, one LSQ quantizer (own learnable step) per candidate, and ONE convolution with the
mixed weight. Each mixture is one autograd node (`lsq_mix`): candidates computed in shared buffers, or in
one fused kernel with the compiled backend; the backward recomputes them instead of storing K copies.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mpqbench.quant.layers import conv_like
from mpqbench.quant.lsq import LsqQuantizer, lsq_mix

M = TypeVar("M", bound="_Mixed")


class _Mixed:
    """Mixin over nn.Conv2d / nn.Linear: candidates, logits `alpha_w` [len(w_candidates)] / `alpha_a`
    [len(a_candidates)] (zeros: uniform softmax), one LSQ quantizer per candidate.

    Constructor = the FP layer's arguments plus keywords w_candidates, a_candidates, w_per_channel.
    """

    def __init__(self, *args, w_candidates: list[int], a_candidates: list[int], w_per_channel: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert w_candidates and a_candidates, "need at least one weight and one activation candidate"
        self.w_candidates, self.a_candidates = list(w_candidates), list(a_candidates)
        dev = self.weight.device
        self.alpha_w = nn.Parameter(torch.zeros(len(w_candidates), device=dev))
        self.alpha_a = nn.Parameter(torch.zeros(len(a_candidates), device=dev))
        self.act_quants = nn.ModuleList(LsqQuantizer(b) for b in a_candidates)
        self.weight_quants = nn.ModuleList(LsqQuantizer(b, signed=True, per_channel=w_per_channel,
                                                        channels=self.weight.shape[0]) for b in w_candidates)
        self.to(dev)

    @classmethod
    def from_float(cls: type[M], module: nn.Module, w_candidates: list[int], a_candidates: list[int], *,
                   w_per_channel: bool = True) -> M:
        """A supernet copy of `module` (same geometry, copied FP weight/bias) over the candidates."""
        return conv_like(cls, module, w_candidates=w_candidates, a_candidates=a_candidates,
                         w_per_channel=w_per_channel)

    def mixed_input(self, x: Tensor) -> Tensor:
        return lsq_mix(x, self.act_quants, self.alpha_a.softmax(0))

    def mixed_weight(self) -> Tensor:
        return lsq_mix(self.weight, self.weight_quants, self.alpha_w.softmax(0))

    def quantized_weight(self) -> Tensor:
        """The mixed weight the forward uses (computed now)."""
        return self.mixed_weight()

    def _weight(self) -> Tensor:
        frozen = getattr(self, "_frozen_weight", None)
        return self.quantized_weight() if frozen is None else frozen

    def expected_bits(self) -> tuple[Tensor, Tensor]:
        """(E[b_w], E[b_a]) = Σ softmax(α)·bits, 0-dim tensors differentiable w.r.t. the α's."""
        bw = torch.tensor(self.w_candidates, dtype=self.alpha_w.dtype, device=self.alpha_w.device)
        ba = torch.tensor(self.a_candidates, dtype=self.alpha_a.dtype, device=self.alpha_a.device)
        return (self.alpha_w.softmax(0) * bw).sum(), (self.alpha_a.softmax(0) * ba).sum()

    def argmax_bits(self) -> tuple[int, int]:
        """(w_bits, a_bits) of the most probable candidates (first one on ties)."""
        return self.w_candidates[int(self.alpha_w.argmax())], self.a_candidates[int(self.alpha_a.argmax())]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w_candidates={self.w_candidates}, a_candidates={self.a_candidates}"


class MixedConv2d(_Mixed, nn.Conv2d):
    """Supernet nn.Conv2d: conv(Σ softmax(α_a)·Q_a(x), Σ softmax(α_w)·Q_w(W))."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.mixed_input(x), self._weight(), self.bias)


class MixedLinear(_Mixed, nn.Linear):
    """Supernet nn.Linear: linear(Σ softmax(α_a)·Q_a(x), Σ softmax(α_w)·Q_w(W))."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.mixed_input(x), self._weight(), self.bias)
