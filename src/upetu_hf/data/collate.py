"""Collate functions: stack the tensors produced by the batch transforms into one batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate_fn(examples: Sequence[dict[str, Any]], required: Sequence[str] = ()) -> dict[str, Any]:
    """Stack every tensor key of ``examples``; integers become a tensor; other values stay lists.

    Raises ``ValueError`` when a ``required`` key is missing or tensors differ in shape (e.g. full
    images of different sizes: pass ``crop_size`` or ``resize`` to the transform).
    """
    if not examples:
        raise ValueError("Cannot collate an empty list of examples.")
    missing = [k for k in required if k not in examples[0]]
    if missing:
        raise ValueError(
            f"Examples lack {missing} (keys found: {sorted(examples[0])}); attach the matching transform "
            "with attach_transform(ds, transform) or ds.with_transform(transform)."
        )
    batch: dict[str, Any] = {}
    for key in examples[0]:
        values = [ex[key] for ex in examples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"Cannot stack {key!r}: shapes differ {sorted(shapes)}; give the transform a crop_size "
                    "or resize so that every example has the same size."
                )
            batch[key] = torch.stack(values)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[key] = values
    return batch


def classification_collate_fn(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``pixel_values`` ``B x 3 x H x W`` float, ``labels`` (when present) ``B`` long for classification,
    ``B x H x W`` long for segmentation: one function for both."""
    return collate_fn(examples, ("pixel_values",))


#: Segmentation batches stack the same way as classification batches (``labels`` are ``B x H x W``).
segmentation_collate_fn = classification_collate_fn


def change_detection_collate_fn(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``pixel_values_a``/``pixel_values_b`` ``B x 3 x H x W`` float, ``labels`` ``B x H x W`` long."""
    return collate_fn(examples, ("pixel_values_a", "pixel_values_b"))
