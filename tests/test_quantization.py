"""Q-Linear: codebooks, packing, idempotent codecs, the clipped straight-through estimator, no stale values."""

from __future__ import annotations

import pytest
import torch

from upetu_hf.tuner import quantization
from upetu_hf.tuner.quantization import (
    FloatCodec,
    Int8Codec,
    KBitCodec,
    QLinearWeight,
    QuantizedParameter,
    SignCodec,
    codebook_levels,
    pack_codes,
    unpack_codes,
)


def test_codebook_levels():
    assert codebook_levels(1, "lloyd") == pytest.approx((-0.7979, 0.7979), abs=1e-4)
    assert codebook_levels(1, "quantile") == pytest.approx((-0.6745, 0.6745), abs=1e-4)
    assert codebook_levels(2, "lloyd") == pytest.approx((-1.510, -0.4528, 0.4528, 1.510), abs=1e-3)
    for bits in (1, 2, 4, 8):
        levels = torch.tensor(codebook_levels(bits))
        assert len(levels) == 2**bits and torch.all(levels[1:] > levels[:-1])


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("cols", [1, 7, 16, 33])
def test_pack_unpack_round_trip(bits, cols):
    codes = torch.randint(0, 2**bits, (5, cols))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, -(-cols * bits // 8))
    assert torch.equal(unpack_codes(packed, bits, cols), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_kbit_codec_maps_latents_to_levels(bits):
    latent = torch.randn(256, 64)
    q = KBitCodec(bits).quantize(latent)
    levels = torch.tensor(codebook_levels(bits))
    assert torch.isin(q, levels).all()  # every value is a codebook level
    nearest = levels[(latent.unsqueeze(-1) - levels).abs().argmin(-1)]
    assert torch.equal(q, nearest)
    error = (q - latent).pow(2).mean().item()
    expected = {1: 0.3634, 2: 0.1175, 4: 0.0095, 8: 0.0001}[bits]  # MSE of Lloyd-Max on N(0,1)
    assert error == pytest.approx(expected, rel=0.1, abs=2e-4)


CODECS = [
    KBitCodec(1),
    KBitCodec(2, "quantile"),
    KBitCodec(4),
    KBitCodec(8),
    Int8Codec(),
    FloatCodec(16),
    FloatCodec(32),
    SignCodec("row", Int8Codec(), 0.1),
    SignCodec("column", Int8Codec(), 0.1),
    SignCodec("row", FloatCodec(16), 0.1),
    SignCodec("column", FloatCodec(32), 0.1),
]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.describe())
@pytest.mark.parametrize("scale", [1.0, 1e-3, 37.0])
def test_codecs_are_idempotent(codec, scale):
    """decode(encode(x)) is what a loaded parameter holds: it must quantize to itself, also after a float16 or
    bfloat16 round trip (a model moved to half precision and back)."""
    x = torch.randn(16, 24) * scale
    decoded = codec.decode(codec.encode(x), x.shape)
    assert torch.equal(decoded, codec.quantize(x))
    assert torch.equal(codec.quantize(decoded), decoded)
    assert torch.equal(codec.decode(codec.encode(decoded), x.shape), decoded)
    if isinstance(codec, (KBitCodec, Int8Codec)) or isinstance(getattr(codec, "side", None), Int8Codec):
        for dtype in (torch.float16, torch.bfloat16):
            assert torch.equal(codec.quantize(decoded.to(dtype).float()), decoded), dtype


def test_int8_codec_exact_for_zero_and_bounded_error():
    codec = Int8Codec()
    assert torch.equal(codec.quantize(torch.zeros(8)), torch.zeros(8))
    x = torch.randn(100)
    scale = codec.encode(x)["stats"].item()
    assert scale == 2.0 ** round(torch.log2(torch.tensor(scale)).item())  # a power of two
    assert x.abs().max() / 127 <= scale < 2 * x.abs().max() / 127
    assert (codec.quantize(x) - x).abs().max() <= scale / 2 + 1e-7


def test_straight_through_gradient_is_clipped_and_forward_is_exact():
    latent = torch.tensor([[-3.0, -0.5, 0.2, 1.0, 1.7, 2.5]])
    param = QuantizedParameter(latent.clone(), KBitCodec(1, clip=True))
    weight = param()
    with torch.no_grad():
        assert torch.equal(weight, param())  # train-mode value == eval-mode value, bit for bit
    assert weight.unique().numel() == 2
    (weight * torch.arange(6.0)).sum().backward()
    bound = KBitCodec(1, clip=True).ste_bound
    assert KBitCodec(1).ste_bound is None  # the default passes the gradient everywhere
    assert bound == pytest.approx(2 * 0.7979, abs=1e-3)
    assert torch.equal(param.latent.grad, torch.arange(6.0) * (latent.abs() <= bound))


def _eval_matches_fresh_quantization(param: QuantizedParameter) -> bool:
    with torch.no_grad():
        return torch.equal(param(), param.codec.quantize(param.latent.detach().clone()))


@pytest.mark.parametrize("update", ["fused", "foreach", "data", "inference_mode"])
def test_no_stale_value_after_any_update(update):
    """Fused AdamW and `.data` writes do not bump the latent's version counter: the eval value must follow anyway."""
    param = QuantizedParameter(torch.randn(8, 16), KBitCodec(2))
    with torch.inference_mode() if update == "inference_mode" else torch.no_grad():
        first = param()
    for _ in range(3):
        if update in ("fused", "foreach", "inference_mode"):
            opt = torch.optim.AdamW(
                param.parameters(), lr=0.5, **({update: True} if update != "inference_mode" else {})
            )
            (param() * torch.randn(8, 16)).sum().backward()
            opt.step()
            opt.zero_grad()
        else:
            param.latent.data = param.latent.data * 0.5 + torch.randn(8, 16)  # EMA-style write
        assert _eval_matches_fresh_quantization(param)
    with torch.no_grad():
        assert not torch.equal(param(), first)


def test_qlinear_weight_forms():
    full = QLinearWeight(4, 12, bits=32, codebook="lloyd", side_bits=32, learn_scale=True)
    assert full.scale is None and full() is full.weight.latent  # 32 bits: exactly the unquantized weight
    learned = QLinearWeight(4, 12, bits=2, codebook="lloyd", side_bits=32, learn_scale=True)
    fixed = QLinearWeight(4, 12, bits=2, codebook="lloyd", side_bits=8, learn_scale=False)
    # the row scale lives in weight units (gain = 1 / sqrt(3 * 12) = 1/6): m = gain * alpha
    with torch.no_grad():
        learned.scale.latent.copy_(torch.tensor([1.0, 2.0, 0.5, 0.25]) / 6.0)
        row_scale = learned().abs().amax(dim=1) / (1.510 / 6.0)
    assert row_scale == pytest.approx([1.0, 2.0, 0.5, 0.25], rel=1e-3)
    assert learned.row_scale_unit == pytest.approx(6.0) and full.row_scale_unit == 1.0
    with torch.no_grad():
        assert fixed().abs().unique().numel() == 2
        assert fixed().abs().max().item() == pytest.approx(1.510 / 6.0, rel=1e-3)
    # initialised at alpha = 1: the k-bit weight starts at the codebook levels times the weight's init std
    fresh = QLinearWeight(4, 12, 2, "lloyd", 32, learn_scale=True)
    assert torch.allclose(fresh.scale.latent, torch.full((4,), 1.0 / 6.0))
    with torch.no_grad():
        assert torch.allclose(fresh(), fresh.weight(), rtol=1e-6)
    # the learned scale receives the gradient sum(grad * q(latent)) / gain (LSQ / XNOR-Net alpha, in weight units)
    grad_out = torch.randn(4, 12)
    (learned() * grad_out).sum().backward()
    codes_value = KBitCodec(2, unit=1.0 / 6.0).quantize(learned.weight.latent)
    assert torch.allclose(learned.scale.latent.grad, (grad_out * codes_value).sum(1) * 6.0, rtol=1e-5)


@pytest.mark.parametrize("learn_scale", [True, False])
def test_one_bit_weight_is_signs_times_derived_magnitudes(learn_scale):
    """1 bit: `W = sign(L) * mean|L|` per row (`W_down`) or per column (`W_up`), no learned magnitudes, a Kaiming-
    uniform latent, and the gradient `dW * alpha / level + sign(L) * mean(dW * sign(L))`."""
    torch.manual_seed(0)
    weight = QLinearWeight(6, 12, 1, "lloyd", 32, learn_scale=learn_scale)
    assert (
        weight.scale is None and weight.column_scale is None and weight.row_scale_unit == pytest.approx(6.0)
    )
    latent = weight.weight.latent
    assert latent.abs().max() <= 1.0 / 12**0.5 and latent.std().item() == pytest.approx(1.0 / 6.0, rel=0.3)
    dim = 1 if learn_scale else 0
    alpha = latent.detach().abs().mean(dim=dim, keepdim=True)
    with torch.no_grad():
        value = weight()
    assert torch.allclose(value, torch.sign(latent.detach()) * alpha, rtol=1e-6)
    assert torch.equal(weight(), value)  # train-mode value == eval-mode value, bit for bit
    grad_out = torch.randn(6, 12)
    (weight() * grad_out).sum().backward()
    sign = torch.sign(latent.detach())
    level = 0.7979 / 6.0
    expected = grad_out * alpha / level + sign * (grad_out * sign).mean(dim=dim, keepdim=True)
    assert torch.allclose(latent.grad, expected, rtol=1e-3, atol=1e-6)
    # the codebook sets only the straight-through gain at 1 bit
    quantile = QLinearWeight(6, 12, 1, "quantile", 32, learn_scale=learn_scale)
    assert quantile.weight.codec.level == pytest.approx(0.6745 / 6.0, rel=1e-3)


def test_one_bit_zero_rows_keep_their_signs_through_a_reload():
    """A row whose magnitude is 0 decodes to signed zeros, which encode to the same sign bits (byte-identical saves)."""
    codec = SignCodec("row", Int8Codec(), 0.1)
    latent = torch.randn(3, 9)
    latent[1] = 0.0
    latent[1, ::2] = -0.0
    stored = codec.encode(latent)
    decoded = codec.decode(stored, latent.shape)
    assert torch.equal(decoded[1], torch.zeros(9))
    for key, value in codec.encode(decoded).items():
        assert torch.equal(value, stored[key]), key


def test_qlinear_column_scale_scales_columns_and_learns():
    """EQAM's 2-bit `W_up` has a per-column scale `t` in weight units: `W = q(latent) * (t / gain)[None, :]`, starting
    at a multiplier of 1, with the gradient `sum_rows(grad * q(latent)) / gain`; 32 bits has none."""
    assert (
        QLinearWeight(6, 3, 32, "lloyd", 32, learn_scale=False, learn_column_scale=True).column_scale is None
    )
    weight = QLinearWeight(6, 3, 2, "lloyd", 32, learn_scale=False, learn_column_scale=True)
    gain = 1.0 / 3.0  # 1 / sqrt(3 * 3)
    assert torch.allclose(weight.column_scale.latent, torch.full((3,), gain))
    with torch.no_grad():
        codes = weight.weight()
        assert torch.allclose(weight(), codes, rtol=1e-6)  # identity at init
        weight.column_scale.latent.copy_(torch.tensor([1.0, 0.5, 3.0]) * gain)
        assert torch.allclose(weight(), codes * torch.tensor([1.0, 0.5, 3.0]), rtol=1e-6)
    grad_out = torch.randn(6, 3)
    (weight() * grad_out).sum().backward()
    assert torch.allclose(weight.column_scale.latent.grad, (grad_out * codes).sum(0) / gain, rtol=1e-5)
    # EQAM's up projection carries it at 2 bits, the down projection never; 1 bit derives its magnitudes
    from upetu_hf.tuner.config import UPetuConfig
    from upetu_hf.tuner.layer import EQAM

    eqam = EQAM(16, UPetuConfig(r=4, bits=2))
    assert eqam.up.column_scale.latent.shape == (4,) and eqam.down.column_scale is None
    one_bit = EQAM(16, UPetuConfig(r=4, bits=1))
    assert one_bit.up.column_scale is None and one_bit.down.scale is None
    assert (one_bit.down.weight.codec.per, one_bit.up.weight.codec.per) == ("row", "column")
    assert EQAM(16, UPetuConfig(r=4, bits=4)).up.column_scale is None  # the default adapter is unchanged
    assert EQAM(16, UPetuConfig(r=4, bits=32)).up.column_scale is None


@pytest.mark.parametrize(
    ("bits", "codec_type"), [(1, SignCodec), (2, KBitCodec), (4, KBitCodec), (8, KBitCodec), (32, FloatCodec)]
)
@pytest.mark.parametrize("learn_scale", [True, False])
def test_qlinear_weight_takes_its_codec_from_the_registry(bits, codec_type, learn_scale):
    assert sorted(quantization.CODECS) == [1, 2, 4, 8, 32]
    codec = quantization.make_codec(bits, "quantile", unit=0.25, per="row" if learn_scale else "column")
    assert type(codec) is codec_type and codec.bits == bits
    weight = QLinearWeight(6, 12, bits, "quantile", 8, learn_scale=learn_scale)
    gain = 1.0 / (3.0 * 12) ** 0.5
    assert (
        weight.weight.codec.describe()
        == quantization.make_codec(
            bits, "quantile", unit=gain, per="row" if learn_scale else "column"
        ).describe()
    )
    assert (weight.scale is not None) == (codec.codes_only and learn_scale)


def test_codec_registry_is_the_one_list_of_widths(monkeypatch):
    """A width registered in `CODECS` is a valid `UPetuConfig.bits` and reaches `QLinearWeight`; others are refused
    by name; a width cannot be registered twice."""
    from upetu_hf import UPetuConfig

    with pytest.raises(ValueError, match="registered widths are 1, 2, 4, 8, 32"):
        quantization.make_codec(3)
    with pytest.raises(ValueError, match="allowed values are 1, 2, 4, 8, 32"):
        UPetuConfig(bits=3)
    with pytest.raises(ValueError, match="already registered at 4 bits"):
        quantization.register_codec(4)(lambda **_: FloatCodec(32))
    monkeypatch.setitem(quantization.CODECS, 16, lambda bits, **_: FloatCodec(bits))
    assert UPetuConfig(bits=16).bits == 16
    assert type(QLinearWeight(4, 8, 16, "lloyd", 8, learn_scale=True).weight.codec) is FloatCodec
