"""A loaded adapter's outputs stay bit-identical to those of the code that saved tests/fixtures/golden/
(`tests/fixtures/make_golden.py`): trained, non-identity adapters at 1, 4 and 32 bits."""

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
    for logits in (first, second, third):
        assert torch.equal(logits, expected)
    # the same adapter while trainable (the straight-through path) computes the same forward values
    trainable = PeftModel.from_pretrained(base_model(), GOLDEN / f"upetu-{bits}bit", is_trainable=True).eval()
    assert torch.equal(trainable(pixel_values=x).logits.detach(), expected)
