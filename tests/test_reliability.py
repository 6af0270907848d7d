"""Reliability and security, driven through the CLI as a user would: nothing a user owns is deleted, no checkpoint
runs code, no write leaves the folder the user named, two runs never share a folder, a save cut short is detected,
and every user error is one line naming the file, with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from test_train import (
    ENV,
    same,
    train_command,
)

import upetu_hf
from upetu_hf.train import load_trained_model
from upetu_hf.train.checkpoint import list_checkpoints
from upetu_hf.train.cli import eval_main, main
from upetu_hf.train.output_dir import LOCK_FILE


@pytest.fixture(autouse=True, scope="module")
def _umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def run_args(assets, out: Path, *extra: str, model: Path | str | None = None) -> list[str]:
    return [
        "classification",
        "--model", str(model or assets["checkpoint"]),
        "--data", str(assets["images"]),
        "--output-dir", str(out),
        "--train-fraction", "0.5",
        "--batch-size", "4",
        "--epochs", "1",
        *extra,
    ]  # fmt: skip


def train_cli(args: list[str], capsys) -> tuple[int, str]:
    """Run `upetu-train` in this process; the exit code and the last line of stderr."""
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def eval_cli(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = eval_main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(assets, tmp_path_factory) -> Path:
    """A 2-epoch UPetu run that kept its end-of-epoch checkpoints."""
    out = tmp_path_factory.mktemp("finished") / "run"
    code = main(
        run_args(assets, out, "--epochs", "2", "--bits", "2", "--keep-checkpoints", "--logging-steps", "1")
    )
    assert code == 0
    return out


# ---------------------------------------------------------------------------------------------- 1. --overwrite
def test_overwrite_never_deletes_the_model_or_files_of_no_run(assets, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(assets["checkpoint"], model)
    (model / "README.md").write_text("my model\n")
    (model / "logs").mkdir()
    (model / "logs" / "notes.txt").write_text("mine\n")
    before = snapshot(model)

    code, error = train_cli(run_args(assets, model, "--overwrite", model=model), capsys)
    assert code == 2 and "holds the model being trained from" in error
    assert snapshot(model) == before

    other = tmp_path / "other"
    shutil.copytree(model, other)
    code, error = train_cli(run_args(assets, other, "--overwrite"), capsys)
    assert code == 2 and "holds no upetu-train run" in error and str(other) in error
    assert snapshot(other) == before
    code, error = train_cli(run_args(assets, other), capsys)  # the refusal does not recommend --overwrite
    assert code == 2 and "is not empty" in error and "Pass --overwrite" not in error
    assert snapshot(other) == before


def test_overwrite_removes_only_the_previous_runs_own_files(assets, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("mine\n")
    (run / "logs" / "mine.txt").write_text("mine\n")
    (run / "checkpoints" / "keep.txt").write_text("mine\n")
    assert [p.name for p in list_checkpoints(run)] == ["step_2", "step_4"]

    code, error = train_cli(run_args(assets, run, "--overwrite", "--r", "4"), capsys)
    assert code == 0, error
    for mine in ("notes.txt", "logs/mine.txt", "checkpoints/keep.txt"):
        assert (run / mine).read_text() == "mine\n", mine
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["keep.txt"]  # old step folders removed
    assert json.loads((run / "adapter_config.json").read_text())["r"] == 4
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1]
    assert not (run / LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------------- 2. pickles
class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def test_a_planted_pickle_payload_never_runs(finished_run, tmp_path, capsys, assets):
    run = tmp_path / "copied"
    shutil.copytree(finished_run, run)
    step = list_checkpoints(run)[0]
    marker = tmp_path / "PWNED"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):  # where Accelerate kept its pickles
        torch.save(Payload(marker), step / name)
    live = tmp_path / "live"
    torch.save(Payload(live), tmp_path / "live.pkl")
    torch.load(tmp_path / "live.pkl", weights_only=False)
    assert live.read_text() == "payload ran" and not marker.exists()  # the payload is live when unpickled
    old = tmp_path / "old" / "step_2"
    shutil.copytree(step, old)

    code, error = train_cli(
        run_args(assets, run, "--epochs", "2", "--bits", "2", "--resume-from-checkpoint", str(step)), capsys
    )
    assert code == 0, error
    assert not marker.exists()
    resumed = json.loads((run / "metrics.json").read_text())
    assert same(resumed["test"], json.loads((finished_run / "metrics.json").read_text())["test"])

    # a checkpoint whose state exists only as pickles (an older format) is refused, and nothing runs
    for name in ("optimizer.safetensors", "training_state.json"):
        (old / name).unlink()
    code, error = train_cli(
        run_args(assets, tmp_path / "fresh", "--resume-from-checkpoint", str(old)), capsys
    )
    assert code == 2 and "never loaded" in error and str(old) in error
    assert not marker.exists()
    assert not any(p.suffix in (".pkl", ".bin", ".pt") for p in list_checkpoints(finished_run)[0].iterdir())


# ---------------------------------------------------------------------------------------------- 3. traversal
def test_prediction_names_never_leave_the_predict_dir(assets, tmp_path, capsys):
    run = tmp_path / "seg"
    args = ["segmentation", "--model", str(assets["checkpoint"]), "--data", str(assets["segmentation"]),
            "--output-dir", str(run), "--train-fraction", "0.5", "--epochs", "1", "--batch-size", "2",
            "--image-size", "32", "--head-hidden-size", "8", "--checkpointing-steps", "no"]  # fmt: skip
    assert train_cli(args, capsys)[0] == 0

    from datasets import Dataset, Features, Image, Value

    images = sorted((assets["segmentation"] / "images").iterdir())[:4]
    escape_abs = tmp_path / "abs_escape"
    names = ["../../escape_up", str(escape_abs), "sub/dir/nested", ".."]
    Dataset.from_dict(
        {
            "image": [str(p) for p in images],
            "mask": [str(assets["segmentation"] / "masks" / p.name) for p in images],
            "name": names,
        },
        features=Features({"image": Image(), "mask": Image(), "name": Value("string")}),
    ).save_to_disk(tmp_path / "hostile")
    predict = tmp_path / "deep" / "preds"
    code, error = eval_cli(
        [
            "--adapter",
            str(run),
            "--data",
            str(tmp_path / "hostile"),
            "--split",
            "all",
            "--predict-dir",
            str(predict),
        ],
        capsys,
    )
    assert code == 0, error
    written = sorted(p.name for p in predict.iterdir())
    assert len(written) == 4 and all(n.endswith(".png") and not n.startswith(".") for n in written)
    assert (
        "escape_up.png" not in written and "_.._escape_up.png" in written and "sub_dir_nested.png" in written
    )
    pngs_outside = [
        p for p in tmp_path.rglob("*.png") if predict not in p.parents and "landcover" not in str(p)
    ]
    assert pngs_outside == [] and not escape_abs.with_suffix(".png").exists()
    assert not (tmp_path / "escape_up.png").exists() and not (tmp_path.parent / "escape_up.png").exists()


# ---------------------------------------------------------------------------------------------- 4. lock
def test_a_second_run_into_the_same_folder_is_refused(assets, tmp_path, capsys):
    out = tmp_path / "shared"
    first = subprocess.Popen(
        train_command() + run_args(assets, out, "--epochs", "5000", "--checkpointing-steps", "no", "--cpu"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while not (out / "run_config.json").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        lock = json.loads((out / LOCK_FILE).read_text())
        assert lock["pid"] == first.pid
        before = snapshot(out)
        before.pop("logs/log.jsonl", None)
        for extra in ([], ["--overwrite"], ["--resume-from-checkpoint", "latest"]):
            code, error = train_cli(run_args(assets, out, *extra), capsys)
            assert code == 2, extra
            if extra[:1] != ["--resume-from-checkpoint"]:
                assert f"is in use by another upetu-train run (pid {first.pid}" in error, error
        after = snapshot(out)
        after.pop("logs/log.jsonl", None)
        assert after == before  # the refused runs changed nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_FILE).is_file()  # a killed run leaves its lock behind ...
    code, error = train_cli(run_args(assets, out, "--overwrite"), capsys)
    assert code == 0, error  # ... which is stale once its process is gone
    assert not (out / LOCK_FILE).exists() and (out / "manifest.json").is_file()


# ---------------------------------------------------------------------------------------------- 5. saves
def test_a_save_cut_short_is_refused_when_loading(finished_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    model, _ = load_trained_model(str(run))
    other = upetu_hf.UPetuConfig(**{**model.peft_config["default"].to_dict(), "bits": 1})
    model.add_adapter("one_bit", other)
    real_replace, moves = os.replace, []

    def killed_between_files(src, dst):
        if Path(dst).parent == run:  # a move into the folder (not a temporary write inside it)
            moves.append(Path(dst).name)
        if len(moves) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(upetu_hf.hub.os, "replace", killed_between_files)
    with pytest.raises(KeyboardInterrupt):
        upetu_hf.save_adapter(model, run, adapter_name="one_bit")
    monkeypatch.undo()
    assert json.loads((run / "adapter_config.json").read_text())["bits"] == 2  # old config, new 1-bit weights
    code, error = eval_cli(["--adapter", str(run)], capsys)
    assert code == 2 and f"{run / 'adapter_model.safetensors'}" in error and "cut short" in error


def test_mismatched_config_and_weights_are_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "manifest.json").unlink(missing_ok=True)  # as an older save, or one copied by hand, would be
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "bits": 4}))
    code, error = eval_cli(["--adapter", str(run)], capsys)
    assert (
        code == 2 and "adapter_model.safetensors" in error and "does not match" in error and "bits" in error
    )


def test_the_final_save_needs_no_writable_parent(assets, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "read-only"
    out = parent / "run"
    out.mkdir(parents=True)
    real = {name: getattr(tempfile, name) for name in ("mkdtemp", "mkstemp")}
    refused = []

    def guarded(name):
        def call(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == parent.resolve():
                refused.append(dir)
                raise PermissionError(13, "Permission denied", str(dir))  # a non-root user gets this
            return real[name](*args, dir=dir, **kwargs)

        return call

    for name in real:
        monkeypatch.setattr(tempfile, name, guarded(name))
    parent.chmod(0o555)
    try:
        code, error = train_cli(run_args(assets, out), capsys)
    finally:
        parent.chmod(0o755)
    assert code == 0, error
    assert refused == [] and [p.name for p in parent.iterdir()] == ["run"]
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json", "metrics.json"} <= {
        p.name for p in out.iterdir()
    }


# ---------------------------------------------------------------------------------------------- 6. labels
def test_bad_mask_values_fail_before_training(assets, tmp_path, capsys):
    data = tmp_path / "landcover"
    shutil.copytree(assets["segmentation"], data)
    bad = data / "masks" / "tile_4.png"
    mask = np.asarray(PIL.Image.open(bad)).copy()
    mask[0, :12] = np.arange(7, 19)
    PIL.Image.fromarray(mask).save(bad)
    out = tmp_path / "out"
    args = ["segmentation", "--model", str(assets["checkpoint"]), "--data", str(data), "--output-dir", str(out),
            "--train-fraction", "0.5", "--epochs", "5", "--batch-size", "2", "--image-size", "32",
            "--head-hidden-size", "8"]  # fmt: skip
    started = time.perf_counter()
    code, error = train_cli(args, capsys)
    assert code == 2 and str(bad) in error and "[7, 8, 9, 10, 11, 12, 13, 14, ...]" in error
    assert not out.exists() and time.perf_counter() - started < 30


# ---------------------------------------------------------------------------------------------- 7. resume
def test_resume_compares_the_resolved_configuration(assets, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    step = list_checkpoints(run)[0]
    model = str(assets["checkpoint"]) + "/"
    code, error = train_cli(
        run_args(assets, run, "--epochs", "2", "--bits", "2", "--r", "16", "--codebook", "lloyd",
                 "--keep-checkpoints", "--resume-from-checkpoint", str(step), model=model),
        capsys,
    )  # fmt: skip
    assert code == 0, error
    code, error = train_cli(
        run_args(assets, run, "--epochs", "2", "--bits", "4", "--resume-from-checkpoint", str(step)), capsys
    )
    assert code == 2 and "different model (bits: checkpoint 2, this run 4)" in error


# ---------------------------------------------------------------------------------------------- 9. errors
def test_user_errors_are_one_line_naming_the_file(assets, finished_run, tmp_path, capsys):
    missing_model = tmp_path / "runs" / "nope" / "model"
    code, error = train_cli(run_args(assets, tmp_path / "a", model=missing_model), capsys)
    assert code == 2 and f"--model {missing_model}: no such folder" in error and "Repo id" not in error

    truncated = tmp_path / "truncated-model"
    shutil.copytree(assets["checkpoint"], truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, error = train_cli(run_args(assets, tmp_path / "b", model=truncated), capsys)
    assert code == 2 and str(weights) in error and "truncated or corrupt" in error

    for name in ("run_config.json", "adapter_config.json"):
        run = tmp_path / f"bad-{name}"
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("checkpoints"))
        (run / name).write_text('{"arguments": ')
        code, error = eval_cli(["--adapter", str(run)], capsys)
        assert code == 2 and f"{run / name} is not valid JSON" in error, error

    run = tmp_path / "no-weights"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "adapter_model.safetensors").unlink()
    code, error = eval_cli(["--adapter", str(run)], capsys)
    assert code == 2 and f"{run / 'adapter_model.safetensors'} is missing" in error and "hf.co" not in error

    forbidden = Path("/sys/upetu-reliability-test")  # not writable, even for root
    code, error = train_cli(run_args(assets, forbidden), capsys)
    assert code == 2 and f"permission denied for {forbidden}" in error and "Traceback" not in error


# ---------------------------------------------------------------------------------------------- 10. smaller
def test_outputs_follow_the_umask(finished_run, tmp_path, capsys):
    for path in [p for p in finished_run.rglob("*") if p.is_file()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # the suite runs with umask 022
    predict = tmp_path / "preds"
    assert eval_cli(["--adapter", str(finished_run), "--predict-dir", str(predict)], capsys)[0] == 0
    assert stat.S_IMODE((predict / "predictions.csv").stat().st_mode) == 0o644


def test_resuming_leaves_the_log_as_an_uninterrupted_run_wrote_it(assets, finished_run, tmp_path, capsys):
    def entries(run: Path) -> list[dict]:
        lines = (run / "logs" / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "train/samples_per_second")}
                for line in lines]  # fmt: skip

    reference = entries(finished_run)
    assert [e["step"] for e in reference if "test/accuracy" in e] == [
        2,
        4,
        4,
    ]  # epochs 1, 2, then the final test
    for step in list_checkpoints(finished_run):  # mid-run, and the final end-of-epoch checkpoint
        run = tmp_path / step.name
        shutil.copytree(finished_run, run)
        code, error = train_cli(
            run_args(assets, run, "--epochs", "2", "--bits", "2", "--keep-checkpoints", "--logging-steps", "1",
                     "--resume-from-checkpoint", str(run / "checkpoints" / step.name)),
            capsys,
        )  # fmt: skip
        assert code == 0, error
        assert entries(run) == reference, step.name
