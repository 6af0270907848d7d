"""Distributed training for real: two processes on CPU with the gloo backend, started by torchrun, against the same
run in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from test_train import ENV, same, write_checkpoint

from upetu_hf.train import EvalArguments, TrainingArguments, evaluate_model, train


@pytest.fixture
def noise_folder(tmp_path):
    """3 classes x 11 images of pure noise: the labels are not learnable, so predictions are mixed. The splits
    (train 0.5, validation 0.25 of it) are 12 / 6 / 15 images: 3 steps of 2 x 2 images per epoch."""
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = tmp_path / "noise" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(11):
            PIL.Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "noise"


HOOKS = """
import os
import time

from safetensors.torch import save_file

import upetu_hf.train.loop as loop

if os.environ.get("RANK") == "1":  # rank 1 checks its inputs late, as on a busy machine
    check = loop.check_output_dir

    def late_check(*args, **kwargs):
        time.sleep(3)
        return check(*args, **kwargs)

    loop.check_output_dir = late_check

finish = loop._Run.finish


def finish_and_dump(run):  # every rank writes the weights it holds after the last step
    state = {k: v.detach().clone().contiguous() for k, v in run.unwrapped.state_dict().items()}
    save_file(state, os.path.join(os.environ["RANK_WEIGHTS"], f"rank{os.environ['RANK']}.safetensors"))
    return finish(run)


loop._Run.finish = finish_and_dump
"""


def test_torchrun_two_processes_gloo_equal_one_process(tmp_path, noise_folder):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    # The main process must not write into --output-dir before every process has checked it is empty.
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(HOOKS)
    (tmp_path / "ranks").mkdir()
    env = dict(
        ENV,
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "hooks"), ENV.get("PYTHONPATH")])),
        RANK_WEIGHTS=str(tmp_path / "ranks"),
    )
    out = tmp_path / "run"
    options = dict(train_fraction=0.5, validation_fraction=0.25, epochs=2, eval_batch_size=2, seed=3)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "upetu_hf.train", "classification",
        "--model", str(checkpoint), "--data", str(noise_folder), "--output-dir", str(out),
        "--train-fraction", "0.5", "--validation-fraction", "0.25", "--epochs", "2", "--seed", "3",
        "--batch-size", "2", "--eval-batch-size", "2",
        "--checkpointing-steps", "1", "--keep-checkpoints", "--save-total-limit", "100", "--logging-steps", "1",
        "--cpu",
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    json.loads(proc.stdout)  # one summary: only the main process prints it

    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "run_config.json").read_text())["splits"] == {
        "train": 12,
        "validation": 6,
        "test": 15,
    }
    assert metrics["selection_split"] == "validation" and metrics["train"]["num_processes"] == 2
    assert metrics["train"]["steps"] == 6  # 12 training images, 2 per process and step: 3 steps per epoch

    # Both ranks hold the same weights after the last step, and they are the weights the main process saved
    ranks = [load_file(str(tmp_path / "ranks" / f"rank{r}.safetensors")) for r in (0, 1)]
    last = load_file(str(out / "checkpoints" / "step_6" / "model.safetensors"))
    assert ranks[0].keys() == ranks[1].keys() and set(last) < set(ranks[0]) and len(last) > 0  # what trains
    assert all(torch.equal(ranks[0][k], ranks[1][k]) and torch.equal(ranks[0][k], last[k]) for k in last)

    # Only the main process writes: one line per logged step / epoch / test, each written once
    records = [json.loads(line) for line in (out / "logs" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "validation/accuracy" in r] == [3, 6]
    assert [r["step"] for r in records if "test/accuracy" in r] == [6]
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "checkpoints", "logs", "manifest.json",
        "metrics.json", "run_config.json",
    ]  # fmt: skip
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == [f"step_{i}" for i in range(1, 7)]
    for checkpoint_dir in checkpoints:  # one RNG state per process; everything else once; no pickles
        names = sorted(p.name for p in checkpoint_dir.iterdir())
        assert set(names) - {"best_model.safetensors"} == {
            "frozen.json", "manifest.json", "model.safetensors", "optimizer.safetensors", "random_states_0.json",
            "random_states_1.json", "run_config.json", "trainer_state.json", "training_state.json",
        }, names  # fmt: skip

    # The same run in one process with the same global batch (4) trains the same model: the same images form
    # each step, DDP averages the two halves' gradients, so the weights agree up to the order of float sums.
    single_out = tmp_path / "single"
    single = train(
        TrainingArguments(
            task="classification", model=str(checkpoint), data=str(noise_folder), output_dir=str(single_out),
            batch_size=4, cpu=True, keep_checkpoints=True, **options,
        )
    )  # fmt: skip
    assert single["train"]["steps"] == 6
    one = load_file(str(single_out / "checkpoints" / "step_6" / "model.safetensors"))
    assert one.keys() == last.keys()
    for key in one:
        torch.testing.assert_close(
            last[key], one[key], rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
        )
    assert [h["train_loss"] for h in metrics["history"]] == pytest.approx(
        [h["train_loss"] for h in single["history"]], rel=1e-5
    )
    assert single["best_epoch"] == metrics["best_epoch"]

    # The two-process evaluation (15 test images, batches of 2 per process: the last batch is padded by
    # Accelerate) counts each image once and equals a single-process evaluation of the same data
    assert metrics["test"]["num_samples"] == 15
    alone = evaluate_model(EvalArguments(adapter=str(out), batch_size=4))
    assert same(alone, metrics["test"])
    assert 0.0 < metrics["test"]["accuracy"] < 1.0
