"""The registered file-backed datasets: ImageFolder trees, ImageNet, Flowers-102 and Food-101.

Each lists its image files and labels for a split and returns an
:class:`~mpqbench.data.datasets.ImageFileDataset` that decodes them per item with
:func:`~mpqbench.data.datasets.imagenet_transform`. Roots follow torchvision's layout
(``<root>/flowers-102``, ``<root>/food-101``); ImageNet is an ImageFolder tree at ``<root>`` or
``<root>/imagenet``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mpqbench.data.datasets import ImageFileDataset, imagenet_transform
from mpqbench.data.registry import (
    DatasetInfo,
    DatasetSource,
    Split,
    _torchvision_command,
    _torchvision_download,
    register_dataset,
)
from mpqbench.errors import UserError


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
