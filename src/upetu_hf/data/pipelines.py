"""Batch transforms for ``Dataset.with_transform``: classification, segmentation, change detection.

Each transform takes a batch (dict of lists, as ``with_transform`` passes it) or a single example and
returns ``pixel_values`` (float32 ``3 x H x W``; ``pixel_values_a``/``pixel_values_b`` for change
detection) and ``labels`` (``int64`` class index, or ``H x W`` mask). Image values may be PIL images
(``datasets.Image`` decoding), ``{"path", "bytes"}`` dicts (``Image(decode=False)``), paths or arrays.
Use :func:`attach_transform` so images are decoded here and corrupt files are reported by name.

Randomness comes from a private ``torch.Generator`` seeded by ``seed``: the same seed gives the same
augmentations. Inside ``DataLoader`` workers each worker re-seeds from ``seed`` and its worker seed,
so workers differ from one another yet stay reproducible under ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from ._io import describe, open_image
from .band_images import BandReading, normalize_band_image, read_bands, resize_bands
from .band_statistics import check_statistics
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Size,
    as_hw,
    check_min_size,
    image_to_array,
    joint_crop,
    joint_flip_rotate,
    map_mask,
    mask_to_array,
    mask_to_tensor,
    normalize,
    processor_settings,
    resize_image,
    resize_mask,
    validate_mask,
)

Batch = dict[str, Any]


class _Transform:
    """Shared parts: normalisation constants, the seeded generator, batch/single-example dispatch."""

    #: columns holding images or masks (decoded by this transform)
    image_columns: tuple[str, ...] = ()

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        resample: int = PIL.Image.Resampling.BILINEAR,
        seed: int | torch.Generator | None = None,
        bands: BandReading | None = None,
    ) -> None:
        channels = 3 if bands is None else len(bands.indices)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"mean and std need {channels} values (one per band); got mean={mean}, std={std}."
            )
        check_statistics(mean, std, "the normalisation", positive=True)
        self.bands = bands
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.train, self.hflip, self.vflip, self.rot90 = train, hflip, vflip, rot90
        self.resample = resample
        if isinstance(seed, torch.Generator):
            self.seed, self._gen = seed.initial_seed(), seed
        else:
            self.seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            self._gen = torch.Generator().manual_seed(self.seed)
        self._worker_key: tuple[int, int] | None = None

    @classmethod
    def from_image_processor(cls, processor: Any, **kwargs: Any):
        """Build the transform with ``mean``/``std``/``resample`` taken from a transformers image
        processor (object or ``to_dict()``); ``kwargs`` are passed on and take precedence."""
        settings = processor_settings(processor)
        for key in ("mean", "std", "resample"):
            kwargs.setdefault(key, settings[key])
        return cls(**kwargs)

    def generator(self) -> torch.Generator:
        """The generator to draw from; re-seeded once per ``DataLoader`` worker (see module doc)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_key != (info.id, info.seed):
            self._worker_key = (info.id, info.seed)
            self._gen = torch.Generator().manual_seed((self.seed * 1_000_003 + info.seed) % 2**63)
        return self._gen

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gen"] = self._gen.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        gen = torch.Generator()
        gen.set_state(state["_gen"])
        self.__dict__.update(state, _gen=gen)

    def __call__(self, batch: Batch) -> Batch:
        """Transform a batch (dict of lists) or one example (dict of values)."""
        first = self.image_columns[0]
        _require(batch, first, "image_column (image_a_column for change detection)")
        if isinstance(batch[first], (list, tuple)):
            return self.process_batch(batch)
        out = self.process_batch({k: [v] for k, v in batch.items()})
        return {k: v[0] for k, v in out.items()}

    def process_batch(self, batch: Batch) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    # an image is an (H, W, 3) uint8 array (RGB: Pillow and the processor's statistics), or with `bands` an
    # (H, W, C) float32 array of the selected bands (tifffile and per-band statistics, see `band_images`)
    def read(self, value: Any, name: str) -> np.ndarray:
        if self.bands is None:
            return image_to_array(open_image(value, name))
        return read_bands(value, name, self.bands.num_bands, self.bands.indices)

    def resize(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self.bands is None:
            return resize_image(image, size, self.resample)
        return resize_bands(image, size)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        if self.bands is None:
            return normalize(image, self.mean, self.std)
        return normalize_band_image(image, self.mean, self.std, self.bands.scale)


def _require(batch: Batch, column: str, argument: str) -> None:
    if column not in batch:
        raise ValueError(
            f"Batch has no column {column!r}; columns found: {sorted(batch)}. "
            f"Pass {argument}=<name> naming the right column."
        )


def _names(batch: Batch, column: str) -> list[str]:
    """Error-message names for the values of ``column``: file path when known, else name column / index."""
    ids = batch.get("name") or [None] * len(batch[column])
    return [
        describe(v, f"{column} of sample {n!r}" if n is not None else f"{column} of sample {i} in the batch")
        for i, (v, n) in enumerate(zip(batch[column], ids, strict=False))
    ]


class ClassificationTransform(_Transform):
    """Resize to ``size`` (any input size), optional random flips/rotations when ``train``, normalise.

    Output: ``pixel_values`` (float32 ``3 x H x W``) and, unless ``label_column`` is None, ``labels``
    (``int64`` scalar tensor).
    """

    def __init__(
        self,
        size: Size = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        resample: int = PIL.Image.Resampling.BILINEAR,
        image_column: str = "image",
        label_column: str | None = "label",
        min_size: int = 1,
        seed: int | torch.Generator | None = None,
        bands: BandReading | None = None,
    ) -> None:
        super().__init__(mean, std, train, hflip, vflip, rot90, resample, seed, bands)
        self.size = as_hw(size)
        check_min_size(*self.size, min_size, f"size={size} (the resize target)")
        self.image_column, self.label_column = image_column, label_column
        self.image_columns = (image_column,)

    @classmethod
    def from_image_processor(cls, processor: Any, **kwargs: Any) -> ClassificationTransform:
        """As the base method, also taking ``size`` from the processor when it defines one."""
        size = processor_settings(processor)["size"]
        if size is not None:
            kwargs.setdefault("size", size)
        return super().from_image_processor(processor, **kwargs)

    def process_batch(self, batch: Batch) -> Batch:
        if self.label_column is not None:
            _require(batch, self.label_column, "label_column")
        pixel_values = []
        for value, name in zip(batch[self.image_column], _names(batch, self.image_column), strict=True):
            img = self.resize(self.read(value, name), self.size)
            if self.train:
                (img,) = joint_flip_rotate([img], self.generator(), self.hflip, self.vflip, self.rot90)
            pixel_values.append(self.normalize(img))
        out: Batch = {"pixel_values": pixel_values}
        if self.label_column is not None:
            out["labels"] = [
                torch.tensor(int(label), dtype=torch.int64) for label in batch[self.label_column]
            ]
        return out


class _DenseTransform(_Transform):
    """Joint pipeline for image(s) + mask: decode, validate/map mask, resize, crop/pad, flip/rotate."""

    #: output keys for the image columns, in order; the mask column (if any) gives ``labels``
    output_names: tuple[str, ...] = ()
    mask_column: str | None = None

    def __init__(
        self,
        crop_size: Size | None = None,
        resize: Size | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        resample: int = PIL.Image.Resampling.BILINEAR,
        ignore_index: int = 255,
        min_size: int = 32,
        seed: int | torch.Generator | None = None,
        bands: BandReading | None = None,
    ) -> None:
        super().__init__(mean, std, train, hflip, vflip, rot90, resample, seed, bands)
        self.crop_size = as_hw(crop_size) if crop_size is not None else None
        self.resize_to = as_hw(resize) if resize is not None else None
        self.ignore_index, self.min_size = ignore_index, min_size
        for what, size in (("crop_size", self.crop_size), ("resize", self.resize_to)):
            if size is not None:
                check_min_size(*size, min_size, f"{what}={size}")

    def prepare_mask(self, mask: np.ndarray, name: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def process_batch(self, batch: Batch) -> Batch:
        image_cols = self.image_columns[: len(self.output_names)]
        for col in self.image_columns:
            _require(batch, col, "image_column/mask_column (image_a_column/image_b_column/label_column)")
        names = {col: _names(batch, col) for col in self.image_columns}
        out: Batch = {key: [] for key in self.output_names}
        if self.mask_column is not None:
            out["labels"] = []
        for i in range(len(batch[image_cols[0]])):
            images = [self.read(batch[c][i], names[c][i]) for c in image_cols]
            masks = []
            if self.mask_column is not None:
                mask_name = names[self.mask_column][i]
                raw = mask_to_array(open_image(batch[self.mask_column][i], mask_name), mask_name)
                masks.append(self.prepare_mask(raw, mask_name))
            shapes = [a.shape[:2] for a in images + masks]
            if len(set(shapes)) > 1:
                listing = ", ".join(
                    f"{names[c][i]} is {s[0]}x{s[1]}"
                    for c, s in zip(self.image_columns, shapes, strict=False)
                )
                raise ValueError(f"Size mismatch (HxW) within one sample: {listing}.")
            if self.resize_to is not None:
                images = [self.resize(a, self.resize_to) for a in images]
                masks = [resize_mask(m, self.resize_to) for m in masks]
            if self.crop_size is not None:
                gen = self.generator() if self.train else None
                images, masks = joint_crop(images, masks, self.crop_size, gen, self.ignore_index)
            elif self.resize_to is None:
                check_min_size(*shapes[0], self.min_size, names[image_cols[0]][i])
            if self.train:
                arrays = joint_flip_rotate(
                    images + masks, self.generator(), self.hflip, self.vflip, self.rot90
                )
                images, masks = arrays[: len(images)], arrays[len(images) :]
            for key, img in zip(self.output_names, images, strict=True):
                out[key].append(self.normalize(img))
            if masks:
                out["labels"].append(mask_to_tensor(masks[0]))
        return out


class SegmentationTransform(_DenseTransform):
    """Segmentation: columns ``image`` + ``mask`` -> ``pixel_values`` + ``labels`` (``int64`` ``H x W``).

    Mask values must lie in ``0..num_labels-1`` or equal ``ignore_index`` (else ``ValueError`` naming
    the file and values). ``resize`` resizes image (``resample``) and mask (nearest) first; ``crop_size``
    then crops (random when ``train``, centred otherwise), padding smaller inputs with 0 / ``ignore_index``;
    when ``train``, flips and 90-degree rotations follow, identical for image and mask. Without
    ``resize`` or ``crop_size`` inputs keep their size and must be at least ``min_size`` on each side.
    """

    output_names = ("pixel_values",)

    def __init__(
        self,
        num_labels: int,
        crop_size: Size | None = None,
        resize: Size | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        resample: int = PIL.Image.Resampling.BILINEAR,
        ignore_index: int = 255,
        min_size: int = 32,
        image_column: str = "image",
        mask_column: str | None = "mask",
        seed: int | torch.Generator | None = None,
        bands: BandReading | None = None,
    ) -> None:
        super().__init__(
            crop_size, resize, mean, std, train, hflip, vflip, rot90, resample, ignore_index, min_size, seed,
            bands,
        )  # fmt: skip
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}.")
        self.num_labels = num_labels
        self.mask_column = mask_column
        self.image_columns = (image_column,) + ((mask_column,) if mask_column else ())
        self.allowed = frozenset(range(num_labels)) | {ignore_index}

    def prepare_mask(self, mask: np.ndarray, name: str) -> np.ndarray:
        validate_mask(mask, self.allowed, name)
        return mask


class ChangeDetectionTransform(_DenseTransform):
    """Change detection: ``image_a``, ``image_b``, ``label`` -> ``pixel_values_a``, ``pixel_values_b``,
    ``labels`` (``int64`` ``H x W``).

    Label values are mapped through ``label_map`` (default ``{0: 0, 1: 1, 255: 1}``: 0/255 and 0/1
    masks both become 0/1); other values raise ``ValueError`` naming the file. Padding added by
    ``crop_size`` is ``ignore_index`` (255) in ``labels``. Geometry as in :class:`SegmentationTransform`,
    applied identically to both images and the label.
    """

    output_names = ("pixel_values_a", "pixel_values_b")

    def __init__(
        self,
        crop_size: Size | None = None,
        resize: Size | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        resample: int = PIL.Image.Resampling.BILINEAR,
        ignore_index: int = 255,
        min_size: int = 32,
        label_map: Mapping[int, int] | None = None,
        image_a_column: str = "image_a",
        image_b_column: str = "image_b",
        label_column: str | None = "label",
        seed: int | torch.Generator | None = None,
        bands: BandReading | None = None,
    ) -> None:
        super().__init__(
            crop_size, resize, mean, std, train, hflip, vflip, rot90, resample, ignore_index, min_size, seed,
            bands,
        )  # fmt: skip
        self.label_map = dict(label_map) if label_map is not None else {0: 0, 1: 1, 255: 1}
        self.mask_column = label_column
        self.image_columns = (image_a_column, image_b_column) + ((label_column,) if label_column else ())

    def prepare_mask(self, mask: np.ndarray, name: str) -> np.ndarray:
        return map_mask(mask, self.label_map, name)


def _shorten(values: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def check_mask_files(
    masks: Sequence[Any], allowed: Collection[int], what: str = "mask", limit: int = 5
) -> None:
    """Decode every mask once (values as ``datasets.Image(decode=False)`` gives them, paths, or PIL images) and
    raise one ``ValueError`` naming up to ``limit`` files and their values that lie outside ``allowed``, so bad
    labels fail before training rather than when their batch comes up."""
    bad = []
    for i, value in enumerate(masks):
        name = describe(value, f"{what} of sample {i}")
        values = np.unique(mask_to_array(open_image(value, name), name))
        outside = sorted(set(values.tolist()) - set(allowed))
        if outside:
            bad.append(f"{name} has {_shorten(outside)}")
    if bad:
        more = f"; ... and {len(bad) - limit} more" if len(bad) > limit else ""
        raise ValueError(
            f"{len(bad)} {what}(s) hold values outside the allowed {_shorten(sorted(allowed))}: "
            f"{'; '.join(bad[:limit])}{more}. Check --num-labels / --class-names / --ignore-index (or "
            "classes.json), or fix the files."
        )


def attach_transform(
    ds: datasets.Dataset | datasets.DatasetDict, transform: _Transform
) -> datasets.Dataset | datasets.DatasetDict:
    """``ds.with_transform(transform)``, after switching the transform's image columns to
    ``Image(decode=False)`` so that images are decoded inside the transform, which names any unreadable
    file. Plain ``ds.with_transform(transform)`` works too (datasets then decodes the images)."""
    for col in transform.image_columns:
        feature = (
            ds[next(iter(ds))].features.get(col)
            if isinstance(ds, datasets.DatasetDict)
            else ds.features.get(col)
        )
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(col, datasets.Image(decode=False))
    return ds.with_transform(transform)
