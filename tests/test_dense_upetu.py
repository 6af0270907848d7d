"""UPetu on the dense-task models: UperNet segmentation and Siamese change detection."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from peft import PeftModel, get_peft_model

from upetu_hf import ConvNextChangeDetectionConfig, ConvNextForChangeDetection, UPetuConfig, UPetuLayer


def change_model(version: int = 1, seed: int = 0) -> ConvNextForChangeDetection:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = tiny_config(version)
        config = ConvNextChangeDetectionConfig(backbone_config=backbone.to_dict(), decoder_hidden_size=16)
        return ConvNextForChangeDetection(config).eval()


def pair(batch: int = 2, size: int = 64):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, 2, (batch, size, size), generator=g)
    return a, b, labels


@pytest.mark.parametrize("version", [1, 2])
def test_change_detection_forward_backward_with_and_without_upetu(version):
    a, b, labels = pair()
    plain = change_model(version).train()
    out = plain(pixel_values_a=a, pixel_values_b=b, labels=labels)
    assert out.logits.shape == (2, 2, 64, 64)
    out.loss.backward()
    assert all(p.grad is not None for p in plain.parameters() if p.requires_grad)

    model = get_peft_model(change_model(version), UPetuConfig(bits=1)).train()
    assert model.peft_config["default"].modules_to_save == ["decode_head"]
    out = model(pixel_values_a=a, pixel_values_b=b, labels=labels)
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".upetu_" in n or ".modules_to_save." in n for n in with_grad)
    assert any(".upetu_eqam." in n for n in with_grad) and any(".upetu_capm." in n for n in with_grad)


def test_change_detection_identity_save_reload(tmp_path):
    a, b, labels = pair()
    base = change_model()
    with torch.no_grad():
        ref = base(pixel_values_a=a, pixel_values_b=b).logits
    model = get_peft_model(copy.deepcopy(base), UPetuConfig(bits=2))
    with torch.no_grad():
        assert torch.equal(model.eval()(pixel_values_a=a, pixel_values_b=b).logits, ref)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(pixel_values_a=a, pixel_values_b=b, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values_a=a, pixel_values_b=b).logits
    assert not torch.equal(expected, ref)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(change_model(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values_a=a, pixel_values_b=b).logits, expected)


def test_one_set_of_adapters_serves_both_branches():
    """The Siamese backbone is one module: each block holds one UPetu layer, used for time A and time B."""
    model = get_peft_model(change_model(), UPetuConfig())
    layers = [m for m in model.modules() if isinstance(m, UPetuLayer)]
    assert len(layers) == 5  # depths 1-1-2-1: one per block, not one per branch
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0])) for layer in layers]
    a, b, _ = pair(batch=3)
    with torch.no_grad():
        model.eval()(pixel_values_a=a, pixel_values_b=b)
    for hook in hooks:
        hook.remove()
    # each adapted block runs once, on the stacked batch of both dates (2 x 3 images)
    assert calls == [6] * len(layers)
    # and swapping the dates uses the very same adapted features: the bitemporal features swap exactly
    inner = model.base_model.model
    with torch.no_grad():
        fa, fb = inner.get_bitemporal_features(a, b)[:2]
        ga, gb = inner.get_bitemporal_features(b, a)[:2]
    for x, y in zip(fa, gb):
        assert torch.allclose(x, y, atol=1e-6)
