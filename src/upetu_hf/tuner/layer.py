"""UPetu tuner layers: EQAM (one adapter per ConvNeXt block) and CAPM (one prompt per stage).

Both live on `UPetuLayer`, the one `BaseTunerLayer` of the method, which wraps a ConvNeXt (V1 or V2) block.
EQAM adds a quantized bottleneck adapter to the block's residual branch; CAPM sits on the last block of a stage
and adds a context-gated prompt to the block's output, i.e. to the stage output, so that hidden states and
backbone feature maps (recorded on the stage modules) include it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.activations import ACT2FN

from .config import UPetuConfig
from .quantization import QuantizedParameter, make_codec, make_side_codec


class EQAM(nn.Module):
    """Efficient quantization adapter: `delta = s * QUp(act(QDown(u)))`.

    Args:
        channels: block width C.
        config: the adapter's `UPetuConfig` (r, bits, codebook, activation, side_bits).

    Input `u`: the block's normalised channels-last tensor (N, H, W, C). Output: delta of the same shape.
    `s` (per channel) starts at 0, so the adapted block equals the base block at initialisation.
    """

    def __init__(self, channels: int, config: UPetuConfig) -> None:
        super().__init__()
        codec = make_codec(config.bits, config.codebook)
        down = torch.empty(config.r, channels)
        up = torch.empty(channels, config.r)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        nn.init.kaiming_uniform_(up, a=math.sqrt(5))
        self.down = QuantizedParameter(down, codec)
        self.up = QuantizedParameter(up, codec)
        self.scale = QuantizedParameter(torch.zeros(channels), make_side_codec(config.effective_side_bits))
        self.act = ACT2FN[config.activation]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        hidden = self.act(F.linear(u, self.down()))
        # the per-channel scale is folded into the (C, r) up weight: cheaper than scaling every pixel
        return F.linear(hidden, self.up() * self.scale().unsqueeze(1))


class CAPM(nn.Module):
    """Context-aware prompt module: `F' = F + beta * (resize(P) * sigmoid(DWConv3x3(F)))`.

    Args:
        channels: stage width C.
        config: the adapter's `UPetuConfig` (prompt_size, side_bits).

    Input and output: a stage feature map (N, C, H, W). The prompt P (C, m, m) is resized bilinearly to H x W, so
    any input resolution works. `beta` (per channel) starts at 0, so the module is the identity at initialisation.
    """

    def __init__(self, channels: int, config: UPetuConfig) -> None:
        super().__init__()
        side = make_side_codec(config.effective_side_bits)
        m = config.prompt_size
        context = torch.empty(channels, 1, 3, 3)
        nn.init.kaiming_uniform_(context, a=math.sqrt(5))
        self.prompt = QuantizedParameter(torch.randn(channels, m, m), side)
        self.context = QuantizedParameter(context, side)
        self.beta = QuantizedParameter(torch.zeros(channels), side)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        channels = features.shape[1]
        prompt = F.interpolate(
            self.prompt().unsqueeze(0), size=features.shape[-2:], mode="bilinear", align_corners=False
        )
        gate = torch.sigmoid(F.conv2d(features, self.context(), padding=1, groups=channels))
        return features + self.beta().view(1, channels, 1, 1) * (prompt * gate)


def block_channels(block: nn.Module) -> int:
    """Width C of a ConvNeXt block (V1 or V2)."""
    return block.dwconv.in_channels


class UPetuLayer(nn.Module, BaseTunerLayer):
    """A ConvNeXt block (V1 or V2) with UPetu adapters.

    `upetu_eqam[name]` adapts the block's residual branch; `upetu_capm[name]` (on the last block of a stage only)
    prompts the block's output. Input and output: (N, C, H, W).
    """

    adapter_layer_names = ("upetu_eqam", "upetu_capm")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: UPetuConfig, eqam: bool, capm: bool
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.upetu_eqam = nn.ModuleDict()
        self.upetu_capm = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, eqam=eqam, capm=capm)

    def update_layer(self, adapter_name: str, config: UPetuConfig, eqam: bool, capm: bool) -> None:
        """Add the modules of adapter `adapter_name` to this block."""
        channels = block_channels(self.base_layer)
        if eqam:
            self.upetu_eqam[adapter_name] = EQAM(channels, config)
        if capm:
            self.upetu_capm[adapter_name] = CAPM(channels, config)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        """Device and dtype of the wrapped block, read off its depthwise convolution."""
        weight = base_layer.dwconv.weight
        return weight.device, weight.dtype

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError(
            "UPetu adapters cannot be merged into the base weights: EQAM is a nonlinear adapter and CAPM adds an "
            "input-dependent prompt. Keep the model wrapped, or call `unload()` to get the base model back."
        )

    def unmerge(self) -> None:
        pass

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (N, C, H, W) -> (N, C, H, W)."""
        base = self.base_layer
        if self.disable_adapters:
            return base(hidden_states)
        eqams = [self.upetu_eqam[name] for name in self.active_adapters if name in self.upetu_eqam]
        if not eqams:
            output = base(hidden_states)
        else:
            # The ConvNeXt block forward (V1 and V2), with the EQAM deltas joining the residual branch after
            # layer scale and before drop path.
            residual = hidden_states
            features = base.dwconv(hidden_states).permute(0, 2, 3, 1)  # (N, H, W, C)
            normed = base.layernorm(features)
            features = base.act(base.pwconv1(normed))
            if getattr(base, "grn", None) is not None:
                features = base.grn(features)
            features = base.pwconv2(features)
            if getattr(base, "layer_scale_parameter", None) is not None:
                features = base.layer_scale_parameter * features
            for eqam in eqams:
                features = features + eqam(normed)
            output = residual + base.drop_path(features.permute(0, 3, 1, 2))
        for name in self.active_adapters:
            if name in self.upetu_capm:
                output = self.upetu_capm[name](output)
        return output

    def __repr__(self) -> str:
        return "upetu." + super().__repr__()
