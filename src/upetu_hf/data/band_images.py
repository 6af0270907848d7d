"""Multi-band images inside the transforms: decode to `(H, W, C)` float32, resize, normalise per band.

The transforms keep images channels-last while cropping, flipping and rotating (`joint_crop`,
`joint_flip_rotate` work for any `C`), so these functions take and give `(H, W, C)` arrays. Normalisation is

    out_c = (x_c * scale - mean_c) / std_c        (C, H, W) float32 tensor

with `scale = 1` for statistics computed on the stored values (`--band-statistics train`) and the image
processor's `rescale_factor` (1/255) for a checkpoint's own per-band statistics (`--band-statistics processor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .band_statistics import normalize_bands
from .multispectral import read_multiband_image
from .scan import value_path


@dataclass(frozen=True)
class BandReading:
    """How a transform reads multi-band files: `num_bands` per file (checked), the 0-based `indices` kept (in this
    order; `C = len(indices)`) and the `scale` applied before the per-band mean and std."""

    num_bands: int
    indices: tuple[int, ...]
    scale: float = 1.0


def read_bands(
    value: Any, name: str, num_bands: int | None = None, bands: Sequence[int] | None = None
) -> np.ndarray:
    """An image value (a path, or ``{"path", ...}``) as `(H, W, C)` float32, the `bands` of a `num_bands` file."""
    path = value_path(value)
    if path is None:
        raise ValueError(
            f"Image {name} is held in memory: multi-band images are read from files (a local folder or a dataset "
            "whose image column holds file paths)."
        )
    return read_multiband_image(path, num_bands=num_bands, bands=bands).transpose(1, 2, 0)


def resize_bands(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of `(H, W, C)` float32 to `size` (h, w), antialiased when shrinking (as PIL's filter)."""
    if image.shape[:2] == tuple(size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    shrink = size[0] < image.shape[0] or size[1] < image.shape[1]
    out = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0].numpy().transpose(1, 2, 0)


def normalize_band_image(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 1.0
) -> torch.Tensor:
    """`(H, W, C)` values -> `(C, H, W)` float32 tensor ``(x * scale - mean_c) / std_c`` (see module docstring)."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    if scale != 1.0:
        chw = chw * np.float32(scale)
    return torch.from_numpy(np.ascontiguousarray(normalize_bands(chw, mean, std)))


__all__ = ["BandReading", "normalize_band_image", "read_bands", "resize_bands"]
