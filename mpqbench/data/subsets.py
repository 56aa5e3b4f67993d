"""Seeded, class-stratified subsets and train/validation splits of any dataset with labels.

In-memory datasets stay in memory (:meth:`TensorImageDataset.select`); others become
:class:`LabeledSubset`. Equal seeds give equal indices.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from mpqbench.data.datasets import LabeledSubset, TensorImageDataset, _labels_of
from mpqbench.errors import UserError


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
