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

from .cache import FrozenWeights
from .config import UPetuConfig
from .quantization import QLinearWeight, QuantizedParameter, as_dtype, make_side_codec


def cannot_merge() -> ValueError:
    """The one error for every merge request (`merge`, `merge_adapter`, `merge_and_unload`)."""
    return ValueError(
        "UPetu adapters cannot be merged into the base weights: EQAM is a nonlinear adapter (Q-Linear, activation, "
        "Q-Linear) and CAPM adds an input-dependent prompt, so no weight update reproduces them. Keep the PeftModel "
        "for inference, or call `unload()` to get the unmodified base model back."
    )


def _side_init(shape: int, config: UPetuConfig) -> torch.Tensor:
    """Init of the per-channel EQAM scale `s` and CAPM `beta`: zeros (identity at init), or with
    `init_weights=False` small random values, so that tests can exercise a non-identity adapter."""
    return torch.zeros(shape) if config.init_weights else 0.1 * torch.randn(shape)


class EQAM(FrozenWeights):
    """Efficient quantization adapter: `delta = (s[:, None] * W_up) @ act(W_down @ u)` per pixel, or with
    `conv_kernel=k`, `delta = (s[:, None] * W_up) @ act(DWConv_kxk(W_down @ u))`.

    Args:
        channels: block width C.
        config: the adapter's `UPetuConfig` (r, bits, codebook, activation, side_bits, conv_kernel, init_weights).

    Input `u`: the block's normalised channels-last tensor (N, H, W, C). Output: delta of the same shape and dtype.
    `W_down` (r, C) and `W_up` (C, r) are Q-Linear weights (`QLinearWeight`; at 1 bit signs times the mean
    magnitude of each row of `W_down` and each column of `W_up`; at 2 to 8 bits `W_down` has a learned per-row scale,
    at 2 bits `W_up` a learned per-column scale; `s` scales the rows of `W_up`). `s` (C,) starts at 0, so
    the adapted block equals the base block at initialisation. At k bits the parameter behind `s` is in the units
    of `W_up`'s entries (`s = scale / gain_up`, `QLinearWeight.row_scale_unit`), so Adam grows the up-projection's
    magnitude at the 32-bit pace. The adapter computes in its own dtype (float32 under peft's
    `autocast_adapter_dtype`) and casts the result back to the input's dtype, as peft's layers do.
    """

    def __init__(self, channels: int, config: UPetuConfig) -> None:
        super().__init__()
        side_bits = config.effective_side_bits
        self.down = QLinearWeight(
            config.r, channels, config.bits, config.codebook, side_bits, learn_scale=True
        )
        self.up = QLinearWeight(
            channels,
            config.r,
            config.bits,
            config.codebook,
            side_bits,
            learn_scale=False,
            learn_column_scale=config.bits <= 2,  # 2 bits: a learned column scale; 1 bit: derived per column
        )
        self.scale = QuantizedParameter(_side_init(channels, config), make_side_codec(side_bits))
        self.conv = None
        if config.conv_kernel:
            k = config.conv_kernel
            kernel = torch.zeros(config.r, 1, k, k)
            kernel[:, 0, k // 2, k // 2] = 1.0  # the identity: EQAM starts as the pointwise adapter
            self.conv = QuantizedParameter(kernel, make_side_codec(side_bits))
        self.act = ACT2FN[config.activation]

    def compute_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`W_down` (r, C), `s[:, None] * W_up` (C, r) and the bottleneck kernel (r, 1, k, k) or None."""
        down = self.down()
        # the per-channel scale is folded into the (C, r) up weight: cheaper than scaling every pixel
        up = self.up() * (self.scale() * self.up.row_scale_unit).unsqueeze(1)
        return down, up, None if self.conv is None else self.conv()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        down, up, kernel = self.weights()
        hidden = F.linear(as_dtype(u, down.dtype), down)  # (N, H, W, r)
        if kernel is not None:
            hidden = F.conv2d(
                hidden.permute(0, 3, 1, 2), kernel, padding=kernel.shape[-1] // 2, groups=kernel.shape[0]
            ).permute(0, 2, 3, 1)  # (N, H, W, r)
        return as_dtype(F.linear(self.act(hidden), up), u.dtype)


class NormAffine(FrozenWeights):
    """A correction of a ConvNeXt block's LayerNorm affine: `LN'(x) = LN(x) * (1 + g) + b`.

    Args:
        channels: block width C.
        config: the adapter's `UPetuConfig` (side_bits, init_weights).

    Input and output: the normalised channels-last tensor (N, H, W, C). `g` and `b` (C,) start at 0 (identity) and are
    stored as side tensors. Computed in the adapter's dtype, returned in the input's.
    """

    def __init__(self, channels: int, config: UPetuConfig) -> None:
        super().__init__()
        side = make_side_codec(config.effective_side_bits)
        self.gain = QuantizedParameter(_side_init(channels, config), side)
        self.bias = QuantizedParameter(_side_init(channels, config), side)

    def compute_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`1 + g` and `b`, (C,) each."""
        return 1 + self.gain(), self.bias()

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        gain, bias = self.weights()
        return as_dtype(as_dtype(normed, gain.dtype) * gain + bias, normed.dtype)


class CAPM(FrozenWeights):
    """Context-aware prompt module: `F' = F + beta * (resize(P) * sigmoid(DWConv3x3(F)))`.

    Args:
        channels: stage width C.
        config: the adapter's `UPetuConfig` (prompt_size, side_bits, init_weights).

    Input and output: a stage feature map (N, C, H, W). The prompt P (C, m, m) is resized bilinearly to H x W, so
    any input resolution works. `beta` (per channel) starts at 0, so the module is the identity at initialisation.
    The prompt term is computed in the adapter's dtype and added in the features' dtype.
    """

    def __init__(self, channels: int, config: UPetuConfig) -> None:
        super().__init__()
        side = make_side_codec(config.effective_side_bits)
        m = config.prompt_size
        context = torch.empty(channels, 1, 3, 3)
        nn.init.kaiming_uniform_(context, a=math.sqrt(5))
        self.prompt = QuantizedParameter(torch.randn(channels, m, m), side)
        self.context = QuantizedParameter(context, side)
        self.beta = QuantizedParameter(_side_init(channels, config), side)

    def compute_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt (1, C, m, m), the context kernel (C, 1, 3, 3) and `beta` (1, C, 1, 1)."""
        return self.prompt().unsqueeze(0), self.context(), self.beta().view(1, -1, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        prompt, context, beta = self.weights()
        prompt = F.interpolate(prompt, size=features.shape[-2:], mode="bilinear", align_corners=False)
        gate = torch.sigmoid(
            F.conv2d(as_dtype(features, prompt.dtype), context, padding=1, groups=features.shape[1])
        )
        return features + as_dtype(beta * (prompt * gate), features.dtype)


def block_channels(block: nn.Module) -> int:
    """Width C of a ConvNeXt block (V1 or V2)."""
    return block.dwconv.in_channels


class UPetuLayer(nn.Module, BaseTunerLayer):
    """A ConvNeXt block (V1 or V2) with UPetu adapters.

    `upetu_eqam[name]` adapts the block's residual branch; `upetu_norm[name]` (with `norm_affine`) corrects the
    block's LayerNorm affine, ahead of both the block's MLP and EQAM; `upetu_capm[name]` (on the last block of a
    stage only) prompts the block's output. Input and output: (N, C, H, W).
    """

    adapter_layer_names = ("upetu_eqam", "upetu_norm", "upetu_capm")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: UPetuConfig, eqam: bool, capm: bool
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.upetu_eqam = nn.ModuleDict()
        self.upetu_norm = nn.ModuleDict()
        self.upetu_capm = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        # peft's tuner layers expose their widths; a ConvNeXt block maps C channels to C channels
        self.in_features = self.out_features = block_channels(base_layer)
        self.update_layer(adapter_name, config, eqam=eqam, capm=capm)

    def update_layer(self, adapter_name: str, config: UPetuConfig, eqam: bool, capm: bool) -> None:
        """Add the modules of adapter `adapter_name` to this block."""
        channels = block_channels(self.base_layer)
        if eqam:
            self.upetu_eqam[adapter_name] = EQAM(channels, config)
            if config.norm_affine:
                self.upetu_norm[adapter_name] = NormAffine(channels, config)
        if capm:
            self.upetu_capm[adapter_name] = CAPM(channels, config)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        """Device and dtype of the wrapped block, read off its depthwise convolution."""
        weight = base_layer.dwconv.weight
        return weight.device, weight.dtype

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise cannot_merge()

    def unmerge(self) -> None:
        """Nothing to undo: `merge` always refuses, so no UPetu adapter is ever merged."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (N, C, H, W) -> (N, C, H, W)."""
        base = self.base_layer
        if self.disable_adapters:
            return base(hidden_states)
        eqams = [self.upetu_eqam[name] for name in self.active_adapters if name in self.upetu_eqam]
        norms = [self.upetu_norm[name] for name in self.active_adapters if name in self.upetu_norm]
        if not eqams and not norms:
            output = base(hidden_states)
        else:
            # The ConvNeXt block forward (V1 and V2), with the LayerNorm corrections right after the block's norm
            # (ahead of its MLP and of EQAM) and the EQAM deltas joining the residual branch after layer scale and
            # before drop path.
            residual = hidden_states
            features = base.dwconv(hidden_states).permute(0, 2, 3, 1)  # (N, H, W, C)
            normed = base.layernorm(features)
            for norm in norms:
                normed = norm(normed)
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
