"""Seeded, stratified train/test and train/validation splits (e.g. "UCM-55" = 50 % per class)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable

import numpy as np
from datasets import Dataset, DatasetDict

from .classification import require_column


def _class_labels(ds: Dataset, label_column: str) -> list[Hashable]:
    require_column(ds, label_column)
    # select the label column only, without any user transform, so no image is decoded
    return list(ds.select_columns([label_column]).with_format(None)[label_column])


def stratified_indices(labels: list[Hashable], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split positions ``0..len(labels)-1`` per class: ``round(n_c * fraction)`` of each class go first.

    Deterministic for a given ``seed`` (a local ``numpy`` generator; no global RNG is touched). Each
    part holds at least one example of every class. Both index lists are returned sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction}.")
    by_class: dict[Hashable, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    if len(by_class) < 2:
        raise ValueError(
            f"A stratified split needs at least 2 classes; found {len(by_class)} ({list(by_class)})."
        )
    rng = np.random.default_rng(seed)
    first: list[int] = []
    second: list[int] = []
    try:
        order = sorted(by_class)
    except TypeError:  # mixed label types: any fixed order will do
        order = sorted(by_class, key=repr)
    for label in order:
        idx = np.asarray(by_class[label])
        if len(idx) < 2:
            raise ValueError(f"Class {label!r} has {len(idx)} example; a stratified split needs at least 2.")
        n_first = min(max(int(np.floor(len(idx) * fraction + 0.5)), 1), len(idx) - 1)
        perm = rng.permutation(idx)
        first.extend(perm[:n_first].tolist())
        second.extend(perm[n_first:].tolist())
    return sorted(first), sorted(second)


def stratified_split(
    ds: Dataset, train_fraction: float, seed: int, label_column: str = "label"
) -> DatasetDict:
    """Return ``DatasetDict(train=..., test=...)`` with ``train_fraction`` of every class in ``train``.

    Example: UCM-55 is ``stratified_split(ds, 0.5, seed)``, AID-28 ``stratified_split(ds, 0.2, seed)``.
    The same ``seed`` always gives the same split; rows keep their original order within each part.
    """
    train, test = stratified_indices(_class_labels(ds, label_column), train_fraction, seed)
    return DatasetDict(train=ds.select(train), test=ds.select(test))


def add_validation_split(
    splits: DatasetDict,
    validation_fraction: float,
    seed: int,
    label_column: str = "label",
    source: str = "train",
) -> DatasetDict:
    """Carve a stratified ``validation`` split out of ``splits[source]`` (default ``train``).

    Returns a new ``DatasetDict`` where ``source`` keeps ``1 - validation_fraction`` of each class,
    ``validation`` holds the rest, and every other split is unchanged.
    """
    if source not in splits:
        raise ValueError(f"No split {source!r} to carve a validation split from; splits: {list(splits)}.")
    if "validation" in splits:
        raise ValueError("The DatasetDict already has a 'validation' split.")
    ds = splits[source]
    val, keep = stratified_indices(_class_labels(ds, label_column), validation_fraction, seed)
    out = DatasetDict({k: v for k, v in splits.items() if k != source})
    out[source] = ds.select(keep)
    out["validation"] = ds.select(val)
    return DatasetDict({k: out[k] for k in [source, "validation", *[k for k in splits if k != source]]})
