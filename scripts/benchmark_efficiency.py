#!/usr/bin/env python
"""Efficiency benchmark of UPetu against full fine-tuning, linear probing, LoRA and IA3 on ConvNeXt-T/B.

Every method starts from the same randomly initialised `ConvNextForImageClassification` and is measured in one
process, interleaved (the order rotated each round) so that slow phases of a shared machine hit every method alike:
parameters and bytes on disk, with and without the head; training-step time; peak memory of a step; inference
latency against the base model; and the launch-bound regime (`--launch-bound`): op counts of a training step and of
a saved-and-loaded model's inference, and batch-1 latency. Writes `--output` (JSON) and its report
(`make_report.efficiency_markdown`, `--markdown`), whose notes say how each is measured.

    python scripts/benchmark_efficiency.py                 # full run: ConvNeXt-T and -B, every method
    python scripts/benchmark_efficiency.py --models tiny --quick --launch-rounds 3 --output /tmp/e/efficiency.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any

import _common
import torch
import transformers
from _common import CONVNEXT, REPO_ROOT, count_top_level_ops, head_bytes, log, machine_info
from _variants import VARIANTS
from make_report import efficiency_markdown
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ConvNextForImageClassification

from upetu_hf.hub import saved_file_names
from upetu_hf.train.methods import apply_method, parameter_summary

transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*Profiler clears events.*", category=UserWarning)

NUM_LABELS = 21
LINEAR_PROBE_FILE = "classifier.safetensors"
#: The models `--models` names (`_common.CONVNEXT`): ConvNeXt-T and -B, and a tiny one for quick checks.
MODELS = ("convnext-t", "convnext-b", "tiny")
#: The variants this benchmark compares (`_variants.VARIANTS`).
METHODS = ("full", "linear_probe", "lora_r8", "lora_r16", "ia3", "upetu_1bit", "upetu_4bit", "upetu_32bit")
#: The settings a run records in its `meta`, in this order.
SETTINGS = "quick models methods steps inference_runs warmup batch_size image_size lr seed".split()
SETTINGS += ["mixed_precision", "launch_bound", "launch_rounds"]
#: What `--quick` changes, unless given explicitly: ConvNeXt-T, 5 steps, batch 4 at 128 px.
QUICK = {"models": "convnext-t", "steps": 5, "batch_size": 4, "image_size": 128}
#: The benchmark issue's own target is ConvNeXt-B at 1 bit; the other UPetu variants are checked for reference.
TARGET_MODEL, TARGET_METHOD = "convnext-b", "upetu_1bit"
#: The launch-bound regime: small inputs, so that dispatching every op (on a GPU, launching its kernel) outweighs
#: its arithmetic; op counts at batch `ops_batch_size`, latency at batch `latency_batch_size` on `threads` thread.
LAUNCH = dict(image_size=32, ops_batch_size=2, latency_batch_size=1, threads=1, warmup_train_steps=3)
LAUNCH |= dict(optimizer="AdamW(foreach=True)", reference="lora_r8")
#: The code whose uncommitted changes a run records.
CODE_PATHS = ("src/upetu_hf/tuner", "src/upetu_hf/train/methods.py", "scripts/benchmark_efficiency.py")
CODE_PATHS += ("scripts/_common.py",)
#: The benchmark issue's targets, checked on every UPetu variant (`check_targets`): (target, limit, whether
#: higher is better).
TARGETS = (
    ("adapter on disk without head (bytes) <= 200 KB", 2e5, False),
    ("LoRA r=8 / UPetu size on disk (no heads) >= 25x", 25, True),
    ("training step vs LoRA r=8 <= 1.15x", 1.15, False),
    ("training step vs full fine-tuning <= 0.8x", 0.8, False),
    ("peak training memory vs full fine-tuning <= 0.8x", 0.8, False),
    ("inference latency vs base model <= 1.10x", 1.10, False),
)


@dataclass
class Method:
    """One fine-tuning method built on a copy of the base model."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer


def build_base(name: str, seed: int) -> ConvNextForImageClassification:
    """A randomly initialised ConvNeXt classifier with `NUM_LABELS` classes."""
    return _common.random_convnext(name, NUM_LABELS, seed)


def wrap_method(name: str, base: nn.Module) -> nn.Module:
    """A deep copy of `base` made trainable for method `name` by the training API's `apply_method`."""
    return apply_method(copy.deepcopy(base), VARIANTS[name].method, **VARIANTS[name].options)


def save_method(name: str, model: nn.Module, folder: Path) -> Path:
    """Save method `name`'s weights into `folder` as a user would (the linear probe: its classifier); the file."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "linear_probe":
        save_file(model.classifier.state_dict(), str(folder / LINEAR_PROBE_FILE), metadata={"format": "pt"})
        return folder / LINEAR_PROBE_FILE
    model.save_pretrained(str(folder))
    return folder / saved_file_names(adapter=name != "full")[1]  # the weights file `save_pretrained` writes


def load_method(name: str, base: nn.Module, folder: Path) -> nn.Module:
    """Method `name`'s model loaded back, in eval mode, from what `save_method` wrote into `folder`, as a user
    loads it: `from_pretrained` (on a fresh copy of `base` for PEFT), the classifier alone for the linear probe."""
    if name == "full":
        return ConvNextForImageClassification.from_pretrained(str(folder)).eval()
    model = copy.deepcopy(base)
    if name == "linear_probe":
        model.classifier.load_state_dict(load_file(str(folder / LINEAR_PROBE_FILE)))
        return model.eval()
    return PeftModel.from_pretrained(model, str(folder)).eval()


def describe(name: str, model: nn.Module, backbone: int, workdir: Path) -> dict[str, Any]:
    """A method's label, trainable parameters (all, without the head, % of `backbone`) and weights file bytes."""
    counts, path = parameter_summary(model), save_method(name, model, workdir / name)
    entry = dict(label=VARIANTS[name].label, trainable_params=counts["trainable"])
    entry |= dict(trainable_params_without_head=counts["adapter"])
    entry["trainable_pct_of_backbone"] = 100.0 * counts["adapter"] / backbone
    entry["trainable_pct_of_backbone_with_head"] = 100.0 * counts["trainable"] / backbone
    if name.startswith("upetu_"):
        entry["upetu_parameter_counts"] = model.base_model.parameter_counts()
    # the linear probe's file holds the classifier alone
    with_head, without_head = (path.stat().st_size, 0) if name == "linear_probe" else head_bytes(path)
    return entry | dict(file=path.name, disk_bytes_with_head=with_head, disk_bytes_without_head=without_head)


def autocast(device: torch.device, mixed_precision: str) -> torch.autocast:
    """bf16 autocast for `--mixed-precision bf16` (weights and AdamW state stay float32, as Accelerate's)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")


def train_step(method: Method, pixels: torch.Tensor, labels: torch.Tensor, mixed_precision: str = "no"):
    """One training step: forward (under `autocast`) with cross-entropy loss, backward, AdamW step, zero_grad."""
    with autocast(pixels.device, mixed_precision):
        loss = method.model(pixel_values=pixels, labels=labels).loss
    loss.backward()
    method.optimizer.step()
    method.optimizer.zero_grad(set_to_none=True)


def inference_call(model: nn.Module, pixels: torch.Tensor, mixed_precision="no", grad_mode=torch.no_grad):
    """One inference forward of `model` on `pixels` as a call without arguments, under `grad_mode` and `autocast`."""

    def call() -> object:
        with grad_mode(), autocast(pixels.device, mixed_precision):
            return model(pixel_values=pixels)

    return call


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of `fn()`, queued device work included."""
    synchronize = partial(torch.cuda.synchronize, device) if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def step_memory(method: Method, pixels: torch.Tensor, labels: torch.Tensor, mixed_precision: str) -> dict:
    """Bytes of the tensors a method keeps between steps (parameters, buffers, gradients, optimizer state) and the
    peak increase of allocated tensor bytes during one training step, and how it was measured."""
    tensors = [*method.model.parameters(), *method.model.buffers()]
    tensors += [p.grad for p in method.model.parameters() if p.grad is not None]
    tensors += [v for state in method.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    static = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())
    if (device := pixels.device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_step(method, pixels, labels, mixed_precision)
        torch.cuda.synchronize(device)
        increase, how = torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    else:
        cpu = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
            train_step(method, pixels, labels, mixed_precision)
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        allocated = accumulate((e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())), initial=0)
        increase, how = max(allocated), "torch.profiler allocator events (profile_memory=True)"
    return dict(static_bytes=static, step_peak_increase_bytes=increase, peak_bytes=static + increase, how=how)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min, max and relative inter-quartile range of timing samples."""
    ordered = sorted(samples)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if ordered[1:] else ordered * 3
    median = statistics.median(ordered)
    iqr = (q3 - q1) / median if median else 0.0
    return dict(median=median, q1=q1, q3=q3, min=ordered[0], max=ordered[-1], rel_iqr=iqr, n=len(ordered))


def interleaved(calls: dict[str, Callable], rounds: int, device: torch.device, what: str, after=None) -> dict:
    """Seconds of every call in each of `rounds` rounds, the order rotated by one each round; when given,
    `after(name, seconds)` runs after each timed call."""
    names, samples = list(calls), {name: [] for name in calls}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:  # rotated by one each round
            samples[name].append(timed(calls[name], device))
            if after:
                after(name, samples[name][-1])
        log(f"{what} round {index + 1}/{rounds}")
    return samples


def bracketed_latency(base_call: Callable, calls: dict[str, Callable], rounds: int, device, model_name: str):
    """After a warm-up call of each, rounds of base, m1, base, m2, ..., base (methods rotated each round): a run's
    ratio is to the mean of the two base runs around it. Returns the methods' times and ratios, the base runs."""
    for call in (base_call, *calls.values()):
        call()
    base_runs, ratios = [timed(base_call, device)], {name: [] for name in calls}

    def bracket(name: str, seconds: float) -> None:  # the base run after a method's run, and that run's ratio
        base_runs.append(timed(base_call, device))
        ratios[name].append(seconds / statistics.fmean(base_runs[-2:]))

    seconds = interleaved(calls, rounds, device, f"{model_name}: launch-bound latency", bracket)
    return seconds, ratios, base_runs


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with `torch.set_num_threads(threads)`, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def op_count(call: Callable[[], object], warmup: int = 1) -> int:
    """Top-level ATen ops of one `call()`, after `warmup` calls."""
    for _ in range(warmup):
        call()
    return count_top_level_ops(call)


def random_batch(args: argparse.Namespace, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random images (`batch` x 3 x `size` x `size`) and labels on `args.device`."""
    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(batch, 3, size, size, generator=generator).to(args.device)
    return pixels, torch.randint(0, NUM_LABELS, (batch,), generator=generator).to(args.device)


def launch_bound(base: nn.Module, built: list[Method], args: argparse.Namespace, model_name: str):
    """The launch-bound regime (`LAUNCH`), one thread: top-level ATen ops of a step (`AdamW(foreach=True)`)
    and of an inference of each model saved and loaded back, and batch-1 latency against the base model
    (`bracketed_latency`); each method's `launch_bound` entry and the model's, op counts also as ratios."""
    device, mp, reference = torch.device(args.device), args.mixed_precision, LAUNCH["reference"]
    pixels, labels = random_batch(args, LAUNCH["image_size"], LAUNCH["ops_batch_size"])
    single, methods, loaded = pixels[: LAUNCH["latency_batch_size"]], {}, {}
    infer = partial(inference_call, mixed_precision=mp, grad_mode=torch.inference_mode)
    with torch_threads(LAUNCH["threads"]), tempfile.TemporaryDirectory(prefix="upetu-bench-load-") as workdir:
        for m in built:  # a step's ops, then the model saved and loaded back as a user would, in eval mode
            trainable = [p for p in m.model.parameters() if p.requires_grad]
            counted = Method(m.name, m.model.train(), torch.optim.AdamW(trainable, lr=args.lr, foreach=True))
            step = op_count(lambda c=counted: train_step(c, pixels, labels, mp), LAUNCH["warmup_train_steps"])
            save_method(m.name, m.model, Path(workdir) / m.name)
            loaded[m.name] = load_method(m.name, base, Path(workdir) / m.name).to(device)
            ops = op_count(infer(loaded[m.name], pixels))
            methods[m.name] = dict(train_step_ops=step, loaded_inference_ops=ops)
        log(f"{model_name}: launch-bound op counts done; timing {args.launch_rounds} batch-1 latency rounds")
        calls, rounds = {n: infer(model, single) for n, model in loaded.items()}, args.launch_rounds
        seconds, ratios, base_runs = bracketed_latency(infer(base, single), calls, rounds, device, model_name)
        base_ops = op_count(infer(base, pixels))
    ref = methods.get(reference)
    for name, entry in methods.items():
        for key in ("train_step_ops", "loaded_inference_ops"):
            entry[f"{key}_vs_{reference}"] = entry[key] / ref[key] if ref else None
        entry |= {"batch1_latency_s": seconds[name], "batch1_latency_ratio_samples": ratios[name]}
        entry["batch1_latency_ratio"] = summarize(ratios[name])
    model = {**LAUNCH, "rounds": rounds, "base_inference_ops": base_ops, "base_latency_s": base_runs}
    model["base_latency"] = summarize(base_runs)
    model[f"base_inference_ops_vs_{reference}"] = base_ops / ref["loaded_inference_ops"] if ref else None
    return methods, model


def measure(base: nn.Module, built: list[Method], args: argparse.Namespace, model_name: str) -> dict:
    """Warm-up rounds, a memory-measured step per method, timed training rounds, then timed inference rounds of
    the base model and every method (ratios to the base run of the same round); the base model's under ""."""
    device, mp = torch.device(args.device), args.mixed_precision
    pixels, labels = random_batch(args, args.image_size, args.batch_size)
    steps = {m.name: partial(train_step, m, pixels, labels, mp) for m in built}
    for step in list(steps.values()) * args.warmup:  # `--warmup` rounds of every method
        step()
    out = {m.name: {"memory": step_memory(m, pixels, labels, mp)} for m in built}
    for name, samples in interleaved(steps, args.steps, device, f"{model_name}: training").items():
        out[name] |= {"train_step_s": samples, "train_step": summarize(samples)}
    calls = {"": inference_call(base, pixels, mp)}
    calls |= {m.name: inference_call(m.model.eval(), pixels, mp) for m in built}
    for call in (*list(calls.values())[1:], calls[""]):  # warm-up: quantized weights cached, allocator warm
        call()
    times = interleaved(calls, args.inference_runs, device, f"{model_name}: inference")
    base_runs = times.pop("")
    for name, samples in times.items():
        ratios = [m / b for m, b in zip(samples, base_runs)]
        out[name] |= {"inference_s": samples, "inference_base_same_round_s": base_runs}
        out[name] |= {"inference": summarize(samples)}
        out[name] |= {"inference_ratio_samples": ratios, "inference_ratio": summarize(ratios)}
    return {"": {"base_inference_s": base_runs, "base_inference": summarize(base_runs)}, **out}


def benchmark_model(model_name: str, methods: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one model size, all methods interleaved."""
    loadavg_start, wall_start, cpu_start = os.getloadavg(), time.perf_counter(), time.process_time()
    base = build_base(model_name, args.seed)
    counts = parameter_summary(base)  # nothing is frozen yet: `adapter` counts the whole backbone
    base_params, head_params, backbone_params = counts["total"], counts["head"], counts["adapter"]
    log(f"{model_name}: {base_params:,} parameters ({backbone_params:,} backbone)")
    results, built = {}, []
    with tempfile.TemporaryDirectory(prefix="upetu-bench-") as workdir:
        for name in methods:
            model = wrap_method(name, base)
            results[name] = describe(name, model, backbone_params, Path(workdir))
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
            built.append(Method(name, model.to(args.device).train(), optimizer))
    base.to(args.device).eval()
    measured = measure(base, built, args, model_name)
    launch_methods, launch = launch_bound(base, built, args, model_name) if args.launch_bound else ({}, None)
    for name in methods:
        results[name] |= measured[name] | ({"launch_bound": launch_methods[name]} if launch else {})
    # Noise: full fine-tuning and the linear probe run the base architecture, so their latency ratio should be 1.
    controls = {n: results[n]["inference_ratio"] for n in ("full", "linear_probe") if n in results}
    wall = time.perf_counter() - wall_start
    noise = dict(same_architecture_inference_ratio=controls, loadavg_start=loadavg_start)
    noise["loadavg_end"] = os.getloadavg()
    # CPU seconds this process got per wall second and thread: well below 1 when other work competes.
    noise["cpu_share"] = (time.process_time() - cpu_start) / (wall * torch.get_num_threads())
    shape = dict(depths=CONVNEXT[model_name]["depths"], widths=CONVNEXT[model_name]["hidden_sizes"])
    shape |= dict(num_labels=NUM_LABELS, base_params=base_params, backbone_params=backbone_params)
    out = shape | {"head_params": head_params} | measured[""] | {"noise": noise}
    out |= {"wall_time_s": time.perf_counter() - wall_start, "methods": results}
    out["ratios"] = {name: compare(entry, results) for name, entry in results.items()}
    return out | ({"launch_bound": launch} if launch else {})


def compare(entry: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """`entry`'s ratios to full fine-tuning and LoRA r=8: step time (median of round ratios), memory, disk."""
    out: dict[str, float | None] = {}
    for ref in (r for r in ("full", "lora_r8") if r in results):
        per_round = [a / b for a, b in zip(entry["train_step_s"], results[ref]["train_step_s"])]
        out[f"train_step_vs_{ref}"] = statistics.median(per_round)
        q1, _, q3 = statistics.quantiles(per_round, n=4, method="inclusive") if per_round[1:] else [None] * 3
        out[f"train_step_vs_{ref}_q1"], out[f"train_step_vs_{ref}_q3"] = q1, q3
        out[f"peak_memory_vs_{ref}"] = entry["memory"]["peak_bytes"] / results[ref]["memory"]["peak_bytes"]
        disk = results[ref]["disk_bytes_without_head"]
        out[f"disk_without_head_vs_{ref}"] = entry["disk_bytes_without_head"] / disk if disk else None
    return out


def check_targets(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's `TARGETS` for every UPetu variant of every model (skipped where the reference did not run)."""
    checks = []
    for model_name, data in models.items():
        for name, entry in ((n, e) for n, e in data["methods"].items() if n.startswith("upetu_")):
            primary, ratios = model_name == TARGET_MODEL and name == TARGET_METHOD, data["ratios"][name]
            disk, lora = entry["disk_bytes_without_head"], data["methods"].get("lora_r8")
            values = [disk, lora and lora["disk_bytes_without_head"] / disk]  # in the order of `TARGETS`
            values += [ratios.get(k) for k in ("train_step_vs_lora_r8", "train_step_vs_full")]
            values += [ratios.get("peak_memory_vs_full"), entry["inference_ratio"]["median"]]
            for (target, limit, higher), value in zip(TARGETS, values):
                if value is not None:
                    met = value >= limit if higher else value <= limit
                    check = {"model": model_name, "method": name, "primary": primary, "target": target}
                    checks.append(check | {"value": value, "limit": limit, "met": met})
    return checks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; `--quick` changes the defaults of the others (`QUICK`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quick = "fast partial run: ConvNeXt-T, 5 steps, batch 4, 128 px"
    parser.add_argument("--quick", action="store_true", help=quick)
    for flag, kind, default, text in (
        ("--models", str, "convnext-t,convnext-b", f"comma-separated subset of {', '.join(MODELS)}"),
        ("--methods", str, ",".join(METHODS), f"comma-separated subset of {', '.join(METHODS)}"),
        ("--steps", int, 10, "timed training steps per method (10; --quick 5)"),
        ("--inference-runs", int, None, "timed inference runs per method (default: --steps)"),
        ("--warmup", int, 1, "warm-up training rounds before the memory step"),
        ("--threads", int, None, "torch.set_num_threads (default: all CPUs)"),
        ("--device", str, "cpu", "cpu (default) or cuda"),
        ("--launch-rounds", int, 15, "interleaved rounds of the batch-1 latency (default 15)"),
        ("--output", Path, REPO_ROOT / "results" / "efficiency.json", "JSON path"),
        ("--markdown", Path, None, "markdown path (default: --output with .md)"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=text)
    options = dict(batch_size=8, image_size=224, lr=1e-3, seed=0, mixed_precision="no")
    _common.add_training_options(parser, "classification", list(options), **options)
    launch = "measure the launch-bound regime: op counts, batch-1 latency at 32 px on 1 thread (default: on)"
    parser.add_argument("--launch-bound", action=argparse.BooleanOptionalAction, default=True, help=launch)
    if parser.parse_args(argv).quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    args.models, args.methods = args.models.split(","), args.methods.split(",")
    args.inference_runs = args.steps if args.inference_runs is None else args.inference_runs
    for kind, names, allowed in (("methods", args.methods, METHODS), ("models", args.models, MODELS)):
        if unknown := [n for n in names if n not in allowed]:
            parser.error(f"unknown {kind} {unknown}: allowed values are {', '.join(allowed)}")
    if min(args.steps, args.inference_runs, args.launch_rounds) < 1:
        parser.error("--steps, --inference-runs and --launch-rounds must be at least 1")
    if args.mixed_precision not in ("no", "bf16"):
        parser.error("--mixed-precision: this benchmark autocasts to bf16 or not at all")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was requested but CUDA is not available")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON and markdown reports, and return the results."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads or _common.cpus_available())
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python scripts/benchmark_efficiency.py", *argv_list])
    meta: dict[str, Any] = {"command": command, "argv": argv_list, "date": _common.now()}
    meta |= {key: getattr(args, key) for key in SETTINGS}
    meta |= {"machine": machine_info(args.device), "git": _common.git_state(CODE_PATHS)}
    models = {name: benchmark_model(name, args.methods, args) for name in args.models}
    meta["wall_time_s"] = time.perf_counter() - started
    results = {"meta": meta, "models": models, "targets": check_targets(models)}
    _common.write_json_atomic(args.output, results)  # creates the folder
    markdown = args.markdown or args.output.with_suffix(".md")
    _common.write_text_atomic(markdown, efficiency_markdown(results, (TARGET_MODEL, TARGET_METHOD)))
    log(f"wrote {args.output} and {markdown} in {meta['wall_time_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
