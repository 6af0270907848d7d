"""peft's generic tuner checks (tests/test_custom_models.py upstream), mirrored for UPetu on ConvNeXt models.

Every adapter here is *trained* (or built with `init_weights=False`) before it is compared, so that scales and gates
are not at zero and a reload that lost anything would show.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_config
from peft import PeftModel, get_peft_model
from transformers import (
    ConvNextForImageClassification,
    ConvNextV2ForImageClassification,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import upetu_hf
from upetu_hf import ConvNextChangeDetectionConfig, ConvNextForChangeDetection, UPetuConfig, UPetuLayer
from upetu_hf.tuner import QuantizedParameter
from upetu_hf.tuner.config import format_metadata

OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of one of the four supported kinds; the same seed gives the same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "v1":
            return ConvNextForImageClassification(tiny_config(1)).eval()
        if kind == "v2":
            return ConvNextV2ForImageClassification(tiny_config(2)).eval()
        if kind == "upernet":
            config = UperNetConfig(
                backbone_config=tiny_config(1, out_features=OUT_FEATURES),
                num_labels=3,
                hidden_size=16,
                auxiliary_channels=8,
            )
            return UperNetForSemanticSegmentation(config).eval()
        config = ConvNextChangeDetectionConfig(
            backbone_config=tiny_config(2).to_dict(), decoder_hidden_size=16
        )
        return ConvNextForChangeDetection(config).eval()


def inputs(kind: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 64, 64, generator=g).to(dtype)
    if kind == "change":
        return {"pixel_values_a": x, "pixel_values_b": torch.randn(2, 3, 64, 64, generator=g).to(dtype)}
    return {"pixel_values": x}


def labels(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(8)
    if kind in ("v1", "v2"):
        return torch.tensor([0, 3])
    return torch.randint(0, 3 if kind == "upernet" else 2, (2, 64, 64), generator=g)


def train(model: torch.nn.Module, kind: str, steps: int = 3, **optim) -> None:
    """A few AdamW steps (lr 5e-2, large enough to move k-bit codes) on a fixed batch."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2, **optim)
    for _ in range(steps):
        model(**inputs(kind), labels=labels(kind)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def logits(model: torch.nn.Module, kind: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(kind, dtype)).logits


def trained(kind: str = "v1", **config) -> tuple[PeftModel, torch.Tensor]:
    model = get_peft_model(build(kind), UPetuConfig(**config))
    train(model, kind)
    return model, logits(model, kind)


def assert_not_identity(model: PeftModel, kind: str) -> None:
    """The adapter must change the outputs, or a reload test could not fail."""
    with model.disable_adapter():
        base = logits(model, kind)
    assert (logits(model, kind) - base).abs().max() > 1e-4


# -- save / load --------------------------------------------------------------------------------------------------

RELOAD_CASES = [
    *[("v1", {"bits": b}) for b in (1, 2, 4, 8, 32)],
    *[("v1", {"bits": 2, "side_bits": s}) for s in (8, 16, 32)],
    ("v1", {"bits": 4, "codebook": "quantile"}),
    ("v1", {"bits": 1, "conv_kernel": 3}),
    ("upernet", {"bits": 4, "conv_kernel": 3}),
    ("v2", {"bits": 2, "norm_affine": True}),
    ("v2", {"bits": 1}),
    ("v2", {"bits": 4, "codebook": "quantile", "side_bits": 16}),
    ("upernet", {"bits": 2}),
    ("change", {"bits": 1}),
    ("change", {"bits": 32}),
]


@pytest.mark.parametrize("kind, config", RELOAD_CASES, ids=lambda v: str(v))
def test_trained_adapter_reloads_bit_identical(tmp_path, kind, config):
    model, expected = trained(kind, **config)
    assert_not_identity(model, kind)
    model.save_pretrained(tmp_path / "a")
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(
            build(kind), tmp_path / "a", low_cpu_mem_usage=low_cpu_mem_usage
        ).eval()
        if kind == "upernet" and low_cpu_mem_usage:
            # peft's low_cpu_mem_usage path reloads UperNet's BatchNorm head (modules_to_save) with ~1e-6 float
            # differences, LoRA included; the UPetu part, the backbone feature maps, must still be exact
            with torch.no_grad():
                got, want = (
                    m.base_model.model.backbone(**inputs(kind)).feature_maps for m in (loaded, model)
                )
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert torch.allclose(logits(loaded, kind), expected, atol=1e-5)
            continue
        assert torch.equal(logits(loaded, kind), expected), f"low_cpu_mem_usage={low_cpu_mem_usage}"
    # load then save again: byte-identical weights file (quantization is idempotent on decoded weights)
    loaded.save_pretrained(tmp_path / "b")
    first = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    assert (tmp_path / "b" / "adapter_model.safetensors").read_bytes() == first


@pytest.mark.parametrize("bits", [1, 4, 32])
def test_reloaded_state_dict_holds_the_quantized_values(tmp_path, bits):
    """What a k-bit file keeps (README, "What is exact"): after a reload every latent tensor is the value the trained
    latent quantized to, so peft's raw state-dict comparisons across a save hold at 32 bits only."""
    model, _ = trained("v1", bits=bits)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(build("v1"), tmp_path).eval()
    quantized = dict(loaded.named_modules())
    changed = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, QuantizedParameter):
                after = quantized[name].latent
                assert torch.equal(after, module()), name
                changed += not torch.equal(after, module.latent)
    assert (changed == 0) == (bits == 32)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 32])
def test_reload_for_training_starts_exactly_at_the_saved_model(tmp_path, bits):
    """`is_trainable=True`, a train-mode forward with grad enabled (no drop path) gives the saved eval outputs."""
    model, expected = trained("v1", bits=bits)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(build("v1"), tmp_path, is_trainable=True).train()
    assert any(p.requires_grad for n, p in loaded.named_parameters() if ".upetu_" in n)
    out = loaded(**inputs("v1")).logits
    assert out.requires_grad and torch.equal(out.detach(), expected)
    # ... and continues training from there
    before = {n: p.detach().clone() for n, p in loaded.named_parameters() if p.requires_grad}
    train(loaded, "v1", steps=2)
    assert any(not torch.equal(p, before[n]) for n, p in loaded.named_parameters() if p.requires_grad)
    assert not torch.equal(logits(loaded, "v1"), expected)


def adapters_round_trip(model: PeftModel, dtype: torch.dtype) -> PeftModel:
    """Cast only the adapters to `dtype` and back (the base weights would lose precision themselves)."""
    for layer in model.modules():
        if isinstance(layer, UPetuLayer):
            for container in (layer.upetu_eqam, layer.upetu_capm):
                container.to(dtype).to(torch.float32)
    return model


@pytest.mark.parametrize("bits", [1, 4, 8, 32])
def test_moves_copies_and_save_cycles_do_not_change_outputs(tmp_path, bits):
    model, _ = trained("v1", bits=bits)
    model.save_pretrained(tmp_path / "0")
    loaded = PeftModel.from_pretrained(build("v1"), tmp_path / "0").eval()
    expected = logits(loaded, "v1")
    moved = [
        lambda m: m.to(torch.float64).to(torch.float32),
        lambda m: m.to("cpu"),
        copy.deepcopy,
        lambda m: (m(**inputs("v1")), m)[1],  # a grad-enabled forward
    ]
    if bits != 32:  # float32 values do not survive a half-precision round trip; k-bit codes and int8 ones do
        moved += [
            lambda m, dtype=dtype: adapters_round_trip(m, dtype) for dtype in (torch.float16, torch.bfloat16)
        ]
    for move in moved:
        loaded = move(loaded)
        assert torch.equal(logits(loaded.eval(), "v1"), expected)
    for cycle in range(1, 4):  # save / reload cycles do not drift
        loaded.save_pretrained(tmp_path / str(cycle))
        loaded = PeftModel.from_pretrained(build("v1"), tmp_path / str(cycle)).eval()
        assert torch.equal(logits(loaded, "v1"), expected), f"cycle {cycle}"


# -- the forward value is never stale -----------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["fused", "foreach", "ema_data_write"])
def test_eval_follows_every_update_path(update):
    model = get_peft_model(build("v1"), UPetuConfig(bits=2, init_weights=False))
    previous = logits(model, "v1")
    for _ in range(2):
        if update == "ema_data_write":
            for param in model.parameters():
                if param.requires_grad:
                    param.data = 0.5 * param.data + 0.5 * torch.randn_like(param)
        else:
            train(model, "v1", steps=1, **{update: True})
        current = logits(model, "v1")
        fresh = copy.deepcopy(model)  # a copy quantizes its latents from scratch
        assert torch.equal(current, logits(fresh, "v1"))
        assert not torch.equal(current, previous)
        previous = current


def test_inference_mode_then_training():
    model = get_peft_model(build("v1"), UPetuConfig(bits=1))
    with torch.inference_mode():
        model(**inputs("v1"))
    train(model, "v1", steps=2)
    with torch.inference_mode():
        out = model(**inputs("v1")).logits
    assert torch.equal(out, logits(model, "v1"))


# -- half precision -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("autocast_adapter_dtype", [True, False])
def test_half_precision_base_model(tmp_path, dtype, autocast_adapter_dtype):
    model = get_peft_model(
        build("v1").to(dtype),
        UPetuConfig(bits=4, init_weights=False),
        autocast_adapter_dtype=autocast_adapter_dtype,
    )
    adapter_dtypes = {p.dtype for n, p in model.named_parameters() if ".upetu_" in n}
    assert adapter_dtypes == {torch.float32 if autocast_adapter_dtype else dtype}
    out = logits(model, "v1", dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    with model.disable_adapter():
        assert not torch.equal(logits(model, "v1", dtype), out)
    model.train()
    loss = model(**inputs("v1", dtype), labels=labels("v1")).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # the same adapter loaded onto a half-precision base: identical outputs
    model.eval().save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(
        build("v1").to(dtype), tmp_path, autocast_adapter_dtype=autocast_adapter_dtype
    ).eval()
    assert torch.equal(logits(loaded, "v1", dtype), logits(model, "v1", dtype))


def test_float32_model_under_autocast():
    model, _ = trained("v1", bits=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logits(model, "v1")
        model.train()
        loss = model(**inputs("v1"), labels=labels("v1")).loss
    loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all() and torch.isfinite(loss)
    assert (out.float() - logits(model.eval(), "v1")).abs().max() < 0.1


# -- several adapters, disable, delete, unload, only adapter parameters change ----------------------------------


def test_several_active_adapters_add_their_effects():
    model = get_peft_model(build("v1"), UPetuConfig(bits=2, init_weights=False, use_capm=False))
    model.add_adapter(
        "other", UPetuConfig(bits=4, r=4, init_weights=False, use_capm=False, modules_to_save=[])
    )
    with model.disable_adapter():
        base = logits(model, "v1")
    model.base_model.set_adapter(["default", "other"])
    both = logits(model, "v1")
    model.set_adapter("default")
    one = logits(model, "v1")
    model.set_adapter("other")
    other = logits(model, "v1")
    assert len({base.sum().item(), both.sum().item(), one.sum().item(), other.sum().item()}) == 4
    # a layer with both adapters active adds both EQAM deltas
    layer = next(m for m in model.modules() if isinstance(m, UPetuLayer))
    layer.set_adapter(["default", "other"])
    u = torch.randn(1, 4, 4, layer.in_features)
    delta = layer.upetu_eqam["default"](u) + layer.upetu_eqam["other"](u)
    assert torch.allclose(delta, sum(layer.upetu_eqam[n](u) for n in layer.active_adapters))


def test_disable_delete_unload_and_layer_widths():
    base = build("v1")
    reference = logits(base, "v1")
    model, trained_out = trained("v1", bits=1)
    with model.disable_adapter():
        assert not torch.equal(logits(model, "v1"), trained_out)
        with torch.no_grad():
            pooled = model(**inputs("v1"), output_hidden_states=True).hidden_states[-1]
            assert torch.equal(pooled, base(**inputs("v1"), output_hidden_states=True).hidden_states[-1])
    layer = next(m for m in model.modules() if isinstance(m, UPetuLayer))
    assert layer.in_features == layer.out_features == layer.base_layer.dwconv.in_channels
    model.add_adapter("extra", UPetuConfig(bits=4, modules_to_save=[]))
    model.delete_adapter("extra")
    assert torch.equal(logits(model, "v1"), trained_out)
    unloaded = model.unload()
    assert not any(isinstance(m, UPetuLayer) for m in unloaded.modules())
    with torch.no_grad():
        assert torch.equal(
            unloaded.convnext(**inputs("v1")).pooler_output, base.convnext(**inputs("v1")).pooler_output
        )
    assert not torch.equal(reference, trained_out)


@pytest.mark.parametrize("kind", ["v1", "upernet", "change"])
def test_only_adapter_parameters_change(kind):
    model = get_peft_model(build(kind), UPetuConfig(bits=1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, kind, steps=2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert all(".upetu_" in n or ".modules_to_save." in n for n in trainable)


# -- peft conventions and clear errors ----------------------------------------------------------------------------


def test_peft_type_is_an_enum_member_and_json_is_unchanged(tmp_path):
    from peft.utils.hotswap import hotswap_adapter

    model, _ = trained("v1", bits=1)
    assert model.get_model_status().peft_types == {"default": "UPETU"}
    assert model.peft_config["default"].peft_type.value == "UPETU"
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "UPETU"
    with pytest.raises(ValueError) as err:  # peft's own clear error, not an AttributeError
        hotswap_adapter(model, str(tmp_path), adapter_name="default")
    assert not isinstance(err.value, AttributeError)


def test_merging_and_weighted_sums_raise_one_clear_error():
    model, _ = trained("v1", bits=1)
    errors = []
    for call in (model.merge_and_unload, model.merge_adapter, lambda: model.base_model.merge_adapter(),
                 lambda: next(m for m in model.modules() if isinstance(m, UPetuLayer)).merge()):  # fmt: skip
        with pytest.raises(ValueError, match="cannot be merged") as err:
            call()
        errors.append(type(err.value))
    assert set(errors) == {ValueError}
    model.add_adapter("other", UPetuConfig(modules_to_save=[]))
    with pytest.raises(ValueError, match="add_weighted_adapter"):
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "mix")


def test_init_weights_false_is_not_the_identity():
    model = get_peft_model(build("v1"), UPetuConfig(init_weights=False))
    assert_not_identity(model, "v1")
    identity = get_peft_model(build("v1"), UPetuConfig())
    with identity.disable_adapter():
        base = logits(identity, "v1")
    assert torch.equal(logits(identity, "v1"), base)


def test_int8_checkpoint_into_float_config_is_refused(tmp_path):
    model, _ = trained("v1", bits=2, side_bits=8)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["side_bits"] = 32
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"torch.int8 \+ stats.*Int8Codec|FloatCodec\(32 bits\).*torch.float32"
    ):
        PeftModel.from_pretrained(build("v1"), tmp_path)


def test_recorded_format_must_match_the_config(tmp_path):
    from safetensors.torch import load_file, save_file

    model, _ = trained("v1", bits=2)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    metadata = format_metadata(UPetuConfig(bits=2, codebook="quantile"))
    save_file(load_file(path), path, metadata=metadata)
    with pytest.raises(ValueError, match=r"codebook='quantile' in the weights, 'lloyd' in the config"):
        PeftModel.from_pretrained(build("v1"), tmp_path)
    save_file(load_file(path), path, metadata={**metadata, "upetu_format_version": "1"})
    with pytest.raises(ValueError, match="format version 1"):
        PeftModel.from_pretrained(build("v1"), tmp_path)
    save_file(load_file(path), path, metadata=format_metadata(UPetuConfig(bits=2)))
    assert torch.equal(logits(PeftModel.from_pretrained(build("v1"), tmp_path), "v1"), logits(model, "v1"))


@pytest.mark.parametrize(
    ("version", "bits", "readable"),
    [("4", 1, False), ("4", 2, True), ("4", 4, True), ("3", 4, True), ("3", 2, False), ("3", 1, False)],
)
def test_older_files_load_only_where_their_tensors_are_unchanged(tmp_path, version, bits, readable):
    """Version 5 changed 1-bit weights (derived magnitudes), version 4 added column scales at 2 bits: an older file
    whose bit width holds exactly what version 5 writes loads bit-identically, any other is refused clearly."""
    from safetensors.torch import load_file, save_file

    model, _ = trained("v1", bits=bits)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    metadata = {**format_metadata(UPetuConfig(bits=bits)), "upetu_format_version": version}
    save_file(load_file(path), path, metadata=metadata)
    if readable:
        assert torch.equal(
            logits(PeftModel.from_pretrained(build("v1"), tmp_path), "v1"), logits(model, "v1")
        )
    else:
        with pytest.raises(ValueError, match=f"format version {version} at {bits} bits.*reads version 5"):
            PeftModel.from_pretrained(build("v1"), tmp_path)


def test_adapter_for_other_depths_is_refused(tmp_path):
    model, _ = trained("v1", bits=1)
    model.save_pretrained(tmp_path)
    deeper = ConvNextForImageClassification(tiny_config(1, depths=[1, 1, 3, 1]))
    with pytest.raises(ValueError, match=r"does not fit this model: .*missing .*stages\.2\.layers\.2"):
        PeftModel.from_pretrained(deeper, tmp_path)


def test_excluding_the_last_block_keeps_the_stage_prompt():
    model = get_peft_model(build("v1"), UPetuConfig(exclude_modules=r".*stages\.2\.layers\.1"))
    capm = {
        n.split(".upetu_capm")[0].split("convnext.")[1]
        for n, _ in model.named_modules()
        if n.endswith("upetu_capm.default")
    }
    assert "encoder.stages.2.layers.1" in capm and len(capm) == 4
    eqam = {n.split(".upetu_eqam")[0] for n, _ in model.named_modules() if n.endswith("upetu_eqam.default")}
    assert not any(n.endswith("stages.2.layers.1") for n in eqam) and len(eqam) == 4


def test_target_modules_matching_nothing_is_an_error():
    with pytest.raises(
        ValueError, match=r"target_modules=\['stage\.2\.layers\.0'\] matches no ConvNeXt block"
    ):
        get_peft_model(build("v1"), UPetuConfig(target_modules=["stage.2.layers.0"]))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"bits": 4.0}, "bits"), ({"bits": True}, "bits"), ({"prompt_size": True}, "prompt_size"),
     ({"r": 16.0}, "r"), ({"side_bits": 8.0}, "side_bits"), ({"init_weights": 1}, "init_weights")],
)  # fmt: skip
def test_config_refuses_floats_and_bools(kwargs, field):
    with pytest.raises(ValueError, match=rf"UPetuConfig\.{field}=.*allowed values"):
        UPetuConfig(**kwargs)


def test_import_registers_the_enum_type():
    assert upetu_hf.UPetuConfig().peft_type is upetu_hf.tuner.PEFT_TYPE


def test_a_folder_mixing_two_saves_is_refused_by_peft_loading(tmp_path):
    """`save_adapter` writes `manifest.json` last; `PeftModel.from_pretrained` itself refuses weights from another
    save, even when they have the same format and shapes (only the manifest can tell)."""
    first, _ = trained("v1", bits=1)
    second = get_peft_model(build("v1"), UPetuConfig(bits=1, init_weights=False))
    upetu_hf.save_adapter(first, tmp_path / "a")
    upetu_hf.save_adapter(second, tmp_path / "b")
    assert torch.equal(
        logits(PeftModel.from_pretrained(build("v1"), tmp_path / "a"), "v1"), logits(first, "v1")
    )
    weights = "adapter_model.safetensors"
    (tmp_path / "a" / weights).write_bytes((tmp_path / "b" / weights).read_bytes())
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors differs .*manifest\.json.*cut short"):
        PeftModel.from_pretrained(build("v1"), tmp_path / "a")


def test_eqam_depthwise_convolution_option():
    """`conv_kernel=3`: a 3x3 depthwise convolution on the r bottleneck channels, starting as the identity (so the
    adapter equals the pointwise one at init), trained, counted, and mixing neighbouring pixels."""
    with pytest.raises(ValueError, match="conv_kernel"):
        UPetuConfig(conv_kernel=4)
    torch.manual_seed(0)
    plain = get_peft_model(build("v1"), UPetuConfig(init_weights=False))
    torch.manual_seed(0)
    conv = get_peft_model(build("v1"), UPetuConfig(init_weights=False, conv_kernel=3))
    eqams = [m for m in conv.modules() if type(m).__name__ == "EQAM"]
    r = conv.peft_config["default"].r
    assert eqams and all(tuple(e.conv.latent.shape) == (r, 1, 3, 3) for e in eqams)
    extra = sum(p.numel() for n, p in conv.named_parameters() if p.requires_grad) - sum(
        p.numel() for n, p in plain.named_parameters() if p.requires_grad
    )
    assert extra == len(eqams) * r * 9
    # identity kernels: the same outputs as the pointwise adapter with the same weights
    assert torch.equal(logits(conv, "v1"), logits(plain, "v1"))
    # a non-identity kernel mixes pixels: an input change at one pixel reaches its neighbours through EQAM
    eqam = eqams[0]
    with torch.no_grad():
        eqam.conv.latent.fill_(0.25)
        u = torch.zeros(1, 5, 5, eqam.down.weight.latent.shape[1])
        u[0, 2, 2] = 1.0
        delta = eqam(u)
    assert delta[0, 1, 1].abs().sum() > 0 and delta[0, 0, 0].abs().sum() == 0
    train(conv, "v1")
    assert not torch.equal(eqams[0].conv.latent, torch.full_like(eqams[0].conv.latent, 0.25))


def test_layernorm_affine_correction_option():
    """`norm_affine=True`: per-block LayerNorm corrections `LN(x) * (1 + g) + b`, identity at init, 2C values per
    adapted block, feeding the block's own MLP (so they act even with EQAM's scale at zero)."""
    with pytest.raises(ValueError, match="norm_affine"):
        UPetuConfig(norm_affine=1)
    plain = get_peft_model(build("v1"), UPetuConfig())
    model = get_peft_model(build("v1"), UPetuConfig(norm_affine=True))
    layers = [m for m in model.modules() if isinstance(m, UPetuLayer)]
    extra = sum(p.numel() for p in model.parameters() if p.requires_grad) - sum(
        p.numel() for p in plain.parameters() if p.requires_grad
    )
    assert extra == sum(2 * layer.in_features for layer in layers)
    with model.disable_adapter():
        base = logits(model, "v1")
    assert torch.equal(logits(model, "v1"), base)  # identity at init
    with torch.no_grad():
        layers[0].base_layer.layer_scale_parameter.fill_(
            1.0
        )  # a random tiny block's MLP branch is scaled by 1e-6
        with model.disable_adapter():
            base = logits(model, "v1")
        layers[0].upetu_norm["default"].bias.latent.fill_(0.5)
    # EQAM's s is still 0: the change comes through the block's MLP
    assert (logits(model, "v1") - base).abs().max() > 1e-4
    train(model, "v1")
    assert any(layer.upetu_norm["default"].gain.latent.abs().sum() > 0 for layer in layers)
