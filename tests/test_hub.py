"""Model cards, atomic saves and publishing (with a fake `HfApi`: nothing leaves the machine)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from conftest import tiny_config
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import ConvNextForImageClassification

import upetu_hf
from upetu_hf import UPetuConfig, adapter_card, push_to_hub, save_adapter
from upetu_hf.hub import model_card, save_model, upload_folder


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
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    reloaded = PeftModel.from_pretrained(classifier(), target).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model.eval()(x).logits)


def test_save_model_writes_a_transformers_card(tmp_path):
    model = classifier()
    target = save_model(model, tmp_path / "full", base_model="org/convnext-rs", parameters={"trainable": 10})
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in target.iterdir()}
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
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert (
        b"library_name: peft" in files["README.md"] and b"base_model: org/convnext-rs" in files["README.md"]
    )


def test_upload_folder_forwards_ignore_patterns(tmp_path):
    api = FakeApi()
    (tmp_path / "metrics.json").write_text("{}")
    upload_folder(tmp_path, "someone/run", api=api, ignore_patterns=["checkpoints/**"])
    assert api.calls[1][1]["ignore_patterns"] == ["checkpoints/**"]
    assert upetu_hf.hub.upload_folder is upload_folder
