#!/usr/bin/env python
"""Efficiency benchmark of UPetu against full fine-tuning, linear probing, LoRA and IA3 on ConvNeXt-T/B.

Every method starts from the same randomly initialised `ConvNextForImageClassification` (nothing is downloaded)
and is measured in one process, interleaved, so that the ratios between methods are comparable even on a noisy,
shared machine:

- trainable parameters (all, and without the classifier head), as a percentage of the backbone (the base
  model's parameters outside the classifier);
- bytes on disk of what `save_pretrained` writes (`adapter_model.safetensors` for PEFT methods, `model.safetensors`
  for full fine-tuning, the classifier saved with safetensors for the linear probe), with and without the head;
- training-step time (forward + backward + AdamW step + zero_grad), one step of every method per round, rounds
  repeated, so slow phases of the machine hit every method alike;
- peak memory of a training step: live tensor bytes of the method's model at the start of the step (parameters,
  buffers, AdamW state) plus the peak increase of allocated tensor bytes during one step. On CPU the increase is
  read from `torch.profiler`'s allocator events (`profile_memory=True`), on CUDA from
  `torch.cuda.max_memory_allocated`; both count tensor memory from PyTorch's allocator, not process RSS;
- inference latency relative to the base model (eval mode, `torch.no_grad`), every round running the base model
  and every method once in a rotated order, each method's ratio taken against the base run of the same round;
- the launch-bound regime (`--launch-bound`, on by default), where a GPU step costs one kernel launch per op rather
  than arithmetic: top-level ATen ops of a training step (AdamW with `foreach=True`) and of one inference of the
  method's model saved and loaded back as a user would (`PeftModel.from_pretrained`), batch 2 at 32 px, each with
  its ratio to LoRA r=8; and batch-1 latency at 32 px on one thread relative to the base model, each loaded model's
  run bracketed by runs of the base model, the ratio taken against the mean of the two (`--launch-rounds` rounds).

Usage:
    python scripts/benchmark_efficiency.py                 # full run: ConvNeXt-T and -B, every method
    python scripts/benchmark_efficiency.py --quick         # ConvNeXt-T only, 5 steps, batch 4, 128 px
    python scripts/benchmark_efficiency.py --models convnext-t --methods full,lora_r8,upetu_1bit
    python scripts/benchmark_efficiency.py --models tiny --quick --launch-rounds 3 --output /tmp/e/efficiency.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from _common import (
    CONVNEXT,
    REPO_ROOT,
    count_top_level_ops,
    fmt_count,
    git_state,
    machine_info,
    resaved_bytes,
    write_json_atomic,
    write_text_atomic,
)
from _variants import VARIANTS
from make_report import launch_bound_lines
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ConvNextConfig, ConvNextForImageClassification

from upetu_hf.train.methods import apply_method, is_head_parameter, parameter_summary

transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*Profiler clears events.*", category=UserWarning)

NUM_LABELS = 21
HEAD = "classifier"
LINEAR_PROBE_FILE = "classifier.safetensors"

MODEL_SPECS: dict[str, tuple[list[int], list[int]]] = {
    **{
        name: (CONVNEXT[name]["depths"], CONVNEXT[name]["hidden_sizes"])
        for name in ("convnext-t", "convnext-b")
    },
    "tiny": ([1, 1, 1, 1], [8, 16, 32, 64]),
}
#: The variants this benchmark compares (`_variants.VARIANTS`).
METHODS = ("full", "linear_probe", "lora_r8", "lora_r16", "ia3", "upetu_1bit", "upetu_4bit", "upetu_32bit")
#: The settings a run records in its `meta`, in this order.
SETTINGS = (
    "quick models methods steps inference_runs warmup batch_size image_size lr seed mixed_precision launch_bound "
    "launch_rounds".split()
)
QUICK = {"models": ["convnext-t"], "steps": 5, "batch_size": 4, "image_size": 128}
DEFAULTS = {"models": ["convnext-t", "convnext-b"], "steps": 10, "batch_size": 8, "image_size": 224}
# Targets from the benchmark issue, checked on every UPetu variant; the issue's own is ConvNeXt-B at 1 bit.
TARGET_MODEL, TARGET_METHOD = "convnext-b", "upetu_1bit"
DISK_LIMIT_BYTES = 200_000
CONTENDED_CPU_SHARE = 0.8  # below this share of CPU time per thread, other processes competed for the cores
# The launch-bound regime: small inputs, so that the cost of dispatching every op (on a GPU, launching its kernel)
# outweighs its arithmetic; op counts at batch LAUNCH_OPS_BATCH, latency at batch 1, one thread.
LAUNCH_IMAGE_SIZE = 32
LAUNCH_OPS_BATCH = 2
LAUNCH_LATENCY_BATCH = 1
LAUNCH_WARMUP_STEPS = 3
LAUNCH_THREADS = 1
LAUNCH_REFERENCE = "lora_r8"


@dataclass
class Method:
    """One fine-tuning method built on a copy of the base model."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer


def parse_spec(name: str) -> tuple[list[int], list[int]]:
    """Depths and widths of a model name: a preset (`convnext-t`, `convnext-b`, `tiny`) or `D-D-D-D:W-W-W-W`."""
    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    try:
        depths, widths = name.split(":")
        spec = [int(d) for d in depths.split("-")], [int(w) for w in widths.split("-")]
    except ValueError as err:
        raise ValueError(
            f"Unknown model {name!r}: use one of {', '.join(MODEL_SPECS)} or 'depths:widths' such as "
            "'1-1-1-1:8-16-32-64'."
        ) from err
    if len(spec[0]) != len(spec[1]):
        raise ValueError(f"Model {name!r}: depths and widths must have the same length.")
    return spec


def build_base(name: str, seed: int) -> ConvNextForImageClassification:
    """A randomly initialised ConvNeXt classifier with `NUM_LABELS` classes."""
    depths, widths = parse_spec(name)
    torch.manual_seed(seed)
    config = ConvNextConfig(depths=depths, hidden_sizes=widths, num_labels=NUM_LABELS)
    return ConvNextForImageClassification(config)


def wrap_method(name: str, base: nn.Module) -> nn.Module:
    """A deep copy of `base` made trainable for method `name` by the training API's `apply_method` (one code
    path: LoRA with alpha = 2r, IA3 on the 4C hidden, UPetu with the classifier in `modules_to_save`)."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}: allowed values are {', '.join(METHODS)}.")
    variant = VARIANTS[name]
    return apply_method(copy.deepcopy(base), variant.method, **variant.options)


def parameter_counts(model: nn.Module, backbone: int) -> dict[str, float]:
    """Trainable parameters (`parameter_summary`): all, without the head, and both as a percentage of `backbone`."""
    summary = parameter_summary(model)
    return {
        "trainable_params": summary["trainable"],
        "trainable_params_without_head": summary["adapter"],
        "trainable_pct_of_backbone": 100.0 * summary["adapter"] / backbone,
        "trainable_pct_of_backbone_with_head": 100.0 * summary["trainable"] / backbone,
    }


def save_method(name: str, model: nn.Module, folder: Path) -> Path:
    """Save method `name`'s trained weights into `folder` as a user would and return the weights file:
    `save_pretrained` (the adapter for PEFT methods, the whole model for full fine-tuning), the classifier with
    safetensors for the linear probe."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "linear_probe":
        head = {k: v.detach().contiguous() for k, v in getattr(model, HEAD).state_dict().items()}
        path = folder / LINEAR_PROBE_FILE
        save_file(head, str(path), metadata={"format": "pt"})
        return path
    model.save_pretrained(str(folder))
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise RuntimeError(
            f"{name}: expected one safetensors file in {folder}, found {[f.name for f in files]}."
        )
    return files[0]


def load_method(name: str, base: nn.Module, folder: Path) -> nn.Module:
    """Method `name`'s model loaded back from what `save_method` wrote into `folder`, the way a user loads it, in
    eval mode: `PeftModel.from_pretrained` on a fresh copy of `base` for PEFT methods, `from_pretrained` of the
    saved model for full fine-tuning, the saved classifier loaded into a copy of `base` for the linear probe."""
    if name == "full":
        return ConvNextForImageClassification.from_pretrained(str(folder)).eval()
    model = copy.deepcopy(base)
    if name == "linear_probe":
        getattr(model, HEAD).load_state_dict(load_file(str(folder / LINEAR_PROBE_FILE)))
        return model.eval()
    return PeftModel.from_pretrained(model, str(folder)).eval()


def disk_sizes(name: str, model: nn.Module, workdir: Path) -> dict[str, object]:
    """Bytes of the weights file `save_pretrained` writes for this method, with and without the head."""
    path = save_method(name, model, workdir / name)
    if name == "linear_probe":
        return {"file": path.name, "disk_bytes_with_head": path.stat().st_size, "disk_bytes_without_head": 0}
    return {
        "file": path.name,
        "disk_bytes_with_head": path.stat().st_size,
        "disk_bytes_without_head": resaved_bytes(path, lambda key: not is_head_parameter(key)),
    }


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA) so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, mixed_precision: str):
    """The forward pass's autocast context: bf16 autocast for `--mixed-precision bf16` (parameters, gradients and
    AdamW state stay float32, as with Accelerate's `mixed_precision="bf16"`), none for "no"."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(
    method: Method, pixels: torch.Tensor, labels: torch.Tensor, mixed_precision: str = "no"
) -> None:
    """One training step: forward (under `autocast`) with cross-entropy loss, backward, AdamW step,
    zero_grad(set_to_none)."""
    with autocast(pixels.device, mixed_precision):
        loss = method.model(pixel_values=pixels, labels=labels).loss
    loss.backward()
    method.optimizer.step()
    method.optimizer.zero_grad(set_to_none=True)


def inference_call(
    model: nn.Module, pixels: torch.Tensor, mixed_precision: str = "no", grad_mode: Callable = torch.no_grad
) -> Callable[[], object]:
    """One inference forward of `model` on `pixels` as a call without arguments: under `grad_mode`
    (`torch.no_grad` or `torch.inference_mode`) and `autocast`."""

    def call() -> object:
        with grad_mode(), autocast(pixels.device, mixed_precision):
            return model(pixel_values=pixels)

    return call


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of `fn()`, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def static_tensor_bytes(method: Method) -> int:
    """Bytes of the tensors a method keeps between steps: parameters, buffers, gradients and optimizer state."""
    tensors = list(method.model.parameters()) + list(method.model.buffers())
    tensors += [p.grad for p in method.model.parameters() if p.grad is not None]
    for state in method.optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    storages: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def step_peak_increase(
    method: Method,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    mixed_precision: str = "no",
) -> tuple[int, str]:
    """Peak increase of allocated tensor bytes during one training step, and how it was measured."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_step(method, pixels, labels, mixed_precision)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(method, pixels, labels, mixed_precision)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak, "torch.profiler allocator events (profile_memory=True)"


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min, max and relative inter-quartile range of timing samples."""
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    median = statistics.median(ordered)
    return {
        "median": median,
        "q1": q1,
        "q3": q3,
        "min": ordered[0],
        "max": ordered[-1],
        "rel_iqr": (q3 - q1) / median if median else 0.0,
        "n": len(ordered),
    }


def log(message: str) -> None:
    """Progress line with a timestamp on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_methods(
    base: nn.Module, methods: Sequence[str], backbone_params: int, args: argparse.Namespace
) -> tuple[dict[str, dict[str, object]], list[Method]]:
    """Every method on a copy of `base`, with its parameter counts and sizes on disk (`results`), ready to train."""
    device = torch.device(args.device)
    results: dict[str, dict[str, object]] = {}
    built: list[Method] = []
    with tempfile.TemporaryDirectory(prefix="upetu-bench-") as workdir:
        for name in methods:
            model = wrap_method(name, base)
            entry: dict[str, object] = {"label": VARIANTS[name].label}
            entry.update(parameter_counts(model, backbone_params))
            if name.startswith("upetu_"):
                entry["upetu_parameter_counts"] = model.base_model.parameter_counts()
            entry.update(disk_sizes(name, model, Path(workdir)))
            model.to(device).train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
            built.append(Method(name, model, optimizer))
            results[name] = entry
    return results, built


def measure_training(
    built: list[Method], pixels: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace, model_name: str
) -> tuple[dict[str, dict[str, object]], dict[str, list[float]]]:
    """Warm-up rounds, one memory-measured step per method (also a warm-up), then timed rounds; returns the memory
    and the step times of each method."""
    device = torch.device(args.device)
    memory: dict[str, dict[str, object]] = {}
    for _ in range(args.warmup):
        for method in built:
            train_step(method, pixels, labels, args.mixed_precision)
    for method in built:
        static = static_tensor_bytes(method)
        increase, how = step_peak_increase(method, pixels, labels, device, args.mixed_precision)
        memory[method.name] = {
            "static_bytes": static,
            "step_peak_increase_bytes": increase,
            "peak_bytes": static + increase,
            "how": how,
        }
    log(f"{model_name}: memory measured; timing {args.steps} training rounds")
    step_samples: dict[str, list[float]] = {m.name: [] for m in built}
    for round_index in range(args.steps):
        order = built[round_index % len(built) :] + built[: round_index % len(built)]
        for method in order:
            step_samples[method.name].append(
                timed(lambda m=method: train_step(m, pixels, labels, args.mixed_precision), device)
            )
        log(f"{model_name}: training round {round_index + 1}/{args.steps}")
    return memory, step_samples


def measure_inference(
    base: nn.Module, built: list[Method], pixels: torch.Tensor, args: argparse.Namespace, model_name: str
) -> tuple[dict[str, dict[str, list[float]]], list[float]]:
    """Every round times the base model and every method once, in a rotated order; each method's ratio is taken
    against the base run of the same round. Returns the method and same-round base times, and the base runs."""
    device = torch.device(args.device)
    for method in built:
        method.model.eval()
    inference: dict[str, dict[str, list[float]]] = {m.name: {"method": [], "base": []} for m in built}
    base_runs: list[float] = []

    def infer(model: nn.Module) -> float:
        return timed(inference_call(model, pixels, args.mixed_precision), device)

    contestants: list[Method | None] = [None, *built]  # None: the base model
    for method in built:  # warm-up: first eval-mode forward (caches quantized weights, allocator warm-up)
        infer(method.model)
    infer(base)
    for round_index in range(args.inference_runs):
        shift = round_index % len(contestants)
        times: dict[str, float] = {}
        for method in contestants[shift:] + contestants[:shift]:
            times["" if method is None else method.name] = infer(base if method is None else method.model)
        base_runs.append(times.pop(""))
        for name, seconds in times.items():
            inference[name]["method"].append(seconds)
            inference[name]["base"].append(base_runs[-1])
        log(f"{model_name}: inference round {round_index + 1}/{args.inference_runs}")
    return inference, base_runs


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with `torch.set_num_threads(threads)`, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_step_ops(
    method: Method, pixels: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace
) -> int:
    """Top-level ATen ops of one training step of `method`'s model (forward, backward, AdamW step, zero_grad) with
    a fresh `AdamW(foreach=True)`, the optimizer a GPU run gets by default, after `LAUNCH_WARMUP_STEPS` steps."""
    trainable = [p for p in method.model.parameters() if p.requires_grad]
    counted = Method(
        method.name, method.model.train(), torch.optim.AdamW(trainable, lr=args.lr, foreach=True)
    )
    step = lambda: train_step(counted, pixels, labels, args.mixed_precision)  # noqa: E731
    for _ in range(LAUNCH_WARMUP_STEPS):
        step()
    return count_top_level_ops(step)


def inference_ops(model: nn.Module, pixels: torch.Tensor, mixed_precision: str) -> int:
    """Top-level ATen ops of one inference of `model` under `torch.inference_mode`, after one warm-up call."""
    call = inference_call(model, pixels, mixed_precision, torch.inference_mode)
    call()
    return count_top_level_ops(call)


def loaded_models(base: nn.Module, built: list[Method], device: torch.device) -> dict[str, nn.Module]:
    """Every method's trained model saved (`save_method`) and loaded back as a user would (`load_method`), in
    eval mode on `device`."""
    loaded: dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory(prefix="upetu-bench-load-") as workdir:
        for method in built:
            folder = Path(workdir) / method.name
            save_method(method.name, method.model, folder)
            loaded[method.name] = load_method(method.name, base, folder).to(device)
    return loaded


def bracketed_latency(
    base_call: Callable[[], object],
    calls: dict[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    model_name: str,
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Interleaved latency: after one warm-up call of each, every round runs base, m1, base, m2, ..., base (the
    methods' order rotated each round), so that every method's run is bracketed by two base runs; its ratio is
    taken against the mean of those two. Returns the method times, their ratios, and every base run."""
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for call in (base_call, *calls.values()):
        call()
    base_runs = [timed(base_call, device)]
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(timed(calls[name], device))
            base_runs.append(timed(base_call, device))
            ratios[name].append(seconds[name][-1] / statistics.fmean(base_runs[-2:]))
        log(f"{model_name}: launch-bound latency round {round_index + 1}/{rounds}")
    return seconds, ratios, base_runs


def measure_launch_bound(
    base: nn.Module, built: list[Method], args: argparse.Namespace, model_name: str
) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    """The launch-bound regime, on `LAUNCH_THREADS` thread(s) at `LAUNCH_IMAGE_SIZE` px: top-level ATen ops of a
    training step and of a loaded adapter's inference (batch `LAUNCH_OPS_BATCH`), and batch-1 latency of the loaded
    models relative to the base model (`bracketed_latency`, `args.launch_rounds` rounds). Returns each method's
    entry and the base model's."""
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    size = LAUNCH_IMAGE_SIZE
    pixels = torch.randn(LAUNCH_OPS_BATCH, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, NUM_LABELS, (LAUNCH_OPS_BATCH,), generator=generator).to(device)
    with torch_threads(LAUNCH_THREADS):
        methods = {m.name: {"train_step_ops": train_step_ops(m, pixels, labels, args)} for m in built}
        loaded = loaded_models(base, built, device)
        for name, model in loaded.items():
            methods[name]["loaded_inference_ops"] = inference_ops(model, pixels, args.mixed_precision)
        log(f"{model_name}: launch-bound op counts done; timing {args.launch_rounds} batch-1 latency rounds")
        single = pixels[:LAUNCH_LATENCY_BATCH]
        calls = {
            n: inference_call(m, single, args.mixed_precision, torch.inference_mode)
            for n, m in loaded.items()
        }
        base_call = inference_call(base, single, args.mixed_precision, torch.inference_mode)
        seconds, ratios, base_runs = bracketed_latency(
            base_call, calls, args.launch_rounds, device, model_name
        )
        base_entry = {
            "base_inference_ops": inference_ops(base, pixels, args.mixed_precision),
            "base_latency_s": base_runs,
            "base_latency": summarize(base_runs),
        }
    for name, entry in methods.items():
        entry["batch1_latency_s"] = seconds[name]
        entry["batch1_latency_ratio_samples"] = ratios[name]
        entry["batch1_latency_ratio"] = summarize(ratios[name])
    return methods, base_entry


def launch_bound(
    base: nn.Module, built: list[Method], args: argparse.Namespace, model_name: str
) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    """Each method's `launch_bound` entry and the model's (settings, the base model's op count and latency), from
    `measure_launch_bound`, every op count with its ratio to `LAUNCH_REFERENCE`'s (LoRA r=8): `<count>_vs_lora_r8`,
    None when the reference was not run."""
    methods, base_entry = measure_launch_bound(base, built, args, model_name)
    reference = methods.get(LAUNCH_REFERENCE)

    def vs_reference(count: int, key: str) -> float | None:
        return count / reference[key] if reference else None

    for entry in methods.values():
        for key in ("train_step_ops", "loaded_inference_ops"):
            entry[f"{key}_vs_{LAUNCH_REFERENCE}"] = vs_reference(entry[key], key)
    base_ops = base_entry["base_inference_ops"]
    return methods, {
        "image_size": LAUNCH_IMAGE_SIZE,
        "ops_batch_size": LAUNCH_OPS_BATCH,
        "latency_batch_size": LAUNCH_LATENCY_BATCH,
        "threads": LAUNCH_THREADS,
        "rounds": args.launch_rounds,
        "warmup_train_steps": LAUNCH_WARMUP_STEPS,
        "optimizer": "AdamW(foreach=True)",
        "reference": LAUNCH_REFERENCE,
        **base_entry,
        f"base_inference_ops_vs_{LAUNCH_REFERENCE}": vs_reference(base_ops, "loaded_inference_ops"),
    }


def benchmark_model(model_name: str, methods: Sequence[str], args: argparse.Namespace) -> dict[str, object]:
    """Every measurement of one model size, all methods interleaved."""
    device = torch.device(args.device)
    loadavg_start, wall_start, cpu_start = os.getloadavg(), time.perf_counter(), time.process_time()
    depths, widths = parse_spec(model_name)
    base = build_base(model_name, args.seed)
    base_params = sum(p.numel() for p in base.parameters())
    head_params = sum(p.numel() for n, p in base.named_parameters() if is_head_parameter(n))
    backbone_params = base_params - head_params
    log(f"{model_name}: {base_params:,} parameters ({backbone_params:,} backbone)")

    results, built = build_methods(base, methods, backbone_params, args)
    base.to(device).eval()

    generator = torch.Generator().manual_seed(args.seed)
    size = args.image_size
    pixels = torch.randn(args.batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, NUM_LABELS, (args.batch_size,), generator=generator).to(device)
    memory, step_samples = measure_training(built, pixels, labels, args, model_name)
    inference, base_runs = measure_inference(base, built, pixels, args, model_name)
    launch_methods, launch = launch_bound(base, built, args, model_name) if args.launch_bound else ({}, None)

    for method in built:
        entry = results[method.name]
        entry["memory"] = memory[method.name]
        samples = step_samples[method.name]
        entry["train_step_s"] = samples
        entry["train_step"] = summarize(samples)
        inf = inference[method.name]
        ratios = [m / b for m, b in zip(inf["method"], inf["base"])]
        entry["inference_s"] = inf["method"]
        entry["inference_base_same_round_s"] = inf["base"]
        entry["inference"] = summarize(inf["method"])
        entry["inference_ratio_samples"] = ratios
        entry["inference_ratio"] = summarize(ratios)
        if launch:
            entry["launch_bound"] = launch_methods[method.name]

    # Noise: full fine-tuning and the linear probe run the base architecture, so their latency ratio should be 1.
    controls = {n: results[n]["inference_ratio"] for n in ("full", "linear_probe") if n in results}
    ratios = {name: compare(results, step_samples, name) for name in results}
    del built, base
    return {
        "depths": depths,
        "widths": widths,
        "num_labels": NUM_LABELS,
        "base_params": base_params,
        "backbone_params": backbone_params,
        "head_params": head_params,
        "base_inference_s": base_runs,
        "base_inference": summarize(base_runs),
        "noise": {
            "same_architecture_inference_ratio": controls,
            "loadavg_start": loadavg_start,
            "loadavg_end": os.getloadavg(),
            # CPU seconds this process got per wall second and thread: well below 1 when other work competes.
            "cpu_share": (time.process_time() - cpu_start)
            / ((time.perf_counter() - wall_start) * torch.get_num_threads()),
        },
        "wall_time_s": time.perf_counter() - wall_start,
        "methods": results,
        "ratios": ratios,
        **({"launch_bound": launch} if launch else {}),
    }


def compare(
    results: dict[str, dict[str, object]], step_samples: dict[str, list[float]], name: str
) -> dict[str, float | None]:
    """Ratios of method `name` to full fine-tuning and LoRA r=8: step time (median of per-round ratios, the
    rounds being interleaved), peak memory and disk size without the head."""
    out: dict[str, float | None] = {}
    for ref in ("full", "lora_r8"):
        if ref not in results:
            continue
        per_round = [a / b for a, b in zip(step_samples[name], step_samples[ref])]
        out[f"train_step_vs_{ref}"] = statistics.median(per_round)
        out[f"train_step_vs_{ref}_q1"], _, out[f"train_step_vs_{ref}_q3"] = (
            statistics.quantiles(per_round, n=4, method="inclusive") if len(per_round) >= 2 else (None,) * 3
        )
        out[f"peak_memory_vs_{ref}"] = (
            results[name]["memory"]["peak_bytes"] / results[ref]["memory"]["peak_bytes"]
        )
        ref_disk = results[ref]["disk_bytes_without_head"]
        out[f"disk_without_head_vs_{ref}"] = (
            results[name]["disk_bytes_without_head"] / ref_disk if ref_disk else None
        )
    return out


def _check(target: str, value: float | None, limit: float, higher_is_better: bool = False) -> dict | None:
    """One target check (`None` when the value could not be measured)."""
    if value is None:
        return None
    met = value >= limit if higher_is_better else value <= limit
    return {"target": target, "value": value, "limit": limit, "met": met}


def check_targets(models: dict[str, dict[str, object]]) -> list[dict[str, object]]:
    """The issue's targets, evaluated for every UPetu variant of every model measured."""
    checks: list[dict[str, object]] = []
    for model_name, data in models.items():
        methods, ratios = data["methods"], data["ratios"]
        for name in methods:
            if not name.startswith("upetu_"):
                continue
            entry, ratio = methods[name], ratios[name]
            disk = entry["disk_bytes_without_head"]
            found = [_check("adapter on disk without head (bytes) <= 200 KB", disk, DISK_LIMIT_BYTES)]
            if "lora_r8" in methods:
                lora = methods["lora_r8"]["disk_bytes_without_head"]
                found.append(_check("LoRA r=8 / UPetu size on disk (no heads) >= 25x", lora / disk, 25, True))
                found.append(
                    _check("training step vs LoRA r=8 <= 1.15x", ratio["train_step_vs_lora_r8"], 1.15)
                )
            if "full" in methods:
                found.append(
                    _check("training step vs full fine-tuning <= 0.8x", ratio["train_step_vs_full"], 0.8)
                )
                found.append(
                    _check(
                        "peak training memory vs full fine-tuning <= 0.8x", ratio["peak_memory_vs_full"], 0.8
                    )
                )
            found.append(
                _check("inference latency vs base model <= 1.10x", entry["inference_ratio"]["median"], 1.10)
            )
            primary = model_name == TARGET_MODEL and name == TARGET_METHOD
            for check in found:
                if check is not None:
                    checks.append({"model": model_name, "method": name, "primary": primary, **check})
    return checks


#: The code whose uncommitted changes a run records.
CODE_PATHS = (
    "src/upetu_hf/tuner",
    "src/upetu_hf/train/methods.py",
    "scripts/benchmark_efficiency.py",
    "scripts/_common.py",
)


def fmt_bytes(n: float) -> str:
    """Bytes in B / KB / MB / GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def model_markdown(model_name: str, data: dict[str, object], meta: dict[str, object]) -> list[str]:
    """One model's table, the contention warning when the CPU was shared, and the noise line."""
    lines: list[str] = []
    lines += [
        "",
        f"## {model_name} (depths {'-'.join(map(str, data['depths']))}, "
        f"widths {'-'.join(map(str, data['widths']))}; backbone {fmt_count(data['backbone_params'])} params)",
        "",
        "| method | trainable (no head) | % backbone | disk no head | disk with head | step (s) | vs full "
        "| vs LoRA r=8 | peak memory | mem vs full | inference vs base |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in data["methods"].items():
        ratio = data["ratios"][name]
        step = entry["train_step"]
        inf = entry["inference_ratio"]

        def r(key: str, ratio: dict = ratio) -> str:
            value = ratio.get(key)
            return "-" if value is None else f"{value:.2f}x"

        lines.append(
            f"| {entry['label']} | {fmt_count(entry['trainable_params_without_head'])} "
            f"| {entry['trainable_pct_of_backbone']:.2f} % | {fmt_bytes(entry['disk_bytes_without_head'])} "
            f"| {fmt_bytes(entry['disk_bytes_with_head'])} | {step['median']:.3f} "
            f"± {step['rel_iqr'] * 100:.0f} % | {r('train_step_vs_full')} | {r('train_step_vs_lora_r8')} "
            f"| {fmt_bytes(entry['memory']['peak_bytes'])} | {r('peak_memory_vs_full')} "
            f"| {inf['median']:.3f}x [{inf['q1']:.3f}-{inf['q3']:.3f}] |"
        )
    base = data["base_inference"]
    share = data["noise"]["cpu_share"]
    if share < CONTENDED_CPU_SHARE:
        lines += [
            "",
            f"> **Warning: contended machine.** This process got {share:.2f} of the CPU time its "
            f"{meta['machine']['torch_num_threads']} threads could use (load average up to "
            f"{max(data['noise']['loadavg_start'][0], data['noise']['loadavg_end'][0]):.1f}): other work "
            "competed for the cores. Interleaving spreads slow phases over every method, but with several threads "
            "OpenMP also waits for descheduled threads at every parallel region, a cost per operator that "
            "penalises methods with many small operators (adapters) and inflates their time ratios. "
            "Rerun on an idle machine, or with `--threads 1`, before trusting the timing ratios; sizes, "
            "parameter counts and memory are unaffected.",
        ]
    noise = [
        f"{data['methods'][n]['label']} {c['median']:.3f}x [{c['q1']:.3f}-{c['q3']:.3f}]"
        for n, c in data["noise"]["same_architecture_inference_ratio"].items()
    ]
    lines += [
        "",
        f"Base model inference: median {base['median']:.3f} s (relative IQR {base['rel_iqr'] * 100:.1f} %). "
        "Noise: ± after a step time is its relative inter-quartile range"
        + (
            "; full fine-tuning and the linear probe run the base architecture, so their latency ratios "
            f"(ideally 1) show the timing noise: {', '.join(noise)}"
            if noise
            else ""
        )
        + f". Load average {data['noise']['loadavg_start'][0]:.2f} at the start, "
        f"{data['noise']['loadavg_end'][0]:.2f} at the end; CPU share obtained "
        f"{data['noise']['cpu_share']:.2f} (CPU seconds per wall second and thread; 1 = no competition); "
        f"{data['wall_time_s']:.0f} s for this model.",
    ]
    return lines + launch_bound_lines(data)


def targets_markdown(targets: list[dict[str, object]]) -> list[str]:
    """The issue's targets, one column per UPetu variant."""
    lines: list[str] = []
    variants = list(dict.fromkeys(check["method"] for check in targets))
    lines += [
        "",
        "## Targets",
        "",
        f"The issue's targets are for {TARGET_MODEL} with {TARGET_METHOD}; the other UPetu variants are shown "
        "for reference.",
        "",
        "| model | target | " + " | ".join(variants) + " |",
        "|---|---|" + "---:|" * len(variants),
    ]
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for check in targets:
        value = check["value"]
        shown = fmt_bytes(value) if "bytes" in check["target"] else f"{value:.2f}"
        cell = f"{shown} {'yes' if check['met'] else '**NO**'}"
        rows.setdefault((check["model"], check["target"]), {})[check["method"]] = cell
    for (model_name, target), cells in rows.items():
        lines.append(f"| {model_name} | {target} | " + " | ".join(cells.get(v, "-") for v in variants) + " |")
    return lines


def render_markdown(results: dict[str, object]) -> str:
    """The markdown report: settings, one table per model, the targets and the noise."""
    meta = results["meta"]
    load_at_start = meta["machine"].get("loadavg") or meta["machine"].get("loadavg_start")  # older files
    lines = [
        "# UPetu efficiency benchmark",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} ({meta['wall_time_s']:.0f} s wall time).",
        "",
        f"- Machine: {meta['machine']['cpu_model']}, {meta['machine']['cpus_available']} CPUs available, "
        f"torch {meta['machine']['torch']} with {meta['machine']['torch_num_threads']} threads, "
        f"device `{meta['machine']['device']}`, load average at start {load_at_start[0]:.2f}.",
        f"- Settings: batch {meta['batch_size']}, {meta['image_size']}x{meta['image_size']} px, "
        f"{meta['warmup']} warm-up round(s), {meta['steps']} timed training steps and {meta['inference_runs']} "
        f"inference runs per method, AdamW lr {meta['lr']}, random weights, {NUM_LABELS} classes, "
        f"mixed precision `{meta.get('mixed_precision', 'no')}`.",
    ]
    if meta["quick"]:
        lines.append("- **Quick run** (`--quick`): a partial, smaller benchmark; not the reference numbers.")
    lines += [
        "",
        "Columns: trainable parameters without the head (% of the backbone); the weights file `save_pretrained` "
        "writes, without / with the head; median training step (forward + backward + AdamW) and its ratio to "
        "full fine-tuning and LoRA r=8 (median of per-round ratios); peak tensor memory of a training step and "
        "its ratio to full fine-tuning; inference latency ratio to the base model (median, [q1-q3]).",
    ]
    for model_name, data in results["models"].items():
        lines += model_markdown(model_name, data, meta)
    if results["targets"]:
        lines += targets_markdown(results["targets"])
    lines += [
        "",
        "## Method notes",
        "",
        "- Every method is built by the training API's `apply_method`, as `upetu-train` builds it.",
        "- LoRA: peft `LoraConfig(r, lora_alpha=2r, target_modules=['pwconv1', 'pwconv2'], "
        "modules_to_save=['classifier'])`, unmerged at inference (merged LoRA costs exactly the base model).",
        "- IA3: peft `IA3Config(target_modules=['pwconv1', 'pwconv2'], feedforward_modules=['pwconv2'], "
        "modules_to_save=['classifier'])`: scales pwconv1's output and pwconv2's input (the 4C hidden).",
        "- UPetu: `UPetuConfig(bits=k)` (r=16, prompt_size=4, the classifier via modules_to_save).",
        "- Linear probe: only the classifier trains; its weights saved with safetensors. Full fine-tuning: "
        "`model.safetensors` of the whole model.",
        "- Disk without the head: the same file re-saved with safetensors without the classifier's tensors.",
        "- Peak memory: live tensor bytes at the start of a step (parameters, buffers, AdamW state) plus the peak "
        "increase of allocated tensor bytes during one step (gradients, activations, optimizer temporaries), "
        "from PyTorch's allocator: torch.profiler memory events on CPU, max_memory_allocated on CUDA. Memory "
        "outside PyTorch's allocator (oneDNN scratch space, the Python heap) is not counted.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; `--quick` fills in whatever was not given explicitly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fast partial run (ConvNeXt-T, 5 steps, batch 4, 128 px)"
    )
    parser.add_argument("--models", help=f"comma-separated: {', '.join(MODEL_SPECS)} or D-D-D-D:W-W-W-W")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, help="timed training steps per method (default 10)")
    parser.add_argument(
        "--inference-runs", type=int, help="timed inference runs per method (default: --steps)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="warm-up training rounds before the memory step"
    )
    parser.add_argument("--batch-size", type=int, help="batch size (default 8)")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default 224)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all CPUs)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mixed-precision",
        default="no",
        choices=("no", "bf16"),
        help="bf16 autocast of the forward passes (no); float32 parameters and optimizer state either way",
    )
    parser.add_argument(
        "--launch-bound",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"measure the launch-bound regime: op counts of a training step and of a loaded adapter's inference, "
        f"batch-1 latency at {LAUNCH_IMAGE_SIZE} px on {LAUNCH_THREADS} thread (default: on)",
    )
    parser.add_argument(
        "--launch-rounds", type=int, default=15, help="interleaved rounds of the batch-1 latency (default 15)"
    )
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "efficiency.json"), help="JSON path")
    parser.add_argument("--markdown", default=None, help="markdown path (default: --output with .md)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    args.models = args.models.split(",") if args.models else list(preset["models"])
    args.methods = args.methods.split(",") if args.methods else list(METHODS)
    for key in ("steps", "batch_size", "image_size"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.inference_runs is None:
        args.inference_runs = args.steps
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}: allowed values are {', '.join(METHODS)}")
    for name in args.models:
        try:
            parse_spec(name)
        except ValueError as err:
            parser.error(str(err))
    if args.steps < 1 or args.inference_runs < 1 or args.launch_rounds < 1:
        parser.error("--steps, --inference-runs and --launch-rounds must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda was requested but CUDA is not available")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the benchmark, write the JSON and markdown reports, and return the results."""
    args = parse_args(argv)
    started = time.perf_counter()
    threads = args.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python scripts/benchmark_efficiency.py", *argv_list])
    meta: dict[str, object] = {
        "command": command,
        "argv": argv_list,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{key: getattr(args, key) for key in SETTINGS},
        "machine": machine_info(str(device)),
        "git": git_state(CODE_PATHS),
    }
    models = {name: benchmark_model(name, args.methods, args) for name in args.models}
    meta["wall_time_s"] = time.perf_counter() - started
    results = {"meta": meta, "models": models, "targets": check_targets(models)}
    output = Path(args.output)
    write_json_atomic(output, results)  # creates the folder
    markdown = Path(args.markdown) if args.markdown else output.with_suffix(".md")
    write_text_atomic(markdown, render_markdown(results))
    log(f"wrote {output} and {markdown} in {meta['wall_time_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
