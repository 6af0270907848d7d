"""`benchmark_accuracy.py --tasks oscd13` on six tiny synthetic 13-band cities: the split by city, the search and
seed runs of both variants (13 bands with an inflated stem, RGB), and the ledger it writes."""

from __future__ import annotations

import pytest
from test_benchmark_accuracy import forbid_training, load_script
from test_train import write_checkpoint
from test_train_multiband import multiband_change

from upetu_hf.train.tasks import get_task


def test_oscd13_compares_13_bands_with_rgb(tmp_path, monkeypatch):
    data = multiband_change(tmp_path / "oscd", 13, [(64, 64)] * 6)
    for sub in ("A", "B", "label"):  # city names, as in OSCD
        for i, path in enumerate(sorted((data / sub).iterdir())):
            path.rename(path.with_name(f"town{i}{path.suffix}"))
    module = load_script("benchmark_accuracy")
    argv = [
        "--tasks", "oscd13", "--oscd", str(data), "--model", str(write_checkpoint(tmp_path / "tiny")),
        "--output-dir", str(tmp_path / "out"), "--work-dir", str(tmp_path / "w"), "--oscd-cities", "3,1",
        "--dense-epochs", "1", "--dense-batch-size", "2", "--cd-crop", "32", "--lr-factors", "1", "--threads", "1",
    ]  # fmt: skip
    state = module.main([*argv, "--seeds", "0,1"])["oscd13"]
    split = state["protocol"]["split"]["by_cities"]
    assert [len(split[k]) for k in ("train", "validation", "test")] == [3, 1, 2]
    assert sorted(sum(split.values(), [])) == [f"town{i}" for i in range(6)]
    assert state["protocol"]["dice_weight"] == 1.0 and state["protocol"]["crops_per_image"] == "auto"
    runs = {(r["variant"], r["seed"]): r for r in state["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()) and len(runs) == 4
    assert runs["upetu-rgb", 0]["bands"]["selected"] == ["B04", "B03", "B02"]
    assert runs["upetu-13band", 0]["bands"]["rgb_indices"] == [3, 2, 1]
    head_lr = get_task("change-detection").head_lr
    assert (
        state["protocol"]["dense_head_lr"] == head_lr
        and runs["upetu-rgb", 1]["arguments"]["head_lr"] == head_lr
    )
    summary = state["summary"]
    assert summary["upetu-rgb"]["n"] == 2 and summary["upetu-rgb"]["test_scores"] == [
        runs["upetu-rgb", s]["test_score"] for s in (0, 1)
    ]
    # the 13-band adapter also saves the inflated stem: it is larger than the RGB one
    assert summary["upetu-13band"]["trainable_params"] > summary["upetu-rgb"]["trainable_params"]

    # an interrupted benchmark is summarised on fewer seeds from its finished runs, without training again
    forbid_training(monkeypatch, module, "a finished run was trained again")
    again = module.main([*argv, "--seeds", "0", "--resume"])["oscd13"]
    assert (
        len(again["runs"]) == 4
        and again["summary"]["upetu-rgb"]["test_scores"] == summary["upetu-rgb"]["test_scores"][:1]
    )
    with pytest.raises(
        SystemExit, match="other settings"
    ):  # the decoder at each run's rate is another protocol
        module.main([*argv, "--seeds", "0", "--resume", "--dense-head-lr", "lr"])
    args = module.parse_args([*argv, "--dense-head-lr", "lr"])
    (setup,) = module.make_setups(args, tmp_path / "w2")
    assert module.training_arguments(setup, args, "upetu", {}, tmp_path / "r", lr=0.03).head_lr == 0.03
