"""The registered in-memory datasets: scikit-learn digits, Fashion-MNIST (IDX) and CIFAR-10 (python).

Each is parsed into ``[N, C, H, W]`` tensors, resized once to the input size and returned as a
:class:`~mpqbench.data.datasets.TensorImageDataset`, augmented later by
:func:`~mpqbench.data.make_loader`. Roots follow torchvision's layout (``<root>/cifar-10-batches-py``,
``<root>/FashionMNIST/raw``); Fashion-MNIST is also found in ``<root>`` itself and where Debian's
``dataset-fashion-mnist`` installs it (:data:`DEBIAN_FASHION_MNIST_DIR`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mpqbench.data.datasets import TensorImageDataset, _resize
from mpqbench.data.formats import read_cifar_batch, read_idx
from mpqbench.data.registry import (
    DatasetInfo,
    DatasetSource,
    Split,
    _torchvision_download,
    register_dataset,
)
from mpqbench.data.subsets import stratified_indices
from mpqbench.errors import UserError

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"


class _InMemorySource(DatasetSource):
    """Small sets: parsed into ``[N, C, H, W]`` tensors, resized once, augmented in :func:`make_loader`."""

    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    classes: ClassVar[tuple[str, ...]]
    crop_pad_native: ClassVar[int]  # random-crop padding in px at native size (scaled to input size)
    flip: ClassVar[bool]

    def read(self, split: Split, where: Path) -> tuple[Tensor, Tensor]:
        """Images ``[N, C, native, native]`` (uint8 or float 0..1) and labels ``[N]``."""
        raise NotImplementedError

    def load(self, split: Split, where: Path, input_size: int) -> TensorImageDataset:
        images, labels = self.read(split, where)
        pad = round(self.crop_pad_native * input_size / self.info.native_size)
        return TensorImageDataset(
            _resize(images, input_size),
            labels,
            mean=self.mean,
            std=self.std,
            classes=self.classes,
            crop_pad_px=max(pad, 1) if self.crop_pad_native else 0,
            flip=self.flip,
        )


@register_dataset("digits")
class Digits(_InMemorySource):
    """scikit-learn's 1,797 8×8 handwritten digits (values 0..16), shipped inside scikit-learn.

    Train/test = a class-stratified 80/20 split drawn with the fixed :attr:`SPLIT_SEED`, so it never
    changes between runs. Mirror images of digits are other shapes, so there is no flip augmentation.
    """

    info = DatasetInfo("digits", num_classes=10, in_channels=1, native_size=8)
    title = "scikit-learn digits"
    mean, std = (0.3053,), (0.3760,)  # of load_digits().data / 16
    classes = tuple(str(d) for d in range(10))
    crop_pad_native = 1
    flip = False
    SPLIT_SEED = 0
    TEST_FRACTION = 0.2

    def candidates(self, root: Path) -> list[Path]:
        try:
            import sklearn.datasets
        except ImportError:
            return [Path("<scikit-learn>")]
        return [Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"]

    def complete(self, where: Path) -> bool:
        return where.is_file()

    def how_to_get(self, root: Path) -> str:
        return "install scikit-learn with `pip install scikit-learn`"

    def read(self, split: Split, where: Path) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        labels = np.asarray(bunch.target, dtype=np.int64)
        test = stratified_indices(labels, round(self.TEST_FRACTION * len(labels)), seed=self.SPLIT_SEED)
        index = test if split == "test" else np.setdiff1d(np.arange(len(labels)), test)
        images = torch.tensor(bunch.data[index] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
        return images, torch.from_numpy(labels[index])


@register_dataset("fashion-mnist")
class FashionMnist(_InMemorySource):
    """Fashion-MNIST: 60,000 train / 10,000 test 28×28 grey images of 10 clothing classes (IDX files)."""

    info = DatasetInfo("fashion-mnist", num_classes=10, in_channels=1, native_size=28)
    title = "Fashion-MNIST"
    mean, std = (0.2860,), (0.3530,)
    classes = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    )
    crop_pad_native = 2
    flip = True
    FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def candidates(self, root: Path) -> list[Path]:
        return [root / "FashionMNIST" / "raw", root, DEBIAN_FASHION_MNIST_DIR]

    @staticmethod
    def _file(where: Path, stem: str) -> Path | None:
        return next((p for p in (where / stem, where / f"{stem}.gz") if p.is_file()), None)

    def complete(self, where: Path) -> bool:
        return all(self._file(where, stem) for pair in self.FILES.values() for stem in pair)

    def how_to_get(self, root: Path) -> str:
        fetch = f"mpqbench download --dataset fashion-mnist --data-root {root}"
        return f"install it with `{FASHION_MNIST_APT}` or download it with `{fetch}`"

    def download(self, root: Path) -> None:
        _torchvision_download("FashionMNIST", root, self.title)  # fetches both splits

    def read(self, split: Split, where: Path) -> tuple[Tensor, Tensor]:
        image_stem, label_stem = self.FILES[split]
        images = read_idx(self._file(where, image_stem), ndim=3)
        labels_path = self._file(where, label_stem)
        labels = read_idx(labels_path, ndim=1)
        if len(labels) != len(images):
            raise UserError(
                f"{labels_path} has {len(labels)} labels for {len(images)} images; get the files again"
            )
        if labels.size and labels.max() >= self.info.num_classes:
            raise UserError(f"{labels_path} has label {labels.max()} outside 0..9; get the files again")
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@register_dataset("cifar10")
class Cifar10(_InMemorySource):
    """CIFAR-10 python version: 50,000 train / 10,000 test 32×32 colour images, 10 classes."""

    info = DatasetInfo("cifar10", num_classes=10, in_channels=3, native_size=32)
    title = "CIFAR-10"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    crop_pad_native = 4
    flip = True
    FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

    def candidates(self, root: Path) -> list[Path]:
        return [root / "cifar-10-batches-py"]

    def complete(self, where: Path) -> bool:
        return all((where / f).is_file() for files in self.FILES.values() for f in files)

    def how_to_get(self, root: Path) -> str:
        return f"get it with `mpqbench download --dataset cifar10 --data-root {root}`"

    def download(self, root: Path) -> None:
        _torchvision_download("CIFAR10", root, self.title)  # fetches both splits

    def read(self, split: Split, where: Path) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for name in self.FILES[split]:
            path = where / name
            batch = read_cifar_batch(path)
            if "data" not in batch or "labels" not in batch:
                raise UserError(f"{path} lacks the 'data'/'labels' entries of a CIFAR-10 batch; get it again")
            data = np.asarray(batch["data"])
            batch_labels = np.asarray(batch["labels"], dtype=np.int64)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise UserError(
                    f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072); get it again"
                )
            in_range = batch_labels.size == 0 or 0 <= batch_labels.min() <= batch_labels.max() < 10
            if len(batch_labels) != len(data) or not in_range:
                raise UserError(
                    f"{path}: {len(batch_labels)} labels (0..9 expected) for {len(data)} images; get it again"
                )
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(batch_labels)
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
