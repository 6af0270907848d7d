"""Multi-band images (Sentinel-2, RGB+NIR aerial GeoTIFFs) as `(C, H, W)` float32 arrays, with clear errors.

TIFF files are read with `tifffile` (pure Python + numpy, no GDAL; uncompressed, Deflate/zlib, PackBits, LZMA and
Zstd out of the box, LZW and JPEG with the optional `imagecodecs` package): planar `(bands, H, W)` files, pixel-interleaved
`(H, W, samples)` files and files that store one band per page are all returned band-first. The geo-referencing
tags are not needed for training and are ignored. Other formats (PNG, JPEG, ...) are decoded with Pillow.

A band count that disagrees with the expected one, a single-band file (a mask, or a grayscale image) where a
multi-band image is expected, and a TIFF that holds no numeric raster each raise a `ValueError` naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")
#: tifffile's axes letters for height and width; the third axis of a 3-D series is the band axis, whatever its
#: letter (S samples, C channels, Q generic, I images, ...)
_SPATIAL_AXES = ("Y", "X")


# numpy dtype of the arrays Pillow decodes per mode (other modes keep the mode name)
_PIL_MODE_DTYPES = {
    "1": "bool",
    "L": "uint8",
    "LA": "uint8",
    "P": "uint8",
    "RGB": "uint8",
    "RGBA": "uint8",
    "CMYK": "uint8",
    "I;16": "uint16",
    "I": "int32",
    "F": "float32",
}


@dataclass(frozen=True)
class BandInfo:
    """Header facts of a multi-band image file: band count, height, width, numpy dtype name of the pixels."""

    num_bands: int
    height: int
    width: int
    dtype: str


def _band_axis_first(shape: tuple[int, ...], axes: str, path: Path) -> tuple[int, ...]:
    """Permutation that brings a `(..)` series with `axes` (e.g. 'QYX', 'YXS') to `(bands, Y, X)`."""
    if len(shape) == 2:
        return (0, 1)
    if len(shape) != 3 or "Y" not in axes or "X" not in axes:
        raise ValueError(
            f"{path}: a TIFF raster of shape {shape} (axes {axes!r}) is not an image of bands x height x width."
        )
    band = next(i for i, axis in enumerate(axes) if axis not in _SPATIAL_AXES)
    return (band, axes.index("Y"), axes.index("X"))


def _tiff_series(
    tif: tifffile.TiffFile, path: Path
) -> tuple[list[tifffile.TiffPageSeries], tuple[int, ...], str]:
    """The series that make up the image: one 2-D/3-D series, or several equal 2-D series (one band per page)."""
    if not tif.series:
        raise ValueError(f"{path}: the TIFF file holds no image raster.")
    first = tif.series[0]
    shape, axes = tuple(first.shape), first.axes
    # squeeze length-1 axes other than height and width (e.g. a leading time or plane axis of size 1)
    kept = [(n, a) for n, a in zip(shape, axes) if n != 1 or a in _SPATIAL_AXES]
    shape, axes = tuple(n for n, _ in kept), "".join(a for _, a in kept)
    if len(shape) == 2 and len(tif.series) > 1:
        same = [s for s in tif.series if tuple(s.shape) == tuple(first.shape) and s.dtype == first.dtype]
        if len(same) == len(tif.series):
            return same, (len(same), *shape), "QYX"
    return [first], shape, axes


def _check_dtype(dtype: np.dtype, path: Path) -> None:
    if dtype.kind not in "uif":
        raise ValueError(
            f"{path}: pixel type {dtype} is not a numeric image type (unsigned/signed int or float)."
        )


def probe_multiband(path: str | os.PathLike) -> BandInfo:
    """Band count, height and width of an image file, read from its header only (for scanning a dataset).

    Raises:
        ValueError: the file is not a readable image, or not a bands x height x width raster.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                series, shape, axes = _tiff_series(tif, path)
                dtype = np.dtype(series[0].dtype)
        except tifffile.TiffFileError as exc:
            raise ValueError(f"{path} is not a TIFF image: {exc}") from exc
        _check_dtype(dtype, path)
        order = _band_axis_first(shape, axes, path)
        dims = [shape[i] for i in order]
        bands, height, width = (1, *dims) if len(dims) == 2 else dims
        return BandInfo(bands, height, width, dtype.name)
    try:
        with PIL.Image.open(path) as image:
            dtype = _PIL_MODE_DTYPES.get(image.mode, image.mode)
            return BandInfo(len(image.getbands()), image.height, image.width, dtype)
    except Exception as exc:  # Pillow raises several exception types for unreadable files
        raise ValueError(f"Cannot read image file {path}: {exc}") from exc


def _read_array(path: Path) -> np.ndarray:
    """Decode `path` to `(C, H, W)` in its stored dtype."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            tif = tifffile.TiffFile(path)
        except tifffile.TiffFileError as exc:
            raise ValueError(f"{path} is not a TIFF image: {exc}") from exc
        with tif:
            series, shape, axes = _tiff_series(tif, path)
            try:
                arrays = [s.asarray() for s in series]
            # tifffile's decoders raise these for an unsupported codec or corrupt strips
            except (ValueError, KeyError, OSError) as exc:
                hint = (
                    " (pip install imagecodecs for LZW/JPEG/... compression)"
                    if "imagecodecs" in str(exc)
                    else ""
                )
                raise ValueError(f"{path}: cannot decode the TIFF raster: {exc}{hint}") from exc
        array = (np.stack(arrays) if len(arrays) > 1 else arrays[0]).reshape(shape)
        _check_dtype(array.dtype, path)
        array = array.transpose(_band_axis_first(shape, axes, path))
    else:
        try:
            with PIL.Image.open(path) as image:
                if image.mode == "P":
                    raise ValueError(
                        f"{path} is a palette image (a class-index mask), not a multi-band image."
                    )
                array = np.asarray(image)
        except ValueError:
            raise
        except Exception as exc:  # Pillow raises several exception types for unreadable files
            raise ValueError(f"Cannot read image file {path}: {exc}") from exc
        _check_dtype(array.dtype, path)
        if array.ndim == 3:
            array = array.transpose(2, 0, 1)
    return array[None] if array.ndim == 2 else array


def read_multiband_image(
    path: str | os.PathLike,
    num_bands: int | None = None,
    bands: Sequence[int] | None = None,
) -> np.ndarray:
    """Read an image file with any number of bands as a `(C, H, W)` float32 array (values as stored, e.g. the
    Sentinel-2 reflectance counts 0..10000; uint16 is exact in float32).

    Args:
        path: a TIFF/GeoTIFF (any band count) or a Pillow-readable image.
        num_bands: the band count the file must have (e.g. 13 for Sentinel-2 L1C). `None`: any count >= 2.
        bands: 0-based indices of the bands to keep, in this order (see [`band_indices`] for band names);
            `C = len(bands)`.

    Raises:
        ValueError: not an image (e.g. a TIFF without a numeric raster), a band count other than `num_bands`, a
            single-band file (e.g. a mask) when `num_bands` is not 1, a band index out of range, or a NaN or
            infinite value in a kept band (it would make every statistic and loss NaN).
    """
    path = Path(path)
    array = _read_array(path)
    count = array.shape[0]
    if count == 1 and num_bands != 1:
        raise ValueError(
            f"{path} has a single band ({array.dtype}, {array.shape[1]} x {array.shape[2]}): it looks like a mask or "
            "a grayscale image, not a multi-band image. Check that the image and mask/label folders are not swapped "
            "(pass num_bands=1 for single-band images)."
        )
    if num_bands is not None and count != num_bands:
        raise ValueError(
            f"{path} has {count} bands but {num_bands} are expected (the model's num_channels / the band list)."
        )
    if bands is not None:
        bad = [b for b in bands if not 0 <= int(b) < count]
        if bad or not len(bands):
            raise ValueError(f"{path}: band indices {list(bands)} must be non-empty and in [0, {count}).")
        array = array[list(bands)]
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(
                f"{path} holds {bad} NaN or infinite pixel value(s) in the bands used: replace them (e.g. with a "
                "valid value, or crop them out) before training or evaluating on this file."
            )
    return np.ascontiguousarray(array, dtype=np.float32)


def band_indices(selection: Sequence[str | int], band_names: Sequence[str]) -> list[int]:
    """0-based indices of `selection` (band names such as `"B04"`, or integer indices) in `band_names`.

    Example: ``band_indices(["B04", "B03", "B02"], S2_L1C_BANDS) == [3, 2, 1]``.
    """
    names = list(band_names)
    indices = []
    for item in selection:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise ValueError(f"Band index {item} is out of range for {len(names)} bands {names}.")
            indices.append(int(item))
        elif item in names:
            indices.append(names.index(item))
        else:
            raise ValueError(f"Unknown band {item!r}; the bands are {names}.")
    if len(set(indices)) != len(indices):
        raise ValueError(f"Band selection {list(selection)} names a band twice.")
    return indices


def read_band_names(path: str | os.PathLike) -> list[str]:
    """Band names from a `bands.json` (``{"bands": ["B01", ...]}``), or from the `bands.json` in a folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "bands.json"
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    names = values.get("bands") if isinstance(values, dict) else values
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ValueError(f"{path} must hold a non-empty list of band names under 'bands'.")
    return names


#: Sentinel-2 L1C band order of a 13-band stack (as in OSCD); RGB is B04, B03, B02.
S2_L1C_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
S2_RGB_BANDS: tuple[str, str, str] = ("B04", "B03", "B02")

__all__ = [
    "S2_L1C_BANDS",
    "S2_RGB_BANDS",
    "TIFF_SUFFIXES",
    "BandInfo",
    "band_indices",
    "probe_multiband",
    "read_band_names",
    "read_multiband_image",
]
