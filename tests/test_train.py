"""Training through Accelerate: the CLI end to end, exact resume after SIGKILL, the three tasks, the baselines,
clean errors on bad input, and the pieces (weight decay, reproducible data, atomic checkpoints)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.data_loader import skip_first_batches
from conftest import REPO_ROOT
from safetensors.torch import load_file
from transformers import ConvNextConfig, ConvNextForImageClassification

import upetu_hf
from upetu_hf.data import IMAGENET_MEAN, IMAGENET_STD
from upetu_hf.train import EvalArguments, TrainingArguments, evaluate_model, train
from upetu_hf.train import checkpoint as checkpoint_module
from upetu_hf.train.checkpoint import (
    Trainables,
    check_compatible,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from upetu_hf.train.cli import eval_main, main
from upetu_hf.train.loaders import (
    EpochSampler,
    SeededClassificationTransform,
    TransformedDataset,
    make_loader,
    set_epoch,
)
from upetu_hf.train.methods import apply_method, parameter_groups
from upetu_hf.train.tracking import truncate_log

ENV = dict(
    os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false"
)


# ---------------------------------------------------------------------------------------------- fixtures
def write_checkpoint(folder: Path, hidden_sizes=(8, 16, 32, 64), seed: int = 0, image_size: int = 32) -> Path:
    """A tiny ConvNeXt classification checkpoint (what a Hub id would resolve to) with an image processor."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=list(hidden_sizes), num_labels=3)
        ConvNextForImageClassification(config).save_pretrained(folder)
    processor = {
        "image_processor_type": "ConvNextImageProcessor",
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "size": {"shortest_edge": image_size},
        "crop_pct": 1.0,
        "resample": 2,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def noisy_image(rng: np.random.Generator, size: int, mean: np.ndarray) -> PIL.Image.Image:
    return PIL.Image.fromarray((rng.normal(0, 70, (size, size, 3)) + mean).clip(0, 255).astype(np.uint8))


def write_class_folder(
    root: Path, classes: int = 3, per_class: int = 6, size: int = 40, seed: int = 0
) -> Path:
    """`root/<class>/*.png`: noisy images whose mean colour depends (weakly) on the class."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        mean = np.full(3, 90.0)
        mean[c % 3] += 60
        for i in range(per_class):
            noisy_image(rng, size, mean).save(folder / f"{c}_{i}.png")
    return root


def write_segmentation_folder(root: Path, count: int = 6, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        mask = np.zeros((size, size), np.uint8)
        mask[:, size // 3 :] = 1
        mask[: size // 4, :] = 2
        mask[-4:, -4:] = 255
        image = np.stack([mask * 60.0 + 40] * 3, axis=-1) + rng.normal(0, 30, (size, size, 3))
        PIL.Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / f"tile_{i}.png")
        PIL.Image.fromarray(mask).save(root / "masks" / f"tile_{i}.png")
    (root / "classes.json").write_text(
        json.dumps({"0": "soil", "1": "water", "2": "forest", "255": "ignore"})
    )
    return root


def write_change_folder(root: Path, count: int = 4, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True)
    for i in range(count):
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        b = a.copy()
        label = np.zeros((size, size), np.uint8)
        label[8:24, 8 + i : 30 + i] = 255
        b[label > 0] = 255 - b[label > 0]
        PIL.Image.fromarray(a).save(root / "A" / f"pair_{i}.png")
        PIL.Image.fromarray(b).save(root / "B" / f"pair_{i}.png")
        PIL.Image.fromarray(label).save(root / "label" / f"pair_{i}.png")
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    return {
        "checkpoint": write_checkpoint(root / "convnext-tiny"),
        "other_checkpoint": write_checkpoint(root / "convnext-other", hidden_sizes=(8, 16, 24, 48)),
        "images": write_class_folder(root / "scenes"),
        "segmentation": write_segmentation_folder(root / "landcover"),
        "change_a": write_change_folder(root / "cd_a", seed=1),
        "change_b": write_change_folder(root / "cd_b", seed=2),
    }


def classification_args(assets, out: Path, *extra: str) -> list[str]:
    return [
        "classification",
        "--model", str(assets["checkpoint"]),
        "--data", str(assets["images"]),
        "--output-dir", str(out),
        "--train-fraction", "0.5",
        *extra,
    ]  # fmt: skip


def train_command() -> list[str]:
    """The installed `upetu-train` console script (CI installs the project), else `python -m upetu_hf.train`."""
    script = Path(sys.executable).with_name("upetu-train")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "upetu_hf.train"]


def same(a, b) -> bool:
    """Equality of (nested) metrics where NaN equals NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def tensors_equal(file_a: Path, file_b: Path) -> bool:
    a, b = load_file(str(file_a)), load_file(str(file_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- end to end
def test_cli_end_to_end_classification(assets, tmp_path):
    out = tmp_path / "run"
    args = classification_args(
        assets, out, "--validation-fraction", "0.34", "--epochs", "2", "--batch-size", "4", "--bits", "2",
        "--r", "4", "--seed", "1", "--logging-steps", "1",
    )  # fmt: skip
    proc = subprocess.run(train_command() + args, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)  # stdout is the machine-readable summary only

    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "logs", "manifest.json", "metrics.json",
        "run_config.json",
    ]  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection_split"] == "validation" and metrics["best_epoch"] in (1, 2)
    assert metrics["test"]["num_samples"] == 9 and metrics["validation"]["num_samples"] == 3
    assert summary["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["parameters"]["adapter"] > 0 and metrics["parameters"]["head"] == 64 * 3 + 3
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "UPETU" and adapter_config["bits"] == 2 and adapter_config["r"] == 4
    assert adapter_config["modules_to_save"] == ["classifier"]
    card = (out / "README.md").read_text()
    assert (
        "library_name: peft" in card and f"| eval test_accuracy | {metrics['test']['accuracy']:.4f} |" in card
    )
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["arguments"]["method"] == "upetu" and run_config["arguments"]["lr"] == 1e-2
    assert run_config["class_names"] == ["class_0", "class_1", "class_2"]
    log = [json.loads(line) for line in (out / "logs" / "log.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr", "train/samples_per_second"} <= set(log[0])
    assert sum("validation/accuracy" in r for r in log) == 2 and sum("test/accuracy" in r for r in log) == 1

    # the adapter reloads (packed codes) and reproduces the reported test metrics
    predictions = tmp_path / "predictions"
    eval_file = tmp_path / "eval.json"
    assert (
        eval_main(
            ["--adapter", str(out), "--metrics-file", str(eval_file), "--predict-dir", str(predictions)]
        )
        == 0
    )
    evaluated = json.loads(eval_file.read_text())
    assert evaluated["accuracy"] == metrics["test"]["accuracy"]
    assert same({k: v for k, v in evaluated.items() if k not in ("split", "data")}, metrics["test"])
    rows = (predictions / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 9
    correct = sum(r.split(",")[3] == r.split(",")[-1] for r in rows[1:])
    assert correct / 9 == pytest.approx(metrics["test"]["accuracy"])


def test_resume_after_sigkill_ends_with_the_same_weights(assets, tmp_path):
    common = ["--epochs", "3", "--batch-size", "2", "--checkpointing-steps", "2", "--keep-checkpoints",
              "--save-total-limit", "10", "--seed", "7", "--drop-path-rate", "0.2", "--cpu"]  # fmt: skip
    reference = tmp_path / "reference"
    assert main(classification_args(assets, reference, *common)) == 0

    killed = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(train_command() + classification_args(assets, killed, *common), env=ENV,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 240
        while (
            not (killed / "checkpoints" / "step_2").is_dir()
            and proc.poll() is None
            and time.time() < deadline
        ):
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (killed / "metrics.json").exists() and not (killed / "adapter_model.safetensors").exists()
    for complete in list_checkpoints(killed):  # whatever was renamed into place is complete
        assert resolve_checkpoint(str(complete), killed) == complete
        assert tensors_equal(
            complete / "model.safetensors", reference / "checkpoints" / complete.name / "model.safetensors"
        )

    assert main(classification_args(assets, killed, *common, "--resume-from-checkpoint")) == 0
    assert not any(p.name.startswith(".tmp") for p in (killed / "checkpoints").iterdir())
    assert tensors_equal(killed / "adapter_model.safetensors", reference / "adapter_model.safetensors")
    last = list_checkpoints(reference)[-1]
    assert last.name == "step_12"
    assert tensors_equal(killed / "checkpoints" / last.name / "model.safetensors", last / "model.safetensors")
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    resumed_metrics = json.loads((killed / "metrics.json").read_text())
    assert same(ref_metrics["history"], resumed_metrics["history"])
    assert same(ref_metrics["test"], resumed_metrics["test"])
    steps = [json.loads(line)["step"] for line in (killed / "logs" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # lines logged after the resumed checkpoint by the killed run were dropped


def test_dense_tasks_train_evaluate_and_write_masks(assets, tmp_path):
    common = dict(model=str(assets["checkpoint"]), train_fraction=0.5, epochs=1, batch_size=2, image_size=32,
                  head_hidden_size=8, checkpointing_steps="no")  # fmt: skip
    seg_out = tmp_path / "seg"
    seg = train(
        TrainingArguments(task="segmentation", data=str(assets["segmentation"]), output_dir=seg_out, **common)
    )
    assert set(seg["test"]["per_class_iou"]) == {"soil", "water", "forest"}
    assert json.loads((seg_out / "adapter_config.json").read_text())["modules_to_save"] == [
        "decode_head", "auxiliary_head",
    ]  # fmt: skip
    masks = tmp_path / "seg_masks"
    evaluated = evaluate_model(EvalArguments(adapter=str(seg_out), predict_dir=str(masks)))
    assert same(evaluated, seg["test"])
    written = sorted(masks.glob("*.png"))
    assert len(written) == 3
    values = np.unique(np.concatenate([np.asarray(PIL.Image.open(p)).ravel() for p in written]))
    assert set(values.tolist()) <= {0, 1, 2} and np.asarray(PIL.Image.open(written[0])).shape == (64, 64)

    cd_out = tmp_path / "cd"
    cd = train(
        TrainingArguments(task="change_detection", data=[str(assets["change_a"]), str(assets["change_b"])],
                          output_dir=cd_out, method="lora", **common)
    )  # fmt: skip
    assert {"f1", "iou", "precision", "recall", "kappa"} <= set(cd["test"])
    masks = tmp_path / "cd_masks"
    evaluated = evaluate_model(EvalArguments(adapter=str(cd_out), predict_dir=str(masks)))
    assert same(evaluated, cd["test"])
    written = sorted(masks.glob("*.png"))
    assert len(written) == 4
    assert set(np.unique(np.asarray(PIL.Image.open(written[0]))).tolist()) <= {0, 255}


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def whoami(self):  # the push's precondition, checked before training
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        files = sorted(
            str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*")
        )
        FakeHfApi.calls.append(("upload_folder", kwargs, files))
        return "commit"


def test_full_fine_tuning_saves_the_model_and_pushes_to_hub(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(upetu_hf.hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    out = tmp_path / "full"
    results = train(
        TrainingArguments(task="classification", model=str(assets["checkpoint"]), data=str(assets["images"]),
                          output_dir=out, method="full", train_fraction=0.5, epochs=1, batch_size=4,
                          push_to_hub=True, hub_model_id="someone/full-run", hub_private=True)
    )  # fmt: skip
    assert {"config.json", "model.safetensors", "README.md", "metrics.json", "run_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert "library_name: transformers" in (out / "README.md").read_text()
    assert results["parameters"]["trainable"] == results["parameters"]["total"]
    assert results["hub_model_id"] == "someone/full-run"
    (create, repo, kwargs), (upload, upload_kwargs, files) = FakeHfApi.calls
    assert (create, repo, kwargs["private"]) == ("create_repo", "someone/full-run", True)
    assert upload == "upload_folder" and upload_kwargs["repo_id"] == "someone/full-run"
    assert "checkpoints/**" in upload_kwargs["ignore_patterns"] and "metrics.json" in files
    evaluated = evaluate_model(EvalArguments(adapter=str(out)))
    assert same(evaluated, results["test"])


def test_trained_run_loads_from_a_hub_repo(finished_run, tmp_path):
    """`upetu-eval --adapter org/name` resolves the run through the Hub (here: an offline cache)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--ucm-run"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in finished_run.iterdir():
        if path.is_file():
            shutil.copy(path, repo / "snapshots" / commit / path.name)
    from upetu_hf.train import load_trained_model

    remote, record = load_trained_model(
        "someone/ucm-run", cache_dir=str(tmp_path / "hub"), local_files_only=True
    )
    local, _ = load_trained_model(str(finished_run))
    assert record.class_names == ["class_0", "class_1", "class_2"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(remote(pixel_values=x).logits, local(pixel_values=x).logits)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def finished_run(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert (
        main(classification_args(assets, out, "--epochs", "1", "--batch-size", "4", "--keep-checkpoints"))
        == 0
    )
    return out


def _bad_inputs(assets, finished_run, root: Path):
    one_class = root / "one_class"
    shutil.copytree(assets["images"] / "class_0", one_class / "class_0")

    from datasets import Dataset, Features, Image, Value

    captions = root / "captions"
    images = sorted(str(p) for p in (assets["images"] / "class_0").iterdir())
    Dataset.from_dict({"image": images, "caption": ["x"] * len(images)},
                      features=Features({"image": Image(), "caption": Value("string")})).save_to_disk(captions)  # fmt: skip

    truncated = root / "truncated"
    shutil.copytree(assets["images"], truncated)
    broken = truncated / "class_1" / "1_3.png"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])

    checkpoint = list_checkpoints(finished_run)[-1]
    return {
        "one class": (["--data", str(one_class)], "Only one class ('class_0')"),
        "no label column": (["--data", str(captions)], "has no column 'label'"),
        "unreadable image": (["--data", str(truncated)], str(broken)),
        "lora with a UPetu flag": (["--method", "lora", "--bits", "2"], "--bits (UPetu)"),
        "checkpoint of a different model": (
            [
                "--model",
                str(assets["other_checkpoint"]),
                "--resume-from-checkpoint",
                str(checkpoint),
                "--epochs",
                "1",
            ],
            "was written for a different model (model:",
        ),
        "not a checkpoint": (
            ["--resume-from-checkpoint", str(assets["images"])],
            "not a complete upetu-train",
        ),
    }


def test_bad_input_fails_clearly_and_writes_nothing(assets, finished_run, tmp_path, capsys):
    cases = _bad_inputs(assets, finished_run, tmp_path)
    capsys.readouterr()
    for case, (extra, message) in cases.items():
        out = tmp_path / "out" / case.replace(" ", "_")
        assert main(classification_args(assets, out) + extra) == 2, case
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in error and error.startswith("upetu-train: error:"), (case, error)
        assert not out.exists(), case


def test_non_empty_output_dir_needs_overwrite_or_resume(assets, finished_run, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()}
    assert main(classification_args(assets, finished_run, "--epochs", "1")) == 2
    error = capsys.readouterr().err
    assert "is not empty" in error and "another upetu-train run" in error and "--overwrite" in error
    assert {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()} == before
    assert main(classification_args(assets, finished_run, "--overwrite", "--resume-from-checkpoint")) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_checkpoint_of_a_differently_shaped_model_is_refused(assets, finished_run):
    checkpoint = list_checkpoints(finished_run)[-1]
    run = json.loads((checkpoint / "run_config.json").read_text())
    args = TrainingArguments.from_dict(run["arguments"])
    model = ConvNextForImageClassification(
        ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 48], num_labels=3)
    )
    with pytest.raises(ValueError, match="does not match this model: .*shape mismatches"):
        check_compatible(checkpoint, args, run["class_names"], apply_method(model, args))


def test_argument_validation():
    base = dict(task="classification", model="m", data="d", output_dir="o")
    for extra, message in [
        (dict(method="lora", bits=2), r"--bits \(UPetu\)"),
        (dict(method="full", r=8), r"--r \(UPetu/LoRA\)"),
        (dict(method="upetu", lora_alpha=8), r"--lora-alpha \(LoRA\)"),
        (dict(bits=3), "UPetuConfig.bits=3 is invalid"),
        (dict(method="sgd"), "--method 'sgd' is invalid"),
        (dict(hub_model_id="a/b"), "only used with --push-to-hub"),
        (dict(train_fraction=1.5), "--train-fraction=1.5 is invalid"),
        (dict(overwrite=True, resume_from_checkpoint="latest"), "exclude each other"),
        (dict(task="change-detection", image_size=100), "multiple of 32"),
        (dict(data=["a", "b"]), "takes one dataset"),
        (dict(task="depth"), "task='depth' is invalid"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainingArguments(**{**base, **extra})
    from upetu_hf.train.cli import build_parser, training_arguments

    parsed = training_arguments(
        build_parser().parse_args(
            ["segmentation", "--model", "m", "--data", "d", "--output-dir", "o", "--class-names", "a", "b",
             "--head-hidden-size", "8", "--resize", "64", "--no-capm", "--stages", "2", "3",
             "--resume-from-checkpoint", "--checkpointing-steps", "50"]
        )
    )  # fmt: skip
    assert (parsed.task, parsed.class_names, parsed.head_hidden_size, parsed.resize) == (
        "segmentation",
        ["a", "b"],
        8,
        64,
    )
    assert (parsed.use_capm, parsed.use_eqam, parsed.stages) == (False, None, [2, 3])
    assert (parsed.resume_from_checkpoint, parsed.checkpointing_steps, parsed.selection_metric) == (
        "latest",
        50,
        "mean_iou",
    )
    parsed = training_arguments(
        build_parser().parse_args(
            ["change-detection", "--model", "m", "--data", "a", "b", "--output-dir", "o"]
        )
    )
    assert (
        parsed.data == ["a", "b"]
        and parsed.selection_metric == "f1"
        and parsed.checkpointing_steps == "epoch"
    )
    args = TrainingArguments(**base, method="lora")
    assert args.lr == 3e-3 and args.selection_metric == "accuracy"
    assert TrainingArguments(**base, lr=0.1).lr == 0.1
    assert TrainingArguments.from_dict(args.to_dict()) == args
    assert "hub_token" not in TrainingArguments(**base, hub_token="secret").to_dict()


# ---------------------------------------------------------------------------------------------- pieces
def tiny_classifier() -> torch.nn.Module:
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_labels=3)
    return ConvNextForImageClassification(config)


def test_methods_choose_the_trainable_parameters():
    base = dict(task="classification", model="m", data="d", output_dir="o")
    trainable = {}
    for method in ("upetu", "lora", "ia3", "linear", "full"):
        model = apply_method(tiny_classifier(), TrainingArguments(**base, method=method))
        trainable[method] = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"classifier.weight", "classifier.bias"}
    assert trainable["linear"] == head
    assert trainable["full"] == {n for n, _ in tiny_classifier().named_parameters()}
    for method, marker in (("upetu", "upetu_"), ("lora", "lora_"), ("ia3", "ia3_")):
        names = trainable[method]
        assert {
            f"base_model.model.classifier.modules_to_save.default.{p}" for p in ("weight", "bias")
        } <= names
        assert all(marker in n or "modules_to_save" in n for n in names), method
    assert any("pwconv1.lora_A" in n for n in trainable["lora"]) and any(
        "pwconv2" in n for n in trainable["ia3"]
    )


def test_weight_decay_only_on_weight_matrices_and_kernels():
    args = TrainingArguments(task="classification", model="m", data="d", output_dir="o")
    model = apply_method(tiny_classifier(), args)
    decay_group, no_decay_group = parameter_groups(model, 0.05)
    assert (decay_group["weight_decay"], no_decay_group["weight_decay"]) == (0.05, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in decay_group["params"]}
    no_decay = {names[id(p)] for p in no_decay_group["params"]}
    assert decay and all(
        n.endswith(("context.latent", "classifier.modules_to_save.default.weight")) for n in decay
    )
    assert any(n.endswith("context.latent") for n in decay)
    # k-bit (default 4-bit) Q-Linear latents are codes with a separate scale: no decay
    for suffix in ("scale.latent", "beta.latent", "prompt.latent", "classifier.modules_to_save.default.bias",
                   "down.weight.latent", "up.weight.latent"):  # fmt: skip
        assert any(n.endswith(suffix) for n in no_decay), suffix
    assert len(decay) + len(no_decay) == sum(p.requires_grad for p in model.parameters())
    # 32-bit Q-Linear weights are ordinary weight matrices: decayed
    full = apply_method(tiny_classifier(), TrainingArguments(task="classification", model="m", data="d",
                                                             output_dir="o", bits=32))  # fmt: skip
    names = {id(p): n for n, p in full.named_parameters()}
    decay = {names[id(p)] for p in parameter_groups(full, 0.05)[0]["params"]}
    assert any(n.endswith("down.weight.latent") for n in decay) and any(
        n.endswith("up.weight.latent") for n in decay
    )


def test_data_order_and_augmentation_depend_only_on_seed_epoch_and_index(assets):
    from upetu_hf.data import load_image_folder

    ds = load_image_folder(assets["images"])

    def dataset(seed):
        return TransformedDataset(
            ds, SeededClassificationTransform(size=32, train=True, seed=seed), seed=seed
        )

    one, two = dataset(5), dataset(5)
    one.set_epoch(1)
    two.set_epoch(1)
    forward = [one[i]["pixel_values"] for i in range(len(ds))]
    backward = [two[i]["pixel_values"] for i in reversed(range(len(ds)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))  # independent of the access order
    two.set_epoch(2)
    assert not all(torch.equal(a, two[i]["pixel_values"]) for i, a in enumerate(forward))
    assert one[3]["index"] == 3 and one[3]["labels"].item() == ds[3]["label"]

    sampler = EpochSampler(len(ds), seed=5)
    sampler.set_epoch(4)
    order = list(sampler)
    assert sorted(order) == list(range(len(ds))) and order == list(sampler)
    sampler.set_epoch(5)
    assert order != list(sampler)

    from upetu_hf.data import classification_collate_fn

    loader = make_loader(dataset(5), 4, classification_collate_fn, seed=5, train=True)
    set_epoch(loader, 1)
    rng_before = torch.get_rng_state()
    full = [b["index"].tolist() for b in loader]
    assert torch.equal(rng_before, torch.get_rng_state())  # data loading leaves the global RNG alone
    skipped = [b["index"].tolist() for b in skip_first_batches(loader, 2)]
    assert skipped == full[2:]


class StubAccelerator:
    """Enough of `Accelerator` for `save_checkpoint` on one process."""

    is_main_process = True
    process_index = 0
    step = 0
    scaler = None

    def wait_for_everyone(self):
        pass

    def get_state_dict(self, model):
        return model.state_dict()


def stub_trainables() -> Trainables:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return Trainables(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))


def test_checkpoint_saves_are_atomic(tmp_path, monkeypatch):
    state, config = {"global_step": 2, "epoch": 0}, {"arguments": {}}
    trainables = stub_trainables()
    save_checkpoint(StubAccelerator(), tmp_path, 2, state, config, {"w": torch.ones(2)}, 2, trainables)

    def killed(accelerator, folder, trainables):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed while saving")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "save_training_state", killed)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(
                StubAccelerator(), tmp_path, 4, dict(state, global_step=4), config, None, 2, trainables
            )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2"]
    assert resolve_checkpoint("latest", tmp_path).name == "step_2"
    assert not (tmp_path / "checkpoints" / ".tmp-step_4").exists()  # the torn save removed its folder
    for step in (4, 6, 8):
        save_checkpoint(
            StubAccelerator(), tmp_path, step, dict(state, global_step=step), config, None, 2, trainables
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_6", "step_8"]
    assert not (tmp_path / "checkpoints" / ".tmp-step_4").exists()
    assert (
        json.loads((tmp_path / "checkpoints" / "step_8" / "trainer_state.json").read_text())["global_step"]
        == 8
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "step_8").iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.safetensors", "random_states_0.json", "run_config.json",
        "trainer_state.json", "training_state.json",
    ]  # fmt: skip


def test_truncate_log_keeps_complete_lines_up_to_the_checkpoint(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "a": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "a"')
    truncate_log(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_train_package_is_imported_by_nothing_else():
    import re

    importing = re.compile(r"^\s*(from|import)\s+(upetu_hf\.train|\.+train)\b", re.MULTILINE)
    package = REPO_ROOT / "src" / "upetu_hf"
    sources = [p for p in package.rglob("*.py") if "train" not in p.relative_to(package).parts]
    assert sources and not [str(p) for p in sources if importing.search(p.read_text())]


def test_heads_train_at_their_own_learning_rate(assets, tmp_path, monkeypatch):
    """PEFT methods on dense tasks train their (large, fresh) decoders at their task's `head_lr` by default; `head_lr`
    overrides it; classification heads and full fine-tuning keep one rate."""
    from upetu_hf.train import loop
    from upetu_hf.train.methods import is_head_parameter
    from upetu_hf.train.tasks import get_task

    seen = []

    def recording(model, weight_decay, module_lrs=None):
        groups = parameter_groups(model, weight_decay, module_lrs)
        names = {id(p): n for n, p in model.named_parameters()}
        seen.append([(g.get("lr"), [names[id(p)] for p in g["params"]]) for g in groups])
        return groups

    monkeypatch.setattr(loop, "parameter_groups", recording)

    def rates(task: str, data, **options) -> dict[str, set]:
        seen.clear()
        out = tmp_path / f"{task}-{len(list(tmp_path.iterdir()))}"
        result = train(
            TrainingArguments(task=task, model=str(assets["checkpoint"]), data=data, output_dir=out,
                              train_fraction=0.5, epochs=1, batch_size=2, image_size=32, checkpointing_steps="no",
                              **options)
        )  # fmt: skip
        assert result["train"]["steps"] > 0
        by_kind: dict[str, set] = {"head": set(), "other": set()}
        for lr, names in seen[0]:
            for name in names:
                by_kind["head" if is_head_parameter(name) else "other"].add(lr)
        return by_kind

    seg = str(assets["segmentation"])
    seg_lr, cd_lr = get_task("segmentation").head_lr, get_task("change-detection").head_lr
    # an 8-channel UperNet (the default is 512): the searched rate scaled by 512 / 8
    assert rates("segmentation", seg, head_hidden_size=8) == {"head": {seg_lr * 64}, "other": {None}}
    assert 1e-2 not in (seg_lr, cd_lr)  # None: the optimizer's lr, UPetu's 1e-2
    assert rates("segmentation", seg, head_hidden_size=8, head_lr=2e-4) == {"head": {2e-4}, "other": {None}}
    cd = [str(assets["change_a"]), str(assets["change_b"])]
    # (LoRA's default lr equals the change-detection head rate: one group; with another --lr the decoder keeps its own)
    assert rates("change-detection", cd, method="lora", lr=1e-3) == {"head": {cd_lr}, "other": {None}}
    assert rates("segmentation", seg, head_hidden_size=8, method="full") == {"head": {None}, "other": {None}}
    images = str(assets["images"])
    assert rates("classification", images) == {"head": {None}, "other": {None}}
    assert rates("classification", images, head_lr=1e-3) == {"head": {1e-3}, "other": {None}}
    args = TrainingArguments(task="segmentation", model="m", data="d", output_dir="o", method="lora", lr=1e-3)
    assert (args.lr, args.head_lr) == (1e-3, seg_lr)


def test_default_head_lr_scales_inversely_with_the_decoder_width():
    from upetu_hf.train.methods import default_head_lr
    from upetu_hf.train.tasks import get_task

    for task in ("segmentation", "change-detection"):
        base, width = get_task(task).head_lr, get_task(task).decoder_width
        assert default_head_lr(task, "upetu", 1e-2) == default_head_lr(task, "lora", 3e-3, width) == base
        assert default_head_lr(task, "ia3", 3e-3, width // 4) == pytest.approx(4 * base)
        assert default_head_lr(task, "upetu", 1e-2, width * 2) == pytest.approx(base / 2)
        assert default_head_lr(task, "full", 5e-4, 64) == 5e-4  # one rate for everything
    assert default_head_lr("classification", "upetu", 1e-2, 64) == 1e-2
    assert default_head_lr("segmentation", "upetu", 1e-2, 64) == pytest.approx(8e-4)  # the 64-channel search
    # the widths the rule divides by are the ones the task models are built with when no width is given
    from transformers import UperNetConfig

    from upetu_hf.models import ConvNextChangeDetectionConfig

    assert {task: get_task(task).decoder_width for task in ("segmentation", "change-detection")} == {
        "segmentation": UperNetConfig().hidden_size,
        "change-detection": ConvNextChangeDetectionConfig().decoder_hidden_size,
    }
