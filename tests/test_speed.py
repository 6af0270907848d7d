"""The fast paths of issue 26: frozen adapters cache their weights (`FrozenWeights`) and are never stale, training
quantizes side tensors in one grouped pass (`grouped_quantization`) with unchanged values and gradients, op
counts stay near LoRA's, and `torch.compile` traces the adapter without graph breaks."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import ConvNextConfig, ConvNextForImageClassification

from upetu_hf import UPetuConfig
from upetu_hf.tuner import grouped
from upetu_hf.tuner.cache import FrozenWeights
from upetu_hf.tuner.layer import EQAM

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1])


def base(seed: int = 0) -> ConvNextForImageClassification:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ConvNextForImageClassification(tiny_config(drop_path_rate=0.0)).eval()


def trained_dir(tmp_path: Path, bits: int, seed: int = 0, name: str = "adapter") -> Path:
    """A saved adapter trained for a few steps (non-identity)."""
    torch.manual_seed(seed)
    model = get_peft_model(base(), UPetuConfig(bits=bits, init_weights=False))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(3):
        model(pixel_values=X, labels=Y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=X).logits


def recomputed(model: torch.nn.Module) -> torch.Tensor:
    """The logits with every cache dropped first: what the current parameters give."""
    for module in model.modules():
        if isinstance(module, FrozenWeights):
            module.clear_weights_cache()
    return logits(model)


# -- FrozenWeights --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 4, 32])
def test_frozen_adapter_computes_its_weights_once(tmp_path, bits, monkeypatch):
    model = PeftModel.from_pretrained(base(), trained_dir(tmp_path, bits)).eval()
    calls = []
    original = EQAM.compute_weights
    monkeypatch.setattr(EQAM, "compute_weights", lambda self: calls.append(1) or original(self))
    first = logits(model)
    computed = len(calls)
    assert computed == sum(isinstance(m, EQAM) for m in model.modules()) > 0
    with torch.inference_mode():
        second = model(pixel_values=X).logits
    assert len(calls) == computed and torch.equal(first, second)
    # a trainable adapter computes them at every call (exact training semantics)
    trainable = PeftModel.from_pretrained(base(), trained_dir(tmp_path, bits), is_trainable=True)
    calls.clear()
    trainable(pixel_values=X)
    trainable(pixel_values=X)
    assert len(calls) == 2 * computed


def _load_other_adapter_under_the_same_name(model, tmp_path):
    other = trained_dir(tmp_path, 4, seed=1, name="other")
    model.load_adapter(other, adapter_name="default")
    return logits(PeftModel.from_pretrained(base(), other).eval())


def _half_round_trip(model, tmp_path):
    model.half().float()


def _load_state_dict(model, tmp_path):
    state = {k: v * 0.5 if "latent" in k else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)


def _copy_under_no_grad(model, tmp_path):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "upetu_eqam" in name and name.endswith("scale.latent"):
                param.copy_(param * -1.5)


def _train_then_freeze(model, tmp_path):
    params = [p for n, p in model.named_parameters() if "upetu_" in n]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=5e-2, fused=True)
    model.train()
    model(pixel_values=X, labels=Y).loss.backward()
    optimizer.step()
    model.eval()
    for param in params:
        param.requires_grad_(False)


def _data_assignment(model, tmp_path):
    for name, param in model.named_parameters():
        if "upetu_capm" in name:
            param.data = param.data * 3.0 + 0.1  # a new storage: the cache sees it


@pytest.mark.parametrize(
    "change",
    [
        _load_other_adapter_under_the_same_name,
        _half_round_trip,
        _load_state_dict,
        _copy_under_no_grad,
        _train_then_freeze,
        _data_assignment,
    ],
)
def test_cached_weights_are_never_stale(tmp_path, change):
    model = PeftModel.from_pretrained(base(), trained_dir(tmp_path, 4)).eval()
    before = logits(model)  # fills the caches
    expected = change(model, tmp_path)
    after = logits(model)
    assert not torch.equal(after, before)  # the change matters, so a stale cache would fail
    assert torch.equal(after, recomputed(model))
    if expected is not None:
        assert torch.equal(after, expected)


def test_cache_filled_under_inference_mode_does_not_poison_autograd(tmp_path):
    model = PeftModel.from_pretrained(base(), trained_dir(tmp_path, 1)).eval()
    with torch.inference_mode():
        model(pixel_values=X)
    x = X.clone().requires_grad_(True)  # e.g. a saliency map through the frozen adapter
    model(pixel_values=x).logits.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_deepcopy_and_device_moves_keep_outputs(tmp_path):
    model = PeftModel.from_pretrained(base(), trained_dir(tmp_path, 4)).eval()
    expected = logits(model)
    assert torch.equal(logits(copy.deepcopy(model)), expected)
    assert torch.equal(logits(model.to(torch.float64).to(torch.float32)), expected)  # exact round trip


# -- grouped quantization ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_grouped_pass_gives_the_per_tensor_values_and_gradients(bits, monkeypatch):
    config = UPetuConfig(bits=bits, init_weights=False, norm_affine=True)
    model = get_peft_model(base(), config).train()
    calls = []
    original = grouped.quantize_int8
    monkeypatch.setattr(grouped, "quantize_int8", lambda t: calls.append(len(t)) or original(t))

    def loss_and_grads(forward):
        model.zero_grad()
        loss = forward(pixel_values=X, labels=Y).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    grouped_loss, grouped_grads = loss_and_grads(model)  # PeftModel.forward: the grouped pass
    assert calls and sum(calls) > 10
    calls.clear()
    single_loss, single_grads = loss_and_grads(model.base_model.model)  # the per-tensor path
    assert not calls
    assert torch.equal(grouped_loss, single_loss)
    assert grouped_grads.keys() == single_grads.keys()
    for name, grad in grouped_grads.items():
        assert torch.equal(grad, single_grads[name]), name


# -- op counts (the launch-bound proxy: counts, not timings) ---------------------------------------------------------


def _count_top_level_ops():
    path = Path(__file__).resolve().parents[1] / "scripts" / "_common.py"
    spec = importlib.util.spec_from_file_location("_common_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.count_top_level_ops


def _ops(config, tmp_path: Path, name: str) -> tuple[int, int]:
    """(ops per training step, ops per loaded-adapter inference) on a small ConvNeXt (depths 1-1-3-1)."""
    count = _count_top_level_ops()
    shape = ConvNextConfig(
        depths=[2, 2, 6, 2], hidden_sizes=[16, 32, 64, 128], num_labels=5, drop_path_rate=0.0
    )

    def fresh():
        torch.manual_seed(0)
        return ConvNextForImageClassification(shape)

    model = get_peft_model(fresh(), config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, foreach=True)

    def step():
        model(pixel_values=X, labels=Y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    train = count(step)
    model.save_pretrained(tmp_path / name)
    loaded = PeftModel.from_pretrained(fresh(), tmp_path / name).eval()
    with torch.inference_mode():
        loaded(pixel_values=X)
        infer = count(lambda: loaded(pixel_values=X))
    return train, infer


def test_op_counts_stay_near_lora(tmp_path):
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["pwconv1", "pwconv2"], modules_to_save=["classifier"]
    )
    lora_train, lora_infer = _ops(lora, tmp_path, "lora")
    for bits in (1, 4, 32):
        train, infer = _ops(UPetuConfig(bits=bits), tmp_path, f"upetu-{bits}")
        assert train <= 1.3 * lora_train, (bits, train, lora_train)
        assert infer <= 1.1 * lora_infer, (bits, infer, lora_infer)


# -- torch.compile ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 4, 32])
def test_compile_traces_the_adapter_without_graph_breaks(tmp_path, bits):
    torch._dynamo.reset()
    model = get_peft_model(base(), UPetuConfig(bits=bits, init_weights=False)).train()
    explained = torch._dynamo.explain(model)(pixel_values=X, labels=Y)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    loaded = PeftModel.from_pretrained(base(), trained_dir(tmp_path, bits)).eval()
    explained = torch._dynamo.explain(loaded)(pixel_values=X)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


def test_compiled_default_model_trains_from_its_first_call():
    """The default 4-bit model crashed here: compiled, then a training forward and backward as its first call."""
    torch._dynamo.reset()
    fresh = get_peft_model(base(), UPetuConfig(bits=4, init_weights=False)).train()
    expected = copy.deepcopy(fresh)
    loss = torch.compile(fresh, backend="aot_eager")(pixel_values=X, labels=Y).loss
    loss.backward()
    eager = expected(pixel_values=X, labels=Y).loss
    eager.backward()
    torch.testing.assert_close(loss, eager)
    grads = {n: p.grad for n, p in expected.named_parameters() if p.grad is not None}
    assert grads
    for name, param in fresh.named_parameters():
        if name in grads:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()
