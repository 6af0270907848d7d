"""Q-Linear building blocks: codebooks, codecs, the straight-through estimator and k-bit packing.

A `QuantizedParameter` holds a latent full-precision tensor for training and hands out its quantized value:
with the straight-through estimator while gradients flow, and from a cache (computed once per weight version)
otherwise. Each parameter has a `Codec` that turns the latent tensor into what is stored on disk
(`packed` codes plus the `stats` needed to decode them) and back. The forward pass uses exactly the decoded
values, so an adapter reloaded from its packed form reproduces the saved model bit for bit.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import nn

PACKED_FIELDS = ("packed", "stats")
_EPS = 1e-8


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _normal_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@cache
def codebook_levels(bits: int, kind: str = "lloyd") -> tuple[float, ...]:
    """Sorted levels of a `2**bits`-entry codebook for standardised (zero-mean, unit-variance) weights.

    "quantile" puts the levels at the mid-quantiles of N(0, 1); "lloyd" runs Lloyd-Max iterations from there,
    which gives the MSE-optimal quantizer of N(0, 1) (+-0.7979 at 1 bit).
    """
    n = 2**bits
    probs = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    levels = math.sqrt(2.0) * torch.erfinv(2.0 * probs - 1.0)
    if kind == "lloyd":
        for _ in range(300):
            edges = torch.cat(
                [torch.tensor([-math.inf]), (levels[1:] + levels[:-1]) / 2, torch.tensor([math.inf])]
            )
            lo, hi = edges[:-1], edges[1:]
            mass = (_normal_cdf(hi) - _normal_cdf(lo)).clamp_min(1e-300)
            levels = (_normal_pdf(lo) - _normal_pdf(hi)) / mass
    elif kind != "quantile":
        raise ValueError(f"Unknown codebook {kind!r}: allowed values are 'lloyd' and 'quantile'.")
    return tuple(levels.tolist())


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) of shape (rows, cols) into uint8 of shape (rows, ceil(cols * bits / 8))."""
    rows, cols = codes.shape
    per_byte = 8 // bits
    padded = -(-cols // per_byte) * per_byte
    codes = torch.nn.functional.pad(codes.to(torch.uint8), (0, padded - cols))
    codes = codes.view(rows, padded // per_byte, per_byte)
    packed = torch.zeros(rows, padded // per_byte, dtype=torch.uint8, device=codes.device)
    for i in range(per_byte):
        packed |= codes[..., i] << (i * bits)
    return packed


def unpack_codes(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_codes`: uint8 (rows, ceil(cols * bits / 8)) -> int64 codes (rows, cols)."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (i * bits)) & mask for i in range(per_byte)]
    codes = torch.stack(parts, dim=-1).reshape(packed.shape[0], -1)
    return codes[:, :cols].long()


class Codec:
    """How a latent tensor is quantized, stored and decoded. Subclasses define one storage format."""

    bits: int = 32

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent tensor -> stored tensors (`packed` and optionally `stats`)."""
        raise NotImplementedError

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        """Stored tensors -> float32 tensor of `shape`, exactly the value the forward pass uses."""
        raise NotImplementedError

    def packed_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """Shape of the `packed` tensor for a latent tensor of `shape`."""
        raise NotImplementedError

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """The value the forward pass uses: decode(encode(latent)), in float32."""
        return self.decode(self.encode(latent), latent.shape)


class FloatCodec(Codec):
    """Stores the tensor in float32 or float16; the forward pass uses the stored precision."""

    def __init__(self, bits: int = 32) -> None:
        self.bits = bits
        self.dtype = torch.float32 if bits == 32 else torch.float16

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"packed": latent.detach().to(self.dtype).contiguous()}

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        return stored["packed"].float().reshape(shape)

    def packed_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return tuple(shape)


class Int8Codec(Codec):
    """Symmetric int8 with one float32 scale per tensor (absmax / 127)."""

    bits = 8

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        x = latent.detach().float()
        scale = (x.abs().amax() / 127.0).clamp_min(_EPS)
        codes = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        return {"packed": codes.contiguous(), "stats": scale.reshape(1)}

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        return (stored["packed"].float() * stored["stats"].float()).reshape(shape)

    def packed_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return tuple(shape)


class KBitCodec(Codec):
    """k-bit codebook quantization of a standardised matrix with per-tensor mean and std (Q-Linear weights).

    The weight (out, in) is standardised with its mean and std, each value is mapped to the nearest codebook level,
    and the result is de-standardised. Stored: the codes packed 8/k per byte along `in`, and [mean, std] in float32.
    """

    def __init__(self, bits: int, codebook: str = "lloyd") -> None:
        if bits not in (1, 2, 4, 8):
            raise ValueError(f"KBitCodec supports 1, 2, 4 or 8 bits, got {bits}.")
        self.bits = bits
        self.levels = torch.tensor(codebook_levels(bits, codebook), dtype=torch.float32)
        self.thresholds = (self.levels[1:] + self.levels[:-1]) / 2
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels, thresholds) on `device`, copied there once."""
        if device not in self._on_device:
            self._on_device[device] = (self.levels.to(device), self.thresholds.to(device))
        return self._on_device[device]

    def _codes_and_stats(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = latent.detach().float().reshape(latent.shape[0], -1)
        mean = w.mean()
        std = w.std(unbiased=False).clamp_min(_EPS)
        return torch.bucketize((w - mean) / std, self._tables(w.device)[1]), mean, std

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, mean, std = self._codes_and_stats(latent)
        return {"packed": pack_codes(codes, self.bits), "stats": torch.stack([mean, std])}

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        cols = math.prod(shape[1:])
        codes = unpack_codes(stored["packed"], self.bits, cols)
        stats = stored["stats"].float()
        return (stats[0] + stats[1] * self._tables(codes.device)[0][codes]).reshape(shape)

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """decode(encode(latent)) without the packing round trip (same values, bit for bit)."""
        codes, mean, std = self._codes_and_stats(latent)
        stats = torch.stack([mean, std])
        return (stats[0] + stats[1] * self._tables(codes.device)[0][codes]).reshape(latent.shape)

    def packed_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return (shape[0], -(-math.prod(shape[1:]) * self.bits // 8))


def make_codec(bits: int, codebook: str = "lloyd") -> Codec:
    """The codec for a bit width: k-bit codebook for 1/2/4/8 bits, float for 16/32 bits."""
    if bits in (16, 32):
        return FloatCodec(bits)
    return KBitCodec(bits, codebook)


def make_side_codec(bits: int) -> Codec:
    """The codec of side tensors (scales, prompts, gates): int8, float16 or float32."""
    return Int8Codec() if bits == 8 else FloatCodec(bits)


class QuantizedParameter(nn.Module):
    """A trainable tensor used in quantized form (straight-through estimator), stored as packed codes.

    Calling the module returns the tensor the forward pass uses, with the dtype of the latent parameter:
    with the straight-through estimator when gradients are needed, otherwise from a cache that is recomputed
    only when the latent weight changes (its version counter), its device or its dtype changes.
    """

    def __init__(self, init: torch.Tensor, codec: Codec) -> None:
        super().__init__()
        self.latent = nn.Parameter(init)
        self.codec = codec
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _cache_key(self) -> tuple:
        latent = self.latent
        return (latent.data_ptr(), latent._version, latent.device, latent.dtype)

    def forward(self) -> torch.Tensor:
        latent = self.latent
        if isinstance(self.codec, FloatCodec) and self.codec.bits == 32 and latent.dtype == torch.float32:
            return latent
        if torch.is_grad_enabled() and latent.requires_grad:
            quantized = self.codec.quantize(latent).to(latent.dtype)
            return latent + (quantized - latent).detach()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.codec.quantize(latent).to(latent.dtype))
        return self._cache[1]

    def pack(self, latent: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The stored form (`packed`, `stats`) of `latent` (default: this parameter's latent tensor)."""
        return self.codec.encode(self.latent if latent is None else latent)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        packed_key = prefix + "packed"
        if packed_key not in state_dict:
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        stored = {name: state_dict[prefix + name] for name in PACKED_FIELDS if prefix + name in state_dict}
        expected = self.codec.packed_shape(self.latent.shape)
        if tuple(stored["packed"].shape) != expected:
            raise ValueError(
                f"Cannot load the UPetu adapter tensor '{prefix.rstrip('.')}': the checkpoint stores shape "
                f"{tuple(stored['packed'].shape)}, this model expects {expected} (unpacked shape "
                f"{tuple(self.latent.shape)}). The adapter was trained on a base model with other widths or "
                "another UPetu config (r, bits, prompt_size): load it onto the base model named in its "
                "adapter_config.json (base_model_name_or_path)."
            )
        if (
            "stats" in PACKED_FIELDS
            and isinstance(self.codec, (KBitCodec, Int8Codec))
            and "stats" not in stored
        ):
            raise ValueError(
                f"The UPetu adapter checkpoint lacks '{prefix}stats', needed to decode '{packed_key}'."
            )
        device = self.latent.device if not self.latent.is_meta else stored["packed"].device
        stored = {k: v.to(device) for k, v in stored.items()}
        decoded = self.codec.decode(stored, self.latent.shape)
        if self.latent.is_meta or local_metadata.get("assign_to_params_buffers", False):
            self.latent = nn.Parameter(decoded.to(self.latent.dtype), requires_grad=self.latent.requires_grad)
        else:
            with torch.no_grad():
                self.latent.copy_(decoded)
        # The decoded tensor is exactly what the saved model used; serve it until the latent weight changes.
        self._cache = (self._cache_key(), decoded.to(self.latent.dtype))

    def extra_repr(self) -> str:
        return f"shape={tuple(self.latent.shape)}, codec={type(self.codec).__name__}({self.codec.bits} bits)"
