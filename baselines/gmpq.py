"""GMPQ (Wang et al., ICCV 2021): the shared search plus attribution imitation of an FP teacher.

A full-precision teacher of the same arch, pretrained on the proxy (``mpqbench pretrain`` — a cached
artefact of the workflow), is kept in eval mode. For every image, a Grad-CAM-like map of the last stage
is computed for the teacher and for the supernet: channel weights w_c = spatial mean of ∂s/∂F_c, where s
is the logit of the network's own predicted class and F the last-stage feature map, and
A = ReLU(Σ_c w_c F_c). The supernet's map is built with ``create_graph=True`` so that the loss reaches
both θ and α (double back-propagation). The loss adds
``a_w · mean_i ‖n(A_teacher,i^p) − n(A_student,i)‖²`` with n = per-image L2 normalisation, p = 3, a_w = 20.

Deviation from the released code (documented in the research notes): the teacher is in eval mode, so
its BatchNorm statistics are fixed and it receives no gradient.

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
    """mean over images of ‖n(A_t^p) − n(A_s)‖², n = L2 normalisation of the flattened map."""
    t = F.normalize(teacher_maps.flatten(1).pow(p), dim=1)
    s = F.normalize(student_maps.flatten(1), dim=1)
    return (t - s).pow(2).sum(dim=1).mean()


class GmpqHparams(DiffHparams):
    attribution_weight: float = Field(20.0, description="a_w of the attribution imitation loss")
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
    """GMPQ with ASGA's weight step."""

    Hparams = GmpqAsgaHparams
