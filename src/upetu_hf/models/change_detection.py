"""Siamese ConvNeXt change-detection model as a Hugging Face ``PreTrainedModel``.

The model takes two co-registered images (``pixel_values_a`` = time 1, ``pixel_values_b`` = time 2), runs ONE
shared ConvNeXt / ConvNeXt V2 backbone on both (in a single pass, by concatenating them along the batch
dimension), fuses the two feature pyramids scale by scale and decodes a dense change map with a light FPN-like
head.

Module layout (names matter for PEFT target selection)::

    ConvNextForChangeDetection
    |-- backbone                      ConvNextBackbone / ConvNextV2Backbone (shared by A and B)
    |   |-- embeddings.patch_embeddings, embeddings.layernorm
    |   |-- encoder.stages.{s}.downsampling_layer.{0,1}      (s >= 1)
    |   |-- encoder.stages.{s}.layers.{m}.{dwconv,layernorm,pwconv1,pwconv2[,grn]}
    |   `-- hidden_states_norms.stage{1..4}
    `-- decode_head                   ConvNextChangeDetectionHead (task head)
        |-- fusion_convs.{i}.{conv,norm,activation}         one per scale, i = 0..3 (stride 4..32)
        |-- fpn_conv.{conv,norm,activation}                 3x3 conv after the top-down pathway
        |-- dropout
        `-- classifier                                      1x1 conv -> num_labels

Importing this module registers the config with ``AutoConfig`` (model type ``"convnext-change-detection"``) and
the model with ``AutoModel``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.backbone_utils import load_backbone
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput, logging

logger = logging.get_logger(__name__)

SUPPORTED_BACKBONE_TYPES = ("convnext", "convnextv2")
FUSION_MODES = ("diff_concat", "concat_diff", "diff")
DECODER_NORMS = ("batch", "group")
DEFAULT_CHANGE_ID2LABEL = {0: "no-change", 1: "change"}

# Number of channels of the fused tensor, as a multiple of the backbone channels at that scale.
_FUSION_CHANNEL_MULTIPLIER = {"diff_concat": 2, "concat_diff": 3, "diff": 1}


def backbone_total_stride(backbone_config: PreTrainedConfig) -> int:
    """Total down-sampling factor of a ConvNeXt backbone (``patch_size * 2 ** (num_stages - 1)``, 32 usually)."""
    patch_size = backbone_config.patch_size
    if isinstance(patch_size, (list, tuple)):
        patch_size = max(patch_size)
    return int(patch_size) * 2 ** (len(backbone_config.depths) - 1)


@strict
class ConvNextChangeDetectionConfig(PreTrainedConfig):
    r"""Configuration of [`ConvNextForChangeDetection`].

    Args:
        backbone_config (`ConvNextConfig`, `ConvNextV2Config` or `dict`, *optional*):
            Configuration of the shared Siamese backbone. A `dict` must carry a `model_type` of `"convnext"` or
            `"convnextv2"` (without one, `"convnext"` is assumed). Defaults to a ConvNeXt-T config (`hidden_sizes=[96, 192, 384, 768]`,
            `depths=[3, 3, 9, 3]`). `out_features` is always forced to all stages (`stage1..stage4`) because the
            decoder consumes the full pyramid.
        num_labels (`int`, *optional*, defaults to 2):
            Number of output classes (2 for binary change detection; must be >= 2). Passed as keyword; with the
            default of 2 and no `id2label`, the labels are `{0: "no-change", 1: "change"}`.
        decoder_hidden_size (`int`, *optional*, defaults to 128):
            Channels of the fused features and of the FPN decoder.
        decoder_norm (`str`, *optional*, defaults to `"batch"`):
            Normalisation in the decoder conv blocks: `"batch"` (BatchNorm2d) or `"group"` (GroupNorm, independent
            of the batch size).
        decoder_dropout (`float`, *optional*, defaults to 0.0):
            Dropout2d probability before the classifier.
        fusion (`str`, *optional*, defaults to `"diff_concat"`):
            How the two features `fa`, `fb` of one scale are fused before the 1x1 projection:
            `"diff_concat"` -> `concat(|fa - fb|, fa + fb)` (symmetric in A/B),
            `"concat_diff"` -> `concat(fa, fb, |fa - fb|)` (order aware),
            `"diff"` -> `|fa - fb|`.
        ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the loss.
        dice_weight (`float`, *optional*, defaults to 0.0):
            Weight of an additional soft-Dice loss (`loss = CE + dice_weight * Dice`).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the normal initialisation of the decoder convolutions.
    """

    model_type = "convnext-change-detection"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="convnext",
            init_kwargs={"out_features": ["stage1", "stage2", "stage3", "stage4"]},
        ),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    decoder_hidden_size: int = 128
    decoder_norm: str = "batch"
    decoder_dropout: float | int = 0.0
    fusion: str = "diff_concat"
    ignore_index: int = 255
    dice_weight: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and "model_type" not in self.backbone_config:
            self.backbone_config = {**self.backbone_config, "model_type": "convnext"}
        num_labels = kwargs.get("num_labels")
        if self.id2label is None and num_labels in (None, 2):
            self.id2label = dict(DEFAULT_CHANGE_ID2LABEL)
            if self.label2id is None:
                self.label2id = {v: k for k, v in DEFAULT_CHANGE_ID2LABEL.items()}
        super().__post_init__(**kwargs)
        if self.id2label is not None and self.label2id is None:
            self.label2id = {label: idx for idx, label in self.id2label.items()}

        backbone_type = getattr(self.backbone_config, "model_type", None)
        if backbone_type not in SUPPORTED_BACKBONE_TYPES:
            raise ValueError(
                f"ConvNextChangeDetectionConfig needs a ConvNeXt backbone_config (model_type in "
                f"{SUPPORTED_BACKBONE_TYPES}), got model_type={backbone_type!r}."
            )
        all_stages = list(self.backbone_config.stage_names[1:])
        if list(self.backbone_config.out_features or []) != all_stages:
            # Do not mutate a config object the caller may still use elsewhere.
            self.backbone_config = copy.deepcopy(self.backbone_config)
            self.backbone_config.out_features = all_stages
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}.")
        if self.decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm must be one of {DECODER_NORMS}, got {self.decoder_norm!r}.")
        if self.decoder_hidden_size < 1:
            raise ValueError(f"decoder_hidden_size must be >= 1, got {self.decoder_hidden_size}.")
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError(f"decoder_dropout must be in [0, 1), got {self.decoder_dropout}.")
        if self.dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight}.")
        if self.num_labels is None or self.num_labels < 2:
            raise ValueError(
                f"num_labels must be >= 2 (use 2 for binary change detection), got {self.num_labels}."
            )

    @property
    def total_stride(self) -> int:
        """Down-sampling factor of the backbone's last stage; input sizes must be multiples of it."""
        return backbone_total_stride(self.backbone_config)


@dataclass
class ChangeDetectionOutput(ModelOutput):
    r"""Output of [`ConvNextForChangeDetection`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Cross-entropy (ignoring `config.ignore_index`) plus `config.dice_weight` times the soft-Dice loss.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels, height, width)`):
            Per-pixel class scores at the input resolution.
        hidden_states_a (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            Backbone hidden states of image A: the embedding output (stride 4) and each stage output, each of
            shape `(batch_size, channels_i, height_i, width_i)`.
        hidden_states_b (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            Same for image B.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states_a: tuple[torch.FloatTensor, ...] | None = None
    hidden_states_b: tuple[torch.FloatTensor, ...] | None = None


def _group_count(channels: int) -> int:
    """Number of GroupNorm groups: up to 32, at least 4 channels per group when possible."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


class ConvNextChangeDetectionConvModule(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d / GroupNorm -> ReLU, on `(N, C_in, H, W)` -> `(N, C_out, H, W)`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(out_channels)
        else:
            self.norm = nn.GroupNorm(_group_count(out_channels), out_channels)
        self.activation = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden_states)))


class ConvNextChangeDetectionHead(nn.Module):
    """Bi-temporal fusion + light FPN decoder.

    For every scale `i` (strides 4, 8, 16, 32) the two backbone features `fa_i`, `fb_i` of shape
    `(N, C_i, H/s_i, W/s_i)` are fused (see `config.fusion`) and projected by a 1x1 conv + norm + ReLU to
    `(N, D, H/s_i, W/s_i)` with `D = config.decoder_hidden_size`. A top-down pathway then upsamples (bilinear) and
    adds from the coarsest to the finest scale, a 3x3 conv + norm + ReLU refines the stride-4 map and a 1x1
    classifier conv outputs `(N, num_labels, H/4, W/4)`.
    """

    def __init__(self, config: ConvNextChangeDetectionConfig, in_channels: list[int]) -> None:
        super().__init__()
        self.fusion = config.fusion
        hidden = config.decoder_hidden_size
        multiplier = _FUSION_CHANNEL_MULTIPLIER[config.fusion]
        self.in_channels = list(in_channels)
        self.fusion_convs = nn.ModuleList(
            [
                ConvNextChangeDetectionConvModule(multiplier * channels, hidden, 1, norm=config.decoder_norm)
                for channels in self.in_channels
            ]
        )
        self.fpn_conv = ConvNextChangeDetectionConvModule(hidden, hidden, 3, norm=config.decoder_norm)
        self.dropout = nn.Dropout2d(config.decoder_dropout)
        self.classifier = nn.Conv2d(hidden, config.num_labels, kernel_size=1)

    def fuse(self, feature_a: torch.Tensor, feature_b: torch.Tensor) -> torch.Tensor:
        """Fuse two `(N, C, h, w)` maps into `(N, k*C, h, w)` (k = 2, 3 or 1 depending on `fusion`)."""
        difference = torch.abs(feature_a - feature_b)
        if self.fusion == "diff_concat":
            return torch.cat([difference, feature_a + feature_b], dim=1)
        if self.fusion == "concat_diff":
            return torch.cat([feature_a, feature_b, difference], dim=1)
        return difference

    def forward(
        self, features_a: tuple[torch.Tensor, ...] | list[torch.Tensor], features_b: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Map two feature pyramids (finest first, each `(N, C_i, h_i, w_i)`) to logits `(N, num_labels, h_0, w_0)`."""
        if len(features_a) != len(self.fusion_convs) or len(features_b) != len(self.fusion_convs):
            raise ValueError(
                f"decode_head expects {len(self.fusion_convs)} feature maps per image, got "
                f"{len(features_a)} and {len(features_b)}."
            )
        fused = [
            conv(self.fuse(fa, fb))
            for conv, fa, fb in zip(self.fusion_convs, features_a, features_b, strict=True)
        ]
        merged = fused[-1]
        for level in range(len(fused) - 2, -1, -1):
            merged = fused[level] + F.interpolate(
                merged, size=fused[level].shape[-2:], mode="bilinear", align_corners=False
            )
        hidden_states = self.fpn_conv(merged)
        return self.classifier(self.dropout(hidden_states))


def soft_dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, eps: float = 1.0
) -> torch.Tensor:
    """Multi-class soft-Dice loss averaged over classes, ignoring `ignore_index` pixels.

    Args:
        logits: `(N, K, H, W)` raw scores.
        labels: `(N, H, W)` integer labels in `[0, K)` or `ignore_index`.
        ignore_index: label value excluded from the loss.
        eps: smoothing constant.

    Returns:
        Scalar tensor `1 - mean_k dice_k`.
    """
    num_classes = logits.shape[1]
    valid = labels != ignore_index
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    one_hot = F.one_hot(safe_labels, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2.0 * intersection + eps) / (cardinality + eps)
    return 1.0 - dice.mean()


class ConvNextChangeDetectionPreTrainedModel(PreTrainedModel):
    """Base class wiring [`ConvNextChangeDetectionConfig`] into the `PreTrainedModel` machinery."""

    config: ConvNextChangeDetectionConfig
    config_class = ConvNextChangeDetectionConfig
    main_input_name = "pixel_values_a"
    input_modalities = ("image",)
    _no_split_modules = []
    accepts_loss_kwargs = False


class ConvNextForChangeDetection(ConvNextChangeDetectionPreTrainedModel):
    """Siamese ConvNeXt (V1 or V2) + fusion/FPN decoder for bi-temporal change detection.

    One backbone (`self.backbone`) is shared by both images: `pixel_values_a` and `pixel_values_b` are
    concatenated along the batch dimension and encoded in a single pass, then split again.
    """

    def __init__(self, config: ConvNextChangeDetectionConfig) -> None:
        super().__init__(config)
        self.backbone = load_backbone(config)
        self.decode_head = ConvNextChangeDetectionHead(config, in_channels=self.backbone.channels)
        self.post_init()

    @property
    def total_stride(self) -> int:
        return self.config.total_stride

    def _validate_inputs(
        self, pixel_values_a: torch.Tensor | None, pixel_values_b: torch.Tensor | None
    ) -> None:
        if pixel_values_a is None or pixel_values_b is None:
            missing = [
                n
                for n, v in (("pixel_values_a", pixel_values_a), ("pixel_values_b", pixel_values_b))
                if v is None
            ]
            raise ValueError(f"ConvNextForChangeDetection needs both images; missing: {', '.join(missing)}.")
        for name, value in (("pixel_values_a", pixel_values_a), ("pixel_values_b", pixel_values_b)):
            if not torch.is_tensor(value) or value.ndim != 4:
                shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise ValueError(
                    f"{name} must be a 4-D tensor (batch, channels, height, width), got {shape}."
                )
        if pixel_values_a.shape != pixel_values_b.shape:
            raise ValueError(
                f"pixel_values_a and pixel_values_b must have the same shape (batch, channels, height, width), got "
                f"{tuple(pixel_values_a.shape)} and {tuple(pixel_values_b.shape)}. Crop/resize both images of a "
                "pair identically."
            )
        num_channels = self.config.backbone_config.num_channels
        if pixel_values_a.shape[1] != num_channels:
            raise ValueError(
                f"The images have {pixel_values_a.shape[1]} channels but the backbone expects {num_channels} "
                "(backbone_config.num_channels)."
            )
        height, width = pixel_values_a.shape[-2:]
        stride = self.total_stride
        if height < stride or width < stride or height % stride or width % stride:

            def fix(size: int) -> int:
                return max(stride, -(-size // stride) * stride)

            raise ValueError(
                f"Input spatial size (height, width) = ({height}, {width}) is not supported: both must be at least "
                f"and multiples of the backbone total stride {stride}. Pad or resize the image pairs, e.g. to "
                f"({fix(height)}, {fix(width)})."
            )

    def get_bitemporal_features(
        self, pixel_values_a: torch.Tensor, pixel_values_b: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple | None, tuple | None]:
        """Encode both images with the shared backbone in one pass.

        Args:
            pixel_values_a: `(N, C, H, W)` images at time 1.
            pixel_values_b: `(N, C, H, W)` images at time 2.
            output_hidden_states: also return the backbone hidden states.

        Returns:
            `(features_a, features_b, hidden_states_a, hidden_states_b)` where `features_*` are tuples of the
            normalised stage1..stage4 maps, each `(N, C_i, H / s_i, W / s_i)` with `s_i = 4, 8, 16, 32`, and
            `hidden_states_*` are `None` unless `output_hidden_states`.
        """
        batch_size = pixel_values_a.shape[0]
        outputs = self.backbone(
            torch.cat([pixel_values_a, pixel_values_b], dim=0),
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        features_a = tuple(f[:batch_size] for f in outputs.feature_maps)
        features_b = tuple(f[batch_size:] for f in outputs.feature_maps)
        hidden_a = hidden_b = None
        if output_hidden_states and outputs.hidden_states is not None:
            hidden_a = tuple(h[:batch_size] if h is not None else None for h in outputs.hidden_states)
            hidden_b = tuple(h[batch_size:] if h is not None else None for h in outputs.hidden_states)
        return features_a, features_b, hidden_a, hidden_b

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (ignore_index) + `dice_weight` * soft Dice.

        Args:
            logits: `(N, num_labels, H, W)`.
            labels: `(N, H, W)` (or `(N, 1, H, W)`) integer labels; `config.ignore_index` pixels are skipped.

        Returns:
            Scalar loss. When every pixel is ignored the loss is `0` (still attached to the graph).
        """
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"labels must have shape (batch, height, width) = {(logits.shape[0], *logits.shape[2:])} to match "
                f"the input images, got {tuple(labels.shape)}."
            )
        if labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor (class indices), got dtype {labels.dtype}.")
        labels = labels.long()
        ignore_index = self.config.ignore_index
        if not bool((labels != ignore_index).any()):
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
        if self.config.dice_weight > 0:
            loss = loss + self.config.dice_weight * soft_dice_loss(logits, labels, ignore_index=ignore_index)
        return loss

    def forward(
        self,
        pixel_values_a: torch.Tensor | None = None,
        pixel_values_b: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ChangeDetectionOutput | tuple:
        r"""
        Args:
            pixel_values_a (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images at time 1. `height` and `width` must be multiples of (and at least) the backbone total
                stride (`config.total_stride`, 32 for ConvNeXt).
            pixel_values_b (`torch.FloatTensor` of the same shape as `pixel_values_a`):
                Images at time 2.
            labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
                Change labels in `[0, num_labels)`; `config.ignore_index` marks pixels excluded from the loss.
            output_hidden_states (`bool`, *optional*):
                Return the backbone hidden states of both images.
            return_dict (`bool`, *optional*):
                Return a [`ChangeDetectionOutput`] (default) instead of a tuple.

        Returns:
            [`ChangeDetectionOutput`] with `logits` of shape `(batch_size, num_labels, height, width)` and `loss`
            when `labels` is given.
        """
        ignored = {"output_attentions", "num_items_in_batch"}
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k not in ignored)
        if unexpected:
            raise TypeError(
                f"ConvNextForChangeDetection.forward got unexpected keyword arguments: {unexpected}."
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        self._validate_inputs(pixel_values_a, pixel_values_b)

        features_a, features_b, hidden_a, hidden_b = self.get_bitemporal_features(
            pixel_values_a, pixel_values_b, output_hidden_states=bool(output_hidden_states)
        )
        logits = self.decode_head(features_a, features_b)
        logits = F.interpolate(logits, size=pixel_values_a.shape[-2:], mode="bilinear", align_corners=False)

        loss = self.compute_loss(logits, labels) if labels is not None else None
        output = ChangeDetectionOutput(
            loss=loss, logits=logits, hidden_states_a=hidden_a, hidden_states_b=hidden_b
        )
        return output if return_dict else output.to_tuple()


AutoConfig.register(ConvNextChangeDetectionConfig.model_type, ConvNextChangeDetectionConfig, exist_ok=True)
AutoModel.register(ConvNextChangeDetectionConfig, ConvNextForChangeDetection, exist_ok=True)

__all__ = [
    "ChangeDetectionOutput",
    "ConvNextChangeDetectionConfig",
    "ConvNextChangeDetectionHead",
    "ConvNextChangeDetectionPreTrainedModel",
    "ConvNextForChangeDetection",
    "backbone_total_stride",
    "soft_dice_loss",
]
