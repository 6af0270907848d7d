"""Scanning a dataset's images before training: band count, height and width of every image, from file headers.

Values are what `datasets.Image(decode=False)` gives (``{"path", "bytes"}``), paths or PIL images. Files are
probed with [`probe_multiband`] (TIFFs with tifffile, any band count; other formats with Pillow); in-memory images
(Hub datasets) are opened from their bytes, reading the header only. Every failure names the file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import PIL.Image

from ._io import describe
from .multispectral import TIFF_SUFFIXES, BandInfo, probe_multiband


def value_path(value: Any) -> str | None:
    """The file path of an image value (``{"path", "bytes"}`` dict with a local file, or a path), else None."""
    if isinstance(value, dict):
        path = value.get("path")
        return str(path) if path and value.get("bytes") is None else None
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        return str(value)
    return None


def probe_value(value: Any, name: str) -> BandInfo:
    """`BandInfo` (bands, height, width, dtype) of one image value, from its header."""
    path = value_path(value)
    if path is not None:
        return probe_multiband(path)
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = PIL.Image.open(io.BytesIO(value["bytes"]))
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        return BandInfo(len(image.getbands()), image.height, image.width, image.mode)
    except Exception as exc:  # Pillow raises several exception types for unreadable data
        raise ValueError(f"Cannot read image {name}: {exc}") from exc


def scan_values(values: Sequence[Any], what: str) -> list[BandInfo]:
    """`probe_value` of every value of a column (`what` names it in errors: "image_a", ...)."""
    return [probe_value(v, describe(v, f"{what} of sample {i}")) for i, v in enumerate(values)]


def is_multiband_file(value: Any, info: BandInfo) -> bool:
    """Whether an image needs the multi-band reader: a TIFF that is not 8-bit RGB (13-band Sentinel-2, RGB+NIR,
    16-bit RGB, ...). 8-bit RGB TIFFs, PNGs and JPEGs keep the RGB path (Pillow, the checkpoint's processor)."""
    path = value_path(value)
    suffix = "." + path.rsplit(".", 1)[-1].lower() if path and "." in path else ""
    return suffix in TIFF_SUFFIXES and (info.num_bands != 3 or info.dtype != "uint8")


def band_counts(infos: Iterable[tuple[str, BandInfo]]) -> dict[int, str]:
    """`{band count: the first file (name) with that count}`, to report mixed band counts in one line."""
    counts: dict[int, str] = {}
    for name, info in infos:
        counts.setdefault(info.num_bands, name)
    return counts


__all__ = ["band_counts", "is_multiband_file", "probe_value", "scan_values", "value_path"]
