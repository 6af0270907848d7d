"""Task models for UPetu: Siamese ConvNeXt change detection, builders that load pretrained ConvNeXt weights, and
the converter of original/timm/SMLFR ConvNeXt checkpoints into Hugging Face folders (`convert`).

Importing this package registers `ConvNextChangeDetectionConfig` / `ConvNextForChangeDetection` with
`AutoConfig` / `AutoModel` (model type ``"convnext-change-detection"``). It deliberately imports nothing from
`upetu_hf.tuner`, `upetu_hf.train`, `upetu_hf.data` or `upetu_hf.metrics`.
"""

from .builders import (
    SUPPORTED_MODEL_TYPES,
    BackboneLoadReport,
    build_change_detection_model,
    build_classification_model,
    build_segmentation_model,
    load_checkpoint_state_dict,
    load_convnext_backbone_weights,
    load_convnext_config,
    make_backbone_config,
)
from .change_detection import (
    ChangeDetectionOutput,
    ConvNextChangeDetectionConfig,
    ConvNextChangeDetectionHead,
    ConvNextChangeDetectionPreTrainedModel,
    ConvNextForChangeDetection,
    backbone_total_stride,
    soft_dice_loss,
)
from .convert import ConversionError, ConversionReport, convert_checkpoint

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "BackboneLoadReport",
    "ChangeDetectionOutput",
    "ConvNextChangeDetectionConfig",
    "ConvNextChangeDetectionHead",
    "ConvNextChangeDetectionPreTrainedModel",
    "ConvNextForChangeDetection",
    "ConversionError",
    "ConversionReport",
    "backbone_total_stride",
    "build_change_detection_model",
    "build_classification_model",
    "build_segmentation_model",
    "convert_checkpoint",
    "load_checkpoint_state_dict",
    "load_convnext_backbone_weights",
    "load_convnext_config",
    "make_backbone_config",
    "soft_dice_loss",
]
