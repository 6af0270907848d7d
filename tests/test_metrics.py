"""Tests for upetu_hf.metrics: hand-computed values, scikit-learn parity, accumulation and offline evaluate."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from upetu_hf.metrics import (
    TASKS,
    ConfusionMatrix,
    change_detection_metrics,
    classification_metrics,
    cohen_kappa,
    compute_from_examples,
    confusion_matrix,
    flatten_metrics,
    load_metric,
    metric_module_path,
    metrics_from_confusion,
    normalize_task,
    segmentation_metrics,
)

METRICS_DIR = Path(__file__).resolve().parents[1] / "src" / "upetu_hf" / "metrics"
NAN = float("nan")


def assert_close(actual: float, expected: float, tol: float = 1e-12) -> None:
    assert isinstance(actual, float), f"expected a Python float, got {type(actual).__name__}"
    if math.isnan(expected):
        assert math.isnan(actual), f"expected NaN, got {actual}"
    else:
        assert actual == pytest.approx(expected, abs=tol, rel=tol)


def assert_dict_close(actual: dict, expected: dict, tol: float = 1e-12) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_dict_close(actual[key], value, tol)
        else:
            assert_close(actual[key], value, tol)


def sk(fn, *args, **kwargs):
    """Call a scikit-learn metric with its undefined-metric warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return float(fn(*args, **kwargs))


def same(a: dict, b: dict) -> bool:
    """Exact equality of two metric dicts, treating NaN as equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def is_json_of_floats(metrics: dict) -> bool:
    json.dumps(metrics)  # must not raise
    return all(isinstance(v, float) for v in flatten_metrics(metrics).values())


# ----------------------------------------------------------------------------------------------------------
# ConfusionMatrix
# ----------------------------------------------------------------------------------------------------------


def test_confusion_matrix_hand_example_with_ignore_index():
    targets = torch.tensor([0, 0, 1, 2, 255, 1])
    preds = torch.tensor([0, 1, 1, 0, 2, 1])
    cm = ConfusionMatrix(num_classes=3)
    cm.update(preds, targets)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert cm.compute().dtype == torch.int64
    assert torch.equal(cm.compute(), expected)
    assert cm.total == 5  # the ignored position is not counted
    # same through the functional form and numpy / list inputs
    assert torch.equal(confusion_matrix(preds.numpy(), targets.tolist(), 3), expected)


def test_confusion_matrix_any_shape_and_matches_sklearn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, size=(3, 7, 9))
    preds = rng.integers(0, 5, size=(3, 7, 9))
    targets[0, :2] = 255
    cm = ConfusionMatrix(5).update(torch.from_numpy(preds), torch.from_numpy(targets)).compute()
    keep = targets != 255
    expected = sk_confusion_matrix(targets[keep], preds[keep], labels=list(range(5)))
    np.testing.assert_array_equal(cm.numpy(), expected)


def test_ignore_index_none_counts_everything_and_custom_ignore():
    cm = ConfusionMatrix(2, ignore_index=None).update([0, 1, 1], [0, 1, 0])
    assert cm.compute().tolist() == [[1, 1], [0, 1]]
    cm = ConfusionMatrix(2, ignore_index=-100).update([0, 1, 1], [0, -100, 1])
    assert cm.compute().tolist() == [[1, 0], [0, 1]]


def test_accumulation_over_batches_equals_one_shot():
    rng = np.random.default_rng(1)
    targets = torch.from_numpy(rng.integers(0, 4, size=(10, 8, 8)))
    preds = torch.from_numpy(rng.integers(0, 4, size=(10, 8, 8)))
    targets[targets == 3] = 255  # some ignored pixels
    one_shot = ConfusionMatrix(4).update(preds, targets)
    batched = ConfusionMatrix(4)
    for start in range(0, 10, 3):
        batched.update(preds[start : start + 3], targets[start : start + 3])
    assert batched == one_shot
    assert same(segmentation_metrics(batched), segmentation_metrics(one_shot))


def test_merge_add_sum_equal_single_accumulator():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 3, size=200)
    preds = rng.integers(0, 3, size=200)
    full = ConfusionMatrix(3).update(preds, targets)
    a = ConfusionMatrix(3).update(preds[:120], targets[:120])
    b = ConfusionMatrix(3).update(preds[120:], targets[120:])
    assert a + b == full
    assert sum([a, b]) == full
    assert a.total == 120 and b.total == 80  # ``+`` and ``sum`` do not modify their operands
    merged = a.copy()
    merged += b
    assert merged == full
    assert a.copy().merge(b) == full
    assert same(classification_metrics(merged), classification_metrics(full))


def test_merge_rejects_incompatible():
    with pytest.raises(ValueError, match="3 and 4 classes"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(3).merge(ConfusionMatrix(3, ignore_index=None))


def test_reset_and_from_matrix():
    cm = ConfusionMatrix(2).update([0, 1], [1, 1])
    cm.reset()
    assert cm.total == 0 and cm.compute().tolist() == [[0, 0], [0, 0]]
    wrapped = ConfusionMatrix.from_matrix([[3, 1], [0, 2]])
    assert wrapped.num_classes == 2 and wrapped.total == 6
    with pytest.raises(ValueError, match="square"):
        ConfusionMatrix.from_matrix([[1, 2, 3]])


def test_all_reduce_single_process(tmp_path):
    import torch.distributed as dist

    cm = ConfusionMatrix(2).update([0, 1, 1], [0, 1, 0])
    expected = cm.compute()
    cm.all_reduce()  # no process group: no-op
    assert torch.equal(cm.compute(), expected)
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        cm.all_reduce()
    finally:
        dist.destroy_process_group()
    assert torch.equal(cm.compute(), expected)


def test_bad_target_values_raise_with_values_and_range():
    cm = ConfusionMatrix(3)
    with pytest.raises(
        ValueError, match=r"targets contain invalid class values \[-1, 3, 7\].*0\.\.2"
    ) as info:
        cm.update(torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 3, 7, -1, 255]))
    assert "ignore_index=255" in str(info.value)
    assert cm.total == 0  # nothing was accumulated
    with pytest.raises(ValueError, match=r"preds contain invalid class values \[5\]"):
        cm.update(torch.tensor([5, 0]), torch.tensor([0, 0]))
    # a bad prediction at an ignored position is not counted and therefore not an error
    cm.update(torch.tensor([5, 0]), torch.tensor([255, 0]))
    assert cm.total == 1


def test_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.rand(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="valid class index"):
        ConfusionMatrix(300)  # default ignore_index=255 would silently drop class 255
    with pytest.raises(ValueError, match="positive int"):
        ConfusionMatrix(0)


def test_bool_and_uint8_inputs():
    cm = ConfusionMatrix(2).update(torch.tensor([True, False, True]), np.array([1, 0, 0], dtype=np.uint8))
    assert cm.compute().tolist() == [[1, 1], [0, 1]]


# ----------------------------------------------------------------------------------------------------------
# Hand-computed metrics
# ----------------------------------------------------------------------------------------------------------


def test_segmentation_hand_example_absent_classes():
    # 4 classes; class 2 is never a target but predicted once; class 3 appears nowhere.
    cm = torch.tensor([[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    names = ["road", "building", "tree", "water"]
    result = segmentation_metrics(cm, class_names=names)
    expected = {
        "overall_accuracy": 8 / 12,
        "mean_iou": (5 / 8 + 3 / 7 + 0.0) / 3,  # water (NaN) excluded, tree (IoU 0) included
        "mean_accuracy": (5 / 6 + 3 / 6) / 2,  # tree and water have no target pixels
        "mean_f1": (10 / 13 + 6 / 10 + 0.0) / 3,
        "frequency_weighted_iou": 0.5 * 5 / 8 + 0.5 * 3 / 7,
        "per_class_iou": {"road": 5 / 8, "building": 3 / 7, "tree": 0.0, "water": NAN},
        "per_class_accuracy": {"road": 5 / 6, "building": 0.5, "tree": NAN, "water": NAN},
        "per_class_f1": {"road": 10 / 13, "building": 0.6, "tree": 0.0, "water": NAN},
    }
    assert_dict_close(result, expected)
    assert is_json_of_floats(result)
    # default names are the class indices as strings
    assert list(segmentation_metrics(cm)["per_class_iou"]) == ["0", "1", "2", "3"]


def test_classification_hand_example():
    # class 2 has one target sample but is never predicted
    cm = np.array([[3, 1, 0], [0, 2, 0], [1, 0, 0]])
    result = classification_metrics(cm, class_names=["forest", "river", "port"])
    expected = {
        "accuracy": 5 / 7,
        "balanced_accuracy": (3 / 4 + 1.0 + 0.0) / 3,
        "macro_f1": (6 / 8 + 4 / 5 + 0.0) / 3,
        "macro_precision": (3 / 4 + 2 / 3 + 0.0) / 3,  # zero_division=0 for "port"
        "macro_recall": (3 / 4 + 1.0 + 0.0) / 3,
        "kappa": 13 / 27,  # p_o = 5/7, p_e = 22/49
        "per_class_accuracy": {"forest": 3 / 4, "river": 1.0, "port": 0.0},
        "per_class_f1": {"forest": 6 / 8, "river": 4 / 5, "port": 0.0},
    }
    assert_dict_close(result, expected)
    assert is_json_of_floats(result)


def test_classification_absent_class_excluded_from_macro():
    # class 1 of 3 appears nowhere: identical scores to the 2-class matrix without it
    cm3 = [[4, 0, 1], [0, 0, 0], [2, 0, 3]]
    cm2 = [[4, 1], [2, 3]]
    r3, r2 = classification_metrics(cm3), classification_metrics(cm2)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall", "kappa"):
        assert_close(r3[key], r2[key])
    assert math.isnan(r3["per_class_f1"]["1"]) and math.isnan(r3["per_class_accuracy"]["1"])


def test_change_detection_hand_example():
    cm = [[90, 2], [3, 5]]  # tn, fp / fn, tp
    expected = {
        "precision": 5 / 7,
        "recall": 5 / 8,
        "f1": 2 / 3,
        "iou": 5 / 10,
        "overall_accuracy": 0.95,
        "kappa": 222 / 347,  # (0.95 - 0.8612) / (1 - 0.8612)
    }
    result = change_detection_metrics(cm)
    assert_dict_close(result, expected)
    assert is_json_of_floats(result)


def test_change_detection_all_background():
    result = change_detection_metrics([[100, 0], [0, 0]])
    # zero_division=0 convention for precision/recall/f1/iou; kappa undefined -> NaN (as sklearn)
    assert_dict_close(
        result,
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "overall_accuracy": 1.0, "kappa": NAN},
    )
    custom = change_detection_metrics([[100, 0], [0, 0]], zero_division=1.0, kappa_undefined=0.0)
    assert custom["f1"] == 1.0 and custom["precision"] == 1.0 and custom["kappa"] == 0.0


def test_change_detection_requires_two_classes():
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        change_detection_metrics(np.eye(3))


def test_empty_matrix():
    seg = segmentation_metrics(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(seg["overall_accuracy"]) and math.isnan(seg["mean_iou"])
    cd = change_detection_metrics(torch.zeros(2, 2, dtype=torch.long))
    assert cd["f1"] == 0.0 and math.isnan(cd["overall_accuracy"]) and math.isnan(cd["kappa"])


def test_matrix_validation_and_class_names():
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics([[1, 2]])
    with pytest.raises(ValueError, match="non-negative"):
        segmentation_metrics([[1, -2], [0, 1]])
    with pytest.raises(ValueError, match="class_names"):
        segmentation_metrics(np.eye(2), class_names=["a"])


def test_task_dispatch_and_flatten():
    assert normalize_task("Semantic-Segmentation") == "segmentation"
    assert normalize_task("cd") == "change_detection"
    assert set(TASKS) == {"classification", "segmentation", "change_detection"}
    with pytest.raises(ValueError, match="unknown task"):
        normalize_task("detection")
    cm = [[3, 1], [1, 3]]
    assert same(metrics_from_confusion("change-detection", cm), change_detection_metrics(cm))
    flat = flatten_metrics(segmentation_metrics(cm, class_names=["bg", "fg"]))
    assert flat["per_class_iou/fg"] == 0.6 and flat["mean_iou"] == 0.6


# ----------------------------------------------------------------------------------------------------------
# scikit-learn parity on random data
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = 6
    y_true = rng.integers(0, num_classes, size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, num_classes, size=300))
    y_true[y_true == 4] = 0  # class 4 absent from targets (may still be predicted)
    y_pred[y_pred == 5] = 1  # class 5 absent from predictions
    y_true[y_true == 5] = 1  # ... and now from targets too: absent everywhere
    cm = ConfusionMatrix(num_classes).update(y_pred, y_true)
    result = classification_metrics(cm)
    assert_close(result["accuracy"], sk(accuracy_score, y_true, y_pred))
    assert_close(result["balanced_accuracy"], sk(balanced_accuracy_score, y_true, y_pred))
    assert_close(result["macro_f1"], sk(f1_score, y_true, y_pred, average="macro", zero_division=0))
    assert_close(
        result["macro_precision"], sk(precision_score, y_true, y_pred, average="macro", zero_division=0)
    )
    assert_close(result["macro_recall"], sk(recall_score, y_true, y_pred, average="macro", zero_division=0))
    assert_close(result["kappa"], sk(cohen_kappa_score, y_true, y_pred))
    present = sorted(set(y_true) | set(y_pred))
    per_class_f1 = f1_score(y_true, y_pred, labels=present, average=None)
    for label, value in zip(present, per_class_f1, strict=True):
        assert_close(result["per_class_f1"][str(label)], float(value))
    assert math.isnan(result["per_class_f1"]["5"])


@pytest.mark.parametrize("seed", [0, 1])
def test_segmentation_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = 5
    targets = rng.integers(0, num_classes, size=(4, 12, 12))
    preds = np.where(
        rng.random(targets.shape) < 0.7, targets, rng.integers(0, num_classes, size=targets.shape)
    )
    targets[targets == 3] = 2
    preds[preds == 3] = 2  # class 3 absent everywhere
    targets[:, :2, :] = 255  # ignored border
    cm = ConfusionMatrix(num_classes)
    for pred, target in zip(preds, targets, strict=True):
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    result = segmentation_metrics(cm)

    keep = targets != 255
    y_true, y_pred = targets[keep], preds[keep]
    np.testing.assert_array_equal(cm.compute().numpy(), sk_confusion_matrix(y_true, y_pred, labels=range(5)))
    assert_close(result["overall_accuracy"], sk(accuracy_score, y_true, y_pred))
    assert_close(result["mean_iou"], sk(jaccard_score, y_true, y_pred, average="macro"))
    assert_close(result["mean_f1"], sk(f1_score, y_true, y_pred, average="macro"))
    assert_close(result["mean_accuracy"], sk(balanced_accuracy_score, y_true, y_pred))
    present = [0, 1, 2, 4]
    ious = jaccard_score(y_true, y_pred, labels=present, average=None)
    for label, value in zip(present, ious, strict=True):
        assert_close(result["per_class_iou"][str(label)], float(value))
    assert math.isnan(result["per_class_iou"]["3"])
    fw = sum((y_true == c).mean() * result["per_class_iou"][str(c)] for c in present)
    assert_close(result["frequency_weighted_iou"], float(fw))


def _sklearn_change_detection(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    kwargs = {"labels": [0, 1], "pos_label": 1, "average": "binary", "zero_division": 0}
    return {
        "precision": sk(precision_score, y_true, y_pred, **kwargs),
        "recall": sk(recall_score, y_true, y_pred, **kwargs),
        "f1": sk(f1_score, y_true, y_pred, **kwargs),
        "iou": sk(jaccard_score, y_true, y_pred, **kwargs),
        "overall_accuracy": sk(accuracy_score, y_true, y_pred),
        "kappa": sk(cohen_kappa_score, y_true, y_pred),
    }


@pytest.mark.parametrize(
    "case",
    [
        "random",
        "all_background",
        "background_target_change_pred",
        "change_target_background_pred",
        "all_change",
    ],
)
def test_change_detection_matches_sklearn(case):
    rng = np.random.default_rng(3)
    shape = (3, 16, 16)
    if case == "random":
        y_true = (rng.random(shape) < 0.2).astype(np.int64)
        y_pred = np.where(rng.random(shape) < 0.8, y_true, 1 - y_true)
    elif case == "all_background":
        y_true, y_pred = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    elif case == "background_target_change_pred":
        y_true, y_pred = np.zeros(shape, np.int64), (rng.random(shape) < 0.1).astype(np.int64)
    elif case == "change_target_background_pred":
        y_true, y_pred = (rng.random(shape) < 0.1).astype(np.int64), np.zeros(shape, np.int64)
    else:
        y_true, y_pred = np.ones(shape, np.int64), np.ones(shape, np.int64)
    cm = ConfusionMatrix(2).update(y_pred, y_true)
    result = change_detection_metrics(cm)
    assert_dict_close(result, _sklearn_change_detection(y_true.ravel(), y_pred.ravel()))
    assert_close(cohen_kappa(cm), result["kappa"])


def test_cohen_kappa_multiclass_matches_sklearn():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 4, size=500)
    y_pred = np.where(rng.random(500) < 0.5, y_true, rng.integers(0, 4, size=500))
    cm = ConfusionMatrix(4).update(y_pred, y_true)
    assert_close(cohen_kappa(cm), sk(cohen_kappa_score, y_true, y_pred))


# ----------------------------------------------------------------------------------------------------------
# Offline evaluate modules
# ----------------------------------------------------------------------------------------------------------


def test_package_does_not_import_other_subpackages():
    forbidden = ("models", "tuner", "train", "data")
    for path in METRICS_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level >= 2 or (node.level == 1 and module.split(".")[0] in forbidden):
                    pytest.fail(f"{path}: relative import out of the metrics package: {ast.unparse(node)}")
                names = [module] if node.level == 0 else []
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "upetu_hf" and (len(parts) < 2 or parts[1] != "metrics"):
                    pytest.fail(f"{path}: imports {name}")


def test_module_scripts_exist_for_every_task():
    for task in TASKS:
        path = Path(metric_module_path(task))
        assert path.is_file() and path.parent.parent == METRICS_DIR / "modules"
        assert path.stem == path.parent.name  # evaluate's "<dir>/<dir>.py" layout


_OFFLINE_SCRIPT = r"""
import json, socket, sys

def _no_network(*args, **kwargs):
    raise OSError("network access attempted during an offline test")

socket.socket.connect = _no_network
socket.socket.connect_ex = _no_network
socket.create_connection = _no_network
socket.getaddrinfo = _no_network

from upetu_hf.metrics import load_metric

data = json.loads(sys.stdin.read())
out = {}
for task, kwargs in data["load_kwargs"].items():
    metric = load_metric(task, **kwargs)
    for preds, refs in data["batches"][task]:
        metric.add_batch(predictions=preds, references=refs)
    out[task] = metric.compute()
print("RESULT" + json.dumps(out))
"""


def test_evaluate_modules_offline_subprocess_without_network():
    """Loads all three modules in a fresh interpreter with HF offline mode and sockets disabled."""
    rng = np.random.default_rng(5)
    seg_t = rng.integers(0, 3, size=(4, 6, 6))
    seg_p = rng.integers(0, 3, size=(4, 6, 6))
    seg_t[0, 0] = 255
    cd_t = (rng.random((3, 5, 5)) < 0.3).astype(np.int64)
    cd_p = (rng.random((3, 5, 5)) < 0.3).astype(np.int64)
    cls_t = rng.integers(0, 4, size=20)
    cls_p = rng.integers(0, 4, size=20)
    data = {
        "load_kwargs": {
            "segmentation": {"num_classes": 4, "class_names": ["a", "b", "c", "d"]},  # "d" absent
            "change_detection": {},
            "classification": {"num_classes": 4},
        },
        "batches": {
            "segmentation": [
                [seg_p[:2].tolist(), seg_t[:2].tolist()],
                [seg_p[2:].tolist(), seg_t[2:].tolist()],
            ],
            "change_detection": [[cd_p.tolist(), cd_t.tolist()]],
            "classification": [
                [cls_p[:7].tolist(), cls_t[:7].tolist()],
                [cls_p[7:].tolist(), cls_t[7:].tolist()],
            ],
        },
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])

    seg = ConfusionMatrix(4).update(seg_p, seg_t)
    assert math.isnan(out["segmentation"]["per_class_iou"]["d"])  # absent class survives the JSON round trip
    assert same(out["segmentation"], segmentation_metrics(seg, class_names=["a", "b", "c", "d"]))
    assert same(out["change_detection"], change_detection_metrics(ConfusionMatrix(2).update(cd_p, cd_t)))
    cls = ConfusionMatrix(4, ignore_index=-100).update(cls_p, cls_t)
    assert same(out["classification"], classification_metrics(cls))


@pytest.fixture
def offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")


def test_segmentation_module_config_and_compute_kwargs(offline_env):
    rng = np.random.default_rng(6)
    targets = rng.integers(0, 4, size=(3, 8, 8))
    preds = rng.integers(0, 4, size=(3, 8, 8))
    targets[targets == 3] = 7  # 7 is this dataset's "unlabeled" value
    preds[preds == 3] = 0
    expected = segmentation_metrics(ConfusionMatrix(3, ignore_index=7).update(preds, targets))

    metric = load_metric("semantic_segmentation", num_classes=3, ignore_index=7)
    for pred, target in zip(preds, targets, strict=True):
        metric.add(predictions=pred, references=target)  # numpy arrays, one example at a time
    assert same(metric.compute(), expected)

    # compute kwargs override the options given at load time
    metric = load_metric("segmentation", num_classes=5, ignore_index=255)
    result = metric.compute(predictions=list(preds), references=list(targets), num_classes=3, ignore_index=7)
    assert same(result, expected)
    with pytest.raises(TypeError, match="unexpected keyword"):
        metric.compute(predictions=list(preds), references=list(targets), bogus=1)


def test_module_bad_targets_raise(offline_env):
    metric = load_metric("segmentation", num_classes=2)
    with pytest.raises(ValueError, match=r"invalid class values \[3\]"):
        metric.compute(predictions=[[[0, 1]]], references=[[[0, 3]]])


def test_module_num_classes_inferred_and_cd_validation(offline_env):
    preds, refs = [0, 2, 2, 1], [0, 2, 1, -100]
    inferred = compute_from_examples("classification", preds, refs)  # default ignore_index=-100
    assert same(inferred, classification_metrics(ConfusionMatrix(3, ignore_index=-100).update(preds, refs)))
    metric = load_metric("classification")
    assert same(metric.compute(predictions=preds, references=refs), inferred)
    seg = compute_from_examples("segmentation", [[[0, 1, 1]]], [[[0, 1, 255]]])  # default ignore_index=255
    assert seg["overall_accuracy"] == 1.0 and list(seg["per_class_iou"]) == ["0", "1"]
    with pytest.raises(ValueError, match="shape"):
        compute_from_examples("segmentation", [[[0, 1]]], [[[0, 1, 1]]])
    metric = load_metric("change_detection", num_classes=3)
    with pytest.raises(ValueError, match="binary"):
        metric.compute(predictions=[[[0, 1]]], references=[[[0, 1]]])
