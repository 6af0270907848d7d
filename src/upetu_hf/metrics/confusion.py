"""Exact, mergeable confusion-matrix accumulation (torch, int64).

Convention used throughout :mod:`upetu_hf.metrics`: ``matrix[t, p]`` counts the samples (or pixels) whose
*target* is class ``t`` and whose *prediction* is class ``p`` -- rows are targets, columns predictions, the
same layout as :func:`sklearn.metrics.confusion_matrix`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["ConfusionMatrix", "confusion_matrix"]

_MAX_REPORTED_VALUES = 10


def _to_index_tensor(values: Any, name: str) -> torch.Tensor:
    """Convert ``values`` (tensor, ndarray, nested list, scalar) to an int64 tensor of class indices."""
    if isinstance(values, torch.Tensor):
        tensor = values
    else:
        array = np.asarray(values)
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype == object:
            raise TypeError(f"{name} must be a numeric array of class indices, got an object array")
        if array.dtype.kind in "fc":
            raise TypeError(
                f"{name} must contain integer class indices, got dtype {array.dtype}; "
                "for logits or probabilities take the argmax over the class dimension first"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array.astype(np.int64, copy=False)))
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(
            f"{name} must contain integer class indices, got dtype {tensor.dtype}; "
            "for logits or probabilities take the argmax over the class dimension first"
        )
    return tensor.to(torch.int64)


def _format_bad_values(values: torch.Tensor) -> str:
    unique = torch.unique(values).tolist()
    shown = ", ".join(str(v) for v in unique[:_MAX_REPORTED_VALUES])
    if len(unique) > _MAX_REPORTED_VALUES:
        shown += f", ... ({len(unique)} distinct values)"
    return f"[{shown}]"


def _check_ignore_index(ignore_index: int | None, num_classes: int) -> None:
    if ignore_index is None:
        return
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class index for num_classes={num_classes}; "
            f"use ignore_index=None or a value outside 0..{num_classes - 1} (e.g. -100)"
        )


def confusion_matrix(
    preds: Any,
    targets: Any,
    num_classes: int,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Return the ``(num_classes, num_classes)`` int64 confusion matrix of one batch.

    ``preds`` and ``targets`` hold class indices and must have the same shape (any shape: ``(N,)`` labels,
    ``(N, H, W)`` masks, ...). Positions whose target equals ``ignore_index`` are skipped. Any other target
    or prediction outside ``[0, num_classes)`` raises :class:`ValueError`. The result lives on the device of
    ``targets``. ``ignore_index`` must not be a valid class index (``0..num_classes-1``).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    _check_ignore_index(ignore_index, num_classes)
    preds_t = _to_index_tensor(preds, "preds")
    targets_t = _to_index_tensor(targets, "targets")
    if preds_t.shape != targets_t.shape:
        raise ValueError(
            f"preds and targets must have the same shape, got {tuple(preds_t.shape)} and "
            f"{tuple(targets_t.shape)}; for logits take the argmax over the class dimension first"
        )
    targets_t = targets_t.reshape(-1)
    preds_t = preds_t.reshape(-1).to(targets_t.device)
    if ignore_index is not None:
        keep = targets_t != ignore_index
        targets_t = targets_t[keep]
        preds_t = preds_t[keep]

    bad = (targets_t < 0) | (targets_t >= num_classes)
    if bool(bad.any()):
        ignore_msg = (
            f"; the only value allowed outside it is ignore_index={ignore_index}"
            if ignore_index is not None
            else " (ignore_index is None, so no value is ignored)"
        )
        raise ValueError(
            f"targets contain invalid class values {_format_bad_values(targets_t[bad])}: allowed class "
            f"values are 0..{num_classes - 1} (num_classes={num_classes}){ignore_msg}"
        )
    bad = (preds_t < 0) | (preds_t >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"preds contain invalid class values {_format_bad_values(preds_t[bad])}: allowed class values "
            f"are 0..{num_classes - 1} (num_classes={num_classes}); pass class indices, e.g. "
            "logits.argmax(dim=1)"
        )
    counts = torch.bincount(targets_t * num_classes + preds_t, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """Accumulates an exact int64 confusion matrix (rows = target, columns = prediction) over batches.

    Accumulating counts (rather than averaging per-batch scores) makes every metric derived from it exact
    over the whole split. Matrices from several processes can be summed with :meth:`merge`, ``+``/``+=``,
    ``sum([...])`` or :meth:`all_reduce`.

    Args:
        num_classes: number of classes ``C``; valid class values are ``0..C-1``.
        ignore_index: target value to skip (e.g. unlabeled pixels); ``None`` disables ignoring. It must lie
            outside ``0..num_classes-1`` (use e.g. ``-100`` when ``num_classes > 255``).
        device: device the accumulated matrix lives on (default CPU). Batches may live on any device.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3)
        >>> cm.update(logits.argmax(dim=1), masks)  # doctest: +SKIP
        >>> segmentation_metrics(cm)  # doctest: +SKIP
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        _check_ignore_index(ignore_index, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    @classmethod
    def from_matrix(cls, matrix: Any, ignore_index: int | None = 255) -> ConfusionMatrix:
        """Wrap an existing square matrix of counts (rows = target, columns = prediction)."""
        tensor = _to_index_tensor(matrix, "matrix")
        if tensor.ndim != 2 or tensor.shape[0] != tensor.shape[1] or tensor.shape[0] < 1:
            raise ValueError(f"matrix must be square (C, C), got shape {tuple(tensor.shape)}")
        if bool((tensor < 0).any()):
            raise ValueError("matrix counts must be non-negative")
        cm = cls(int(tensor.shape[0]), ignore_index=ignore_index, device=tensor.device)
        cm.matrix.copy_(tensor)
        return cm

    @property
    def device(self) -> torch.device:
        """Device of the accumulated matrix."""
        return self.matrix.device

    @property
    def total(self) -> int:
        """Number of samples/pixels counted so far (ignored positions excluded)."""
        return int(self.matrix.sum())

    def update(self, preds: Any, targets: Any) -> ConfusionMatrix:
        """Add one batch of class-index ``preds`` and ``targets`` (same shape, any shape); returns ``self``."""
        batch = confusion_matrix(preds, targets, self.num_classes, self.ignore_index)
        self.matrix += batch.to(self.matrix.device)
        return self

    def compute(self) -> torch.Tensor:
        """Return a copy of the accumulated ``(C, C)`` int64 matrix."""
        return self.matrix.clone()

    def reset(self) -> None:
        """Zero the accumulated counts."""
        self.matrix.zero_()

    def to(self, device: torch.device | str) -> ConfusionMatrix:
        """Move the accumulated matrix to ``device`` (in place); returns ``self``."""
        self.matrix = self.matrix.to(device)
        return self

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge confusion matrices with {self.num_classes} and {other.num_classes} classes"
            )
        if other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge confusion matrices with ignore_index={self.ignore_index} and "
                f"ignore_index={other.ignore_index}"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of ``other`` into ``self`` (in place); returns ``self``."""
        self._check_compatible(other)
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def copy(self) -> ConfusionMatrix:
        """Return an independent copy."""
        new = ConfusionMatrix(self.num_classes, ignore_index=self.ignore_index, device=self.matrix.device)
        new.matrix.copy_(self.matrix)
        return new

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return self.copy().merge(other)

    def __radd__(self, other: Any) -> ConfusionMatrix:
        # Makes ``sum(list_of_matrices)`` work (it starts from the int 0).
        if isinstance(other, int) and other == 0:
            return self.copy()
        return NotImplemented

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return self.merge(other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return (
            self.num_classes == other.num_classes
            and self.ignore_index == other.ignore_index
            and torch.equal(self.matrix.cpu(), other.matrix.cpu())
        )

    __hash__ = None  # mutable

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the matrix over all processes of ``torch.distributed`` (in place); returns ``self``.

        A no-op when ``torch.distributed`` is unavailable or not initialised. With the NCCL backend the
        matrix must be on the process's CUDA device (see :meth:`to`).
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM, group=group)
        return self

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"total={self.total}, device={self.matrix.device})"
        )
