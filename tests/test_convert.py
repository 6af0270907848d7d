"""Checkpoint converter (`upetu-convert`): timm / original / SMLFR layouts -> HF ConvNeXt, errors, CLI.

timm is a test-only dependency. Its wheels require torchvision, which does not import beside a CPU-only torch
build; when torchvision is missing or broken, timm is imported behind a throw-away stub of torchvision (timm's
ConvNeXt never calls it), and the stub is removed again right after, so nothing else sees it.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import stat
import sys
import types
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextModel,
    ConvNextV2Config,
    ConvNextV2Model,
)

import upetu_hf
from upetu_hf.models import build_classification_model
from upetu_hf.models.convert import ConversionError, convert_checkpoint
from upetu_hf.models.convert.cli import main
from upetu_hf.models.convert.layouts import ORIGINAL, TIMM, map_keys

TOLERANCE = 1e-5  # max abs difference, fp32
IMAGE = 64  # px: small inputs keep the timm comparisons fast


# ----------------------------------------------------------------------------------------------- timm import
class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an empty, permissive module for every ``torchvision[.*]`` import."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _purge(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def _import_timm():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (a test-only dependency: pip install --no-deps timm)")
    try:
        import timm
    except Exception:  # torchvision missing or not importable beside this torch build
        _purge("timm")
        _purge("torchvision")
        finder = _StubFinder()
        sys.meta_path.insert(0, finder)
        try:
            import timm
        finally:
            sys.meta_path.remove(finder)
            _purge("torchvision")
    return timm


@pytest.fixture(scope="module")
def timm():
    return _import_timm()


# ------------------------------------------------------------------------------------------------ helpers
def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (layer scales and GRN included), so no block is close to the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm_weight = p.ndim == 1 and name.endswith("weight") and "fc" not in name
            # a smaller second MLP layer keeps the residual stream O(1-10), as trained models do (V2 has no
            # layer scale); at much larger magnitudes fp32 rounding alone exceeds the 1e-5 tolerance
            scale = 0.02 if re.search(r"(fc2|pwconv2)\.weight\Z", name) else 0.1
            p.copy_(0.5 + scale * noise if is_norm_weight else scale * noise)
    return model.eval()


_TIMM_TO_ORIGINAL = [
    (r"stem\.([01])\.", r"downsample_layers.0.\1."),
    (r"stages\.(\d+)\.downsample\.([01])\.", r"downsample_layers.\1.\2."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.", r"stages.\1.\2.norm."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.", r"stages.\1.\2.pwconv\3."),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight", r"stages.\1.\2.grn.gamma"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias", r"stages.\1.\2.grn.beta"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.gamma", r"stages.\1.\2.gamma"),
    (r"head\.norm\.", "norm."),
    (r"head\.fc\.", "head."),
]


def timm_to_original(state_dict: dict) -> dict:
    """Rename a timm ConvNeXt state dict to the original release's layout (Linear MLPs, (1,1,1,4C) GRN)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _TIMM_TO_ORIGINAL:
            new, count = re.subn(rf"\A{pattern}", replacement, key)
            if count:
                break
        else:
            raise AssertionError(f"unhandled timm key {key}")
        if re.search(r"pwconv[12]\.weight\Z", new) and value.ndim == 4:
            value = value.flatten(1)
        if ".grn." in new:
            value = value.reshape(1, 1, 1, -1)
        out[new] = value.clone()
    return out


_HF_TO_ORIGINAL = [
    (r"embeddings\.patch_embeddings\.", "downsample_layers.0.0."),
    (r"embeddings\.layernorm\.", "downsample_layers.0.1."),
    (r"encoder\.stages\.(\d+)\.downsampling_layer\.([01])\.", r"downsample_layers.\1.\2."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.\2.norm."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter", r"stages.\1.\2.gamma"),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.\2."),
    (r"layernorm\.", "norm."),
]


def original_encoder(seed: int = 0, channels: int = 3) -> tuple[dict, ConvNextModel]:
    """A tiny random ConvNeXt (V1) and its weights in the original layout without `norm`/`head`, as SMLFR's
    SparK-style encoder (`sp_cnn`) saves them."""
    torch.manual_seed(seed)
    config = ConvNextConfig(depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 24, 32], num_channels=channels)
    model = _randomize(ConvNextModel(config), seed)
    out = {}
    for key, value in model.state_dict().items():
        for pattern, replacement in _HF_TO_ORIGINAL:
            new, count = re.subn(rf"\A{pattern}", replacement, key)
            if count:
                break
        if not new.startswith("norm."):
            out[new] = value.clone()
    return out, model


def images(n: int, seed: int = 0) -> torch.Tensor:
    """A fixed batch of `n` random 3 x IMAGE x IMAGE inputs (independent of the global RNG and test order)."""
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def timm_features(model, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with torch.no_grad():
        features, y = [], model.stem(x)
        for stage in model.stages:
            y = stage(y)
            features.append(y)
        return model(x), features


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def assert_matches_timm(folder: Path, reference, x: torch.Tensor) -> list[float]:
    """Logits and the four stage outputs of the converted model vs timm: <= 1e-5 in fp32 (the activations are
    O(1-10), so this is a few float32 ulps) and <= 1e-9 in fp64, where only the summation order differs."""
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    diffs = []
    for dtype, tolerance in ((torch.float32, TOLERANCE), (torch.float64, 1e-9)):
        logits, features = timm_features(reference.to(dtype), x.to(dtype))
        with torch.no_grad():
            out = model.to(dtype)(x.to(dtype), output_hidden_states=True)
        hidden = out.hidden_states[-4:]
        assert len(hidden) == len(features) == 4
        diffs = [max_diff(out.logits, logits)] + [max_diff(h, f) for h, f in zip(hidden, features)]
        assert max(diffs) <= tolerance, (dtype, diffs)
        assert logits.abs().max() > 0.05  # not a comparison of two near-zero outputs
    reference.float()
    return diffs


def loaded_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --------------------------------------------------------------------------------------- timm round trips
TIMM_MODELS = {"convnext_atto": 1, "convnext_tiny": 1, "convnextv2_atto": 2}


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_timm_checkpoint_matches_timm(timm, name, tmp_path):
    reference = _randomize(timm.create_model(name, pretrained=False, num_classes=5))
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    report = convert_checkpoint(tmp_path / "timm.pth", tmp_path / "hf")
    assert report.layout == "timm" and report.version == TIMM_MODELS[name]
    assert report.depths == [len(s.blocks) for s in reference.stages]
    assert report.hidden_sizes == [s.blocks[0].conv_dw.out_channels for s in reference.stages]
    assert report.num_labels == 5 and report.initialised == []
    assert_matches_timm(tmp_path / "hf", reference, images(2))


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_original_layout_matches_timm(timm, name, tmp_path):
    reference = _randomize(timm.create_model(name, pretrained=False, num_classes=4), seed=1)
    save_file(timm_to_original(reference.state_dict()), str(tmp_path / "orig.safetensors"))
    report = convert_checkpoint(tmp_path / "orig.safetensors", tmp_path / "hf")
    assert report.layout == "original" and report.version == TIMM_MODELS[name]
    expected = (
        "ConvNextV2ForImageClassification" if TIMM_MODELS[name] == 2 else "ConvNextForImageClassification"
    )
    assert report.model_class == expected
    assert_matches_timm(tmp_path / "hf", reference, images(2))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "epoch": 3, "best_acc": torch.tensor(0.8)},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
        lambda sd: {"model": {"module.encoder." + k: v for k, v in sd.items()}, "optimizer": {}},
        lambda sd: {"state_dict": {"backbone." + k: v for k, v in sd.items()}, "meta": {"epoch": 1}},
    ],
    ids=["model", "state_dict+module", "model+module.encoder", "backbone"],
)
def test_wrapped_and_prefixed_timm_checkpoint(timm, wrap, tmp_path):
    reference = _randomize(timm.create_model("convnext_atto", pretrained=False, num_classes=3), seed=2)
    torch.save(wrap(reference.state_dict()), tmp_path / "wrapped.pth")
    report = convert_checkpoint(tmp_path / "wrapped.pth", tmp_path / "hf")
    assert report.layout == "timm" and report.num_labels == 3
    assert_matches_timm(tmp_path / "hf", reference, images(1))


# -------------------------------------------------------------------------------------------------- SMLFR
def _smlfr_finetune_file(encoder: dict) -> dict:
    """SMLFR's `{arch}_1kpretrained_timm_style.pth` (Pretrain/utils/misc.py, save_checkpoint_for_finetune)."""
    return {"arch": "convnext_base", "module": encoder, "is_pretrain": False}


def _smlfr_pretrain_file(encoder: dict) -> dict:
    """SMLFR's `{arch}_withdecoder_1kpretrained_pcfm_style.pth`: the whole PCFM model (sparse encoder under
    `sparse_encoder.sp_cnn.`, light decoder, densify layers, mask tokens, its config) plus training state."""
    module = {"sparse_encoder.sp_cnn." + k: v for k, v in encoder.items()}
    module.update(
        {
            "dense_decoder.dec.0.up_sample.weight": torch.randn(16, 16, 2, 2),
            "densify_norms.0.weight": torch.ones(32),
            "densify_projs.0.weight": torch.randn(16, 32, 1, 1),
            "mask_tokens.0": torch.zeros(1, 32, 1, 1),
            "imn_m": torch.zeros(1, 3, 1, 1),
            "config": {"mask_ratio": 0.6, "densify_norm_str": "ln", "sbn": False, "hierarchy": 4},
        }
    )
    return {
        "args": "Args(model='convnext_base', ...)",
        "input_size": 224,
        "arch": "convnext_base",
        "epoch": 799,
        "performance_desc": "0.1234 0.1300",
        "module": module,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "is_pretrain": True,
    }


def _mmseg_file(encoder: dict) -> dict:
    """An mmseg UperNet fine-tune of the SMLFR backbone: `backbone.` prefix plus per-stage output norms."""
    state = {"backbone." + k: v for k, v in encoder.items()}
    for i, width in enumerate([8, 16, 24, 32]):
        state[f"backbone.norm{i}.weight"] = torch.ones(width)
        state[f"backbone.norm{i}.bias"] = torch.zeros(width)
    state["decode_head.conv_seg.weight"] = torch.randn(6, 16, 1, 1)
    return {"meta": {"iter": 160000}, "state_dict": state}


@pytest.mark.parametrize(
    "make, wrapper, prefix",
    [
        (_smlfr_finetune_file, "module", ""),
        (_smlfr_pretrain_file, "module", "sparse_encoder.sp_cnn."),
        (_mmseg_file, "state_dict", "backbone."),
    ],
    ids=["smlfr-timm-style", "smlfr-pcfm-style", "mmseg-finetune"],
)
def test_smlfr_checkpoints(make, wrapper, prefix, tmp_path):
    encoder, model = original_encoder()
    torch.save(make(encoder), tmp_path / "smlfr.pth")
    report = convert_checkpoint(tmp_path / "smlfr.pth", tmp_path / "hf")
    assert (report.layout, report.wrapper, report.prefix) == ("original", wrapper, prefix)
    assert report.model_class == "ConvNextModel" and report.num_labels is None
    assert report.initialised == ["layernorm.bias", "layernorm.weight"]  # SMLFR saves no final norm / head
    if make is _mmseg_file:
        assert report.dropped == [f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]
        assert report.ignored == ["decode_head.conv_seg.weight"]
    if make is _smlfr_pretrain_file:
        assert "dense_decoder.dec.0.up_sample.weight" in report.ignored
    converted = AutoModel.from_pretrained(tmp_path / "hf").eval()
    x = images(2)
    with torch.no_grad():
        expected = model(x, output_hidden_states=True).hidden_states
        got = converted(x, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == 5
    assert max(max_diff(a, b) for a, b in zip(got, expected)) <= TOLERANCE
    assert expected[-1].abs().max() > 0.05


@pytest.mark.parametrize("layout", [ORIGINAL, TIMM], ids=["original", "timm"])
def test_v2_grn_maps_gamma_to_weight_and_beta_to_bias_without_timm(layout):
    """ConvNeXt V2's GRN in both layouts, written from a random HF model by the table of `layouts.py` (no timm):
    the original `grn.gamma` (1, 1, 1, 4C) and timm's `mlp.grn.weight` (4C,) become `grn.weight`, the `beta` /
    `bias` become `grn.bias`, each in the HF shape and equal to the tensor it came from."""
    config = ConvNextV2Config(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32])
    hf = _randomize(ConvNextV2Model(config), seed=3).state_dict()
    source = {}
    for key, value in hf.items():
        match = re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.(weight|bias)", key)
        if match is not None:
            i, j, kind = match.groups()
            if layout is ORIGINAL:
                source[f"stages.{i}.{j}.grn.{ {'weight': 'gamma', 'bias': 'beta'}[kind] }"] = value.clone()
            else:
                source[f"stages.{i}.blocks.{j}.mlp.grn.{kind}"] = value.reshape(-1).clone()
    mapped = map_keys(source, layout)
    assert not mapped.unmatched and len(mapped.tensors) == len(source) == 8
    for key, value in mapped.tensors.items():
        assert value.shape == hf[key].shape and torch.equal(value, hf[key]), key


# ------------------------------------------------------------------------------------------------- errors
class NotAContainer:
    """A class that weights_only=True refuses to unpickle."""


def test_corrupt_files_get_one_line_errors(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for name, words in (("bad.pth", "not a readable PyTorch checkpoint"), ("bad.safetensors", "safetensors")):
        with pytest.raises(ConversionError, match=words) as info:
            convert_checkpoint(tmp_path / name, tmp_path / "out")
        assert "\n" not in str(info.value)
    with pytest.raises(ConversionError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_foreign_checkpoint_names_its_keys(tmp_path):
    resnet = {
        "conv1.weight": torch.randn(64, 3, 7, 7),
        "bn1.weight": torch.ones(64),
        "bn1.running_mean": torch.zeros(64),
        **{f"layer1.{i}.conv1.weight": torch.randn(64, 64, 3, 3) for i in range(10)},
        "fc.weight": torch.randn(1000, 512),
    }
    torch.save(resnet, tmp_path / "resnet50.pth")
    with pytest.raises(ConversionError, match="not a ConvNeXt checkpoint") as info:
        convert_checkpoint(tmp_path / "resnet50.pth", tmp_path / "out")
    message = str(info.value)
    assert "conv1.weight" in message and "bn1.weight" in message and "of 14)" in message


def test_unmapped_keys_are_refused_and_named(tmp_path):
    encoder, _ = original_encoder()
    encoder["stages.2.0.attn.qkv.weight"] = torch.randn(72, 24)
    encoder["pre_logits.fc.weight"] = torch.randn(32, 32)
    torch.save({"model": encoder}, tmp_path / "extra.pth")
    with pytest.raises(ConversionError, match=r"cannot map 2 of \d+ keys") as info:
        convert_checkpoint(tmp_path / "extra.pth", tmp_path / "out")
    assert "stages.2.0.attn.qkv.weight" in str(info.value) and "pre_logits.fc.weight" in str(info.value)


def test_unsafe_pickle_is_refused_but_argparse_namespace_is_read(tmp_path):
    encoder, _ = original_encoder()
    torch.save({"model": encoder, "args": argparse.Namespace(lr=0.1, model="convnext")}, tmp_path / "ns.pth")
    assert convert_checkpoint(tmp_path / "ns.pth", tmp_path / "ok").wrapper == "model"

    torch.save({"model": encoder, "extra": NotAContainer()}, tmp_path / "obj.pth")
    with pytest.raises(ConversionError, match="weights_only=True"):
        convert_checkpoint(tmp_path / "obj.pth", tmp_path / "out")


def test_several_encoders_need_a_prefix(tmp_path):
    encoder, model = original_encoder()
    other, _ = original_encoder(seed=5)
    state = {
        **{"teacher." + k: v for k, v in encoder.items()},
        **{"student." + k: v for k, v in other.items()},
    }
    torch.save(state, tmp_path / "dino.pth")
    with pytest.raises(ConversionError, match="'teacher.', 'student.'|'student.', 'teacher.'"):
        convert_checkpoint(tmp_path / "dino.pth", tmp_path / "out")
    report = convert_checkpoint(tmp_path / "dino.pth", tmp_path / "hf", prefix="teacher.")
    assert len(report.ignored) == len(other)
    converted = loaded_tensors(tmp_path / "hf")
    assert torch.equal(
        converted["encoder.stages.1.layers.1.pwconv1.weight"], encoder["stages.1.1.pwconv1.weight"]
    )


def test_depth_override_must_fit_the_tensors(tmp_path):
    encoder, _ = original_encoder()  # depths 1-2-1-1
    torch.save(encoder, tmp_path / "enc.pth")
    with pytest.raises(ConversionError, match="no place") as info:
        convert_checkpoint(tmp_path / "enc.pth", tmp_path / "out", depths=[1, 1, 1, 1])
    assert "encoder.stages.1.layers.1.dwconv.weight" in str(info.value)
    with pytest.raises(ConversionError, match="lacks 9 tensors"):
        convert_checkpoint(tmp_path / "enc.pth", tmp_path / "out", depths=[2, 2, 1, 1])
    report = convert_checkpoint(
        tmp_path / "enc.pth", tmp_path / "hf", depths=[1, 2, 1, 1], hidden_sizes=[8, 16, 24, 32]
    )
    assert report.depths == [1, 2, 1, 1]


def test_hf_state_dict_is_pointed_to_from_pretrained(tmp_path):
    _, model = original_encoder()
    torch.save(model.state_dict(), tmp_path / "hf.bin")
    with pytest.raises(ConversionError, match="from_pretrained"):
        convert_checkpoint(tmp_path / "hf.bin", tmp_path / "out")


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_round_trip_trains_with_upetu(tmp_path, capsys):
    encoder, _ = original_encoder()
    torch.save(_smlfr_finetune_file(encoder), tmp_path / "smlfr.pth")
    out = tmp_path / "smlfr-hf"
    argv = [str(tmp_path / "smlfr.pth"), str(out), "--label-names", "field", "forest", "water"]
    argv += ["--image-mean", "0.3,0.35,0.4", "--image-std", "0.2", "0.2", "0.25", "--image-size", "128"]
    assert main(argv) == 0
    assert "ConvNextForImageClassification" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "conversion.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.3, 0.35, 0.4] and processor["image_std"] == [0.2, 0.2, 0.25]
    assert processor["size"] == {"shortest_edge": 128}
    record = json.loads((out / "conversion.json").read_text())
    assert record["layout"] == "original" and record["wrapper"] == "module"

    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "field", 1: "forest", 2: "water"}
    x = images(2)
    with torch.no_grad():
        base = model(x).logits
    peft_model = get_peft_model(model, upetu_hf.UPetuConfig()).eval()
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in peft_model.parameters())
    with torch.no_grad():
        assert max_diff(peft_model(x).logits, base) == 0.0  # UPetu starts as the identity

    built = build_classification_model(str(out), num_labels=4)  # what `upetu-train --model` does
    assert torch.equal(
        built.convnext.encoder.stages[1].layers[1].pwconv2.weight,
        torch.as_tensor(encoder["stages.1.1.pwconv2.weight"]),
    )


def test_cli_user_errors_exit_2(tmp_path, capsys):
    (tmp_path / "broken.pth").write_bytes(b"\x80\x02garbage")
    assert main([str(tmp_path / "broken.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("upetu-convert: error: ") and err.count("\n") == 1
    encoder, _ = original_encoder(channels=4)
    torch.save(encoder, tmp_path / "rgbn.pth")
    assert main([str(tmp_path / "rgbn.pth"), str(tmp_path / "out")]) == 2
    assert "4 input channels" in capsys.readouterr().err
    argv = [str(tmp_path / "rgbn.pth"), str(tmp_path / "out"), "--image-mean", "0.4,0.4,0.4,0.3"]
    assert main(argv + ["--image-std", "0.2,0.2,0.2"]) == 2
    assert "--image-std has 3 values" in capsys.readouterr().err
    assert main(argv + ["--image-std", "0.2,0.2,0.2,-0.1"]) == 2
    assert "must be positive" in capsys.readouterr().err
    argv += ["--image-std", "0.2,0.2,0.2,0.1"]
    assert main(argv + ["--num-labels", "3", "--label-names", "a", "b"]) == 2
    assert "disagrees with 2 label names" in capsys.readouterr().err
    assert main(argv + ["--label-names", "a", "a"]) == 2
    assert "without duplicates" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(argv) == 0
    assert AutoModel.from_pretrained(tmp_path / "out").config.num_channels == 4


def test_output_dir_rules(tmp_path, capsys):
    encoder, _ = original_encoder()
    torch.save(encoder, tmp_path / "enc.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([str(tmp_path / "enc.pth"), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main([str(tmp_path / "enc.pth"), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    # a previous conversion may be replaced without --overwrite; the user's file survives again
    assert main([str(tmp_path / "enc.pth"), str(out), "--num-labels", "2"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert AutoModelForImageClassification.from_pretrained(out).config.num_labels == 2
    assert not [p for p in tmp_path.iterdir() if "upetu-convert" in p.name]  # no staging folder left behind
    # files a previous conversion recorded and this one does not write are removed, nothing outside the folder
    record = json.loads((out / "conversion.json").read_text())
    record["files"] += ["model-00002-of-00002.safetensors", "../outside.txt"]
    (out / "conversion.json").write_text(json.dumps(record))
    (out / "model-00002-of-00002.safetensors").write_bytes(b"old shard")
    (tmp_path / "outside.txt").write_text("keep")
    assert main([str(tmp_path / "enc.pth"), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "conversion.json",
        "model.safetensors",
        "notes.txt",
        "preprocessor_config.json",
    ]
    assert (tmp_path / "outside.txt").read_text() == "keep"


def test_output_follows_the_umask(tmp_path):
    encoder, _ = original_encoder()
    torch.save(encoder, tmp_path / "enc.pth")
    old = os.umask(0o027)
    try:
        convert_checkpoint(tmp_path / "enc.pth", tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert set(modes.values()) == {0o640}, modes
