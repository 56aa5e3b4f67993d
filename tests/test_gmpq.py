"""GMPQ (baselines/gmpq.py): attribution maps, the attribution-imitation loss, and its double backward.

- ``attribution_loss`` is zero exactly when the student map equals the teacher's map to the power p up to a
  positive per-image scale (both sides are L2-normalised per image), and positive otherwise; it is the mean
  over batch × pixels (the reference code's ``cal_l2loss`` scale), so it scales as 1/(H·W) with the map size;
- ``attribution_maps`` equals Grad-CAM computed by hand: for a stage followed by global average pooling and
  a linear head, ∂logit_c/∂F_k(h, w) = W[c, k] / (H·W), so the channel weight is w_k = W[c_pred, k] / (H·W);
- the aux loss built with ``create_graph=True`` through a real supernet sends gradient to the network
  weights θ (including the classifier, which only a second-order path reaches) and to the bit logits α;
- after ``prepare`` the teacher is frozen: eval mode, no parameter requires grad.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.gmpq import (
    LAST_STAGE,
    Gmpq,
    GmpqAsga,
    GmpqHparams,
    attribution_loss,
    attribution_maps,
    last_stage,
)
from mpqbench.cost import CostMeter, arch_cost
from mpqbench.errors import UserError
from mpqbench.models import get_model
from mpqbench.quant import arch_parameters, build_supernet, mixed_layers
from mpqbench.search import SearchContext
from mpqbench.utils import torch_save
from searchkit import tiny_context

ARCH, WIDTH, SIZE, CLASSES, CH = "resnet20", 0.25, 8, 10, 1


# ---------------------------------------------------------------------------------------------- the loss
def test_attribution_loss_zero_for_teacher_power_p_up_to_positive_scale():
    g = torch.Generator().manual_seed(0)
    teacher = torch.rand(5, 6, 6, generator=g, dtype=torch.float64) + 0.01
    scale = torch.tensor([0.3, 1.0, 7.0, 1e-3, 250.0], dtype=torch.float64).view(5, 1, 1)
    for p in (1.0, 2.0, 3.0):
        student = scale * teacher.pow(p)
        loss = attribution_loss(teacher, student, p=p)
        assert loss.item() == pytest.approx(0.0, abs=1e-24), p


def test_attribution_loss_default_p_is_three():
    teacher = torch.rand(3, 4, 4, dtype=torch.float64) + 0.1
    assert attribution_loss(teacher, 2.0 * teacher.pow(3)).item() == pytest.approx(0.0, abs=1e-24)
    # With p = 3 the teacher map itself (p = 1) is not a match.
    assert attribution_loss(teacher, teacher).item() > 1e-6


def test_attribution_loss_positive_otherwise_and_matches_hand_formula():
    g = torch.Generator().manual_seed(1)
    teacher = torch.rand(4, 5, 5, generator=g, dtype=torch.float64)
    student = torch.rand(4, 5, 5, generator=g, dtype=torch.float64)
    loss = attribution_loss(teacher, student, p=3.0)
    assert loss.item() > 0
    t = teacher.flatten(1).pow(3)
    s = student.flatten(1)
    by_hand = ((t / t.norm(dim=1, keepdim=True) - s / s.norm(dim=1, keepdim=True)) ** 2).sum(1).mean() / 25
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)
    # A negative scale flips the normalised map: ‖n − (−n)‖² = 4 per image, over 25 pixels.
    assert attribution_loss(teacher, -teacher.pow(3), p=3.0).item() == pytest.approx(4.0 / 25, rel=1e-12)


def test_attribution_loss_by_hand_on_a_tiny_map():
    # Two 2×2 maps. Image 0: the teacher is flat, n(t) = (½, ½, ½, ½); the student is one pixel,
    # n(s) = (1, 0, 0, 0): squared distance (½)² + 3·(½)² = 1. Image 1: the teacher's single pixel
    # (2³ = 8 at p = 3) normalises to (1, 0, 0, 0), the student's to (0, 0, 0, 1): distance 2.
    # Mean over the 2 × 4 batch × pixel elements: (1 + 2) / 8 = 0.375 (a per-image sum would give 1.5).
    teacher = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    student = torch.tensor([[[3.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.5]]], dtype=torch.float64)
    assert attribution_loss(teacher, student, p=3.0).item() == pytest.approx(0.375, rel=1e-12)
    # One image and one pixel that differ by sign only: 1·(1 − (−1))² / 1 = 4.
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    assert attribution_loss(one, -one, p=1.0).item() == pytest.approx(4.0, rel=1e-12)


def test_attribution_loss_averages_over_images_and_pixels():
    # Image 0 matches, image 1 does not (distance 2): the loss is 2 over 2 images × 2 pixels.
    a = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[[5.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    assert attribution_loss(a, b, p=1.0).item() == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_attribution_loss_scales_as_one_over_map_area(k):
    # Repeating every pixel k×k times leaves each normalised map's per-image squared distance unchanged
    # (k² copies of entries 1/k as large), so the mean over pixels drops by exactly k²: 1/(H·W) scaling.
    g = torch.Generator().manual_seed(2)
    teacher = torch.rand(3, 4, 4, generator=g, dtype=torch.float64)
    student = torch.rand(3, 4, 4, generator=g, dtype=torch.float64)
    big_t = teacher.repeat_interleave(k, 1).repeat_interleave(k, 2)
    big_s = student.repeat_interleave(k, 1).repeat_interleave(k, 2)
    small = attribution_loss(teacher, student).item()
    assert attribution_loss(big_t, big_s).item() == pytest.approx(small / k**2, rel=1e-12)


# ---------------------------------------------------------------------------------------------- the maps
class TinyNet(nn.Module):
    """conv → ReLU (the "stage" whose output F is mapped) → global average pool → linear head."""

    def __init__(self, c_in: int = 2, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stage(x)), 1))


def test_attribution_maps_equal_hand_grad_cam():
    torch.manual_seed(0)
    net = TinyNet().double()
    x = torch.randn(6, 2, 5, 7, dtype=torch.float64)
    logits, maps = attribution_maps(net, x, "stage", create_graph=False)

    with torch.no_grad():
        feats = net.stage(x)  # [B, C, H, W]
        ref_logits = net.head(feats.mean(dim=(2, 3)))
        h, w = feats.shape[-2:]
        pred = ref_logits.argmax(1)
        weights = net.head.weight[pred] / (h * w)  # [B, C]: spatial mean of ∂logit_pred/∂F = W[pred]/(H·W)
        ref_maps = torch.relu((weights[:, :, None, None] * feats).sum(1))

    assert maps.shape == (6, 5, 7)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(maps, ref_maps, rtol=1e-10, atol=1e-12)
    assert (maps > 0).any() and (maps == 0).any(), "a useful test map has both positive and clipped entries"


def test_attribution_maps_use_each_images_own_predicted_class():
    torch.manual_seed(1)
    net = TinyNet(classes=3).double()
    with torch.no_grad():
        # Channels = relu(±input channel) at the centre tap; class c reads channel c, so the predicted class
        # follows the sign of each image's offset (several classes in one batch).
        net.stage[0].weight.zero_()
        net.stage[0].bias.zero_()
        for k, (src, sign) in enumerate([(0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)]):
            net.stage[0].weight[k, src, 1, 1] = sign
        net.head.weight.copy_(torch.eye(3, 4, dtype=torch.float64) + 0.01 * torch.randn(3, 4, dtype=torch.float64))
        net.head.bias.zero_()
    offsets = torch.tensor([[2.0, 0], [-2.0, 0], [0, 2.0], [2.0, 0], [-2.0, 0], [0, 2.0], [0, -2.0], [1.0, 1.0]],
                           dtype=torch.float64)
    x = 0.1 * torch.randn(8, 2, 4, 4, dtype=torch.float64) + offsets[:, :, None, None]
    logits, maps = attribution_maps(net, x, "stage", create_graph=False)
    pred = logits.argmax(1)
    assert set(pred.tolist()) == {0, 1, 2}, "need a batch with several predicted classes"
    feats = net.stage(x).detach()
    for i in range(len(x)):
        w_c = net.head.weight[pred[i]].detach() / 16
        torch.testing.assert_close(maps[i], torch.relu((w_c[:, None, None] * feats[i]).sum(0)))


def test_attribution_maps_leave_no_hook_behind():
    net = TinyNet()
    attribution_maps(net, torch.randn(2, 2, 4, 4), "stage", create_graph=False)
    assert not net.stage._forward_hooks


def test_last_stage_known_for_every_registered_arch():
    from mpqbench.models import list_models

    assert set(list_models()) <= set(LAST_STAGE)
    for arch in list_models():
        model = get_model(arch, num_classes=10, in_channels=3, input_size=32, width=0.25)
        model.get_submodule(last_stage(arch))  # raises if the module path is wrong
    with pytest.raises(UserError):
        last_stage("no-such-arch")


# ---------------------------------------------------------------------------------------------- through a supernet
def _supernet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = get_model(ARCH, num_classes=CLASSES, in_channels=CH, input_size=SIZE, width=WIDTH)
    cost = arch_cost(ARCH, input_size=SIZE, num_classes=CLASSES, in_channels=CH, width=WIDTH)
    net = build_supernet(model, list(cost.searchable), [2, 3, 4], [2, 3, 4])
    net.train()
    with torch.no_grad():  # LSQ steps initialise from the first batch
        net(torch.randn(16, CH, SIZE, SIZE))
    return net


def _teacher_ckpt(path: Path, *, arch: str = ARCH, num_classes: int = CLASSES, input_size: int = SIZE) -> Path:
    torch.manual_seed(123)
    model = get_model(arch, num_classes=num_classes, in_channels=CH, input_size=input_size, width=WIDTH)
    meta = {"arch": arch, "dataset": "digits", "num_classes": num_classes, "in_channels": CH,
            "input_size": input_size, "width": WIDTH, "epochs": 0, "seed": 0, "top1": 0.0, "top5": 0.0,
            "wall_s": 0.0, "macs_processed": 0}
    torch_save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


def _ctx(teacher: Path | None) -> SearchContext:
    # no proxy_dataset: these contexts exercise the teacher paths without the dataset check
    return tiny_context(teacher, arch=ARCH, width=WIDTH, input_size=SIZE, num_classes=CLASSES, in_channels=CH,
                        budget_g=1.0, meter=CostMeter("cpu"), proxy_dataset=None)


def _assert_grads_reach_theta_and_alpha(net: nn.Module) -> None:
    alphas = arch_parameters(net)
    assert alphas
    assert all(p.grad is not None for p in alphas), "every α must get a gradient from the attribution loss"
    assert any(p.grad.abs().sum() > 0 for p in alphas[0::2]), "no α_w gradient"
    assert any(p.grad.abs().sum() > 0 for p in alphas[1::2]), "no α_a gradient"
    conv_w = [m.weight.grad for m in mixed_layers(net).values()]
    assert all(g is not None and g.abs().sum() > 0 for g in conv_w), "searchable conv weights got no gradient"
    # The classifier enters the map only through the Grad-CAM channel weights ∂logit/∂F = W[c]/(H·W):
    # it gets gradient only when the map was built with create_graph=True.
    assert net.fc.weight.grad is not None and net.fc.weight.grad.abs().sum() > 0


def test_attribution_loss_backward_reaches_weights_and_alphas():
    net = _supernet()
    teacher = get_model(ARCH, num_classes=CLASSES, in_channels=CH, input_size=SIZE, width=WIDTH).eval()
    x = torch.randn(8, CH, SIZE, SIZE)
    _, t_maps = attribution_maps(teacher, x, "layer3", create_graph=False)
    _, s_maps = attribution_maps(net, x, "layer3", create_graph=True)
    loss = attribution_loss(t_maps.detach(), s_maps)
    assert loss.item() > 0
    net.zero_grad(set_to_none=True)
    loss.backward()
    _assert_grads_reach_theta_and_alpha(net)


def test_without_create_graph_the_classifier_gets_no_attribution_gradient():
    # The control for the previous test: it shows the fc check there depends on the double backward.
    net = _supernet()
    x = torch.randn(8, CH, SIZE, SIZE)
    _, s_maps = attribution_maps(net, x, "layer3", create_graph=False)
    target = torch.rand_like(s_maps)
    net.zero_grad(set_to_none=True)
    attribution_loss(target, s_maps).backward()
    assert net.fc.weight.grad is None or net.fc.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("cls", [Gmpq, GmpqAsga])
def test_prepare_freezes_teacher(cls, tmp_path):
    method = cls()
    hp = cls.Hparams()
    method.prepare(_ctx(_teacher_ckpt(tmp_path / "t.pt")), hp, _supernet())
    teacher = method.teacher
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    params = list(teacher.parameters())
    assert params and all(not p.requires_grad for p in params)
    # The loaded weights are the checkpoint's.
    ref = torch.load(tmp_path / "t.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(teacher.state_dict()["fc.weight"], ref["fc.weight"])


def test_gmpq_aux_loss_backward_reaches_weights_and_alphas(tmp_path):
    method = Gmpq()
    hp = GmpqHparams()
    net = _supernet()
    method.prepare(_ctx(_teacher_ckpt(tmp_path / "t.pt")), hp, net)
    x = torch.randn(8, CH, SIZE, SIZE)
    y = torch.randint(0, CLASSES, (8,))
    logits, aux = method.aux_loss(net, x, y, _ctx(tmp_path / "t.pt"), hp)
    assert logits.shape == (8, CLASSES)
    assert aux is not None and aux.item() > 0
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    net.zero_grad(set_to_none=True)
    aux.backward()
    _assert_grads_reach_theta_and_alpha(net)
    # The frozen teacher neither collects gradients nor changes (BN statistics included).
    assert all(p.grad is None for p in method.teacher.parameters())
    for k, v in method.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k])
    # aux = a_w · attribution_loss(teacher map, student map)
    _, t_maps = attribution_maps(method.teacher, x.clone().requires_grad_(True), "layer3", create_graph=False)
    _, s_maps = attribution_maps(net, x, "layer3", create_graph=False)
    expected = hp.attribution_weight * attribution_loss(t_maps.detach(), s_maps.detach(), hp.attribution_p)
    assert aux.item() == pytest.approx(expected.item(), rel=1e-4)


def test_teacher_of_wrong_geometry_is_a_user_error(tmp_path):
    bad = _teacher_ckpt(tmp_path / "t16.pt", input_size=16)
    with pytest.raises(UserError, match="teacher"):
        Gmpq().prepare(_ctx(bad), GmpqHparams(), _supernet())
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError):
        Gmpq().prepare(_ctx(missing), GmpqHparams(), _supernet())
