"""Distributed training for real: two processes on CPU with the gloo backend, started by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from test_train import ENV, same, write_checkpoint

from upetu_hf.train import EvalArguments, evaluate_model


@pytest.fixture
def noise_folder(tmp_path):
    """3 classes x 7 images of pure noise: the labels are not learnable, so predictions are mixed."""
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = tmp_path / "noise" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(7):
            PIL.Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "noise"


SLOW_RANK_1 = """
import os
if os.environ.get("RANK") == "1":  # rank 1 checks its inputs late, as on a busy machine
    import time
    import upetu_hf.train.loop as loop
    check = loop.check_output_dir
    def late_check(*args, **kwargs):
        time.sleep(3)
        return check(*args, **kwargs)
    loop.check_output_dir = late_check
"""


def test_torchrun_two_processes_gloo(tmp_path, noise_folder):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    # The main process must not write into --output-dir before every process has checked it is empty.
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(SLOW_RANK_1)
    env = dict(
        ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "hooks"), ENV.get("PYTHONPATH")]))
    )
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "upetu_hf.train", "classification",
        "--model", str(checkpoint), "--data", str(noise_folder), "--output-dir", str(out),
        "--train-fraction", "0.5", "--epochs", "2", "--batch-size", "2", "--eval-batch-size", "2",
        "--checkpointing-steps", "1", "--keep-checkpoints", "--save-total-limit", "100", "--logging-steps", "1",
        "--cpu",
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    json.loads(proc.stdout)  # one summary: only the main process prints it

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["num_processes"] == 2
    # 12 training images, 2 per process and step: 3 optimizer steps per epoch (6 on one process)
    assert metrics["train"]["steps"] == 6

    # Only the main process writes: one line per logged step / epoch / test, each written once
    records = [json.loads(line) for line in (out / "logs" / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "test/accuracy" in r] == [3, 6, 6]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "checkpoints", "logs", "manifest.json",
        "metrics.json", "run_config.json",
    ]  # fmt: skip
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == [f"step_{i}" for i in range(1, 7)]
    for checkpoint_dir in checkpoints:  # one RNG state per process; everything else once; no pickles
        names = sorted(p.name for p in checkpoint_dir.iterdir())
        assert set(names) - {"best_model.safetensors"} == {
            "model.safetensors", "optimizer.safetensors", "random_states_0.json", "random_states_1.json",
            "run_config.json", "trainer_state.json", "training_state.json",
        }, names  # fmt: skip

    # The two-process evaluation (9 test images, batches of 2 per process: the last batch is padded by
    # Accelerate) equals a single-process evaluation of the same data
    assert metrics["test"]["num_samples"] == 9
    single = evaluate_model(EvalArguments(adapter=str(out), batch_size=4))
    assert same(single, metrics["test"])
    assert 0.0 < metrics["test"]["accuracy"] < 1.0
