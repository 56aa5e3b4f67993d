"""Datasets of the benchmark (proxy and target), read from local files only, and their loaders.

``load_split(name, split, root=..., input_size=...)`` returns a ``torch.utils.data.Dataset`` of
``(image, label)`` with ``image`` a normalised float tensor ``[C, input_size, input_size]`` and
``label`` an ``int``; nothing is downloaded unless ``download=True`` is passed. Where each job lives:

* :mod:`~mpqbench.data.registry` — :class:`DatasetInfo`, the :class:`DatasetSource` base,
  :func:`register_dataset`, data roots, :func:`load_split`, :func:`dataset_info`, :func:`dataset_status`.
* :mod:`~mpqbench.data.formats` — parsers of the on-disk formats (IDX, CIFAR python pickles).
* :mod:`~mpqbench.data.datasets` — :class:`TensorImageDataset` (in memory), :class:`ImageFileDataset`
  (decoded per item), :class:`LabeledSubset`, and the ImageNet-style transforms.
* :mod:`~mpqbench.data.sources_memory` — registered digits, Fashion-MNIST and CIFAR-10.
* :mod:`~mpqbench.data.sources_files` — registered ImageFolder, ImageNet, Flowers-102 and Food-101.
* :mod:`~mpqbench.data.subsets` — seeded class-stratified :func:`subset` and :func:`train_val_split`.
* :mod:`~mpqbench.data.loaders` — :func:`make_loader` and its two seeded, resumable loaders.

Importing this package imports both source modules, so every dataset is registered in :data:`DATASETS`.
"""

from mpqbench.data import sources_files, sources_memory  # noqa: F401  (register the datasets)
from mpqbench.data.datasets import ImageFileDataset, LabeledSubset, TensorImageDataset, imagenet_transform
from mpqbench.data.formats import read_cifar_batch, read_idx
from mpqbench.data.loaders import EpochDataLoader, TensorBatchLoader, make_loader
from mpqbench.data.registry import (
    DATASETS,
    DatasetInfo,
    DatasetSource,
    Split,
    dataset_info,
    dataset_status,
    default_data_root,
    load_split,
    register_dataset,
)
from mpqbench.data.subsets import stratified_indices, subset, train_val_split

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetSource",
    "EpochDataLoader",
    "ImageFileDataset",
    "LabeledSubset",
    "Split",
    "TensorBatchLoader",
    "TensorImageDataset",
    "dataset_info",
    "dataset_status",
    "default_data_root",
    "imagenet_transform",
    "load_split",
    "make_loader",
    "read_cifar_batch",
    "read_idx",
    "register_dataset",
    "stratified_indices",
    "subset",
    "train_val_split",
]
