"""Smoke test of scripts/benchmark_oscd.py on six tiny synthetic 13-band cities: the split by city, the search and
seed runs of both variants (13 bands with an inflated stem, RGB), and the JSON it writes."""

from __future__ import annotations

import json

import pytest
from test_benchmark_accuracy import load_script
from test_train import write_checkpoint
from test_train_multiband import multiband_change


def test_benchmark_oscd_writes_both_variants(tmp_path):
    data = multiband_change(tmp_path / "oscd", 13, [(64, 64)] * 6)
    for sub in ("A", "B", "label"):  # city names, as in OSCD
        for i, path in enumerate(sorted((data / sub).iterdir())):
            path.rename(path.with_name(f"town{i}{path.suffix}"))
    model = write_checkpoint(tmp_path / "tiny")
    output = tmp_path / "oscd.json"
    script = load_script("benchmark_oscd")
    state = script.main(
        [
            "--data", str(data), "--model", str(model), "--output", str(output), "--work-dir", str(tmp_path / "w"),
            "--train-cities", "3", "--val-cities", "1", "--epochs", "1", "--batch-size", "2", "--crop", "32",
            "--lr-factors", "1", "--seeds", "0,1", "--threads", "1",
        ]
    )  # fmt: skip
    saved = json.loads(output.read_text())
    assert saved["summary"] == json.loads(json.dumps(state["summary"]))
    split = saved["protocol"]["split"]
    assert [len(split[k]) for k in ("train", "validation", "test")] == [3, 1, 2]
    assert sorted(sum(split.values(), [])) == [f"town{i}" for i in range(6)]
    runs = {(r["variant"], r["seed"]): r for r in saved["runs"]}
    assert all(r["status"] == "ok" for r in runs.values()) and len(runs) == 4
    assert runs["upetu-rgb", 0]["bands"]["selected"] == ["B04", "B03", "B02"]
    assert runs["upetu-13band", 0]["bands"]["rgb_indices"] == [3, 2, 1]
    for variant in ("upetu-13band", "upetu-rgb"):
        summary = saved["summary"][variant]
        assert summary["n"] == 2 and summary["test_f1"] == [runs[variant, s]["test_score"] for s in (0, 1)]
        assert summary["validation_f1"] == [runs[variant, s]["validation_score"] for s in (0, 1)]
        assert summary["validation_f1_mean"] == pytest.approx(sum(summary["validation_f1"]) / 2)
    # the 13-band adapter also saves the inflated stem: it is larger than the RGB one
    assert (
        saved["summary"]["upetu-13band"]["trainable_params"]
        > saved["summary"]["upetu-rgb"]["trainable_params"]
    )
    # an interrupted benchmark is summarised on fewer seeds from its finished runs, without training again
    again = script.main(
        [
            "--data", str(data), "--model", str(model), "--output", str(output), "--work-dir", str(tmp_path / "w"),
            "--train-cities", "3", "--val-cities", "1", "--epochs", "1", "--batch-size", "2", "--crop", "32",
            "--lr-factors", "1", "--seeds", "0", "--resume", "--reduced", "interrupted",
        ]
    )  # fmt: skip
    assert len(again["runs"]) == 4 and again["summary"]["upetu-rgb"]["test_f1"] == summary["test_f1"][:1]
    assert saved["protocol"]["head_lr"] == f"{script.DENSE_HEAD_LR['change-detection']:g}"

    # a file from before --head-lr (its decoders trained at the adapter's rate) resumes with `--head-lr lr` only
    old = json.loads(output.read_text())
    del old["protocol"]["head_lr"]
    output.write_text(json.dumps(old))
    resume = [
        "--data", str(data), "--model", str(model), "--output", str(output), "--work-dir", str(tmp_path / "w"),
        "--train-cities", "3", "--val-cities", "1", "--epochs", "1", "--batch-size", "2", "--crop", "32",
        "--lr-factors", "1", "--seeds", "0", "--resume",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="another protocol"):
        script.main(resume)
    assert len(script.main([*resume, "--head-lr", "lr"])["runs"]) == 4
    with pytest.raises(SystemExit):
        script.main([*resume, "--head-lr", "fast"])


def test_head_lr_reaches_the_training_api(tmp_path):
    script = load_script("benchmark_oscd")
    args = script.parse_args(["--head-lr", "lr"])
    assert script.training_arguments(args, tmp_path, None, 0.03, 0, tmp_path / "r").head_lr == 0.03
    args = script.parse_args(["--head-lr", "2e-4"])
    assert script.training_arguments(args, tmp_path, None, 0.03, 0, tmp_path / "r").head_lr == 2e-4
