"""Configuration of the UPetu PEFT method: the single source of truth for every UPetu option."""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field

from peft.config import PeftConfig

from .quantization import CODECS


class UPetuPeftType(str, enum.Enum):
    """UPetu's member of peft's `PeftType` family. peft's enum is closed to outside methods, but its code expects an
    enum member (`.value`, `str(peft_type)` = "PeftType.NAME"); a one-member `str` enum gives both and is written
    to `adapter_config.json` as the plain string "UPETU"."""

    UPETU = "UPETU"


PEFT_TYPE = UPetuPeftType.UPETU
#: version of the stored adapter format, recorded in the weights file's metadata (5: 1-bit weights as signs with
#: magnitudes derived from the latent weights, `SignCodec`. 4: k-bit codes with learned row scales and, at 1 and 2
#: bits, column scales on EQAM's up projection (still so at 2 bits), in weight units; power-of-two int8 side tensors. 3: no column
#: scales; 2: unit-sized row scales)
FORMAT_VERSION = "5"
#: older versions this one reads, with the bit widths whose tensors did not change since (version 4 files hold
#: exactly what version 5 writes at 2, 4, 8 and 32 bits, version 3 files at 4, 8 and 32 bits)
READABLE_VERSIONS = {"4": (2, 4, 8, 32), "3": (4, 8, 32)}
ALLOWED_SIDE_BITS = (8, 16, 32)
ALLOWED_CODEBOOKS = ("lloyd", "quantile")
ALLOWED_CONV_KERNELS = (0, 3, 5, 7)


def _check_positive_int(name: str, value: object, example: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"UPetuConfig.{name}={value!r} is invalid: allowed values are positive integers (e.g. {example})."
        )


def _check_choice(name: str, value: object, allowed: tuple) -> None:
    # bools and floats compare equal to ints (True == 1, 4.0 == 4): refuse them, they would fail later at save
    if isinstance(value, (bool, float)) or value not in allowed:
        raise ValueError(
            f"UPetuConfig.{name}={value!r} is invalid: allowed values are {', '.join(map(str, allowed))}."
        )


@dataclass
class UPetuConfig(PeftConfig):
    """Configuration of a UPetu adapter (EQAM adapters in every ConvNeXt block, CAPM prompts in every stage).

    The defaults train about 0.73 % of ConvNeXt-B's backbone parameters (r=16, prompt_size=4), the budget of the
    UPetu paper (Dong, Gu, Liu, IEEE TGRS 2024).

    Args:
        r: bottleneck width of each EQAM adapter (Q-Linear C->r, activation, Q-Linear r->C).
        bits: bit width of the Q-Linear weights: 1, 2, 4, 8, or 32 (full precision). At 1 bit each weight is
            signs times a magnitude per row (`W_down`) or column (`W_up`) derived from its latent values; at 2 to 8
            bits each weight has learned per-row magnitudes, and at 2 bits EQAM's up projection also learned
            per-column ones (r values per block): `QLinearWeight`.
        prompt_size: side m of each CAPM prompt map (C x m x m), resized to the feature map.
        activation: nonlinearity between the two Q-Linear layers (any `transformers.activations.ACT2FN` key).
        codebook: levels of the k-bit codebook for standardised weights: "lloyd" (MSE-optimal levels of N(0, 1),
            +-0.798 at 1 bit) or "quantile" (N(0, 1) quantiles, +-0.674 at 1 bit). At 1 bit the level only sets the
            gain of the straight-through gradient (the magnitudes are derived).
        side_bits: storage precision of the small side tensors (EQAM scales, CAPM prompts, context convolutions
            and gates): 8 (int8 with one scale per tensor), 16 (float16) or 32. `None` picks 32 when `bits=32`,
            else 8. The forward pass uses exactly the stored values, so a reloaded adapter is bit-identical.
        conv_kernel: side k of a depthwise k x k convolution on EQAM's r bottleneck channels, between the down
            projection and the activation (as in Convpass / Conv-Adapter), so the adapter can mix neighbouring pixels
            as the block's 7x7 depthwise convolution does; 0 (default) adds none. Odd sizes only; it starts as the
            identity (a centred 1) and is stored as a side tensor (r * k * k values per block).
        norm_affine: also train a per-channel correction of each adapted block's LayerNorm affine,
            `LN(x) * (1 + g) + b` (g, b start at 0; 2C values per block, side tensors), which retunes the input of the
            block's own MLP as well as EQAM's. Off by default.
        use_eqam: add EQAM adapters to ConvNeXt blocks.
        use_capm: add CAPM prompts to ConvNeXt stages.
        stages: 0-based indices of the stages to adapt (EQAM and CAPM); `None` adapts every stage.
        target_modules: optionally restrict EQAM to some blocks: a regex matched in full against block names such as
            `convnext.encoder.stages.2.layers.5`, or a list of names/suffixes. `None` adapts every block.
        exclude_modules: ConvNeXt blocks that get no EQAM (regex or names). CAPM belongs to the stage: it stays on
            the stage's last block even if that block is excluded (drop it with `stages` or `use_capm=False`).
        init_weights: `True` starts every adapter as the identity (EQAM scales and CAPM gates at 0). `False` starts
            them at small random values, as peft's tuners do for tests that need a non-identity adapter.
        modules_to_save: modules trained and saved next to the adapter, e.g. task heads. `None` picks the known heads
            the model has among `classifier`, `decode_head` and `auxiliary_head` (direct children of the model);
            pass `[]` to train no head.
    """

    r: int = field(default=16, metadata={"help": "EQAM bottleneck width."})
    bits: int = field(default=4, metadata={"help": "Q-Linear bit width: 1, 2, 4, 8 or 32."})
    prompt_size: int = field(default=4, metadata={"help": "Side of the CAPM prompt maps."})
    activation: str = field(default="gelu", metadata={"help": "EQAM activation."})
    codebook: str = field(default="lloyd", metadata={"help": "k-bit codebook: 'lloyd' or 'quantile'."})
    side_bits: int | None = field(default=None, metadata={"help": "Side-tensor storage bits: 8, 16 or 32."})
    conv_kernel: int = field(
        default=0, metadata={"help": "Depthwise k x k convolution in the EQAM bottleneck (0: none; 3, 5, 7)."}
    )
    norm_affine: bool = field(
        default=False, metadata={"help": "Train a correction of each adapted block's LayerNorm affine."}
    )
    use_eqam: bool = field(default=True, metadata={"help": "Add EQAM adapters."})
    use_capm: bool = field(default=True, metadata={"help": "Add CAPM prompts."})
    stages: list[int] | None = field(
        default=None, metadata={"help": "Stages to adapt (0-based); None = all."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Restrict EQAM to these ConvNeXt blocks (regex or names); None = all."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "ConvNeXt blocks to leave untouched (regex or names)."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "Start as the identity (True) or at small random values (False)."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Trainable, saved modules (task heads); None = detect known heads."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        _check_positive_int("r", self.r, 16)
        _check_positive_int("prompt_size", self.prompt_size, 4)
        _check_choice("bits", self.bits, tuple(sorted(CODECS)))  # the widths with a registered codec
        _check_choice("codebook", self.codebook, ALLOWED_CODEBOOKS)
        _check_choice("conv_kernel", self.conv_kernel, ALLOWED_CONV_KERNELS)
        if self.side_bits is not None:
            _check_choice("side_bits", self.side_bits, ALLOWED_SIDE_BITS)
        for name in ("use_eqam", "use_capm", "init_weights", "norm_affine"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"UPetuConfig.{name}={getattr(self, name)!r} is invalid: allowed values are True and False."
                )
        if not (self.use_eqam or self.use_capm):
            raise ValueError(
                "UPetuConfig.use_eqam and UPetuConfig.use_capm are both False: enable at least one module."
            )
        if self.stages is not None:
            self.stages = list(self.stages)
            if not self.stages or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.stages
            ):
                raise ValueError(
                    f"UPetuConfig.stages={self.stages!r} is invalid: allowed values are a non-empty list of 0-based "
                    "stage indices (e.g. [2, 3]) or None for every stage."
                )
        from transformers.activations import ACT2FN

        if self.activation not in ACT2FN:
            raise ValueError(
                f"UPetuConfig.activation={self.activation!r} is invalid: allowed values are {', '.join(sorted(ACT2FN))}."
            )

    @property
    def effective_side_bits(self) -> int:
        """Storage bits of the side tensors once `side_bits=None` is resolved."""
        if self.side_bits is not None:
            return self.side_bits
        return 32 if self.bits == 32 else 8

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        """Load the config of a saved adapter (local folder or Hub id) and check that its weights file is readable
        and was written in this config's format."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        check_adapter_weights(
            pretrained_model_name_or_path, subfolder=subfolder, revision=kwargs.get("revision"), config=config
        )
        return config


ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
_FORMAT_KEY = "upetu_format_version"


def format_metadata(config: UPetuConfig) -> dict[str, str]:
    """The safetensors metadata that records how an adapter's weights file is encoded.

    `upetu_hf.save_adapter` writes it into `adapter_model.safetensors`; loading compares it with
    `adapter_config.json` and refuses a mismatch (new weights beside an old config, say).
    """
    return {
        "format": "pt",
        _FORMAT_KEY: FORMAT_VERSION,
        "upetu_bits": str(config.bits),
        "upetu_codebook": config.codebook,
        "upetu_side_bits": str(config.effective_side_bits),
    }


def _check_format(path: str, metadata: dict[str, str] | None, config: UPetuConfig | None) -> None:
    """Raise a clear error when a weights file's recorded format disagrees with its config (or this version)."""
    if not metadata or _FORMAT_KEY not in metadata:
        return  # written by peft's save_pretrained: the per-tensor checks at load time apply
    version = metadata[_FORMAT_KEY]
    readable = version == FORMAT_VERSION or (
        version in READABLE_VERSIONS and metadata.get("upetu_bits", "").isdigit()
        and int(metadata["upetu_bits"]) in READABLE_VERSIONS[version]
    )  # fmt: skip
    if not readable:
        raise ValueError(
            f"The UPetu adapter weights file {path} uses format version {version} at "
            f"{metadata.get('upetu_bits', '?')} bits, this upetu-hf reads version {FORMAT_VERSION}"
            + "".join(f", version {v} at {', '.join(map(str, b))} bits" for v, b in READABLE_VERSIONS.items())
            + ": install the upetu-hf version that saved it, or train the adapter again."
        )
    if config is None:
        return
    expected = format_metadata(config)
    diffs = [
        f"{key.removeprefix('upetu_')}={metadata.get(key)!r} in the weights, {value!r} in the config"
        for key, value in expected.items()
        if key not in ("format", _FORMAT_KEY) and metadata.get(key) != value  # the version is checked above
    ]
    if diffs:
        raise ValueError(
            f"The UPetu adapter weights file {path} does not match its adapter_config.json ({'; '.join(diffs)}): the "
            "folder mixes two saves. Save the adapter again, or restore both files from the same save."
        )


def check_adapter_weights(
    model_id: str,
    subfolder: str | None = None,
    revision: str | None = None,
    config: UPetuConfig | None = None,
) -> str | None:
    """Raise a clear error if the adapter's `adapter_model.safetensors` (local, or already in the HF cache) is
    corrupt, if its recorded format disagrees with `config`, or if a local folder disagrees with its
    `manifest.json` (a save cut short).

    Returns the checked file's path, or None when the file is not available locally yet (it is then downloaded,
    and checked, by huggingface_hub).
    """
    from huggingface_hub import try_to_load_from_cache
    from safetensors import SafetensorError, safe_open

    from .._files import verify_manifest

    local = os.path.join(model_id, subfolder or "", ADAPTER_WEIGHTS_NAME)
    if os.path.isdir(model_id):
        path = local if os.path.isfile(local) else None
    else:
        filename = f"{subfolder}/{ADAPTER_WEIGHTS_NAME}" if subfolder else ADAPTER_WEIGHTS_NAME
        cached = try_to_load_from_cache(model_id, filename, revision=revision)
        path = cached if isinstance(cached, str) else None
    if path is None:
        return None
    if os.path.isdir(model_id):  # a folder written by `save_adapter`: refuse one that mixes two saves
        verify_manifest(os.path.join(model_id, subfolder or ""))
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
            metadata = f.metadata()
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(
            f"The UPetu adapter weights file {path} is truncated or corrupt ({err}). Save the adapter again with "
            "`save_pretrained`, or delete the file (for a Hub adapter: its folder in the HF cache) and download it "
            "again."
        ) from err
    _check_format(path, metadata, config)
    return path
