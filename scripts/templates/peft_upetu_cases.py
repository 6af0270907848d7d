"""The UPetu cases `scripts/peft_custom_suite.py` writes into its copy of peft's custom-model suite (as
`upetu_cases.py`)."""

import torch
from torch import nn
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextV2Config,
    ConvNextV2ForImageClassification,
)

from upetu_hf import UPetuConfig  # importing upetu_hf registers the UPETU peft type


class ConvNeXtMock(nn.Module):
    """A tiny ConvNeXt classifier behind the suite's interface: model(X=images) -> logits."""

    def __init__(self, v2: bool) -> None:
        super().__init__()
        kw = dict(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_labels=5)
        config, cls = (
            (ConvNextV2Config, ConvNextV2ForImageClassification)
            if v2
            else (ConvNextConfig, ConvNextForImageClassification)
        )
        self.convnext = cls(config(**kw))
        self.dtype = torch.float  # the suite sets this for its half-precision tests

    def forward(self, X):
        return self.convnext(pixel_values=X.to(self.dtype)).logits


def build(model_id):
    return ConvNeXtMock(v2=model_id == "ConvNeXtV2")


def inputs(device):
    return {"X": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)}


UPETU_TEST_CASES = [
    ("ConvNeXt UPetu default", "ConvNeXt", UPetuConfig, {"r": 4}),
    ("ConvNeXt UPetu 1bit", "ConvNeXt", UPetuConfig, {"r": 4, "bits": 1}),
    ("ConvNeXt UPetu 32bit", "ConvNeXt", UPetuConfig, {"r": 4, "bits": 32}),
    ("ConvNeXtV2 UPetu default", "ConvNeXtV2", UPetuConfig, {"r": 4}),
    ("ConvNeXt UPetu modules_to_save", "ConvNeXt", UPetuConfig, {"r": 4, "modules_to_save": ["classifier"]}),
]
