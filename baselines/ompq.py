"""OMPQ (Ma et al., AAAI 2023): layer orthogonality of an FP model on one batch, then a bit allocation.

*OMPQ: Orthogonal Mixed Precision Quantization*; reference code ``MAC-AutoML/OMPQ``
(``mixed_bit/feature_extract.py``, ``mixed_bit/ORM.py``, ``mixed_bit/models/resnet_imagenet.py``). The whole
baseline is this file. Search-free: one forward pass of one proxy batch, no training, no iteration.

**Features.** The target FP start model (``--teacher``, ``ctx.load_target_fp()``; the paper uses a pretrained
model) at the proxy geometry runs one proxy batch of ``batch_size`` images (the code's default 32). The
network is deconstructed into functions f_1 … f_K, one per *entry*, in execution order; X_k = f_k(x) flattened
to [n, ·] is the feature of the sub-network up to and including entry k (the code's ``feature_extract``,
QAT mode, generalised from its ResNet/MobileNetV2 definitions to the harness's archs):

- a ResNet basic block (CIFAR ResNet-20, ResNet-18): conv1 → ReLU(BN1(conv1 ·)); conv2 *and the block's
  down-sample conv* → the block output (the code's one entry per block output, whose bit the down-sample conv
  shares); a bottleneck (ResNet-50): conv1, conv2 → ReLU(BN(·)) each, conv3 and down-sample → block output;
- a MobileNetV2 inverted residual: each conv+BN+ReLU6 unit → its output; the projection conv → the block output;
- any other searchable layer: the output of its conv-BN-activation unit (a Sequential it opens) or its own output.

The stem and the classifier are fixed (W8A8) and have no entry (the code's QAT mode).

**Orthogonality (ORM).** For every pair of entries, linear CKA of their features (``ORM.orm`` on
``gram_linear``): with K = X Xᵀ, L = Y Yᵀ (n × n) and H = I − 11ᵀ/n,

    ORM(X, Y) = ⟨HKH, HLH⟩_F / (‖HKH‖_F · ‖HLH‖_F)  =  ‖X̃ᵀỸ‖²_F / (‖X̃ᵀX̃‖_F · ‖ỸᵀỸ‖_F),  X̃ = HX,

in float64 (:func:`linear_cka`). It is 1 for X = Y, invariant to orthogonal transforms and isotropic scaling
of either side, and near 0 for independent features when n is large.

**Importance** (the paper's importance factor, ``feature_extract.py``): γ_k = Σ_{j≠k} ORM(k, j) (how
redundant entry k is with all others), θ_k = exp(−β·γ_k) (β = 10, the README's QAT setting; less redundant
→ more important), and, because an entry's precision affects every later function, the objective
coefficient of entry k is the mean importance of it and its successors, c_k = (1/(K−k+1)) Σ_{j≥k} θ_j
(1-based; :func:`ompq_importance`). Nothing is solved for: θ and c are closed-form in the ORM matrix.
θ and c are reported divided by max θ (= exp(−β·min γ)); the positive scale changes no decision and avoids
underflow (β·γ reaches hundreds).

**Bits.** The paper maximises Σ_k c_k · b_k (b_k the weight bits of entry k) under a model-size budget by
an LP over x_k = b_k/8 ∈ [0.5, 1] (QAT), solved with SLSQP and rounded (a DFS repair for ResNet-18). Here
one bit-width per entry from the candidates by the exact ILP of :func:`mpqbench.ilp.solve_bit_allocation`:

    maximise Σ_k c_k · w_k   s.t.   floor · B ≤ Σ_k Σ_{l∈k} MACs_l · w_k · a_l ≤ B,

MACs and the budget B of the target geometry, floor = the suite's window (0.9 by default).
**Activations** (``activations``): ``fixed`` (default, the paper's: only weight bits are searched and the
activation bit-width is one uniform, preset value — mixed/8, mixed/6, mixed/5 in its tables): a = ``a_bits``,
by default the largest activation candidate not above the budget's activation bits (w3a3 → 3, w2.5a2.5 → 2),
else the next candidates (descending, then ascending) until the window admits a weight allocation; ``tied``
(ours): a = w per entry, the same objective, BitOPs Σ MACs·b². Either way every layer's pair is a
candidate pair and the policy lies inside the budget window, or the search stops with one error line.

Hyper-parameters (defaults): ``batch_size`` 32 (the code's ``--train_batch_size``; the workflow passes the
suite's search batch size), ``beta`` 10, ``bn_mode`` "train" (the code runs its freshly built network in
train mode, so BatchNorm normalises with the batch's statistics; "eval" uses the FP model's running
statistics), ``activations`` "fixed", ``a_bits`` None, ``budget_floor`` None (= the suite's window).
The outcome's ``extra`` records the entries and their layers, the ORM matrix, γ, θ, c and the activation bits.

Deviations from the paper and the code: a BitOPs budget with a lower bound (the window) instead of a
model-size budget; an exact ILP over the harness's candidates instead of SLSQP over x ∈ [0.5, 1] and
rounding of 8x; the activation bit-width is chosen from the budget (the paper presets it); the features of
archs the code does not define follow the rules above; the batch comes from the proxy, not the target.
Measured on the default suite (docs/methods.md, "OMPQ"): 0.37 G MACs for 32 images; the ORM of ResNet-20's
entries is 0.73–1 off the diagonal, so θ singles out the last entry and c grows with depth.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mpqbench.cost import parse_budget
from mpqbench.data import make_loader
from mpqbench.errors import UserError
from mpqbench.ilp import solve_bit_allocation
from mpqbench.search import Method, SearchContext, SearchOutcome, register_method


# ---- linear CKA (ORM) and the importance -------------------------------------------------------------------
def centered_gram(x: Tensor) -> Tensor:
    """H (X Xᵀ) H for features x [n, d] (flattened beyond dim 0), float64."""
    x = x.reshape(x.shape[0], -1).double()
    gram = x @ x.T
    mean = gram.mean(dim=0)
    return gram - mean[:, None] - mean[None, :] + mean.mean()


def cka_from_grams(kc: Tensor, lc: Tensor) -> float:
    """Linear CKA from two centred Gram matrices; 0 when either side is constant over the batch."""
    denom = torch.linalg.norm(kc) * torch.linalg.norm(lc)
    return float((kc * lc).sum() / denom) if float(denom) > 0 else 0.0


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (OMPQ's ORM) of two feature sets of the same n samples: x [n, ...], y [n, ...]."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]}")
    return cka_from_grams(centered_gram(x), centered_gram(y))


def orm_matrix(features: Sequence[Tensor]) -> np.ndarray:
    """[K, K] linear CKA between every pair of features (one centred Gram matrix per feature)."""
    grams = [centered_gram(f) for f in features]
    k = len(grams)
    out = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j] = out[j, i] = cka_from_grams(grams[i], grams[j])
    for i in range(k):  # a constant feature has CKA 0 even with itself
        out[i, i] = 1.0 if float(torch.linalg.norm(grams[i])) > 0 else 0.0
    return out


def ompq_importance(orm: np.ndarray, beta: float) -> dict[str, np.ndarray]:
    """OMPQ's importance from the ORM matrix (entries in execution order):
    γ_k = Σ_{j≠k} ORM_kj, θ_k = exp(−β γ_k), c_k = mean(θ_k, …, θ_K) (the LP's coefficient of entry k).
    θ and c are returned divided by max θ (computed in log space: no underflow)."""
    orm = np.asarray(orm, dtype=np.float64)
    if orm.ndim != 2 or orm.shape[0] != orm.shape[1] or orm.shape[0] == 0:
        raise ValueError(f"ORM must be a non-empty square matrix, got shape {orm.shape}")
    gamma = orm.sum(axis=1) - np.diag(orm)
    log_theta = -beta * gamma
    theta = np.exp(log_theta - log_theta.max())
    k = len(theta)
    coef = np.cumsum(theta[::-1])[::-1] / (k - np.arange(k))
    return {"gamma": gamma, "theta": theta, "coef": coef}


# ---- the functions f_k: which feature stands for which searchable layers -----------------------------------
Entry = tuple[tuple[str, ...], str, Callable[[Tensor], Tensor]]  # (layers, module whose output is hooked, map)


def _identity(t: Tensor) -> Tensor:
    return t


def _relu(t: Tensor) -> Tensor:
    return F.relu(t)


def feature_entries(model: nn.Module, searchable: Sequence[str]) -> list[Entry]:
    """The entries (layers sharing one feature, hooked module, map of its output) in module order; every
    searchable layer is in exactly one entry (rules in the module docstring)."""
    wanted = set(searchable)
    modules = dict(model.named_modules())
    entries: list[Entry] = []
    covered: set[str] = set()

    def add(layers: Sequence[str], hooked: str, fn=_identity) -> None:
        layers = tuple(n for n in layers if n in wanted and n not in covered)
        if layers:
            covered.update(layers)
            entries.append((layers, hooked, fn))

    def child(block: str, name: str) -> str:
        return f"{block}.{name}" if block else name

    for name, m in model.named_modules():
        kids = dict(m.named_children())
        convs = [k for k in ("conv1", "conv2", "conv3") if isinstance(kids.get(k), nn.Conv2d)]
        if convs[:2] == ["conv1", "conv2"] and all(isinstance(kids.get(f"bn{i + 1}"), nn.BatchNorm2d)
                                                   for i in range(len(convs))):  # ResNet basic/bottleneck block
            down = kids.get("downsample")
            shortcut = [child(child(name, "downsample"), n) for n, c in down.named_children()
                        if isinstance(c, nn.Conv2d)] if isinstance(down, nn.Sequential) else []
            for i, conv in enumerate(convs[:-1]):
                add([child(name, conv)], child(name, f"bn{i + 1}"), _relu)
            add([child(name, convs[-1]), *shortcut], name)
        elif type(m).__name__ == "InvertedResidual" and isinstance(kids.get("conv"), nn.Sequential):
            body = child(name, "conv")
            for sub_name, sub in kids["conv"].named_children():
                path = child(body, sub_name)
                if isinstance(sub, nn.Sequential) and len(sub) and isinstance(sub[0], (nn.Conv2d, nn.Linear)):
                    add([child(path, "0")], path)  # conv + BN + ReLU6 unit → its output
                elif isinstance(sub, (nn.Conv2d, nn.Linear)):
                    add([path], name)  # the projection → the block output
    for n in searchable:  # anything else: its conv-BN-activation unit, or its own output
        if n in covered:
            continue
        parent, _, leaf = n.rpartition(".")
        unit = modules.get(parent)
        if parent and leaf == "0" and isinstance(unit, nn.Sequential) and len(unit) > 1:
            add([n], parent)
        else:
            add([n], n)
    missing = [n for n in searchable if n not in covered or n not in modules]
    if missing:
        raise UserError(f"OMPQ finds no feature for layers {missing}")
    return entries


@torch.no_grad()
def extract_features(model: nn.Module, x: Tensor, entries: Sequence[Entry]) -> tuple[list[Tensor], list[int]]:
    """One forward of ``x``; each entry's feature [n, ·] (a detached copy taken when its module returns) and
    the entries' execution order (indices into ``entries``)."""
    modules = dict(model.named_modules())
    feats: dict[int, Tensor] = {}
    order: list[int] = []
    by_module: dict[str, list[int]] = {}
    for i, (_, hooked, _) in enumerate(entries):
        by_module.setdefault(hooked, []).append(i)

    def hook(name: str):
        def fn(_m, _inp, out):
            for i in by_module[name]:
                if i not in feats:  # the first call (a module reused later in the forward keeps its first output)
                    feats[i] = entries[i][2](out.detach()).reshape(out.shape[0], -1).clone()
                    order.append(i)
        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in by_module]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [entries[i][0] for i in range(len(entries)) if i not in feats]
    if missing:
        raise UserError(f"OMPQ: the forward pass never reached the modules of layers {missing}")
    return [feats[i] for i in order], order


def ompq_allocation(coef: Sequence[float], groups: Sequence[Sequence[str]], macs: dict[str, int],
                    w_candidates: Sequence[int], a_bits: int | None, budget_bitops_g: float, *,
                    floor: float | None) -> dict[str, tuple[int, int]]:
    """Bits per layer maximising Σ_k coef_k · b_k (one b per entry, shared by its layers) under
    floor·B ≤ BitOPs ≤ B: weights b and fixed activations ``a_bits``, or a = b when ``a_bits`` is None
    (``w_candidates`` then holds the bit-widths common to both sides)."""
    bits = [int(b) for b in w_candidates]
    coef = np.asarray(coef, dtype=np.float64)
    costs = -coef[:, None] * np.asarray(bits, dtype=np.float64)[None, :]
    group_macs = np.array([sum(macs[n] for n in g) for g in groups], dtype=np.float64)
    per_bit = np.array([b * (b if a_bits is None else a_bits) for b in bits], dtype=np.float64)
    bitops = group_macs[:, None] * per_bit[None, :] / 1e9
    choice = solve_bit_allocation(costs, bitops, budget_bitops_g, lower=floor * budget_bitops_g if floor else None)
    return {n: (bits[int(k)], bits[int(k)] if a_bits is None else int(a_bits))
            for g, k in zip(groups, choice) for n in g}


# ---- the method ----------------------------------------------------------------------------------------------
class OmpqHparams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(32, ge=2, description="images of the one proxy batch")
    beta: float = Field(10.0, ge=0, description="θ = exp(−β·γ)")
    bn_mode: Literal["train", "eval"] = Field("train", description="BatchNorm during the forward: batch "
                                              "statistics (the code's) or the FP model's running statistics")
    activations: Literal["fixed", "tied"] = Field("fixed", description="fixed: one uniform activation "
                                                   "bit-width (the paper's); tied: a = w per entry")
    a_bits: int | None = Field(None, ge=1, description="the fixed activation bits; None = the largest candidate "
                               "not above the budget's activation bits")
    budget_floor: float | None = Field(None, ge=0, le=1, description="spend at least this fraction of the budget; "
                                       "None = the suite's budget window (--budget-floor, 0.9 by default)")


def activation_order(a_candidates: Sequence[int], budget_a: float) -> list[int]:
    """Fixed-activation choices to try: the candidates not above the budget's activation bits, largest first,
    then the ones above it, smallest first."""
    below = sorted((a for a in a_candidates if a <= budget_a), reverse=True)
    return below + sorted(a for a in a_candidates if a > budget_a)


@register_method("ompq")
class Ompq(Method):
    """Linear-CKA orthogonality of one proxy batch through the target FP model → importance → ILP."""

    Hparams = OmpqHparams
    needs_teacher = True
    teacher_from = "target"
    iterative = False  # one forward pass, no search trajectory
    smoke_hparams = {"batch_size": 32}

    def search(self, ctx: SearchContext, hp: OmpqHparams) -> SearchOutcome:
        floor = ctx.budget_floor if hp.budget_floor is None else hp.budget_floor
        if hp.activations == "fixed":
            if hp.a_bits is not None and hp.a_bits not in ctx.a_candidates:
                raise UserError(f"OMPQ's fixed activation bits {hp.a_bits} are not a candidate {ctx.a_candidates}")
            w_bits = list(ctx.w_candidates)
            a_try = [hp.a_bits] if hp.a_bits is not None else activation_order(ctx.a_candidates,
                                                                                parse_budget(ctx.budget_name)[1])
        else:
            w_bits = sorted(set(ctx.w_candidates) & set(ctx.a_candidates))
            if not w_bits:
                raise UserError(f"OMPQ with tied activations needs a bit-width in both W{ctx.w_candidates} and "
                                f"A{ctx.a_candidates}")
            a_try = [None]
        model = ctx.load_target_fp("OMPQ FP model (target)")
        model.train(hp.bn_mode == "train")
        loader = make_loader(ctx.proxy_train, batch_size=hp.batch_size, shuffle=True, seed=ctx.seed)
        x, _ = next(iter(loader))
        if x.shape[0] < 2:
            raise UserError("OMPQ needs a batch of at least 2 proxy images (CKA centres over the batch)")
        entries = feature_entries(model, ctx.searchable)
        with ctx.meter.step(batch_size=x.shape[0]):  # the one forward and the Gram matrices of the features
            feats, order = extract_features(model, x.to(ctx.device), entries)
            orm = orm_matrix(feats)
        groups = [list(entries[i][0]) for i in order]
        imp = ompq_importance(orm, hp.beta)

        layers, problems = None, []
        for a in a_try:
            try:
                layers = ompq_allocation(imp["coef"], groups, ctx.target_macs, w_bits, a, ctx.budget_bitops_g,
                                         floor=floor)
                a_bits = a
                break
            except UserError as exc:
                problems.append(f"A{a}: {exc}" if a is not None else str(exc))
        if layers is None:
            raise UserError("OMPQ finds no policy in the budget window [" f"{floor:.2f}, 1] × budget: "
                            + "; ".join(problems) + "; try --hp activations=tied or another --hp a_bits")
        return SearchOutcome(
            layers={n: layers[n] for n in ctx.searchable}, epochs=x.shape[0] / len(ctx.proxy_train),
            extraction="ilp",
            extra={"entries": groups, "orm": np.round(orm, 6).tolist(), "gamma": imp["gamma"].tolist(),
                   "theta_rel": imp["theta"].tolist(), "coef_rel": imp["coef"].tolist(),
                   "activations": hp.activations, "a_bits": a_bits, "images": int(x.shape[0]),
                   "budget_floor": floor, "beta": hp.beta, "bn_mode": hp.bn_mode},
        )
