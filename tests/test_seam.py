"""SEAM-like (baselines/seam.py): the large-margin term, the start from the target FP model, and the hook.

- ``margin_loss`` on hand-made features: 0 when every class is compact and the class centres are more than
  the margin apart; otherwise the hand-computed value, and a gradient whose descent pulls features to their
  class centre and pushes centres closer than the margin apart; unit normalisation makes it scale-free;
- ``penultimate_features`` returns the classifier's input of the same forward;
- after ``prepare`` (and at the first step of a real search) the supernet holds the target FP weights with a
  fresh seeded classifier, and its LSQ weight steps were calibrated from those weights;
- the aux hook adds λ_m · L_margin to the search loss: a tiny search with λ_m = 0 and one with λ_m = 1 log
  losses that differ by exactly the margin term at the first step, and end with different bit logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from baselines.seam import Seam, SeamHparams, margin_loss, penultimate_features
from mpqbench.cost import CostMeter, arch_cost
from mpqbench.errors import UserError
from mpqbench.models import get_model
from mpqbench.quant import arch_parameters
from mpqbench.search import SearchContext
from mpqbench.utils import torch_save
from searchkit import tiny_context

ARCH, WIDTH, SIZE, CLASSES, CH = "resnet20", 0.25, 8, 10, 1
D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- the loss
def test_zero_when_compact_and_separated_beyond_the_margin():
    # three classes, every sample equal to its class point; centres 3, 4 and 5 apart (a 3-4-5 triangle)
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=D)
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 1])
    feats = points[labels]
    total, intra, inter = margin_loss(feats, labels, margin=2.9, normalize=False)
    assert (total.item(), intra.item(), inter.item()) == (0.0, 0.0, 0.0)
    # the same classes with a margin above the closest pair (3): only that pair counts, (3.5 − 3)² over 3 pairs
    total, intra, inter = margin_loss(feats, labels, margin=3.5, normalize=False)
    assert intra.item() == 0.0
    assert inter.item() == pytest.approx(0.25 / 3, rel=1e-12)
    # unit features: samples along the same direction at any positive scale are compact
    scales = torch.tensor([0.5, 2.0, 7.0, 1.0, 3.0, 0.1, 40.0], dtype=D)[:, None]
    dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=D)[labels]
    total, intra, inter = margin_loss(scales * dirs, labels, margin=0.7, normalize=True)
    # unit centres (1,0), (0,1), (1,1)/√2: closest pairs are 2·sin(22.5°) = 0.765 > 0.7 apart
    assert total.item() == pytest.approx(0.0, abs=1e-24)


def test_hand_value_with_spread_and_close_classes():
    # class 0: (1,0), (3,0) → centre (2,0), squared distances 1, 1; class 1: (0,5) twice → 0.
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.0, 5.0]], dtype=D)
    labels = torch.tensor([0, 0, 1, 1])
    total, intra, inter = margin_loss(feats, labels, margin=6.0, inter_weight=0.5, normalize=False)
    assert intra.item() == pytest.approx(2.0 / 4, rel=1e-12)
    assert inter.item() == pytest.approx((6.0 - math.sqrt(29.0)) ** 2, rel=1e-12)  # |(2,0) − (0,5)| = √29
    assert total.item() == pytest.approx(0.5 + 0.5 * (6.0 - math.sqrt(29.0)) ** 2, rel=1e-12)
    # unit features: (1,0) and (0,1) classes are √2 apart
    _, _, inter = margin_loss(torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=D), torch.tensor([4, 9]), margin=1.5)
    assert inter.item() == pytest.approx((1.5 - math.sqrt(2.0)) ** 2, rel=1e-12)


def test_intra_gradient_pulls_each_feature_to_its_centre():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [1.0, 4.0], [-1.0, 6.0]], dtype=D, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1])
    _, intra, inter = margin_loss(feats, labels, margin=0.1, normalize=False)
    assert intra.item() > 0 and inter.item() == 0.0
    intra.backward()
    f = feats.detach()
    centres = torch.stack([f[:2].mean(0), f[2:].mean(0)])[labels]
    # the centre depends on the features too, but Σ_i (f_i − μ) = 0 cancels that part: ∂/∂f_i = 2/B (f_i − μ_y)
    torch.testing.assert_close(feats.grad, 2.0 / 5 * (f - centres), rtol=1e-12, atol=1e-12)
    after = margin_loss(f - 0.5 * feats.grad, labels, margin=0.1, normalize=False)[1]
    assert after.item() < intra.item()


def test_inter_gradient_pushes_close_centres_apart():
    # two compact classes 0.3 apart, margin 1: L = (1 − 0.3)², ∂L/∂μ_0 = −2(1 − d)(μ_0 − μ_1)/d, shared by n_0 = 2
    feats = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.3, 0.0], [0.3, 0.0]], dtype=D, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    total, intra, inter = margin_loss(feats, labels, margin=1.0, normalize=False)
    assert intra.item() == 0.0 and inter.item() == pytest.approx(0.49, rel=1e-9)
    total.backward()
    g0 = -2 * 0.7 * torch.tensor([-1.0, 0.0], dtype=D) / 2
    torch.testing.assert_close(feats.grad, torch.stack([g0, g0, -g0, -g0]), rtol=1e-9, atol=1e-12)
    assert feats.grad[0, 0] > 0 and feats.grad[2, 0] < 0  # descent moves class 0 left, class 1 right
    moved = margin_loss(feats.detach() - 0.1 * feats.grad, labels, margin=1.0, normalize=False)[0]
    assert moved.item() < total.item()


def test_normalised_loss_is_scale_free_and_order_free():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(12, 6, generator=g, dtype=D)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    ref = margin_loss(feats, labels, margin=0.5)[0]
    assert ref.item() > 0
    scaled = margin_loss(feats * torch.linspace(0.1, 50, 12, dtype=D)[:, None], labels, margin=0.5)[0]
    assert scaled.item() == pytest.approx(ref.item(), rel=1e-10)
    perm = torch.randperm(12, generator=g)
    assert margin_loss(feats[perm], labels[perm], margin=0.5)[0].item() == pytest.approx(ref.item(), rel=1e-12)
    # 4-D features (B, C, 1, 1) are flattened
    assert margin_loss(feats[:, :, None, None], labels, margin=0.5)[0].item() == pytest.approx(ref.item(), rel=1e-12)


def test_degenerate_batches_give_finite_gradients():
    one = torch.rand(5, 3, dtype=D, requires_grad=True)
    total, _, inter = margin_loss(one, torch.zeros(5, dtype=torch.long), margin=1.0)
    assert inter.item() == 0.0
    total.backward()
    assert torch.isfinite(one.grad).all()
    same = torch.ones(4, 3, dtype=D, requires_grad=True)  # two classes at the same centre
    total, _, inter = margin_loss(same, torch.tensor([0, 0, 1, 1]), margin=1.0)
    assert inter.item() == pytest.approx(1.0, rel=1e-5)
    total.backward()
    assert torch.isfinite(same.grad).all()


def test_penultimate_features_are_the_classifiers_input():
    torch.manual_seed(0)
    net = get_model(ARCH, num_classes=CLASSES, in_channels=CH, input_size=SIZE, width=WIDTH).eval()
    x = torch.randn(3, CH, SIZE, SIZE)
    logits, z = penultimate_features(net, x, "fc")
    torch.testing.assert_close(net.fc(z), logits)
    assert z.shape == (3, net.fc.in_features) and not net.fc._forward_pre_hooks


# ---------------------------------------------------------------------------------------------- the start model
def _target_ckpt(path: Path, *, width: float = WIDTH) -> Path:
    """A 'target-trained' FP model (random weights, seeded) at another input size than the proxy's."""
    torch.manual_seed(123)
    model = get_model(ARCH, num_classes=CLASSES, in_channels=CH, input_size=16, width=width)
    with torch.no_grad():  # non-default BatchNorm statistics, so that copying them is visible
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    meta = {"arch": ARCH, "dataset": "fashion-mnist", "num_classes": CLASSES, "in_channels": CH, "input_size": 16,
            "width": width, "epochs": 0, "seed": 0, "top1": 0.0, "top5": 0.0, "wall_s": 0.0, "macs_processed": 0}
    torch_save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def _ctx(teacher: Path | None, *, data: bool = False) -> SearchContext:
    cost = arch_cost(ARCH, input_size=SIZE, num_classes=CLASSES, in_channels=CH, width=WIDTH)
    ds = None
    if data:
        from mpqbench.data import load_split, subset

        ds = subset(load_split("digits", "train", input_size=SIZE), count=64, seed=0)
    return tiny_context(teacher, proxy_train=ds, arch=ARCH, width=WIDTH, input_size=SIZE, num_classes=CLASSES,
                        in_channels=CH, budget_g=sum(cost.macs[n] for n in cost.searchable) * 3 * 3 / 1e9,
                        meter=CostMeter("cpu"))


def _assert_starts_from(state: dict[str, torch.Tensor], ckpt: Path, ctx: SearchContext, *, stats: bool = True) -> None:
    """The state holds the checkpoint's tensors (BatchNorm running statistics too when ``stats``), a fresh head."""
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    bn_stat = ("running_mean", "running_var", "num_batches_tracked")
    body = [k for k in saved if not k.startswith("fc.") and (stats or k.rsplit(".", 1)[-1] not in bn_stat)]
    assert body and all(torch.equal(state[k], saved[k]) for k in body), "the supernet must hold the target weights"
    assert not torch.equal(state["fc.weight"], saved["fc.weight"]), "the classifier must be a fresh one"
    fresh = ctx.load_target_fp(new_head=True).state_dict()  # seeded by the search seed: the same fresh head
    assert torch.equal(state["fc.weight"], fresh["fc.weight"]) and torch.equal(state["fc.bias"], torch.zeros(CLASSES))


def test_prepare_loads_target_weights_with_a_fresh_head(tmp_path):
    ckpt = _target_ckpt(tmp_path / "fp.pt")
    ctx = _ctx(ckpt)
    method = Seam()
    torch.manual_seed(0)
    net = method.build_supernet(ctx)
    w = "layer2.0.conv1.weight"
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert not torch.equal(net.state_dict()[w], saved[w])  # the host's supernet starts from a random model
    method.prepare(ctx, SeamHparams(), net)
    _assert_starts_from(net.state_dict(), ckpt, ctx)
    assert method.head == "fc" and method.start_fp["dataset"] == "fashion-mnist"
    assert all(torch.equal(p, torch.zeros_like(p)) for p in arch_parameters(net))  # α untouched: uniform


class _Spy(Seam):
    """Keeps the supernet and a copy of its state at the first step (before any update)."""

    def prepare(self, ctx, hp, supernet):
        super().prepare(ctx, hp, supernet)
        self.net, self.seen = supernet, None

    def aux_loss(self, supernet, x, y, ctx, hp):
        if self.seen is None:
            self.seen = {k: v.clone() for k, v in supernet.state_dict().items()}
        return super().aux_loss(supernet, x, y, ctx, hp)


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """Two tiny real searches (64 digits at 8 px, batch 32, 2 steps) from one start model: λ_m = 0 and 1."""
    ckpt = _target_ckpt(tmp_path_factory.mktemp("seam") / "fp.pt")
    runs = {}
    for lam in (0.0, 1.0):
        spy = _Spy()
        ctx = _ctx(ckpt, data=True)
        runs[lam] = (spy, spy.search(ctx, SeamHparams(epochs=1, batch_size=32, margin_weight=lam)), ctx)
    return ckpt, runs


def test_search_steps_from_target_weights_and_calibrates_steps_on_them(searches):
    ckpt, runs = searches
    spy, out, ctx = runs[1.0]
    # the host's calibration forward (train mode, before step 1) moves the BatchNorm running statistics once
    _assert_starts_from(spy.seen, ckpt, ctx, stats=False)
    w = torch.load(ckpt, weights_only=True)["state_dict"]["layer2.0.conv1.weight"]
    for k, bits in enumerate([2, 3, 4]):  # LSQ init 2·mean|W|/√Q_P per output channel, on the target weights
        by_hand = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(2 ** (bits - 1) - 1)
        torch.testing.assert_close(spy.seen[f"layer2.0.conv1.weight_quants.{k}.step"].flatten(), by_hand)
    assert not torch.equal(spy.net.state_dict()["layer2.0.conv1.weight"], w)  # and then the search trains them
    assert out.extra["start_fp"]["dataset"] == "fashion-mnist"
    assert set(out.extra["margin"]) == {"first_intra", "first_inter", "last_intra", "last_inter"}


def test_without_or_with_a_wrong_start_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--teacher"):
        Seam().prepare(_ctx(None), SeamHparams(), Seam().build_supernet(_ctx(None)))
    bad = _target_ckpt(tmp_path / "wide.pt", width=0.5)
    with pytest.raises(UserError, match="width"):
        Seam().prepare(_ctx(bad), SeamHparams(), Seam().build_supernet(_ctx(bad)))


def test_prepare_refuses_an_already_calibrated_supernet(tmp_path):
    ctx = _ctx(_target_ckpt(tmp_path / "fp.pt"))
    net = Seam().build_supernet(ctx)
    with torch.no_grad():
        net(torch.randn(4, CH, SIZE, SIZE))
    with pytest.raises(RuntimeError, match="calibrated"):
        Seam().prepare(ctx, SeamHparams(), net)


# ---------------------------------------------------------------------------------------------- the hook
def test_aux_loss_is_the_weighted_margin_of_the_features_and_reaches_alpha(tmp_path):
    ctx = _ctx(_target_ckpt(tmp_path / "fp.pt"))
    method, hp = Seam(), SeamHparams(margin_weight=2.5, margin=0.8, inter_weight=3.0)
    net = method.build_supernet(ctx)
    method.prepare(ctx, hp, net)
    x, y = torch.randn(16, CH, SIZE, SIZE), torch.arange(16) % 4
    with torch.no_grad():
        net(x)  # LSQ calibration, as the host does
    logits, aux = method.aux_loss(net, x, y, ctx, hp)
    _, z = penultimate_features(net, x, "fc")
    torch.testing.assert_close(logits, net(x))
    expected = 2.5 * margin_loss(z.detach(), y, margin=0.8, inter_weight=3.0)[0]
    assert aux.item() == pytest.approx(expected.item(), rel=1e-5) and aux.item() > 0
    aux.backward()
    assert all(p.grad is not None for p in arch_parameters(net))
    assert sum(float(p.grad.abs().sum()) for p in arch_parameters(net)) > 0
    assert net.fc.weight.grad is None  # the term acts on the features, before the classifier
    assert method.aux_loss(net, x, y, ctx, SeamHparams(margin_weight=0))[1] is None


def test_the_term_changes_the_search(searches):
    _, runs = searches
    (spy_off, out_off, _), (spy_on, out_on, _) = runs[0.0], runs[1.0]
    off, on = out_off.extra["history"], out_on.extra["history"]
    assert "margin" not in out_off.extra and len(off) == len(on) == 2
    m = out_on.extra["margin"]
    # step 1 sees the same weights and batch: the logged losses differ by exactly λ_m · (L_intra + γ L_inter)
    assert on[0]["loss"] - off[0]["loss"] == pytest.approx(m["first_intra"] + m["first_inter"], rel=1e-4)
    assert m["first_intra"] > 0
    # ... and the term's gradient changes where the bit logits go
    alphas = [torch.cat([p.detach().flatten() for p in arch_parameters(s.net)]) for s in (spy_off, spy_on)]
    assert not torch.equal(alphas[0], alphas[1])
