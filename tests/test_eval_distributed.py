"""`upetu-eval` of a multi-band change-detection run on cities of different sizes under torchrun (two processes,
gloo): scenes are padded across processes before they are gathered, and the metrics and masks equal one process's."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import PIL.Image
from test_train import ENV, write_checkpoint
from test_train_multiband import base_args, multiband_change

from upetu_hf.train import EvalArguments, evaluate_model, train


def test_two_process_evaluation_of_scenes_of_different_sizes_equals_one_process(tmp_path):
    # 5 test cities: the second process gets a repeated city to even out the batches, which must count once
    sizes = [(33 + 7 * i, 81 - 5 * i) for i in range(10)]  # 33x81 ... 96x36: no width a multiple of 32
    data = multiband_change(tmp_path / "cities", 13, sizes)
    out = tmp_path / "run"
    train(base_args("change-detection", write_checkpoint(tmp_path / "tiny"), data, out, image_size=32))
    single = evaluate_model(EvalArguments(adapter=str(out), predict_dir=str(tmp_path / "one")))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "upetu_hf.train", "eval", "--adapter", str(out), "--cpu",
        "--predict-dir", str(tmp_path / "two"), "--metrics-file", str(tmp_path / "two.json"),
    ]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["num_pixels"] == single["num_pixels"] and two["f1"] == single["f1"]
    masks = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert len(masks) == 5 and masks == sorted(p.name for p in (tmp_path / "two").glob("*.png"))
    for name in masks:
        one = np.asarray(PIL.Image.open(tmp_path / "one" / name))
        assert np.array_equal(one, np.asarray(PIL.Image.open(tmp_path / "two" / name)))
