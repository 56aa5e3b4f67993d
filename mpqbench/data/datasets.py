"""The dataset classes :func:`~mpqbench.data.load_split` returns, and the image helpers they use.

* :class:`TensorImageDataset` — small sets (digits, Fashion-MNIST, CIFAR-10) held whole in memory,
  resized once at load time (:func:`_resize`). :func:`~mpqbench.data.make_loader` batches them by
  indexing the tensors (no per-item Python work) and applies its optional augmentation (random crop
  from a zero-padded image, horizontal flip where it makes sense) batch-wise.
* :class:`ImageFileDataset` — image files decoded per item (ImageFolder, ImageNet, Flowers-102,
  Food-101) with the ImageNet-style transforms of :func:`imagenet_transform`: RandomResizedCrop + flip
  for the train split, Resize(input_size / 0.875) + CenterCrop for the test split. Their augmentation
  is part of the split.
* :class:`LabeledSubset` — a ``Subset`` that keeps labels and classes; :func:`_labels_of` reads the
  labels of any of these without decoding images.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from mpqbench.data.registry import Split
from mpqbench.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Test-time resize is input_size / CROP_FRACTION before the centre crop (256 → 224).
CROP_FRACTION = 0.875


class TensorImageDataset(Dataset):
    """A whole split in memory.

    ``images``: ``[N, C, H, W]``, uint8 (0..255) or float (0..1), already at the model's input size;
    ``labels``: ``[N]`` int64. Normalisation ``(x - mean) / std`` happens when items or batches are
    read, so the stored tensor stays compact. ``crop_pad_px`` and ``flip`` say how :meth:`batch`
    augments (padding in px at this size; whether mirror images are still the same class).
    ``indices``: positions in the dataset this one was taken from (None for a loaded split).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str],
        crop_pad_px: int,
        flip: bool,
        indices: np.ndarray | None = None,
    ) -> None:
        assert images.ndim == 4 and labels.ndim == 1, (images.shape, labels.shape)
        assert len(images) == len(labels), (images.shape, labels.shape)
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.classes = list(classes)
        self.crop_pad_px = crop_pad_px
        self.flip = flip
        self.indices = indices

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> Tensor:
        return self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])

    def batch(
        self, index: Tensor, *, augment: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Images ``[B, C, H, W]`` (normalised float32) and labels ``[B]`` for ``index`` ``[B]``."""
        x = self.images[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if augment:
            x = self._augment(x, generator)
        return (x - self.mean) / self.std, self.labels[index]

    def _augment(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random crop of the zero-padded batch (same size back), then a random horizontal flip."""
        b, c, h, w = x.shape
        p = self.crop_pad_px
        if p > 0:
            padded_w = w + 2 * p
            padded = F.pad(x, (p, p, p, p)).view(b, c, -1)
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            # Flat positions of an h×w window at (dy, dx) in each padded image: one gather for the batch.
            window = (torch.arange(h)[:, None] * padded_w + torch.arange(w)).view(1, 1, h * w)
            index = (window + (dy * padded_w + dx).view(b, 1, 1)).expand(b, c, h * w)
            x = padded.gather(2, index).view(b, c, h, w)
        if self.flip:
            mirror = torch.rand(b, generator=generator) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        return x

    def select(self, index: np.ndarray) -> "TensorImageDataset":
        """A new in-memory dataset holding the items at ``index`` (positions in this one)."""
        t = torch.as_tensor(index, dtype=torch.long)
        return TensorImageDataset(
            self.images[t],
            self.labels[t],
            mean=self.mean.flatten().tolist(),
            std=self.std.flatten().tolist(),
            classes=self.classes,
            crop_pad_px=self.crop_pad_px,
            flip=self.flip,
            indices=np.asarray(index, dtype=np.int64),
        )


class ImageFileDataset(Dataset):
    """Image files decoded per item: ``files[i]`` (path) has class ``labels[i]``; ``transform`` maps an
    RGB PIL image to a normalised ``[3, H, W]`` tensor."""

    def __init__(
        self, files: Sequence[str], labels: Sequence[int], *, classes: Sequence[str], transform: Callable
    ) -> None:
        assert len(files) == len(labels)
        self.files = list(files)
        self.targets = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(_load_rgb(self.files[i])), int(self.targets[i])


class LabeledSubset(Subset):
    """``torch.utils.data.Subset`` that keeps ``targets``, ``classes`` and ``num_classes``."""

    @property
    def targets(self) -> np.ndarray:
        return _labels_of(self.dataset)[np.asarray(self.indices, dtype=np.int64)]

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes


def _load_rgb(path: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:  # includes PIL.UnidentifiedImageError and truncated files
        raise UserError(f"cannot read image {path} ({e}); replace or delete the file") from None


def _labels_of(ds: Dataset) -> np.ndarray:
    """Labels of every item, without decoding any image."""
    if isinstance(ds, Subset) and not isinstance(ds, LabeledSubset):
        return _labels_of(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    if hasattr(ds, "targets"):
        targets = ds.targets
        return targets.numpy() if isinstance(targets, Tensor) else np.asarray(targets, dtype=np.int64)
    raise TypeError(f"{type(ds).__name__} exposes no labels (`targets`); cannot stratify it")


def _resize(images: Tensor, size: int, *, chunk: int = 4096) -> Tensor:
    """Bilinear resize of ``[N, C, H, W]`` to ``size``×``size`` (antialiased when shrinking); keeps dtype."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = size < images.shape[-1]
    out = []
    for part in images.split(chunk):
        r = F.interpolate(
            part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )
        out.append(r.round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else r)
    return torch.cat(out)


def imagenet_transform(split: Split, input_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """RandomResizedCrop + flip for train; Resize(input_size / 0.875) + CenterCrop for test; then normalise."""
    from torchvision import transforms as T

    if split == "train":
        geometry = [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(int(input_size / CROP_FRACTION)), T.CenterCrop(input_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])
