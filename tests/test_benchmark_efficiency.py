"""Smoke test of scripts/benchmark_efficiency.py on a tiny ConvNeXt (depths 1-1-1-1, widths 8-16-32-64)."""

from __future__ import annotations

import importlib
import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest
from transformers import ConvNextConfig, ConvNextModel

from upetu_hf.train import TrainingArguments

DEPTHS, WIDTHS, LABELS = [1, 1, 1, 1], [8, 16, 32, 64], 21
STEPS = 2
LAUNCH_ROUNDS = 2
NAME = "tiny"


def load_report() -> ModuleType:
    """Import scripts/make_report.py as a module (the benchmark imports it too)."""
    return importlib.import_module("make_report")


def load_script() -> ModuleType:
    """Import the benchmark script as a module (pytest puts scripts/ on the path)."""
    return importlib.import_module("benchmark_efficiency")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """Run the benchmark once on the tiny model; return the returned results, the JSON written, and its path."""
    out = tmp_path_factory.mktemp("bench") / "efficiency.json"
    bench = load_script()
    results = bench.main(
        [
            "--models", NAME,
            "--steps", str(STEPS),
            "--batch-size", "2",
            "--image-size", "64",
            "--threads", "1",
            "--launch-rounds", str(LAUNCH_ROUNDS),
            "--output", str(out),
        ]
    )  # fmt: skip
    return results, json.loads(out.read_text()), out


def expected_trainable_without_head() -> dict[str, int]:
    """Trainable parameters outside the head, computed from the architecture by hand."""
    blocks = [(d, c) for d, c in zip(DEPTHS, WIDTHS)]
    per_block = lambda f: sum(d * f(c) for d, c in blocks)  # noqa: E731
    backbone = sum(
        p.numel() for p in ConvNextModel(ConvNextConfig(depths=DEPTHS, hidden_sizes=WIDTHS)).parameters()
    )
    r, m = 16, 4
    capm = sum(c * m * m + 9 * c + c for c in WIDTHS)
    upetu = per_block(lambda c: 2 * r * c + c) + capm  # 32 bits: W_down, W_up, s
    upetu_kbit = upetu + per_block(lambda c: r)  # 4 bits: plus the learned row scale of W_down
    upetu_1bit = upetu  # 1 bit: the magnitudes are derived from the latent weights, not learned
    return {
        "full": backbone,
        "linear_probe": 0,
        "lora_r8": per_block(lambda c: 10 * 8 * c),
        "lora_r16": per_block(lambda c: 10 * 16 * c),
        "ia3": per_block(lambda c: 8 * c),
        "upetu_1bit": upetu_1bit,
        "upetu_4bit": upetu_kbit,
        "upetu_32bit": upetu,
    }


def test_every_method_and_counts(run: tuple[dict, dict, Path]) -> None:
    _, data, _ = run
    model = data["models"][NAME]
    methods = model["methods"]
    expected = expected_trainable_without_head()
    head = WIDTHS[-1] * LABELS + LABELS
    assert list(methods) == list(expected)
    assert model["backbone_params"] == expected["full"]
    assert model["head_params"] == head
    for name, count in expected.items():
        entry = methods[name]
        assert entry["trainable_params_without_head"] == count, name
        assert entry["trainable_params"] == count + head, name
        assert entry["trainable_pct_of_backbone"] == pytest.approx(100.0 * count / expected["full"])
    assert methods["full"]["trainable_pct_of_backbone"] == pytest.approx(100.0)
    assert methods["linear_probe"]["trainable_pct_of_backbone"] == 0.0
    assert methods["upetu_1bit"]["upetu_parameter_counts"]["adapter"] == expected["upetu_1bit"]


def test_disk_sizes(run: tuple[dict, dict, Path]) -> None:
    _, data, _ = run
    methods = data["models"][NAME]["methods"]
    head_bytes = (WIDTHS[-1] * LABELS + LABELS) * 4
    for name, entry in methods.items():
        assert entry["disk_bytes_with_head"] >= entry["disk_bytes_without_head"] + head_bytes, name
    assert methods["full"]["file"] == "model.safetensors"
    assert methods["full"]["disk_bytes_without_head"] >= 4 * data["models"][NAME]["backbone_params"]
    assert methods["linear_probe"]["disk_bytes_without_head"] == 0
    assert methods["lora_r8"]["file"] == "adapter_model.safetensors"
    sizes = [methods[f"upetu_{k}bit"]["disk_bytes_without_head"] for k in (1, 4, 32)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert sizes[0] < methods["lora_r8"]["disk_bytes_without_head"]
    assert methods["lora_r8"]["disk_bytes_without_head"] < methods["lora_r16"]["disk_bytes_without_head"]


def test_timings_memory_and_ratios(run: tuple[dict, dict, Path]) -> None:
    _, data, _ = run
    model = data["models"][NAME]
    for name, entry in model["methods"].items():
        assert len(entry["train_step_s"]) == STEPS and min(entry["train_step_s"]) > 0, name
        assert len(entry["inference_s"]) == STEPS and entry["inference_ratio"]["median"] > 0, name
        assert (
            entry["memory"]["peak_bytes"]
            == entry["memory"]["static_bytes"] + entry["memory"]["step_peak_increase_bytes"]
        )
        assert entry["memory"]["step_peak_increase_bytes"] > 0, name
    methods = model["methods"]
    params = model["base_params"]
    # Full fine-tuning keeps weights and two AdamW moments, and allocates gradients for every weight.
    assert methods["full"]["memory"]["static_bytes"] >= 3 * 4 * params
    assert methods["full"]["memory"]["step_peak_increase_bytes"] >= 4 * model["backbone_params"]
    assert methods["full"]["memory"]["peak_bytes"] > methods["upetu_1bit"]["memory"]["peak_bytes"]
    assert methods["upetu_1bit"]["memory"]["peak_bytes"] > methods["linear_probe"]["memory"]["peak_bytes"]
    # Ratios pair the samples of the same round: the median of per-round ratios, not a ratio of medians.
    for name, entry in methods.items():
        for ref in ("full", "lora_r8"):
            per_round = [a / b for a, b in zip(entry["train_step_s"], methods[ref]["train_step_s"])]
            assert model["ratios"][name][f"train_step_vs_{ref}"] == pytest.approx(
                statistics.median(per_round)
            )
            assert model["ratios"][name][f"peak_memory_vs_{ref}"] == pytest.approx(
                entry["memory"]["peak_bytes"] / methods[ref]["memory"]["peak_bytes"]
            )
        same_round = [m / b for m, b in zip(entry["inference_s"], model["base_inference_s"])]
        assert entry["inference_ratio"]["median"] == pytest.approx(statistics.median(same_round)), name
    assert model["ratios"]["upetu_1bit"]["disk_without_head_vs_lora_r8"] == pytest.approx(
        methods["upetu_1bit"]["disk_bytes_without_head"] / methods["lora_r8"]["disk_bytes_without_head"]
    )
    assert len(model["base_inference_s"]) == STEPS
    assert set(model["noise"]["same_architecture_inference_ratio"]) == {"full", "linear_probe"}


def test_metadata_targets_and_markdown(run: tuple[dict, dict, Path]) -> None:
    results, data, out = run
    meta = data["meta"]
    assert meta["machine"]["torch_num_threads"] == 1
    assert meta["steps"] == STEPS and meta["batch_size"] == 2 and meta["image_size"] == 64
    assert not meta["quick"] and "--threads 1" in meta["command"]
    assert {"cpu_model", "cpu_count", "torch", "peft", "transformers"} <= set(meta["machine"])
    assert data["targets"] == json.loads(json.dumps(results["targets"]))
    checked = {(t["method"], t["target"]) for t in data["targets"]}
    assert len(checked) == 3 * 6 and not any(t["primary"] for t in data["targets"])
    disk = next(t for t in data["targets"] if t["method"] == "upetu_1bit" and "200 KB" in t["target"])
    assert (
        disk["met"]
        and disk["value"] == data["models"][NAME]["methods"]["upetu_1bit"]["disk_bytes_without_head"]
    )
    markdown = out.with_suffix(".md").read_text()
    for label in (
        "Full fine-tuning",
        "Linear probe",
        "LoRA r=8",
        "LoRA r=16",
        "IA3",
        "UPetu 1-bit",
        "UPetu 32-bit",
    ):
        assert f"| {label} |" in markdown
    # The docs' part (`efficiency_lines`) is the markdown's section of the model under a smaller heading, after
    # the command; no targets, none of them being primary.
    docs = "\n".join(load_report().efficiency_lines(data))
    model_section = markdown.split("\n## ")[1].rstrip("\n")
    assert model_section.startswith(f"{NAME} (depths 1-1-1-1") and f"\n##### {model_section}" in docs
    assert docs.startswith(f"From `results/efficiency.json` (`{meta['command']}`)") and "Targets" not in docs


def test_launch_bound_regime(run: tuple[dict, dict, Path]) -> None:
    """Op counts of a training step and of a loaded adapter's inference for every method, as positive integers with
    their ratio to LoRA r=8; batch-1 latency of every method, bracketed by base runs; both tables rendered."""
    _, data, out = run
    model = data["models"][NAME]
    launch, methods = model["launch_bound"], model["methods"]
    assert (launch["image_size"], launch["ops_batch_size"], launch["latency_batch_size"]) == (32, 2, 1)
    assert launch["threads"] == 1 and launch["rounds"] == LAUNCH_ROUNDS == data["meta"]["launch_rounds"]
    assert data["meta"]["launch_bound"] is True
    base_ops, lora = launch["base_inference_ops"], methods["lora_r8"]["launch_bound"]
    assert isinstance(base_ops, int) and base_ops > 0
    assert launch["base_inference_ops_vs_lora_r8"] == pytest.approx(base_ops / lora["loaded_inference_ops"])
    # Each method run is bracketed by base runs: one more base run than method runs.
    assert len(launch["base_latency_s"]) == 1 + LAUNCH_ROUNDS * len(methods)
    for name, entry in methods.items():
        bound = entry["launch_bound"]
        for key in ("train_step_ops", "loaded_inference_ops"):
            assert isinstance(bound[key], int) and bound[key] > 0, (name, key)
            assert bound[f"{key}_vs_lora_r8"] == pytest.approx(bound[key] / lora[key]), (name, key)
        assert bound["loaded_inference_ops"] >= base_ops, name
        assert len(bound["batch1_latency_s"]) == len(bound["batch1_latency_ratio_samples"]) == LAUNCH_ROUNDS
        assert bound["batch1_latency_ratio"]["median"] > 0, name
    # Full fine-tuning and the linear probe load the base architecture back; the adapters add ops to it.
    assert methods["full"]["launch_bound"]["loaded_inference_ops"] == base_ops
    assert methods["linear_probe"]["launch_bound"]["loaded_inference_ops"] == base_ops
    assert all(
        methods[n]["launch_bound"]["loaded_inference_ops"] > base_ops for n in ("lora_r8", "upetu_1bit")
    )
    assert lora["train_step_ops_vs_lora_r8"] == lora["loaded_inference_ops_vs_lora_r8"] == 1.0
    row = f"| LoRA r=8 | {lora['train_step_ops']:,} | 1.00x | {lora['loaded_inference_ops']:,} | 1.00x |"
    header = "| method | train-step ops | x LoRA r=8 | loaded-inference ops | x LoRA r=8 | batch-1 latency vs base |"
    readme_section = "\n".join(load_report().efficiency_lines(data))
    for markdown in (out.with_suffix(".md").read_text(), readme_section):
        assert "Launch-bound regime (batch 1 / op counts)" in markdown and header in markdown
        assert row in markdown and f"| Base model (no adapter) | - | - | {base_ops:,} |" in markdown


def test_bracketed_latency_divides_each_run_by_its_two_neighbouring_base_runs(monkeypatch) -> None:
    """Every round runs base, m1, base, m2, ..., base with the methods rotated; a method's ratio uses the mean of
    the base runs just before and after it."""
    bench = load_script()
    monkeypatch.setattr(bench, "timed", lambda fn, device: fn())  # a call's "time" is what it returns
    base_times = iter([1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0])
    order: list[str] = []

    def method(name: str, seconds: float):
        return lambda: order.append(name) or seconds

    calls = {"a": method("a", 8.0), "b": method("b", 12.0)}
    seconds, ratios, base_runs = bench.bracketed_latency(lambda: next(base_times), calls, 2, "cpu", "m")
    assert order == ["a", "b", "a", "b", "b", "a"]  # warm-up, then rounds rotated by one
    assert base_runs == [3.0, 5.0, 7.0, 9.0, 11.0]  # the first base value was the warm-up
    assert seconds == {"a": [8.0, 8.0], "b": [12.0, 12.0]}
    assert ratios == {"a": [8.0 / 4.0, 8.0 / 10.0], "b": [12.0 / 6.0, 12.0 / 8.0]}


@pytest.mark.parametrize("name", ["full", "linear_probe", "upetu_1bit"])
def test_saved_methods_load_back_as_a_user_loads_them(tmp_path: Path, name: str) -> None:
    """`load_method` rebuilds a trained model from what `save_method` wrote: same logits, frozen, in eval mode."""
    import torch

    bench = load_script()
    base = bench.build_base("tiny", seed=0).eval()
    model = bench.wrap_method(name, base)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))  # trained weights differ from the base model's
    bench.save_method(name, model, tmp_path)
    loaded = bench.load_method(name, base, tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected, got = model.eval()(pixel_values=pixels).logits, loaded(pixel_values=pixels).logits
    assert not loaded.training and torch.allclose(got, expected, atol=1e-5)
    if name != "full":
        assert not torch.allclose(got, base(pixel_values=pixels).logits)


def test_methods_are_built_as_the_training_api_builds_them() -> None:
    """One code path: the benchmark's LoRA is `upetu-train --method lora`'s (alpha = 2r), and so on."""
    bench = load_script()
    base = bench.build_base("tiny", seed=0)
    args = dict(task="classification", model="m", data="d", output_dir="o")
    for name, method, options in (
        ("lora_r8", "lora", {"r": 8}),
        ("ia3", "ia3", {}),
        ("upetu_1bit", "upetu", {"bits": 1}),
    ):
        built = bench.wrap_method(name, base).peft_config["default"]
        expected = TrainingArguments(**args, method=method, **options).peft_config(["classifier"])
        assert built.to_dict() == expected.to_dict(), name
    assert bench.wrap_method("lora_r16", base).peft_config["default"].lora_alpha == 32
    trainable = {n for n, p in bench.wrap_method("linear_probe", base).named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}


def test_bad_arguments_are_rejected() -> None:
    bench = load_script()
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "full,dora"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "convnext-xl"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--launch-rounds", "0"])
    defaults = bench.parse_args([])
    assert defaults.launch_bound and defaults.launch_rounds == 15
    assert not bench.parse_args(["--no-launch-bound"]).launch_bound
    quick = bench.parse_args(["--quick"])
    assert quick.models == ["convnext-t"] and quick.steps < 10 and quick.image_size < 224


def test_bf16_autocast_runs_the_forward_passes_in_bf16() -> None:
    """`--mixed-precision bf16`: the training and inference forwards run under bf16 autocast (the logits come out
    in bf16), parameters stay float32; the setting is parsed and recorded with the other settings."""
    import torch

    bench = load_script()
    model = bench.wrap_method("upetu_1bit", bench.build_base("tiny", seed=0)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    method = bench.Method("upetu_1bit", model, optimizer)
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    seen: list[torch.dtype] = []
    handle = model.register_forward_hook(lambda module, inputs, output: seen.append(output.logits.dtype))
    bench.train_step(method, pixels, labels, "bf16")
    bench.train_step(method, pixels, labels, "no")
    handle.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert bench.parse_args(["--mixed-precision", "bf16"]).mixed_precision == "bf16"
    assert bench.parse_args([]).mixed_precision == "no" and "mixed_precision" in bench.SETTINGS
    with pytest.raises(SystemExit):
        bench.parse_args(["--mixed-precision", "fp16"])
