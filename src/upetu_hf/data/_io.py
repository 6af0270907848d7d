"""File-level helpers shared by the folder loaders and the transforms: listing, probing, decoding images."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

from .multispectral import TIFF_SUFFIXES, probe_multiband, read_multiband_image

#: File extensions (lower case) recognised as images by the folder loaders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def utf8_named(path: Path) -> Path:
    """`path`, refused (`ValueError` naming it) when its name is not valid UTF-8: such a name (a Latin-1 `é`, say)
    cannot be stored in a dataset, a run record or a prediction file."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")  # the undecodable bytes as \\xNN
        raise ValueError(
            f"The file name {shown} is not valid UTF-8: rename it (e.g. `convmv -f latin1 -t utf-8 --notest`)."
        ) from None
    return path


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (non-recursive), sorted by name; a name that is not UTF-8 is refused
    (`utf8_named`)."""
    return sorted(
        utf8_named(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Map file stem -> image file in ``folder``; two images sharing a stem is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Expected a folder at {folder}, but it does not exist or is not a folder.")
    out: dict[str, Path] = {}
    for path in list_image_files(folder):
        if path.stem in out:
            raise ValueError(
                f"Two images share the stem {path.stem!r} in {folder}: {out[path.stem].name} and {path.name}."
            )
        out[path.stem] = path
    return out


def probe_image(path: Path, verify: bool = False) -> tuple[int, int]:
    """Return ``(width, height)`` of an image file, reading only its header unless ``verify`` is true.

    Raises ``ValueError`` naming the file when it cannot be read (``verify=True`` decodes every pixel,
    which also catches truncated files). TIFFs are read with tifffile (any band count, e.g. 13-band GeoTIFFs that
    Pillow cannot open); a TIFF without an image raster is refused here, when a folder is first scanned.
    """
    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        info = probe_multiband(path)
        if verify:
            read_multiband_image(path, num_bands=info.num_bands)
        return info.width, info.height
    try:
        with PIL.Image.open(path) as img:
            if verify:
                img.load()
            return img.size
    except Exception as exc:  # PIL raises several exception types for bad files
        raise ValueError(f"Cannot read image file {path}: {exc}") from exc


def check_pair_sizes(paths: Iterable[Path], verify: bool = False) -> None:
    """Raise ``ValueError`` naming the files when the images in ``paths`` do not all have the same size."""
    paths = list(paths)
    sizes = [probe_image(p, verify) for p in paths]
    if len(set(sizes)) > 1:
        listing = ", ".join(f"{p} is {w}x{h}" for p, (w, h) in zip(paths, sizes, strict=True))
        raise ValueError(f"Size mismatch between paired files (width x height): {listing}.")


def describe(value: Any, fallback: str) -> str:
    """A human-readable name (file path when known) for an image value, for error messages."""
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    if isinstance(value, (str, Path)):
        return str(value)
    name = getattr(value, "filename", "")
    return str(name) if name else fallback


def open_image(value: Any, name: str) -> PIL.Image.Image:
    """Decode an image given as PIL image, numpy array, path, or a ``datasets`` ``{"path", "bytes"}`` dict.

    Any decoding failure raises ``ValueError`` naming ``name`` (the file or sample).
    """
    try:
        if isinstance(value, PIL.Image.Image):
            value.load()
            return value
        if isinstance(value, np.ndarray):
            return PIL.Image.fromarray(value)
        if isinstance(value, (str, Path)):
            img = PIL.Image.open(value)
        elif isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
            source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
            img = PIL.Image.open(source)
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        img.load()
        # same orientation handling as datasets.Image.decode_example
        if img.getexif().get(PIL.Image.ExifTags.Base.Orientation) is not None:
            img = PIL.ImageOps.exif_transpose(img)
        return img
    except Exception as exc:
        raise ValueError(f"Cannot read image {name}: {exc}") from exc
