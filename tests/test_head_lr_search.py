"""`benchmark_accuracy.py --head-lrs`: the dense decoders' learning-rate search (behind `TaskSpec.head_lr`) runs through
the accuracy benchmark's ledger: every seed and split seed is a search run, the best mean validation chooses, and
parallel shards merge without training again."""

from __future__ import annotations

import json

import pytest
from test_benchmark_accuracy import bench_args, forbid_training, load_script, write_assets

from upetu_hf.train.tasks import get_task


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_assets(tmp_path_factory.mktemp("head-lr"))


def scored_train(module, monkeypatch, seen: list) -> None:
    """Real training, with the validation score replaced by one that peaks at head lr 1e-3 (seed 1 adds 0.01)."""
    real = module.train

    def train(targs):
        result = real(targs)
        seen.append(
            (targs.task, targs.lr, targs.head_lr, targs.seed, targs.split_seed, targs.head_hidden_size)
        )
        metric = module.TASK_METRICS[targs.task][0]
        result["validation"][metric] = 0.7 - abs(targs.head_lr - 1e-3) * 10 + 0.01 * targs.seed
        return result

    monkeypatch.setattr(module, "train", train)


def test_shards_merge_and_the_best_mean_is_chosen(assets, tmp_path, monkeypatch):
    module, seen = load_script("benchmark_accuracy"), []
    scored_train(module, monkeypatch, seen)
    common = ["--tasks", "segmentation", "--head-lrs", "1e-4,1e-3,1e-2"]
    a, b = tmp_path / "a", tmp_path / "b"
    module.main(bench_args(assets, a, tmp_path / "w", *common, "--seeds", "0"))
    assert [(s[2], s[3]) for s in seen] == [(1e-4, 0), (1e-3, 0), (1e-2, 0)]
    assert all(
        s[1] == module.DEFAULT_LR["upetu"] and s[5] == 64 for s in seen
    )  # the adapter at its default rate
    module.main(bench_args(assets, b, tmp_path / "w", *common, "--seeds", "1"))

    forbid_training(monkeypatch, module, "an imported run was trained again")
    other = str(b / "head_lr_segmentation.json")
    state = module.main(
        bench_args(
            assets,
            a,
            tmp_path / "w",
            *common,
            "--seeds",
            "0,1",
            "--resume",
            "--merge-only",
            "--import-runs",
            other,
        )
    )["segmentation"]
    assert sorted((r["head_lr"], r["seed"]) for r in state["runs"]) == [
        (h, s) for h in (1e-4, 1e-3, 1e-2) for s in (0, 1)
    ]
    choice = state["selection"]["upetu"]
    assert choice["head_lr"] == 1e-3 and choice["interior"] and choice["complete"]
    scores = {c["head_lr"]: c["validation_score"] for c in choice["candidates"]}
    assert scores[1e-3] == pytest.approx(0.705)  # the mean over seeds 0 and 1
    paired = choice["best_minus_other_validation"]["0.0001"]
    assert paired["n"] == 2 and paired["mean"] == pytest.approx(0.009)
    assert state["summary"]["upetu"]["head_lr"] == 1e-3 and state["summary"]["upetu"]["n"] == 2
    # the rate upetu-train gives the 64-channel UperNet today: 512 / 64 x the task's head_lr
    assert state["current_default"] == pytest.approx(get_task("segmentation").head_lr * 8)
    assert json.loads((a / "head_lr_segmentation.json").read_text())["selection"] == state["selection"]
    with pytest.raises(
        SystemExit, match="other settings"
    ):  # a file of one decoder never continues with another
        module.main(bench_args(assets, a, tmp_path / "w", *common, "--resume", "--seg-head-hidden", "32"))


def test_change_detection_searches_every_split_seed(assets, tmp_path, monkeypatch):
    module, seen = load_script("benchmark_accuracy"), []
    scored_train(module, monkeypatch, seen)
    argv = bench_args(
        assets, tmp_path / "o", tmp_path / "w", "--tasks", "change-detection", "--head-lrs", "1e-3,1e-2",
        "--split-seeds", "0,1", "--cd-repeats", "2", "--cd-head-hidden", "32",
    )  # fmt: skip
    state = module.main(argv)["change-detection"]
    assert sorted((s[2], s[4]) for s in seen) == [(1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)]
    assert all(s[5] == 32 for s in seen) and state["protocol"]["head_hidden_size"] == 32
    assert all(r["phase"] == "search" for r in state["runs"])  # every split is a search split: no seed runs
    assert state["selection"]["upetu"]["head_lr"] == 1e-3
    assert state["current_default"] == pytest.approx(get_task("change-detection").head_lr * 4)
    with pytest.raises(SystemExit):  # the search is the dense decoders'
        module.parse_args([*argv, "--tasks", "classification"])
