"""SEAM-like (Tang et al., *SEAM: Searching Transferable Mixed-Precision Quantization Policy through Large
Margin Regularization*, ACM MM 2023, arXiv 2302.06845): the shared differentiable search started from the
target-trained FP model, with a large-margin regulariser on the penultimate features.

"SEAM-like", not SEAM: no public code of the paper was found (the first author's page lists a PDF only), and
the paper's equations beyond the abstract and the framework figure could not be read, so the exact form of its
large-margin term (its Eq. 10), its weights and margin, its bit set and its search schedule are **not checked**.
What is implemented is the method as the abstract and figure describe it, with every unknown a documented
choice of ours (docs/methods.md, "SEAM").

**Start model.** SEAM searches a policy *for a model trained on the large target dataset*, using a small proxy
dataset. The search starts from the target FP model every fine-tune uses (``teacher_from = "target"``; the
workflow passes it as ``--teacher``), rebuilt at the proxy geometry with a fresh classifier for the proxy's
classes (:meth:`SearchContext.load_target_fp` with ``new_head=True``: normal(0, 0.01) weights, zero bias,
seeded by the search seed). :meth:`Seam.prepare` copies those weights into the supernet the host built (every
conv/linear/BatchNorm tensor; the supernet's α's and LSQ steps are not in an FP model). The host calls
``prepare`` before its calibration forward, so the LSQ steps of every candidate are initialised from the
target weights and the proxy's first batch.

**Loss** (single-level host loop, ``mpqbench.search.differentiable``; one backward per proxy batch, θ, α and
the LSQ steps step together)::

    L = CE(logits, y) + λ_m · L_margin + complexity term (host) [+ host's optional entropy term]

    z_i = input of the classifier (penultimate features, after global pooling), f_i = z_i / ‖z_i‖₂
    μ_c = mean of f_i over the batch's samples of class c            (classes present in the batch, set P)
    L_intra = 1/B · Σ_i ‖f_i − μ_{y_i}‖²                             (intra-class compactness)
    L_inter = 1/|pairs| · Σ_{a<b ∈ P} max(0, m − ‖μ_a − μ_b‖)²         (inter-class separation by margin m)
    L_margin = L_intra + γ · L_inter

L_margin is 0 exactly when every class present is compact (all its unit features equal) and every two class
centres are at least m apart; it reaches θ and α through the features, so the search prefers bit-widths whose
quantization noise keeps the features discriminative — the property the paper argues is dataset-independent.
Defaults (ours; the paper's are not known): λ_m = 1 (``margin_weight``), γ = 1 (``inter_weight``), m = 0.5
(``margin``, a Euclidean distance between centres of unit features: 0.5 is an angle of about 29° between two
compact classes), ``normalize`` True. The host's defaults for everything else (25 epochs, batch 256, SGD
lr_w 0.1 / lr_α 0.01, the ``target`` complexity term with λ = 5, ``extraction="ilp"``: the most probable policy
in the budget window [floor, 1] × budget; ``"argmax"`` is the published read-out).

Deviations from the paper (as far as it could be checked): (1) the large-margin term is our centre-based
formulation above, not necessarily the paper's Eq. 10; (2) class centres are the batch's class means (no
learned or moving-average centres: no state beyond the host's, deterministic, resumable); (3) features are
unit-normalised so the margin does not depend on the feature scale, which a quantizer changes; (4) the
complexity term is the host's BitOPs term on the target geometry and the policy is read by the harness's
budget-matched extraction (the paper takes the argmax, available as ``extraction="argmax"``); (5) the network
weights are trained during the search as in the host (whether SEAM freezes them could not be checked); (6) the
figure's deployment step ("+ Eq. 11", presumably a margin term during the target fine-tune) is not implemented:
every policy of the harness is fine-tuned by the same recipe; (7) the bit candidates are the suite's.
The proxy data only are searched on; reading the target FP model costs no search compute (its training is the
fine-tune's start model, shared by every entry). Every forward/backward on the proxy is metered by the host.

The outcome's ``extra["margin"]`` records L_intra and L_inter of the first and the last search step of this
run (the first is the start model's, read with the searching supernet at uniform α), and ``extra["start_fp"]``
the target FP checkpoint's dataset, input size and top-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mpqbench.models import fixed_layer_names
from mpqbench.search import SearchContext, SearchOutcome, register_method
from mpqbench.search.differentiable import DiffHparams, DifferentiableSearch

__all__ = ["Seam", "SeamHparams", "margin_loss", "penultimate_features"]


def margin_loss(features: torch.Tensor, labels: torch.Tensor, *, margin: float, inter_weight: float = 1.0,
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L_intra + γ · L_inter, L_intra, L_inter)`` of a batch of features ``[B, ...]`` with integer ``labels``.

    ``f`` = the flattened features, unit-normalised per sample when ``normalize``; ``μ_c`` = mean of ``f`` over the
    batch's samples of class ``c``; ``L_intra`` = mean over samples of ‖f_i − μ_{y_i}‖²; ``L_inter`` = mean over
    the unordered pairs of classes present of max(0, margin − ‖μ_a − μ_b‖)² (0 with fewer than two classes).
    Computed in fp32 at least (fp64 stays fp64), with one-hot matrix products (deterministic on CUDA, unlike
    scatter-adds).
    """
    f = features.flatten(1).to(torch.promote_types(features.dtype, torch.float32))  # bf16/fp16 → fp32
    if normalize:
        f = F.normalize(f, dim=1)
    labels = labels.long()
    _, idx = torch.unique(labels, sorted=True, return_inverse=True)  # class index among the classes present
    onehot = F.one_hot(idx).to(f.dtype)  # [B, P]
    counts = onehot.sum(0)  # [P]
    centres = (onehot.t() @ f) / counts[:, None]  # [P, D]
    intra = (f - onehot @ centres).pow(2).sum(1).mean()
    n = centres.shape[0]
    if n < 2:
        inter = f.new_zeros(())
    else:
        a, b = torch.triu_indices(n, n, offset=1, device=f.device)
        # the small constant keeps the gradient finite (zero) when two centres coincide
        dist = ((centres[a] - centres[b]).pow(2).sum(1) + 1e-12).sqrt()
        inter = F.relu(margin - dist).pow(2).mean()
    return intra + inter_weight * inter, intra, inter


def penultimate_features(model: nn.Module, x: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, features)``: one forward of ``model``, features = the input of the classifier module ``head``."""
    store: dict[str, torch.Tensor] = {}

    def grab(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        store["z"] = inputs[0]

    handle = model.get_submodule(head).register_forward_pre_hook(grab)
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, store["z"]


class SeamHparams(DiffHparams):
    """The host's search recipe plus the large-margin term (defaults ours: the paper's are not known)."""

    margin_weight: float = Field(1.0, ge=0, description="λ_m of the large-margin term (0: off, the host's loss)")
    inter_weight: float = Field(1.0, ge=0, description="γ: weight of inter-class separation vs intra-class compactness")
    margin: float = Field(0.5, ge=0, description="m: least distance between class centres of the (unit) features")
    normalize: bool = Field(True, description="unit-normalise the penultimate features before the margin term")


@register_method("seam")
class Seam(DifferentiableSearch):
    """SEAM-like: the host search from the target FP model (fresh head) with a large-margin feature term."""

    Hparams = SeamHparams
    needs_teacher = True
    teacher_from = "target"
    smoke_hparams = {"epochs": 0.3, "batch_size": 64}

    def prepare(self, ctx: SearchContext, hp: SeamHparams, supernet: nn.Module) -> None:
        """Load the target FP weights (fresh classifier) into the supernet and find its classifier."""
        start = ctx.load_target_fp("SEAM start model (the target FP model)", new_head=True)
        if _calibrated(supernet):  # the host calibrates the LSQ steps after prepare; loading later leaves stale steps
            raise RuntimeError("SEAM must load the start weights before the LSQ steps are calibrated")
        missing, unexpected = supernet.load_state_dict(start.state_dict(), strict=False)
        stray = [k for k in missing if not _search_only(k)]  # every FP tensor must have been copied
        if unexpected or stray:
            raise RuntimeError(f"the start model and the supernet disagree: unexpected {unexpected[:3]}, "
                               f"not loaded {stray[:3]}")
        self.head = fixed_layer_names(supernet)[1]
        meta = ctx.teacher_meta or {}
        self.start_fp = {k: meta.get(k) for k in ("dataset", "input_size", "num_classes", "top1")}
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def aux_loss(self, supernet: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: SearchContext, hp: SeamHparams):
        if hp.margin_weight == 0:
            return supernet(x), None
        logits, feats = penultimate_features(supernet, x, self.head)
        total, intra, inter = margin_loss(feats, y, margin=hp.margin, inter_weight=hp.inter_weight,
                                          normalize=hp.normalize)
        self._last = (intra.detach(), inter.detach())
        if self._first is None:
            self._first = self._last
        return logits, hp.margin_weight * total

    def search(self, ctx: SearchContext, hp: SeamHparams) -> SearchOutcome:
        outcome = super().search(ctx, hp)
        outcome.extra["start_fp"] = self.start_fp
        if self._first is not None and self._last is not None:
            outcome.extra["margin"] = {f"{side}_{k}": float(v) for side, pair in (("first", self._first),
                                       ("last", self._last)) for k, v in zip(("intra", "inter"), pair)}
        return outcome


def _calibrated(supernet: nn.Module) -> bool:
    """True when any LSQ quantizer of the supernet has already initialised its step from data."""
    return any(bool(buf) for name, buf in supernet.named_buffers() if name.endswith(".initialized"))


def _search_only(key: str) -> bool:
    """State-dict keys of the supernet that an FP model has not: the α's and the LSQ quantizers' steps/buffers."""
    return key.endswith((".alpha_w", ".alpha_a")) or ".act_quants." in key or ".weight_quants." in key
