"""Dataset registry: the benchmark's proxy and target datasets, read from local files only.

Every dataset is a registered :class:`DatasetSource` that knows where its files live, how to get them,
and how to load a split. ``load_split(name, split, root=..., input_size=...)`` returns a
``torch.utils.data.Dataset`` of ``(image, label)`` with ``image`` a normalised float tensor
``[C, input_size, input_size]`` and ``label`` an ``int``.

Two kinds of dataset come back:

* :class:`TensorImageDataset` — small sets (digits, Fashion-MNIST, CIFAR-10) held whole in memory,
  resized once at load time. :func:`make_loader` batches them by indexing the tensors (no per-item
  Python work) and applies its optional augmentation (random crop from a zero-padded image, horizontal
  flip where it makes sense) batch-wise.
* :class:`ImageFileDataset` — image files decoded per item (ImageFolder, ImageNet, Flowers-102,
  Food-101) with ImageNet-style transforms: RandomResizedCrop + flip for the train split,
  Resize(input_size / 0.875) + CenterCrop for the test split. Their augmentation is part of the split.

Nothing is downloaded unless ``download=True`` is passed; missing or malformed data raises
:class:`~mpqbench.errors.UserError` naming what is missing and the command that gets it.
Roots follow torchvision's layout (``<root>/cifar-10-batches-py``, ``<root>/FashionMNIST/raw``,
``<root>/flowers-102``, ``<root>/food-101``); ``root=None`` means ``$MPQBENCH_DATA_ROOT`` or
``~/.cache/mpqbench/data``. Fashion-MNIST is also found where Debian's ``dataset-fashion-mnist``
installs it (``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import gzip
import importlib
import json
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from mpqbench.errors import UserError
from mpqbench.registry import Registry

DATA_ROOT_ENV = "MPQBENCH_DATA_ROOT"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Test-time resize is input_size / CROP_FRACTION before the centre crop (256 → 224).
CROP_FRACTION = 0.875

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, known without loading it.

    ``native_size`` is the side (px) of the stored images for the in-memory sets and the conventional
    input size (224) for the file-backed sets, whose images vary in size.
    """

    name: str
    num_classes: int
    in_channels: int
    native_size: int


def default_data_root() -> Path:
    """``$MPQBENCH_DATA_ROOT`` if set, else ``~/.cache/mpqbench/data``."""
    env = os.environ.get(DATA_ROOT_ENV)
    return Path(env) if env else Path.home() / ".cache" / "mpqbench" / "data"


# --------------------------------------------------------------------------------------------------
# Dataset classes
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


class DatasetSource:
    """One registered dataset: where its files may be, how to get them, how to load a split."""

    info: ClassVar[DatasetInfo]
    title: ClassVar[str]  # human name for messages

    def candidates(self, root: Path) -> list[Path]:
        """Places searched, in order."""
        raise NotImplementedError

    def complete(self, where: Path) -> bool:
        """Whether ``where`` holds every file this dataset needs."""
        raise NotImplementedError

    def how_to_get(self, root: Path) -> str:
        """The one command (or step) that puts the data where :meth:`candidates` looks."""
        raise NotImplementedError

    def download(self, root: Path) -> None:
        raise UserError(f"{self.title} cannot be downloaded automatically; {self.how_to_get(root)}")

    def load(self, split: Split, where: Path, input_size: int) -> Dataset:
        raise NotImplementedError

    def info_for(self, root: Path) -> DatasetInfo:
        return self.info

    def locate(self, root: Path) -> Path | None:
        return next((p for p in self.candidates(root) if self.complete(p)), None)

    def require(self, root: Path, download: bool) -> Path:
        """The data's location; downloads first only when ``download`` is set; else UserError."""
        where = self.locate(root)
        if where is None and download:
            self.download(root)
            where = self.locate(root)
        if where is None:
            searched = " or ".join(str(p) for p in self.candidates(root))
            raise UserError(f"{self.title} not found in {searched}; {self.how_to_get(root)}")
        return where


DATASETS: Registry[type[DatasetSource]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[type[DatasetSource]], type[DatasetSource]]:
    return DATASETS.register(name)


def _source(name: str) -> DatasetSource:
    return DATASETS.get(name)()


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root).expanduser() if root is not None else default_data_root()


def load_split(
    name: str,
    split: Split,
    *,
    root: str | os.PathLike | None = None,
    input_size: int,
    download: bool = False,
) -> Dataset:
    """Split ``"train"`` or ``"test"`` of dataset ``name`` as ``(float [C, input_size, input_size], int)``."""
    source = _source(name)
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; choose train or test")
    if not isinstance(input_size, int) or input_size < 1:
        raise UserError(f"input size must be a positive integer, got {input_size!r}")
    base = _root(root)
    return source.load(split, source.require(base, download), input_size)


def dataset_info(name: str, root: str | os.PathLike | None = None) -> DatasetInfo:
    """Classes, channels and native size of ``name`` without loading it (ImageFolder counts its class dirs)."""
    return _source(name).info_for(_root(root))


def dataset_status(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """For ``mpqbench info``: one ``{name, present, where, how_to_get}`` per registered dataset."""
    base = _root(root)
    rows = []
    for name in DATASETS.names():
        source = _source(name)
        where = source.locate(base)
        rows.append(
            {
                "name": name,
                "present": where is not None,
                "where": str(where) if where is not None else None,
                "how_to_get": source.how_to_get(base),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# In-memory datasets
# --------------------------------------------------------------------------------------------------


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


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (``.gz`` or raw) of unsigned bytes with ``ndim`` dimensions, as a uint8 array.

    Header: two zero bytes, type code 0x08 (ubyte), ``ndim``, then ``ndim`` big-endian uint32 sizes.
    """

    def bad(reason: str) -> UserError:
        return UserError(f"{path} is not a valid IDX file ({reason}); delete it and get it again")

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise bad(f"cannot decompress: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise bad("bad magic number")
    if raw[2] != 0x08:
        raise bad(f"element type 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    if raw[3] != ndim:
        raise bad(f"{raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad("truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise bad(f"{len(raw)} bytes for shape {dims}, expected {expected}; truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


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


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (a CIFAR batch needs nothing else)."""

    NUMPY_NAMES = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" and name in self.NUMPY_NAMES:
            if hasattr(np, "_core"):  # numpy >= 2 moved numpy.core to numpy._core
                module = module.replace("numpy.core", "numpy._core")
            return getattr(importlib.import_module(module), name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def read_cifar_batch(path: Path) -> dict[str, Any]:
    """A CIFAR python-version pickle (data batch or ``batches.meta``) with its keys as ``str``."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise UserError(f"{path} is not a CIFAR python pickle ({e}); delete it and get it again") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict; delete it and get it again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


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


def _torchvision_command(cls: str, root: Path) -> str:
    return f"python -c \"import torchvision; torchvision.datasets.{cls}('{root}', download=True)\""


def _torchvision_download(cls: str, root: Path, title: str) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, cls)(str(root), download=True)
    except Exception as e:  # network, checksum, disk: all end the same way for the user
        raise UserError(
            f"downloading {title} into {root} failed ({type(e).__name__}: {e}); "
            "check the network or put the files there yourself"
        ) from None


# --------------------------------------------------------------------------------------------------
# File-backed datasets
# --------------------------------------------------------------------------------------------------


def imagenet_transform(split: Split, input_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """RandomResizedCrop + flip for train; Resize(input_size / 0.875) + CenterCrop for test; then normalise."""
    from torchvision import transforms as T

    if split == "train":
        geometry = [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()]
    else:
        geometry = [T.Resize(int(input_size / CROP_FRACTION)), T.CenterCrop(input_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])


class _FileSource(DatasetSource):
    def files(self, split: Split, where: Path) -> tuple[list[str], list[int], list[str]]:
        """Image paths, their labels, and the class names."""
        raise NotImplementedError

    def load(self, split: Split, where: Path, input_size: int) -> ImageFileDataset:
        files, labels, classes = self.files(split, where)
        return ImageFileDataset(files, labels, classes=classes, transform=imagenet_transform(split, input_size))


@register_dataset("imagefolder")
class ImageFolderSource(_FileSource):
    """Any ``<root>/train/<class>/*`` + ``<root>/val/<class>/*`` tree (torchvision ImageFolder layout)."""

    info = DatasetInfo("imagefolder", num_classes=0, in_channels=3, native_size=224)
    title = "ImageFolder data"
    SPLIT_DIRS = {"train": "train", "test": "val"}

    def candidates(self, root: Path) -> list[Path]:
        return [root]

    def complete(self, where: Path) -> bool:
        return all((where / d).is_dir() for d in self.SPLIT_DIRS.values())

    def how_to_get(self, root: Path) -> str:
        return "pass --data-root DIR where DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg hold the images"

    def info_for(self, root: Path) -> DatasetInfo:
        """Counts the class folders of ``train/``; without data only a known class count can be given."""
        where = self.locate(root)
        if where is None:
            if self.info.num_classes == 0:
                self.require(root, download=False)  # raises the not-found error
            return self.info
        num_classes = sum(1 for p in (where / "train").iterdir() if p.is_dir())
        return DatasetInfo(self.info.name, num_classes, self.info.in_channels, self.info.native_size)

    def files(self, split: Split, where: Path) -> tuple[list[str], list[int], list[str]]:
        from torchvision.datasets import ImageFolder

        folders = {s: where / d for s, d in self.SPLIT_DIRS.items()}
        try:
            listing = {s: ImageFolder(str(folders[s])) for s in {"train", split}}
        except (FileNotFoundError, OSError) as e:
            raise UserError(f"{self.title} in {where} is unusable ({e}); {self.how_to_get(where)}") from None
        if listing[split].classes != listing["train"].classes:
            raise UserError(f"{folders['test']} and {folders['train']} have different class folders; "
                            "give both splits the same class names")
        folder = listing[split]
        return [p for p, _ in folder.samples], list(folder.targets), folder.classes


@register_dataset("imagenet")
class ImageNet(ImageFolderSource):
    """ILSVRC-2012 in ImageFolder layout (``train/`` and class-sorted ``val/``), found at root or root/imagenet."""

    info = DatasetInfo("imagenet", num_classes=1000, in_channels=3, native_size=224)
    title = "ImageNet"

    def candidates(self, root: Path) -> list[Path]:
        return [root, root / "imagenet"]

    def how_to_get(self, root: Path) -> str:
        return (f"download ILSVRC-2012 from https://image-net.org, unpack train/ and val/ (val sorted into class "
                f"folders) under {root / 'imagenet'}, and pass --data-root {root}")


@register_dataset("flowers102")
class Flowers102(_FileSource):
    """Oxford Flowers-102 (torchvision layout ``flowers-102/{jpg,imagelabels.mat,setid.mat}``).

    Train = the official train + validation ids (2,040 images), test = the 6,149 test ids.
    """

    info = DatasetInfo("flowers102", num_classes=102, in_channels=3, native_size=224)
    title = "Flowers-102"
    SET_KEYS = {"train": ("trnid", "valid"), "test": ("tstid",)}

    def candidates(self, root: Path) -> list[Path]:
        return [root / "flowers-102"]

    def complete(self, where: Path) -> bool:
        return (where / "jpg").is_dir() and (where / "imagelabels.mat").is_file() and (where / "setid.mat").is_file()

    def how_to_get(self, root: Path) -> str:
        return f"get it with `{_torchvision_command('Flowers102', root)}`"

    def download(self, root: Path) -> None:
        _torchvision_download("Flowers102", root, self.title)

    def files(self, split: Split, where: Path) -> tuple[list[str], list[int], list[str]]:
        from scipy.io import loadmat

        try:
            labels = np.asarray(loadmat(where / "imagelabels.mat", squeeze_me=True)["labels"]).reshape(-1)
            sets = loadmat(where / "setid.mat", squeeze_me=True)
            ids = np.concatenate([np.asarray(sets[k]).reshape(-1) for k in self.SET_KEYS[split]])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"Flowers-102 metadata in {where} is malformed ({e}); delete it and get it again") from None
        ids_ok = ids.size == 0 or (1 <= ids.min() and ids.max() <= len(labels))
        labels_ok = labels.size == 0 or (1 <= labels.min() and labels.max() <= 102)
        if not (ids_ok and labels_ok):
            raise UserError(f"Flowers-102 metadata in {where} has ids or labels out of range; get it again")
        files = [str(where / "jpg" / f"image_{i:05d}.jpg") for i in ids]
        classes = [str(c) for c in range(1, 103)]
        return files, (labels[ids - 1] - 1).tolist(), classes


@register_dataset("food101")
class Food101(_FileSource):
    """Food-101 (torchvision layout ``food-101/{images,meta/train.json,meta/test.json}``); 101 classes."""

    info = DatasetInfo("food101", num_classes=101, in_channels=3, native_size=224)
    title = "Food-101"

    def candidates(self, root: Path) -> list[Path]:
        return [root / "food-101"]

    def complete(self, where: Path) -> bool:
        meta = where / "meta"
        return (where / "images").is_dir() and (meta / "train.json").is_file() and (meta / "test.json").is_file()

    def how_to_get(self, root: Path) -> str:
        return f"get it with `{_torchvision_command('Food101', root)}`"

    def download(self, root: Path) -> None:
        _torchvision_download("Food101", root, self.title)

    def files(self, split: Split, where: Path) -> tuple[list[str], list[int], list[str]]:
        path = where / "meta" / f"{split}.json"
        try:
            meta = json.loads(path.read_text())
            classes = sorted(meta)  # torchvision's class order
            files, labels = [], []
            for label, name in enumerate(classes):
                files += [str(where / "images" / f"{rel}.jpg") for rel in meta[name]]
                labels += [label] * len(meta[name])
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"{path} is malformed ({e}); delete Food-101 and get it again") from None
        return files, labels, classes


# --------------------------------------------------------------------------------------------------
# Subsets and loaders
# --------------------------------------------------------------------------------------------------


def _labels_of(ds: Dataset) -> np.ndarray:
    """Labels of every item, without decoding any image."""
    if isinstance(ds, Subset) and not isinstance(ds, LabeledSubset):
        return _labels_of(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    if hasattr(ds, "targets"):
        targets = ds.targets
        return targets.numpy() if isinstance(targets, Tensor) else np.asarray(targets, dtype=np.int64)
    raise TypeError(f"{type(ds).__name__} exposes no labels (`targets`); cannot stratify it")


def stratified_indices(labels: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """``count`` sorted positions drawn without replacement, each class in proportion to its frequency.

    Per-class quotas use largest remainders (ties go to the lower class); within a class the pick is a
    seeded random permutation, so equal seeds give equal indices.
    """
    labels = np.asarray(labels)
    n = len(labels)
    assert 0 <= count <= n, (count, n)
    order = np.random.default_rng(seed).permutation(n)
    _, freq = np.unique(labels, return_counts=True)
    exact = count * freq / n
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(quota - exact, kind="stable")[: count - quota.sum()]] += 1
    grouped = order[np.argsort(labels[order], kind="stable")]  # class by class, random within each class
    starts = np.concatenate([[0], np.cumsum(freq)[:-1]])
    return np.sort(np.concatenate([grouped[s : s + q] for s, q in zip(starts, quota)]))


def _take(ds: Dataset, index: np.ndarray) -> Dataset:
    if isinstance(ds, TensorImageDataset):
        return ds.select(index)
    return LabeledSubset(ds, index.tolist())


def subset(ds: Dataset, *, count: int | None = None, fraction: float | None = None, seed: int) -> Dataset:
    """A seeded, class-stratified subset of ``count`` items or ``fraction`` (0, 1] of ``ds``.

    In-memory datasets stay in memory (:class:`TensorImageDataset`); others become :class:`LabeledSubset`.
    The chosen positions are ``result.indices``.
    """
    n = len(ds)
    if (count is None) == (fraction is None):
        raise ValueError("give exactly one of count or fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise UserError(f"subset fraction must be in (0, 1], got {fraction}")
        count = round(fraction * n)
    if not 1 <= count <= n:
        raise UserError(f"subset of {count} items asked from a dataset of {n}; use 1..{n}")
    return _take(ds, stratified_indices(_labels_of(ds), count, seed=seed))


def train_val_split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded, class-stratified split into (train, val) with ``round(val_fraction · N)`` val items."""
    n = len(ds)
    val_count = round(val_fraction * n)
    if not 0 < val_fraction < 1 or not 1 <= val_count < n:
        raise UserError(
            f"validation fraction {val_fraction} of {n} items leaves an empty split; use a value in (0, 1)"
        )
    val = stratified_indices(_labels_of(ds), val_count, seed=seed)
    train = np.setdiff1d(np.arange(n), val)
    return _take(ds, train), _take(ds, val)


def _rank_world(distributed: bool) -> tuple[int, int]:
    import torch.distributed as dist

    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Independent 64-bit seed per (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed % 2**63, epoch, rank]).generate_state(1, np.uint64)[0])


class TensorBatchLoader:
    """Loader for a :class:`TensorImageDataset` that slices whole batches from its tensors.

    Iterating yields ``(images [B, C, H, W] float32, labels [B] int64)``. Epoch ``e`` (counted per
    ``iter()``, or set with :meth:`set_epoch` to resume) uses the permutation ``DistributedSampler``
    gives for ``seed + e`` and augmentation drawn from a generator seeded by ``(seed, e, rank)``,
    so equal seeds give equal batches and a resumed run sees the batches an uninterrupted one would.
    """

    def __init__(
        self,
        ds: TensorImageDataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        augment: bool,
        distributed: bool,
    ) -> None:
        self.dataset = ds
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.rank, world = _rank_world(distributed)
        self.sampler = DistributedSampler(ds, num_replicas=world, rank=self.rank, shuffle=shuffle, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.set_epoch(self.epoch)
        index = torch.as_tensor(list(self.sampler), dtype=torch.long)
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, self.rank))
        self.epoch += 1
        bs = self.batch_size
        return (
            self.dataset.batch(index[i * bs : (i + 1) * bs], augment=self.augment, generator=generator)
            for i in range(len(self))
        )


class EpochDataLoader(DataLoader):
    """``DataLoader`` over a ``DistributedSampler`` whose epoch advances per ``iter()`` (or :meth:`set_epoch`).

    The loader generator is reseeded from ``(seed, epoch, rank)`` each epoch, which seeds worker
    processes; with ``num_workers=0`` random transforms draw from torch's global RNG instead.
    """

    def __init__(
        self,
        ds: Dataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        num_workers: int,
        distributed: bool,
    ) -> None:
        self.seed = seed
        self.epoch = 0
        self.rank, world = _rank_world(distributed)
        sampler = DistributedSampler(ds, num_replicas=world, rank=self.rank, shuffle=shuffle, seed=seed)
        super().__init__(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            generator=torch.Generator(),
            pin_memory=torch.cuda.is_available(),
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        self.generator.manual_seed(_epoch_seed(self.seed, self.epoch, self.rank))
        self.epoch += 1
        return super().__iter__()


def make_loader(
    ds: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
    augment: bool = False,
    num_workers: int = 0,
    distributed: bool = False,
) -> TensorBatchLoader | EpochDataLoader:
    """Seeded batches of ``(images [B, C, H, W], labels [B])``.

    In-memory datasets get the fast :class:`TensorBatchLoader` (``num_workers`` unused); ``augment``
    adds a random crop of the zero-padded image and, where mirror images keep their class, a horizontal
    flip. File-backed datasets get an :class:`EpochDataLoader`; their augmentation is fixed by the
    split's transform, so ``augment`` has no effect there. ``distributed=True`` shards the data over
    the ranks of an initialised ``torch.distributed`` group (ignored without one). Both loaders have
    ``set_epoch(e)`` for exact resumption.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    common = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, distributed=distributed)
    if isinstance(ds, TensorImageDataset):
        return TensorBatchLoader(ds, augment=augment, **common)
    return EpochDataLoader(ds, num_workers=num_workers, **common)
