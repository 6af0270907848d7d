"""Issue 28, faults round two, through the CLI as a user meets them: non-finite numbers stop a run, outputs are
strict JSON, saves are byte-exact, and every expected failure is one line with exit code 2."""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from test_reliability import eval_cli, run_args, snapshot, train_cli
from test_train import write_checkpoint, write_segmentation_folder
from test_train_multiband import multiband_segmentation, seg_argv, write_tif
from transformers import ConvNextForImageClassification

import upetu_hf.train.accelerator
import upetu_hf.train.checkpoint
import upetu_hf.train.loop
from upetu_hf import UPetuConfig
from upetu_hf._files import finite_json, save_tensors, verify_manifest, write_json_atomic
from upetu_hf.data.band_statistics import compute_band_statistics
from upetu_hf.hub import save_adapter
from upetu_hf.train.accelerator import make_accelerator
from upetu_hf.train.checkpoint import list_checkpoints
from upetu_hf.train.cli import is_user_error, main, user_error_message
from upetu_hf.train.output_dir import OutputLock


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


# ---------------------------------------------------------------------------------------------- 6. exactness
def test_save_adapter_writes_the_same_bytes_every_time(tmp_path):
    model = get_peft_model(ConvNextForImageClassification(tiny_config()), UPetuConfig(r=2, bits=2))
    saves = [snapshot(save_adapter(model, tmp_path / f"save_{i}")) for i in range(4)]
    assert all(save == saves[0] for save in saves[1:])
    reloaded = load_file(tmp_path / "save_0" / "adapter_model.safetensors")
    assert reloaded.keys() == load_file(tmp_path / "save_1" / "adapter_model.safetensors").keys()


@pytest.fixture(scope="module")
def checkpointed_run(assets, tmp_path_factory) -> Path:
    """A 3-epoch run (2 steps an epoch) with a checkpoint every step and a log line every 4 steps."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    assert main(run_args(assets, out, *CHECKPOINTED)) == 0
    return out


CHECKPOINTED = (
    "--epochs",
    "3",
    "--checkpointing-steps",
    "1",
    "--logging-steps",
    "4",
    "--keep-checkpoints",
    "--save-total-limit",
    "9",
)


def test_the_manifest_covers_every_file_of_a_finished_run(checkpointed_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    listed = set(strict_json(run / "manifest.json")["files"])
    expected = {"metrics.json", "run_config.json", "logs/log.jsonl", "adapter_model.safetensors", "README.md"}
    assert expected <= listed
    verify_manifest(run)
    (run / "metrics.json").write_text("{}")  # edited after the run: detected
    with pytest.raises(ValueError, match="metrics.json differs from the file that was saved"):
        verify_manifest(run)


def test_a_run_resumed_inside_a_logging_window_logs_what_an_uninterrupted_run_logs(
    assets, checkpointed_run, tmp_path, capsys
):
    def entries(run: Path) -> list[dict]:
        lines = (run / "logs" / "log.jsonl").read_text().splitlines()
        drop = ("time", "train/samples_per_second")
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]

    reference = entries(checkpointed_run)
    assert [e["step"] for e in reference if "train/loss" in e] == [4]
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    resume = ("--resume-from-checkpoint", str(run / "checkpoints" / "step_3"))
    code, err = train_cli(run_args(assets, run, *CHECKPOINTED, *resume), capsys)
    assert code == 0, err
    assert entries(run) == reference


# ---------------------------------------------------------------------------------------------- 5. one error style
def one_line(code: int, err: str, *parts: str) -> bool:
    return code == 2 and "\n" not in err and err.startswith("upetu-") and all(p in err for p in parts)


def test_a_read_only_output_dir_is_one_line(assets, tmp_path, capsys, monkeypatch):
    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))

    monkeypatch.setattr(OutputLock, "_create", read_only)
    code, err = train_cli(run_args(assets, tmp_path / "out"), capsys)
    assert one_line(code, err, "is on a read-only file system", "choose a writable --output-dir"), err


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_temporary_folder(
    assets, tmp_path, capsys, monkeypatch
):
    saves = []

    def full_disk(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) > 2:  # the first checkpoint (model, optimizer) fits
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save_tensors(tensors, path, metadata)

    monkeypatch.setattr(upetu_hf.train.checkpoint, "save_tensors", full_disk)
    out = tmp_path / "out"
    code, err = train_cli(run_args(assets, out, "--checkpointing-steps", "1"), capsys)
    assert one_line(code, err, "no space left", "saving checkpoint", "--resume-from-checkpoint latest"), err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]


def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_previous_one(
    assets, checkpointed_run, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    weights = run / "checkpoints" / "step_4" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tensor data: the header still parses
    weights.write_bytes(bytes(data))
    for resume in ("latest", str(run / "checkpoints" / "step_4")):
        (run / "checkpoints" / "step_5").rename(
            run / "checkpoints" / "aside_5"
        ) if resume == "latest" else None
        (run / "checkpoints" / "step_6").rename(
            run / "checkpoints" / "aside_6"
        ) if resume == "latest" else None
        code, err = train_cli(
            run_args(assets, run, *CHECKPOINTED, "--resume-from-checkpoint", resume), capsys
        )
        previous = run / "checkpoints" / "step_3"
        assert one_line(code, err, str(weights), f"--resume-from-checkpoint {previous}"), err


def test_an_adapter_config_without_peft_type_names_the_file_and_the_field(checkpointed_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((run / "adapter_config.json").read_text())
    del config["peft_type"]
    (run / "adapter_config.json").write_text(json.dumps(config))
    code, err = eval_cli(["--adapter", str(run)], capsys)
    assert one_line(code, err, f"{run / 'adapter_config.json'} has no 'peft_type' field"), err


def test_a_file_name_that_is_not_utf8_is_named(assets, tmp_path, capsys):
    images = tmp_path / "scenes"
    shutil.copytree(assets["images"], images)
    first = sorted((images / "class_0").iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9.jpg"))
    code, err = train_cli([*run_args(assets, tmp_path / "out"), "--data", str(images)], capsys)
    assert one_line(code, err, "class_0/caf\\xe9.jpg is not valid UTF-8", "rename it"), err


def test_push_preconditions_are_checked_before_training(assets, tmp_path, capsys):
    out = tmp_path / "out"  # the suite runs with HF_HUB_OFFLINE=1
    code, err = train_cli(run_args(assets, out, "--push-to-hub", "--hub-model-id", "someone/run"), capsys)
    assert one_line(code, err, "--push-to-hub: the Hub does not answer", "HF_HUB_OFFLINE"), err
    assert not out.exists()
    code, err = train_cli(run_args(assets, out, "--push-to-hub", "--hub-model-id", "some one/ru n"), capsys)
    assert one_line(code, err, "is not a valid Hub repo id"), err


def test_an_interrupt_prints_one_line_with_the_resume_command(assets, tmp_path, capsys, monkeypatch):
    def interrupt(self, epoch):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(upetu_hf.train.loop._Run, "end_epoch", interrupt)
        code, err = train_cli(run_args(assets, out, "--checkpointing-steps", "1"), capsys)
    assert code == 130 and err.startswith("upetu-train: interrupted; resume it with: upetu-train "), err
    command = shlex.split(err.split("resume it with: ", 1)[1])
    assert command[-2:] == ["--resume-from-checkpoint", "latest"]
    assert train_cli(command[1:], capsys)[0] == 0
    assert (out / "metrics.json").is_file()


# ---------------------------------------------------------------------------------------------- 3. inputs checked
def test_an_rgb_run_refuses_multiband_images_at_evaluation(checkpointed_run, tmp_path, capsys):
    scenes = tmp_path / "s2"
    for c in range(3):  # the run's classes, as 13-band uint16 GeoTIFFs
        write_tif(scenes / f"class_{c}" / f"{c}.tif", np.full((13, 40, 40), 1000 + c, np.uint16))
    code, err = eval_cli(
        ["--adapter", str(checkpointed_run), "--data", str(scenes), "--split", "all"], capsys
    )
    assert one_line(code, err, "0.tif has 13 band(s) of uint16 but the run reads RGB images"), err


def test_a_single_band_mask_in_an_rgb_image_folder_is_refused(assets, tmp_path, capsys):
    data = write_segmentation_folder(tmp_path / "seg")
    shutil.copy(data / "masks" / "tile_2.png", data / "images" / "tile_2.png")
    code, err = train_cli(seg_argv(assets["checkpoint"], data, tmp_path / "out"), capsys)
    assert one_line(code, err, "tile_2.png has a single band", "mask"), err
    assert not (tmp_path / "out" / "run_config.json").exists()


def test_num_channels_3_on_rgb_images_keeps_the_rgb_normalisation(assets, tmp_path):
    out = tmp_path / "out"
    assert main(run_args(assets, out, "--num-channels", "3")) == 0
    assert "bands" not in json.loads(
        (out / "run_config.json").read_text()
    )  # read as RGB, as without the option


def test_a_multiband_run_refuses_images_of_another_pixel_type_at_evaluation(assets, tmp_path, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    out = tmp_path / "run"
    assert main(seg_argv(assets["checkpoint"], data, out, "--r", "2")) == 0
    floats = tmp_path / "floats"
    write_tif(floats / "a.tif", np.full((4, 64, 64), 1000.0, np.float32))
    code, err = eval_cli(["--adapter", str(out), "--data", str(floats), "--split", "all"], capsys)
    assert one_line(code, err, "a.tif stores float32 pixels but the run was trained on uint16 images"), err


# ---------------------------------------------------------------------------------------------- 2. devices
def test_a_cuda_build_without_a_gpu_runs_every_process_on_the_cpu(monkeypatch):
    """`torchrun` on a CPU-only machine with a CUDA wheel: the accelerator query says cuda, CUDA is unusable."""
    chosen = []
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda")
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(upetu_hf.train.accelerator, "Accelerator", lambda cpu, **kwargs: chosen.append(cpu))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun: no state reset
    make_accelerator(False, "no")
    assert chosen == [True]


# ---------------------------------------------------------------------------------------------- 7. planted bugs
def test_the_best_epoch_is_selected_on_validation_when_test_disagrees(assets, tmp_path, monkeypatch):
    """Scripted scores: validation peaks at epoch 2, test at epoch 1. The best epoch, its metrics and the final
    test score follow validation."""
    scripted = {
        "validation": [0.5, 0.9, 0.7],
        "test": [0.9, 0.1, 0.5, 0.42],
    }  # test is scored once, at the end
    calls = {"validation": 0, "test": 0}

    def evaluate(self, split):
        calls[split] += 1
        return {"accuracy": scripted[split][calls[split] - 1], "num_samples": 1}

    monkeypatch.setattr(upetu_hf.train.loop._Run, "evaluate", evaluate)
    args = run_args(assets, tmp_path / "run", "--epochs", "3", "--validation-fraction", "0.25")
    assert main(args) == 0
    metrics = strict_json(tmp_path / "run" / "metrics.json")
    assert (metrics["best_epoch"], metrics["selection_split"]) == (2, "validation")
    assert metrics["validation"]["accuracy"] == 0.9 and metrics["test"]["accuracy"] == 0.9
    assert calls == {"validation": 3, "test": 1}
    assert [e["validation/accuracy"] for e in metrics["history"]] == scripted["validation"]


def test_gradient_accumulation_equals_one_larger_batch(assets, tmp_path):
    """Two accumulated batches of 4 take the steps, and follow the learning-rate schedule, of one batch of 8."""
    common = ("--epochs", "3", "--keep-checkpoints", "--warmup-ratio", "0.34", "--lr", "3e-3")
    runs = {
        "accumulated": ("--batch-size", "4", "--gradient-accumulation-steps", "2"),
        "plain": ("--batch-size", "8"),
    }
    for name, extra in runs.items():
        assert main([*run_args(assets, tmp_path / name), *common, *extra]) == 0
    steps = [strict_json(tmp_path / name / "metrics.json")["train"]["steps"] for name in runs]
    assert steps == [3, 3]
    final = [load_file(list_checkpoints(tmp_path / name)[-1] / "model.safetensors") for name in runs]
    lrs = [
        strict_json(list_checkpoints(tmp_path / name)[-1] / "training_state.json")["scheduler"]
        for name in runs
    ]
    assert lrs[0]["_last_lr"] == lrs[1]["_last_lr"]
    for key, value in final[1].items():
        torch.testing.assert_close(final[0][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_every_training_step_starts_from_zero_gradients(assets, tmp_path):
    """Each optimizer step must see only its own batch's gradients: every training forward of the model begins
    with no gradient left over from the step before (a loop that never zeroes them trains on running sums)."""
    clean: list[bool] = []

    def check(module, args):
        if isinstance(module, PeftModel) and module.training and torch.is_grad_enabled():
            grads = [p.grad for p in module.parameters() if p.requires_grad]
            clean.append(all(g is None or not g.any() for g in grads))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        assert main([*run_args(assets, tmp_path / "run"), "--epochs", "2"]) == 0
    finally:
        handle.remove()
    assert len(clean) >= 3 and all(clean), clean


def test_band_statistics_of_images_larger_than_a_chunk_match_numpy(tmp_path):
    """Images taller and wider than the 1,024-row chunk of the streaming pass, in two files of different sizes."""
    rng = np.random.default_rng(0)
    images = [
        rng.normal(1000, 50, (2, 1030, 1100)) + np.arange(1100) / 10,
        rng.normal(900, 80, (2, 40, 1500)),
    ]
    images = [image.astype(np.uint16) for image in images]
    for i, image in enumerate(images):
        write_tif(tmp_path / f"{i}.tif", image)
    stats = compute_band_statistics([tmp_path / "0.tif", tmp_path / "1.tif"])
    pixels = np.concatenate([image.reshape(2, -1) for image in images], axis=1).astype(np.float64)
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, pixels.std(axis=1), rtol=1e-9)
    assert stats.num_pixels == pixels.shape[1]


# ---------------------------------------------------------------------------------------------- 4. checkpoints
def test_peft_checkpoints_hold_what_trains_and_reference_the_frozen_backbone(assets, checkpointed_run):
    checkpoint = list_checkpoints(checkpointed_run)[-1]
    held = set(load_file(checkpoint / "model.safetensors"))
    assert held and not any(".base_layer." in key and "upetu_" not in key for key in held), sorted(held)[:5]
    assert any("upetu_eqam" in key for key in held) and any("modules_to_save" in key for key in held)
    frozen = strict_json(checkpoint / "frozen.json")
    assert (
        frozen["source"] == str(assets["checkpoint"])
        and len(frozen["sha256"]) == 64
        and frozen["tensors"] > 0
    )


def test_a_resume_on_other_frozen_weights_is_refused(assets, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(assets["checkpoint"], model)
    out = tmp_path / "run"
    assert main(run_args(assets, out, "--checkpointing-steps", "1", "--keep-checkpoints", model=model)) == 0
    shutil.rmtree(model)
    write_checkpoint(model, seed=1)  # same architecture and path, other weights
    resume = ("--resume-from-checkpoint", "latest")
    code, err = train_cli(run_args(assets, out, "--checkpointing-steps", "1", *resume, model=model), capsys)
    assert one_line(code, err, f"The frozen weights of --model {model}", "resume with that model"), err


def test_multiband_images_of_mixed_pixel_types_are_refused_at_training(assets, tmp_path, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    write_tif(data / "images" / "tile_3.tif", np.full((4, 64, 64), 1000.0, np.float32))
    code, err = train_cli(seg_argv(assets["checkpoint"], data, tmp_path / "out"), capsys)
    assert one_line(code, err, "different pixel types", "tile_3.tif holds float32"), err


def test_a_failed_write_names_the_file_being_written(tmp_path, monkeypatch):
    """A real full disk fails in `write` or `fsync`, whose OSError names no file; the one line must name it."""

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "run" / "adapter_model.safetensors"
    with pytest.raises(OSError) as caught:
        write_json_atomic(target, {"a": 1})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # the temporary file is gone
    assert str(target) in user_error_message(caught.value)


def test_a_file_size_limit_is_one_line_naming_the_file_and_the_fix():
    err = OSError(errno.EFBIG, "File too large", "/runs/a/checkpoints/.tmp-step_1/model.safetensors")
    assert is_user_error(err)
    message = user_error_message(err)
    assert "\n" not in message and err.filename in message and "ulimit -f" in message


def test_finite_json_writes_numpy_torch_scalars_and_paths_as_strict_json():
    value = {"a": [np.float32(1.5), torch.tensor(float("nan")), (Path("x"), np.int64(3))], "b": float("inf")}
    assert finite_json(value) == {"a": [1.5, None, ["x", 3]], "b": None}
    assert json.loads(json.dumps(finite_json(value), allow_nan=False)) == finite_json(value)
