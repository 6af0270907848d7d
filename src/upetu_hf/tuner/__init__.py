"""The UPetu PEFT method, shaped like peft's tuner packages: config, quantization, layers and model."""

from .config import PEFT_TYPE, UPetuConfig
from .layer import CAPM, EQAM, UPetuLayer
from .model import UPetuModel
from .quantization import QuantizedParameter, codebook_levels

__all__ = [
    "CAPM",
    "EQAM",
    "PEFT_TYPE",
    "QuantizedParameter",
    "UPetuConfig",
    "UPetuLayer",
    "UPetuModel",
    "codebook_levels",
]
