"""Q-Linear building blocks: codebooks, codecs, the straight-through estimator and k-bit packing.

A `QuantizedParameter` holds a latent tensor for training and hands out its quantized value, computed afresh at
every call from the current latent tensor (no cache, so no optimizer, `.data` write or inference-mode call can
make it stale); during a `PeftModel` forward pass the value may come from one grouped pass over all parameters
(`grouped.py`), and a frozen adapter module caches what it builds from them (`cache.FrozenWeights`). Each
parameter has a `Codec` that turns the latent tensor into what is stored on disk (`packed` plus, for int8,
`stats`) and back.

Every codec is *idempotent*: `decode(encode(x))` is a fixed point of `quantize`, so loading a saved adapter sets
the latent tensor to a value that quantizes to itself, bit for bit. That is what makes a reloaded adapter
reproduce the saved model exactly, in eval and in train mode, after `.to(dtype)` round trips, `deepcopy`, and any
number of save/load cycles.

- `SignCodec` (Q-Linear weights at 1 bit): `sign(latent) * alpha`, with `alpha` the mean |latent| of each row (or
  column), derived from the latent tensor rather than learned (XNOR-Net's alpha) and stored as a side tensor.
  Stored: the signs, packed 8 per byte, and `alpha` in the side codec's format.
- `KBitCodec` (Q-Linear weights, 2/4/8 bits): the quantized value of a latent entry is the nearest level of a
  codebook for N(0, 1) in units of the latent tensor's init std, `unit * levels[bucketize(latent, unit *
  thresholds)]`. A learned per-row scale multiplies the result (`QLinearWeight`). Stored: the codes, packed 8/k
  per byte.
- `Int8Codec` (side tensors at 8 bits): symmetric int8 with one power-of-two scale per tensor,
  `s = 2**ceil(log2(absmax / 127))`. A power of two makes the decoded values exactly representable in float16 and
  bfloat16 and makes the scale a fixed point of re-encoding.
- `FloatCodec` (16 or 32 bits): float16 or float32 storage; the forward pass uses the stored precision.

The Q-Linear weight codec of each bit width comes from one registry, `CODECS` (filled by `register_codec`, read by
`make_codec`): 1 bit `SignCodec`, 2/4/8 bits `KBitCodec`, 32 bits `FloatCodec`. A new width is one registered
factory here; `UPetuConfig.bits` accepts the registered widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch
from torch import nn

#: the names a stored tensor of a `QuantizedParameter` can take (`Codec.layout`)
PACKED_FIELDS = ("packed", "stats", "magnitude", "magnitude_stats")
_TINY = 2.0**-100  # floor of the int8 scale: an all-zero tensor stays exactly zero


def as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor.to(dtype)`, skipping the call when it already has that dtype: even a no-op `.to` dispatches an op,
    and the forward pass runs this for every adapter tensor."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _values(latent: torch.Tensor) -> torch.Tensor:
    """`latent` without its autograd history, as float32: `detach` only where autograd would record the ops
    (grad mode on: a direct call; inside a straight-through forward, grad mode is off)."""
    return as_dtype(
        latent.detach() if latent.requires_grad and torch.is_grad_enabled() else latent, torch.float32
    )


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
    #: |latent| beyond which the straight-through estimator passes no gradient (None: never clipped)
    ste_bound: float | None = None
    #: True when the latent tensor carries codes only and a Q-Linear weight learns its magnitudes separately (row
    #: and column scales, `QLinearWeight`; no weight decay on the latent tensor, `kbit_latents`)
    codes_only: bool = False

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Latent tensor -> stored tensors (the keys of `layout`)."""
        raise NotImplementedError

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        """Stored tensors -> the float32 latent tensor of `shape` that a loaded parameter takes."""
        raise NotImplementedError

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """The float32 value the forward pass uses for `latent`."""
        return self.decode(self.encode(latent), latent.shape)

    def straight_through(self, latent: torch.Tensor) -> torch.Tensor:
        """`quantize(latent)` in the latent tensor's dtype, with the gradient of the straight-through estimator
        (identity, or clipped beyond `ste_bound`)."""
        return _StraightThrough.apply(latent, self)

    def layout(self, shape: torch.Size) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """dtype and shape of every stored tensor (`encode`'s keys) for a latent tensor of `shape`."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}({self.bits} bits)"


class FloatCodec(Codec):
    """Stores the tensor in float32 or float16; the forward pass uses the stored precision."""

    def __init__(self, bits: int = 32) -> None:
        self.bits = bits
        self.packed_dtype = torch.float32 if bits == 32 else torch.float16

    def layout(self, shape: torch.Size) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {"packed": (self.packed_dtype, tuple(shape))}

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

    def layout(self, shape: torch.Size) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {"packed": (torch.int8, tuple(shape)), "stats": (torch.float32, (1,))}

    @staticmethod
    def scale_of(absmax: torch.Tensor) -> torch.Tensor:
        """The power-of-two scale `2**ceil(log2(absmax / 127))` of tensors whose max |x| is `absmax` (elementwise:
        one scale per entry of `absmax`)."""
        return torch.exp2(torch.ceil(torch.log2(absmax.clamp_min(_TINY) / 127.0)))

    @classmethod
    def _scale(cls, x: torch.Tensor) -> torch.Tensor:
        return cls.scale_of(torch.linalg.vector_norm(x, ord=math.inf))  # max |x|, one op

    @classmethod
    def _codes(cls, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float codes in [-127, 127], scale) of a float32 tensor."""
        scale = cls._scale(x)
        return torch.round(x / scale).clamp_(-127, 127), scale

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, scale = self._codes(latent.detach().float())
        return {"packed": codes.to(torch.int8).contiguous(), "stats": scale.reshape(1)}

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """decode(encode(latent)) without the int8 round trip (same values, bit for bit). `encode`'s clamp to
        [-127, 127] is left out: `scale >= absmax / 127`, so `|x / scale| <= 127` (up to the rounding of `log2`,
        far below the 0.5 that could change a rounded code)."""
        x = _values(latent)
        scale = self._scale(x)
        return torch.round(x / scale) * scale

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        return (stored["packed"].float() * stored["stats"].float()).reshape(shape)


class KBitCodec(Codec):
    """k-bit codebook quantization of a latent tensor (Q-Linear weights).

    `quantize(L) = unit * levels[bucketize(L, unit * thresholds)]`, with the `2**k` levels of a codebook for N(0, 1)
    (in units of `unit`, the latent tensor's init std) and the thresholds halfway between them. The levels themselves
    quantize to themselves, which makes loading exact. With `clip=True` the straight-through gradient is clipped
    outside `[-b, b]`, `b = unit * (last level + half the last gap)` (1.60 units at 1 bit); the default passes it
    everywhere (measured better on UCM-55 validation, see results/history/qlinear_comparison.md). Stored: the codes
    (rows, prod(rest)) packed 8/k per byte along the last axis.
    """

    codes_only = True

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
        """(levels, thresholds) on `device`, copied there once (under `torch.compile`: at every trace, since
        storing a tensor made inside a traced autograd Function is a side effect the compiler refuses)."""
        if torch.compiler.is_compiling():
            return self.levels.to(device), self.thresholds.to(device)
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
        levels, thresholds = self._tables(latent.device)
        return levels[torch.bucketize(_values(latent), thresholds)]

    def layout(self, shape: torch.Size) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {"packed": (torch.uint8, (shape[0], -(-math.prod(shape[1:]) * self.bits // 8)))}

    def describe(self) -> str:
        return f"KBitCodec({self.bits} bits, {self.codebook})"


class SignCodec(Codec):
    """1-bit Q-Linear weights with derived magnitudes: `quantize(L) = sign(L) * alpha`, where `alpha` (one number
    per row with `per="row"`, per column with `per="column"`) is `side.quantize(mean |L|)` over that row or column
    (XNOR-Net's alpha), computed in float64 and rounded once to float32.

    The magnitudes are a function of the latent tensor, not learned parameters, so the latent tensor is an ordinary
    weight (Kaiming-uniform init, weight decay) and learns with the 32-bit dynamics. Gradient (`_DerivedSign`): the
    codebook's straight-through estimator, which reads `level * sign(L)` (the 1-bit codebook level in the latent's
    units) as `L`, plus the exact gradient of `alpha`:
    `dL = dW * alpha / level + sign(L) * mean(dW * sign(L))` (mean over the row or column).

    Exact reloads: a decoded row (or column) holds `+-alpha` only, whose mean magnitude in float64 is `alpha` itself,
    and the side codec is idempotent, so `quantize(decode(encode(L))) == decode(encode(L))` bit for bit. The sign
    bit decides the code, so zero rows (alpha = 0) keep their signs through a reload too.

    Stored: `packed` (rows, ceil(cols / 8)) uint8, the sign bits (1: positive); `magnitude` (and with int8 side
    tensors `magnitude_stats`), `alpha` (n,) in the side codec's format.
    """

    bits = 1

    def __init__(self, per: str, side: Codec, level: float) -> None:
        if per not in ("row", "column"):
            raise ValueError(f"SignCodec derives one magnitude per 'row' or per 'column', got {per!r}.")
        self.per = per
        self.side = side
        self.level = level

    @property
    def dim(self) -> int:
        """The axis a magnitude is the mean over: the columns of a row, or the rows of a column."""
        return 1 if self.per == "row" else 0

    def magnitude(self, latent: torch.Tensor) -> torch.Tensor:
        """`alpha` (n,) float32: `side.quantize(mean |L|)` over each row or column."""
        latent = _values(latent)
        # float64 makes the mean of a decoded row (all +-alpha) exactly alpha; MPS has no float64, so average on CPU
        if latent.device.type == "mps":
            return self.side.quantize(self.mean_magnitude(latent.cpu()).to(latent.device))
        return self.side.quantize(self.mean_magnitude(latent))

    def mean_magnitude(self, latent: torch.Tensor) -> torch.Tensor:
        """mean |L| (n,) over each row or column, accumulated in float64 and rounded once to float32; before the
        side codec."""
        return latent.abs().mean(dim=self.dim, dtype=torch.float64).float()

    def count(self, shape: torch.Size) -> int:
        """How many magnitudes a (rows, cols) weight has: one per row, or one per column."""
        return shape[0] if self.per == "row" else shape[1]

    def _broadcast(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha.unsqueeze(self.dim)

    @staticmethod
    def positive(latent: torch.Tensor) -> torch.Tensor:
        """The sign codes: True where the sign bit of `latent` is clear (+0.0 included)."""
        return ~torch.signbit(latent.detach())

    def encode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        side = self.side.encode(self.magnitude(latent))
        stored = {"packed": pack_codes(self.positive(latent).reshape(latent.shape[0], -1), 1)}
        stored["magnitude"] = side["packed"]
        if "stats" in side:
            stored["magnitude_stats"] = side["stats"]
        return stored

    def decode(self, stored: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
        side = {"packed": stored["magnitude"]}
        if "magnitude_stats" in stored:
            side["stats"] = stored["magnitude_stats"]
        alpha = self._broadcast(self.side.decode(side, (self.count(shape),)))
        positive = unpack_codes(stored["packed"], 1, math.prod(shape[1:])).reshape(shape).bool()
        return torch.where(positive, alpha, -alpha)

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        """decode(encode(latent)) without the packing round trip (same values, bit for bit): `+-alpha` with the
        sign bit of `latent` (`copysign`, so a zero alpha keeps the sign too, as `decode` does)."""
        return torch.copysign(self._broadcast(self.magnitude(latent)), latent)

    def straight_through(self, latent: torch.Tensor, magnitude: torch.Tensor | None = None) -> torch.Tensor:
        """Overridden because the gradient also flows through `alpha`, a function of the latent tensor
        (`_DerivedSign`); the base class passes the codes' straight-through gradient only. `magnitude`: `alpha`
        (n,) when already computed (`grouped.grouped_quantization`), else computed here."""
        return _DerivedSign.apply(latent, self, magnitude)

    def layout(self, shape: torch.Size) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        side = self.side.layout(torch.Size([self.count(shape)]))
        stored = {
            "packed": (torch.uint8, (shape[0], -(-math.prod(shape[1:]) // 8))),
            "magnitude": side["packed"],
        }
        if "stats" in side:
            stored["magnitude_stats"] = side["stats"]
        return stored

    def describe(self) -> str:
        return f"SignCodec(1 bit, mean magnitude per {self.per}, {self.side.describe()})"


#: the Q-Linear weight codec of each bit width: `bits -> factory(bits, codebook, unit, per, side) -> Codec`
#: (`register_codec`). `make_codec` looks a width up here, `UPetuConfig.bits` accepts exactly these widths.
CODECS: dict[int, Callable[..., Codec]] = {}


def register_codec(*widths: int) -> Callable[[Callable[..., Codec]], Callable[..., Codec]]:
    """Decorator: make `factory` the Q-Linear weight codec of each bit width in `widths` (one factory per width).

    The factory is called with keywords `bits`, `codebook` (the codebook's name), `unit` (the latent tensor's init
    std `gain`), `per` ("row" or "column": the axis the weight's magnitudes run along) and `side` (the `Codec` of
    side tensors), and returns a `Codec`; its `codes_only` tells `QLinearWeight` whether the weight learns separate
    magnitudes (row and column scales) or takes them from the codec.
    """

    def register(factory: Callable[..., Codec]) -> Callable[..., Codec]:
        for bits in widths:
            if bits in CODECS:
                raise ValueError(f"A Q-Linear codec is already registered at {bits} bits: {CODECS[bits]!r}.")
            CODECS[bits] = factory
        return factory

    return register


def make_codec(
    bits: int, codebook: str = "lloyd", unit: float = 1.0, per: str = "row", side_bits: int = 8
) -> Codec:
    """The Q-Linear weight codec registered at `bits` (`CODECS`): at 1 bit `SignCodec` (magnitudes derived per
    `per`, stored with `side_bits`), at 2, 4, 8 bits `KBitCodec` (levels in units of `unit`), at 32 bits float32."""
    if bits not in CODECS:
        raise ValueError(
            f"No Q-Linear codec at {bits} bits: registered widths are {', '.join(map(str, sorted(CODECS)))}."
        )
    return CODECS[bits](bits=bits, codebook=codebook, unit=unit, per=per, side=make_side_codec(side_bits))


@register_codec(1)
def _sign_codec(bits: int, codebook: str, unit: float, per: str, side: Codec) -> Codec:
    """Signs with derived magnitudes; `level`: the codebook's 1-bit level in the latent's units."""
    return SignCodec(per, side, unit * codebook_levels(1, codebook)[-1])


@register_codec(2, 4, 8)
def _kbit_codec(bits: int, codebook: str, unit: float, per: str, side: Codec) -> Codec:
    return KBitCodec(bits, codebook, unit)


@register_codec(32)
def _float_codec(bits: int, codebook: str, unit: float, per: str, side: Codec) -> Codec:
    return FloatCodec(bits)


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
        return as_dtype(codec.quantize(latent), latent.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.bound is None:
            return grad, None
        (latent,) = ctx.saved_tensors
        return grad * (latent.abs() <= ctx.bound).to(grad.dtype), None


class _DerivedSign(torch.autograd.Function):
    """`SignCodec`'s forward value `sign(L) * alpha`, exactly, with the gradient
    `dL = dW * alpha / level + sign(L) * mean(dW * sign(L))` (straight-through codes plus the exact gradient of
    `alpha = mean |L|`, whose side quantization passes the gradient unchanged)."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, codec: SignCodec, magnitude: torch.Tensor | None) -> torch.Tensor:
        if magnitude is None:
            magnitude = codec.magnitude(latent)
        alpha = codec._broadcast(magnitude)  # (r, 1) or (1, C)
        sign = torch.ones_like(latent, dtype=alpha.dtype).copysign_(latent)  # +-1 by the sign bit
        ctx.codec = codec
        ctx.save_for_backward(alpha, sign)
        return as_dtype(alpha * sign, latent.dtype)  # == copysign(alpha, latent), bit for bit

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        alpha, sign = ctx.saved_tensors
        codec = ctx.codec
        grad32 = as_dtype(grad, torch.float32)
        through_codes = grad32 * alpha / codec.level
        through_alpha = sign * (grad32 * sign).mean(dim=codec.dim, keepdim=True)
        return as_dtype(through_codes + through_alpha, grad.dtype), None, None


class QuantizedParameter(nn.Module):
    """A trainable tensor used in quantized form (straight-through estimator), stored in its codec's format.

    Calling the module returns `codec.quantize(latent)` in the latent tensor's dtype, computed from the current
    latent tensor at every call. With a 32-bit float codec the latent tensor itself is returned.
    """

    #: set for the duration of one forward pass by `grouped.grouped_quantization`: this parameter's value (int8
    #: side tensors) or its magnitudes `alpha` (`SignCodec` weights), computed with those of every other parameter
    _grouped: torch.Tensor | None = None

    def __init__(self, init: torch.Tensor, codec: Codec) -> None:
        super().__init__()
        self.latent = nn.Parameter(init)
        self.codec = codec

    def forward(self) -> torch.Tensor:
        latent = self.latent
        if isinstance(self.codec, FloatCodec) and self.codec.bits == 32:
            return latent
        if torch.is_grad_enabled() and latent.requires_grad:
            if isinstance(self.codec, SignCodec):
                return self.codec.straight_through(latent, self._grouped)
            if self._grouped is not None:
                return self._grouped
            return self.codec.straight_through(latent)
        return as_dtype(self.codec.quantize(latent), latent.dtype)

    def pack(self, latent: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The stored form (`packed`, `stats`) of `latent` (default: this parameter's latent tensor)."""
        return self.codec.encode(self.latent if latent is None else latent)

    def _check_stored(self, name: str, stored: dict[str, torch.Tensor]) -> None:
        """Refuse a stored tensor whose format is not this parameter's codec: decoding it would give wrong numbers."""
        layout = self.codec.layout(self.latent.shape)

        def show(dtypes: dict[str, torch.dtype]) -> str:
            return " + ".join(f"{k} {dtype}" for k, dtype in dtypes.items())

        problem = None
        found = {k: v.dtype for k, v in stored.items()}
        wanted = {k: dtype for k, (dtype, _) in layout.items()}
        if found != wanted:
            problem = f"the checkpoint stores {show(found)}, this adapter's {self.codec.describe()} expects {show(wanted)}"
        else:
            shapes = {k: tuple(v.shape) for k, v in stored.items()}
            expected = {k: shape for k, (_, shape) in layout.items()}
            if shapes != expected:
                problem = (
                    f"the checkpoint stores shapes {shapes}, this model expects {expected} (unpacked shape "
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
    """`id`s of the k-bit (codebook) latent tensors in `model`. Only their codes matter (the magnitude is a separate
    learned row scale), so weight decay on them would not regularise anything: it would only pull them towards the
    thresholds and flip codes. Optimizer set-ups leave them out of weight decay. (1-bit `SignCodec` latents are
    not among them: their magnitudes are derived from the latent values, which weight decay regularises as it does
    a 32-bit weight.)"""
    return {
        id(module.latent)
        for module in model.modules()
        if isinstance(module, QuantizedParameter) and module.codec.codes_only
    }


class QLinearWeight(nn.Module):
    """The weight W (out, in) of a Q-Linear layer.

    - 32 bits: `W = latent`, the unquantized weight (Kaiming-uniform init, std `gain = 1 / sqrt(3 * in)`).
    - 1 bit: `W = sign(latent) * alpha`, `alpha` the mean |latent| of each row (`learn_scale=True`: EQAM's `W_down`)
      or of each column (otherwise: EQAM's `W_up`), derived from the latent tensor (`SignCodec`, XNOR-Net's alpha
      with its gradient) and stored as a side tensor. The latent tensor is an ordinary weight (Kaiming-uniform
      init, weight decay), so it learns with the dynamics of the 32-bit adapter; no learned magnitudes.
    - 2, 4, 8 bits: `W = (m / gain)[:, None] * q(latent) * (t / gain)[None, :]`, where `q` snaps each latent value to
      the nearest of the `2**k` levels `gain * levels` of a codebook for N(0, 1) (`KBitCodec` with `unit=gain`; the
      latent tensor is initialised from N(0, gain^2)), `m` (out,) is a learned per-row magnitude (XNOR-Net's alpha,
      learned as in LSQ: it receives the gradient `sum(grad * q(latent)) / gain`) and `t` (in,) a learned per-column
      magnitude, both initialised to `gain` (a multiplier of 1) and stored as side tensors. `learn_scale=False`
      drops `m` (EQAM's `up`, whose rows EQAM's own per-channel `s` scales); `learn_column_scale=False` drops `t`.

    Why 1 bit derives its magnitudes: with learned `m` and `t` the 1-bit adapter lost 1.9 points to the 32-bit one
    on UCM-55, and a control with the same parameterization at 32 bits (never quantized) lost most of that too, so
    the cost sat in the learned magnitudes, not in the codes. Derived magnitudes recovered about half the gap, chosen
    on validation over three splits (results/history/qlinear_comparison.md). At 4 bits a comparison over 24 paired
    runs, fixed in writing before it ran, could not tell derived from learned magnitudes on validation
    (results/format_comparison/), so 2 to 8 bits keep format 4.

    Units, and why: the latent tensor, `m` and `t` all live in the units of the 32-bit weight. At k bits the codes
    only carry signs and level indices, so the magnitudes are all in `m` and `t`; Adam steps every parameter by
    about the learning rate, so scales of size `gain` (like the 32-bit entries) change the magnitudes at the pace a
    32-bit adapter's entries do. A unit-sized alpha would move `1 / gain` (20-55x on ConvNeXt) times slower, which
    measurably cost 1-bit accuracy (results/history/qlinear_comparison.md). `row_scale_unit` is the factor that turns a
    scale in weight units into a multiplier of the weight's codes: `1 / gain` at 1 to 8 bits (EQAM's `s` uses it
    too), 1 at 32 bits.

    Why EQAM's `up` has a column scale at 2 bits: in `W_up @ act(W_down @ u)` hidden unit j's input magnitude is row j
    of `W_down` (its `m_j`) and its output magnitude is column j of `W_up`. A 32-bit `W_up` sets the latter freely; a
    2-bit one chooses between two magnitudes only. `t` unties them (r numbers per block; measured on UCM-55
    validation, results/history/qlinear_comparison.md). From 4 bits on the codes can spread a column's magnitude over 16
    levels themselves, and EQAM leaves `t` out (the default adapter is unchanged).
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
        self.row_scale_unit = 1.0 if bits == 32 else 1.0 / gain
        per = "row" if learn_scale else "column"
        codec = make_codec(bits, codebook, unit=gain, per=per, side_bits=side_bits)
        if not codec.codes_only:
            init = torch.empty(out_features, in_features)
            nn.init.kaiming_uniform_(init, a=math.sqrt(5))  # nn.Linear's init: U(+-1 / sqrt(in)), std = gain
            self.weight = QuantizedParameter(init, codec)
            return
        init = torch.randn(out_features, in_features) * gain
        self.weight = QuantizedParameter(init, codec)
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
