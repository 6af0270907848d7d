"""Tests for upetu_hf.data: folder loaders, stratified splits, transforms and their errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from upetu_hf.data import (
    ChangeDetectionTransform,
    ClassificationTransform,
    SegmentationTransform,
    add_validation_split,
    attach_transform,
    change_detection_collate_fn,
    check_mask_files,
    classification_collate_fn,
    load_change_detection_folder,
    load_classification_dataset,
    load_image_folder,
    load_segmentation_folder,
    processor_settings,
    resize_mask,
    save_resized_image_folder,
    segmentation_collate_fn,
    stratified_split,
    to_rgb,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
DATA = SHARED / "data"
needs_shared = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real datasets) is not available")

# mean 0 / std 1 makes pixel_values * 255 the raw uint8 pixels, so outputs can be compared exactly
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def rand_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def raw_pixels(t: torch.Tensor) -> np.ndarray:
    """Inverse of the RAW normalisation: CHW float -> HWC uint8."""
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.int64)


def make_class_folder(root: Path, classes: dict[str, int], size: int = 40) -> Path:
    for c, n in classes.items():
        for i in range(n):
            save(root / c / f"{c}_{i}.png", rand_rgb(size, size, i))
    return root


# ----------------------------------------------------------------------------- real data


@needs_shared
def test_ucmerced_counts_and_classes() -> None:
    ds = load_image_folder(DATA / "ucmerced")
    names = ds.features["label"].names
    assert ds.num_rows == 2100
    assert len(names) == 21 and names == sorted(names) and names[0] == "agricultural"
    assert isinstance(ds.features["image"], datasets.Image)
    counts = np.bincount(np.asarray(ds.with_format(None).select_columns(["label"])["label"]))
    assert counts.tolist() == [100] * 21


@needs_shared
def test_ucm55_stratified_split_is_per_class_and_seeded() -> None:
    ds = load_image_folder(DATA / "ucmerced")
    split = stratified_split(ds, 0.5, seed=0)
    for part in ("train", "test"):
        labels = np.asarray(split[part].select_columns(["label"])["label"])
        assert np.bincount(labels, minlength=21).tolist() == [50] * 21
    train_files = list(split["train"].cast_column("image", datasets.Image(decode=False))["image"])
    test_files = list(split["test"].cast_column("image", datasets.Image(decode=False))["image"])
    train_paths = {x["path"] for x in train_files}
    assert len(train_paths) == 1050 and not train_paths & {x["path"] for x in test_files}
    again = stratified_split(ds, 0.5, seed=0)
    other = stratified_split(ds, 0.5, seed=1)
    same_paths = {
        x["path"] for x in again["train"].cast_column("image", datasets.Image(decode=False))["image"]
    }
    other_paths = {
        x["path"] for x in other["train"].cast_column("image", datasets.Image(decode=False))["image"]
    }
    assert same_paths == train_paths
    assert other_paths != train_paths
    # AID-28 style fraction and a validation split carved from train, both stratified
    split28 = stratified_split(ds, 0.2, seed=3)
    assert (split28["train"].num_rows, split28["test"].num_rows) == (420, 1680)
    with_val = add_validation_split(split, 0.2, seed=0)
    assert list(with_val) == ["train", "validation", "test"]
    assert np.bincount(np.asarray(with_val["validation"]["label"])).tolist() == [10] * 21
    assert np.bincount(np.asarray(with_val["train"]["label"])).tolist() == [40] * 21
    assert with_val["test"].num_rows == 1050


@needs_shared
def test_ucmerced_small_images_are_resized() -> None:
    ds = load_image_folder(DATA / "ucmerced")
    paths = [x["path"] for x in ds.cast_column("image", datasets.Image(decode=False))["image"]]
    small = next(i for i, p in enumerate(paths) if Image.open(p).size != (256, 256))
    assert min(Image.open(paths[small]).size) < 256
    out = attach_transform(ds, ClassificationTransform(size=112, train=True, seed=0))[small]
    assert out["pixel_values"].shape == (3, 112, 112) and out["pixel_values"].dtype == torch.float32
    assert out["labels"].item() == ds.with_format(None)[small]["label"]


@needs_shared
def test_gid_counts_and_mask_values() -> None:
    ds = load_segmentation_folder(DATA / "gid5_landcover")
    assert ds.num_rows == 1391 and ds.column_names == ["image", "mask", "name"]
    classes = json.loads((DATA / "gid5_landcover" / "classes.json").read_text())
    allowed = {int(k) for k in classes}
    assert allowed == {0, 1, 2, 3, 4, 255}
    subset = attach_transform(ds.select(range(0, 1391, 70)), SegmentationTransform(num_labels=5))
    values: set[int] = set()
    for i in range(subset.num_rows):
        ex = subset[i]
        assert ex["pixel_values"].shape == (3, 224, 224) and ex["labels"].shape == (224, 224)
        values |= set(np.unique(ex["labels"].numpy()).tolist())
    assert values <= allowed and {0, 1, 4} <= values


@needs_shared
def test_change_detection_counts_and_label_mapping() -> None:
    levir = load_change_detection_folder(DATA / "levir_cd_samples")
    dsifn = load_change_detection_folder(DATA / "dsifn_cd_samples")
    both = load_change_detection_folder([DATA / "levir_cd_samples", DATA / "dsifn_cd_samples"])
    assert (levir.num_rows, dsifn.num_rows, both.num_rows) == (11, 10, 21)
    assert both.column_names == ["image_a", "image_b", "label", "name"]
    raw = set()
    for i in (0, 11):
        raw |= set(np.unique(np.asarray(both.with_format(None)[i]["label"])).tolist())
    assert raw <= {0, 255}
    data = attach_transform(both, ChangeDetectionTransform(crop_size=128, train=True, seed=0))
    batch = change_detection_collate_fn([data[i] for i in range(21)])
    assert batch["pixel_values_a"].shape == batch["pixel_values_b"].shape == (21, 3, 128, 128)
    assert batch["labels"].shape == (21, 128, 128) and batch["labels"].dtype == torch.int64
    assert set(np.unique(batch["labels"].numpy()).tolist()) == {0, 1}


@needs_shared
def test_processor_settings_from_local_checkpoint() -> None:
    cfg = json.loads((SHARED / "models" / "rs-convnext-atto-aid" / "preprocessor_config.json").read_text())
    settings = processor_settings(cfg)
    assert settings["size"] == (112, 112)
    assert settings["mean"] == pytest.approx((0.485, 0.456, 0.406))
    t = ClassificationTransform.from_image_processor(cfg)
    assert t.size == (112, 112) and t.std == pytest.approx((0.229, 0.224, 0.225))


# ----------------------------------------------------------------------------- joint transforms


def test_joint_augmentation_keeps_image_and_mask_aligned() -> None:
    img = rand_rgb(40, 60, seed=1)
    mask = img[..., 0].astype(np.int64) % 5  # mask is a known function of the pixels
    example = {"image": Image.fromarray(img), "mask": Image.fromarray(mask.astype(np.uint8))}
    outputs = []
    for seed in range(12):
        t = SegmentationTransform(num_labels=5, crop_size=48, train=True, seed=seed, **RAW)
        out = t(example)
        pix, lab = raw_pixels(out["pixel_values"]), out["labels"].numpy()
        assert pix.shape == (48, 48, 3) and lab.shape == (48, 48)
        valid = lab != 255
        assert valid.sum() == 40 * 48  # 48 of 60 columns cropped, 8 padded rows
        assert np.array_equal(lab[valid], pix[..., 0][valid] % 5)
        assert (pix[~valid] == 0).all()  # padding is 0 in the image and 255 in the mask
        outputs.append(lab)
    assert len({o.tobytes() for o in outputs}) > 6  # augmentations really vary with the seed


def test_flips_and_rotations_cover_the_dihedral_group() -> None:
    img = rand_rgb(32, 32, seed=2)
    variants = {}
    for k in range(4):
        for flip in (False, True):
            v = np.rot90(img[:, ::-1] if flip else img, k)
            variants[v.tobytes()] = (k, flip)
    seen = set()
    for seed in range(40):
        t = SegmentationTransform(num_labels=256, ignore_index=255, train=True, seed=seed, **RAW)
        mask = Image.fromarray(img[..., 1])
        out = t({"image": Image.fromarray(img), "mask": mask})
        pix = raw_pixels(out["pixel_values"]).astype(np.uint8)
        assert pix.tobytes() in variants
        assert np.array_equal(out["labels"].numpy(), pix[..., 1])
        seen.add(variants[pix.tobytes()])
    assert len(seen) == 8


def test_change_detection_transform_aligns_both_images_and_label() -> None:
    a = rand_rgb(50, 50, seed=3)
    b = 255 - a
    label = np.where(a[..., 2] > 127, 255, 0).astype(np.uint8)
    ex = {"image_a": Image.fromarray(a), "image_b": Image.fromarray(b), "label": Image.fromarray(label)}
    for seed in range(8):
        out = ChangeDetectionTransform(crop_size=32, train=True, seed=seed, **RAW)(ex)
        pa, pb, lab = (
            raw_pixels(out["pixel_values_a"]),
            raw_pixels(out["pixel_values_b"]),
            out["labels"].numpy(),
        )
        assert set(np.unique(lab).tolist()) == {0, 1}
        assert np.array_equal(pb, 255 - pa)
        assert np.array_equal(lab, (pa[..., 2] > 127).astype(np.int64))


def test_seeded_transforms_are_deterministic() -> None:
    img = Image.fromarray(rand_rgb(64, 64, seed=4))
    mask = Image.fromarray((rand_rgb(64, 64, seed=5)[..., 0] % 3).astype(np.uint8))
    batch = {"image": [img] * 6, "mask": [mask] * 6}

    def run(seed: int) -> torch.Tensor:
        return torch.stack(SegmentationTransform(3, crop_size=32, train=True, seed=seed)(batch)["labels"])

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    c1 = ClassificationTransform(size=32, train=True, seed=g1)({"image": [img] * 4, "label": [0] * 4})
    c2 = ClassificationTransform(size=32, train=True, seed=g2)({"image": [img] * 4, "label": [0] * 4})
    assert all(torch.equal(x, y) for x, y in zip(c1["pixel_values"], c2["pixel_values"], strict=True))
    # evaluation mode is not random: centred crop, no flips
    ev = SegmentationTransform(3, crop_size=32, seed=1, **RAW)({"image": img, "mask": mask})
    assert np.array_equal(raw_pixels(ev["pixel_values"]), np.asarray(img)[16:48, 16:48])


def test_resize_uses_nearest_for_masks() -> None:
    mask = np.zeros((37, 53), dtype=np.int64)
    mask[:, 20:] = 3
    mask[10:15] = 255
    out = resize_mask(mask, (64, 96))
    assert out.shape == (64, 96) and set(np.unique(out).tolist()) == {0, 3, 255}
    ex = {"image": Image.fromarray(rand_rgb(37, 53)), "mask": Image.fromarray(mask.astype(np.uint8))}
    res = SegmentationTransform(num_labels=4, resize=(64, 96))(ex)
    assert res["pixel_values"].shape == (3, 64, 96)
    assert set(np.unique(res["labels"].numpy()).tolist()) == {0, 3, 255}


def test_images_are_converted_to_rgb() -> None:
    rgba = np.dstack([rand_rgb(8, 8, 6), np.full((8, 8), 7, np.uint8)])
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(rgba))), rgba[..., :3])
    grey = rand_rgb(8, 8, 7)[..., 0]
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(grey))), np.dstack([grey] * 3))
    pal = Image.fromarray(grey).convert("P")
    assert to_rgb(pal).mode == "RGB"
    deep = Image.fromarray(grey.astype(np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    assert np.array_equal(np.asarray(to_rgb(deep))[..., 0], grey)
    t = ClassificationTransform(size=24, **RAW)
    out = t({"image": [Image.fromarray(rgba), Image.fromarray(grey)], "label": [0, 1]})
    assert [p.shape for p in out["pixel_values"]] == [(3, 24, 24)] * 2
    assert out["labels"][1].item() == 1 and out["labels"][1].dtype == torch.int64
    gray_out = out["pixel_values"][1]
    assert torch.equal(gray_out[0], gray_out[1]) and torch.equal(gray_out[1], gray_out[2])


def test_collate_stacks_and_rejects_mixed_sizes() -> None:
    t = ClassificationTransform(size=16)
    examples = [t({"image": Image.fromarray(rand_rgb(20, 30, i)), "label": i % 2}) for i in range(3)]
    batch = classification_collate_fn(examples)
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["labels"].tolist() == [0, 1, 0]
    seg = SegmentationTransform(num_labels=2, min_size=4)
    mixed = [
        seg({"image": Image.fromarray(rand_rgb(s, s)), "mask": Image.fromarray(np.zeros((s, s), np.uint8))})
        for s in (8, 12)
    ]
    with pytest.raises(ValueError, match="crop_size"):
        segmentation_collate_fn(mixed)
    with pytest.raises(ValueError, match="pixel_values_a"):
        change_detection_collate_fn(mixed)


# ----------------------------------------------------------------------------- loaders on synthetic folders


def test_image_folder_and_split_on_synthetic_data(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "cls", {"b_class": 6, "a_class": 4})
    ds = load_image_folder(root)
    assert ds.features["label"].names == ["a_class", "b_class"]
    assert ds.num_rows == 10
    split = stratified_split(ds, 0.5, seed=0)
    assert sorted(split["train"]["label"]) == [0, 0, 1, 1, 1]
    assert load_classification_dataset(root)["label"] == ds["label"]
    out = attach_transform(split["train"], ClassificationTransform(size=32))
    assert out[0]["pixel_values"].shape == (3, 32, 32)


def test_a_resized_copy_feeds_the_model_the_same_pixels(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "cls", {"b": 3, "a": 2}, size=50)
    assert save_resized_image_folder(root, tmp_path / "copy", 24) == 5
    copy = load_image_folder(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy" / "a").iterdir()) == ["a_0.webp", "a_1.webp"]
    transform = ClassificationTransform(size=24, **RAW)
    original, resized = (attach_transform(load_image_folder(f), transform) for f in (root, tmp_path / "copy"))
    assert copy["label"] == load_image_folder(root)["label"]
    for i in range(5):
        assert torch.equal(original[i]["pixel_values"], resized[i]["pixel_values"])
    with pytest.raises(ValueError, match="not empty"):
        save_resized_image_folder(root, tmp_path / "copy", 24)
    with pytest.raises(ValueError, match="inside"):
        save_resized_image_folder(root, root / "copy", 24)
    save(root / "a" / "a_0.jpg", rand_rgb(50, 50))
    with pytest.raises(ValueError, match="share the name 'a_0'"):
        save_resized_image_folder(root, tmp_path / "other", 24)
    assert not (tmp_path / "other").exists()  # refused before writing


def test_hub_code_path_renames_and_encodes_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = [Image.fromarray(rand_rgb(8, 8, i)) for i in range(4)]
    fake = datasets.Dataset.from_dict({"img": imgs, "category": ["sea", "field", "sea", "field"]})
    fake = fake.cast_column("img", datasets.Image())
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None, **kw: fake)
    ds = load_classification_dataset(
        "someone/rs-scenes", split="train", image_column="img", label_column="category"
    )
    assert ds.column_names == ["image", "label"]
    assert ds.features["label"].names == ["field", "sea"] and ds["label"] == [1, 0, 1, 0]
    with pytest.raises(ValueError, match=r"columns found: \['img', 'category'\].*label_column="):
        load_classification_dataset("someone/rs-scenes", image_column="img")


def test_segmentation_folder_pairs_by_stem(tmp_path: Path) -> None:
    for stem in ("t1", "t2"):
        save(tmp_path / "images" / f"{stem}.jpg", rand_rgb(40, 40))
        save(tmp_path / "masks" / f"{stem}.png", np.ones((40, 40), np.uint8))
    ds = load_segmentation_folder(tmp_path)
    assert ds["name"] == ["t1", "t2"] and ds.num_rows == 2
    assert Path(ds.cast_column("mask", datasets.Image(decode=False))[1]["mask"]["path"]).name == "t2.png"


# ----------------------------------------------------------------------------- errors


def test_error_missing_partner(tmp_path: Path) -> None:
    save(tmp_path / "images" / "a.png", rand_rgb(40, 40))
    save(tmp_path / "images" / "lonely.png", rand_rgb(40, 40))
    save(tmp_path / "masks" / "a.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(ValueError, match=r"lonely\.png has no partner"):
        load_segmentation_folder(tmp_path)
    (tmp_path / "images" / "lonely.png").unlink()
    save(tmp_path / "masks" / "orphan.png", np.zeros((40, 40), np.uint8))
    with pytest.raises(ValueError, match=r"orphan\.png has no partner.*images/orphan"):
        load_segmentation_folder(tmp_path)
    cd = tmp_path / "cd"
    for d in ("A", "label"):
        save(cd / d / "x.png", rand_rgb(32, 32) if d == "A" else np.zeros((32, 32), np.uint8))
    save(cd / "B" / "y.png", rand_rgb(32, 32))
    with pytest.raises(ValueError, match=r"2 unpaired.*x\.png has no partner.*B/x"):
        load_change_detection_folder(cd)


def test_error_size_mismatch(tmp_path: Path) -> None:
    cd = tmp_path / "cd"
    save(cd / "A" / "p.png", rand_rgb(64, 64))
    save(cd / "B" / "p.png", rand_rgb(60, 64))
    save(cd / "label" / "p.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"Size mismatch.*A/p\.png is 64x64.*B/p\.png is 64x60"):
        load_change_detection_folder(cd)
    save(tmp_path / "seg" / "images" / "q.png", rand_rgb(50, 50))
    save(tmp_path / "seg" / "masks" / "q.png", np.zeros((40, 50), np.uint8))
    with pytest.raises(ValueError, match=r"Size mismatch.*masks/q\.png"):
        load_segmentation_folder(tmp_path / "seg")
    # the transform checks too (Hub data does not go through the folder loader)
    ex = {"image_a": Image.fromarray(rand_rgb(64, 64)), "image_b": Image.fromarray(rand_rgb(32, 64))}
    with pytest.raises(ValueError, match="Size mismatch"):
        ChangeDetectionTransform(label_column=None)(ex)


def test_error_bad_mask_values(tmp_path: Path) -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[0, 0], mask[1, 1] = 7, 9
    save(tmp_path / "images" / "bad.png", rand_rgb(40, 40))
    save(tmp_path / "masks" / "bad.png", mask)
    ds = attach_transform(load_segmentation_folder(tmp_path), SegmentationTransform(num_labels=5))
    with pytest.raises(ValueError, match=r"masks/bad\.png has values \[7, 9\].*\[0, 1, 2, 3, 4, 255\]"):
        ds[0]
    label = np.full((40, 40), 128, np.uint8)
    ex = {"image_a": Image.fromarray(rand_rgb(40, 40)), "image_b": Image.fromarray(rand_rgb(40, 40))}
    with pytest.raises(ValueError, match=r"sample 0 in the batch has values \[128\].*\[0, 1, 255\]"):
        ChangeDetectionTransform()({**ex, "label": Image.fromarray(label)})


def test_mask_files_are_checked_in_one_pass_naming_files_and_values(tmp_path: Path) -> None:
    good = np.zeros((8, 8), np.uint8)
    many = np.arange(64, dtype=np.uint8).reshape(8, 8) + 10
    paths = [save(tmp_path / f"{name}.png", array) for name, array in (("a", good), ("b", many), ("c", good))]
    for i in range(7):
        paths.append(save(tmp_path / f"z{i}.png", np.full((8, 8), 200, np.uint8)))
    check_mask_files([str(paths[0]), str(paths[2])], {0, 1, 255})  # all values allowed: no error
    with pytest.raises(ValueError) as caught:
        check_mask_files([{"path": str(p), "bytes": None} for p in paths], {0, 1, 255})
    message = str(caught.value)
    assert message.startswith("8 mask(s) hold values outside the allowed [0, 1, 255]: ")
    assert f"{paths[1]} has [10, 11, 12, 13, 14, 15, 16, 17, ...]" in message  # values shortened
    assert f"{paths[6]} has [200]" in message and f"{paths[7]}" not in message  # five files named
    assert message.endswith(
        "... and 3 more. Check --num-labels / --class-names / --ignore-index (or classes.json), or fix the files."
    )
    assert "\n" not in message and str(paths[0]) not in message


def test_error_image_smaller_than_stride(tmp_path: Path) -> None:
    save(tmp_path / "images" / "tiny.png", rand_rgb(20, 40))
    save(tmp_path / "masks" / "tiny.png", np.ones((20, 40), np.uint8))
    ds = load_segmentation_folder(tmp_path)
    with pytest.raises(ValueError, match=r"tiny\.png is 20x40.*min_size=32.*resize.*crop_size"):
        attach_transform(ds, SegmentationTransform(num_labels=2, min_size=32))[0]
    padded = attach_transform(ds, SegmentationTransform(num_labels=2, crop_size=32))[0]
    assert padded["labels"].shape == (32, 32) and (padded["labels"] == 255).sum() == 12 * 32
    with pytest.raises(ValueError, match="min_size=32"):
        SegmentationTransform(num_labels=2, crop_size=16, min_size=32)


def test_error_unreadable_file(tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "cls", {"a": 2, "b": 2})
    (root / "a" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=r"Cannot read image file .*broken\.jpg"):
        load_image_folder(root)
    # a truncated file has a valid header: found at decode time (or at load time with verify=True)
    good = (root / "b" / "b_0.png").read_bytes()
    (root / "a" / "broken.jpg").unlink()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    ds = load_image_folder(root)
    idx = [
        Path(x["path"]).name for x in ds.cast_column("image", datasets.Image(decode=False))["image"]
    ].index("truncated.png")
    with pytest.raises(ValueError, match=r"Cannot read image .*truncated\.png"):
        attach_transform(ds, ClassificationTransform(size=32))[idx]
    with pytest.raises(ValueError, match=r"truncated\.png"):
        load_image_folder(root, verify=True)


def test_error_single_class_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Only one class .'solo'."):
        load_image_folder(make_class_folder(tmp_path / "one", {"solo": 3}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        load_image_folder(tmp_path / "empty")
    save(tmp_path / "flat" / "x.png", rand_rgb(8, 8))
    with pytest.raises(ValueError, match="sub-folder per class"):
        load_image_folder(tmp_path / "flat")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
    one = datasets.Dataset.from_dict({"label": [0, 0, 0, 0]})
    with pytest.raises(ValueError, match="at least 2 classes"):
        stratified_split(one, 0.5, seed=0)


def test_error_missing_label_column() -> None:
    ds = datasets.Dataset.from_dict({"image": ["x.png"] * 4, "category": [0, 1, 0, 1]})
    with pytest.raises(
        ValueError, match=r"no column 'label'; columns found: \['image', 'category'\].*label_column="
    ):
        stratified_split(ds, 0.5, seed=0)
    assert stratified_split(ds, 0.5, seed=0, label_column="category")["train"].num_rows == 2
    with pytest.raises(ValueError, match=r"no column 'label'.*label_column="):
        ClassificationTransform(size=8)({"image": Image.fromarray(rand_rgb(8, 8)), "category": 0})


def test_data_package_imports_no_other_subpackage() -> None:
    """upetu_hf.data stands alone: it imports only itself and the leaf module of file helpers (`_files`)."""
    for file in (REPO / "src" / "upetu_hf" / "data").glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level, node.module) == (2, "_files"):
                continue
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{file.name} imports outside upetu_hf.data"
                assert not (node.module or "").startswith("upetu_hf") or node.module.startswith(
                    "upetu_hf.data"
                )
            elif isinstance(node, ast.Import):
                assert all(not a.name.startswith("upetu_hf") for a in node.names), file.name


# ---------------------------------------------------------------------------------------------- multi-band transforms
def test_multiband_transforms_read_crop_flip_and_normalise_any_band_count(tmp_path):
    """13 bands through the segmentation transform: the selected bands, jointly cropped with the mask, each
    normalised ``(x * scale - mean) / std`` with its own statistics."""
    import tifffile

    from upetu_hf.data import SegmentationTransform
    from upetu_hf.data.band_images import BandReading, resize_bands

    rng = np.random.default_rng(0)
    array = rng.integers(0, 10000, (13, 40, 50)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", array, photometric="minisblack")
    mask = (rng.random((40, 50)) > 0.5).astype(np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    bands = BandReading(13, (3, 2, 1, 7), scale=0.5)
    mean, std = [100.0, 200.0, 300.0, 400.0], [2.0, 4.0, 5.0, 10.0]
    whole = SegmentationTransform(2, mean=mean, std=std, bands=bands, min_size=1)
    out = whole({"image": str(tmp_path / "s.tif"), "mask": str(tmp_path / "m.png")})
    expected = (array[[3, 2, 1, 7]] * 0.5 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out["pixel_values"].numpy(), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(out["labels"], torch.from_numpy(mask.astype(np.int64)))
    cropped = SegmentationTransform(2, crop_size=32, mean=mean, std=std, bands=bands, train=True, seed=3)
    crop = cropped({"image": str(tmp_path / "s.tif"), "mask": str(tmp_path / "m.png")})
    assert crop["pixel_values"].shape == (4, 32, 32) and crop["labels"].shape == (32, 32)
    # the crop is a window of the scene (possibly flipped/rotated): undoing the normalisation gives band B08's counts
    counts = (crop["pixel_values"][3].numpy().astype(np.float64) * 10.0 + 400.0) / 0.5
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-2)
    assert set(np.rint(counts).astype(int).ravel()) <= set(array[7].astype(int).ravel())
    assert resize_bands(np.ones((40, 50, 13), np.float32), (20, 25)).shape == (20, 25, 13)
    with pytest.raises(ValueError, match="mean and std need 4 values"):
        SegmentationTransform(2, bands=bands)
