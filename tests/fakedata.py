"""Tiny datasets written in the real on-disk formats, for tests (``from fakedata import ...``).

Each ``make_*`` writes under ``root`` exactly where :mod:`mpqbench.data` (and torchvision) look, and
returns what it wrote so tests can compare loaded items with the source pixels and labels.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian uint32 dims, data."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as IDX, gzip-compressed when ``path`` ends in ``.gz``."""
    data = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_fashion_mnist(
    root: Path, *, n_train: int = 20, n_test: int = 10, layout: str = "torchvision", gz: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST IDX files under ``root/FashionMNIST/raw`` (``layout="torchvision"``) or ``root``
    (``"flat"``, the Debian layout). Returns ``{split: (images [N, 28, 28] uint8, labels [N] uint8)}``."""
    rng = np.random.default_rng(seed)
    where = root / "FashionMNIST" / "raw" if layout == "torchvision" else root
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_stem, label_stem = FASHION_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(where / f"{image_stem}{suffix}", images)
        write_idx(where / f"{label_stem}{suffix}", labels)
        out[split] = (images, labels)
    return out


def make_cifar10(
    root: Path, *, per_batch: int = 6, n_test: int = 8, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 python pickles under ``root/cifar-10-batches-py``: data_batch_1..5, test_batch, batches.meta,
    with the real files' bytes keys (b"data" uint8 [N, 3072] row-major R, G, B planes; b"labels" list).
    Returns ``{split: (images [N, 3, 32, 32] uint8, labels [N] int64)}``."""
    rng = np.random.default_rng(seed)
    where = root / "cifar-10-batches-py"
    where.mkdir(parents=True, exist_ok=True)

    def write(name: str, n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(offset + i) % 10 for i in range(n)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)]}
        (where / name).write_bytes(pickle.dumps(batch, protocol=2))
        return data.reshape(n, 3, 32, 32), np.asarray(labels, dtype=np.int64)

    train = [write(f"data_batch_{i}", per_batch, (i - 1) * per_batch) for i in range(1, 6)]
    test = write("test_batch", n_test, 0)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [b"airplane", b"automobile", b"bird", b"cat",
            b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"], b"num_vis": 3072}
    (where / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": test,
    }


def _write_jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, format="JPEG", quality=95)


def class_colour(label: int) -> tuple[int, int, int]:
    """The solid colour the fake image datasets give class ``label``."""
    return (40 + 50 * (label % 4), 200 - 60 * (label % 3), 30 + 90 * (label % 2))


def make_image_folder(
    root: Path, *, classes: tuple[str, ...] = ("cat", "dog", "fox"), n_train: int = 3, n_val: int = 2,
    size: tuple[int, int] = (40, 30)
) -> Path:
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``: solid-colour JPEGs (colour by class index,
    see :func:`class_colour`), ``size`` = (width, height). Returns ``root``."""
    for split, n in (("train", n_train), ("val", n_val)):
        for label, name in enumerate(classes):
            for i in range(n):
                _write_jpeg(root / split / name / f"{name}_{i}.jpg", class_colour(label), size)
    return root


def make_flowers102(root: Path, *, n_train: int = 4, n_val: int = 2, n_test: int = 5) -> dict[str, np.ndarray]:
    """Flowers-102 under ``root/flowers-102``: jpg/image_00001.jpg…, imagelabels.mat (labels 1..102) and
    setid.mat (1-based trnid/valid/tstid). Returns ``{"labels": 0-based labels by image id - 1, "trnid", ...}``."""
    from scipy.io import savemat

    where = root / "flowers-102"
    n = n_train + n_val + n_test
    labels = (np.arange(n) * 7) % 102 + 1
    for i in range(1, n + 1):
        _write_jpeg(where / "jpg" / f"image_{i:05d}.jpg", class_colour(int(labels[i - 1])), (36, 36))
    ids = np.random.default_rng(0).permutation(np.arange(1, n + 1))
    sets = {"trnid": ids[:n_train], "valid": ids[n_train : n_train + n_val], "tstid": ids[n_train + n_val :]}
    savemat(where / "imagelabels.mat", {"labels": labels.reshape(1, -1)})
    savemat(where / "setid.mat", {k: v.reshape(1, -1) for k, v in sets.items()})
    return {"labels": labels - 1, **sets}


def make_food101(
    root: Path, *, classes: tuple[str, ...] = ("pizza", "apple_pie"), n_train: int = 3, n_test: int = 2
) -> Path:
    """Food-101 under ``root/food-101``: images/<class>/<id>.jpg and meta/{train,test}.json
    ({class: ["class/id", ...]}) plus meta/classes.txt. Returns the dataset folder."""
    where = root / "food-101"
    for split, n in (("train", n_train), ("test", n_test)):
        meta = {}
        for name in classes:
            label = sorted(classes).index(name)
            rels = [f"{name}/{split}{i}" for i in range(n)]
            for rel in rels:
                _write_jpeg(where / "images" / f"{rel}.jpg", class_colour(label), (50, 40))
            meta[name] = rels
        (where / "meta").mkdir(parents=True, exist_ok=True)
        (where / "meta" / f"{split}.json").write_text(json.dumps(meta))
    (where / "meta" / "classes.txt").write_text("\n".join(sorted(classes)) + "\n")
    return where
