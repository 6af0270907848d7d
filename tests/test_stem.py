"""Inflating the pretrained RGB stem to N bands (`models/stem.py`), and training / saving it with a UPetu adapter
through `modules_to_save=[*STEM_MODULES_TO_SAVE, <heads>]`."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import tiny_config
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import (
    ConvNextBackbone,
    ConvNextForImageClassification,
    ConvNextModel,
    ConvNextV2Backbone,
    ConvNextV2ForImageClassification,
    ConvNextV2Model,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import upetu_hf
from upetu_hf.models import ConvNextChangeDetectionConfig, ConvNextForChangeDetection
from upetu_hf.models.stem import STEM_MODULES_TO_SAVE, find_stems, inflate_kernel, inflate_stem

RGB = [3, 2, 1]  # B04, B03, B02 in the Sentinel-2 L1C band order
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def build(kind: str, version: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "model":
        return (ConvNextModel, ConvNextV2Model)[version - 1](tiny_config(version)).eval()
    if kind == "backbone":
        return (ConvNextBackbone, ConvNextV2Backbone)[version - 1](
            tiny_config(version, out_features=STAGES)
        ).eval()
    if kind == "classification":
        classes = (ConvNextForImageClassification, ConvNextV2ForImageClassification)
        return classes[version - 1](tiny_config(version, num_labels=4)).eval()
    if kind == "segmentation":
        config = UperNetConfig(
            backbone_config=tiny_config(version, out_features=STAGES),
            hidden_size=16,
            use_auxiliary_head=False,
            num_labels=3,
        )
        return UperNetForSemanticSegmentation(config).eval()
    config = ConvNextChangeDetectionConfig(
        backbone_config=tiny_config(version).to_dict(), decoder_hidden_size=16
    )
    return ConvNextForChangeDetection(config).eval()


def outputs(model, kind: str, x: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Every feature the task exposes: all hidden states / feature maps and the logits."""
    if kind == "model":
        out = model(pixel_values=x, output_hidden_states=True)
        return [*out.hidden_states, out.pooler_output]
    if kind == "backbone":
        return list(model(pixel_values=x).feature_maps)
    if kind == "classification":
        out = model(pixel_values=x, output_hidden_states=True)
        return [*out.hidden_states, out.logits]
    if kind == "segmentation":
        return [model(pixel_values=x).logits]
    out = model(pixel_values_a=x, pixel_values_b=y, output_hidden_states=True)
    return [*out.hidden_states_a, *out.hidden_states_b, out.logits]


def bands13(seed: int = 1, size: int = 64) -> torch.Tensor:
    return torch.randn(2, 13, size, size, generator=torch.Generator().manual_seed(seed))


def test_inflate_kernel_rule():
    weight = torch.randn(8, 3, 4, 4)
    zero = inflate_kernel(weight, 13, RGB)
    assert zero.shape == (8, 13, 4, 4)
    for k, band in enumerate(RGB):
        assert torch.equal(zero[:, band], weight[:, k])
    others = [b for b in range(13) if b not in RGB]
    assert torch.count_nonzero(zero[:, others]) == 0
    scaled = inflate_kernel(weight, 13, RGB, new_band_scale=0.1)
    torch.testing.assert_close(scaled[:, 7], 0.1 * weight.mean(dim=1))
    assert torch.equal(scaled[:, RGB], weight)
    with pytest.raises(ValueError, match="one new band position per pretrained input channel"):
        inflate_kernel(weight, 13, [3, 2])
    with pytest.raises(ValueError, match=r"distinct band indices in \[0, 13\)"):
        inflate_kernel(weight, 13, [3, 3, 1])
    with pytest.raises(ValueError, match=r"distinct band indices in \[0, 4\)"):
        inflate_kernel(weight, 4, [0, 1, 4])


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("kind", ["model", "backbone", "classification", "segmentation", "change"])
@torch.no_grad()
def test_zero_new_bands_keep_the_pretrained_features_exactly(kind, version):
    """A 13-band input through the inflated model gives the original model's features on its RGB bands
    (B04, B03, B02 -> R, G, B): the new kernels are zero and the stem's LayerNorm is per pixel. Equal up to float32
    summation order (the conv sums 13 instead of 3 channels): measured at most 1.2e-6 after the backbone's
    output norms, on features of unit scale."""
    original = build(kind, version)
    inflated = inflate_stem(copy.deepcopy(original), 13, RGB)
    x, y = bands13(1), bands13(2)
    expected = outputs(original, kind, x[:, RGB], y[:, RGB])
    got = outputs(inflated, kind, x, y)
    assert len(got) == len(expected) >= 1
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=5e-6)
    # the extra bands are really read once their kernels are not zero
    spread = inflate_stem(copy.deepcopy(original), 13, RGB, new_band_scale=0.5)
    assert (outputs(spread, kind, x, y)[-1] - expected[-1]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["backbone", "change"])
@torch.no_grad()
def test_zero_new_bands_features_agree_to_float64_rounding(kind):
    """The float32 differences above are rounding only: in float64 they drop to ~1e-15."""
    original = build(kind).double()
    inflated = inflate_stem(copy.deepcopy(original), 13, RGB)
    x, y = bands13(1).double(), bands13(2).double()
    for g, e in zip(
        outputs(inflated, kind, x, y), outputs(original, kind, x[:, RGB], y[:, RGB]), strict=True
    ):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_inflation_updates_every_config_and_saves_as_a_13_band_model(tmp_path):
    seg = inflate_stem(build("segmentation"), 13, RGB)
    assert seg.config.backbone_config.num_channels == 13
    assert seg.backbone.config.num_channels == 13
    assert seg.backbone.embeddings.patch_embeddings.weight.shape == (8, 13, 4, 4)
    seg.save_pretrained(tmp_path / "seg13")
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "seg13").eval()
    x = bands13()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(pixel_values=x).logits, seg(pixel_values=x).logits, rtol=0, atol=1e-6
        )

    change = inflate_stem(build("change"), 4, [0, 1, 2])  # RGB + NIR aerial: NIR is band 3
    assert change.config.backbone_config.num_channels == 4
    assert len(find_stems(change)) == 1  # one stem, shared by both dates
    with torch.no_grad():
        assert change(pixel_values_a=bands13()[:, :4], pixel_values_b=bands13()[:, :4]).logits.shape == (
            2,
            2,
            64,
            64,
        )
        with pytest.raises(ValueError, match="The images have 3 channels but the backbone expects 4"):
            change(pixel_values_a=torch.zeros(1, 3, 64, 64), pixel_values_b=torch.zeros(1, 3, 64, 64))

    classifier = inflate_stem(build("classification").requires_grad_(False), 13, RGB)
    assert classifier.config.num_channels == 13
    assert not any(p.requires_grad for p in classifier.parameters())  # a frozen stem stays frozen


def test_inflation_refuses_peft_models_and_models_without_stem():
    wrapped = get_peft_model(build("classification"), upetu_hf.UPetuConfig(bits=1))
    with pytest.raises(ValueError, match="inflate it before get_peft_model"):
        inflate_stem(wrapped, 13, RGB)
    with pytest.raises(ValueError, match="Linear has no ConvNeXt"):
        inflate_stem(torch.nn.Linear(3, 3), 13, RGB)


HEADS = {"classification": ["classifier"], "segmentation": ["decode_head"], "change": ["decode_head"]}


def loss_of(model, kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "classification":
        return model(pixel_values=x, labels=torch.tensor([0, 3])).loss
    labels = torch.randint(0, 2, (2, 64, 64), generator=torch.Generator().manual_seed(4))
    if kind == "segmentation":
        return model(pixel_values=x, labels=labels).loss
    return model(pixel_values_a=x, pixel_values_b=y, labels=labels).loss


@pytest.mark.parametrize("kind", ["classification", "segmentation", "change"])
def test_upetu_trains_and_saves_the_inflated_stem_with_modules_to_save(kind, tmp_path):
    base = inflate_stem(build(kind), 13, RGB)
    config = upetu_hf.UPetuConfig(bits=1, modules_to_save=[*STEM_MODULES_TO_SAVE, *HEADS[kind]])
    model = get_peft_model(copy.deepcopy(base), config).train()
    stem = sorted(n for n, p in model.named_parameters() if p.requires_grad and ".embeddings." in n)
    assert [n.split(".embeddings.", 1)[1] for n in stem] == [
        "layernorm.modules_to_save.default.bias",
        "layernorm.modules_to_save.default.weight",
        "patch_embeddings.modules_to_save.default.bias",
        "patch_embeddings.modules_to_save.default.weight",
    ]
    parameters = dict(model.named_parameters())
    weight = parameters[stem[-1]]
    assert weight.shape == (8, 13, 4, 4)
    layernorm = parameters[stem[1]]
    start_layernorm = layernorm.detach().clone()

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = bands13(1), bands13(2)
    for _ in range(2):
        optimizer.zero_grad()
        loss_of(model, kind, x, y).backward()
        optimizer.step()
    new_bands = [b for b in range(13) if b not in RGB]
    assert torch.count_nonzero(weight.detach()[:, new_bands]) > 0  # the zero-initialised bands learn
    assert not torch.equal(layernorm.detach(), start_layernorm)

    upetu_hf.save_adapter(model, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    stem_keys = sorted(k for k in saved if ".embeddings." in k)
    assert [k.split(".embeddings.", 1)[1] for k in stem_keys] == [
        "layernorm.bias",
        "layernorm.weight",
        "patch_embeddings.bias",
        "patch_embeddings.weight",
    ]
    assert sum(saved[k].numel() for k in stem_keys) == 8 * (13 * 4 * 4 + 3)  # D (N p^2 + 3)
    torch.testing.assert_close(saved[stem_keys[-1]], weight.detach(), rtol=0, atol=0)
    # no other backbone weight travels with the adapter: only UPetu tensors, the stem and the head
    assert [k for k in saved if ".encoder." in k and "upetu_" not in k] == []

    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = outputs(model, kind, x, y)[-1]
        reloaded = PeftModel.from_pretrained(inflate_stem(build(kind), 13, RGB), tmp_path / "adapter").eval()
        torch.testing.assert_close(outputs(reloaded, kind, x, y)[-1], expected, rtol=0, atol=1e-5)
        plain = outputs(base, kind, x, y)[-1]
    assert (plain - expected).abs().max() > 1e-4  # the reloaded model carries the trained stem and head


@pytest.mark.parametrize("kind", ["model", "backbone"])
def test_stem_modules_to_save_also_match_bare_backbones(kind):
    model = get_peft_model(
        inflate_stem(build(kind), 13, RGB),
        upetu_hf.UPetuConfig(bits=1, modules_to_save=list(STEM_MODULES_TO_SAVE)),
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and ".embeddings." in n}
    assert trainable == {
        f"base_model.model.embeddings.{module}.modules_to_save.default.{name}"
        for module, names in (("patch_embeddings", ("weight", "bias")), ("layernorm", ("weight", "bias")))
        for name in names
    }


def test_modules_to_save_embeddings_leaves_the_stem_conv_frozen():
    """Why not ``modules_to_save=["embeddings"]``: peft matches by suffix, also wraps `embeddings.patch_embeddings`
    inside the `embeddings` wrapper, and the forward pass runs the `embeddings` copy whose conv is frozen. If this
    test fails, peft changed its matching and the advice in `models/stem.py` can be revisited."""
    model = get_peft_model(
        inflate_stem(build("classification"), 13, RGB),
        upetu_hf.UPetuConfig(bits=1, modules_to_save=["embeddings", "classifier"]),
    ).train()
    convs = {n: p for n, p in model.named_parameters() if "patch_embeddings" in n and n.endswith("weight")}
    before = {n: p.detach().clone() for n, p in convs.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_of(model, "classification", bands13(), None).backward()
    optimizer.step()
    assert any(p.requires_grad for p in convs.values())  # reported trainable ...
    assert all(torch.equal(before[n], p.detach()) for n, p in convs.items())  # ... but never updated
