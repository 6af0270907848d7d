"""Convert ConvNeXt checkpoints (original release, timm, V1/V2, SMLFR/SparK, wrapped or prefixed) into Hugging
Face ConvNeXt folders: [`convert_checkpoint`] and the ``upetu-convert`` command ([`main`])."""

from .api import IMAGENET_MEAN, IMAGENET_STD, ConversionReport, convert_checkpoint
from .errors import ConversionError
from .layouts import LAYOUTS, ORIGINAL, TIMM

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUTS",
    "ORIGINAL",
    "TIMM",
    "ConversionError",
    "ConversionReport",
    "convert_checkpoint",
]
