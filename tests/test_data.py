"""mpqbench.data on tiny files in the real on-disk formats, plus digits and the Debian Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fakedata import (
    FASHION_FILES,
    class_colour,
    idx_bytes,
    make_cifar10,
    make_fashion_mnist,
    make_flowers102,
    make_food101,
    make_image_folder,
    write_idx,
)
from mpqbench import data
from mpqbench.data import (
    DATASETS,
    ImageFileDataset,
    LabeledSubset,
    TensorImageDataset,
    dataset_info,
    dataset_status,
    load_split,
    make_loader,
    subset,
    train_val_split,
)
from mpqbench.errors import UserError

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture
def no_debian_fmnist(monkeypatch, tmp_path):
    """Hide the system-wide Fashion-MNIST so only the test's root is searched."""
    monkeypatch.setattr(data.sources_memory, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")


def _tensor_ds(labels, *, size=4, channels=1, flip=True, pad=0) -> TensorImageDataset:
    """In-memory dataset whose image i is filled with i (so positions can be read back from pixels)."""
    labels = torch.as_tensor(labels)
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, channels, size, size).clone()
    return TensorImageDataset(images, labels, mean=[0.0] * channels, std=[1.0] * channels,
                              classes=[str(c) for c in range(int(labels.max()) + 1)], crop_pad_px=pad, flip=flip)


# --- Fashion-MNIST (IDX) -------------------------------------------------------------------------


@pytest.mark.parametrize("layout,gz", [("torchvision", True), ("flat", False)])
def test_fashion_mnist_idx_loads_pixels_labels_and_normalisation(tmp_path, no_debian_fmnist, layout, gz):
    written = make_fashion_mnist(tmp_path, n_train=20, n_test=10, layout=layout, gz=gz)
    for split, n in (("train", 20), ("test", 10)):
        ds = load_split("fashion-mnist", split, root=tmp_path, input_size=28)
        assert isinstance(ds, TensorImageDataset) and len(ds) == n and ds.num_classes == 10
        images, labels = written[split]
        for i in (0, n - 1):
            x, y = ds[i]
            assert x.shape == (1, 28, 28) and x.dtype == torch.float32
            assert y == int(labels[i])
            expected = (torch.from_numpy(images[i]).float() / 255 - FMNIST_MEAN) / FMNIST_STD
            torch.testing.assert_close(x[0], expected)


def test_fashion_mnist_resized_once_bilinear(tmp_path, no_debian_fmnist):
    written = make_fashion_mnist(tmp_path, n_train=12, n_test=4)
    ds = load_split("fashion-mnist", "train", root=tmp_path, input_size=32)
    assert ds.images.shape == (12, 1, 32, 32) and ds.images.dtype == torch.uint8
    src = torch.from_numpy(written["train"][0][3]).float().view(1, 1, 28, 28)
    ref = F.interpolate(src, size=(32, 32), mode="bilinear", align_corners=False).round() / 255
    x, _ = ds[3]
    torch.testing.assert_close(x, ((ref[0] - FMNIST_MEAN) / FMNIST_STD), atol=1e-5, rtol=0)
    small = load_split("fashion-mnist", "test", root=tmp_path, input_size=16)
    assert small[0][0].shape == (1, 16, 16)


def _fmnist_train_images(root: Path) -> Path:
    return root / "FashionMNIST" / "raw" / f"{FASHION_FILES['train'][0]}.gz"


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda b: gzip.compress(gzip.decompress(b)[:-100]), id="truncated-data"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-gzip"),
        pytest.param(lambda b: gzip.compress(b"\x08\x03" + gzip.decompress(b)[2:]), id="bad-magic"),
        pytest.param(lambda b: gzip.compress(gzip.decompress(b)[:2] + b"\x0d" + gzip.decompress(b)[3:]), id="float-type"),
        pytest.param(lambda b: b"not gzip at all", id="not-gzip"),
    ],
)
def test_malformed_idx_raises_user_error_naming_the_file(tmp_path, no_debian_fmnist, corrupt):
    make_fashion_mnist(tmp_path)
    path = _fmnist_train_images(tmp_path)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(UserError, match="not a valid IDX file") as err:
        load_split("fashion-mnist", "train", root=tmp_path, input_size=28)
    assert str(path) in str(err.value)


def test_idx_label_count_mismatch_is_user_error(tmp_path, no_debian_fmnist):
    make_fashion_mnist(tmp_path, n_train=20)
    write_idx(tmp_path / "FashionMNIST" / "raw" / f"{FASHION_FILES['train'][1]}.gz", np.zeros(19, np.uint8))
    with pytest.raises(UserError, match="19 labels for 20 images"):
        load_split("fashion-mnist", "train", root=tmp_path, input_size=28)


def test_read_idx_wrong_ndim(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros((2, 3), np.uint8)))
    with pytest.raises(UserError, match="2 dimensions, expected 3"):
        data.read_idx(path, ndim=3)
    assert data.read_idx(path, ndim=2).shape == (2, 3)


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed (apt-get install -y dataset-fashion-mnist)")
def test_real_debian_fashion_mnist(tmp_path):
    train = load_split("fashion-mnist", "train", root=tmp_path, input_size=28)  # empty root: Debian files used
    test = load_split("fashion-mnist", "test", root=tmp_path, input_size=28)
    assert (len(train), len(test)) == (60000, 10000)
    assert dataset_info("fashion-mnist").num_classes == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    x = train.batch(torch.arange(0, 60000, 7))[0]
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01  # normalisation constants fit
    status = {row["name"]: row for row in dataset_status(tmp_path)}
    assert status["fashion-mnist"]["present"] and status["fashion-mnist"]["where"] == str(DEBIAN)


# --- CIFAR-10 (python pickles) -------------------------------------------------------------------


def test_cifar10_pickles_load_with_channel_normalisation(tmp_path):
    written = make_cifar10(tmp_path, per_batch=6, n_test=8)
    train = load_split("cifar10", "train", root=tmp_path, input_size=32)
    test = load_split("cifar10", "test", root=tmp_path, input_size=32)
    assert (len(train), len(test)) == (30, 8) and train.num_classes == 10
    for ds, split in ((train, "train"), (test, "test")):
        images, labels = written[split]
        for i in (0, 7, len(ds) - 1):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and y == labels[i]
            torch.testing.assert_close(x, (torch.from_numpy(images[i]).float() / 255 - CIFAR_MEAN) / CIFAR_STD)
    assert load_split("cifar10", "test", root=tmp_path, input_size=24)[0][0].shape == (3, 24, 24)


def test_cifar10_malformed_pickles(tmp_path):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(UserError, match="data_batch_3"):
        load_split("cifar10", "train", root=tmp_path, input_size=32)
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="1 labels"):
        load_split("cifar10", "train", root=tmp_path, input_size=32)
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(UserError, match="expected uint8"):
        load_split("cifar10", "train", root=tmp_path, input_size=32)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/mpqbench-test-should-not-exist"),))


def test_cifar10_pickle_with_foreign_objects_is_refused(tmp_path):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(UserError, match="not a CIFAR python pickle"):
        load_split("cifar10", "test", root=tmp_path, input_size=32)
    assert not Path("/tmp/mpqbench-test-should-not-exist").exists()


# --- Image files ---------------------------------------------------------------------------------


def _solid(label: int) -> torch.Tensor:
    return (torch.tensor(class_colour(label), dtype=torch.float32).view(3, 1, 1) / 255 - IMAGENET_MEAN) / IMAGENET_STD


def test_imagefolder_jpegs_train_and_val(tmp_path):
    make_image_folder(tmp_path, classes=("cat", "dog", "fox"), n_train=3, n_val=2, size=(40, 30))
    train = load_split("imagefolder", "train", root=tmp_path, input_size=24)
    test = load_split("imagefolder", "test", root=tmp_path, input_size=24)
    assert isinstance(test, ImageFileDataset) and (len(train), len(test)) == (9, 6)
    assert test.classes == ["cat", "dog", "fox"] and test.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert dataset_info("imagefolder", tmp_path).num_classes == 3
    with pytest.raises(UserError, match="ImageFolder data not found.*DIR/train/<class>"):
        dataset_info("imagefolder", tmp_path / "train")  # no train/ and val/ below it: no class count to give
    for ds in (train, test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 24, 24) and y == ds.targets[i]
            # A solid-colour JPEG stays that colour through any crop/resize (JPEG error is a few levels).
            torch.testing.assert_close(x, _solid(y).expand(3, 24, 24), atol=0.08, rtol=0)


def test_imagefolder_test_transform_is_resize_then_center_crop(tmp_path):
    from PIL import Image

    root = make_image_folder(tmp_path, classes=("a",), n_train=1, n_val=1)
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, 64:] = 255  # left half black, right half white
    Image.fromarray(img).save(root / "val" / "a" / "a_0.jpg", format="PNG")  # PIL sniffs the format
    x, _ = load_split("imagefolder", "test", root=root, input_size=28)[0]
    # Resize(32) → 64×32, CenterCrop(28) keeps columns 18..45 of 64: half black, half white.
    white = (x[0] > 0).float().mean().item()
    assert x.shape == (3, 28, 28) and 0.4 < white < 0.6


def test_imagefolder_class_mismatch_and_bad_image(tmp_path):
    root = make_image_folder(tmp_path, classes=("a", "b"))
    (root / "val" / "c").mkdir()
    (root / "val" / "c" / "x.jpg").write_bytes((root / "val" / "a" / "a_0.jpg").read_bytes())
    with pytest.raises(UserError, match="different class folders"):
        load_split("imagefolder", "test", root=root, input_size=16)
    (root / "train" / "a" / "a_0.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = load_split("imagefolder", "train", root=root, input_size=16)
    with pytest.raises(UserError, match="cannot read image .*a_0.jpg"):
        ds[0]


def test_imagenet_layout_under_root_or_root_imagenet(tmp_path):
    make_image_folder(tmp_path / "imagenet", classes=("n01", "n02"), n_train=2, n_val=1)
    ds = load_split("imagenet", "test", root=tmp_path, input_size=32)
    assert len(ds) == 2 and ds[1][0].shape == (3, 32, 32) and ds[1][1] == 1
    assert dataset_info("imagenet").num_classes == 1000
    assert dataset_info("imagenet", tmp_path).num_classes == 2


def test_flowers102_train_is_trn_plus_val(tmp_path):
    meta = make_flowers102(tmp_path, n_train=4, n_val=2, n_test=5)
    train = load_split("flowers102", "train", root=tmp_path, input_size=32)
    test = load_split("flowers102", "test", root=tmp_path, input_size=32)
    assert (len(train), len(test)) == (6, 5) and train.num_classes == 102
    ids = np.concatenate([meta["trnid"], meta["valid"]])
    assert train.targets.tolist() == meta["labels"][ids - 1].tolist()
    x, y = test[0]
    assert x.shape == (3, 32, 32) and y == meta["labels"][meta["tstid"][0] - 1]
    torch.testing.assert_close(x, _solid(y + 1).expand(3, 32, 32), atol=0.08, rtol=0)


def test_food101_meta_json(tmp_path):
    make_food101(tmp_path, classes=("pizza", "apple_pie"), n_train=3, n_test=2)
    train = load_split("food101", "train", root=tmp_path, input_size=16)
    test = load_split("food101", "test", root=tmp_path, input_size=16)
    assert (len(train), len(test)) == (6, 4) and train.classes == ["apple_pie", "pizza"]
    assert sorted(test.targets.tolist()) == [0, 0, 1, 1]
    x, y = test[3]
    torch.testing.assert_close(x, _solid(y).expand(3, 16, 16), atol=0.08, rtol=0)
    (tmp_path / "food-101" / "meta" / "test.json").write_text("{broken")
    with pytest.raises(UserError, match="test.json is malformed"):
        load_split("food101", "test", root=tmp_path, input_size=16)


# --- digits ----------------------------------------------------------------------------------------


def test_digits_split_sizes_stratified_and_fixed():
    train = load_split("digits", "train", input_size=8)
    test = load_split("digits", "test", input_size=8)
    assert (len(train), len(test)) == (1438, 359)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37  # 20% of each class (174..183 images)
    # The two splits partition load_digits(): same multiset of (pixels, label) rows.
    from sklearn.datasets import load_digits

    def rows(images, labels):
        r = np.concatenate([(images.reshape(len(images), -1) * 16).round(), labels.reshape(-1, 1)], axis=1)
        return r[np.lexsort(r.T[::-1])]

    bunch = load_digits()
    split_rows = rows(torch.cat([train.images, test.images]).numpy(), torch.cat([train.labels, test.labels]).numpy())
    assert np.array_equal(split_rows, rows(bunch.data / 16, bunch.target))
    again = load_split("digits", "test", input_size=8)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    x, _ = test[0]
    torch.testing.assert_close(x, (test.images[0] - 0.3053) / 0.3760)
    assert test.images.max() <= 1.0 and test.images.min() >= 0.0
    # Pinned: the split must never change between versions (it decides every digits result).
    digest = hashlib.sha256(test.labels.numpy().tobytes() + (test.images * 16).round().byte().numpy().tobytes())
    assert digest.hexdigest()[:16] == DIGITS_TEST_DIGEST


DIGITS_TEST_DIGEST = "cae6f0d39107994f"


def test_digits_resized_bilinear():
    test8 = load_split("digits", "test", input_size=8)
    test32 = load_split("digits", "test", input_size=32)
    assert test32.images.shape == (359, 1, 32, 32) and test32.images.dtype == torch.float32
    ref = F.interpolate(test8.images[:5], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(test32.images[:5], ref)
    assert test32.crop_pad_px == 4 and not test32.flip


# --- missing data, registry, status ------------------------------------------------------------------


def test_missing_data_messages_name_the_command(tmp_path, no_debian_fmnist):
    with pytest.raises(UserError) as err:
        load_split("fashion-mnist", "train", root=tmp_path, input_size=28)
    msg = str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg and str(tmp_path) in msg and "\n" not in msg
    assert f"mpqbench download --dataset fashion-mnist --data-root {tmp_path}" in msg
    with pytest.raises(UserError, match=r"mpqbench download --dataset cifar10 --data-root"):
        load_split("cifar10", "train", root=tmp_path, input_size=32)
    with pytest.raises(UserError, match=r"torchvision\.datasets\.Flowers102\("):
        load_split("flowers102", "train", root=tmp_path, input_size=32)
    with pytest.raises(UserError, match=r"torchvision\.datasets\.Food101\("):
        load_split("food101", "train", root=tmp_path, input_size=32)
    with pytest.raises(UserError, match="DIR/train/<class>"):
        load_split("imagefolder", "train", root=tmp_path, input_size=32)
    with pytest.raises(UserError, match="image-net.org"):
        load_split("imagenet", "train", root=tmp_path, input_size=32)


def test_unknown_names_and_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*cifar10"):
        load_split("mnist", "train", input_size=28)
    with pytest.raises(UserError, match="unknown split"):
        load_split("digits", "val", input_size=8)
    with pytest.raises(UserError, match="input size"):
        load_split("digits", "train", input_size=0)


def test_download_only_when_asked(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_cifar10(root, download=False, **kwargs):
        calls.append(download)
        make_cifar10(Path(root), per_batch=2, n_test=3)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    with pytest.raises(UserError):
        load_split("cifar10", "test", root=tmp_path, input_size=32)
    assert calls == []
    assert len(load_split("cifar10", "test", root=tmp_path, input_size=32, download=True)) == 3
    assert calls == [True]


def test_failed_download_is_user_error(tmp_path, monkeypatch):
    import torchvision

    def offline(root, download=False, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    monkeypatch.setattr(data.sources_memory, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "none")
    with pytest.raises(UserError, match="downloading Fashion-MNIST .* failed .*Network is unreachable"):
        load_split("fashion-mnist", "train", root=tmp_path, input_size=28, download=True)


def test_dataset_status_and_info(tmp_path, no_debian_fmnist):
    make_cifar10(tmp_path)
    rows = {row["name"]: row for row in dataset_status(tmp_path)}
    assert set(rows) == set(DATASETS.names()) >= {"digits", "fashion-mnist", "cifar10", "flowers102", "food101",
                                                   "imagefolder", "imagenet"}
    assert rows["cifar10"]["present"] and rows["cifar10"]["where"] == str(tmp_path / "cifar-10-batches-py")
    assert rows["digits"]["present"]
    assert not rows["fashion-mnist"]["present"] and rows["fashion-mnist"]["where"] is None
    assert "apt-get install -y dataset-fashion-mnist" in rows["fashion-mnist"]["how_to_get"]
    expected = {"digits": (10, 1), "fashion-mnist": (10, 1), "cifar10": (10, 3), "flowers102": (102, 3),
                "food101": (101, 3), "imagenet": (1000, 3)}
    for name, (classes, channels) in expected.items():
        info = dataset_info(name)
        assert (info.num_classes, info.in_channels) == (classes, channels)
    assert dataset_info("cifar10").native_size == 32


# --- subsets ---------------------------------------------------------------------------------------------


def test_subset_by_count_and_fraction_is_seeded_and_stratified():
    ds = _tensor_ds([0] * 60 + [1] * 30 + [2] * 10)
    a = subset(ds, count=10, seed=1)
    assert isinstance(a, TensorImageDataset) and len(a) == 10
    assert torch.bincount(a.labels).tolist() == [6, 3, 1]
    # Items really are the chosen ones: pixel value = original position.
    assert a.images[:, 0, 0, 0].long().tolist() == a.indices.tolist()
    assert torch.equal(ds.labels[torch.as_tensor(a.indices)], a.labels)
    assert np.array_equal(subset(ds, count=10, seed=1).indices, a.indices)
    assert not np.array_equal(subset(ds, count=10, seed=2).indices, a.indices)
    f = subset(ds, fraction=0.2, seed=1)
    assert len(f) == 20 and torch.bincount(f.labels).tolist() == [12, 6, 2]
    assert np.array_equal(subset(ds, fraction=0.2, seed=1).indices, f.indices)
    assert not np.array_equal(subset(ds, fraction=0.2, seed=3).indices, f.indices)
    with pytest.raises(UserError, match="subset of 101"):
        subset(ds, count=101, seed=0)
    with pytest.raises(UserError, match="fraction"):
        subset(ds, fraction=1.5, seed=0)


def test_subset_of_file_dataset_keeps_labels_without_decoding(tmp_path):
    labels = [0] * 8 + [1] * 4
    ds = ImageFileDataset([str(tmp_path / f"missing{i}.jpg") for i in range(12)], labels, classes=["a", "b"],
                          transform=lambda im: im)
    s = subset(ds, count=6, seed=0)
    assert isinstance(s, LabeledSubset) and s.num_classes == 2
    assert sorted(s.targets.tolist()) == [0, 0, 0, 0, 1, 1]
    nested = subset(s, count=3, seed=0)
    assert sorted(nested.targets.tolist()) == [0, 0, 1]


def test_train_val_split_disjoint_complete_stratified():
    ds = _tensor_ds([0] * 50 + [1] * 30 + [2] * 20)
    train, val = train_val_split(ds, 0.1, seed=0)
    assert (len(train), len(val)) == (90, 10)
    assert torch.bincount(val.labels).tolist() == [5, 3, 2]
    assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(100))
    assert np.array_equal(train_val_split(ds, 0.1, seed=0)[1].indices, val.indices)
    with pytest.raises(UserError):
        train_val_split(ds, 0.0, seed=0)


# --- loaders ---------------------------------------------------------------------------------------------


def _collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_tensor_loader_is_seeded_and_resumable(tmp_path, no_debian_fmnist):
    make_fashion_mnist(tmp_path, n_train=50)
    ds = load_split("fashion-mnist", "train", root=tmp_path, input_size=32)

    def loader(seed):
        return make_loader(ds, batch_size=16, shuffle=True, seed=seed, augment=True)

    first = loader(0)
    assert len(first) == 4
    epoch0, epoch1 = _collect(first), _collect(first)
    again = loader(0)
    for (x, y), (x2, y2) in zip(epoch0, _collect(again)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(epoch0[0][0], epoch1[0][0])  # a new epoch reshuffles
    assert not torch.equal(epoch0[0][1], _collect(loader(1))[0][1])
    resumed = loader(0)
    resumed.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch1, _collect(resumed)))
    assert [len(y) for _, y in epoch0] == [16, 16, 16, 2]
    assert len(make_loader(ds, batch_size=16, shuffle=True, seed=0, drop_last=True)) == 3
    plain = _collect(make_loader(ds, batch_size=50, shuffle=False, seed=0))
    assert torch.equal(plain[0][1], ds.labels) and torch.equal(plain[0][0][7], ds[7][0])


def test_augment_is_padded_crop_plus_flip():
    n, size, pad = 64, 6, 2
    images = torch.rand(n, 2, size, size)
    ds = TensorImageDataset(images, torch.zeros(n, dtype=torch.long), mean=[0, 0], std=[1, 1], classes=["x"],
                            crop_pad_px=pad, flip=True)
    x, _ = next(iter(make_loader(ds, batch_size=n, shuffle=False, seed=0, augment=True)))
    padded = F.pad(images, (pad,) * 4)
    flipped = 0
    for i in range(n):
        windows = [padded[i, :, dy : dy + size, dx : dx + size] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        plain_hit = any(torch.equal(x[i], w) for w in windows)
        flip_hit = any(torch.equal(x[i], w.flip(-1)) for w in windows)
        assert plain_hit or flip_hit, f"item {i} is not a padded crop"
        flipped += flip_hit and not plain_hit
    assert 10 < flipped < 54
    no_flip = TensorImageDataset(images, ds.labels, mean=[0, 0], std=[1, 1], classes=["x"], crop_pad_px=0, flip=False)
    x, _ = next(iter(make_loader(no_flip, batch_size=n, shuffle=False, seed=0, augment=True)))
    assert torch.equal(x, images)  # digits-like: no pad, no flip → unchanged


def test_file_loader_same_seed_same_batches(tmp_path):
    make_image_folder(tmp_path, classes=("a", "b", "c"), n_train=4, n_val=1)
    ds = load_split("imagefolder", "test", root=tmp_path, input_size=16)
    train = load_split("imagefolder", "train", root=tmp_path, input_size=16)
    orders = [[y.tolist() for _, y in make_loader(train, batch_size=5, shuffle=True, seed=s)] for s in (0, 0, 1)]
    assert orders[0] == orders[1] and orders[0] != orders[2]
    assert sum(len(o) for o in orders[0]) == 12
    xs = [x for x, _ in make_loader(ds, batch_size=3, shuffle=False, seed=0)]
    assert len(xs) == 1 and xs[0].shape == (3, 3, 16, 16)


def test_file_loader_workers_seed_random_transforms(tmp_path):
    make_image_folder(tmp_path, classes=("a", "b"), n_train=3, n_val=1, size=(60, 40))
    from PIL import Image

    # Non-uniform images, so different random crops give different tensors.
    for path in (tmp_path / "train").rglob("*.jpg"):
        Image.fromarray(np.random.default_rng(len(path.name)).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    train = load_split("imagefolder", "train", root=tmp_path, input_size=16)

    def epoch(loader):
        return torch.cat([x for x, _ in loader])

    loader = make_loader(train, batch_size=3, shuffle=True, seed=0, num_workers=2)
    a, a_next = epoch(loader), epoch(loader)
    loader.set_epoch(0)  # resuming replays epoch 0's crops, drawn in the worker processes
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, epoch(loader)) and not torch.equal(a, a_next)
    assert not torch.equal(a, epoch(make_loader(train, batch_size=3, shuffle=True, seed=1, num_workers=2)))
