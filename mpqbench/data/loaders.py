"""Seeded, resumable batch loaders: :func:`make_loader` picks one for a dataset.

* :class:`TensorBatchLoader` — for a :class:`~mpqbench.data.datasets.TensorImageDataset`: slices whole
  batches from its tensors and augments them batch-wise.
* :class:`EpochDataLoader` — a ``DataLoader`` for file-backed datasets, whose augmentation is the
  split's transform.

Both shard over ``DistributedSampler`` and advance an epoch per ``iter()`` (``set_epoch`` to resume),
so order and augmentation are a pure function of ``(seed, epoch, rank)``.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mpqbench.data.datasets import TensorImageDataset
from mpqbench.errors import UserError


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
