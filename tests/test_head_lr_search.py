"""scripts/head_lr_search.py: the choice of DENSE_HEAD_LR comes from the runs on file, and parallel shards merge."""

from __future__ import annotations

import json

from test_benchmark_accuracy import load_script


def fake_train(args):
    """A stand-in for `upetu_hf.train.train`: validation mIoU peaks at head lr 1e-3, seed 1 adds 0.01."""
    score = 0.7 - abs(args.head_lr - 1e-3) * 10 + 0.01 * args.seed
    return {
        "best_epoch": 1,
        "validation": {"mean_iou": score, "per_class_iou": {"0": score}},
        "test": {"mean_iou": 0.5},
        "history": [],
        "parameters": {"trainable": 1},
    }


def test_shards_merge_and_the_best_mean_is_chosen(tmp_path, monkeypatch):
    module = load_script("head_lr_search")
    monkeypatch.setattr(module, "train", fake_train)
    common = ["--model", str(tmp_path / "m"), "--gid", str(tmp_path / "g"), "--work-dir", str(tmp_path / "w")]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    module.main([*common, "--head-lrs", "1e-4,1e-3", "--seed", "0", "--output", str(a)])
    module.main([*common, "--head-lrs", "1e-2", "--seed", "1", "--output", str(b)])

    def no_training(args):
        raise AssertionError("an imported run was trained again")

    monkeypatch.setattr(module, "train", no_training)
    merged = module.main(
        [*common, "--head-lrs", "1e-4,1e-3,1e-2", "--output", str(a), "--merge-only", "--import-runs", str(b)]
    )
    assert sorted((r["head_lr"], r["seed"]) for r in merged["runs"]) == [(1e-4, 0), (1e-3, 0), (1e-2, 1)]
    assert merged["selection"]["head_lr"] == 1e-3 and merged["selection"]["interior"]
    assert json.loads(a.read_text())["selection"] == merged["selection"]
