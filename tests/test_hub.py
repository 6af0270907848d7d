"""Model cards, atomic saves and publishing (with a fake `HfApi`: nothing leaves the machine)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import ConvNextForImageClassification

import upetu_hf
from upetu_hf import UPetuConfig, adapter_card, push_to_hub, save_adapter
from upetu_hf.hub import model_card, save_model, upload_folder, verify_manifest
from upetu_hf.tuner.config import format_metadata


def classifier(name_or_path: str = "org/convnext-rs") -> ConvNextForImageClassification:
    """The same tiny random classifier on every call."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ConvNextForImageClassification(tiny_config(num_labels=3))
    model.name_or_path = name_or_path
    return model


def metadata(card) -> dict:
    text = str(card)
    return yaml.safe_load(text.split("---")[1])


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.calls.append(("upload_folder", kwargs, {p.name: p.read_bytes() for p in folder.iterdir()}))
        return "commit-info"


def test_upetu_card_metadata_and_table():
    model = get_peft_model(classifier(), UPetuConfig(bits=1))
    card = adapter_card(model, adapter_bytes=12_345, metrics={"test_accuracy": 0.5}, datasets=["org/ucm"])
    meta = metadata(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == "org/convnext-rs"
    assert "upetu" in meta["tags"] and "base_model:adapter:org/convnext-rs" in meta["tags"]
    assert meta["datasets"] == ["org/ucm"]
    text = str(card)
    assert "| Q-Linear bit width | 1 |" in text and "| eval test_accuracy | 0.5000 |" in text
    assert "12.3 KB" in text and "import upetu_hf" in text


def test_local_base_model_is_not_put_in_the_card_metadata(tmp_path):
    model = get_peft_model(classifier(str(tmp_path)), UPetuConfig())
    meta = metadata(adapter_card(model, usage="custom usage"))
    assert "base_model" not in meta and not any(t.startswith("base_model:") for t in meta["tags"])
    assert "custom usage" in str(adapter_card(model, usage="custom usage"))


def test_baseline_adapter_card_describes_lora():
    model = get_peft_model(
        classifier(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["pwconv1", "pwconv2"], modules_to_save=["classifier"]),
    )
    card = adapter_card(model, metrics={"test_accuracy": 0.25})
    meta = metadata(card)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"] and "upetu" not in meta["tags"]
    text = str(card)
    assert "# LoRA adapter" in text and "| r | 4 |" in text and "| lora_alpha | 8 |" in text
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert f"| trainable adapter parameters | {lora_params:,} |" in text
    assert "| task-head parameters (modules_to_save) | 195 |" in text


def test_save_adapter_is_complete_and_leaves_no_temporaries(tmp_path):
    model = get_peft_model(classifier(), UPetuConfig(bits=2))
    target = save_adapter(model, tmp_path / "adapter", metrics={"test_accuracy": 1.0})
    assert sorted(p.name for p in target.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    reloaded = PeftModel.from_pretrained(classifier(), target).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model.eval()(x).logits)
    with safe_open(str(target / "adapter_model.safetensors"), framework="pt") as handle:
        recorded = handle.metadata()
    assert recorded == format_metadata(model.peft_config["default"])
    assert (recorded["upetu_bits"], recorded["upetu_codebook"], recorded["upetu_side_bits"]) == (
        "2",
        "lloyd",
        "8",
    )
    manifest = json.loads((target / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    weights = (target / "adapter_model.safetensors").read_bytes()
    assert manifest["files"]["adapter_model.safetensors"] == {
        "bytes": len(weights),
        "sha256": hashlib.sha256(weights).hexdigest(),
    }
    verify_manifest(target)


def test_a_save_cut_short_between_two_files_is_detected(tmp_path, monkeypatch):
    """A kill between the moves of two files (simulated by raising in the second move) leaves the new weights beside
    the old config; the manifest of the previous save then reports the folder as a mix of two saves."""
    target = save_adapter(get_peft_model(classifier(), UPetuConfig(bits=4)), tmp_path / "adapter")
    real_replace, moves = os.replace, []

    def killed_after_the_weights(src, dst):
        if Path(dst).parent == target:  # a move into the folder (not a temporary write inside it)
            moves.append(Path(dst).name)
        if len(moves) == 2:
            raise KeyboardInterrupt("killed between two files")
        real_replace(src, dst)

    monkeypatch.setattr(upetu_hf.hub.os, "replace", killed_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(get_peft_model(classifier(), UPetuConfig(bits=1, r=8)), target)
    monkeypatch.undo()
    assert moves == ["adapter_model.safetensors", "adapter_config.json"]
    assert json.loads((target / "adapter_config.json").read_text())["bits"] == 4  # the old config
    with pytest.raises(
        ValueError, match="adapter_model.safetensors differs from the file that was saved .*cut short"
    ):
        verify_manifest(target)
    assert not [p.name for p in target.iterdir() if p.name.startswith(".tmp-save-")]  # temporaries go
    save_adapter(get_peft_model(classifier(), UPetuConfig(bits=1, r=8)), target)
    verify_manifest(target)  # a complete save heals the folder


def test_save_adapter_writes_only_inside_its_folder(tmp_path, monkeypatch):
    """A writable adapter folder inside a read-only parent: the save must not create anything in the parent."""
    parent = tmp_path / "read-only"
    target = parent / "adapter"
    target.mkdir(parents=True)
    parent.chmod(0o555)
    forbidden = []
    real_mkdtemp, real_mkstemp = tempfile.mkdtemp, tempfile.mkstemp

    def guard(real):
        def call(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == parent.resolve():
                forbidden.append(dir)
                raise PermissionError(13, "Permission denied", str(dir))  # what a non-root user would get
            return real(*args, dir=dir, **kwargs)

        return call

    monkeypatch.setattr(tempfile, "mkdtemp", guard(real_mkdtemp))
    monkeypatch.setattr(tempfile, "mkstemp", guard(real_mkstemp))
    try:
        save_adapter(get_peft_model(classifier(), UPetuConfig()), target)
    finally:
        parent.chmod(0o755)
    assert forbidden == [] and sorted(p.name for p in parent.iterdir()) == ["adapter"]
    assert (target / "manifest.json").is_file() and (target / "adapter_model.safetensors").is_file()


def test_save_model_writes_a_transformers_card(tmp_path):
    model = classifier()
    target = save_model(model, tmp_path / "full", base_model="org/convnext-rs", parameters={"trainable": 10})
    assert {"config.json", "model.safetensors", "README.md", "manifest.json"} <= {
        p.name for p in target.iterdir()
    }
    verify_manifest(target)
    meta = metadata(model_card("org/convnext-rs"))
    assert meta["library_name"] == "transformers" and "base_model:finetune:org/convnext-rs" in meta["tags"]
    assert "| trainable parameters | 10 |" in (target / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_push_to_hub_uploads_the_adapter_with_its_card():
    api = FakeApi()
    model = get_peft_model(classifier(), UPetuConfig())
    assert push_to_hub(model, "someone/ucm-upetu", private=True, api=api) == "commit-info"
    (create, repo, kwargs), (upload, upload_kwargs, files) = api.calls
    assert (create, repo, kwargs["private"], kwargs["exist_ok"]) == (
        "create_repo",
        "someone/ucm-upetu",
        True,
        True,
    )
    assert upload_kwargs["repo_id"] == "someone/ucm-upetu" and upload_kwargs["repo_type"] == "model"
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors", "manifest.json"}
    assert (
        b"library_name: peft" in files["README.md"] and b"base_model: org/convnext-rs" in files["README.md"]
    )


def test_upload_folder_forwards_ignore_patterns(tmp_path):
    api = FakeApi()
    (tmp_path / "metrics.json").write_text("{}")
    upload_folder(tmp_path, "someone/run", api=api, ignore_patterns=["checkpoints/**"])
    assert api.calls[1][1]["ignore_patterns"] == ["checkpoints/**"]
    assert upetu_hf.hub.upload_folder is upload_folder


# ---------------------------------------------------------------------------------------------- Hub-native cards
def test_card_metadata_has_pipeline_tag_and_model_index():
    from upetu_hf.hub import TaskResults

    model = get_peft_model(classifier(), UPetuConfig(bits=1))
    results = TaskResults(
        "classification", "org/ucm", {"accuracy": 0.75, "kappa": 0.5, "num_samples": 8, "per_class": {}}
    )
    meta = metadata(adapter_card(model, datasets=["org/ucm"], results=results))
    assert meta["pipeline_tag"] == "image-classification" and meta["base_model"] == "org/convnext-rs"
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "org/ucm", "type": "org/ucm", "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"accuracy": 0.75, "kappa": 0.5}
    # without results the tag comes from the model class; a local base model is never written as base_model
    plain = metadata(adapter_card(get_peft_model(classifier("./local/model"), UPetuConfig())))
    assert plain["pipeline_tag"] == "image-classification" and "base_model" not in plain
    assert "model-index" not in plain
    seg = metadata(model_card("org/base", results=TaskResults("change-detection", "cd", {"f1": 0.5})))
    assert seg["pipeline_tag"] == "image-segmentation" and seg["library_name"] == "transformers"


FAKE_HUB_DATASET = """
import sys
import datasets

saved = datasets.load_from_disk(sys.argv[1])
real = datasets.load_dataset


def load_dataset(name, *args, **kwargs):  # the Hub dataset, as datasets.load_dataset would return it
    return saved if name == "blanchon/UC_Merced" else real(name, *args, **kwargs)


datasets.load_dataset = load_dataset
from upetu_hf.train.cli import main

sys.exit(main(sys.argv[2:]))
"""


def test_the_readme_command_runs_from_hub_ids_alone(tmp_path):
    """The README's first command with a Hub model id and a Hub dataset id (one `train` split, `image` and
    `label` columns, images held as bytes): the model comes from an offline Hub cache, the dataset from a stand-in
    for `datasets.load_dataset`; the split is seeded and stratified, and the card names both ids."""
    import io
    import subprocess
    import sys

    import numpy as np
    import PIL.Image
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from transformers import ConvNextConfig

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--facebook--convnext-base-224-22k" / "snapshots" / commit
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_labels=3)
    ConvNextForImageClassification(config).save_pretrained(snapshot)
    (snapshot / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 32}}))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    rng = np.random.default_rng(0)
    rows = {"image": [], "label": []}
    for label in range(3):
        for i in range(4):
            buffer = io.BytesIO()
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) // (label + 1)
            PIL.Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="TIFF")
            rows["image"].append({"bytes": buffer.getvalue(), "path": f"{label}_{i}.tif"})
            rows["label"].append(label)
    features = Features({"image": Image(), "label": ClassLabel(names=["agricultural", "beach", "forest"])})
    DatasetDict(train=Dataset.from_dict(rows, features=features)).save_to_disk(tmp_path / "ucm")
    out = tmp_path / "runs" / "ucm55-upetu"
    command = [
        sys.executable, "-c", FAKE_HUB_DATASET, str(tmp_path / "ucm"), "classification",
        "--model", "facebook/convnext-base-224-22k", "--data", "blanchon/UC_Merced",
        "--train-fraction", "0.5", "--split-seed", "0", "--image-size", "32", "--epochs", "1",
        "--batch-size", "4", "--method", "upetu", "--bits", "1", "--r", "2", "--output-dir", str(out),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), TQDM_DISABLE="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run_config.json").read_text())
    assert run["splits"] == {"train": 6, "test": 6}  # stratified: 2 of each class's 4 images train
    results = json.loads((out / "metrics.json").read_text())
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == "facebook/convnext-base-224-22k"
    assert meta["datasets"] == ["blanchon/UC_Merced"] and meta["pipeline_tag"] == "image-classification"
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == results["test"]["accuracy"]
