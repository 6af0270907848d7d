"""Per-band normalisation statistics of a set of multi-band images, computed in one streaming pass.

For band ``c`` over all pixels ``x`` of all files (``n`` pixels per band), with a per-band shift ``K_c`` (the
mean of band ``c`` in the first file, which keeps the float64 sums free of cancellation for raw counts ~1e4)::

    S1_c = sum (x - K_c),   S2_c = sum (x - K_c)^2          (float64, accumulated file by file)
    mean_c = K_c + S1_c / n,   std_c = sqrt(max(S2_c / n - (S1_c / n)^2, 0))     (population std, ddof = 0)

Each file is read once and only the `2 C` sums are kept, so the pass is O(one image) in memory. The result is
plain lists of floats, ready for a run record (`run_config.json`) and for [`normalize_bands`] at evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .multispectral import read_multiband_image

#: rows converted to float64 at a time: bounds the extra memory of a band to `_ROWS * W * 8` bytes
_ROWS = 1024


@dataclass
class BandStatistics:
    """Mean and (population) standard deviation per band, and the number of pixels per band they come from."""

    mean: list[float]
    std: list[float]
    num_pixels: int
    num_files: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BandStatistics:
        return cls(
            mean=[float(v) for v in values["mean"]],
            std=[float(v) for v in values["std"]],
            num_pixels=int(values["num_pixels"]),
            num_files=int(values["num_files"]),
        )


def compute_band_statistics(
    paths: Iterable[str | os.PathLike],
    num_bands: int | None = None,
    bands: Sequence[int] | None = None,
) -> BandStatistics:
    """Per-band mean and std over every pixel of every file in `paths`, in one pass (see module docstring).

    Args:
        paths: image files (for change detection, both dates of every training pair).
        num_bands: the band count each file must have (see [`read_multiband_image`]).
        bands: 0-based indices of the bands to keep; the statistics follow this order.

    Raises:
        ValueError: no files, or a file that [`read_multiband_image`] refuses, or files with different band counts.
    """
    shift = first_sum = second_sum = None
    num_pixels = num_files = 0
    for path in paths:
        image = read_multiband_image(path, num_bands=num_bands, bands=bands)
        channels, height, width = image.shape
        if shift is None:
            shift = image.reshape(channels, -1).mean(axis=1, dtype=np.float64)
            first_sum, second_sum = np.zeros(channels), np.zeros(channels)
        elif channels != len(shift):
            raise ValueError(f"{path} has {channels} bands but the first file has {len(shift)}.")
        for top in range(0, height, _ROWS):
            centred = image[:, top : top + _ROWS].astype(np.float64) - shift[:, None, None]
            first_sum += centred.sum(axis=(1, 2))
            second_sum += np.square(centred).sum(axis=(1, 2))
        num_pixels += height * width
        num_files += 1
    if shift is None:
        raise ValueError("No image files given: cannot compute band statistics.")
    mean_offset = first_sum / num_pixels
    variance = np.maximum(second_sum / num_pixels - np.square(mean_offset), 0.0)
    stats = BandStatistics(
        mean=(shift + mean_offset).tolist(),
        std=np.sqrt(variance).tolist(),
        num_pixels=num_pixels,
        num_files=num_files,
    )
    check_statistics(stats.mean, stats.std, f"the band statistics of {num_files} file(s)")
    return stats


def check_statistics(
    mean: Sequence[float], std: Sequence[float], source: str, positive: bool = False
) -> None:
    """Raise a `ValueError` naming `source` unless every mean and std is a finite number (and, with `positive`,
    every std > 0): a NaN statistic would pass a plain ``std > 0`` test and make every input NaN."""
    values = [*mean, *std]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(
            f"{source}: the band statistics must be finite numbers; got mean={list(mean)}, std={list(std)}. Fix "
            "the statistics, or the images they were computed from (NaN or infinite pixels)."
        )
    if positive and min(std, default=1.0) <= 0:
        raise ValueError(f"{source}: every std must be > 0; got std={list(std)}.")


def normalize_bands(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], eps: float = 1e-6
) -> np.ndarray:
    """``(image - mean_c) / max(std_c, eps)`` per band of a `(C, H, W)` array, as float32.

    `eps` keeps a constant band (std 0, e.g. an empty cirrus band on a small subset) finite: it becomes 0.
    """
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.maximum(np.asarray(std, dtype=np.float32), np.float32(eps))
    if image.ndim != 3 or image.shape[0] != len(mean_arr) or len(std_arr) != len(mean_arr):
        raise ValueError(
            f"Cannot normalise an image of shape {image.shape} with {len(mean_arr)} means and {len(std_arr)} stds: "
            "expected (C, H, W) with C statistics each."
        )
    return (image.astype(np.float32) - mean_arr[:, None, None]) / std_arr[:, None, None]


__all__ = ["BandStatistics", "check_statistics", "compute_band_statistics", "normalize_bands"]
