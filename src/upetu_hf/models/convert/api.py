"""`convert_checkpoint`: a ConvNeXt checkpoint (original, timm, V1/V2, wrapped or prefixed) -> an HF folder.

Steps: read the file safely (`reading`), find the encoder prefix and layout (`layouts.detect`), rename the keys
(`layouts.map_keys`), infer the architecture (`architecture`), build the HF model, check that every backbone
tensor is provided with the right shape, load, and write ``config.json``, ``model.safetensors``,
``preprocessor_config.json`` and ``conversion.json`` (`output`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    ConvNextForImageClassification,
    ConvNextModel,
    ConvNextV2ForImageClassification,
    ConvNextV2Model,
    PreTrainedModel,
)

from .architecture import Architecture, infer_architecture, make_config
from .errors import ConversionError, preview
from .layouts import detect, map_keys
from .output import check_output_dir, write_output
from .reading import find_state_dict, load_checkpoint_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODEL_CLASSES = {
    (1, False): ConvNextModel,
    (1, True): ConvNextForImageClassification,
    (2, False): ConvNextV2Model,
    (2, True): ConvNextV2ForImageClassification,
}
# HF keys (relative to the bare model) that may be missing from a checkpoint: they keep their initialisation.
_OPTIONAL = ("layernorm.weight", "layernorm.bias")


@dataclass
class ConversionReport:
    """What [`convert_checkpoint`] did; also written to ``OUTPUT_DIR/conversion.json``."""

    source: str
    output_dir: str
    layout: str  # "original" or "timm"
    wrapper: str  # wrapper path followed to the state dict, e.g. "module" ("" = none)
    prefix: str  # encoder prefix stripped from the keys, e.g. "sparse_encoder.sp_cnn."
    model_class: str
    version: int
    depths: list[int]
    hidden_sizes: list[int]
    num_channels: int
    num_labels: int | None
    loaded: int  # tensors copied from the checkpoint
    initialised: list[str] = field(default_factory=list)  # HF keys that kept their fresh initialisation
    dropped: list[str] = field(default_factory=list)  # encoder keys dropped on purpose (e.g. mmseg `norm0`)
    ignored: list[str] = field(default_factory=list)  # keys outside the encoder prefix (decoder, projector)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _label_count(arch: Architecture, num_labels: int | None, label_names: Sequence[str] | None) -> int | None:
    if label_names is not None:
        if len(label_names) == 0 or len(set(label_names)) != len(label_names):
            raise ConversionError("label names must be a non-empty list without duplicates")
        if num_labels is not None and num_labels != len(label_names):
            raise ConversionError(f"--num-labels {num_labels} disagrees with {len(label_names)} label names")
        return len(label_names)
    if num_labels is not None and num_labels < 1:
        raise ConversionError(f"the number of labels must be positive, got {num_labels}")
    return num_labels if num_labels is not None else arch.head_labels


def _check_stats(name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        raise ConversionError(
            f"{name} has {len(values)} values but the model takes {channels} input channels; give one per channel"
        )
    if name == "--image-std" and any(v <= 0 for v in values):
        raise ConversionError(f"{name} values must be positive, got {values}")
    return values


def _target_state(model: PreTrainedModel, tensors: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Full-model keys for the HF-named `tensors`; raise on unexpected, missing or mis-shaped tensors.

    Returns:
        the state dict to load and the target keys that stay initialised.
    """
    base = "" if model.base_model is model else model.base_model_prefix + "."
    classification = base != ""
    wanted = {}
    for key, tensor in tensors.items():
        if key.startswith("classifier."):
            if classification:
                wanted[key] = tensor
        else:
            wanted[base + key] = tensor
    target = model.state_dict()
    unexpected = sorted(set(wanted) - set(target))
    if unexpected:
        raise ConversionError(
            f"{len(unexpected)} checkpoint tensors have no place in a ConvNeXt with the given depths/widths: "
            f"{preview([k[len(base) :] if k.startswith(base) else k for k in unexpected])}"
        )
    optional = {base + k for k in _OPTIONAL} | {k for k in target if k.startswith("classifier.")}
    missing = sorted(k for k in target if k not in wanted and k not in optional)
    if missing:
        raise ConversionError(
            f"the checkpoint lacks {len(missing)} tensors of this ConvNeXt: {preview([k[len(base) :] for k in missing])}"
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(target[k].shape)})"
        for k, v in wanted.items()
        if tuple(v.shape) != tuple(target[k].shape)
    ]
    if wrong:
        raise ConversionError(f"{len(wrong)} tensors have the wrong shape: {preview(wrong, 4)}")
    return wanted, sorted(k for k in target if k not in wanted)


def _image_processor(mean: tuple[float, ...], std: tuple[float, ...], image_size: int):
    try:  # transformers 5 names the PIL implementation explicitly (no torchvision needed)
        from transformers import ConvNextImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ConvNextImageProcessor as Processor
    return Processor(image_mean=list(mean), image_std=list(std), size={"shortest_edge": image_size})


def _read_and_map(checkpoint: str | os.PathLike, key: str | None, prefix: str | None):
    """Read `checkpoint`, find its weights (wrapper `key`, encoder `prefix`) and map them onto HF ConvNeXt keys.

    Returns `(mapped, layout, wrapper, prefix, ignored)`; raises `ConversionError` naming the keys it cannot map.
    """
    raw = load_checkpoint_file(checkpoint)
    state_dict, wrapper = find_state_dict(raw, key)
    del raw
    layout, found_prefix = detect(state_dict, prefix)
    scoped = {k[len(found_prefix) :]: v for k, v in state_dict.items() if k.startswith(found_prefix)}
    ignored = sorted(k for k in state_dict if not k.startswith(found_prefix))
    mapped = map_keys(scoped, layout)
    if mapped.unmatched:
        raise ConversionError(
            f"cannot map {len(mapped.unmatched)} of {len(scoped)} keys (layout {layout.name!r}, prefix "
            f"{found_prefix!r}): {preview(mapped.unmatched)}"
        )
    return mapped, layout, wrapper, found_prefix, ignored


def _normalisation(
    num_channels: int, image_mean: Sequence[float] | None, image_std: Sequence[float] | None, image_size: int
):
    """The checked per-channel mean and std for the processor (ImageNet's by default, for 3 channels only)."""
    if image_mean is None and image_std is None and num_channels != 3:
        raise ConversionError(
            f"the model takes {num_channels} input channels: give --image-mean and --image-std with "
            f"{num_channels} values each"
        )
    mean = _check_stats("--image-mean", image_mean if image_mean is not None else IMAGENET_MEAN, num_channels)
    std = _check_stats("--image-std", image_std if image_std is not None else IMAGENET_STD, num_channels)
    if image_size < 1:
        raise ConversionError(f"--image-size must be positive, got {image_size}")
    return mean, std


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    depths: Sequence[int] | None = None,
    hidden_sizes: Sequence[int] | None = None,
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    image_size: int = 224,
    prefix: str | None = None,
    key: str | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert a ConvNeXt checkpoint into a Hugging Face ConvNeXt folder.

    The folder holds `ConvNextForImageClassification` / `ConvNextV2ForImageClassification` when the checkpoint
    has a classification head or `num_labels`/`label_names` is given (a head of another size is replaced by a
    fresh one), else the bare `ConvNextModel` / `ConvNextV2Model`; a missing pooled-output LayerNorm keeps its
    initialisation (weight 1, bias 0). `from_pretrained`, `peft.get_peft_model` and ``upetu-train --model``
    accept it.

    Args:
        checkpoint: a `.pth`/`.pt`/`.bin` file (read with ``torch.load(weights_only=True)``) or `.safetensors`.
        output_dir: folder to create (or an empty one, a previous conversion, or any with `overwrite`).
        depths / hidden_sizes: per-stage block counts / widths instead of the inferred ones.
        num_labels / label_names: classification labels (default: the checkpoint head's size, ``LABEL_i``).
        image_mean / image_std: per-channel normalisation written to ``preprocessor_config.json``
            (default ImageNet's, which needs a 3-channel stem).
        image_size: the processor's ``shortest_edge`` and the config's ``image_size``.
        prefix: encoder prefix to strip (default: found from the stem key; ``""`` = none).
        key: wrapper entry holding the weights, ``/``-separated (default: ``state_dict``/``model``/``module``...).
        overwrite: allow a non-empty OUTPUT_DIR; only the converter's files are replaced there.

    Raises:
        ConversionError: unreadable or unsafe file, a layout that cannot be mapped (the unmatched keys are
            named), inconsistent options, or an OUTPUT_DIR it may not write to.
    """
    output_path = check_output_dir(output_dir, overwrite)
    mapped, layout, wrapper, found_prefix, ignored = _read_and_map(checkpoint, key, prefix)
    arch = infer_architecture(mapped.tensors, depths, hidden_sizes)
    labels = _label_count(arch, num_labels, label_names)
    tensors = dict(mapped.tensors)
    if arch.head_labels is not None and labels != arch.head_labels:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    mean, std = _normalisation(arch.num_channels, image_mean, image_std, image_size)

    config = make_config(arch, labels, label_names, image_size)
    model = _MODEL_CLASSES[(arch.version, labels is not None)](config)
    state, initialised = _target_state(model, tensors)
    model.load_state_dict(state, strict=False)
    model.eval()

    report = ConversionReport(
        source=str(checkpoint),
        output_dir=str(output_path),
        layout=layout.name,
        wrapper=wrapper,
        prefix=found_prefix,
        model_class=type(model).__name__,
        version=arch.version,
        depths=list(config.depths),
        hidden_sizes=list(config.hidden_sizes),
        num_channels=arch.num_channels,
        num_labels=labels,
        loaded=len(state),
        initialised=initialised,
        dropped=mapped.dropped,
        ignored=ignored,
    )
    report.files = _write_folder(output_path, model, _image_processor(mean, std, image_size), report)
    return report


def _write_folder(output_path: Path, model, processor, report: ConversionReport) -> list[str]:
    """Save `model` and `processor` into `output_path` with the conversion record (`report` without its folder
    and file list, the source named by its file name); returns the files written."""

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    record = {k: v for k, v in report.to_dict().items() if k not in ("output_dir", "files")}
    record["source"] = os.path.basename(report.source)
    return write_output(output_path, write, record)
