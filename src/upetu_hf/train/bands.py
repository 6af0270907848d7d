"""What a run reads from its images, decided once when the data is scanned: the bands (multi-band GeoTIFFs or
RGB), their normalisation statistics, the stem the model needs, the random crops per scene, and whether the
scenes' sizes can work at all. Everything is checked before training, and recorded in `run_config.json`
(`"bands"`), so `upetu-eval` reads images exactly as the run did without recomputing anything.

A run is *multi-band* when `--bands`, `--num-channels` or `--band-statistics train|FILE` is given, or when an image
is a TIFF that is not 8-bit RGB (13-band Sentinel-2, RGB+NIR, 16-bit). Its images are read with tifffile as
`(C, H, W)` float32 and normalised per band, ``(x * scale - mean_c) / std_c`` (`upetu_hf.data.band_images`); other
runs read RGB with Pillow and the checkpoint's image processor, as before.

The model's stem: a checkpoint with `C` input channels is used as is; an RGB checkpoint (3 channels) with `C != 3`
bands gets its stem inflated (`upetu_hf.models.stem.inflate_stem`: the pretrained kernels go to the bands named
R, G, B, i.e. Sentinel-2's B04, B03, B02, others start at `--new-band-scale` times their mean), and the stem then
trains with the method (PEFT: `STEM_MODULES_TO_SAVE`, saved with the adapter).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import DatasetDict
from torch import nn

from .._files import read_json
from ..data._io import describe
from ..data.band_images import BandReading
from ..data.band_statistics import check_statistics, compute_band_statistics
from ..data.crops import default_crops_per_image
from ..data.multispectral import S2_L1C_BANDS, S2_RGB_BANDS, BandInfo, band_indices, read_band_names
from ..data.scan import band_counts, is_multiband_file, probe_value, value_path
from ..data.transforms import processor_settings
from ..models.stem import STEM_MODULES_TO_SAVE, find_stems, inflate_stem
from .arguments import DENSE_TASKS, TrainingArguments, flag
from .tasks import get_task

#: The input channels of an RGB checkpoint.
RGB_CHANNELS = 3
#: Band names, other than Sentinel-2's, that receive the pretrained R, G and B kernels (case-insensitive).
RGB_NAMES = (("r", "g", "b"), ("red", "green", "blue"))
#: `--crops-per-image auto` draws at least this many training batches per epoch from a handful of scenes.
MIN_BATCHES_PER_EPOCH = 8
#: Rows read at a time while scanning a column (bounds the memory of in-memory Hub images).
_SCAN_ROWS = 256


@dataclass
class Scanned:
    """One image of a split: its name (file path or sample), its value and its header facts."""

    name: str
    value: Any
    info: BandInfo


@dataclass
class DataScan:
    """Every image of every split, per image column (`image`, or `image_a` and `image_b`)."""

    splits: dict[str, dict[str, list[Scanned]]]

    def images(self, split: str | None = None) -> Iterator[Scanned]:
        """The images of one split (or of all splits), every date of a change-detection pair included."""
        for name, columns in self.splits.items():
            if split is None or name == split:
                for images in columns.values():
                    yield from images

    def sizes(self, split: str) -> list[tuple[int, int]]:
        """`(height, width)` of each sample of `split` (its first image column)."""
        first = next(iter(self.splits[split].values()))
        return [(s.info.height, s.info.width) for s in first]


def scan_column(ds: datasets.Dataset, column: str) -> list[Scanned]:
    """Probe every image of `column` from its header (`upetu_hf.data.scan.probe_value`), a chunk at a time."""
    if isinstance(ds.features.get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    found = []
    for batch in ds.select_columns([column]).iter(batch_size=_SCAN_ROWS):
        for value in batch[column]:
            name = describe(value, f"{column} of sample {len(found)}")
            found.append(Scanned(name, value, probe_value(value, name)))
    return found


def scan_data(splits: DatasetDict, image_columns: Sequence[str]) -> DataScan:
    """Header facts of every image of every split (no pixel is decoded)."""
    return DataScan({split: {c: scan_column(ds, c) for c in image_columns} for split, ds in splits.items()})


@dataclass
class BandSetup:
    """How a multi-band run reads and normalises its images, and the stem its model needs (the run record's
    `"bands"`).

    `indices` are the 0-based bands kept of each `file_bands`-band file (`C = len(indices)`); `rgb_indices` the
    positions, among those `C`, that receive the pretrained R, G, B kernels when the stem of a `model_channels`
    = 3 checkpoint is inflated; `mean`, `std` and `scale` normalise ``(x * scale - mean) / std`` per band;
    `statistics` holds the training split's `BandStatistics` when they were computed; `dtype` the training
    images' pixel type (checked at evaluation)."""

    file_bands: int
    names: list[str]
    indices: list[int]
    rgb_indices: list[int]
    model_channels: int
    new_band_scale: float
    statistics_source: str
    mean: list[float]
    std: list[float]
    scale: float = 1.0
    statistics: dict[str, Any] | None = None
    selected: list[str] = field(default_factory=list)
    dtype: str | None = None  # of the training images' pixels (None in records of older runs)

    @property
    def num_channels(self) -> int:
        return len(self.indices)

    @property
    def inflates(self) -> bool:
        """Whether the checkpoint's RGB stem is inflated to the `C` bands."""
        return self.model_channels != self.num_channels

    def reading(self) -> BandReading:
        return BandReading(self.file_bands, tuple(self.indices), self.scale)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), num_channels=self.num_channels)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BandSetup:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


def input_channels(model: nn.Module) -> int:
    """The input channels of the model's ConvNeXt stem."""
    stems = find_stems(model)
    if not stems:
        raise ValueError(f"{type(model).__name__} has no ConvNeXt stem.")
    return stems[0][1].patch_embeddings.in_channels


def is_multiband(args: TrainingArguments, scan: DataScan) -> bool:
    """Whether the run reads its images as bands (see the module docstring); `--num-channels 3` alone on RGB
    images keeps the RGB path (and its normalisation)."""
    if args.bands is not None or args.band_statistics not in (None, "processor"):
        return True
    if any(is_multiband_file(s.value, s.info) for s in scan.images()):
        return True
    return args.num_channels is not None and args.num_channels != RGB_CHANNELS


def check_rgb_images(scan: DataScan) -> None:
    """The images of an RGB run (at training and evaluation): none is a multi-band file, none has a single band
    (a mask, or a grayscale image), each a one-line error naming the file."""
    for image in scan.images():
        info = image.info
        if info.num_bands == 1:
            raise ValueError(
                f"{image.name} has a single band ({info.dtype}): it looks like a mask or a grayscale image, not "
                "an RGB image. Check that the image and mask folders are not swapped, or convert it to RGB."
            )
        if is_multiband_file(image.value, info):
            raise ValueError(
                f"{image.name} has {info.num_bands} band(s) of {info.dtype} but the run reads RGB images (3 "
                "bands, 8-bit): use images like those it was trained on, or train a multi-band run on them."
            )


def check_band_count(scan: DataScan, bands: BandSetup) -> None:
    """Images evaluated with a trained multi-band run must have the band count (bands or pages) and pixel type
    it was trained on."""
    counts = band_counts((s.name, s.info) for s in scan.images())
    wrong = {n: name for n, name in counts.items() if n != bands.file_bands}
    if wrong:
        n, name = next(iter(wrong.items()))
        raise ValueError(
            f"{name} has {n} band(s) but the run was trained on {bands.file_bands}-band images "
            f"({', '.join(bands.names)}): evaluate it on images with the same bands."
        )
    other = next((s for s in scan.images() if bands.dtype and s.info.dtype != bands.dtype), None)
    if other is not None:
        raise ValueError(
            f"{other.name} stores {other.info.dtype} pixels but the run was trained on {bands.dtype} images, "
            "which its band statistics describe: evaluate it on images of the same type."
        )


def file_band_count(scan: DataScan, expected: int | None) -> int:
    """The band count every image shares; a single-band image, mixed counts or a count other than
    `--num-channels` is one error naming the files."""
    counts = band_counts((s.name, s.info) for s in scan.images())
    if 1 in counts:
        raise ValueError(
            f"{counts[1]} has a single band: it looks like a mask or a grayscale image, not a multi-band image. "
            "Check that the image and mask/label folders are not swapped."
        )
    if len(counts) > 1:
        listing = ", ".join(f"{name} has {n}" for n, name in sorted(counts.items()))
        raise ValueError(
            f"The images have different band counts ({listing}): every image needs the same bands."
        )
    ((count, name),) = counts.items()
    if expected is not None and count != expected:
        raise ValueError(
            f"{name} has {count} bands but --num-channels is {expected}: fix --num-channels or the data."
        )
    return count


def band_names(data: Sequence[str], count: int) -> list[str]:
    """The names of a file's bands: a `bands.json` in (or next to) a `--data` folder, Sentinel-2 L1C names for
    13-band files, else the indices "0", "1", ..."""
    for source in data:
        for folder in (Path(source).expanduser(), Path(source).expanduser().parent):
            if (folder / "bands.json").is_file():
                names = read_band_names(folder)
                if len(names) != count:
                    raise ValueError(
                        f"{folder / 'bands.json'} names {len(names)} bands but the images have {count}: fix the file."
                    )
                return names
    return list(S2_L1C_BANDS) if count == len(S2_L1C_BANDS) else [str(i) for i in range(count)]


def rgb_positions(selected: Sequence[str]) -> list[int]:
    """Positions, among the selected band names, of the bands that get the pretrained R, G, B kernels:
    Sentinel-2's B04, B03, B02, else bands named R, G, B (or red, green, blue), else the first three."""
    lowered = [name.lower() for name in selected]
    for triple in (tuple(n.lower() for n in S2_RGB_BANDS), *RGB_NAMES):
        if all(n in lowered for n in triple):
            return [lowered.index(n) for n in triple]
    if len(selected) < 3:
        raise ValueError(
            f"The {len(selected)} band(s) {list(selected)} cannot take an RGB checkpoint's stem: select at least 3 "
            "bands with --bands, or start from a checkpoint with that many input channels."
        )
    return [0, 1, 2]


def _statistics(
    args: TrainingArguments, scan: DataScan, reading: BandReading, processor: dict[str, Any]
) -> tuple[str, list[float], list[float], float, dict | None]:
    """`(source, mean, std, scale, computed statistics)` of `--band-statistics` (default: the training split)."""
    source = args.band_statistics or "train"
    channels = len(reading.indices)
    if source == "train":
        paths = [value_path(s.value) for s in scan.images("train")]
        stats = compute_band_statistics(paths, num_bands=reading.num_bands, bands=reading.indices)
        return source, stats.mean, stats.std, 1.0, stats.to_dict()  # finite: checked by the computation
    if source == "processor":
        mean, std = processor.get("image_mean"), processor.get("image_std")
        if not mean or not std or len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"--band-statistics processor: the image processor of --model {args.model} has image_mean "
                f"{mean} and image_std {std}, not {channels} values (one per band); use --band-statistics train "
                "or a JSON file, or give the checkpoint per-band statistics (upetu-convert --image-mean/--image-std)."
            )
        check_statistics(
            mean, std, f"--band-statistics processor (the image processor of --model {args.model})"
        )
        return source, list(mean), list(std), float(processor.get("rescale_factor", 1 / 255)), None
    path = Path(source).expanduser()
    if not path.is_file():  # read when a run starts; a finished run keeps the values in its record
        raise FileNotFoundError(
            f"--band-statistics {source}: no such file; pass a JSON file with 'mean' and 'std'."
        )
    values = read_json(path, "band statistics")
    values = values if isinstance(values, dict) else {}
    mean, std = values.get("mean"), values.get("std")
    if (
        not isinstance(mean, list)
        or not isinstance(std, list)
        or len(mean) != channels
        or len(std) != channels
    ):
        raise ValueError(f"--band-statistics {source} must hold 'mean' and 'std' lists of {channels} values.")
    check_statistics(mean, std, f"--band-statistics {source}", positive=True)
    return source, [float(v) for v in mean], [float(v) for v in std], float(values.get("scale", 1.0)), None


def resolve_bands(
    args: TrainingArguments, scan: DataScan, model_channels: int, processor: dict[str, Any]
) -> BandSetup | None:
    """The run's `BandSetup` (None: an RGB run), with every check against the files and the model."""
    if not is_multiband(args, scan):
        if model_channels != RGB_CHANNELS:
            raise ValueError(
                f"--model {args.model} takes {model_channels} input bands but the images are RGB: pass multi-band "
                "images (GeoTIFFs), or an RGB checkpoint."
            )
        check_rgb_images(scan)
        return None
    count = file_band_count(scan, args.num_channels)
    dtype = pixel_type(scan)
    names = band_names(args.data, count)
    try:
        indices = band_indices(args.bands, names) if args.bands is not None else list(range(count))
    except ValueError as err:
        raise ValueError(
            f"--bands {args.bands}: {err} Put a bands.json next to the data to name them."
        ) from None
    selected = [names[i] for i in indices]
    if model_channels not in (3, len(indices)):
        raise ValueError(
            f"--data has {len(indices)} band(s) {selected} but --model {args.model} takes {model_channels} input "
            f"bands: select {model_channels} bands with --bands, or start from an RGB checkpoint (its stem is "
            "inflated to the bands)."
        )
    rgb = rgb_positions(selected) if model_channels != len(indices) else []
    reading = BandReading(count, tuple(indices))
    source, mean, std, scale, stats = _statistics(args, scan, reading, processor)
    return BandSetup(
        file_bands=count,
        names=names,
        indices=indices,
        rgb_indices=rgb,
        model_channels=model_channels,
        new_band_scale=args.new_band_scale,
        statistics_source=source,
        mean=mean,
        std=std,
        scale=scale,
        statistics=stats,
        selected=selected,
        dtype=dtype,
    )


def pixel_type(scan: DataScan) -> str:
    """The pixel type every image of a multi-band run shares (its band statistics describe one type)."""
    types: dict[str, str] = {}
    for image in scan.images():
        types.setdefault(image.info.dtype, image.name)
    if len(types) > 1:
        listing = ", ".join(f"{name} holds {dtype}" for dtype, name in sorted(types.items()))
        raise ValueError(
            f"The images have different pixel types ({listing}): one set of band statistics cannot normalise "
            "them; convert them to one type."
        )
    return next(iter(types))


def adapt_stem(model: nn.Module, bands: BandSetup | None) -> list[str]:
    """Inflate the model's RGB stem to the run's bands when they differ (in place, before any PEFT wrapper);
    returns the modules that must then train with the method (`STEM_MODULES_TO_SAVE`, or none)."""
    if bands is None or not bands.inflates:
        return []
    inflate_stem(model, bands.num_channels, bands.rgb_indices, bands.new_band_scale)
    return list(STEM_MODULES_TO_SAVE)


def crops_per_image(args: TrainingArguments, scan: DataScan) -> int:
    """`--crops-per-image`, with "auto" resolved from the training scenes (`default_crops_per_image`)."""
    if args.task not in DENSE_TASKS:
        return 1
    if args.crops_per_image != "auto":
        return int(args.crops_per_image)
    sizes = scan.sizes("train")
    if args.resize is not None:
        sizes = [(args.resize, args.resize)] * len(sizes)
    min_crops = MIN_BATCHES_PER_EPOCH * args.batch_size
    return default_crops_per_image(sizes, args.image_size, min_crops=min_crops)


def check_scene_sizes(args: TrainingArguments, scan: DataScan, stride: int) -> None:
    """Refuse, before training, training scenes that cannot form batches or pass the model: whole scenes (no
    `--image-size` / `--resize`) of different sizes in batches of several, and whole change-detection scenes that
    are not multiples of the backbone's total stride. Evaluation pads to the stride, so it takes any size."""
    if args.task not in DENSE_TASKS or args.image_size is not None or args.resize is not None:
        return
    sizes = scan.sizes("train")
    first = next(iter(scan.splits["train"].values()))
    if len(set(sizes)) > 1 and args.batch_size > 1:
        (h, w), name = sizes[0], first[0].name
        other = next(i for i, s in enumerate(sizes) if s != sizes[0])
        raise ValueError(
            f"The training scenes differ in size ({name} is {h}x{w}, {first[other].name} is "
            f"{sizes[other][0]}x{sizes[other][1]}): pass --image-size (random crops) or --resize, or "
            f"{flag('batch_size')} 1."
        )
    bad = [(s, (h, w)) for s, (h, w) in zip(first, sizes) if h % stride or w % stride or min(h, w) < stride]
    if bad and (get_task(args.task).stride_sized or any(min(hw) < stride for _, hw in bad)):
        (scanned, (h, w)) = bad[0]
        raise ValueError(
            f"{scanned.name} is {h}x{w}: training on whole scenes needs sides that are multiples of the backbone "
            f"stride {stride}; pass --image-size (e.g. {stride * max(1, min(h, w) // stride)}) to train on random "
            "crops (evaluation takes any size)."
        )


def uniform_sizes(scan: DataScan, split: str) -> bool:
    """Whether every sample of `split` has the same size (else evaluation runs one scene per batch)."""
    return len(set(scan.sizes(split))) <= 1


def processor_of(settings: dict[str, Any]) -> dict[str, Any]:
    """The image processor entries `_statistics` reads (`image_mean`, `image_std`, `rescale_factor`)."""
    resolved = processor_settings(settings)
    return {
        "image_mean": list(settings.get("image_mean") or resolved["mean"]),
        "image_std": list(settings.get("image_std") or resolved["std"]),
        "rescale_factor": settings.get("rescale_factor", 1 / 255),
    }


__all__ = [
    "BandSetup",
    "DataScan",
    "adapt_stem",
    "check_band_count",
    "check_scene_sizes",
    "crops_per_image",
    "input_channels",
    "resolve_bands",
    "scan_data",
    "uniform_sizes",
]
