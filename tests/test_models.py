"""Arch registry: topology, stems, layer roles, and loading FP weights from local files only."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from mpqbench.errors import UserError
from mpqbench.models import (
    fixed_layer_names,
    get_model,
    list_models,
    load_weights,
    register_model,
    searchable_layer_names,
    torchvision_weights_path,
)

EXPECTED = {  # arch: (fixed layers, number of searchable layers)
    "resnet20": (("conv1", "fc"), 20),  # 18 block convs + 2 projection shortcuts
    "resnet18": (("conv1", "fc"), 19),  # 16 block convs + 3 down-sample convs (EdMIPS/GMPQ assert 19)
    "resnet50": (("conv1", "fc"), 52),  # 48 block convs + 4 down-sample convs
    "mobilenet_v2": (("features.0.0", "classifier.1"), 51),
}


def test_registry_lists_archs_and_globs():
    assert list_models() == sorted(EXPECTED)
    assert list_models("resnet*") == ["resnet18", "resnet20", "resnet50"]


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda **kw: nn.Linear(1, 1))
    assert isinstance(get_model("resnet18", num_classes=2, input_size=32, width=0.25), torchvision.models.ResNet)


def test_unknown_arch_is_user_error():
    with pytest.raises(UserError, match="unknown arch 'vgg16'.*resnet18"):
        get_model("vgg16", num_classes=10)


@pytest.mark.parametrize("arch", list_models())
@pytest.mark.parametrize("input_size", [8, 32, 96])
def test_tiny_models_run_and_keep_layer_roles(arch, input_size):
    model = get_model(arch, num_classes=7, in_channels=1, input_size=input_size, width=0.25).eval()
    out = model(torch.randn(2, 1, input_size, input_size))
    assert out.shape == (2, 7)
    fixed, n_searchable = EXPECTED[arch]
    assert fixed_layer_names(model) == fixed
    names = searchable_layer_names(model)
    assert len(names) == n_searchable and not set(names) & set(fixed)
    stem, head = (model.get_submodule(n) for n in fixed)
    assert stem.in_channels == 1 and head.out_features == 7


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_cifar_and_imagenet_variants_share_names_and_searchable_shapes(arch):
    small = get_model(arch, num_classes=10, input_size=32)
    large = get_model(arch, num_classes=1000, input_size=224)
    assert [n for n, _ in small.named_modules()] == [n for n, _ in large.named_modules()]
    assert searchable_layer_names(small) == searchable_layer_names(large)
    for name in searchable_layer_names(small):
        assert small.get_submodule(name).weight.shape == large.get_submodule(name).weight.shape, name
    stem_small, stem_large = small.get_submodule(fixed_layer_names(small)[0]), large.get_submodule(fixed_layer_names(large)[0])
    assert stem_small.stride == (1, 1) and stem_large.stride == (2, 2)
    if arch.startswith("resnet"):
        assert stem_small.kernel_size == (3, 3) and stem_large.kernel_size == (7, 7)
        assert isinstance(small.maxpool, nn.Identity) and isinstance(large.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2"])
def test_full_size_matches_torchvision_state_dict(arch):
    ours = get_model(arch, num_classes=1000).state_dict()
    theirs = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_width_scales_channels():
    assert get_model("resnet20", num_classes=10, width=0.5).layer3[2].conv2.out_channels == 32
    r18 = get_model("resnet18", num_classes=10, input_size=32, width=0.25)
    assert (r18.conv1.out_channels, r18.layer4[1].conv2.out_channels, r18.fc.in_features) == (16, 128, 128)
    r50 = get_model("resnet50", num_classes=10, input_size=32, width=0.25)
    assert (r50.layer1[0].conv1.in_channels, r50.fc.in_features) == (16, 512)


def test_invalid_geometry_is_user_error():
    with pytest.raises(UserError, match="positive"):
        get_model("resnet20", num_classes=0)


# ------------------------------------------------------------------------------------------------ weights


def test_local_weights_load_and_mismatched_keys_are_skipped(tmp_path, caplog):
    torch.manual_seed(0)
    source = get_model("resnet20", num_classes=10, width=0.5)
    path = tmp_path / "fp.pt"
    torch.save({"state_dict": source.state_dict(), "meta": {"arch": "resnet20"}}, path)  # pretrain layout

    with caplog.at_level(logging.WARNING, logger="mpqbench.models"):
        target = get_model("resnet20", num_classes=5, width=0.5, weights=path)
    assert torch.equal(target.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert torch.equal(target.bn1.running_var, source.bn1.running_var)
    assert not torch.equal(target.fc.weight[:5], source.fc.weight[:5])
    assert "fc.weight (shape (10, 32) != (5, 32))" in caplog.text

    report = load_weights(get_model("resnet20", num_classes=5, width=0.5), path)
    assert sorted(report.missing) == ["fc.bias", "fc.weight"]
    assert sorted(k.split()[0] for k in report.skipped) == ["fc.bias", "fc.weight"]


def test_ddp_prefix_is_stripped(tmp_path):
    source = get_model("resnet20", num_classes=3, width=0.25)
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    report = load_weights(get_model("resnet20", num_classes=3, width=0.25), path)
    assert not report.skipped and not report.missing


def test_weights_of_another_arch_are_rejected(tmp_path):
    path = tmp_path / "mbv2.pt"
    torch.save(get_model("mobilenet_v2", num_classes=10, input_size=32, width=0.25).state_dict(), path)
    with pytest.raises(UserError, match="no tensor"):
        get_model("resnet20", num_classes=10, weights=path)


def test_missing_or_garbage_weights_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        get_model("resnet20", num_classes=10, weights=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        get_model("resnet20", num_classes=10, weights=bad)


def test_torchvision_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth .*checkpoints"):
        get_model("resnet18", num_classes=10, weights="torchvision")
    assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()
    with pytest.raises(UserError, match="IMAGENET1K_V1"):
        torchvision_weights_path("resnet18", "torchvision:NOPE")
    with pytest.raises(UserError, match="no weights for 'resnet20'"):
        get_model("resnet20", num_classes=10, weights="torchvision")


def test_torchvision_weights_from_hub_cache_into_cifar_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    imagenet = torchvision.models.mobilenet_v2(weights=None)
    torch.save(imagenet.state_dict(), folder / "mobilenet_v2-b0353104.pth")

    report = load_weights(get_model("mobilenet_v2", num_classes=10, input_size=32),
                          torchvision_weights_path("mobilenet_v2"))
    assert sorted(k.split()[0] for k in report.skipped) == ["classifier.1.bias", "classifier.1.weight"]
    model = get_model("mobilenet_v2", num_classes=10, input_size=32, weights="torchvision")
    # the stem has the same 3×3 shape in both variants, so it loads; only the stride differs
    assert torch.equal(model.features[0][0].weight, imagenet.features[0][0].weight)
    assert torch.equal(model.features[17].conv[0][0].weight, imagenet.features[17].conv[0][0].weight)


def test_resnet20_block_computes_torchvision_basic_block():
    """The local ResNet-20 block is torchvision's BasicBlock: same names, same init draws, same outputs."""
    from torchvision.models.resnet import BasicBlock

    from mpqbench.models import _CifarBasicBlock

    for stride, down in ((1, False), (2, True)):
        mk = (lambda: nn.Sequential(nn.Conv2d(8, 16, 1, stride=stride, bias=False), nn.BatchNorm2d(16))) if down else (lambda: None)
        cin = 8 if down else 16
        torch.manual_seed(0)
        ours = _CifarBasicBlock(cin, 16, stride, mk())
        torch.manual_seed(0)
        theirs = BasicBlock(cin, 16, stride, mk())
        assert list(ours.state_dict()) == list(theirs.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
        x = torch.randn(2, cin, 8, 8)
        assert torch.equal(ours(x), theirs(x))


def test_resnet20_jobs_do_not_import_torchvision():
    """Each workflow job is a process; torchvision's import (and torch._dynamo's under it) is >1 s of each."""
    import subprocess
    import sys

    code = ("import sys, mpqbench.cli, mpqbench.pipeline, mpqbench.search.run\n"
            "from mpqbench.models import get_model\n"
            "get_model('resnet20', num_classes=10, in_channels=1, input_size=28)\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
