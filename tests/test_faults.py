"""Issue 28, faults round two, through the CLI as a user meets them: non-finite numbers stop a run, outputs are
strict JSON, saves are byte-exact, and every expected failure is one line with exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from test_reliability import run_args, train_cli
from test_train import write_checkpoint, write_class_folder
from test_train_multiband import multiband_segmentation, seg_argv, write_tif

from upetu_hf._files import write_json_atomic
from upetu_hf.data.band_statistics import compute_band_statistics
from upetu_hf.train.checkpoint import list_checkpoints


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    return {
        "checkpoint": write_checkpoint(root / "convnext-tiny"),
        "images": write_class_folder(root / "scenes"),
    }


def strict_json(path: Path):
    """Parse `path`, refusing the non-standard NaN / Infinity literals."""

    def refuse(literal: str):
        raise ValueError(f"{path} holds the non-JSON literal {literal}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------------------------------- 1. finite or stop
def test_nan_pixels_are_refused_naming_the_file(tmp_path, assets, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    image = np.full((4, 64, 64), 1000.0, np.float32)
    image[2, 10:20, 10:20] = np.nan
    write_tif(data / "images" / "tile_1.tif", image)
    with pytest.raises(ValueError, match=r"tile_1\.tif holds 100 NaN or infinite"):
        compute_band_statistics([data / "images" / "tile_1.tif"])
    code, err = train_cli(seg_argv(assets["checkpoint"], data, tmp_path / "out"), capsys)
    assert code == 2 and "tile_1.tif holds 100 NaN or infinite" in err, err
    assert not (tmp_path / "out" / "run_config.json").exists()


def test_non_finite_band_statistics_files_are_refused(tmp_path, assets, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    stats = tmp_path / "stats.json"
    stats.write_text('{"mean": [1000, 2000, 3000, 4000], "std": [50, NaN, 70, 80]}')
    code, err = train_cli(
        seg_argv(assets["checkpoint"], data, tmp_path / "out", "--band-statistics", str(stats)), capsys
    )
    assert code == 2 and f"--band-statistics {stats}: the band statistics must be finite" in err, err
    assert not (tmp_path / "out" / "run_config.json").exists()


def test_a_diverging_run_stops_naming_the_step_and_keeps_its_last_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = train_cli(
        run_args(
            assets, out, "--epochs", "3", "--lr", "1e3", "--max-grad-norm", "0", "--checkpointing-steps", "1"
        ),
        capsys,
    )
    assert code == 2, err
    assert "the training loss is" in err and "at step " in err and "lower --lr (now 1000)" in err, err
    assert not (out / "adapter_model.safetensors").exists() and not (out / "metrics.json").exists()
    kept = list_checkpoints(out)
    assert kept and str(kept[-1]) in err
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert all(bool(t.isfinite().all()) for t in load_file(kept[-1] / name).values())


def test_json_outputs_never_hold_nan_literals(tmp_path):
    path = write_json_atomic(
        tmp_path / "metrics.json", {"f1": math.nan, "per_class": [1.0, math.inf, -math.inf]}
    )
    assert strict_json(path) == {"f1": None, "per_class": [1.0, None, None]}
