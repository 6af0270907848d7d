"""UPetu binary change-detection metric for Hugging Face ``evaluate`` (local, offline module).

Thin wrapper: builds a 2x2 pixel confusion matrix and calls ``upetu_hf.metrics.change_detection_metrics``.
Load it with ``upetu_hf.metrics.load_metric("change_detection")``.
"""

import evaluate

from upetu_hf.metrics.hf_evaluate import default_ignore_index, evaluate_features, module_compute

_TASK = "change_detection"
_IGNORE_INDEX = default_ignore_index(_TASK)

_DESCRIPTION = """
Binary change-detection metrics (class 1 = change) computed exactly from the pixel confusion matrix of
all change maps: precision, recall, F1 and IoU of the change class (0.0 when a denominator is zero, as
scikit-learn's zero_division=0), overall accuracy and Cohen's kappa (NaN when undefined, as scikit-learn).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D integer arrays): predicted change maps (0 = no change, 1 = change).
    references (`list` of 2-D integer arrays): target change maps; pixels equal to `ignore_index` are skipped.
    num_classes (`int`, optional): must be 2 (or None).
    ignore_index (`int` or `None`, optional): ignored target value, default 255.
    class_names: accepted for a uniform interface, unused.
    These options can be given to `evaluate.load` and overridden in `compute`.
Returns:
    precision, recall, f1, iou, overall_accuracy, kappa (floats).
Examples:
    >>> metric = upetu_hf.metrics.load_metric("change_detection")
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 1]]])["f1"]
    0.8
"""


class UpetuChangeDetection(evaluate.Metric):
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
