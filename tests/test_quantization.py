"""Q-Linear: codebooks, packing, the straight-through estimator and the eval-mode cache."""

from __future__ import annotations

import pytest
import torch

from upetu_hf.tuner.quantization import (
    Int8Codec,
    KBitCodec,
    QuantizedParameter,
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
def test_kbit_codec_uses_levels_and_reduces_error_with_bits(bits):
    w = torch.randn(64, 32)
    codec = KBitCodec(bits)
    q = codec.quantize(w)
    z = (q - w.mean()) / w.std(unbiased=False)
    levels = torch.tensor(codebook_levels(bits))
    distance_to_levels = (z.reshape(-1, 1) - levels.reshape(1, -1)).abs().min(dim=1).values
    assert distance_to_levels.max() < 1e-4  # every dequantized value is a codebook level
    error = (q - w).pow(2).mean().item()
    expected = {1: 0.3634, 2: 0.1175, 4: 0.0095, 8: 0.0001}[bits]  # MSE of Lloyd-Max on N(0,1)
    assert error == pytest.approx(expected, rel=0.35, abs=2e-4)


def test_int8_codec_exact_for_zero_and_bounded_error():
    codec = Int8Codec()
    assert torch.equal(codec.quantize(torch.zeros(8)), torch.zeros(8))
    x = torch.randn(100)
    assert (codec.quantize(x) - x).abs().max() <= x.abs().max() / 254 + 1e-7


def test_straight_through_gradient():
    param = QuantizedParameter(torch.randn(4, 8), KBitCodec(1))
    weight = param()
    assert weight.unique().numel() == 2
    (weight * torch.arange(32.0).view(4, 8)).sum().backward()
    assert torch.equal(param.latent.grad, torch.arange(32.0).view(4, 8))


def test_eval_cache_computed_once_and_invalidated_on_update(monkeypatch):
    param = QuantizedParameter(torch.randn(4, 8), KBitCodec(2))
    calls = []
    original = param.codec.quantize
    monkeypatch.setattr(param.codec, "quantize", lambda t: calls.append(1) or original(t))
    with torch.no_grad():
        first = param()
        for _ in range(5):
            assert param() is first
    assert len(calls) == 1
    with torch.no_grad():
        param.latent.add_(1.0)  # an optimizer step changes the latent weight
        updated = param()
    assert len(calls) == 2 and not torch.equal(updated, first)
