"""Infer a ConvNeXt architecture (V1/V2, depths, widths, input channels, stem) from HF-named tensors.

With HF names (see `layouts`), for stage i:
  depth_i = 1 + max j over ``encoder.stages.i.layers.j.*`` (every j < depth_i must be present);
  width_i = ``encoder.stages.i.layers.0.dwconv.weight.shape[0]`` (depthwise 7x7 kernel (C_i, 1, 7, 7));
and from the stem ``embeddings.patch_embeddings.weight`` of shape (C_0, num_channels, p, p): the input channels
and the patch size p. V2 is recognised by GRN tensors (``*.grn.*``), V1 layer scale by ``layer_scale_parameter``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import ConvNextConfig, ConvNextV2Config, PreTrainedConfig

from .errors import ConversionError

_BLOCK_KEY = re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.")


@dataclass
class Architecture:
    """What a ConvNeXt checkpoint's tensors say about its model."""

    version: int  # 1 (ConvNeXt) or 2 (ConvNeXt V2, with GRN)
    depths: list[int]
    hidden_sizes: list[int]
    num_channels: int
    patch_size: int
    layer_scale: bool  # V1 blocks carry `gamma` (layer scale)
    head_labels: int | None  # rows of the classification head, None without one
    has_final_norm: bool  # the pooled-output LayerNorm is in the checkpoint


def infer_architecture(
    tensors: Mapping[str, torch.Tensor],
    depths: Sequence[int] | None = None,
    hidden_sizes: Sequence[int] | None = None,
) -> Architecture:
    """The architecture of HF-named `tensors`; `depths` / `hidden_sizes` replace the inferred ones.

    Raises:
        ConversionError: no stem convolution, a stage without blocks or with gaps in its block indices, or
            overrides of the wrong length.
    """
    stem = tensors.get("embeddings.patch_embeddings.weight")
    if stem is None or stem.ndim != 4 or stem.shape[2] != stem.shape[3]:
        raise ConversionError("the checkpoint has no square stem convolution (C, in_channels, p, p)")
    blocks: dict[int, set[int]] = {}
    for key in tensors:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    stages = sorted(blocks)
    if not stages or stages != list(range(len(stages))):
        raise ConversionError(f"the checkpoint's stages must be numbered 0..n-1 with blocks; found {stages}")
    inferred_depths = []
    for stage in stages:
        depth = max(blocks[stage]) + 1
        if blocks[stage] != set(range(depth)):
            missing = sorted(set(range(depth)) - blocks[stage])
            raise ConversionError(f"stage {stage} lacks blocks {missing} (it has blocks up to {depth - 1})")
        inferred_depths.append(depth)
    inferred_sizes = []
    for stage in stages:
        dwconv = tensors.get(f"encoder.stages.{stage}.layers.0.dwconv.weight")
        if dwconv is None:
            raise ConversionError(f"stage {stage}, block 0 has no depthwise convolution (dwconv / conv_dw)")
        inferred_sizes.append(int(dwconv.shape[0]))
    depths = [int(d) for d in depths] if depths else inferred_depths
    hidden_sizes = [int(h) for h in hidden_sizes] if hidden_sizes else inferred_sizes
    if len(depths) != len(hidden_sizes):
        raise ConversionError(
            f"depths {depths} and hidden sizes {hidden_sizes} must have one entry per stage (the checkpoint has "
            f"{len(stages)} stages)"
        )
    head = tensors.get("classifier.weight")
    return Architecture(
        version=2 if any(".grn." in k for k in tensors) else 1,
        depths=depths,
        hidden_sizes=hidden_sizes,
        num_channels=int(stem.shape[1]),
        patch_size=int(stem.shape[2]),
        layer_scale=any(k.endswith("layer_scale_parameter") for k in tensors),
        head_labels=int(head.shape[0]) if head is not None else None,
        has_final_norm="layernorm.weight" in tensors,
    )


def make_config(
    arch: Architecture,
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    image_size: int = 224,
) -> PreTrainedConfig:
    """`ConvNextConfig` / `ConvNextV2Config` for `arch`: LayerNorm eps 1e-6 everywhere (as in the original and timm
    models; HF's default for the pooled norm is 1e-12), no drop path, labels from `label_names` or
    ``LABEL_i``."""
    values = dict(
        num_channels=arch.num_channels,
        patch_size=arch.patch_size,
        num_stages=len(arch.depths),
        hidden_sizes=list(arch.hidden_sizes),
        depths=list(arch.depths),
        layer_norm_eps=1e-6,
        drop_path_rate=0.0,
        image_size=image_size,
    )
    if num_labels is not None:
        names = list(label_names) if label_names else [f"LABEL_{i}" for i in range(num_labels)]
        values.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if arch.version == 2:
        return ConvNextV2Config(**values)
    return ConvNextConfig(layer_scale_init_value=1e-6 if arch.layer_scale else 0.0, **values)
