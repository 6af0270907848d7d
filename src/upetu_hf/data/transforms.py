"""Image and mask operations (numpy/PIL/torch only): RGB conversion, resizing, normalisation, mask
validation and joint random crop / flip / 90-degree rotation of image(s) and mask.

Images are handled as ``uint8`` arrays ``H x W x 3``, masks as ``int64`` arrays ``H x W``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Size = int | tuple[int, int]


def as_hw(size: Size) -> tuple[int, int]:
    """``224 -> (224, 224)``; ``(h, w)`` unchanged."""
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"Sizes must be positive, got {size}.")
    return int(h), int(w)


def processor_settings(processor: Any) -> dict[str, Any]:
    """Read ``mean``, ``std``, ``size`` ((h, w) or None) and ``resample`` from a transformers image processor.

    ``processor`` may be an image-processor object or its ``to_dict()`` dict. Missing entries fall back
    to ImageNet mean/std, ``size=None`` and bilinear resampling. ``size`` dicts with ``height``/``width``,
    ``shortest_edge`` (used as a square side) or an int are understood.
    """
    d = processor if isinstance(processor, Mapping) else processor.to_dict()
    size = d.get("crop_size") if d.get("do_center_crop") and d.get("crop_size") else d.get("size")
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            size = (int(size["height"]), int(size["width"]))
        else:
            side = size.get("shortest_edge") or size.get("longest_edge")
            size = (int(side), int(side)) if side else None
    elif isinstance(size, int):
        size = (size, size)
    return {
        "mean": tuple(d.get("image_mean") or IMAGENET_MEAN),
        "std": tuple(d.get("image_std") or IMAGENET_STD),
        "size": size,
        "resample": PIL.Image.Resampling(int(d.get("resample", PIL.Image.Resampling.BILINEAR))),
    }


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image to RGB: grey, palette, RGBA/LA (alpha dropped), CMYK, 16-bit and float.

    16-bit images are scaled by 1/257; 32-bit integer/float images whose maximum exceeds 255 are
    scaled so that the maximum becomes 255 (otherwise clipped to 0..255).
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16"):
        arr = (np.asarray(img, dtype=np.float64) / 257.0).round().astype(np.uint8)
        return PIL.Image.fromarray(arr).convert("RGB")
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        arr = arr * (255.0 / peak) if peak > 255 else arr
        return PIL.Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def image_to_array(img: PIL.Image.Image) -> np.ndarray:
    """RGB ``uint8`` array ``H x W x 3`` from any PIL image."""
    return np.asarray(to_rgb(img), dtype=np.uint8)


def mask_to_array(img: PIL.Image.Image, name: str) -> np.ndarray:
    """Class-index mask (``int64``, ``H x W``) from a single-channel PIL image.

    Palette masks give their indices; RGB(A) masks are accepted only when all colour channels are
    equal, otherwise ``ValueError`` naming ``name`` (colour-coded masks must be converted to indices).
    """
    arr = np.asarray(img)
    if arr.ndim == 3:
        channels = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        if not (channels == channels[..., :1]).all():
            raise ValueError(
                f"Mask {name} has {arr.shape[-1]} differing colour channels (mode {img.mode}); "
                "expected a single-channel class-index mask (mode L, P or I)."
            )
        arr = channels[..., 0]
    return arr.astype(np.int64)


def validate_mask(mask: np.ndarray, allowed: Collection[int], name: str) -> None:
    """Raise ``ValueError`` naming ``name``, the offending values and the allowed ones when ``mask``
    holds values outside ``allowed``."""
    values = np.unique(mask)
    bad = sorted(set(values.tolist()) - set(allowed))
    if bad:
        raise ValueError(
            f"Mask {name} has values {bad} outside the allowed values {sorted(allowed)}; "
            "check num_labels / ignore_index (or the label mapping) for this dataset."
        )


def map_mask(mask: np.ndarray, mapping: Mapping[int, int], name: str) -> np.ndarray:
    """Map mask values through ``mapping`` (e.g. ``{0: 0, 255: 1}``); unknown values raise ``ValueError``."""
    validate_mask(mask, mapping.keys(), name)
    out = mask.copy()
    for src, dst in mapping.items():
        if src != dst:
            out[mask == src] = dst
    return out


def check_min_size(height: int, width: int, min_size: int, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``height`` or ``width`` is below ``min_size``."""
    if min(height, width) < min_size:
        raise ValueError(
            f"Image {name} is {height}x{width} (HxW), smaller than min_size={min_size} (the backbone's total "
            f"stride). Resize it (resize=...) or use a crop_size >= {min_size}, which pads smaller images."
        )


def resize_image(img: np.ndarray, size: Size, resample: int = PIL.Image.Resampling.BILINEAR) -> np.ndarray:
    """Resize an RGB ``uint8`` array to ``size`` ((h, w) or int) with PIL's ``resample`` filter."""
    h, w = as_hw(size)
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(PIL.Image.fromarray(img).resize((w, h), resample=resample))


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of a mask to ``size``: never creates values that were not there."""
    h, w = as_hw(size)
    in_h, in_w = mask.shape[:2]
    if (in_h, in_w) == (h, w):
        return mask
    rows = np.minimum(((np.arange(h) + 0.5) * in_h / h).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * in_w / w).astype(np.int64), in_w - 1)
    return mask[rows[:, None], cols[None, :]]


def _randint(high: int, generator: torch.Generator) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(0, high, (1,), generator=generator).item()) if high > 1 else 0


def joint_crop(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    size: Size,
    generator: torch.Generator | None = None,
    ignore_index: int = 255,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Crop all arrays at the same window of ``size``; random window with ``generator``, else centred.

    Arrays smaller than ``size`` are first padded at the bottom/right: images with 0, masks with
    ``ignore_index``.
    """
    ch, cw = as_hw(size)
    h, w = (images or masks)[0].shape[:2]
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        images = [np.pad(a, ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), constant_values=0) for a in images]
        masks = [np.pad(m, ((0, ph), (0, pw)), constant_values=ignore_index) for m in masks]
        h, w = h + ph, w + pw
    if generator is None:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = _randint(h - ch + 1, generator), _randint(w - cw + 1, generator)
    window = (slice(top, top + ch), slice(left, left + cw))
    return [a[window] for a in images], [m[window] for m in masks]


def joint_flip_rotate(
    arrays: Sequence[np.ndarray],
    generator: torch.Generator,
    hflip: bool = True,
    vflip: bool = True,
    rot90: bool = True,
) -> list[np.ndarray]:
    """Apply the same random horizontal flip, vertical flip and 90-degree rotation to every array.

    Each flip has probability 0.5; the rotation is ``k * 90`` degrees with ``k`` uniform in 0..3, or in
    {0, 2} for non-square arrays so that the shape never changes.
    """
    out = list(arrays)
    if hflip and _randint(2, generator):
        out = [np.flip(a, axis=1) for a in out]
    if vflip and _randint(2, generator):
        out = [np.flip(a, axis=0) for a in out]
    if rot90 and out:
        h, w = out[0].shape[:2]
        k = _randint(4, generator) if h == w else 2 * _randint(2, generator)
        if k:
            out = [np.rot90(a, k, axes=(0, 1)) for a in out]
    return out


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8`` ``H x W x 3`` -> float32 ``3 x H x W`` tensor ``(x / 255 - mean) / std``."""
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``H x W`` mask -> ``int64`` tensor."""
    return torch.from_numpy(np.array(mask, dtype=np.int64))
