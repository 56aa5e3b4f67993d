"""Registry of architectures: CIFAR-style ResNet-20 and torchvision's ResNet-18/50 and MobileNetV2.

``get_model(name, num_classes=..., in_channels=..., input_size=...)`` builds one. For ``input_size <= 64``
the torchvision archs use a *cifar* stem (3×3 stride-1 stem conv and no max-pool for the ResNets, stride-1
first conv for MobileNetV2); otherwise the torchvision stem. Both variants have identical module names, so a
per-layer policy searched on a small proxy transfers by name to the full-size target model.

Fixed layers (kept at W8A8, not searched) are the stem conv and the classifier: the first ``Conv2d`` and the
last ``Linear`` in ``named_modules()`` order. Every other Conv2d/Linear is searchable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mpqbench.errors import UserError
from mpqbench.registry import Registry

log = logging.getLogger(__name__)

CIFAR_STEM_MAX_INPUT = 64
"""Inputs up to this many pixels a side get the cifar stem (no early down-sampling)."""

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("arch")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(*, num_classes, in_channels, input_size, width) -> nn.Module``; duplicates raise."""
    return MODELS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered arch names matching a glob, sorted."""
    return MODELS.names(pattern)


def get_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 224,
    width: float = 1.0,
    weights: str | os.PathLike | None = None,
) -> nn.Module:
    """Build arch ``name`` (FP32, train mode).

    ``weights``: ``None`` (random init), a path to a local state-dict file, or ``"torchvision"`` (the
    IMAGENET1K_V1 file in torch.hub's cache dir; ``"torchvision:IMAGENET1K_V2"`` picks another entry).
    Nothing is ever downloaded. Tensors that do not fit (other class count, cifar stem, other in_channels)
    are skipped and logged as a warning; see :func:`load_weights` for the full report.
    """
    factory = MODELS.get(name)
    if num_classes < 1 or in_channels < 1 or input_size < 1 or width <= 0:
        raise UserError(
            f"invalid geometry for {name}: num_classes={num_classes}, in_channels={in_channels}, "
            f"input_size={input_size}, width={width}; all must be positive"
        )
    model = factory(num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width)
    if weights is not None:
        spec = str(weights)
        path = torchvision_weights_path(name, spec) if spec.split(":", 1)[0] == "torchvision" else weights
        report = load_weights(model, path)
        if report.skipped or report.missing:
            log.warning("%s: weights from %s: %s", name, path, report.summary())
    return model


# --------------------------------------------------------------------------------------------- layer roles


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def fixed_layer_names(model: nn.Module) -> tuple[str, str]:
    """(stem conv, classifier): the first Conv2d and the last Linear in module order."""
    convs = [n for n, m in _layers(model) if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in _layers(model) if isinstance(m, nn.Linear)]
    if not convs or not linears:
        raise ValueError(f"{type(model).__name__} needs at least one Conv2d and one Linear")
    return convs[0], linears[-1]


def searchable_layer_names(model: nn.Module) -> list[str]:
    """Every Conv2d/Linear except the fixed stem and classifier, in module order."""
    fixed = set(fixed_layer_names(model))
    return [n for n, _ in _layers(model) if n not in fixed]


# --------------------------------------------------------------------------------------------- weights


@dataclass
class WeightsReport:
    """What :func:`load_weights` did, by state-dict key."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "key (reason)" for file entries not used
    missing: list[str] = field(default_factory=list)  # model keys the file did not provide (left at init)

    def summary(self, limit: int = 10) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")

        return (
            f"{len(self.loaded)} tensors loaded; skipped {len(self.skipped)}: {names(self.skipped) or '-'}; "
            f"left at init {len(self.missing)}: {names(self.missing) or '-'}"
        )


def load_weights(model: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Copy the tensors of a state-dict file into ``model`` where name and shape match; skip the rest.

    Accepts a bare state dict, a checkpoint dict with a ``"state_dict"`` entry (mpqbench pretrain output),
    and DDP's ``module.`` key prefix. Loaded with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass an existing state-dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise UserError(f"cannot read weights file {path} ({exc}); pass a state dict saved with torch.save") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} holds no state dict (name -> tensor); save model.state_dict()")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}

    own = model.state_dict()
    report = WeightsReport()
    fitting: dict[str, torch.Tensor] = {}
    for key, tensor in obj.items():
        if key not in own:
            report.skipped.append(f"{key} (not in model)")
        elif own[key].shape != tensor.shape:
            report.skipped.append(f"{key} (shape {tuple(tensor.shape)} != {tuple(own[key].shape)})")
        else:
            fitting[key] = tensor
    if all(k.endswith("num_batches_tracked") for k in fitting):  # scalar counters fit any arch
        raise UserError(f"no tensor in {path} fits {type(model).__name__}; is it a state dict of this arch?")
    model.load_state_dict(fitting, strict=False)
    report.loaded = list(fitting)
    report.missing = [k for k in own if k not in fitting]
    return report


def torchvision_weights_path(arch: str, spec: str = "torchvision") -> Path:
    """Where torch.hub caches torchvision's file for ``arch`` (``spec`` = ``torchvision[:ENTRY]``).

    Never downloads; a missing file raises :class:`UserError` naming the file and the folder to put it in.
    """
    entry = spec.split(":", 1)[1] if ":" in spec else "IMAGENET1K_V1"
    if spec.split(":", 1)[0] != "torchvision":
        raise UserError(f"weights {spec!r}: expected a file path, 'torchvision' or 'torchvision:ENTRY'")
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        raise UserError(f"torchvision has no weights for {arch!r}; pass a local state-dict file instead") from None
    try:
        url = enum[entry].url
    except KeyError:
        known = ", ".join(e.name for e in enum)
        raise UserError(f"torchvision has no {arch} weights entry {entry!r}; choose one of: {known}") from None
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / url.rsplit("/", 1)[1]
    if not path.is_file():
        raise UserError(
            f"torchvision weights {path.name} for {arch} are not in {folder}; download {url} "
            f"on a machine with network access and copy it to {path} (or set TORCH_HOME)"
        )
    return path


# --------------------------------------------------------------------------------------------- archs


def _scale(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class _CifarBasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same modules, names and forward), defined here so that building a
    ResNet-20 does not import torchvision: every workflow job is its own process, and torchvision's import
    (which pulls in torch._dynamo) costs more than a second in each."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)  # after conv2, as torchvision's
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-6n+2 for small images (He et al. 2016, §4.2) with torchvision's BasicBlock structure.

    Shortcuts that change shape are 1×1 conv + BN projections (option B), so every layer that carries
    weights is a Conv2d/Linear. Module names follow torchvision (``layer2.0.downsample.0``).
    """

    def __init__(self, depth: int, *, num_classes: int, in_channels: int, width: float) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        planes = [_scale(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = planes[0]
        stages = []
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                s = stride if b == 0 else 1
                downsample = None
                if s != 1 or inplanes != p:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, p, kernel_size=1, stride=s, bias=False), nn.BatchNorm2d(p)
                    )
                layers.append(_CifarBasicBlock(inplanes, p, s, downsample))
                inplanes = p
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _width_resnet(block_name: str, layers: list[int], *, num_classes: int, width: float) -> nn.Module:
    """torchvision's ResNet with every stage's channel count scaled by ``width`` (1.0 = torchvision exactly).

    torchvision is imported here, not at module import, so that the ResNet-20 jobs never load it.
    """
    from torchvision.models import resnet as tv

    class _WidthResNet(tv.ResNet):
        def __init__(self) -> None:
            self._width = width
            self._stages_built = 0
            block = getattr(tv, block_name)
            super().__init__(block, layers, num_classes=num_classes)
            if width != 1.0:  # the stem BN and the classifier follow the scaled stages
                self.bn1 = nn.BatchNorm2d(self.layer1[0].conv1.in_channels)
                self.fc = nn.Linear(_scale(512, width) * block.expansion, num_classes)

        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):  # type: ignore[override]
            if self._stages_built == 0:  # the first stage's input is the (scaled) stem output
                self.inplanes = _scale(self.inplanes, self._width)
            self._stages_built += 1
            return super()._make_layer(block, _scale(planes, self._width), blocks, stride, dilate)

    return _WidthResNet()


def _resnet(block, layers, *, num_classes: int, in_channels: int, input_size: int, width: float) -> nn.Module:
    model = _width_resnet(block, layers, num_classes=num_classes, width=width)
    stem_out = model.bn1.num_features
    if input_size <= CIFAR_STEM_MAX_INPUT:
        model.conv1 = nn.Conv2d(in_channels, stem_out, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_channels, stem_out, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet20")
def resnet20(*, num_classes: int, in_channels: int = 3, input_size: int = 32, width: float = 1.0) -> nn.Module:
    """CIFAR ResNet-20 (16/32/64·width channels, projection shortcuts); same topology at any input size."""
    return CifarResNet(20, num_classes=num_classes, in_channels=in_channels, width=width)


@register_model("resnet18")
def resnet18(*, num_classes: int, in_channels: int = 3, input_size: int = 224, width: float = 1.0) -> nn.Module:
    return _resnet("BasicBlock", [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels,
                   input_size=input_size, width=width)


@register_model("resnet50")
def resnet50(*, num_classes: int, in_channels: int = 3, input_size: int = 224, width: float = 1.0) -> nn.Module:
    """torchvision ResNet-50 v1.5 (stride in the 3×3 conv)."""
    return _resnet("Bottleneck", [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels,
                   input_size=input_size, width=width)


@register_model("mobilenet_v2")
def mobilenet_v2(*, num_classes: int, in_channels: int = 3, input_size: int = 224, width: float = 1.0) -> nn.Module:
    """torchvision MobileNetV2 (``width`` = its width_mult); stride-1 first conv for small inputs."""
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)
    old = model.features[0][0]
    stride = 1 if input_size <= CIFAR_STEM_MAX_INPUT else 2
    stem = nn.Conv2d(in_channels, old.out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out")
    model.features[0][0] = stem
    return model
