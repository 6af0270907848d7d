"""Offline Hugging Face ``evaluate`` integration.

The metric scripts under ``upetu_hf/metrics/modules/<name>/<name>.py`` are ordinary ``evaluate.Metric``
modules that ``evaluate.load`` reads from a local path, so no Hub access is needed (they work with
``HF_HUB_OFFLINE=1``). They only build a :class:`~upetu_hf.metrics.ConfusionMatrix` and call the pure
functions of :mod:`upetu_hf.metrics.functional`, via :func:`compute_from_examples`.

``evaluate`` is imported lazily, so ``import upetu_hf.metrics`` stays light.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .confusion import ConfusionMatrix
from .functional import metric_task, metrics_from_confusion

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import evaluate

__all__ = [
    "CONFIG_KEYS",
    "MODULES_DIR",
    "compute_from_examples",
    "default_ignore_index",
    "evaluate_features",
    "load_metric",
    "metric_module_path",
    "module_compute",
]

MODULES_DIR: Path = Path(__file__).resolve().parent / "modules"
CONFIG_KEYS: tuple[str, ...] = ("num_classes", "ignore_index", "class_names")
TASK_DEFAULT: Any = object()  # sentinel: "use the task's default ignore_index"


def default_ignore_index(task: str) -> int:
    """Default ignored target value: ``-100`` for classification (HF convention), ``255`` for dense tasks."""
    return metric_task(task).default_ignore_index


def metric_module_path(task: str) -> str:
    """Absolute path of the local ``evaluate`` module script of ``task``."""
    name = f"upetu_{metric_task(task).name}"
    path = MODULES_DIR / name / f"{name}.py"
    if not path.is_file():  # pragma: no cover - only if package data was not installed
        raise FileNotFoundError(f"evaluate module script not found at {path}; is package-data installed?")
    return str(path)


def load_metric(task: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """``evaluate.load`` the local UPetu metric of ``task`` (works offline, e.g. ``HF_HUB_OFFLINE=1``).

    ``task`` is ``"classification"``, ``"segmentation"`` or ``"change_detection"`` (or an alias, see
    :func:`~upetu_hf.metrics.normalize_task`). ``kwargs`` go to :func:`evaluate.load`; the module options
    ``num_classes``, ``ignore_index`` and ``class_names`` are among them (they can also be passed to
    ``compute``, which overrides them). Unless given, ``keep_in_memory`` defaults to ``True`` for a single
    process so that nothing is written to the ``evaluate`` cache directory.

    Example:
        >>> metric = load_metric("segmentation", num_classes=6, class_names=names)  # doctest: +SKIP
        >>> metric.add_batch(predictions=pred_masks, references=gt_masks)  # doctest: +SKIP
        >>> metric.compute()["mean_iou"]  # doctest: +SKIP
    """
    import evaluate

    if kwargs.get("num_process", 1) == 1:
        kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_module_path(task), **kwargs)


def evaluate_features(task: str) -> datasets.Features:
    """``datasets.Features`` of a module: integer labels for classification, ``(H, W)`` maps otherwise."""
    import datasets

    if metric_task(task).label_maps:
        feature: Any = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
    else:
        feature = datasets.Value("int64")
    return datasets.Features({"predictions": feature, "references": feature})


def _infer_num_classes(
    refs: Iterable[np.ndarray], preds: Iterable[np.ndarray], ignore_index: int | None
) -> int:
    highest = -1
    for ref, pred in zip(refs, preds, strict=True):
        if ignore_index is not None:
            keep = ref != ignore_index
            ref, pred = ref[keep], pred[keep]
        for array in (ref, pred):
            if array.size:
                highest = max(highest, int(array.max()))
    if highest < 0:
        raise ValueError("cannot infer num_classes from the data (no labels); pass num_classes explicitly")
    return highest + 1


def compute_from_examples(
    task: str,
    predictions: Sequence[Any],
    references: Sequence[Any],
    num_classes: int | None = None,
    ignore_index: Any = TASK_DEFAULT,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build the confusion matrix of a list of examples and return the metrics of ``task``.

    Classification examples are integer labels; segmentation and change-detection examples are label maps
    (any shape, they may differ between examples). ``num_classes`` defaults to ``len(class_names)``, then to
    ``max label + 1`` seen in the data (absent classes do not change the mean scores, see
    :mod:`upetu_hf.metrics.functional`). Change detection always uses 2 classes. ``ignore_index`` (an int
    or ``None``) defaults to :func:`default_ignore_index` of the task.
    """
    spec = metric_task(task)
    if ignore_index is TASK_DEFAULT:
        ignore_index = spec.default_ignore_index
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if spec.label_maps:
        preds = [np.asarray(p) for p in predictions]
        refs = [np.asarray(r) for r in references]
    else:
        preds = [np.asarray(predictions)]
        refs = [np.asarray(references)]

    for i, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        if pred.shape != ref.shape:
            raise ValueError(f"example {i}: prediction shape {pred.shape} != reference shape {ref.shape}")

    if spec.binary:
        if num_classes not in (None, 2):
            raise ValueError(f"change detection is binary (num_classes=2), got num_classes={num_classes}")
        num_classes, class_names = 2, None
    elif num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        else:
            num_classes = _infer_num_classes(refs, preds, ignore_index)

    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for pred, ref in zip(preds, refs, strict=True):
        cm.update(pred, ref)
    return metrics_from_confusion(spec.name, cm, class_names=class_names)


def module_compute(
    task: str,
    predictions: Sequence[Any],
    references: Sequence[Any],
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Implementation of the modules' ``_compute``: ``overrides`` (compute kwargs) beat ``defaults``
    (options given to ``evaluate.load``)."""
    unknown = sorted(set(overrides) - set(CONFIG_KEYS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; allowed: {list(CONFIG_KEYS)}")
    config = {**defaults, **overrides}
    return compute_from_examples(task, predictions, references, **config)
