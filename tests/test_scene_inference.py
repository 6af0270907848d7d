"""Scenes of any size: padding to the total stride (`models/padding.py`) and sliding-window tiling
(`models/tiling.py`) for UperNet segmentation and Siamese change detection, plain and PEFT-wrapped."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED, SHARED_BACKBONE
from peft import get_peft_model
from torch import nn
from transformers import ConvNextConfig, ResNetConfig, UperNetConfig, UperNetForSemanticSegmentation

from upetu_hf import UPetuConfig
from upetu_hf.data.band_statistics import compute_band_statistics, normalize_bands
from upetu_hf.data.multispectral import S2_L1C_BANDS, S2_RGB_BANDS, band_indices, read_multiband_image
from upetu_hf.models import (
    ConvNextChangeDetectionConfig,
    ConvNextForChangeDetection,
    build_change_detection_model,
    build_segmentation_model,
)
from upetu_hf.models.padding import forward_padded, model_total_stride, pad_to_multiple, padded_size
from upetu_hf.models.tiling import check_tiling, forward_tiled, scene_logits, tile_grid, tile_starts
from upetu_hf.train import TrainingArguments
from upetu_hf.train.inference import scene_tiling

BACKBONE = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]}


def _default_head_init(model: nn.Module, head: nn.Module) -> nn.Module:
    """Re-initialise the head's convolutions with PyTorch's default (Kaiming-uniform) init.

    Why: with the Hugging Face init (std 0.02) a random head's logits are nearly constant (std ~0.004), so class
    agreement between two inference modes would measure noise. Default-init heads give logits of std ~0.1."""
    torch.manual_seed(1)
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return model.eval()


def segmentation_model() -> UperNetForSemanticSegmentation:
    torch.manual_seed(0)
    backbone = ConvNextConfig(**BACKBONE, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, num_labels=5)
    model = UperNetForSemanticSegmentation(config)
    return _default_head_init(model, model.decode_head)


def change_model() -> ConvNextForChangeDetection:
    torch.manual_seed(0)
    config = ConvNextChangeDetectionConfig(
        backbone_config=ConvNextConfig(**BACKBONE).to_dict(), decoder_hidden_size=16
    )
    model = ConvNextForChangeDetection(config)
    return _default_head_init(model, model.decode_head)


def smooth_images(count: int, batch: int, height: int, width: int, seed: int = 1) -> list[torch.Tensor]:
    """Bilinearly upsampled noise: spatially correlated like real scenes (white noise is nothing like them)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = [torch.randn(batch, 3, height // 8, width // 8, generator=generator) for _ in range(count)]
    return [F.interpolate(c, size=(height, width), mode="bilinear", align_corners=False) for c in coarse]


def change_inputs(batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
    a, noise = smooth_images(2, batch, height, width)
    return {"pixel_values_a": a, "pixel_values_b": a + 0.5 * noise}


class PointwiseModel(nn.Module):
    """Per-pixel MLP (1x1 convs): receptive field of one pixel, so tiling must reproduce it exactly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GELU(), nn.Conv2d(8, 4, 1))

    def forward(self, pixel_values: torch.Tensor):
        return (self.net(pixel_values),)


class TileMeanModel(nn.Module):
    """Logits = the mean of the input over the whole window it is given (a purely global model):
    each tile's output is known in closed form, which tests the averaging weights."""

    def forward(self, pixel_values: torch.Tensor):
        return (pixel_values.mean(dim=(2, 3), keepdim=True).expand_as(pixel_values).clone(),)


# ------------------------------------------------------------------------------------------------ stride / padding


def test_model_total_stride_reads_the_backbone_config():
    assert model_total_stride(segmentation_model()) == 32
    assert model_total_stride(change_model()) == 32
    assert model_total_stride(ConvNextConfig(patch_size=2, depths=[1, 1, 1])) == 8
    cd = ConvNextChangeDetectionConfig(
        backbone_config=ConvNextConfig(patch_size=4, depths=[1, 1, 1]).to_dict()
    )
    assert model_total_stride(cd) == 16
    wrapped = get_peft_model(change_model(), UPetuConfig(bits=1))
    assert model_total_stride(wrapped) == 32
    with pytest.raises(ValueError, match="resnet"):
        model_total_stride(UperNetConfig(backbone_config=ResNetConfig(out_features=["stage1"])))
    with pytest.raises(ValueError, match="multiple="):
        model_total_stride(PointwiseModel())


def test_padded_size_and_pad_to_multiple():
    assert padded_size(250, 333, 32) == (256, 352)
    assert padded_size(256, 1, 32) == (256, 32)
    x = torch.randn(2, 3, 250, 333)
    padded = pad_to_multiple(x, 32)
    assert padded.shape == (2, 3, 256, 352)
    assert torch.equal(padded[..., :250, :333], x)
    assert padded[..., 250:, :].abs().sum() == 0 and padded[..., :, 333:].abs().sum() == 0
    y = torch.randn(1, 3, 64, 96)
    assert pad_to_multiple(y, 32) is y
    with pytest.raises(ValueError, match="positive"):
        padded_size(0, 5, 32)


@torch.no_grad()
def test_segmentation_odd_size_equals_zero_padded_input_cropped_back():
    model = segmentation_model()
    (x,) = smooth_images(1, 2, 250, 333)
    logits = forward_padded(model, x)
    assert logits.shape == (2, 5, 250, 333)
    manual = model(pixel_values=F.pad(x, (0, 352 - 333, 0, 256 - 250))).logits[..., :250, :333]
    assert torch.equal(logits, manual)
    assert torch.equal(logits.argmax(1), manual.argmax(1))
    # Why padding matters for UperNet: on the raw odd size its pyramid levels round (250 -> 62 -> 31 -> 15 -> 7)
    # and the prediction differs from the stride-aligned one.
    raw = model(pixel_values=x).logits
    assert (raw - logits).abs().max() > 1e-3


@torch.no_grad()
def test_training_loop_evaluates_each_task_on_the_inputs_it_trained_on():
    """Segmentation is evaluated on the scene as it is (UperNet trains on unpadded images: padding only at
    evaluation cost about 20 points of GID validation mIoU at 112 px); change detection is padded to the stride,
    which its model needs; a tiled evaluation stays on the stride grid."""
    model = segmentation_model()
    (x,) = smooth_images(1, 2, 112, 112)
    args = TrainingArguments(task="segmentation", model="m", data="d", output_dir="o")
    tiling = scene_tiling(args, model)
    assert tiling["multiple"] == 1
    assert torch.equal(scene_logits(model, x, **tiling), model(pixel_values=x).logits)
    assert (
        forward_padded(model, x) - model(pixel_values=x).logits
    ).abs().max() > 1e-3  # padding would differ
    tiled = TrainingArguments(task="segmentation", model="m", data="d", output_dir="o", tile_size=64)
    assert scene_tiling(tiled, model)["multiple"] == 32
    change = TrainingArguments(task="change-detection", model="m", data="d", output_dir="o")
    assert scene_tiling(change, change_model())["multiple"] == 32


@torch.no_grad()
def test_change_detection_odd_size_equals_zero_padded_input_cropped_back():
    model = change_model()
    inputs = change_inputs(2, 250, 333)
    with pytest.raises(ValueError, match="multiples of the backbone total stride 32"):
        model(**inputs)
    logits = forward_padded(model, inputs)
    assert logits.shape == (2, 2, 250, 333)
    padded = {k: F.pad(v, (0, 19, 0, 6)) for k, v in inputs.items()}
    manual = model(**padded).logits[..., :250, :333]
    assert torch.equal(logits, manual)
    # each image of the batch is predicted independently of the other (eval mode: BatchNorm uses running stats)
    single = forward_padded(model, {k: v[1:] for k, v in inputs.items()})
    torch.testing.assert_close(single, logits[1:], rtol=0, atol=1e-5)


@torch.no_grad()
def test_padding_works_for_peft_wrapped_models():
    base = change_model()
    model = get_peft_model(base, UPetuConfig(bits=2, init_weights=False)).eval()
    inputs = change_inputs(1, 100, 70)
    logits = forward_padded(model, inputs)
    manual = model(**{k: F.pad(v, (0, 26, 0, 28)) for k, v in inputs.items()}).logits[..., :100, :70]
    assert torch.equal(logits, manual)
    seg = get_peft_model(segmentation_model(), UPetuConfig(bits=1, init_weights=False)).eval()
    (x,) = smooth_images(1, 1, 90, 45)
    out = forward_padded(seg, {"pixel_values": x})
    assert torch.equal(out, seg(pixel_values=F.pad(x, (0, 19, 0, 6))).logits[..., :90, :45])


def test_forward_padded_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="share batch size, height and width"):
        forward_padded(
            change_model(),
            {"pixel_values_a": torch.zeros(1, 3, 64, 64), "pixel_values_b": torch.zeros(1, 3, 64, 32)},
        )
    with pytest.raises(ValueError, match="4-D"):
        forward_padded(segmentation_model(), torch.zeros(3, 64, 64))


# ------------------------------------------------------------------------------------------------ tiling mechanics


def test_tile_starts_and_grid():
    assert tile_starts(1024, 256, 192) == [0, 192, 384, 576, 768]
    assert tile_starts(256, 256, 192) == [0]
    assert tile_starts(288, 256, 192) == [0, 192]
    # 1000 x 640 (the aerial pairs of issue 14): padded 1024 x 640, tiles of 512 with overlap 128
    grid = tile_grid(640, 1000, 512, 128, 32)
    assert sorted({top for top, *_ in grid}) == [0, 384]
    assert sorted({left for _, left, *_ in grid}) == [0, 384, 768]
    assert {(h, w) for *_, h, w in grid} == {(512, 512)}
    # a scene smaller than a tile is one window of its padded size
    assert tile_grid(250, 333, 512, 128, 32) == [(0, 0, 256, 352)]


@pytest.mark.parametrize(
    ("tile", "overlap", "message"),
    [
        (250, 0, "tile_size=250"),
        (16, 0, "tile_size=16"),
        (256, 256, "tile_overlap=256"),
        (256, 40, "tile_overlap=40"),
        (256, -32, "tile_overlap=-32"),
    ],
)
def test_check_tiling_rejects_bad_settings(tile, overlap, message):
    with pytest.raises(ValueError, match=message):
        check_tiling(tile, overlap, 32)


def test_check_tiling_accepts_multiples():
    check_tiling(512, 128, 32)
    check_tiling(32, 0, 32)


@pytest.mark.parametrize(
    ("tile", "overlap", "per_batch"), [(256, 64, 1), (256, 128, 3), (512, 0, 4), (384, 96, 7)]
)
def test_tiling_is_exact_for_a_pointwise_model(tile, overlap, per_batch):
    model = PointwiseModel().eval()
    x = torch.randn(2, 3, 1000, 1000)
    whole = forward_padded(model, x, multiple=32)
    tiled = forward_tiled(model, x, tile, overlap, multiple=32, tiles_per_batch=per_batch)
    assert tiled.shape == (2, 4, 1000, 1000)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_tiling_averages_each_pixel_over_the_tiles_that_cover_it():
    """Expected output built independently: windows at 0, 192, 384 (tile 256, overlap 64) of the 576 x 576
    zero-padded scene; each window contributes its own mean; each pixel divides by its cover count."""
    x = torch.rand(1, 1, 560, 530)
    tiled = forward_tiled(TileMeanModel(), x, 256, 64, multiple=32)
    padded = torch.zeros(1, 1, 640, 640)  # the grid: last window 384 + 256 = 640
    padded[..., :560, :530] = x
    total = torch.zeros(640, 640)
    count = torch.zeros(640, 640)
    for top in (0, 192, 384):
        for left in (0, 192, 384):
            total[top : top + 256, left : left + 256] += padded[
                0, 0, top : top + 256, left : left + 256
            ].mean()
            count[top : top + 256, left : left + 256] += 1
    assert (
        count[:560, :530].min() == 1 and count[200, 200] == 4
    )  # corners once, overlaps of four tiles four times
    expected = (total / count)[:560, :530]
    torch.testing.assert_close(tiled[0, 0], expected, rtol=0, atol=1e-6)
    # and it is not the whole-image answer: the global model sees a different window per tile
    assert (tiled[0, 0] - x.mean()).abs().max() > 1e-3

    # Hann window: weights sin^2(pi i / 255) (floored at 0.01) along each axis of a tile
    hann = torch.sin(torch.pi * torch.arange(256) / 255).square().clamp_min(0.01)
    weight = hann[:, None] * hann[None, :]
    total.zero_()
    count.zero_()
    for top in (0, 192, 384):
        for left in (0, 192, 384):
            total[top : top + 256, left : left + 256] += (
                weight * padded[0, 0, top : top + 256, left : left + 256].mean()
            )
            count[top : top + 256, left : left + 256] += weight
    windowed = forward_tiled(TileMeanModel(), x, 256, 64, multiple=32, window="hann")
    torch.testing.assert_close(windowed[0, 0], (total / count)[:560, :530], rtol=0, atol=1e-5)
    assert (windowed - tiled).abs().max() > 1e-3
    with pytest.raises(ValueError, match="window must be one of"):
        forward_tiled(TileMeanModel(), x, 256, 64, multiple=32, window="gauss")


@torch.no_grad()
def test_scene_smaller_than_a_tile_is_exactly_the_padded_prediction():
    model = segmentation_model()
    (x,) = smooth_images(1, 1, 250, 333)
    assert torch.equal(forward_tiled(model, x, 512, 128), forward_padded(model, x))
    assert torch.equal(scene_logits(model, x), forward_padded(model, x))


# ------------------------------------------------------------------------------------------------ tiled vs whole

# Receptive-field radius of the tiny ConvNeXt change-detection model (depths 1-1-1-1), in input pixels: the 7x7
# depthwise convs add 3 positions per block at strides 4, 8, 16, 32 (12 + 24 + 48 + 96 = 180), the 4x4 stem and
# 2x2 down-samplings add at most 4 + 4 + 8 + 16 = 32, the decoder's bilinear upsamplings one coarse position each
# (32 + 16 + 8 + 4 = 60) and its 3x3 conv at stride 4 another 4: 276 < 288.
CD_RECEPTIVE_RADIUS = 288


@torch.no_grad()
def test_change_detection_tiles_match_whole_image_where_they_cover_the_receptive_field():
    """Tiles of 768 (no overlap) on 1000 x 1000: pixels of the first tile at least the receptive radius from its
    edges see exactly what the whole pass sees; near the tile edge they do not."""
    model = change_model()
    inputs = change_inputs(1, 1000, 1000)
    whole = forward_padded(model, inputs)
    tiled = forward_tiled(model, inputs, 768, 0)
    inner = slice(CD_RECEPTIVE_RADIUS, 768 - CD_RECEPTIVE_RADIUS)
    torch.testing.assert_close(tiled[..., inner, inner], whole[..., inner, inner], rtol=0, atol=1e-5)
    assert (tiled[..., 740:800, :] - whole[..., 740:800, :]).abs().max() > 1e-3  # across the tile edge at 768


# Measured on these seeded models and 1000 x 1000 smooth inputs: relative mean error
# mean|L_tiled - L_whole| / std(L_whole), and argmax agreement:
#                                  uniform 256/64   uniform 512/128   hann 256/128     hann 512/256
#   segmentation (UperNet, PPM):   0.045, 0.963     0.025, 0.979      0.022, 0.983     0.011, 0.992
#   change detection (FPN head):   0.058, 0.982     0.030, 0.990      0.0026, 0.9992   0.0006, 0.9998
# (with uniform weights a larger overlap hardly helps - 512/256 gives 0.026 and 0.030 - larger tiles do; the Hann
# window fades tile edges and helps most at 50 % overlap). The tests allow 1.5x the measured error and 1 percentage
# point less agreement.
TOLERANCES = {
    ("segmentation", "uniform", 256, 64): (0.067, 0.953),
    ("segmentation", "uniform", 512, 128): (0.037, 0.968),
    ("segmentation", "hann", 256, 128): (0.033, 0.973),
    ("segmentation", "hann", 512, 256): (0.016, 0.982),
    ("change", "uniform", 256, 64): (0.087, 0.972),
    ("change", "uniform", 512, 128): (0.045, 0.980),
    ("change", "hann", 256, 128): (0.0039, 0.989),
    ("change", "hann", 512, 256): (0.0009, 0.989),
}


@pytest.mark.parametrize(("task", "window", "tile", "overlap"), sorted(TOLERANCES))
@torch.no_grad()
def test_tiled_inference_on_1000x1000_is_within_stated_tolerance(task, window, tile, overlap):
    if task == "segmentation":
        model, (inputs,) = segmentation_model(), smooth_images(1, 1, 1000, 1000)
    else:
        model, inputs = change_model(), change_inputs(1, 1000, 1000)
    whole = forward_padded(model, inputs)
    tiled = scene_logits(model, inputs, tile_size=tile, tile_overlap=overlap, window=window)
    assert tiled.shape == whole.shape == (1, 5 if task == "segmentation" else 2, 1000, 1000)
    relative = ((tiled - whole).abs().mean() / whole.std()).item()
    agreement = (tiled.argmax(1) == whole.argmax(1)).float().mean().item()
    max_relative, min_agreement = TOLERANCES[(task, window, tile, overlap)]
    assert 0 < relative <= max_relative  # > 0: tiles are NOT the whole pass (context is cut at tile edges)
    assert agreement >= min_agreement


@torch.no_grad()
def test_tiling_works_for_peft_wrapped_change_detection():
    """Two 704-row windows stacked (tile 640 spans the whole padded width 608): rows further than the receptive
    radius from the tile edge at 640 match the whole pass exactly, through the PEFT wrapper and a random EQAM
    adapter (EQAM is per-pixel, so it keeps the model local)."""
    model = get_peft_model(change_model(), UPetuConfig(bits=1, use_capm=False, init_weights=False)).eval()
    inputs = change_inputs(2, 700, 600)
    tiled = forward_tiled(model, inputs, 640, 0, tiles_per_batch=2)
    whole = forward_padded(model, inputs)
    assert tiled.shape == (2, 2, 700, 600)
    rows = slice(0, 640 - CD_RECEPTIVE_RADIUS)
    torch.testing.assert_close(tiled[..., rows, :], whole[..., rows, :], rtol=0, atol=1e-5)
    with model.disable_adapter():
        plain = forward_tiled(model, inputs, 640, 0)
    assert (plain - tiled).abs().max() > 1e-3  # the adapter is active in the tiled pass


@torch.no_grad()
def test_capm_prompts_are_resized_per_window():
    """CAPM resizes its m x m prompt map to the feature map it is given, so under tiling each window gets the
    whole prompt map: even where tiles cover the receptive field they differ from the whole pass. (Tiles of the
    training crop size reproduce the prompt geometry seen in training.)"""
    model = get_peft_model(change_model(), UPetuConfig(bits=1, use_eqam=False, init_weights=False)).eval()
    inputs = change_inputs(1, 700, 600)
    tiled = forward_tiled(model, inputs, 640, 0)
    whole = forward_padded(model, inputs)
    rows = slice(0, 640 - CD_RECEPTIVE_RADIUS)
    assert (tiled[..., rows, :] - whole[..., rows, :]).abs().max() > 1e-3


# A real scene and a pretrained backbone (ConvNeXt-atto, depths 2-2-6-2, with random heads): OSCD Beirut, RGB bands
# normalised with their own statistics, 590 x 535. Measured (relative mean error, agreement):
#   segmentation: uniform 256/64 0.234, 0.832;  hann 256/128 0.177, 0.869
#   change:       uniform 256/64 0.124, 0.993;  hann 256/128 0.089, 0.996
# A deeper pretrained backbone has a larger effective receptive field than the tiny random models above, so tiles
# differ more (and the random UperNet head's margins are small, hence the lower agreement); tolerances are again
# 1.5x the error and 1 point of agreement.
REAL_TOLERANCES = {
    ("segmentation", "uniform", 256, 64): (0.35, 0.822),
    ("segmentation", "hann", 256, 128): (0.266, 0.859),
    ("change", "uniform", 256, 64): (0.186, 0.982),
    ("change", "hann", 256, 128): (0.134, 0.986),
}


@pytest.mark.skipif(
    not (SHARED_BACKBONE / "config.json").is_file() or not (SHARED / "data" / "oscd13_s2").is_dir(),
    reason=f"the shared backbone or OSCD-13 data is missing under {SHARED}",
)
@torch.no_grad()
def test_tiled_inference_on_a_real_scene_with_a_pretrained_backbone():
    folder = SHARED / "data" / "oscd13_s2"
    rgb = band_indices(S2_RGB_BANDS, S2_L1C_BANDS)
    paths = [folder / date / "beirut.tif" for date in ("A", "B")]
    stats = compute_band_statistics(paths, num_bands=13, bands=rgb)
    a, b = (
        torch.from_numpy(normalize_bands(read_multiband_image(p, 13, rgb), stats.mean, stats.std))[None]
        for p in paths
    )
    torch.manual_seed(0)
    models = {
        "change": build_change_detection_model(SHARED_BACKBONE, decoder_hidden_size=64),
        "segmentation": build_segmentation_model(
            SHARED_BACKBONE, num_labels=5, hidden_size=64, use_auxiliary_head=False
        ),
    }
    for model in models.values():
        _default_head_init(model, model.decode_head)
    inputs = {"change": {"pixel_values_a": a, "pixel_values_b": b}, "segmentation": {"pixel_values": a}}
    errors = {}
    for task in ("segmentation", "change"):
        whole = forward_padded(models[task], inputs[task])
        for (name, window, tile, overlap), (max_relative, min_agreement) in REAL_TOLERANCES.items():
            if name != task:
                continue
            tiled = forward_tiled(models[task], inputs[task], tile, overlap, window=window)
            relative = ((tiled - whole).abs().mean() / whole.std()).item()
            agreement = (tiled.argmax(1) == whole.argmax(1)).float().mean().item()
            assert 0 < relative <= max_relative, (name, window, relative)
            assert agreement >= min_agreement, (name, window, agreement)
            errors[(task, window)] = relative
    assert errors[("segmentation", "hann")] < errors[("segmentation", "uniform")]
    assert errors[("change", "hann")] < errors[("change", "uniform")]
