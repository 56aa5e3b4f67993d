"""GMPQ (Wang et al., ICCV 2021): the shared search plus attribution imitation of an FP teacher.

A full-precision teacher of the same arch, pretrained on the proxy (``mpqbench pretrain`` — a cached
artefact of the workflow), is kept in eval mode. For every image, a Grad-CAM-like map of the last stage
is computed for the teacher and for the supernet: channel weights w_c = spatial mean of ∂s/∂F_c, where s
is the logit of the network's own predicted class and F the last-stage feature map, and
A = ReLU(Σ_c w_c F_c). The supernet's map is built with ``create_graph=True`` so that the loss reaches
both θ and α (double back-propagation). The loss adds

    a_w · 1/(B·H·W) · Σ_i ‖n(A_teacher,i^p) − n(A_student,i)‖²,   n = per-image L2 normalisation,

p = 3, a_w = 20: the squared difference of the normalised maps averaged over all batch × pixel elements,
the scale of the reference code's ``cal_l2loss`` (whose defaults are a_w = 20, p = 3). Because each
normalised map has unit norm, the per-image sum is bounded by 4 whatever the map size, so the loss scales
as 1/(H·W) across proxies and architectures: the same a_w is 16× weaker on ResNet-20's 4×4 last stage at a
16-px proxy than on a 1×1 map, and 49× weaker at 7×7 (ResNet-18/50 at 224 px) — as in the reference code.
The weight 20 was re-checked on the default suite's geometry by a short sweep (docs/methods.md, "GMPQ").

Grad-CAM gradient (ours, cheaper than the reference code, same value): ∂s/∂F is taken by
``torch.autograd.grad(s, F)``, which only runs back through what lies between F and the logits — global
average pooling and the classifier. For a map of the last stage that is exact: s depends on F through those
two layers only. The reference code instead calls ``out.backward(grad_out, create_graph=True)`` (student)
and ``out.backward(grad_out, retain_graph=True)`` (teacher), a full backward pass through every layer
into every parameter, of which only F's gradient is used. By counting (``FlopCounterMode`` on the default
suite's ResNet-20 at 16 px, see docs/methods.md; a count of the multiply-accumulates each scheme performs,
not a timing), one search step of the reference scheme costs about 2× ours (ours: student forward and
backward plus a teacher forward; the reference adds a full student backward and a full teacher backward).
A map taken before the last stage would need the gradient through the later stages: this implementation
only supports the last stage (``LAST_STAGE``).

Deviations from the released code: the teacher is in eval mode, so its BatchNorm statistics are fixed and
it receives no gradient; channel weights are the spatial *mean* of the gradient (Grad-CAM) where the code
takes the spatial sum — a per-image factor H·W that the L2 normalisation removes; p is a fixed number (the
code's option of a p tied to the expected bit-widths, ``--pnorm 0``, is not implemented).

``gmpq-asga`` is the same search with ASGA's weight step (the paper's "GMPQ-ASGA").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mpqbench.errors import UserError
from mpqbench.search import SearchContext, register_method
from mpqbench.search.differentiable import AsgaHparams, DiffHparams, DifferentiableSearch

# Module path of the last stage (its output is the feature map F) per arch.
LAST_STAGE = {"resnet20": "layer3", "resnet18": "layer4", "resnet50": "layer4", "mobilenet_v2": "features"}


def last_stage(arch: str) -> str:
    try:
        return LAST_STAGE[arch]
    except KeyError:
        raise UserError(f"GMPQ does not know the last stage of {arch}; add it to baselines.gmpq.LAST_STAGE") from None


def attribution_maps(model: nn.Module, x: torch.Tensor, stage: str, *, create_graph: bool):
    """``(logits [B, K], maps [B, H, W])``: Grad-CAM-like maps of ``stage`` for each image's predicted class."""
    store: dict[str, torch.Tensor] = {}
    handle = model.get_submodule(stage).register_forward_hook(lambda _m, _i, out: store.__setitem__("f", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    feats = store["f"]
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(score, feats, create_graph=create_graph)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    return logits, F.relu((weights * feats).sum(dim=1))


def attribution_loss(teacher_maps: torch.Tensor, student_maps: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    """Mean over all B × H × W elements of (n(A_t^p) − n(A_s))², n = L2 normalisation of each flattened map.

    The reference code's ``cal_l2loss`` scale: 1/(H·W) times the per-image squared distance averaged over
    images, so it shrinks as 1/(H·W) with the map size.
    """
    t = F.normalize(teacher_maps.flatten(1).pow(p), dim=1)
    s = F.normalize(student_maps.flatten(1), dim=1)
    return (t - s).pow(2).mean()


class GmpqHparams(DiffHparams):
    attribution_weight: float = Field(20.0, description="a_w of the attribution imitation loss (a mean over "
                                      "batch × pixels, the reference code's scale)")
    attribution_p: float = Field(3.0, description="power p applied to the teacher's map")


class GmpqAsgaHparams(AsgaHparams, GmpqHparams):
    """ASGA's settings and GMPQ's attribution settings."""


class _GmpqMixin:
    needs_teacher = True

    def prepare(self, ctx: SearchContext, hp, supernet: nn.Module) -> None:
        teacher = ctx.load_teacher("GMPQ teacher")
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        self.stage = last_stage(ctx.arch)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def teacher_maps(self, x: torch.Tensor) -> torch.Tensor:
        # The teacher's map depends on the batch only, so ASGA's second pass reuses it.
        if self._cache is None or self._cache[0] is not x:
            with torch.enable_grad():
                # The frozen teacher's F needs a graph back to something: the input stands in for it.
                _, maps = attribution_maps(self.teacher, x.detach().requires_grad_(True), self.stage, create_graph=False)
            self._cache = (x, maps.detach())
        return self._cache[1]

    def aux_loss(self, supernet: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: SearchContext, hp):
        target = self.teacher_maps(x)
        logits, maps = attribution_maps(supernet, x, self.stage, create_graph=True)
        return logits, hp.attribution_weight * attribution_loss(target, maps, hp.attribution_p)


@register_method("gmpq")
class Gmpq(_GmpqMixin, DifferentiableSearch):
    """GMPQ on the EdMIPS host with plain SGD."""

    Hparams = GmpqHparams


@register_method("gmpq-asga")
class GmpqAsga(_GmpqMixin, DifferentiableSearch):
    """GMPQ with ASGA's weight step: the proposed optimiser on this baseline's objective (it lives here, with
    the GMPQ logic it extends)."""

    Hparams = GmpqAsgaHparams
    role = "proposed"
