"""Inflate the pretrained RGB stem of a ConvNeXt model to N input bands (Sentinel-2, RGB+NIR, ...).

A ConvNeXt stem (`embeddings`) is a patchify convolution ``W`` of shape `(D, 3, p, p)` (`patch_embeddings`, with
a bias) followed by a channels-first LayerNorm (`layernorm`). The inflated kernel ``W'`` has shape `(D, N, p, p)`:

    W'[:, rgb_indices[k]] = W[:, k]                          k = 0, 1, 2 (the pretrained R, G, B inputs)
    W'[:, j]              = new_band_scale * mean_k W[:, k]   for every other band j

with the bias and the LayerNorm unchanged. With ``new_band_scale = 0`` (the default) the stem output for an
N-band input ``x`` is exactly the pretrained output for ``x[:, rgb_indices]``, so every pretrained feature
survives at the start; gradients still reach the new bands' kernels, so training can learn to use them. A small
positive scale instead spreads the mean RGB filter over the new bands (their features then change by that much).

Normalise the bands with their own statistics (`upetu_hf.data.band_statistics`) so that each band, RGB included,
has about zero mean and unit variance, as the ImageNet-normalised RGB the kernel was trained on.

PEFT: inflate the base model *before* `get_peft_model` / `PeftModel.from_pretrained`, and train and save the stem
with the adapter via ``modules_to_save=[*STEM_MODULES_TO_SAVE, <heads>]``, i.e. ``"embeddings.patch_embeddings"``
and ``"embeddings.layernorm"``. These two names match the stem of every task model (`convnext.embeddings.*` in
classification, `backbone.embeddings.*` in UperNet and `ConvNextForChangeDetection`, `embeddings.*` in a bare
`ConvNextModel` / `ConvNextBackbone`) and nothing else; together they save ``D * (N * p * p + 3)`` values (8,440
for a 13-band ConvNeXt-atto stem: D = 40, p = 4). Do NOT pass ``"embeddings"``: peft 0.21 matches
`modules_to_save` names by plain suffix, so ``"embeddings"`` also matches ``embeddings.patch_embeddings`` and wraps
both; the conv copy it trains is then never called and the conv silently stays frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import ConvNextConfig, ConvNextV2Config
from transformers.models.convnext.modeling_convnext import ConvNextEmbeddings
from transformers.models.convnextv2.modeling_convnextv2 import ConvNextV2Embeddings

#: `modules_to_save` entries that train and save the (inflated) stem with a PEFT adapter; see the module docstring
STEM_MODULES_TO_SAVE: tuple[str, str] = ("embeddings.patch_embeddings", "embeddings.layernorm")

_STEMS = (ConvNextEmbeddings, ConvNextV2Embeddings)
_CONFIGS = (ConvNextConfig, ConvNextV2Config)


def find_stems(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of every ConvNeXt(V2) embeddings stem in `model` (one per backbone; the Siamese change
    detection model shares a single one)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _STEMS)]


def inflate_kernel(
    weight: torch.Tensor, num_channels: int, rgb_indices: Sequence[int], new_band_scale: float = 0.0
):
    """The inflated kernel `(D, num_channels, p, p)` of a pretrained `(D, C_in, p, p)` kernel (rule in the module
    docstring; `rgb_indices[k]` is the new position of pretrained input channel `k`)."""
    in_channels = weight.shape[1]
    indices = [int(i) for i in rgb_indices]
    if len(indices) != in_channels:
        raise ValueError(
            f"rgb_indices {indices} must give one new band position per pretrained input channel ({in_channels})."
        )
    if len(set(indices)) != len(indices) or not all(0 <= i < num_channels for i in indices):
        raise ValueError(f"rgb_indices {indices} must be distinct band indices in [0, {num_channels}).")
    inflated = weight.new_empty(weight.shape[0], num_channels, *weight.shape[2:])
    inflated[:] = new_band_scale * weight.mean(dim=1, keepdim=True)
    inflated[:, indices] = weight
    return inflated


@torch.no_grad()
def inflate_stem(
    model: nn.Module, num_channels: int, rgb_indices: Sequence[int], new_band_scale: float = 0.0
) -> nn.Module:
    """Give every ConvNeXt stem of `model` `num_channels` input bands (in place) and update `num_channels` in the
    ConvNeXt configs (the model's, and `config.backbone_config` of UperNet / change detection).

    Args:
        model: a ConvNeXt(V2) classification model, `ConvNextModel` / `ConvNextBackbone`, UperNet or
            `ConvNextForChangeDetection`, not yet wrapped by PEFT.
        num_channels: the new band count `N`.
        rgb_indices: the band indices that receive the pretrained R, G and B kernels, e.g.
            ``band_indices(["B04", "B03", "B02"], S2_L1C_BANDS) == [3, 2, 1]`` for Sentinel-2.
        new_band_scale: kernels of the other bands are this times the mean RGB kernel (0: zero kernels).

    Returns:
        `model`.
    """
    if hasattr(model, "peft_config"):
        raise ValueError(
            "inflate_stem needs the base model: inflate it before get_peft_model / PeftModel.from_pretrained."
        )
    stems = find_stems(model)
    if not stems:
        raise ValueError(f"{type(model).__name__} has no ConvNeXt / ConvNeXt V2 embeddings stem to inflate.")
    for _, stem in stems:
        conv = stem.patch_embeddings
        new_conv = nn.Conv2d(
            num_channels,
            conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new_conv.weight.copy_(inflate_kernel(conv.weight, num_channels, rgb_indices, new_band_scale))
        new_conv.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias)
            new_conv.bias.requires_grad_(conv.bias.requires_grad)
        stem.patch_embeddings = new_conv
        stem.num_channels = num_channels  # ConvNextEmbeddings.forward checks the input against this attribute
    configs = [getattr(module, "config", None) for module in model.modules()]
    configs.append(getattr(getattr(model, "config", None), "backbone_config", None))
    for config in configs:
        if isinstance(config, _CONFIGS):
            config.num_channels = num_channels
    return model


__all__ = ["STEM_MODULES_TO_SAVE", "find_stems", "inflate_kernel", "inflate_stem"]
