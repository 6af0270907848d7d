"""Exact, split-level metrics for remote-sensing scene classification, segmentation and change detection.

* :class:`ConfusionMatrix` accumulates an int64 confusion matrix (rows = target, columns = prediction)
  over batches and processes.
* :func:`classification_metrics`, :func:`segmentation_metrics`, :func:`change_detection_metrics` turn a
  confusion matrix into a dict of plain floats (conventions for absent classes in
  :mod:`upetu_hf.metrics.functional`).
* :func:`load_metric` loads the same metrics as offline Hugging Face ``evaluate`` modules.

This package depends only on torch/numpy (and ``evaluate``/``datasets`` lazily, for :func:`load_metric`);
it does not import other ``upetu_hf`` subpackages.
"""

from .confusion import ConfusionMatrix, confusion_matrix
from .functional import (
    TASKS,
    change_detection_metrics,
    classification_metrics,
    cohen_kappa,
    flatten_metrics,
    metrics_from_confusion,
    normalize_task,
    segmentation_metrics,
)
from .hf_evaluate import compute_from_examples, load_metric, metric_module_path

__all__ = [
    "TASKS",
    "ConfusionMatrix",
    "change_detection_metrics",
    "classification_metrics",
    "cohen_kappa",
    "compute_from_examples",
    "confusion_matrix",
    "flatten_metrics",
    "load_metric",
    "metric_module_path",
    "metrics_from_confusion",
    "normalize_task",
    "segmentation_metrics",
]
