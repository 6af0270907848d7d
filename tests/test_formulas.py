"""EQAM, CAPM and the adapted ConvNeXt block against their formulas, with non-identity adapters
(`init_weights=False`: EQAM's `s` and CAPM's `beta` start random, not at 0), so that a wrong sign, a missing term or
a swapped operand changes the output. The expected values are written from the formulas in `tuner/layer.py`'s
docstrings, with the unadapted Hugging Face block as the reference for the base branch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from peft import get_peft_model
from transformers import ConvNextForImageClassification, ConvNextV2ForImageClassification
from transformers.activations import ACT2FN

from upetu_hf import UPetuConfig, UPetuLayer


def adapted_layers(version: int, **config) -> list[UPetuLayer]:
    cls = ConvNextForImageClassification if version == 1 else ConvNextV2ForImageClassification
    model = get_peft_model(cls(tiny_config(version)), UPetuConfig(init_weights=False, **config)).eval()
    return [m for m in model.modules() if isinstance(m, UPetuLayer)]


def eqam_formula(eqam, u: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """`delta = (s[:, None] * W_up) @ act(W_down @ u)` per pixel of the channels-last `u` (N, H, W, C)."""
    down, up = eqam.down(), eqam.up()  # (r, C), (C, r): the Q-Linear weights as the forward uses them
    s = eqam.scale() * eqam.up.row_scale_unit  # (C,)
    hidden = torch.einsum("rc,nhwc->nhwr", down, u)
    return torch.einsum("cr,nhwr->nhwc", s[:, None] * up, ACT2FN[activation](hidden))


def depthwise_3x3(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """A 3x3 depthwise convolution with zero padding 1, as a sum of nine shifted copies: (N, C, H, W)."""
    padded = F.pad(x, (1, 1, 1, 1))
    height, width = x.shape[-2:]
    out = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            out += kernel[:, 0, i, j].view(1, -1, 1, 1) * padded[:, :, i : i + height, j : j + width]
    return out


def capm_formula(capm, features: torch.Tensor) -> torch.Tensor:
    """`F' = F + beta * (P * sigmoid(DWConv3x3(F)))`, for features of the prompt's own size (resize = identity)."""
    prompt, beta = capm.prompt(), capm.beta()  # (C, m, m), (C,)
    gate = torch.sigmoid(depthwise_3x3(features, capm.context()))
    return features + beta.view(1, -1, 1, 1) * prompt.unsqueeze(0) * gate


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_eqam_is_its_formula(bits, activation):
    layer = adapted_layers(1, bits=bits, r=3, activation=activation)[0]
    eqam = layer.upetu_eqam["default"]
    assert eqam.scale().abs().min() > 0  # a non-identity adapter
    u = torch.randn(2, 5, 6, layer.in_features)
    torch.testing.assert_close(eqam(u), eqam_formula(eqam, u, activation), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("version", [1, 2])
def test_the_adapted_block_adds_the_eqam_delta_to_the_residual_branch(version):
    """`out = x + drop_path(base branch + delta)`, `delta = EQAM(LN(dwconv(x)))`: the block minus the unadapted
    block is exactly the delta (eval mode: drop path is the identity)."""
    for layer in adapted_layers(version, bits=2, r=2, use_capm=False):
        base = layer.base_layer
        x = torch.randn(2, layer.in_features, 6, 6)
        with torch.no_grad():
            normed = base.layernorm(base.dwconv(x).permute(0, 2, 3, 1))
            delta = eqam_formula(layer.upetu_eqam["default"], normed).permute(0, 3, 1, 2)
            assert delta.abs().max() > 1e-3
            torch.testing.assert_close(layer(x), base(x) + delta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_capm_prompts_the_output_of_the_last_block_of_each_stage(version):
    layers = adapted_layers(version, bits=2, r=2, prompt_size=6)
    prompted = [layer for layer in layers if "default" in layer.upetu_capm]
    assert len(prompted) == 4  # one per stage
    for layer in prompted:
        x = torch.randn(2, layer.in_features, 6, 6)
        with torch.no_grad():
            eqam_off = layer.upetu_eqam.pop("default")  # CAPM alone: on the unadapted block's output
            expected = capm_formula(layer.upetu_capm["default"], layer.base_layer(x))
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
            layer.upetu_eqam["default"] = eqam_off
            normed = layer.base_layer.layernorm(layer.base_layer.dwconv(x).permute(0, 2, 3, 1))
            adapted = layer.base_layer(x) + eqam_formula(eqam_off, normed).permute(0, 3, 1, 2)
            torch.testing.assert_close(
                layer(x), capm_formula(layer.upetu_capm["default"], adapted), rtol=1e-5, atol=1e-5
            )
