"""upetu-hf: UPetu parameter-efficient fine-tuning for remote-sensing ConvNeXt models, as a PEFT method.

Importing this package registers the method with peft, so `get_peft_model`, `PeftConfig.from_pretrained` and
`PeftModel.from_pretrained` understand `UPetuConfig` and saved UPetu adapters.
"""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from .tuner import PEFT_TYPE, UPetuConfig, UPetuLayer, UPetuModel  # isort: skip
from .hub import adapter_card, push_to_hub, save_adapter
from .models import (
    ChangeDetectionOutput,
    ConvNextChangeDetectionConfig,
    ConvNextForChangeDetection,
    build_change_detection_model,
    build_classification_model,
    build_segmentation_model,
)

__version__ = "0.1.0"


def _register() -> None:
    PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = UPetuConfig
    PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = UPetuModel
    PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = UPetuModel.prefix


_register()

__all__ = [
    "ChangeDetectionOutput",
    "ConvNextChangeDetectionConfig",
    "ConvNextForChangeDetection",
    "UPetuConfig",
    "UPetuLayer",
    "UPetuModel",
    "__version__",
    "adapter_card",
    "build_change_detection_model",
    "build_classification_model",
    "build_segmentation_model",
    "push_to_hub",
    "save_adapter",
]
