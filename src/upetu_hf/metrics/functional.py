"""Metrics computed from a confusion matrix (rows = target, columns = prediction).

These pure functions are the single implementation of every metric in :mod:`upetu_hf.metrics`; the
``evaluate`` modules only build a confusion matrix and call them. All results are plain Python ``float``
values (JSON-serialisable with :func:`json.dumps`; note that ``NaN`` is written as the non-standard ``NaN``
token). Because they work on counts accumulated over a whole split, the results are exact, not averages of
per-batch scores.

Conventions for classes that do not occur:

* A class is *present* if it occurs in the targets or in the predictions.
* Segmentation: a class absent from both targets and predictions has IoU / F1 ``NaN`` and is excluded from
  the mean (``nanmean``); a class absent from the targets only has accuracy (recall) ``NaN`` and is
  excluded from ``mean_accuracy``, but its IoU is 0 and it counts in ``mean_iou``. With the default
  ``labels`` this matches scikit-learn's ``average="macro"`` scores, which only consider present classes.
* Classification: the macro scores average over present classes, and a per-class precision/recall with a
  zero denominator is 0 (scikit-learn's ``zero_division=0``), so they equal scikit-learn's
  ``f1_score/precision_score/recall_score(average="macro")``.
* Change detection: precision, recall, F1 and IoU of the change class with a zero denominator (e.g. no
  change in target nor prediction) are ``zero_division`` (default ``0.0``, scikit-learn's convention).
* Cohen's kappa follows :func:`sklearn.metrics.cohen_kappa_score`: it is undefined (``NaN`` by default,
  sklearn's ``replace_undefined_by``) when the expected disagreement is zero, e.g. when target and
  prediction both contain a single class only, or when the matrix is empty.
* Any "overall" accuracy of an empty matrix (nothing counted) is ``NaN``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .confusion import ConfusionMatrix

__all__ = [
    "TASKS",
    "MetricTask",
    "change_detection_metrics",
    "classification_metrics",
    "cohen_kappa",
    "flatten_metrics",
    "metric_task",
    "metrics_from_confusion",
    "normalize_task",
    "segmentation_metrics",
]

NAN = float("nan")


def normalize_task(task: str) -> str:
    """Map a task name or alias (``"semantic-segmentation"``, ``"cd"``, ...) to one of :data:`TASKS`."""
    key = str(task).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in _TASK_ALIASES:
        raise ValueError(
            f"unknown task {task!r}; expected one of {TASKS} (or aliases {sorted(_TASK_ALIASES)})"
        )
    return _TASK_ALIASES[key]


def _as_matrix(cm: ConfusionMatrix | torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Return ``cm`` as a float64 ndarray after checking it is a square, non-negative count matrix."""
    if isinstance(cm, ConfusionMatrix):
        array = cm.matrix.detach().cpu().numpy()
    elif isinstance(cm, torch.Tensor):
        array = cm.detach().cpu().numpy()
    else:
        array = np.asarray(cm)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] < 1:
        raise ValueError(f"confusion matrix must be square (C, C) with C >= 1, got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError("confusion matrix entries must be finite, non-negative counts")
    return array


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class_names for a confusion matrix with {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names


def _divide(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """Element-wise ``num / den`` with ``fill`` where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, fill, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; ``NaN`` (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else NAN


def _per_class(values: np.ndarray, names: list[str]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values, strict=True)}


def cohen_kappa(
    cm: ConfusionMatrix | torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    replace_undefined_by: float = NAN,
) -> float:
    """Cohen's kappa of a confusion matrix, identical to :func:`sklearn.metrics.cohen_kappa_score`.

    ``kappa = (p_o - p_e) / (1 - p_e)``. Undefined -- returned as ``replace_undefined_by`` (``NaN``, as
    sklearn) -- when the matrix is empty or the expected disagreement ``1 - p_e`` is zero (only one class
    occurs in targets and predictions together).
    """
    matrix = _as_matrix(cm)
    total = matrix.sum()
    if total == 0:
        return float(replace_undefined_by)
    expected = np.outer(matrix.sum(axis=1), matrix.sum(axis=0)) / total
    off_diagonal = ~np.eye(matrix.shape[0], dtype=bool)
    expected_disagreement = expected[off_diagonal].sum()
    if expected_disagreement == 0:
        return float(replace_undefined_by)
    return float(1.0 - matrix[off_diagonal].sum() / expected_disagreement)


def classification_metrics(
    cm: ConfusionMatrix | torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scene-classification metrics from a ``(C, C)`` confusion matrix.

    Returns a dict with ``accuracy``, ``balanced_accuracy`` (mean recall over classes present in the
    targets, as ``sklearn.metrics.balanced_accuracy_score``), ``macro_f1``, ``macro_precision``,
    ``macro_recall`` (averaged over classes present in targets or predictions, zero denominators count as
    0, as scikit-learn's ``average="macro"``), ``kappa`` (Cohen's) and the dicts ``per_class_accuracy``
    (recall; ``NaN`` for classes absent from the targets) and ``per_class_f1`` (``NaN`` for classes absent
    from targets and predictions), keyed by ``class_names`` (default ``"0"``, ``"1"``, ...).
    """
    matrix = _as_matrix(cm)
    names = _class_names(class_names, matrix.shape[0])
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    present = (support + predicted) > 0

    recall_or_nan = _divide(tp, support, NAN)
    f1_or_nan = _divide(2 * tp, support + predicted, NAN)
    precision = _divide(tp, predicted, 0.0)
    recall = _divide(tp, support, 0.0)
    return {
        "accuracy": float(_divide(tp.sum(), matrix.sum(), NAN)),
        "balanced_accuracy": _nanmean(recall_or_nan),
        "macro_f1": _nanmean(f1_or_nan),
        "macro_precision": float(precision[present].mean()) if present.any() else NAN,
        "macro_recall": float(recall[present].mean()) if present.any() else NAN,
        "kappa": cohen_kappa(matrix),
        "per_class_accuracy": _per_class(recall_or_nan, names),
        "per_class_f1": _per_class(f1_or_nan, names),
    }


def segmentation_metrics(
    cm: ConfusionMatrix | torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Semantic-segmentation metrics from a ``(C, C)`` pixel confusion matrix.

    Returns a dict with ``overall_accuracy`` (pixel accuracy), ``mean_iou``, ``mean_accuracy`` (mean
    per-class recall), ``mean_f1`` (mean Dice), ``frequency_weighted_iou`` and the dicts
    ``per_class_iou``, ``per_class_accuracy``, ``per_class_f1`` keyed by ``class_names`` (default ``"0"``,
    ``"1"``, ...). A class absent from both targets and predictions has IoU/F1 ``NaN``; a class absent from
    the targets has accuracy ``NaN``. ``NaN`` entries are excluded from the means (``nanmean``).
    """
    matrix = _as_matrix(cm)
    names = _class_names(class_names, matrix.shape[0])
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    total = matrix.sum()

    iou = _divide(tp, support + predicted - tp, NAN)
    accuracy = _divide(tp, support, NAN)
    f1 = _divide(2 * tp, support + predicted, NAN)
    frequency = _divide(support, total, 0.0)
    fw_iou = float(np.sum(frequency[support > 0] * iou[support > 0])) if total > 0 else NAN
    return {
        "overall_accuracy": float(_divide(tp.sum(), total, NAN)),
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "mean_f1": _nanmean(f1),
        "frequency_weighted_iou": fw_iou,
        "per_class_iou": _per_class(iou, names),
        "per_class_accuracy": _per_class(accuracy, names),
        "per_class_f1": _per_class(f1, names),
    }


def change_detection_metrics(
    cm: ConfusionMatrix | torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    zero_division: float = 0.0,
    kappa_undefined: float = NAN,
) -> dict[str, float]:
    """Binary change-detection metrics from a ``(2, 2)`` confusion matrix (class 0 = no change, 1 = change).

    Returns ``precision``, ``recall``, ``f1`` and ``iou`` of the change class, ``overall_accuracy`` and
    Cohen's ``kappa``. A score whose denominator is zero (e.g. precision when nothing is predicted as
    change; all four when neither target nor prediction contains change) is ``zero_division`` (default
    ``0.0``, scikit-learn's ``zero_division=0`` convention). ``kappa`` equals
    ``sklearn.metrics.cohen_kappa_score``; it is ``kappa_undefined`` (default ``NaN``, sklearn's default)
    when undefined, e.g. for all-background target and prediction.
    """
    matrix = _as_matrix(cm)
    if matrix.shape != (2, 2):
        raise ValueError(
            f"change detection expects a 2-class (2, 2) confusion matrix, got shape {matrix.shape}; "
            "use segmentation_metrics for semantic change detection"
        )
    tn, fp, fn, tp = matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]
    total = matrix.sum()
    return {
        "precision": float(_divide(tp, tp + fp, zero_division)),
        "recall": float(_divide(tp, tp + fn, zero_division)),
        "f1": float(_divide(2 * tp, 2 * tp + fp + fn, zero_division)),
        "iou": float(_divide(tp, tp + fp + fn, zero_division)),
        "overall_accuracy": float(_divide(tp + tn, total, NAN)),
        "kappa": cohen_kappa(matrix, replace_undefined_by=kappa_undefined),
    }


def metrics_from_confusion(
    task: str,
    cm: ConfusionMatrix | torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Dispatch to :func:`classification_metrics`, :func:`segmentation_metrics` or
    :func:`change_detection_metrics` by ``task`` (see :func:`normalize_task`). ``class_names`` is not used
    for change detection."""
    return metric_task(task).compute(cm, class_names)


@dataclass(frozen=True)
class MetricTask:
    """How one task is scored: its name (one of :data:`TASKS`) and aliases, the function of a confusion matrix
    and the class names that gives its metrics, whether an example is a label map (else one label), whether the
    task is binary, and the target value ignored by default."""

    name: str
    aliases: tuple[str, ...]
    compute: Callable[[Any, Sequence[str] | None], dict[str, Any]]
    label_maps: bool
    default_ignore_index: int
    binary: bool = False


#: The scored tasks, the one place that tells them apart.
METRIC_TASKS: dict[str, MetricTask] = {
    task.name: task
    for task in (
        MetricTask(
            "classification",
            ("scene_classification", "cls"),
            lambda cm, names: classification_metrics(cm, class_names=names),
            label_maps=False,
            default_ignore_index=-100,  # the HF convention
        ),
        MetricTask(
            "segmentation",
            ("semantic_segmentation", "seg"),
            lambda cm, names: segmentation_metrics(cm, class_names=names),
            label_maps=True,
            default_ignore_index=255,
        ),
        MetricTask(
            "change_detection",
            ("cd",),
            lambda cm, names: change_detection_metrics(cm),
            label_maps=True,
            default_ignore_index=255,
            binary=True,
        ),
    )
}
TASKS: tuple[str, ...] = tuple(METRIC_TASKS)
_TASK_ALIASES = {alias: task.name for task in METRIC_TASKS.values() for alias in (task.name, *task.aliases)}


def metric_task(task: str) -> MetricTask:
    """The :class:`MetricTask` of a task name or alias (see :func:`normalize_task`)."""
    return METRIC_TASKS[normalize_task(task)]


def flatten_metrics(metrics: Mapping[str, Any], sep: str = "/") -> dict[str, float]:
    """Flatten nested dicts (e.g. ``per_class_iou``) into ``{"per_class_iou/road": 0.5, ...}``.

    Handy for loggers and ``transformers.Trainer`` which expect flat ``str -> float`` dicts.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_metrics(value, sep=sep).items():
                flat[f"{key}{sep}{sub_key}"] = sub_value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                flat[f"{key}{sep}{i}"] = float(item)
        else:
            flat[key] = float(value)
    return flat
