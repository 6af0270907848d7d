"""The UPetu tuner: identity at init, budget, packed checkpoints, PEFT behaviours and errors."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import REPO_ROOT, tiny_config
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import (
    ConvNextBackbone,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextModel,
    ConvNextV2Backbone,
    ConvNextV2ForImageClassification,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import upetu_hf
from upetu_hf import UPetuConfig, UPetuLayer

CLASSIFIERS = {1: ConvNextForImageClassification, 2: ConvNextV2ForImageClassification}
BACKBONES = {1: ConvNextBackbone, 2: ConvNextV2Backbone}
OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]
CONVNEXT_B = dict(depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024])


def classifier(version: int = 1, seed: int = 0) -> torch.nn.Module:
    """A tiny random ConvNeXt classifier; the same seed gives the same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLASSIFIERS[version](tiny_config(version)).eval()


def train_steps(model: torch.nn.Module, steps: int = 5, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps on a fixed random batch; returns the losses."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(steps):
        loss = model(pixel_values=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("version", [1, 2])
def test_identity_at_init_classification(version):
    base = classifier(version)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = base(x, output_hidden_states=True)
        model = get_peft_model(copy.deepcopy(base), UPetuConfig(bits=1)).eval()
        out = model(x, output_hidden_states=True)
    assert (out.logits - ref.logits).abs().max().item() == 0.0
    assert len(out.hidden_states) == 5
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert (a - b).abs().max().item() == 0.0


@pytest.mark.parametrize("version", [1, 2])
def test_identity_at_init_backbone_feature_maps(version):
    base = BACKBONES[version](tiny_config(version, out_features=OUT_FEATURES)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = base(x).feature_maps
        out = get_peft_model(copy.deepcopy(base), UPetuConfig()).eval()(x).feature_maps
    assert len(out) == 4
    for a, b in zip(out, ref):
        assert (a - b).abs().max().item() == 0.0


def test_default_budget_on_convnext_b():
    base = ConvNextModel(ConvNextConfig(**CONVNEXT_B))
    backbone = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, UPetuConfig())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    share = 100 * trainable / backbone
    print(f"ConvNeXt-B backbone {backbone:,} params, UPetu trains {trainable:,} = {share:.3f} %")
    assert 0.65 <= share <= 0.80
    counts = model.base_model.parameter_counts()
    assert counts["adapter"] == trainable and counts["backbone"] == backbone


def test_checkpoint_sizes_on_convnext_b(tmp_path):
    sizes = {}
    for bits in (1, 32):
        model = get_peft_model(ConvNextModel(ConvNextConfig(**CONVNEXT_B)), UPetuConfig(bits=bits))
        model.save_pretrained(tmp_path / f"upetu{bits}")
        sizes[bits] = os.path.getsize(tmp_path / f"upetu{bits}" / "adapter_model.safetensors")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = get_peft_model(
        ConvNextModel(ConvNextConfig(**CONVNEXT_B)), LoraConfig(r=8, target_modules=["pwconv1", "pwconv2"])
    )
    lora.save_pretrained(tmp_path / "lora")
    lora_size = os.path.getsize(tmp_path / "lora" / "adapter_model.safetensors")
    print(f"UPetu 1-bit {sizes[1]:,} B, UPetu 32-bit {sizes[32]:,} B, LoRA r=8 {lora_size:,} B")
    assert sizes[1] <= 200_000
    assert lora_size / sizes[1] >= 25
    # 32 bits: every trainable parameter stored as float32, plus a small header
    assert 4 * trainable <= sizes[32] <= 4 * trainable * 1.02


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("bits", [1, 4, 32])
def test_save_reload_bit_identical(tmp_path, version, bits):
    model = get_peft_model(classifier(version), UPetuConfig(bits=bits))
    train_steps(model, steps=3)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(
            classifier(version), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage
        ).eval()
        with torch.no_grad():
            got = loaded(x).logits
        assert torch.equal(got, expected), f"bits={bits} low_cpu_mem_usage={low_cpu_mem_usage}"


def test_checkpoint_holds_packed_codes(tmp_path):
    from safetensors.torch import load_file

    model = get_peft_model(classifier(), UPetuConfig(bits=1, r=16))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "adapter_model.safetensors")
    assert not any(k.endswith(".latent") for k in state)
    eqam = "base_model.model.convnext.encoder.stages.0.layers.0.upetu_eqam"
    down = state[f"{eqam}.down.weight.packed"]
    assert down.dtype == torch.uint8 and tuple(down.shape) == (16, 1)  # 16 x 8 one-bit codes -> 1 byte a row
    up = state[f"{eqam}.up.weight.packed"]
    assert up.dtype == torch.uint8 and tuple(up.shape) == (8, 2)  # 8 x 16 one-bit codes -> 2 bytes a row
    # 1-bit weights carry their derived magnitudes (one per row of `down`, one per column of `up`) as int8 side
    # tensors; no learned scales of their own
    for name, n in (("down", 16), ("up", 16)):
        assert state[f"{eqam}.{name}.weight.magnitude"].dtype == torch.int8
        assert state[f"{eqam}.{name}.weight.magnitude"].shape == (n,)
        assert state[f"{eqam}.{name}.weight.magnitude_stats"].numel() == 1
    assert not any(k.startswith((f"{eqam}.down.scale", f"{eqam}.up.column_scale")) for k in state)
    assert state[f"{eqam}.scale.packed"].dtype == torch.int8 and state[f"{eqam}.scale.stats"].numel() == 1
    # 4-bit codes carry no statistics: the magnitude is the learned row scale of `down` and EQAM's `s` for `up`
    get_peft_model(classifier(), UPetuConfig(bits=4, r=16)).save_pretrained(tmp_path / "four")
    state = load_file(tmp_path / "four" / "adapter_model.safetensors")
    assert state[f"{eqam}.down.weight.packed"].shape == (16, 4)  # 8 four-bit codes -> 4 bytes a row
    assert f"{eqam}.down.weight.stats" not in state and f"{eqam}.up.scale.packed" not in state
    for side in ("scale", "down.scale"):
        assert (
            state[f"{eqam}.{side}.packed"].dtype == torch.int8 and state[f"{eqam}.{side}.stats"].numel() == 1
        )
    assert "base_model.model.classifier.weight" in state


def test_offline_hub_cache_loading(tmp_path):
    model = get_peft_model(classifier(), UPetuConfig(bits=2))
    train_steps(model, steps=2)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--upetu-test--tiny-adapter" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (cache / "models--upetu-test--tiny-adapter" / "refs").mkdir()
    (cache / "models--upetu-test--tiny-adapter" / "refs" / "main").write_text(commit)
    torch.save({"x": x, "expected": expected}, tmp_path / "io.pt")
    torch.save(classifier().state_dict(), tmp_path / "base.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(REPO_ROOT / "tests")!r})
        import upetu_hf
        from conftest import tiny_config
        from peft import PeftModel
        from transformers import ConvNextForImageClassification
        torch.manual_seed(0)
        io = torch.load({str(tmp_path / "io.pt")!r})
        base = ConvNextForImageClassification(tiny_config(1))
        base.load_state_dict(torch.load({str(tmp_path / "base.pt")!r}))
        model = PeftModel.from_pretrained(base, "upetu-test/tiny-adapter").eval()
        with torch.no_grad():
            assert torch.equal(model(io["x"]).logits, io["expected"])
        print("LOADED-FROM-HUB-CACHE")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED-FROM-HUB-CACHE" in result.stdout


def test_training_changes_only_adapter_and_head():
    base = BACKBONES[1](tiny_config(1, out_features=OUT_FEATURES))
    model = ConvNextForImageClassification(tiny_config(1))
    model.convnext.encoder.load_state_dict(base.encoder.state_dict())
    peft_model = get_peft_model(model, UPetuConfig(bits=1))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden_before = peft_model.eval()(x, output_hidden_states=True).hidden_states
    losses = train_steps(peft_model, steps=8, lr=2e-2)
    assert losses[-1] < losses[0]
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert all(".upetu_" in n or ".modules_to_save." in n for n in trainable)
    assert any(".upetu_eqam." in n for n in changed) and any(".upetu_capm." in n for n in changed)
    assert any(".modules_to_save." in n for n in changed)
    with torch.no_grad():
        hidden_after = peft_model.eval()(x, output_hidden_states=True).hidden_states
    for stage in range(1, 5):  # all four stage outputs (= backbone feature maps) change
        assert not torch.equal(hidden_before[stage], hidden_after[stage])


def test_multiple_adapters_set_disable_delete_unload():
    base = classifier()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = base(x).logits
    model = get_peft_model(copy.deepcopy(base), UPetuConfig(bits=1))
    train_steps(model, steps=3)
    model.add_adapter("other", UPetuConfig(bits=4, r=4))
    model.set_adapter("other")
    train_steps(model, steps=3)
    model.eval()
    with torch.no_grad():
        out_other = model(x).logits
        model.set_adapter("default")
        out_default = model(x).logits
        with model.disable_adapter():
            out_disabled = model(x).logits
    assert not torch.equal(out_default, out_other)
    assert torch.equal(out_disabled, ref)
    # only the active adapter is trainable
    model.set_adapter("other")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other" in n for n in trainable)
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    assert not any(".other" in n for n, _ in model.named_parameters())
    model.set_adapter("default")
    with torch.no_grad():
        assert torch.equal(model(x).logits, out_default)
    unloaded = model.unload()
    assert not any(isinstance(m, UPetuLayer) for m in unloaded.modules())
    with torch.no_grad():
        # the classifier is the trained modules_to_save copy removed by unload: compare the backbone output
        assert torch.equal(unloaded.convnext(x).pooler_output, base.convnext(x).pooler_output)


def test_merge_raises_clear_error():
    model = get_peft_model(classifier(), UPetuConfig())
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward(dtype):
    model = get_peft_model(classifier(), UPetuConfig(bits=4)).to(dtype).eval()
    train_model = get_peft_model(classifier(), UPetuConfig(bits=4))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64, dtype=dtype)).logits
    assert out.dtype == dtype and torch.isfinite(out).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = train_model(pixel_values=torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_upernet_with_convnext_backbone(tmp_path):
    config = UperNetConfig(
        backbone_config=tiny_config(1, out_features=OUT_FEATURES),
        num_labels=3,
        hidden_size=16,
        auxiliary_channels=8,
    )
    torch.manual_seed(1)
    base = UperNetForSemanticSegmentation(config).eval()
    base_state = copy.deepcopy(base.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = base(x).logits
    model = get_peft_model(copy.deepcopy(base), UPetuConfig(bits=2))
    assert sorted(model.peft_config["default"].modules_to_save) == ["auxiliary_head", "decode_head"]
    assert any(isinstance(m, UPetuLayer) for m in model.base_model.model.backbone.modules())
    with torch.no_grad():
        assert torch.equal(model.eval()(x).logits, ref)
    model.train()
    labels = torch.randint(0, 3, (2, 64, 64))
    model(pixel_values=x, labels=labels).loss.backward()
    model.eval()
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path)
    fresh = UperNetForSemanticSegmentation(config)
    fresh.load_state_dict(base_state)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, expected)


def test_restrict_stages_and_blocks():
    config = UPetuConfig(stages=[2, 3], target_modules=r".*stages\.2\.layers\.1")
    model = get_peft_model(classifier(), config)
    eqam = sorted(n for n, m in model.named_modules() if n.endswith("upetu_eqam.default"))
    capm = sorted(n for n, m in model.named_modules() if n.endswith("upetu_capm.default"))
    assert [n.split("convnext.")[1] for n in eqam] == ["encoder.stages.2.layers.1.upetu_eqam.default"]
    assert [n.split("convnext.")[1].split(".upetu")[0] for n in capm] == [
        "encoder.stages.2.layers.1",
        "encoder.stages.3.layers.0",
    ]
    capm_only = get_peft_model(classifier(), UPetuConfig(use_eqam=False))
    assert not any("upetu_eqam" in n for n, _ in capm_only.named_parameters())
    assert sum("upetu_capm" in n and n.endswith("beta.latent") for n, _ in capm_only.named_parameters()) == 4


def test_frozen_head_is_not_silent():
    with pytest.warns(UserWarning, match="classifier"):
        get_peft_model(classifier(), UPetuConfig(modules_to_save=[]))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"bits": 3}, "bits"),
        ({"r": 0}, "r"),
        ({"prompt_size": 0}, "prompt_size"),
        ({"side_bits": 4}, "side_bits"),
        ({"codebook": "uniform"}, "codebook"),
        ({"stages": [-1]}, "stages"),
    ],
)
def test_invalid_config_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"UPetuConfig\.{field}=.*allowed values"):
        UPetuConfig(**kwargs)


def test_model_without_convnext_blocks():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no ConvNeXt blocks.*ConvNextLayer.*ConvNextV2Layer"):
        get_peft_model(model, UPetuConfig())


def test_stage_index_out_of_range():
    with pytest.raises(ValueError, match=r"stages=\[7\].*0 to 3"):
        get_peft_model(classifier(), UPetuConfig(stages=[7]))


def test_adapter_on_base_of_other_widths(tmp_path):
    get_peft_model(classifier(), UPetuConfig(modules_to_save=[])).save_pretrained(tmp_path)
    other = ConvNextForImageClassification(tiny_config(1, hidden_sizes=[16, 32, 64, 128])).eval()
    with pytest.raises(ValueError, match=r"encoder\.stages\.0\.layers\.0\.upetu_eqam.*\(16, 4\).*\(16, 8\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PeftModel.from_pretrained(other, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_adapter_file(tmp_path, damage):
    get_peft_model(classifier(), UPetuConfig()).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 64)
    with pytest.raises(ValueError, match="truncated or corrupt.*save_pretrained"):
        PeftModel.from_pretrained(classifier(), tmp_path)


def test_peft_config_round_trip(tmp_path):
    config = UPetuConfig(bits=2, r=8, stages=[1, 2], codebook="quantile")
    get_peft_model(classifier(), config).save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, UPetuConfig)
    assert (loaded.bits, loaded.r, loaded.stages, loaded.codebook) == (2, 8, [1, 2], "quantile")
    assert loaded.peft_type == upetu_hf.tuner.PEFT_TYPE
