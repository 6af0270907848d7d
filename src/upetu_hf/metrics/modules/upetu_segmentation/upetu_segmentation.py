"""UPetu semantic-segmentation metric for Hugging Face ``evaluate`` (local, offline module).

Thin wrapper: builds a pixel confusion matrix and calls ``upetu_hf.metrics.segmentation_metrics``.
Load it with ``upetu_hf.metrics.load_metric("segmentation", num_classes=...)``.
"""

import evaluate

from upetu_hf.metrics.hf_evaluate import default_ignore_index, evaluate_features, module_compute

_TASK = "segmentation"
_IGNORE_INDEX = default_ignore_index(_TASK)

_DESCRIPTION = """
Semantic-segmentation metrics computed exactly from the pixel confusion matrix of all maps: overall
(pixel) accuracy, mean IoU, mean accuracy, mean F1, frequency-weighted IoU and per-class IoU / accuracy /
F1. Classes absent from both targets and predictions have NaN IoU and are excluded from the means.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D integer arrays): predicted label maps (argmax of the logits), one per image.
    references (`list` of 2-D integer arrays): target label maps; pixels equal to `ignore_index` are skipped.
    num_classes (`int`, optional): number of classes; defaults to len(class_names), else max label + 1.
    ignore_index (`int` or `None`, optional): ignored target value, default 255.
    class_names (`list` of `str`, optional): keys of the per-class dicts (default "0", "1", ...).
    These three options can be given to `evaluate.load` and overridden in `compute`.
Returns:
    overall_accuracy, mean_iou, mean_accuracy, mean_f1, frequency_weighted_iou (floats),
    per_class_iou, per_class_accuracy, per_class_f1 (dicts class name -> float).
Examples:
    >>> metric = upetu_hf.metrics.load_metric("segmentation", num_classes=2)
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]])["mean_iou"]
    0.5
"""


class UpetuSegmentation(evaluate.Metric):
    def __init__(self, num_classes=None, ignore_index=_IGNORE_INDEX, class_names=None, **kwargs):
        self._upetu_config = {
            "num_classes": num_classes,
            "ignore_index": ignore_index,
            "class_names": class_names,
        }
        super().__init__(**kwargs)

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=evaluate_features(_TASK),
        )

    def _compute(self, predictions, references, **kwargs):
        return module_compute(_TASK, predictions, references, self._upetu_config, kwargs)
