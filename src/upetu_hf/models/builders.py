"""Build task models whose ConvNeXt backbone carries the weights of a pretrained ConvNeXt checkpoint.

Supported checkpoints: Hub ids or local folders of `model_type` `"convnext"` or `"convnextv2"`, saved as
`*ForImageClassification` (`convnext.` / `convnextv2.` prefix), `*Model` (no prefix) or `*Backbone` (no prefix,
plus `hidden_states_norms`). The weights are read from the checkpoint files directly (safetensors or PyTorch,
sharded or not) and copied key by key; every backbone `embeddings.*` / `encoder.*` tensor must be found with the
right shape, otherwise a `ValueError` names the missing / mismatched keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn
from transformers import (
    AutoConfig,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextV2Config,
    ConvNextV2ForImageClassification,
    PreTrainedConfig,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.utils import cached_file, logging

from .change_detection import ConvNextChangeDetectionConfig, ConvNextForChangeDetection

logger = logging.get_logger(__name__)

SUPPORTED_MODEL_TYPES = ("convnext", "convnextv2")
_CONFIG_CLASSES = {"convnext": ConvNextConfig, "convnextv2": ConvNextV2Config}
_CLASSIFICATION_CLASSES = {
    "convnext": ConvNextForImageClassification,
    "convnextv2": ConvNextV2ForImageClassification,
}
# Prefixes under which ConvNeXt weights may live in a checkpoint (classification / wrappers / backbone-only).
_SOURCE_PREFIXES = ("convnext.", "convnextv2.", "backbone.", "model.", "")
# Backbone sub-trees that MUST come from the checkpoint.
_REQUIRED_PREFIXES = ("embeddings.", "encoder.")
# Checkpoint files, by priority.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Config fields of a checkpoint config that are meaningless for a backbone sub-config.
_DROP_FROM_BACKBONE_CONFIG = (
    "id2label",
    "label2id",
    "num_labels",
    "architectures",
    "problem_type",
    "out_features",
    "out_indices",
    "stage_names",
    "_name_or_path",
    "transformers_version",
    "model_type",
    "dtype",
    "torch_dtype",
)

_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")


@dataclass
class BackboneLoadReport:
    """What [`load_convnext_backbone_weights`] did.

    Attributes:
        loaded: target keys (relative to the receiving module) copied from the checkpoint.
        initialised: target keys that kept their fresh initialisation (e.g. `hidden_states_norms.*`).
        ignored: checkpoint keys that were not used (classifier, pooler layer norm, ...).
        source_prefix: prefix that was stripped from the checkpoint keys (e.g. `"convnext."`).
    """

    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    source_prefix: str = ""


def _hub_kwargs(kwargs: dict) -> dict:
    return {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}


def load_convnext_config(checkpoint: str | os.PathLike, **hub_kwargs) -> PreTrainedConfig:
    """Load the config of `checkpoint` and check that it is a ConvNeXt (V1 or V2).

    Raises:
        ValueError: if the checkpoint's `model_type` is not `"convnext"` or `"convnextv2"`.
    """
    config = AutoConfig.from_pretrained(checkpoint, **hub_kwargs)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Checkpoint {str(checkpoint)!r} has model_type={config.model_type!r}, which is not a ConvNeXt; supported "
            f"model types: {', '.join(SUPPORTED_MODEL_TYPES)} (ConvNextForImageClassification/Model/Backbone or the "
            "V2 equivalents)."
        )
    return config


def make_backbone_config(
    source_config: PreTrainedConfig, backbone_overrides: Mapping | None = None
) -> PreTrainedConfig:
    """Clean copy of a ConvNeXt config for use as a backbone: labels dropped, `out_features` = all stages.

    Args:
        source_config: `ConvNextConfig` / `ConvNextV2Config` (e.g. of a classification checkpoint).
        backbone_overrides: config fields to change, e.g. `{"drop_path_rate": 0.1}`.
    """
    if source_config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type={source_config.model_type!r} is not a ConvNeXt; supported: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    values = source_config.to_dict()
    for key in _DROP_FROM_BACKBONE_CONFIG:
        values.pop(key, None)
    values.update(dict(backbone_overrides or {}))
    config_class = _CONFIG_CLASSES[source_config.model_type]
    num_stages = len(values.get("depths") or source_config.depths)
    values["out_features"] = [f"stage{i}" for i in range(1, num_stages + 1)]
    return config_class(**values)


def load_checkpoint_state_dict(checkpoint: str | os.PathLike, **hub_kwargs) -> dict[str, torch.Tensor]:
    """Read all tensors of a checkpoint (local folder or Hub id), safetensors or PyTorch, sharded or not."""
    subfolder = hub_kwargs.get("subfolder", "") or ""
    resolved = None
    for filename in _WEIGHT_FILES:
        if os.path.isdir(checkpoint):
            candidate = os.path.join(checkpoint, subfolder, filename)
            path = candidate if os.path.isfile(candidate) else None
        else:
            path = cached_file(
                checkpoint,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **hub_kwargs,
            )
        if path is not None:
            resolved = (filename, path)
            break
    if resolved is None:
        raise FileNotFoundError(
            f"No weights found for checkpoint {str(checkpoint)!r}: looked for {', '.join(_WEIGHT_FILES)}."
        )
    filename, path = resolved

    def read(file_path: str) -> dict[str, torch.Tensor]:
        if file_path.endswith(".safetensors"):
            return load_safetensors(file_path)
        return torch.load(file_path, map_location="cpu", weights_only=True)

    if not filename.endswith(".index.json"):
        return read(path)
    with open(path, encoding="utf-8") as handle:
        shard_names = sorted(set(json.load(handle)["weight_map"].values()))
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shard_names:
        if os.path.isdir(checkpoint):
            shard_path = os.path.join(os.path.dirname(path), shard)
        else:
            shard_path = cached_file(checkpoint, shard, **hub_kwargs)
        state_dict.update(read(shard_path))
    return state_dict


def _detect_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    for prefix in _SOURCE_PREFIXES:
        if any(key.startswith(prefix + "embeddings.") for key in state_dict):
            return prefix
    sample = ", ".join(sorted(state_dict)[:5])
    raise ValueError(
        "Could not find ConvNeXt backbone weights in the checkpoint: no key of the form "
        f"'<prefix>embeddings.*' with prefix in {[p for p in _SOURCE_PREFIXES if p]} or none. First keys: {sample}."
    )


def load_convnext_backbone_weights(
    backbone: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    copy_hidden_states_norms: bool = True,
) -> BackboneLoadReport:
    """Copy ConvNeXt weights from a checkpoint state dict into `backbone` (strictly).

    `backbone` is a `ConvNextBackbone` / `ConvNextV2Backbone` (keys `embeddings.*`, `encoder.*`,
    `hidden_states_norms.*`) or a `ConvNextModel` / `ConvNextV2Model` (keys `embeddings.*`, `encoder.*`,
    `layernorm.*`). Checkpoint keys may carry a `convnext.` / `convnextv2.` / `backbone.` prefix.

    Every target `embeddings.*` / `encoder.*` tensor must exist in the checkpoint with the same shape and every
    checkpoint `embeddings.*` / `encoder.*` tensor must exist in the target; other target tensors
    (`hidden_states_norms.*`, `layernorm.*`) are copied when the checkpoint has them (and
    `copy_hidden_states_norms` for the former) and otherwise keep their initialisation.

    Raises:
        ValueError: naming missing, unexpected or shape-mismatched keys.
    """
    prefix = _detect_prefix(state_dict)
    source = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    report = BackboneLoadReport(source_prefix=prefix)
    report.ignored = sorted(key for key in state_dict if not key.startswith(prefix))

    target = backbone.state_dict()
    required = [key for key in target if key.startswith(_REQUIRED_PREFIXES)]
    missing = [key for key in required if key not in source]
    unexpected = sorted(key for key in source if key.startswith(_REQUIRED_PREFIXES) and key not in target)
    mismatched = [
        f"{key}: checkpoint {tuple(source[key].shape)} vs model {tuple(target[key].shape)}"
        for key in required
        if key in source and source[key].shape != target[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"in the checkpoint but not in the model ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {mismatched}")
    if problems:
        raise ValueError(
            f"Pretrained backbone weights do not match the {type(backbone).__name__} (checkpoint prefix "
            f"{prefix!r}); " + "; ".join(problems)
        )

    optional = [key for key in target if not key.startswith(_REQUIRED_PREFIXES)]
    with torch.no_grad():
        for key in required:
            target[key].copy_(source[key])
            report.loaded.append(key)
        for key in optional:
            usable = key in source and source[key].shape == target[key].shape
            if key.startswith("hidden_states_norms.") and not copy_hidden_states_norms:
                usable = False
            if usable:
                target[key].copy_(source[key])
                report.loaded.append(key)
            else:
                report.initialised.append(key)
    used = set(report.loaded)
    report.ignored += sorted(prefix + key for key in source if key not in used)
    logger.info(
        f"Loaded {len(report.loaded)} pretrained backbone tensors; kept initialisation for {report.initialised}; "
        f"ignored {len(report.ignored)} checkpoint tensors."
    )
    return report


def _labels_from(
    num_labels: int, id2label: Mapping | None, label2id: Mapping | None, class_names: Sequence[str] | None
) -> tuple[dict[int, str], dict[str, int]]:
    if class_names is not None:
        if id2label is not None:
            raise ValueError("Pass either class_names or id2label, not both.")
        id2label = dict(enumerate(class_names))
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    id2label = {int(k): str(v) for k, v in id2label.items()}
    if len(id2label) != num_labels or sorted(id2label) != list(range(num_labels)):
        raise ValueError(
            f"num_labels={num_labels} but the labels give {len(id2label)} classes with ids {sorted(id2label)}; they "
            f"must be exactly 0..{num_labels - 1}."
        )
    if len(set(id2label.values())) != num_labels:
        raise ValueError(f"Class names must be unique, got {list(id2label.values())}.")
    if label2id is None:
        label2id = {name: idx for idx, name in id2label.items()}
    label2id = {str(k): int(v) for k, v in label2id.items()}
    if {v: k for k, v in label2id.items()} != id2label:
        raise ValueError(f"label2id {label2id} is not the inverse of id2label {id2label}.")
    return id2label, label2id


def build_classification_model(
    checkpoint: str | os.PathLike,
    num_labels: int,
    id2label: Mapping[int, str] | None = None,
    label2id: Mapping[str, int] | None = None,
    backbone_overrides: Mapping | None = None,
    **kwargs,
) -> ConvNextForImageClassification | ConvNextV2ForImageClassification:
    """ConvNeXt(V2)ForImageClassification with the checkpoint's encoder weights and a fresh `classifier`.

    Args:
        checkpoint: Hub id or local folder of a ConvNeXt / ConvNeXt V2 checkpoint (classification, model or
            backbone).
        num_labels: number of classes of the new head.
        id2label / label2id: label maps (default `LABEL_i`); `label2id` is derived from `id2label` if omitted.
        backbone_overrides: ConvNeXt config fields to change, e.g. `{"drop_path_rate": 0.1}`.
        **kwargs: Hub arguments (`revision`, `cache_dir`, `token`, `local_files_only`, `force_download`,
            `subfolder`); any other key is set on the model config.

    The pooled-output layer norm (`convnext.layernorm`) is copied when the checkpoint has it (classification or
    model checkpoints), otherwise it stays initialised. The classifier is always freshly initialised (the
    equivalent of `ignore_mismatched_sizes=True`).
    """
    hub_kwargs = _hub_kwargs(kwargs)
    source_config = load_convnext_config(checkpoint, **hub_kwargs)
    id2label, label2id = _labels_from(num_labels, id2label, label2id, None)
    values = make_backbone_config(source_config, backbone_overrides).to_dict()
    for key in ("model_type", "transformers_version", "out_features", "out_indices", "stage_names"):
        values.pop(key, None)
    values.update(kwargs, id2label=id2label, label2id=label2id)
    config = _CONFIG_CLASSES[source_config.model_type](**values)
    model = _CLASSIFICATION_CLASSES[source_config.model_type](config)
    state_dict = load_checkpoint_state_dict(checkpoint, **hub_kwargs)
    model.load_report = load_convnext_backbone_weights(model.base_model, state_dict)
    return model


def build_segmentation_model(
    checkpoint: str | os.PathLike,
    num_labels: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    backbone_overrides: Mapping | None = None,
    **kwargs,
) -> UperNetForSemanticSegmentation:
    """UperNetForSemanticSegmentation on a ConvNeXt(V2) backbone carrying the checkpoint's weights.

    Args:
        checkpoint: Hub id or local folder of a ConvNeXt / ConvNeXt V2 checkpoint.
        num_labels: number of segmentation classes.
        class_names: optional names (length `num_labels`) for `id2label` / `label2id`.
        ignore_index: label ignored by the loss (`config.loss_ignore_index`).
        backbone_overrides: ConvNeXt config fields to change, e.g. `{"drop_path_rate": 0.1}`.
        **kwargs: Hub arguments (see [`build_classification_model`]); any other key goes to `UperNetConfig`
            (e.g. `hidden_size=256`, `use_auxiliary_head=False`, `auxiliary_loss_weight=0.4`).

    The backbone (`model.backbone`, a `ConvNextBackbone` / `ConvNextV2Backbone` with out_features stage1..4)
    gets the checkpoint's `embeddings.*` / `encoder.*` tensors; `hidden_states_norms` stay initialised unless the
    checkpoint is a backbone checkpoint that has them. `decode_head` / `auxiliary_head` are fresh.
    """
    hub_kwargs = _hub_kwargs(kwargs)
    source_config = load_convnext_config(checkpoint, **hub_kwargs)
    id2label, label2id = _labels_from(num_labels, None, None, class_names)
    backbone_config = make_backbone_config(source_config, backbone_overrides)
    config = UperNetConfig(
        backbone_config=backbone_config,
        id2label=id2label,
        label2id=label2id,
        loss_ignore_index=ignore_index,
        **kwargs,
    )
    model = UperNetForSemanticSegmentation(config)
    state_dict = load_checkpoint_state_dict(checkpoint, **hub_kwargs)
    model.load_report = load_convnext_backbone_weights(model.backbone, state_dict)
    return model


def build_change_detection_model(
    checkpoint: str | os.PathLike,
    num_labels: int = 2,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    backbone_overrides: Mapping | None = None,
    **kwargs,
) -> ConvNextForChangeDetection:
    """ConvNextForChangeDetection whose shared Siamese backbone carries the checkpoint's weights.

    Args:
        checkpoint: Hub id or local folder of a ConvNeXt / ConvNeXt V2 checkpoint.
        num_labels: number of change classes (2: `{0: "no-change", 1: "change"}` unless `class_names`).
        class_names: optional names (length `num_labels`).
        ignore_index: label ignored by the loss (`config.ignore_index`).
        backbone_overrides: ConvNeXt config fields to change, e.g. `{"drop_path_rate": 0.1}`.
        **kwargs: Hub arguments (see [`build_classification_model`]); any other key goes to
            [`ConvNextChangeDetectionConfig`] (e.g. `decoder_hidden_size=64`, `fusion="concat_diff"`,
            `dice_weight=0.5`).
    """
    hub_kwargs = _hub_kwargs(kwargs)
    source_config = load_convnext_config(checkpoint, **hub_kwargs)
    if class_names is not None:
        id2label, label2id = _labels_from(num_labels, None, None, class_names)
        kwargs.update(id2label=id2label, label2id=label2id)
    elif num_labels != 2:
        kwargs["num_labels"] = num_labels
    backbone_config = make_backbone_config(source_config, backbone_overrides)
    config = ConvNextChangeDetectionConfig(
        backbone_config=backbone_config, ignore_index=ignore_index, **kwargs
    )
    if config.num_labels != num_labels:
        raise ValueError(
            f"num_labels={num_labels} disagrees with the labels in kwargs ({config.num_labels})."
        )
    model = ConvNextForChangeDetection(config)
    state_dict = load_checkpoint_state_dict(checkpoint, **hub_kwargs)
    model.load_report = load_convnext_backbone_weights(model.backbone, state_dict)
    return model


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "BackboneLoadReport",
    "build_change_detection_model",
    "build_classification_model",
    "build_segmentation_model",
    "load_checkpoint_state_dict",
    "load_convnext_backbone_weights",
    "load_convnext_config",
    "make_backbone_config",
]
