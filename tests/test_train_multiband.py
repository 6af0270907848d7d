"""Issue 14 through the training API and the CLI: 13-band and 4-band GeoTIFF datasets train one epoch of
classification, segmentation and change detection with UPetu (the RGB stem inflated and saved with the adapter),
`upetu-eval` reproduces the metrics from the run record (band statistics included), scenes of odd sizes evaluate
whole or tiled, `--crops-per-image` repeats the training scenes, and bad inputs are one-line errors at scan time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import tifffile
from test_train import ENV, write_checkpoint  # noqa: F401  (ENV keeps subprocesses offline)

from upetu_hf.data.band_statistics import compute_band_statistics
from upetu_hf.data.multispectral import S2_L1C_BANDS
from upetu_hf.train import EvalArguments, TrainingArguments, evaluate_model, load_trained_model, train
from upetu_hf.train.cli import eval_main, main


def scene(rng: np.random.Generator, bands: int, height: int, width: int, mask: np.ndarray) -> np.ndarray:
    """`(bands, H, W)` uint16 counts around `1000 * (band + 1)`, brighter where `mask` is set (band 7 most)."""
    base = 1000.0 * np.arange(1, bands + 1)[:, None, None]
    signal = mask[None] * (300.0 + 900.0 * (np.arange(bands) == min(7, bands - 1))[:, None, None])
    return (base + signal + rng.normal(0, 60, (bands, height, width))).clip(0, 65535).astype(np.uint16)


def write_tif(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, photometric="minisblack")


def write_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(mask.astype(np.uint8)).save(path)


def block_mask(height: int, width: int, i: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[4 + i : height // 2 + i, width // 3 :] = 1
    return mask


def multiband_classification(root: Path, bands: int, per_class: int = 4, size: int = 32) -> Path:
    rng = np.random.default_rng(bands)
    for c in range(2):
        for i in range(per_class):
            mask = np.full((size, size), c, np.uint8)
            write_tif(root / f"class_{c}" / f"{c}_{i}.tif", scene(rng, bands, size, size, mask))
    return root


def multiband_segmentation(root: Path, bands: int, sizes=((64, 64),) * 4) -> Path:
    rng = np.random.default_rng(10 + bands)
    for i, (h, w) in enumerate(sizes):
        mask = block_mask(h, w, i)
        write_tif(root / "images" / f"tile_{i}.tif", scene(rng, bands, h, w, mask))
        write_png(root / "masks" / f"tile_{i}.png", mask)
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "built"}))
    return root


def multiband_change(root: Path, bands: int = 13, sizes=((64, 64),) * 4) -> Path:
    rng = np.random.default_rng(20 + bands)
    for i, (h, w) in enumerate(sizes):
        change = block_mask(h, w, i)
        write_tif(root / "A" / f"city_{i}.tif", scene(rng, bands, h, w, np.zeros_like(change)))
        write_tif(root / "B" / f"city_{i}.tif", scene(rng, bands, h, w, change))
        write_png(root / "label" / f"city_{i}.png", change * 255)
    if bands == 13:
        (root / "bands.json").write_text(json.dumps({"bands": list(S2_L1C_BANDS)}))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("model") / "convnext-tiny")


def base_args(task: str, model: Path, data: Path, out: Path, **extra) -> TrainingArguments:
    values = dict(
        task=task,
        model=str(model),
        data=str(data),
        output_dir=str(out),
        train_fraction=0.5,
        epochs=1,
        batch_size=2,
        r=2,
        checkpointing_steps="no",
        lr=1e-2,
    )
    values.update(extra)
    return TrainingArguments(**values)


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("bands", [13, 4])
def test_multiband_classification_trains_and_upetu_eval_reproduces_it(tmp_path, tiny, bands):
    data = multiband_classification(tmp_path / f"scenes{bands}", bands)
    out = tmp_path / "run"
    results = train(base_args("classification", tiny, data, out, image_size=32))
    record = json.loads((out / "run_config.json").read_text())
    setup = record["bands"]
    assert (setup["file_bands"], setup["num_channels"], setup["model_channels"]) == (bands, bands, 3)
    expected_rgb = (
        [3, 2, 1] if bands == 13 else [0, 1, 2]
    )  # Sentinel-2 names for 13 bands; else the first three
    assert setup["rgb_indices"] == expected_rgb
    # the statistics are those of the training split's files, computed in one pass
    model, _ = load_trained_model(str(out))
    files = sorted(data.rglob("*.tif"))
    assert setup["statistics"]["num_files"] == len(files) // 2 == record["splits"]["train"]
    # the adapter carries the inflated stem (modules_to_save) and reloads with bands input channels
    stem = model.base_model.model.convnext.embeddings.patch_embeddings
    assert stem.modules_to_save["default"].in_channels == bands
    metrics = evaluate_model(EvalArguments(adapter=str(out)))
    assert metrics["accuracy"] == results["test"]["accuracy"]
    card = (out / "README.md").read_text()  # the card lists the bands and their statistics
    assert (
        f"{bands} of the {bands} bands" in card
        and f"| {setup['selected'][0]} | 0 | {setup['mean'][0]:.6g} |" in card
    )
    assert metrics["num_samples"] == results["test"]["num_samples"] == len(files) // 2


def test_band_statistics_are_the_training_splits_and_new_bands_learn(tmp_path, tiny):
    data = multiband_segmentation(tmp_path / "seg13", 13)
    out = tmp_path / "run"
    train(base_args("segmentation", tiny, data, out, image_size=32, crops_per_image=2))
    record = json.loads((out / "run_config.json").read_text())
    setup = record["bands"]
    files = sorted((data / "images").glob("*.tif"))
    # recompute on each candidate half: exactly one of them is the training split
    from itertools import combinations

    matches = [
        pair
        for pair in combinations(files, 2)
        if np.allclose(compute_band_statistics(pair, num_bands=13).mean, setup["mean"], rtol=0, atol=1e-6)
    ]
    assert len(matches) == 1 and setup["statistics"]["num_files"] == 2
    assert record["crops_per_image"] == 2
    model, _ = load_trained_model(str(out))
    conv = model.base_model.model.backbone.embeddings.patch_embeddings.modules_to_save["default"]
    # new bands started at zero (new_band_scale 0) and were trained with the adapter
    assert conv.weight.shape[1] == 13
    assert float(conv.weight[:, [0, 4, 5, 6, 7, 8, 9, 10, 11, 12]].abs().sum()) > 0


def test_rgb_subset_of_13_bands_keeps_the_stem(tmp_path, tiny):
    data = multiband_change(tmp_path / "cd13", 13)
    out = tmp_path / "run"
    results = train(
        base_args("change-detection", tiny, data, out, image_size=32, bands=["B04", "B03", "B02"])
    )
    setup = json.loads((out / "run_config.json").read_text())["bands"]
    assert (setup["indices"], setup["num_channels"], setup["rgb_indices"]) == ([3, 2, 1], 3, [])
    metrics = evaluate_model(EvalArguments(adapter=str(out)))
    assert metrics["f1"] == results["test"]["f1"]


# ---------------------------------------------------------------------------------------------- any size, CLI
def test_odd_sized_scenes_train_on_crops_and_evaluate_whole_or_tiled_through_the_cli(tmp_path, tiny, capsys):
    sizes = [(70, 45), (53, 81), (64, 96), (41, 77)]
    data = multiband_change(tmp_path / "cd_odd", 13, sizes)
    out = tmp_path / "run"
    code = main(
        [
            "change-detection", "--model", str(tiny), "--data", str(data), "--output-dir", str(out),
            "--train-fraction", "0.5", "--epochs", "1", "--batch-size", "2", "--r", "2",
            "--image-size", "32", "--crops-per-image", "3", "--checkpointing-steps", "no",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "metrics.json").read_text())
    # 2 training scenes x 3 crops = 6 crops, batches of 2: 3 steps
    assert results["train"]["steps"] == 3
    capsys.readouterr()
    preds = tmp_path / "preds"
    assert (
        eval_main(
            ["--adapter", str(out), "--predict-dir", str(preds), "--metrics-file", str(tmp_path / "m.json")]
        )
        == 0
    )
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["f1"] == results["test"]["f1"]
    test_names = {p.stem for p in preds.glob("*.png")}
    assert len(test_names) == 2
    pixels = 0
    for name in test_names:  # every mask at its scene's own size (cropped back from the padding)
        size = PIL.Image.open(data / "label" / f"{name}.png").size
        assert PIL.Image.open(preds / f"{name}.png").size == size
        pixels += size[0] * size[1]
        row = {"image_a": str(data / "A" / f"{name}.tif"), "image_b": str(data / "B" / f"{name}.tif")}
        expected = hand_prediction(out, row, multiple=32)
        assert np.array_equal(np.asarray(PIL.Image.open(preds / f"{name}.png")), expected * 255)
    assert written["num_pixels"] == pixels
    assert (
        eval_main(
            [
                "--adapter",
                str(out),
                "--tile-size",
                "32",
                "--tile-overlap",
                "0",
                "--metrics-file",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    tiled = json.loads((tmp_path / "t.json").read_text())
    assert tiled["num_pixels"] == pixels and 0.0 <= tiled["f1"] <= 1.0


def hand_prediction(run: Path, row: dict[str, str], multiple: int) -> np.ndarray:
    """The trained run's prediction for one scene, computed by hand: the run's transform (bands, statistics),
    zero-padded to a multiple of `multiple` at the bottom and right (1: not padded), the model, the logits cropped
    back, argmax."""
    import torch
    import torch.nn.functional as F

    from upetu_hf.train import get_task
    from upetu_hf.train.inference import run_bands

    model, record = load_trained_model(str(run))
    spec = get_task(record.arguments.task)
    transform = spec.transform(record.arguments, 2, train=False, label_column=False, bands=run_bands(record))
    inputs = {k: v[None] for k, v in transform(row).items()}
    height, width = next(iter(inputs.values())).shape[-2:]
    pad = (0, -width % multiple, 0, -height % multiple)
    with torch.no_grad():
        logits = model(**{k: F.pad(v, pad) for k, v in inputs.items()}).logits
    return logits[0, :, :height, :width].argmax(0).numpy().astype(np.uint8)


def test_odd_sized_segmentation_scenes_predict_whole_and_unpadded(tmp_path, tiny):
    """UperNet trains on unpadded crops, so whole scenes of any size are predicted as they are (padding them only at
    evaluation cost ~20 points of GID validation mIoU; see `upetu_hf.train.inference.scene_tiling`)."""
    data = multiband_segmentation(tmp_path / "seg_odd", 4, [(70, 45), (53, 81), (45, 50), (41, 77)])
    out = tmp_path / "run"
    # a decoder rate that moves this tiny decoder in one short run, so that padding visibly changes its predictions
    train(base_args("segmentation", tiny, data, out, image_size=32, head_hidden_size=16, head_lr=3e-3))
    preds = tmp_path / "preds"
    evaluate_model(EvalArguments(adapter=str(out), predict_dir=str(preds)))
    names = sorted(p.stem for p in preds.glob("*.png"))
    assert len(names) == 2
    for name in names:
        expected = hand_prediction(out, {"image": str(data / "images" / f"{name}.tif")}, multiple=1)
        assert not np.array_equal(
            expected, hand_prediction(out, {"image": str(data / "images" / f"{name}.tif")}, 32)
        )
        assert np.array_equal(np.asarray(PIL.Image.open(preds / f"{name}.png")), expected)


# ---------------------------------------------------------------------------------------------- errors
def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def seg_argv(tiny: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "segmentation", "--model", str(tiny), "--data", str(data), "--output-dir", str(out),
        "--train-fraction", "0.5", "--epochs", "1", "--image-size", "32", *extra,
    ]  # fmt: skip


def test_a_single_band_mask_given_as_an_image_fails_at_scan_time(tmp_path, tiny, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    mask = np.zeros((64, 64), np.uint16)
    write_tif(data / "images" / "tile_0.tif", mask)
    code, err = run_cli(seg_argv(tiny, data, tmp_path / "out"), capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "tile_0.tif has a single band" in err and "mask" in err
    assert not (tmp_path / "out" / "run_config.json").exists()


def test_a_non_image_tiff_fails_at_scan_time(tmp_path, tiny, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    write_tif(
        data / "images" / "tile_1.tif", np.zeros((2, 3, 4, 5), np.uint16)
    )  # a 4-D stack, not bands x H x W
    code, err = run_cli(seg_argv(tiny, data, tmp_path / "out"), capsys)
    assert code == 2 and "tile_1.tif" in err and "not an image of bands x height x width" in err


def test_band_count_mismatches_name_the_file_and_the_fix(tmp_path, tiny, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    code, err = run_cli(seg_argv(tiny, data, tmp_path / "a", "--num-channels", "13"), capsys)
    assert code == 2 and "has 4 bands but --num-channels is 13" in err
    write_tif(data / "images" / "tile_2.tif", scene(np.random.default_rng(0), 5, 64, 64, np.zeros((64, 64))))
    code, err = run_cli(seg_argv(tiny, data, tmp_path / "b"), capsys)
    assert code == 2 and "different band counts" in err and "tile_2.tif has 5" in err


def test_a_model_with_other_input_bands_is_refused(tmp_path, tiny, capsys):
    data = multiband_segmentation(tmp_path / "seg", 4)
    four = tmp_path / "four-band"
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_channels=5)
    ConvNextForImageClassification(config).save_pretrained(four)
    code, err = run_cli(seg_argv(four, data, tmp_path / "out"), capsys)
    assert code == 2 and "--data has 4 band(s)" in err and "takes 5 input bands" in err


def test_whole_scene_training_of_odd_change_pairs_is_refused_at_scan_time(tmp_path, tiny, capsys):
    data = multiband_change(tmp_path / "cd", 13, [(70, 45)] * 4)
    code, err = run_cli(
        ["change-detection", "--model", str(tiny), "--data", str(data), "--output-dir", str(tmp_path / "o"),
         "--train-fraction", "0.5", "--batch-size", "1"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "is 70x45" in err and "--image-size" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("crops_per_image", 0, "--crops-per-image=0 is invalid"),
        ("tile_size", 48, "--tile-size=48 must be a positive multiple"),
        ("tile_overlap", 32, "--tile-overlap needs --tile-size"),
        ("band_statistics", "stats.txt", "--band-statistics 'stats.txt' is invalid"),
    ],
)
def test_option_checks(option, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(task="segmentation", model="m", data="d", output_dir="o", **{option: value})


def test_band_statistics_from_a_file_or_the_processor(tmp_path, tiny, capsys):
    data = multiband_segmentation(tmp_path / "seg4", 4)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"mean": [1000, 2000, 3000, 4000], "std": [50, 60, 70, 80]}))
    out = tmp_path / "run"
    results = train(base_args("segmentation", tiny, data, out, image_size=32, band_statistics=str(stats)))
    setup = json.loads((out / "run_config.json").read_text())["bands"]
    assert (setup["mean"], setup["std"], setup["scale"], setup["statistics"]) == (
        [1000.0, 2000.0, 3000.0, 4000.0],
        [50.0, 60.0, 70.0, 80.0],
        1.0,
        None,
    )
    stats.unlink()  # upetu-eval reads the run record, not the file
    assert evaluate_model(EvalArguments(adapter=str(out)))["mean_iou"] == results["test"]["mean_iou"]
    # the checkpoint's processor has 3 (RGB) values: not one per band
    code, err = run_cli(seg_argv(tiny, data, tmp_path / "p", "--band-statistics", "processor"), capsys)
    assert code == 2 and "not 4 values (one per band)" in err


@pytest.mark.parametrize("method", ["full", "linear"])
def test_full_and_linear_runs_save_the_inflated_model(tmp_path, tiny, method):
    data = multiband_change(tmp_path / "cd4", 4)
    out = tmp_path / "run"
    kw = dict(method=method, r=None, lr=1e-3, image_size=32, head_hidden_size=16)
    results = train(base_args("change-detection", tiny, data, out, **kw))
    saved = json.loads((out / "config.json").read_text())
    assert saved["backbone_config"]["num_channels"] == 4
    model, _ = load_trained_model(str(out))
    assert model.backbone.embeddings.patch_embeddings.in_channels == 4
    assert evaluate_model(EvalArguments(adapter=str(out)))["f1"] == results["test"]["f1"]


def test_an_inflated_stem_has_its_own_learning_rate(tiny):
    from upetu_hf.models import build_segmentation_model
    from upetu_hf.models.stem import STEM_MODULES_TO_SAVE, inflate_stem
    from upetu_hf.train.methods import apply_method, parameter_groups

    model = build_segmentation_model(str(tiny), num_labels=2, hidden_size=16, auxiliary_channels=16)
    inflate_stem(model, 13, [3, 2, 1])
    peft = apply_method(model, "upetu", extra_modules=STEM_MODULES_TO_SAVE, r=2)
    lrs = dict.fromkeys(STEM_MODULES_TO_SAVE, 5e-4)
    groups = parameter_groups(peft, 0.05, lrs)
    names = {id(p): n for n, p in peft.named_parameters()}
    own = {names[id(p)] for g in groups if g.get("lr") == 5e-4 for p in g["params"]}
    assert own and all(".embeddings." in n and "modules_to_save" in n for n in own)
    stem_trainables = {n for n, p in peft.named_parameters() if p.requires_grad and ".embeddings." in n}
    assert own == stem_trainables  # conv weight and bias, LayerNorm weight and bias
    assert {g["weight_decay"] for g in groups if g.get("lr") == 5e-4} == {0.05, 0.0}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in peft.parameters())
