"""Whole-scene prediction at any size: zero-pad to the backbone's total stride, run the model, crop the logits back.

A ConvNeXt backbone down-samples by its total stride ``s = patch_size * 2 ** (num_stages - 1)`` (32 for every
released ConvNeXt: patch 4, four stages). `ConvNextForChangeDetection` refuses sizes that are not multiples of
``s``; UperNet accepts them but its pyramid levels then round differently and no longer align. Padding fixes both:

    x (N, C, H, W)  --zero-pad bottom/right-->  x' (N, C, H', W'),  H' = s * ceil(H / s),  W' = s * ceil(W / s)
    logits' = model(x') (N, K, H', W')  -->  logits = logits'[..., :H, :W]  (N, K, H, W)

The training loop pads only change-detection scenes (`upetu_hf.train.inference.scene_tiling`). UperNet trains on
unpadded inputs, and padding them at evaluation alone shows it borders it never saw: on 112-px GID tiles (padded
to 128) that cost the same trained weights about 20 points of validation mIoU.

Padding is applied after normalisation, so the padded pixels are the normalised value 0 (the dataset mean when
the statistics are the data's own). Models are called with keyword inputs, so one function serves both tasks:
``{"pixel_values": x}`` for UperNet, ``{"pixel_values_a": a, "pixel_values_b": b}`` for change detection; PEFT
models (`PeftModel`) forward the keywords to the wrapped model unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from .change_detection import SUPPORTED_BACKBONE_TYPES, backbone_total_stride

#: Model inputs: one image batch (taken as ``pixel_values``) or a mapping of input name -> image batch.
SceneInputs = torch.Tensor | Mapping[str, torch.Tensor]


def _unwrap(model_or_config: nn.Module | PreTrainedConfig) -> PreTrainedConfig:
    """The Hugging Face config of a model, a PEFT-wrapped model, or the config itself."""
    if isinstance(model_or_config, PreTrainedConfig):
        return model_or_config
    model = model_or_config
    if hasattr(model, "get_base_model"):  # peft.PeftModel: the config lives on the wrapped transformers model
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if not isinstance(config, PreTrainedConfig):
        raise ValueError(
            f"{type(model).__name__} has no Hugging Face config to read the stride from; pass `multiple=` explicitly."
        )
    return config


def model_total_stride(model_or_config: nn.Module | PreTrainedConfig) -> int:
    """Total down-sampling factor ``s`` that input heights and widths must be multiples of.

    Read from the config, so it can be checked when data is scanned, before any forward pass:
    ConvNeXt / ConvNeXt V2 ``s = patch_size * 2 ** (len(depths) - 1)`` (4 * 2**3 = 32); UperNet and
    `ConvNextForChangeDetection` use their `backbone_config`. Accepts a model, a `PeftModel` or a config.

    Raises:
        ValueError: for a model whose backbone is not a ConvNeXt (pass `multiple=` to the padding functions then).
    """
    config = _unwrap(model_or_config)
    backbone_config = getattr(config, "backbone_config", None)
    if backbone_config is not None:
        config = backbone_config
    if getattr(config, "model_type", None) not in SUPPORTED_BACKBONE_TYPES:
        raise ValueError(
            f"Cannot read the total stride of a model_type={getattr(config, 'model_type', None)!r} backbone "
            f"(supported: {', '.join(SUPPORTED_BACKBONE_TYPES)}); pass `multiple=` explicitly."
        )
    return backbone_total_stride(config)


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """``(H', W') = (m * ceil(H / m), m * ceil(W / m))``: the smallest size >= `(height, width)` the model accepts."""
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}.")
    if height < 1 or width < 1:
        raise ValueError(f"Image size must be positive, got (height, width) = ({height}, {width}).")
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_to_multiple(pixel_values: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad `(..., H, W)` at the bottom and right with `value` to `(..., H', W')`, see [`padded_size`].

    Returns the input itself when no padding is needed. Crop back with ``out[..., :H, :W]``.
    """
    height, width = pixel_values.shape[-2:]
    target_h, target_w = padded_size(height, width, multiple)
    if (target_h, target_w) == (height, width):
        return pixel_values
    return F.pad(pixel_values, (0, target_w - width, 0, target_h - height), mode="constant", value=value)


def as_input_dict(inputs: SceneInputs) -> dict[str, torch.Tensor]:
    """Normalise `inputs` to ``{name: (N, C, H, W)}`` and check every image has the same batch and spatial size."""
    named = {"pixel_values": inputs} if torch.is_tensor(inputs) else dict(inputs)
    if not named:
        raise ValueError("No model inputs given.")
    shapes = {}
    for name, value in named.items():
        if not torch.is_tensor(value) or value.ndim != 4:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"{name} must be a 4-D tensor (batch, channels, height, width), got {shape}.")
        shapes[name] = (value.shape[0], *value.shape[-2:])
    if len(set(shapes.values())) > 1:
        raise ValueError(f"All inputs must share batch size, height and width, got {shapes}.")
    return named


def logits_of(model: nn.Module, inputs: Mapping[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """``model(**inputs).logits`` as `(N, K, *size)`; logits at a lower resolution are resized bilinearly.

    UperNet and `ConvNextForChangeDetection` already return logits at the input size; the resize serves heads that
    stop at stride 4, in the same way their training loss upsamples them.
    """
    outputs = model(**inputs)
    logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
    if logits.ndim != 4:
        raise ValueError(
            f"Expected dense logits (batch, classes, height, width), got shape {tuple(logits.shape)}."
        )
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def forward_padded(
    model: nn.Module, inputs: SceneInputs, multiple: int | None = None, pad_value: float = 0.0
) -> torch.Tensor:
    """Whole-image logits for any `H x W`: pad to `multiple` (default: the model's total stride), run, crop.

    Args:
        model: UperNet, `ConvNextForChangeDetection` or a `PeftModel` around either (call `model.eval()` first).
        inputs: `(N, C, H, W)` images (passed as `pixel_values`), or a mapping such as
            ``{"pixel_values_a": a, "pixel_values_b": b}`` of equally sized `(N, C, H, W)` images.
        multiple: the padding multiple; `None` reads [`model_total_stride`] from the model's config.
        pad_value: value of the padded pixels (0 = the normalised mean).

    Returns:
        Logits `(N, K, H, W)`: ``model(**pad(inputs)).logits[..., :H, :W]``.
    """
    named = as_input_dict(inputs)
    multiple = model_total_stride(model) if multiple is None else multiple
    height, width = next(iter(named.values())).shape[-2:]
    padded = {name: pad_to_multiple(value, multiple, pad_value) for name, value in named.items()}
    padded_hw = tuple(next(iter(padded.values())).shape[-2:])
    return logits_of(model, padded, padded_hw)[..., :height, :width]


__all__ = [
    "SceneInputs",
    "as_input_dict",
    "forward_padded",
    "logits_of",
    "model_total_stride",
    "pad_to_multiple",
    "padded_size",
]
