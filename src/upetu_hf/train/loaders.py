"""Reproducible, resumable data loading.

Shuffling and augmentation depend only on `(seed, epoch, example index)`: the shuffle order of epoch `e` comes
from a generator seeded with `(seed, e)`, and the augmentation of example `i` in epoch `e` from a generator
seeded with `(seed, e, i)`. So a run resumed in the middle of an epoch (skipping the batches it already saw)
sees exactly the batches an uninterrupted run sees, whatever the number of processes or workers, and no
global random state is consumed by data loading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import ChangeDetectionTransform, ClassificationTransform, SegmentationTransform


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, epoch, index)."""
    return int(
        np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(2, np.uint64)[0] >> 1
    )


class _ExampleSeeded:
    """Mixin for the `upetu_hf.data` transforms: random augmentations of the next example are drawn from a
    generator set by `reseed(seed)` (instead of one generator shared by the whole stream)."""

    def reseed(self, seed: int) -> None:
        generator = self.__dict__.get("example_generator")
        if generator is None:
            generator = self.__dict__["example_generator"] = torch.Generator()
        generator.manual_seed(seed)

    def generator(self) -> torch.Generator:
        generator = self.__dict__.get("example_generator")
        if generator is None:
            raise RuntimeError("Call reseed(seed) before transforming a training example.")
        return generator

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("example_generator", None)
        return state


class SeededClassificationTransform(_ExampleSeeded, ClassificationTransform):
    """`ClassificationTransform` with per-example seeding (see `TransformedDataset`)."""


class SeededSegmentationTransform(_ExampleSeeded, SegmentationTransform):
    """`SegmentationTransform` with per-example seeding (see `TransformedDataset`)."""


class SeededChangeDetectionTransform(_ExampleSeeded, ChangeDetectionTransform):
    """`ChangeDetectionTransform` with per-example seeding (see `TransformedDataset`)."""


SEEDED = {
    ClassificationTransform: SeededClassificationTransform,
    SegmentationTransform: SeededSegmentationTransform,
    ChangeDetectionTransform: SeededChangeDetectionTransform,
}


class TransformedDataset(Dataset):
    """A `datasets.Dataset` seen through a transform, one example at a time, with its row index.

    Images are decoded by the transform (so an unreadable file is named in the error). With `seed` set (training)
    the transform must be one of the `Seeded*Transform` classes; example `i` of epoch `e` is then augmented with
    a generator seeded from `(seed, e, i)`. Items are the transform's output plus `index`.
    """

    def __init__(self, dataset: datasets.Dataset, transform: Callable, seed: int | None = None) -> None:
        for column in getattr(transform, "image_columns", ()):
            feature = dataset.features.get(column)
            if isinstance(feature, datasets.Image) and feature.decode:
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
        if seed is not None and not isinstance(transform, _ExampleSeeded):
            raise TypeError("A seeded TransformedDataset needs a Seeded*Transform.")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if self.seed is not None:
            self.transform.reseed(derive_seed(self.seed, self.epoch, index))
        item = self.transform(self.dataset[index])
        item["index"] = index
        return item


class EpochSampler(Sampler[int]):
    """Indices `0..n-1`, shuffled per epoch from `(seed, epoch)` when `shuffle`, else in order.

    It deliberately has no `generator` attribute: every process computes the same order, and Accelerate's
    batch-sampler sharding hands each process its own batches.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle = int(length), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.length, generator=generator).tolist())


def make_loader(
    dataset: TransformedDataset,
    batch_size: int,
    collate_fn: Callable[[Sequence[dict[str, Any]]], dict[str, Any]],
    seed: int,
    train: bool,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A `DataLoader` over `dataset` with an `EpochSampler`; its own generator keeps the global RNG untouched."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed, shuffle=train),
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(derive_seed(seed, 1)),
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a (prepared) loader, its `EpochSampler` and its `TransformedDataset`."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    dataset = loader.dataset
    if isinstance(dataset, TransformedDataset):
        dataset.set_epoch(epoch)
    sampler = _find_sampler(loader)
    if sampler is not None:
        sampler.set_epoch(epoch)


def _find_sampler(loader: Any) -> EpochSampler | None:
    """The `EpochSampler` under a loader's (possibly sharded / skipping) batch sampler."""
    node = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
    for _ in range(6):
        if isinstance(node, EpochSampler) or node is None:
            return node
        node = getattr(node, "sampler", None) or getattr(node, "batch_sampler", None)
    return None
