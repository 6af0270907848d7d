"""ConvNeXt key layouts and their mapping onto Hugging Face ConvNeXt names (relative to `ConvNextModel`).

After the wrapper and the encoder prefix are removed, a checkpoint is in one of two layouts (i = stage,
j = block; C = stage width; "V1"/"V2" = ConvNeXt / ConvNeXt V2):

| original release (also SMLFR, SparK)      | timm                                  | Hugging Face                                    |
|-------------------------------------------|---------------------------------------|-------------------------------------------------|
| `downsample_layers.0.0` conv 4x4/4        | `stem.0`                              | `embeddings.patch_embeddings`                   |
| `downsample_layers.0.1` LayerNorm         | `stem.1`                              | `embeddings.layernorm`                          |
| `downsample_layers.i.{0,1}` LN, conv 2x2/2 | `stages.i.downsample.{0,1}`          | `encoder.stages.i.downsampling_layer.{0,1}`     |
| `stages.i.j.dwconv` (7x7 depthwise)       | `stages.i.blocks.j.conv_dw`           | `encoder.stages.i.layers.j.dwconv`              |
| `stages.i.j.norm`                         | `stages.i.blocks.j.norm`              | `encoder.stages.i.layers.j.layernorm`           |
| `stages.i.j.pwconv{1,2}` (Linear)         | `stages.i.blocks.j.mlp.fc{1,2}` (*)   | `encoder.stages.i.layers.j.pwconv{1,2}`         |
| `stages.i.j.gamma` (C,), V1               | `stages.i.blocks.j.gamma`             | `encoder.stages.i.layers.j.layer_scale_parameter` |
| `stages.i.j.grn.{gamma,beta}` (1,1,1,4C), V2 | `stages.i.blocks.j.mlp.grn.{weight,bias}` (4C,) | `encoder.stages.i.layers.j.grn.{weight,bias}` (1,1,1,4C) |
| `norm` (pooled LayerNorm)                 | `head.norm`                           | `layernorm`                                     |
| `head` (Linear)                           | `head.fc`                             | `classifier` (of `*ForImageClassification`)     |

(*) timm's `conv_mlp` variants (e.g. `convnext_atto`) store `fc1`/`fc2` as 1x1 convolutions, (out, in, 1, 1);
they are reshaped to Linear weights (out, in). The per-stage output norms `norm0`..`norm3` that the mmseg/mmdet
ConvNeXt backbones (SMLFR's downstream models) add have no place in a ConvNeXt model and are dropped (reported).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import ConversionError, preview

_W = r"(weight|bias)"
_BLOCK = "encoder.stages.{0}.layers.{1}."


@dataclass(frozen=True)
class Rule:
    """Source key regex -> HF key template (`str.format` with the groups); `reshape`: "linear" or "grn"."""

    pattern: re.Pattern
    target: str
    reshape: str | None = None


@dataclass(frozen=True)
class Layout:
    """A checkpoint key layout: its name, the key that identifies it (the stem conv), its rules and the keys
    it may carry that are dropped on purpose."""

    name: str
    anchor: str
    rules: tuple[Rule, ...]
    droppable: tuple[re.Pattern, ...] = ()


def _rules(*items: tuple) -> tuple[Rule, ...]:
    return tuple(Rule(re.compile(pattern), target, *rest) for pattern, target, *rest in items)


ORIGINAL = Layout(
    name="original",
    anchor="downsample_layers.0.0.weight",
    rules=_rules(
        (rf"downsample_layers\.0\.0\.{_W}", "embeddings.patch_embeddings.{0}"),
        (rf"downsample_layers\.0\.1\.{_W}", "embeddings.layernorm.{0}"),
        (rf"downsample_layers\.(\d+)\.([01])\.{_W}", "encoder.stages.{0}.downsampling_layer.{1}.{2}"),
        (rf"stages\.(\d+)\.(\d+)\.dwconv\.{_W}", _BLOCK + "dwconv.{2}"),
        (rf"stages\.(\d+)\.(\d+)\.norm\.{_W}", _BLOCK + "layernorm.{2}"),
        (rf"stages\.(\d+)\.(\d+)\.pwconv([12])\.{_W}", _BLOCK + "pwconv{2}.{3}", "linear"),
        (r"stages\.(\d+)\.(\d+)\.gamma", _BLOCK + "layer_scale_parameter"),
        (r"stages\.(\d+)\.(\d+)\.grn\.gamma", _BLOCK + "grn.weight", "grn"),
        (r"stages\.(\d+)\.(\d+)\.grn\.beta", _BLOCK + "grn.bias", "grn"),
        (rf"norm\.{_W}", "layernorm.{0}"),
        (rf"head\.{_W}", "classifier.{0}"),
    ),
    droppable=(re.compile(rf"norm[0-3]\.{_W}"),),
)

TIMM = Layout(
    name="timm",
    anchor="stem.0.weight",
    rules=_rules(
        (rf"stem\.0\.{_W}", "embeddings.patch_embeddings.{0}"),
        (rf"stem\.1\.{_W}", "embeddings.layernorm.{0}"),
        (rf"stages\.(\d+)\.downsample\.([01])\.{_W}", "encoder.stages.{0}.downsampling_layer.{1}.{2}"),
        (rf"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.{_W}", _BLOCK + "dwconv.{2}"),
        (rf"stages\.(\d+)\.blocks\.(\d+)\.norm\.{_W}", _BLOCK + "layernorm.{2}"),
        (rf"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.{_W}", _BLOCK + "pwconv{2}.{3}", "linear"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.gamma", _BLOCK + "layer_scale_parameter"),
        (rf"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.{_W}", _BLOCK + "grn.{2}", "grn"),
        (rf"head\.norm\.{_W}", "layernorm.{0}"),
        (rf"head\.fc\.{_W}", "classifier.{0}"),
    ),
)

LAYOUTS = (ORIGINAL, TIMM)
# A key ending in this is a Hugging Face ConvNeXt state dict, which needs no conversion.
_HF_ANCHOR = "embeddings.patch_embeddings.weight"


def detect(state_dict: Mapping[str, torch.Tensor], prefix: str | None = None) -> tuple[Layout, str]:
    """The layout of `state_dict` and the encoder prefix in front of its keys (``""``, ``"module."``,
    ``"sparse_encoder.sp_cnn."``, ...), found from the key of the stem convolution.

    Args:
        prefix: the prefix to use instead of searching for it (``""`` for none).

    Raises:
        ConversionError: no ConvNeXt stem (a foreign checkpoint: its keys are named), a Hugging Face checkpoint,
            or stems under several prefixes (then `prefix` must choose).
    """
    found: list[tuple[Layout, str]] = []
    for key in state_dict:
        for layout in LAYOUTS:
            if key == layout.anchor or key.endswith("." + layout.anchor):
                candidate = key[: len(key) - len(layout.anchor)]
                if prefix is None or candidate == prefix:
                    found.append((layout, candidate))
    if len(found) == 1:
        return found[0]
    keys = list(state_dict)
    if not found:
        if prefix is None and any(k.endswith(_HF_ANCHOR) for k in keys):
            raise ConversionError(
                "this is already a Hugging Face ConvNeXt state dict; load its folder with from_pretrained instead"
            )
        where = f" under the prefix {prefix!r}" if prefix is not None else ""
        raise ConversionError(
            f"not a ConvNeXt checkpoint: no stem convolution{where} (a key ending in "
            f"{' or '.join(repr(layout.anchor) for layout in LAYOUTS)}); none of its {len(keys)} keys can be "
            f"mapped: {preview(keys)}"
        )
    raise ConversionError(
        "the checkpoint holds several ConvNeXt encoders, under the prefixes "
        f"{', '.join(repr(p) for _, p in found)}; choose one with --prefix"
    )


def _reshape(tensor: torch.Tensor, how: str | None) -> torch.Tensor:
    if how == "linear" and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    if how == "grn":
        return tensor.reshape(1, 1, 1, -1)
    return tensor


@dataclass
class MappedKeys:
    """Result of [`map_keys`]: HF-named tensors, and the source keys that were dropped or could not be mapped."""

    tensors: dict[str, torch.Tensor]
    dropped: list[str]
    unmatched: list[str]


def map_keys(state_dict: Mapping[str, torch.Tensor], layout: Layout) -> MappedKeys:
    """Rename every (prefix-free) key of `state_dict` to its HF name (relative to `ConvNextModel`; the head
    becomes ``classifier.*``), reshaping 1x1-conv MLP weights to Linear and GRN vectors to (1, 1, 1, 4C)."""
    tensors: dict[str, torch.Tensor] = {}
    dropped, unmatched = [], []
    for key, tensor in state_dict.items():
        for rule in layout.rules:
            match = rule.pattern.fullmatch(key)
            if match:
                tensors[rule.target.format(*match.groups())] = _reshape(tensor, rule.reshape)
                break
        else:
            (dropped if any(p.fullmatch(key) for p in layout.droppable) else unmatched).append(key)
    return MappedKeys(tensors, dropped, unmatched)
