"""Tests for upetu_hf.models: Siamese ConvNeXt change detection and pretrained-backbone builders."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    ConvNextBackbone,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextV2Backbone,
    ConvNextV2Config,
    ConvNextV2ForImageClassification,
    ConvNextV2Model,
    ResNetConfig,
    UperNetForSemanticSegmentation,
)

from upetu_hf.models import (
    ChangeDetectionOutput,
    ConvNextChangeDetectionConfig,
    ConvNextForChangeDetection,
    build_change_detection_model,
    build_classification_model,
    build_segmentation_model,
    load_convnext_backbone_weights,
    soft_dice_loss,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = REPO_ROOT.parent / "shared" / "models" / "rs-convnext-atto-aid"
needs_pretrained = pytest.mark.skipif(
    not (PRETRAINED / "config.json").is_file(), reason=f"pretrained checkpoint not found at {PRETRAINED}"
)

TINY = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]}
BACKBONE_CONFIGS = {"v1": ConvNextConfig, "v2": ConvNextV2Config}
BACKBONE_CLASSES = {"v1": ConvNextBackbone, "v2": ConvNextV2Backbone}


def tiny_config(version: str = "v1", **kwargs) -> ConvNextChangeDetectionConfig:
    kwargs.setdefault("decoder_hidden_size", 16)
    return ConvNextChangeDetectionConfig(backbone_config=BACKBONE_CONFIGS[version](**TINY), **kwargs)


def tiny_model(version: str = "v1", seed: int = 0, **kwargs) -> ConvNextForChangeDetection:
    torch.manual_seed(seed)
    return ConvNextForChangeDetection(tiny_config(version, **kwargs))


def image_pair(batch: int = 2, height: int = 64, width: int = 64, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, 3, height, width, generator=generator)
    b = torch.randn(batch, 3, height, width, generator=generator)
    return a, b


def backbone_tensors(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k.startswith(("embeddings.", "encoder."))}


# --------------------------------------------------------------------------------------------- config


def test_config_defaults_and_dict_roundtrip(tmp_path):
    config = ConvNextChangeDetectionConfig()
    assert config.model_type == "convnext-change-detection"
    assert config.backbone_config.model_type == "convnext"
    assert list(config.backbone_config.hidden_sizes) == [96, 192, 384, 768]
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert config.num_labels == 2
    assert config.id2label == {0: "no-change", 1: "change"}
    assert config.label2id == {"no-change": 0, "change": 1}
    assert (config.ignore_index, config.fusion, config.dice_weight) == (255, "diff_concat", 0.0)
    assert config.total_stride == 32

    v2 = tiny_config("v2", fusion="concat_diff", dice_weight=0.5, ignore_index=7)
    restored = ConvNextChangeDetectionConfig.from_dict(v2.to_dict())
    assert restored.to_dict() == v2.to_dict()
    assert isinstance(restored.backbone_config, ConvNextV2Config)

    v2.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is ConvNextChangeDetectionConfig
    assert {**loaded.to_dict(), "_name_or_path": ""} == v2.to_dict()
    assert (loaded.fusion, loaded.dice_weight, loaded.ignore_index) == ("concat_diff", 0.5, 7)
    assert list(loaded.backbone_config.hidden_sizes) == TINY["hidden_sizes"]

    from_dict_backbone = ConvNextChangeDetectionConfig(backbone_config={"model_type": "convnextv2", **TINY})
    assert isinstance(from_dict_backbone.backbone_config, ConvNextV2Config)
    assert from_dict_backbone.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert type(ConvNextChangeDetectionConfig(backbone_config=dict(TINY)).backbone_config) is ConvNextConfig


def test_config_labels_and_validation():
    three = tiny_config(num_labels=3)
    assert three.num_labels == 3 and three.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    named = tiny_config(id2label={0: "same", 1: "new", 2: "gone"})
    assert named.num_labels == 3 and named.label2id["gone"] == 2

    user_backbone = ConvNextConfig(**TINY)  # out_features defaults to ["stage4"]
    config = ConvNextChangeDetectionConfig(backbone_config=user_backbone)
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert user_backbone.out_features == ["stage4"], "the caller's config object must not be mutated"

    with pytest.raises(ValueError, match="fusion must be one of"):
        tiny_config(fusion="sum")
    with pytest.raises(ValueError, match="model_type in"):
        ConvNextChangeDetectionConfig(backbone_config=ResNetConfig())
    with pytest.raises(ValueError, match="num_labels must be >= 2"):
        tiny_config(num_labels=1)
    with pytest.raises(ValueError, match="decoder_norm"):
        tiny_config(decoder_norm="layer")


# --------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_forward_shapes_and_hidden_states(version):
    model = tiny_model(version).eval()
    assert isinstance(model.backbone, BACKBONE_CLASSES[version])
    a, b = image_pair(batch=2, height=64, width=96)
    with torch.no_grad():
        out = model(pixel_values_a=a, pixel_values_b=b, output_hidden_states=True)
    assert isinstance(out, ChangeDetectionOutput)
    assert out.logits.shape == (2, 2, 64, 96)
    assert out.loss is None
    # embeddings + 4 stages, per image, split from the shared pass
    assert len(out.hidden_states_a) == 5 and len(out.hidden_states_b) == 5
    assert out.hidden_states_a[-1].shape == (2, 64, 2, 3)
    assert not torch.equal(out.hidden_states_a[-1], out.hidden_states_b[-1])
    with torch.no_grad():
        plain = model(a, b)
    assert plain.hidden_states_a is None
    assert torch.allclose(plain.logits, out.logits)

    with torch.no_grad():
        as_tuple = model(a, b, labels=torch.zeros(2, 64, 96, dtype=torch.long), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert as_tuple[0].ndim == 0 and as_tuple[1].shape == (2, 2, 64, 96)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_backward_reaches_backbone_and_head(version):
    model = tiny_model(version).train()
    a, b = image_pair()
    labels = torch.randint(0, 2, (2, 64, 64))
    out = model(a, b, labels=labels)
    assert out.loss.requires_grad and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert grads["decode_head.classifier.weight"].abs().sum() > 0
    assert grads["decode_head.fusion_convs.3.conv.weight"].abs().sum() > 0
    assert grads["backbone.embeddings.patch_embeddings.weight"].abs().sum() > 0
    assert grads["backbone.encoder.stages.3.layers.0.pwconv2.weight"].abs().sum() > 0


def test_loss_matches_manual_cross_entropy_and_dice():
    model = tiny_model("v1").eval()
    a, b = image_pair()
    labels = torch.randint(0, 2, (2, 64, 64))
    labels[0, :10] = 255
    labels[1, :, :5] = 255
    with torch.no_grad():
        out = model(a, b, labels=labels)
        expected = F.cross_entropy(out.logits, labels, ignore_index=255)
        unreduced = F.cross_entropy(out.logits, labels, ignore_index=255, reduction="none")
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # ignored pixels really are excluded: the mean over the valid pixels only
    valid = labels != 255
    assert torch.allclose(out.loss, unreduced[valid].mean(), atol=1e-6)
    assert out.loss > 0

    # (N, 1, H, W) labels are accepted, uint8 labels too
    with torch.no_grad():
        same = model(a, b, labels=labels.unsqueeze(1).to(torch.uint8)).loss
    assert torch.allclose(same, expected, atol=1e-6)

    # Dice term: loss = CE + w * dice, with an independent binary computation of the dice term
    model.config.dice_weight = 0.5
    with torch.no_grad():
        dice_out = model(a, b, labels=labels)
        probs = out.logits.softmax(1)
        dices = []
        for k in range(2):
            p = probs[:, k][valid]
            t = (labels[valid] == k).float()
            dices.append((2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0))
        manual_dice = 1 - torch.stack(dices).mean()
    assert torch.allclose(soft_dice_loss(out.logits, labels, 255), manual_dice, atol=1e-5)
    assert torch.allclose(dice_out.loss, expected + 0.5 * manual_dice, atol=1e-5)

    # every pixel ignored -> zero loss, not NaN
    model.config.dice_weight = 0.0
    with torch.no_grad():
        all_ignored = model(a, b, labels=torch.full((2, 64, 64), 255)).loss
    assert all_ignored.item() == 0.0


def test_siamese_single_shared_backbone():
    model = tiny_model("v2").eval()
    backbones = [m for m in model.modules() if isinstance(m, ConvNextV2Backbone)]
    assert len(backbones) == 1 and backbones[0] is model.backbone
    top_level = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert top_level == {"backbone", "decode_head"}
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in model.backbone.parameters()) + sum(
        p.numel() for p in model.decode_head.parameters()
    )

    # one backbone pass on the concatenated (2N) batch
    calls = []
    handle = model.backbone.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    a, b = image_pair(batch=3)
    with torch.no_grad():
        features_a, features_b, _, _ = model.get_bitemporal_features(a, b)
        model(a, b)
    handle.remove()
    assert calls == [torch.Size([6, 3, 64, 64])] * 2

    # the same weights feed both branches: identical to running the backbone on A and on B separately
    with torch.no_grad():
        ref_a = model.backbone(a).feature_maps
        ref_b = model.backbone(b).feature_maps
    assert len(features_a) == 4
    for fa, fb, ra, rb in zip(features_a, features_b, ref_a, ref_b, strict=True):
        assert torch.allclose(fa, ra, atol=1e-5) and torch.allclose(fb, rb, atol=1e-5)

    # diff_concat is symmetric in A/B; concat_diff is order-aware
    with torch.no_grad():
        assert torch.allclose(model(a, b).logits, model(b, a).logits, atol=1e-5)
        ordered = tiny_model("v2", fusion="concat_diff").eval()
        assert not torch.allclose(ordered(a, b).logits, ordered(b, a).logits, atol=1e-5)
        # identical images -> identical features -> |fa - fb| == 0 at every scale
        fa, fb, _, _ = model.get_bitemporal_features(a, a.clone())
    assert all(torch.equal(x, y) for x, y in zip(fa, fb, strict=True))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_save_from_pretrained_and_automodel_roundtrip(version, tmp_path):
    model = tiny_model(version, fusion="concat_diff")
    a, b = image_pair()
    model.train()
    with torch.no_grad():
        model(a, b)  # update BatchNorm running statistics so that buffers must round-trip too
    model.eval()
    assert model.decode_head.fpn_conv.norm.num_batches_tracked.item() == 1
    with torch.no_grad():
        reference = model(a, b).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "convnext-change-detection"
    assert saved["architectures"] == ["ConvNextForChangeDetection"]
    assert saved["backbone_config"]["model_type"] == ("convnext" if version == "v1" else "convnextv2")

    direct = ConvNextForChangeDetection.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto) is ConvNextForChangeDetection
    assert type(AutoConfig.from_pretrained(tmp_path)) is ConvNextChangeDetectionConfig
    with torch.no_grad():
        assert torch.equal(direct(a, b).logits, reference)
        assert torch.equal(auto(a, b).logits, reference)
    for key, value in model.state_dict().items():
        assert torch.equal(auto.state_dict()[key], value), key


def test_input_validation_errors():
    model = tiny_model("v1").eval()
    a, b = image_pair()
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3, 64, 64\) and \(2, 3, 64, 32\)"):
        model(a, b[..., :32])
    with pytest.raises(ValueError, match=r"\(height, width\) = \(64, 60\).*stride 32.*\(64, 64\)"):
        model(a[..., :60], b[..., :60])
    with pytest.raises(ValueError, match=r"\(16, 16\).*at least.*stride 32.*\(32, 32\)"):
        model(a[..., :16, :16], b[..., :16, :16])
    with pytest.raises(ValueError, match="missing: pixel_values_b"):
        model(pixel_values_a=a)
    with pytest.raises(ValueError, match="4-D tensor"):
        model(a[0], b[0])
    with pytest.raises(ValueError, match="expects 3"):
        model(a[:, :2], b[:, :2])
    with pytest.raises(ValueError, match="labels must have shape"):
        model(a, b, labels=torch.zeros(2, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(a, b, labels=torch.zeros(2, 64, 64))
    with pytest.raises(TypeError, match="pixel_values_c"):
        model(a, b, pixel_values_c=a)
    # the minimum valid size works
    with torch.no_grad():
        assert model(a[..., :32, :32], b[..., :32, :32]).logits.shape == (2, 2, 32, 32)


def test_group_norm_decoder_trains_with_batch_of_one():
    model = tiny_model("v1", decoder_norm="group").train()
    a, b = image_pair(batch=1, height=32, width=32)
    out = model(a, b, labels=torch.ones(1, 32, 32, dtype=torch.long))
    out.loss.backward()
    assert isinstance(model.decode_head.fpn_conv.norm, torch.nn.GroupNorm)
    assert model.decode_head.classifier.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- builders


@needs_pretrained
def test_builders_copy_real_pretrained_backbone_exactly():
    source = load_file(str(PRETRAINED / "model.safetensors"))
    expected = {k[len("convnext.") :]: v for k, v in source.items() if k.startswith("convnext.")}
    expected = backbone_tensors(expected)
    assert len(expected) == 124  # atto 2-2-6-2: every embedding / encoder tensor of the checkpoint

    seg = build_segmentation_model(
        str(PRETRAINED), num_labels=3, class_names=["bg", "building", "road"], ignore_index=0, hidden_size=32
    )
    assert isinstance(seg, UperNetForSemanticSegmentation)
    assert isinstance(seg.backbone, ConvNextBackbone)
    assert seg.backbone.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert seg.config.num_labels == 3
    assert seg.config.id2label == {0: "bg", 1: "building", 2: "road"}
    assert seg.config.label2id == {"bg": 0, "building": 1, "road": 2}
    assert seg.config.loss_ignore_index == 0
    assert seg.decode_head.classifier.out_channels == 3

    cd = build_change_detection_model(str(PRETRAINED), decoder_hidden_size=32)
    assert isinstance(cd, ConvNextForChangeDetection) and isinstance(cd.backbone, ConvNextBackbone)
    assert cd.config.num_labels == 2 and cd.config.id2label == {0: "no-change", 1: "change"}
    assert cd.config.ignore_index == 255
    assert list(cd.config.backbone_config.hidden_sizes) == [40, 80, 160, 320]

    for model in (seg, cd):
        got = backbone_tensors(model.backbone.state_dict())
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(got[key], value), key
        norms = model.backbone.hidden_states_norms
        assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms.values())
        assert all(torch.equal(n.bias, torch.zeros_like(n.bias)) for n in norms.values())
        assert sorted(model.load_report.initialised)[0].startswith("hidden_states_norms.")
        assert "classifier.weight" in model.load_report.ignored

    clf = build_classification_model(str(PRETRAINED), num_labels=4, id2label={0: "a", 1: "b", 2: "c", 3: "d"})
    assert isinstance(clf, ConvNextForImageClassification)
    assert clf.config.label2id == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert clf.classifier.weight.shape == (4, 320)
    clf_state = clf.state_dict()
    for key, value in source.items():
        if key.startswith("convnext."):  # includes the pooled-output layernorm
            assert torch.equal(clf_state[key], value), key

    with torch.no_grad():
        a, b = image_pair(batch=1)
        assert cd.eval()(a, b).logits.shape == (1, 2, 64, 64)
        assert seg.eval()(pixel_values=a).logits.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("kind", ["classification", "model", "backbone"])
def test_builders_from_tiny_local_v2_checkpoint(kind, tmp_path):
    torch.manual_seed(3)
    if kind == "classification":
        source_model = ConvNextV2ForImageClassification(ConvNextV2Config(**TINY, num_labels=5))
    elif kind == "model":
        source_model = ConvNextV2Model(ConvNextV2Config(**TINY))
    else:
        source_model = ConvNextV2Backbone(
            ConvNextV2Config(**TINY, out_features=["stage1", "stage2", "stage3", "stage4"])
        )
    with torch.no_grad():  # GRN / norms are zeros / ones at init: make every tensor distinctive
        for param in source_model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    # sharded save exercises the index-file path
    source_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    prefix = "convnextv2." if kind == "classification" else ""
    expected = backbone_tensors({k[len(prefix) :]: v for k, v in source_model.state_dict().items()})

    cd = build_change_detection_model(
        tmp_path, num_labels=3, class_names=["none", "new", "demolished"], decoder_hidden_size=8
    )
    seg = build_segmentation_model(tmp_path, num_labels=4, hidden_size=16, auxiliary_channels=8)
    for model in (cd, seg):
        assert isinstance(model.backbone, ConvNextV2Backbone)
        got = backbone_tensors(model.backbone.state_dict())
        assert got.keys() == expected.keys() and len(got) > 0
        for key, value in expected.items():
            assert torch.equal(got[key], value), key
    assert cd.config.id2label == {0: "none", 1: "new", 2: "demolished"}
    assert cd.decode_head.classifier.out_channels == 3
    assert seg.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2", 3: "LABEL_3"}
    assert seg.config.loss_ignore_index == 255
    if kind == "backbone":  # a backbone checkpoint's feature-map norms are pretrained too
        src_norm = source_model.hidden_states_norms["stage2"].weight
        assert torch.equal(cd.backbone.hidden_states_norms["stage2"].weight, src_norm)
    else:
        assert torch.equal(cd.backbone.hidden_states_norms["stage2"].weight, torch.ones(16))

    clf = build_classification_model(tmp_path, num_labels=2, backbone_overrides={"drop_path_rate": 0.1})
    assert isinstance(clf, ConvNextV2ForImageClassification)
    assert clf.config.drop_path_rate == 0.1 and clf.config.num_labels == 2
    for key, value in expected.items():
        assert torch.equal(clf.convnextv2.state_dict()[key], value), key


def test_builder_errors(tmp_path):
    resnet_dir = tmp_path / "resnet"
    ResNetConfig().save_pretrained(resnet_dir)
    for build in (build_segmentation_model, build_change_detection_model, build_classification_model):
        with pytest.raises(ValueError, match=r"model_type='resnet'.*convnext, convnextv2"):
            build(resnet_dir, num_labels=2)

    ckpt = tmp_path / "convnext"
    ConvNextForImageClassification(ConvNextConfig(**TINY)).save_pretrained(ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    dropped = "convnext.encoder.stages.2.layers.0.pwconv1.weight"
    del weights[dropped]
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"missing from the checkpoint \(1\).*encoder\.stages\.2\.layers\.0\.pwconv1\.weight"
    ):
        build_change_detection_model(ckpt)

    with pytest.raises(ValueError, match="num_labels=3"):
        build_segmentation_model(ckpt, num_labels=3, class_names=["a", "b"])

    # shape mismatch is reported with both shapes
    model = ConvNextForChangeDetection(tiny_config("v1"))
    bad = {f"convnext.{k}": v for k, v in model.backbone.state_dict().items()}
    bad["convnext.embeddings.patch_embeddings.bias"] = torch.zeros(9)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(9,\).*\(8,\)"):
        load_convnext_backbone_weights(model.backbone, bad)


def test_models_package_does_not_import_other_subpackages():
    """upetu_hf.models may only import from itself (so never tuner / train / data / metrics, even transitively)."""
    models_dir = REPO_ROOT / "src" / "upetu_hf" / "models"
    offending = []
    for path in sorted(models_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                outside = node.level >= 2 or (node.level == 0 and (node.module or "").startswith("upetu_hf"))
                if node.level == 0 and (node.module or "").startswith("upetu_hf.models"):
                    outside = False
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
                outside = any(n.startswith("upetu_hf") and not n.startswith("upetu_hf.models") for n in names)
            else:
                continue
            if outside:
                offending.append(f"{path.name}:{node.lineno} {names}")
    assert len(list(models_dir.glob("*.py"))) >= 3
    assert offending == []
