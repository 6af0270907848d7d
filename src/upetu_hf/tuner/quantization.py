"""Q-Linear building blocks: codebooks, codecs, the straight-through estimator and k-bit packing.

A `QuantizedParameter` holds a latent tensor for training and hands out its quantized value, computed afresh at
every call from the current latent tensor (no cache, so no optimizer, `.data` write or inference-mode call can
make it stale). Each parameter has a `Codec` that turns the latent tensor into what is stored on disk (`packed`
plus, for int8, `stats`) and back.

Every codec is *idempotent*: `decode(encode(x))` is a fixed point of `quantize`, so loading a saved adapter sets
the latent tensor to a value that quantizes to itself, bit for bit. That is what makes a reloaded adapter
reproduce the saved model exactly, in eval and in train mode, after `.to(dtype)` round trips, `deepcopy`, and any
number of save/load cycles.

- `KBitCodec` (Q-Linear weights, 1/2/4/8 bits): the quantized value of a latent entry is the nearest level of a
  codebook for N(0, 1) in units of the latent tensor's init std, `unit * levels[bucketize(latent, unit *
  thresholds)]`. A learned per-row scale multiplies the result (`QLinearWeight`). Stored: the codes, packed 8/k
  per byte.
- `Int8Codec` (side tensors at 8 bits): symmetric int8 with one power-of-two scale per tensor,
  `s = 2**ceil(log2(absmax / 127))`. A power of two makes the decoded values exactly representable in float16 and
  bfloat16 and makes the scale a fixed point of re-encoding.
- `FloatCodec` (16 or 32 bits): float16 or float32 storage; the forward pass uses the stored precision.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import nn

PACKED_FIELDS = ("packed", "stats")
_TINY = 2.0**-100  # floor of the int8 scale: an all-zero tensor stays exactly zero


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
    """How a latent tensor is quantized, stored and decoded. Subclasses define one storage format.

    Contract (tested for every codec): `quantize(decode(encode(x))) == decode(encode(x)) == quantize(x)`, bit for
    bit, in float32.
    """

    bits: int = 32
    #: dtype of the stored `packed` tensor, and whether a `stats` tensor goes with it
    packed_dtype: torch.dtype = torch.float32
    has_stats: bool = False
    #: |latent| beyond which the straight-through estimator passes no gradient (None: never clipped)
    ste_bound: float | None = None

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent tensor -> stored tensors (`packed` and, if `has_stats`, `stats`)."""
        raise NotImplementedError

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        """Stored tensors -> the float32 latent tensor of `shape` that a loaded parameter takes."""
        raise NotImplementedError

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """The float32 value the forward pass uses for `latent`."""
        return self.decode(self.encode(latent), latent.shape)

    def packed_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """Shape of the `packed` tensor for a latent tensor of `shape`."""
        return tuple(shape)

    def describe(self) -> str:
        return f"{type(self).__name__}({self.bits} bits)"


class FloatCodec(Codec):
    """Stores the tensor in float32 or float16; the forward pass uses the stored precision."""

    def __init__(self, bits: int = 32) -> None:
        self.bits = bits
        self.packed_dtype = torch.float32 if bits == 32 else torch.float16

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"packed": latent.detach().to(self.packed_dtype).contiguous()}

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        return stored["packed"].float().reshape(shape)

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.detach().to(self.packed_dtype).float()


class Int8Codec(Codec):
    """Symmetric int8 with one power-of-two float32 scale per tensor: `x ~ s * round(x / s)`,
    `s = 2**ceil(log2(absmax / 127))`, so the codes use 64..127 of the 127 positive steps."""

    bits = 8
    packed_dtype = torch.int8
    has_stats = True

    @staticmethod
    def _scale(x: torch.Tensor) -> torch.Tensor:
        absmax = x.abs().amax().clamp_min(_TINY)
        return torch.exp2(torch.ceil(torch.log2(absmax / 127.0)))

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        x = latent.detach().float()
        scale = self._scale(x)
        codes = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        return {"packed": codes.contiguous(), "stats": scale.reshape(1)}

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        return (stored["packed"].float() * stored["stats"].float()).reshape(shape)


class KBitCodec(Codec):
    """k-bit codebook quantization of a latent tensor (Q-Linear weights).

    `quantize(L) = unit * levels[bucketize(L, unit * thresholds)]`, with the `2**k` levels of a codebook for N(0, 1)
    (in units of `unit`, the latent tensor's init std) and the thresholds halfway between them. The levels themselves
    quantize to themselves, which makes loading exact. With `clip=True` the straight-through gradient is clipped
    outside `[-b, b]`, `b = unit * (last level + half the last gap)` (1.60 units at 1 bit); the default passes it
    everywhere (measured better on UCM-55 validation, see results/qlinear_comparison.md). Stored: the codes
    (rows, prod(rest)) packed 8/k per byte along the last axis.
    """

    packed_dtype = torch.uint8

    def __init__(self, bits: int, codebook: str = "lloyd", unit: float = 1.0, clip: bool = False) -> None:
        if bits not in (1, 2, 4, 8):
            raise ValueError(f"KBitCodec supports 1, 2, 4 or 8 bits, got {bits}.")
        self.bits = bits
        self.codebook = codebook
        levels = torch.tensor(codebook_levels(bits, codebook), dtype=torch.float64) * unit
        self.levels = levels.float()
        self.thresholds = (self.levels[1:] + self.levels[:-1]) / 2
        self.ste_bound = float(levels[-1] + (levels[-1] - levels[-2]) / 2) if clip else None
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels, thresholds) on `device`, copied there once."""
        if device not in self._on_device:
            self._on_device[device] = (self.levels.to(device), self.thresholds.to(device))
        return self._on_device[device]

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        """Index of the nearest level for every entry of `latent` (int64, same shape)."""
        return torch.bucketize(latent.detach().float(), self._tables(latent.device)[1])

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        codes = self.codes(latent).reshape(latent.shape[0], -1)
        return {"packed": pack_codes(codes, self.bits)}

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        codes = unpack_codes(stored["packed"], self.bits, math.prod(shape[1:]))
        return self._tables(codes.device)[0][codes].reshape(shape)

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """decode(encode(latent)) without the packing round trip (same values, bit for bit)."""
        return self._tables(latent.device)[0][self.codes(latent)]

    def packed_shape(self, shape: torch.Size) -> tuple[int, ...]:
        return (shape[0], -(-math.prod(shape[1:]) * self.bits // 8))

    def describe(self) -> str:
        return f"KBitCodec({self.bits} bits, {self.codebook})"


def make_codec(bits: int, codebook: str = "lloyd", unit: float = 1.0) -> Codec:
    """The codec of Q-Linear weights: k-bit codebook (levels in units of `unit`) for 1/2/4/8 bits, float for 16/32."""
    if bits in (16, 32):
        return FloatCodec(bits)
    return KBitCodec(bits, codebook, unit)


def make_side_codec(bits: int) -> Codec:
    """The codec of side tensors (scales, prompts, gates): int8, float16 or float32."""
    return Int8Codec() if bits == 8 else FloatCodec(bits)


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized value, exactly. Backward: the gradient passes to the latent tensor unchanged,
    except where `|latent| > bound` (clipped straight-through estimator)."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, codec: Codec) -> torch.Tensor:
        ctx.bound = codec.ste_bound
        if ctx.bound is not None:
            ctx.save_for_backward(latent)
        return codec.quantize(latent).to(latent.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.bound is None:
            return grad, None
        (latent,) = ctx.saved_tensors
        return grad * (latent.abs() <= ctx.bound).to(grad.dtype), None


class QuantizedParameter(nn.Module):
    """A trainable tensor used in quantized form (straight-through estimator), stored in its codec's format.

    Calling the module returns `codec.quantize(latent)` in the latent tensor's dtype, computed from the current
    latent tensor at every call. With a 32-bit float codec the latent tensor itself is returned.
    """

    def __init__(self, init: torch.Tensor, codec: Codec) -> None:
        super().__init__()
        self.latent = nn.Parameter(init)
        self.codec = codec

    def forward(self) -> torch.Tensor:
        latent = self.latent
        if isinstance(self.codec, FloatCodec) and self.codec.bits == 32:
            return latent
        if torch.is_grad_enabled() and latent.requires_grad:
            return _StraightThrough.apply(latent, self.codec)
        return self.codec.quantize(latent).to(latent.dtype)

    def pack(self, latent: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The stored form (`packed`, `stats`) of `latent` (default: this parameter's latent tensor)."""
        return self.codec.encode(self.latent if latent is None else latent)

    def _check_stored(self, name: str, stored: dict[str, torch.Tensor]) -> None:
        """Refuse a stored tensor whose format is not this parameter's codec: decoding it would give wrong numbers."""
        packed = stored["packed"]
        expected = self.codec.packed_shape(self.latent.shape)
        problem = None
        if packed.dtype != self.codec.packed_dtype or ("stats" in stored) != self.codec.has_stats:
            found = f"{packed.dtype}{' + stats' if 'stats' in stored else ''}"
            wanted = f"{self.codec.packed_dtype}{' + stats' if self.codec.has_stats else ''}"
            problem = (
                f"the checkpoint stores {found}, this adapter's {self.codec.describe()} expects {wanted}"
            )
        elif tuple(packed.shape) != expected:
            problem = (
                f"the checkpoint stores shape {tuple(packed.shape)}, this model expects {expected} (unpacked shape "
                f"{tuple(self.latent.shape)})"
            )
        if problem:
            raise ValueError(
                f"Cannot load the UPetu adapter tensor '{name}': {problem}. The adapter was saved with another UPetu "
                "config (bits, side_bits, r, prompt_size) or for a base model with other widths: load it with its own "
                "adapter_config.json onto the base model named there (base_model_name_or_path)."
            )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # Overridden because the checkpoint holds the packed form (`packed`, `stats`), not the latent tensor:
        # decode it into the latent tensor, whose quantization is then exactly the saved value.
        if prefix + "packed" not in state_dict:
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        stored = {name: state_dict[prefix + name] for name in PACKED_FIELDS if prefix + name in state_dict}
        self._check_stored(prefix.rstrip("."), stored)
        device = self.latent.device if not self.latent.is_meta else stored["packed"].device
        decoded = self.codec.decode({k: v.to(device) for k, v in stored.items()}, self.latent.shape)
        if self.latent.is_meta or local_metadata.get("assign_to_params_buffers", False):
            self.latent = nn.Parameter(decoded.to(self.latent.dtype), requires_grad=self.latent.requires_grad)
        else:
            with torch.no_grad():
                self.latent.copy_(decoded)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.latent.shape)}, codec={self.codec.describe()}"


def kbit_latents(model: nn.Module) -> set[int]:
    """`id`s of the k-bit latent tensors in `model`. Only their codes matter (the magnitude is a separate learned
    row scale), so weight decay on them would not regularise anything: it would only pull them towards the
    thresholds and flip codes. Optimizer set-ups leave them out of weight decay."""
    return {
        id(module.latent)
        for module in model.modules()
        if isinstance(module, QuantizedParameter) and isinstance(module.codec, KBitCodec)
    }


class QLinearWeight(nn.Module):
    """The weight W (out, in) of a Q-Linear layer.

    - 32 bits: `W = latent`, the unquantized weight (Kaiming-uniform init, std `gain = 1 / sqrt(3 * in)`).
    - k bits: `W = (m / gain)[:, None] * q(latent) * (t / gain)[None, :]`, where `q` snaps each latent value to the
      nearest of the `2**k` levels `gain * levels` of a codebook for N(0, 1) (`KBitCodec` with `unit=gain`; the
      latent tensor is initialised from N(0, gain^2)), `m` (out,) is a learned per-row magnitude (XNOR-Net's alpha,
      learned as in LSQ: it receives the gradient `sum(grad * q(latent)) / gain`) and `t` (in,) a learned per-column
      magnitude, both initialised to `gain` (a multiplier of 1) and stored as side tensors. `learn_scale=False`
      drops `m` (EQAM's `up`, whose rows EQAM's own per-channel `s` scales); `learn_column_scale=False` drops `t`.

    Units, and why: the latent tensor, `m` and `t` all live in the units of the 32-bit weight. At k bits the codes
    only carry signs and level indices, so the magnitudes are all in `m` and `t`; Adam steps every parameter by
    about the learning rate, so scales of size `gain` (like the 32-bit entries) change the magnitudes at the pace a
    32-bit adapter's entries do. A unit-sized alpha would move `1 / gain` (20-55x on ConvNeXt) times slower, which
    measurably cost 1-bit accuracy (results/qlinear_comparison.md). `row_scale_unit` is the factor that turns a
    scale in weight units into a multiplier of `q(latent)`: `1 / gain` at k bits, 1 at 32 bits.

    Why EQAM's `up` has a column scale: in `W_up @ act(W_down @ u)` hidden unit j's input magnitude is row j of
    `W_down` (its `m_j`) and its output magnitude is column j of `W_up`. A 32-bit `W_up` sets the latter freely; a
    1-bit one has equal-magnitude columns (all levels are +-0.80 gain), which ties each unit's output size to its
    pre-activation size; at 2 bits the codes choose between two magnitudes only. `t` unties them (r numbers per
    block; measured on UCM-55 validation at 1 bit, results/qlinear_comparison.md). From 4 bits on the codes can
    spread a column's magnitude over 16 levels themselves, and EQAM leaves `t` out (the default adapter is unchanged).
    """

    def __init__(
        self,
        out_features: int,
        in_features: int,
        bits: int,
        codebook: str,
        side_bits: int,
        learn_scale: bool,
        learn_column_scale: bool = False,
    ) -> None:
        super().__init__()
        gain = 1.0 / math.sqrt(3.0 * in_features)
        self.scale = self.column_scale = None
        if bits == 32:
            init = torch.empty(out_features, in_features)
            nn.init.kaiming_uniform_(init, a=math.sqrt(5))  # nn.Linear's init: U(+-1 / sqrt(in)), std = gain
            self.weight = QuantizedParameter(init, make_codec(32))
            self.row_scale_unit = 1.0
            return
        init = torch.randn(out_features, in_features) * gain
        self.weight = QuantizedParameter(init, make_codec(bits, codebook, unit=gain))
        self.row_scale_unit = 1.0 / gain
        if learn_scale:
            self.scale = QuantizedParameter(torch.full((out_features,), gain), make_side_codec(side_bits))
        if learn_column_scale:
            self.column_scale = QuantizedParameter(
                torch.full((in_features,), gain), make_side_codec(side_bits)
            )

    def forward(self) -> torch.Tensor:
        """The (out, in) weight the forward pass uses."""
        weight = self.weight()
        if self.scale is not None:
            weight = weight * (self.scale() * self.row_scale_unit).unsqueeze(1)
        if self.column_scale is not None:
            weight = weight * (self.column_scale() * self.row_scale_unit)
        return weight
