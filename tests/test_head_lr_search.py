"""scripts/head_lr_search.py: the choice of DENSE_HEAD_LR comes from the runs on file, and parallel shards merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_benchmark_accuracy import load_script

from upetu_hf.train.methods import DENSE_HEAD_LR


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


def test_change_detection_runs_on_the_benchmark_split_per_split_seed(tmp_path, monkeypatch):
    module = load_script("head_lr_search")
    sources = []
    for name in ("levir", "dsifn"):
        for sub in ("A", "B", "label"):
            (tmp_path / name / sub).mkdir(parents=True)
            for i in range(5):
                (tmp_path / name / sub / f"p{i}.png").write_bytes(b"")
        sources.append(str(tmp_path / name))
    seen = []

    def fake_cd_train(args):
        folder = Path(args.data[0] if isinstance(args.data, list) else args.data)
        train_pairs = sorted(p.name for p in (folder / "train" / "A").iterdir())
        val_pairs = sorted(p.name for p in (folder / "val" / "A").iterdir())
        seen.append((args.task, args.head_lr, args.image_size, args.crops_per_image, train_pairs, val_pairs))
        score = 0.5 - abs(args.head_lr - 1e-3) * 10 + 0.01 * len(seen)
        return {
            "best_epoch": 2,
            "validation": {"f1": score},
            "test": {"f1": 0.4},
            "history": [],
            "parameters": {},
        }

    monkeypatch.setattr(module, "train", fake_cd_train)
    state = module.main(
        [
            "--task", "change-detection", "--data", *sources, "--model", str(tmp_path / "m"),
            "--head-lrs", "1e-4,1e-3,1e-2", "--split-seeds", "0,1", "--cd-repeats", "3",
            "--work-dir", str(tmp_path / "w"), "--output", str(tmp_path / "cd.json"),
        ]
    )  # fmt: skip
    assert [r["key"] for r in state["runs"]][:4] == [
        "upetu|head_lr=0.0001|seed=0",
        "upetu|head_lr=0.001|seed=0",
        "upetu|head_lr=0.01|seed=0",
        "upetu|head_lr=0.0001|seed=0|split=1",
    ]
    assert [r["split_seed"] for r in state["runs"]] == [0, 0, 0, 1, 1, 1]
    assert all(task == "change-detection" and size == 128 and crops == 1 for task, _, size, crops, *_ in seen)
    # the benchmark's split: per source 2 test, 1 validation, 2 training pairs, each training pair 3 times
    train_pairs, val_pairs = seen[0][4], seen[0][5]
    assert len(train_pairs) == 2 * 2 * 3 and len(val_pairs) == 2
    assert seen[3][5] != val_pairs or seen[3][4] != train_pairs  # another split seed, another split
    assert state["selection"]["head_lr"] == 1e-3 and state["selection"]["interior"]
    means = state["selection"]["mean_validation_by_head_lr"]
    assert abs(means["0.001"] - (0.5 + 0.01 * 2 + 0.5 + 0.01 * 5) / 2) < 1e-9  # mean over both split seeds
    assert state["current_default"] == DENSE_HEAD_LR["change-detection"]
    paired = state["selection"]["best_minus_other_validation"][
        "0.0001"
    ]  # per pair: +0.009 rate, +0.01 run order
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(0.019)


def test_head_hidden_size_reaches_the_decoder_and_the_settings(tmp_path, monkeypatch):
    module = load_script("head_lr_search")
    seen = []

    def recording_train(args):
        seen.append(args.head_hidden_size)
        return fake_train(args)

    monkeypatch.setattr(module, "train", recording_train)
    common = ["--model", str(tmp_path / "m"), "--gid", str(tmp_path / "g"), "--work-dir", str(tmp_path / "w")]
    small = module.main(
        [*common, "--head-lrs", "1e-3", "--head-hidden-size", "64", "--output", str(tmp_path / "s")]
    )
    default = module.main([*common, "--head-lrs", "1e-3", "--output", str(tmp_path / "d")])
    assert seen == [64, None]
    assert small["settings"]["head_hidden_size"] == 64 and default["settings"]["head_hidden_size"] is None
    # the default on file is the one for the decoder searched: 512 / 64 x DENSE_HEAD_LR for the 64-channel UperNet
    assert small["current_default"] == DENSE_HEAD_LR["segmentation"] * 8
    assert default["current_default"] == DENSE_HEAD_LR["segmentation"]
    with pytest.raises(
        SystemExit, match="other settings"
    ):  # a file of one decoder never continues with another
        module.main(
            [*common, "--head-lrs", "1e-3", "--head-hidden-size", "64", "--output", str(tmp_path / "d")]
        )
    with pytest.raises(SystemExit):
        module.parse_args(["--head-hidden-size", "0"])
    assert (
        module.parse_args(["--task", "change-detection", "--head-hidden-size", "32"]).head_hidden_size == 32
    )


def test_a_tie_goes_to_the_better_last_epochs_then_the_smaller_rate():
    choose = load_script("head_lr_search").choose

    def run(head_lr, seed, score, last):
        history = [{"validation/mean_iou": v} for v in last]
        return {
            "method": "upetu",
            "head_lr": head_lr,
            "seed": seed,
            "validation_score": score,
            "history": history,
        }

    runs = [run(1e-3, 0, 0.7, (0.60, 0.70)), run(1e-4, 0, 0.7, (0.66, 0.68)), run(1e-2, 0, 0.6, (0.6, 0.6))]
    choice = choose(runs, [1e-2, 1e-3, 1e-4], "mean_iou")
    assert choice["head_lr"] == 1e-4 and choice["tie"] == {"lrs": [1e-3, 1e-4], "decided_by": "last epochs"}
    flat = [run(1e-3, 0, 0.7, (0.7,)), run(1e-4, 0, 0.7, (0.7,))]
    assert choose(flat, [1e-3, 1e-4], "mean_iou")["head_lr"] == 1e-4  # the smaller rate
    assert "tie" not in choose(runs[:1] + runs[2:], [1e-2, 1e-3], "mean_iou")
