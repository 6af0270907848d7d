"""UPetu scene-classification metric for Hugging Face ``evaluate`` (local, offline module).

Thin wrapper: builds a confusion matrix and calls ``upetu_hf.metrics.classification_metrics``.
Load it with ``upetu_hf.metrics.load_metric("classification", num_classes=...)``.
"""

import evaluate

from upetu_hf.metrics.hf_evaluate import default_ignore_index, evaluate_features, module_compute

_TASK = "classification"
_IGNORE_INDEX = default_ignore_index(_TASK)

_DESCRIPTION = """
Scene-classification metrics computed exactly from the confusion matrix of all predictions: accuracy,
balanced accuracy, macro F1 / precision / recall over the classes present (scikit-learn's
average="macro" with zero_division=0), Cohen's kappa, per-class accuracy (recall) and per-class F1.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices (argmax of the logits).
    references (`list` of `int`): target class indices; targets equal to `ignore_index` are skipped.
    num_classes (`int`, optional): number of classes; defaults to len(class_names), else max label + 1.
    ignore_index (`int` or `None`, optional): ignored target value, default -100.
    class_names (`list` of `str`, optional): keys of the per-class dicts (default "0", "1", ...).
    These three options can be given to `evaluate.load` and overridden in `compute`.
Returns:
    accuracy, balanced_accuracy, macro_f1, macro_precision, macro_recall, kappa (floats),
    per_class_accuracy, per_class_f1 (dicts class name -> float, NaN for absent classes).
Examples:
    >>> metric = upetu_hf.metrics.load_metric("classification", num_classes=3)
    >>> metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])["accuracy"]
    0.75
"""


class UpetuClassification(evaluate.Metric):
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
