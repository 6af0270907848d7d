"""A loaded adapter's outputs stay those of the code that saved tests/fixtures/golden/
(`tests/fixtures/make_golden.py`): trained, non-identity adapters at 1, 4 and 32 bits.

Within one machine every forward pass of the loaded adapter (no_grad, inference_mode, trainable) is bit-identical.
Against the committed logits the match is to float32 rounding: CPUs with other vector units (AVX2 and AVX-512) run
other convolution kernels, whose sums differ in the last bits (measured: at most 1.5e-6 on logits of size 6), while
any change of the adapter's format or forward pass moves the logits by orders of magnitude more."""

from __future__ import annotations

import pytest
import torch
from fixtures.make_golden import BITS, GOLDEN, base_model, inputs
from peft import PeftModel
from safetensors.torch import load_file


@pytest.mark.parametrize("bits", BITS)
def test_loaded_adapter_reproduces_the_committed_logits(bits):
    expected = load_file(GOLDEN / "logits.safetensors")[f"upetu-{bits}bit"]
    x = inputs()["pixel_values"]
    model = PeftModel.from_pretrained(base_model(), GOLDEN / f"upetu-{bits}bit").eval()
    with torch.no_grad():
        first, second = model(pixel_values=x).logits, model(pixel_values=x).logits
    with torch.inference_mode():
        third = model(pixel_values=x).logits
    assert torch.equal(second, first) and torch.equal(third, first)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    # the same adapter while trainable (the straight-through path) computes the same forward values
    trainable = PeftModel.from_pretrained(base_model(), GOLDEN / f"upetu-{bits}bit", is_trainable=True).eval()
    assert torch.equal(trainable(pixel_values=x).logits.detach(), first)
