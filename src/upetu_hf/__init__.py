"""upetu-hf: UPetu parameter-efficient fine-tuning for remote-sensing ConvNeXt models, as a PEFT method.

Importing this package registers the method with peft, so `get_peft_model`, `PeftConfig.from_pretrained` and
`PeftModel.from_pretrained` understand `UPetuConfig` and saved UPetu adapters.
"""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from .tuner import PEFT_TYPE, UPetuConfig, UPetuLayer, UPetuModel

__version__ = "0.1.0"


def _register() -> None:
    PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = UPetuConfig
    PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = UPetuModel
    PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = UPetuModel.prefix


_register()

__all__ = ["UPetuConfig", "UPetuLayer", "UPetuModel", "__version__"]
