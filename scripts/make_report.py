#!/usr/bin/env python
"""Every generated report of the benchmarks, from `results/accuracy_*.json` (written by
`scripts/benchmark_accuracy.py`) and, when present, `results/efficiency.json` (`scripts/benchmark_efficiency.py`).

Writes `results/accuracy_summary.md` (every table, the learning-rate search and every run) and
`results/accuracy_vs_params.png` (test metric against trainable parameters, log x, marker area showing the size of
the checkpoint a task needs). For `results/` itself it also rewrites, between `<!-- results:start -->` and
`<!-- results:end -->` and nowhere else, README.md (a headline table of at most 25 lines: current numbers and their
verdicts) and docs/benchmarks.md (the full tables, protocol and caveats), and writes `results/README.md` in full:
every file under `results/`, current or superseded, with its command (`RESULTS`). For another folder (a side
protocol such as `results/search2`) only `--readme` gets the full section. A file without markers is left alone and
its section printed. Every number comes from the JSON files.

Usage:
    python scripts/make_report.py
    python scripts/make_report.py --results-dir results/search2 --efficiency results/efficiency.json --readme /dev/null
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, fmt_count, write_text_atomic
from _ledger import mean_std, paired_difference, split_of
from _variants import DEFAULT_COLOUR, VARIANTS

START, END = "<!-- results:start -->", "<!-- results:end -->"
TASK_ORDER = ("classification", "segmentation", "change-detection")
METRIC_NAMES = {"accuracy": "accuracy", "mean_iou": "mIoU", "f1": "change F1"}
TASK_TITLES = {
    "classification": "Scene classification",
    "segmentation": "Semantic segmentation",
    "change-detection": "Change detection",
}
#: Paired comparisons shown per task: (a, b), read "a minus b".
PAIRED = (
    ("upetu", "full"),
    ("upetu", "lora"),
    ("upetu", "linear"),
    ("upetu-1bit", "upetu-32bit"),
    ("upetu", "upetu-32bit"),
    ("upetu-small", "lora-small"),
)
#: Aims of the benchmark issue (thresholds, not results).
ONE_BIT_MAX_LOSS = 0.5  # accuracy points, 1-bit vs 32-bit
SMALL_BUDGET_PCT = 1.0  # % of the backbone for `upetu-small`


# ---------------------------------------------------------------------------------------------- loading
def load_accuracy(results_dir: Path) -> dict[str, dict[str, Any]]:
    """`{task: state}` from every `accuracy_*.json` in `results_dir`, in task order."""
    states = {}
    for path in sorted(results_dir.glob("accuracy_*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"make_report: skipping {path}: {err}", file=sys.stderr)
            continue
        if not isinstance(state, dict) or "task" not in state or "summary" not in state:
            print(f"make_report: skipping {path}: not a benchmark_accuracy.py result", file=sys.stderr)
            continue
        state["_file"] = path.name
        states[state["task"]] = state
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    return dict(sorted(states.items(), key=lambda item: order.get(item[0], len(order))))


def load_efficiency(path: Path) -> dict[str, Any] | None:
    """The efficiency benchmark's JSON, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"make_report: ignoring {path}: {err}", file=sys.stderr)
        return None


# ---------------------------------------------------------------------------------------------- formatting
def fmt_bytes(n: float | None) -> str:
    """Bytes as KB / MB (powers of 1000)."""
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} KB"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def fmt_lr(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.3g}"


def points(x: float | None) -> str:
    """A metric in [0, 1] as percentage points."""
    return "-" if x is None else f"{100 * x:.2f}"


def metric_name(state: dict[str, Any]) -> str:
    return METRIC_NAMES.get(state["metric"], state["metric"])


def architecture(backbone: dict[str, Any]) -> str:
    kind = backbone.get("model_type") or "convnext"
    return {"convnext": "ConvNeXt", "convnextv2": "ConvNeXt V2"}.get(kind, kind)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def title(state: dict[str, Any]) -> str:
    paths = state["sessions"][-1]["paths"] if state.get("sessions") else {}
    data = ", ".join(Path(d).name for d in paths.get("sources") or paths.get("data") or [])
    base = TASK_TITLES.get(state["task"], state["task"])
    return f"{base} ({data}, {metric_name(state)})" if data else f"{base} ({metric_name(state)})"


# ---------------------------------------------------------------------------------------------- tables
def results_table(state: dict[str, Any]) -> list[str]:
    """One row per method: test metric mean +- std, parameters, sizes, learning rate and wall time."""
    name = metric_name(state)
    lines = [
        f"| method | test {name} (%) | runs | trainable params | trainable % | adapter % of backbone "
        "| adapter (no head) | checkpoint (with head) | lr (x default) | best epochs | wall time / run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in state["summary"].values():
        factor = f" (x{s['lr_factor']:.3g})" if s.get("lr_factor") is not None else ""
        flag = "" if s.get("selection_complete", True) else " (search incomplete)"
        lines.append(
            f"| {s['label']}{flag} | {points(s['test_mean'])} ± {points(s['test_std'])} | {runs_label(s)} "
            f"| {fmt_count(s['trainable_params'])} | {s['trainable_pct']:.2f} % "
            f"| {s['adapter_pct_of_backbone']:.2f} % | {fmt_bytes(s['weights_bytes_without_head'])} "
            f"| {fmt_bytes(s['weights_bytes_with_head'])} | {fmt_lr(s['lr'])}{factor} "
            f"| {', '.join(str(e) for e in s['best_epochs'])} | {fmt_seconds(s['wall_time_s_mean'])} |"
        )
    return lines


def runs_label(s: dict[str, Any]) -> str:
    """`n`, or `n (k splits x m seeds)` when the runs cover several splits."""
    splits = sorted(set(s.get("split_seeds") or [0]))
    if len(splits) == 1:
        return str(s["n"])
    return f"{s['n']} ({len(splits)} splits x {len(set(s['seeds']))} seeds)"


def paired_table(state: dict[str, Any]) -> list[str]:
    """Paired differences (test metric, points) between methods over the (split, seed) pairs they share, with the
    95 % t-interval; a difference is claimed only when the interval excludes 0."""
    rows = [d for a, b in PAIRED if (d := paired_difference(state["summary"], a, b))]
    if not rows:
        return []
    labels = {name: s["label"] for name, s in state["summary"].items()}
    lines = ["| comparison | pairs | mean difference | 95 % interval | verdict |", "|---|---:|---:|---|---|"]
    for d in rows:
        low, high = d["ci95"]
        verdict = "no difference shown" if d["decided"] is None else f"{labels[d['decided']]} ahead"
        lines.append(
            f"| {labels[d['a']]} − {labels[d['b']]} | {d['n']} | {100 * d['mean']:+.2f} "
            f"| [{100 * low:+.2f}, {100 * high:+.2f}] | {verdict} |"
        )
    return lines


def search_table(state: dict[str, Any]) -> list[str]:
    """Validation metric of every learning-rate candidate (search seed, or the mean over the search seeds), the
    chosen one in bold; a choice at an edge of its grid is flagged."""
    name = metric_name(state)
    seeds = state.get("protocol", {}).get("search_seeds")
    mean = f" (mean over seeds {', '.join(map(str, seeds))})" if seeds else ""
    lines = [f"| method | validation {name} (%) per learning rate{mean} | chosen |", "|---|---|---:|"]
    for variant, choice in state.get("selection", {}).items():
        label = state["variants"].get(variant, {}).get("label", variant)
        cells = []
        for c in choice.get("candidates", []):
            score = points(c["validation_score"]) if c["validation_score"] is not None else "missing"
            cell = f"{fmt_lr(c['lr'])}: {score}"
            cells.append(f"**{cell}**" if c["lr"] == choice.get("lr") else cell)
        edge = "" if choice.get("interior", True) else " (edge of the grid)"
        lines.append(f"| {label} | {'; '.join(cells)} | {fmt_lr(choice.get('lr'))}{edge} |")
    return lines


def final_runs(state: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The runs behind a method's summary row: its chosen learning rate, its (split, seed) pairs."""
    s = state["summary"][name]
    pairs = set(zip(s.get("split_seeds") or [0] * len(s["seeds"]), s["seeds"]))
    return [
        r
        for r in state["runs"]
        if r["variant"] == name
        and r.get("status") == "ok"
        and r["lr"] == s["lr"]
        and r["options"] == s["options"]
        and (split_of(r), r["seed"]) in pairs
    ]


def fit_table(state: dict[str, Any]) -> list[str]:
    """How closely each method fits its training data: the training loss of the last epoch (mean over the epoch's
    batches, augmentation and drop path on, as trained) next to the validation and test metric, over the summary's
    runs. A method whose training loss stays higher than another's at its own tuned learning rate underfits
    relative to it: its gap is one of capacity or optimisation, not of overfitting."""
    name = metric_name(state)
    lines = [
        f"| method | runs | training loss, last epoch | validation {name} (%) | test {name} (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant, s in state["summary"].items():
        losses = [r["history"][-1]["train_loss"] for r in final_runs(state, variant) if r.get("history")]
        if not losses:
            continue
        loss_mean, loss_std = mean_std(losses)
        lines.append(
            f"| {s['label']} | {len(losses)} | {loss_mean:.3f} ± {loss_std:.3f} "
            f"| {points(s['validation_mean'])} ± {points(s['validation_std'])} "
            f"| {points(s['test_mean'])} ± {points(s['test_std'])} |"
        )
    return lines


def runs_table(state: dict[str, Any]) -> list[str]:
    """Every run: configuration, best epoch, validation and test metric, wall time, device."""
    name = metric_name(state)
    lines = [
        f"| method | lr | split | seed | phase | best epoch | validation {name} | test {name} | wall time | device |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in state["runs"]:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['label']} | {fmt_lr(r['lr'])} | {r.get('split_seed', 0)} | {r['seed']} "
                f"| FAILED: {r.get('error', '')} |||||"
            )
            continue
        chosen = state.get("selection", {}).get(r["variant"], {}).get("lr") == r["lr"]
        phase = r.get("phase", "")
        if phase == "search" and chosen:
            phase = "search, chosen (final seed)"
        lines.append(
            f"| {r['label']} | {fmt_lr(r['lr'])} | {r.get('split_seed', 0)} | {r['seed']} | {phase} "
            f"| {r['best_epoch']} "
            f"| {points(r['validation_score'])} | {points(r['test_score'])} | {fmt_seconds(r['wall_time_s'])} "
            f"| {r['device']} |"
        )
    return lines


def aims(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark issue's aims for the task, checked on the summary (None: not measured)."""
    if state.get("task") != "classification":
        return dense_aims(state)
    s = state["summary"]

    def mean(name: str) -> float | None:
        return 100 * s[name]["test_mean"] if s.get(name, {}).get("test_mean") is not None else None

    def std(name: str) -> float:
        return 100 * s[name]["test_std"] if s.get(name, {}).get("test_std") is not None else 0.0

    def diff(a: str, b: str) -> float | None:
        return None if mean(a) is None or mean(b) is None else mean(a) - mean(b)

    checks = []
    d = diff("upetu", "full")
    checks.append(("UPetu (default) >= full fine-tuning", d, None if d is None else d >= 0))
    d = diff("upetu", "lora")
    lora = s.get("lora", {}).get("options", {}).get("r") or state.get("backbone", {}).get("lora_matched_r")
    clear = None if d is None else d > std("upetu") + std("lora")
    checks.append(
        (
            f"UPetu (default) beats LoRA r={lora} at matched parameters by more than the sum of the stds",
            d,
            clear,
        )
    )
    d = diff("upetu", "linear")
    clear = None if d is None else d > std("upetu") + std("linear")
    checks.append(
        ("UPetu (default) beats the linear probe clearly (by more than the sum of the stds)", d, clear)
    )
    d = diff("upetu-1bit", "upetu-32bit")
    checks.append(
        (
            f"1-bit loses at most {ONE_BIT_MAX_LOSS} points vs 32-bit",
            d,
            None if d is None else d >= -ONE_BIT_MAX_LOSS,
        )
    )
    if "upetu-small" in s:
        small = s["upetu-small"]
        r = small["options"].get("r")
        under = small["adapter_pct_of_backbone"] < SMALL_BUDGET_PCT
        d = diff("upetu-small", "lora-small")
        paired = paired_difference(s, "upetu-small", "lora-small")
        beats = None if d is None else under and (paired["decided"] == "upetu-small" if paired else d > 0)
        checks.append(
            (
                f"UPetu r={r} ({small['adapter_pct_of_backbone']:.2f} % of the backbone, under "
                f"{SMALL_BUDGET_PCT:g} %) beats LoRA at the same budget (paired interval above 0 where there are "
                "pairs)",
                d,
                beats,
            )
        )
    return [{"aim": a, "difference_points": d, "met": m} for a, d, m in checks]


def dense_aims(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Segmentation and change detection: UPetu's default is at least level with full fine-tuning and LoRA. With
    a handful of runs "level" cannot mean equal means, so the aim counts as met when the paired comparison does not
    put the other method ahead (the 95 % interval of UPetu minus it reaches 0 or above)."""
    s = state["summary"]
    checks = []
    for other in ("full", "lora"):
        if other not in s or "upetu" not in s:
            continue
        paired = paired_difference(s, "upetu", other)
        d = None if paired is None else 100 * paired["mean"]
        checks.append(
            (
                f"UPetu (default) at least level with {s[other]['label']} (not behind in the paired comparison)",
                d,
                None if paired is None else paired["decided"] != other,
            )
        )
    return [{"aim": a, "difference_points": d, "met": m} for a, d, m in checks]


def aims_table(state: dict[str, Any]) -> list[str]:
    """The aims as a markdown table; [] when the task has none measured."""
    checks = aims(state)
    if not checks:
        return []
    lines = ["| aim | difference (points) | met |", "|---|---:|---|"]
    for check in checks:
        d = check["difference_points"]
        met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
        lines.append(f"| {check['aim']} | {'-' if d is None else f'{d:+.2f}'} | {met} |")
    return lines


def launch_bound_lines(data: dict[str, Any]) -> list[str]:
    """One model's table "Launch-bound regime (batch 1 / op counts)" of the efficiency benchmark (its `launch_bound`
    record: op counts with their ratio to LoRA r=8, batch-1 latency relative to the base model); none when the run
    did not measure it (`--no-launch-bound`, older files)."""
    launch = data.get("launch_bound")
    if not launch:
        return []
    reference = launch["reference"]
    label = data["methods"].get(reference, {}).get("label", reference)

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    lines = [
        "",
        f"**Launch-bound regime (batch 1 / op counts).** On a GPU, small inputs make a step cost one kernel launch "
        "per op rather than arithmetic. Ops: top-level ATen ops of one training step (forward, backward, "
        f"`{launch['optimizer']}` step, zero_grad; after {launch['warmup_train_steps']} warm-up steps) and of one "
        "inference of the model saved and loaded back (`PeftModel.from_pretrained` on a fresh base model for the "
        f"PEFT methods; eval, `torch.inference_mode`), batch {launch['ops_batch_size']}, "
        f"{launch['image_size']}x{launch['image_size']} px, with their ratio to {label}'s. Latency: batch 1, "
        f"{launch['threads']} thread, each run of a loaded model divided by the mean of the base-model runs around "
        f"it, median [q1-q3] over {launch['rounds']} interleaved rounds; base model "
        f"{launch['base_latency']['median'] * 1e3:.2f} ms per image.",
        "",
        f"| method | train-step ops | x {label} | loaded-inference ops | x {label} | batch-1 latency vs base |",
        "|---|---:|---:|---:|---:|---:|",
        f"| Base model (no adapter) | - | - | {launch['base_inference_ops']:,} "
        f"| {x(launch[f'base_inference_ops_vs_{reference}'])} | 1.00x |",
    ]
    for name, entry in data["methods"].items():
        bound = entry["launch_bound"]
        latency = bound["batch1_latency_ratio"]
        lines.append(
            f"| {entry.get('label', name)} | {bound['train_step_ops']:,} "
            f"| {x(bound[f'train_step_ops_vs_{reference}'])} | {bound['loaded_inference_ops']:,} "
            f"| {x(bound[f'loaded_inference_ops_vs_{reference}'])} "
            f"| {latency['median']:.2f}x [{latency['q1']:.2f}-{latency['q3']:.2f}] |"
        )
    return lines


def efficiency_lines(eff: dict[str, Any] | None) -> list[str]:
    """A compact table of the efficiency benchmark, or a note when it is absent or not understood."""
    if eff is None:
        return [
            "Not measured yet: `results/efficiency.json` is absent (`python scripts/benchmark_efficiency.py`)."
        ]
    try:
        lines = []
        meta = eff.get("meta", {})
        machine = meta.get("machine", {})
        if meta.get("command"):
            lines.append(
                f"From `results/efficiency.json` (`{meta['command']}`; details in `results/efficiency.md`)."
            )
        if meta.get("quick"):
            lines.append("**Quick run**: a partial efficiency benchmark, not the reference numbers.")
        device = machine.get("gpu") or machine.get("cpu_model")
        if device:
            lines.append(f"Measured on {device} (`{machine.get('device', '?')}`).")
        for model_name, data in eff["models"].items():
            lines += [
                "",
                f"{model_name} (backbone {fmt_count(data.get('backbone_params'))} parameters):",
                "",
                "| method | trainable % of backbone | on disk without head | train step vs full | peak memory vs "
                "full | inference vs base |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for name, entry in data["methods"].items():
                ratio = data.get("ratios", {}).get(name, {})

                def r(key: str, ratio: dict = ratio) -> str:
                    value = ratio.get(key)
                    return "-" if value is None else f"{value:.2f}x"

                inference = entry.get("inference_ratio", {}).get("median")
                lines.append(
                    f"| {entry.get('label', name)} | {entry['trainable_pct_of_backbone']:.2f} % "
                    f"| {fmt_bytes(entry.get('disk_bytes_without_head'))} | {r('train_step_vs_full')} "
                    f"| {r('peak_memory_vs_full')} | {'-' if inference is None else f'{inference:.2f}x'} |"
                )
            lines += launch_bound_lines(data)
        primary = [t for t in eff.get("targets", []) if t.get("primary")]
        if primary:
            lines += [
                "",
                f"Aims of the benchmark issue ({primary[0]['model']}, {primary[0]['method']}):",
                "",
                "| aim | measured | met |",
                "|---|---:|---|",
            ]
            for t in primary:
                value = fmt_bytes(t["value"]) if "bytes" in t["target"] else f"{t['value']:.2f}"
                lines.append(f"| {t['target']} | {value} | {'yes' if t['met'] else '**no**'} |")
        wall = meta.get("wall_time_s")
        if wall is not None:
            lines += ["", f"The whole efficiency run took {wall / 60:.0f} min."]
        return lines
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        return [
            f"`results/efficiency.json` has a layout this report does not know ({err!r}); see `results/efficiency.md`."
        ]


# ---------------------------------------------------------------------------------------------- prose
def backbone_sentence(states: dict[str, dict[str, Any]]) -> str:
    """The backbone as the JSON records it (architecture, size, pretraining)."""
    b = next(iter(states.values()))["backbone"]
    arch = architecture(b)
    depths = "-".join(map(str, b.get("depths", [])))
    widths = "-".join(map(str, b.get("hidden_sizes", [])))
    text = (
        f"`{b.get('name', b.get('model'))}`: {arch}, depths {depths}, widths {widths}, "
        f"{b['backbone_params'] / 1e6:.2f} M backbone parameters"
    )
    pre = b.get("pretraining")
    if pre:
        text += f"; pretrained on {pre.get('data', '?')} at {pre.get('res', '?')} px for {pre.get('epochs', '?')} epochs"
        if "final_heldout_accuracy" in pre:
            text += f" ({100 * pre['final_heldout_accuracy']:.1f} % held-out accuracy)"
    return text + "."


def hardware_lines(states: dict[str, dict[str, Any]]) -> list[str]:
    """Per task: the devices the runs used, and the machines of the sessions."""
    lines = []
    for task, state in states.items():
        devices = sorted({r["device"] for r in state["runs"] if r.get("device")})
        machines, loads = [], []
        for session in state.get("sessions", []):
            m = session["machine"]
            if m.get("loadavg"):
                loads.append(f"{m['loadavg'][0]:.1f}")
            gpus = ", ".join(m.get("gpus", []))
            text = (
                f"{m['cpu_model']} ({m['cpus_available']} CPUs available, torch {m['torch']} with "
                f"{m['torch_num_threads']} threads)"
            )
            machines.append(f"{gpus} + {text}" if gpus else text)
        lines.append(
            f"- {task}: runs on {'; '.join(devices) or '-'}; machine(s): {'; '.join(dict.fromkeys(machines))}"
            f"{'; load average at start ' + ', '.join(loads) if loads else ''}."
        )
    return lines


def protocol_lines(states: dict[str, dict[str, Any]]) -> list[str]:
    """The protocol, from each task's recorded settings."""
    lines = []
    for task, state in states.items():
        p = state["protocol"]
        seeds = sorted({seed for s in state["summary"].values() for seed in s["seeds"]})
        split_seeds = p.get("split_seeds", [p.get("split_seed", 0)])
        factors = ", ".join(f"{f:.3g}" for f in p["lr_factors"])
        split = p.get("split", {})
        if task == "classification":
            data = (
                f"stratified split, {100 * split.get('train_fraction', 0):.0f} % of each class for training "
                f"(split seeds {split_seeds}), {100 * split.get('validation_fraction', 0):.0f} % of the "
                f"training part held out for validation, images resized to {p.get('image_size')} px"
            )
        elif task == "segmentation":
            tf, vf = split.get("train_fraction", 0), split.get("validation_fraction", 0)
            data = (
                f"seeded random split of the tiles (split seeds {split_seeds}): "
                f"{100 * tf * (1 - vf):.0f} / {100 * tf * vf:.0f} / {100 * (1 - tf):.0f} % train / validation / "
                f"test, tiles resized to {p.get('resize')} px, UperNet with {p.get('head_hidden_size')} channels"
            )
        else:
            pairs = split.get("by_pairs", {})
            data = (
                f"split by pairs, stratified by source (split seeds {split_seeds}): "
                f"{len(pairs.get('train', []))} / {len(pairs.get('validation', []))} / {len(pairs.get('test', []))} "
                f"train / validation / test pairs, training on random {p.get('image_size')}-px crops "
                f"({split.get('train_repeats')} per pair and epoch), evaluation on the full pairs"
            )
        limits = [
            f"{k.replace('_', ' ')} {p[k]}"
            for k in ("max_train_samples", "max_eval_samples")
            if p.get(k) is not None
        ]
        lines.append(
            f"- {task}: {data}{'; subsampled: ' + ', '.join(limits) if limits else ''}. Learning rate: "
            f"the method's default x {{{factors}}} on "
            + (
                f"seeds {', '.join(map(str, p['search_seeds']))} (their mean validation {metric_name(state)})"
                if p.get("search_seeds")
                else f"seed {p['search_seed']}"
            )
            + f" of split {split_seeds[0]}, "
            f"{plural(p['epochs'], 'epoch')}, batch "
            f"{p['batch_size']}, mixed precision `{p['mixed_precision']}`, chosen on the validation "
            f"{metric_name(state)}; final seeds {seeds}."
            + (
                f" The PEFT methods' decoders train at {p['dense_head_lr']:g} (`--dense-head-lr`)."
                if p.get("dense_head_lr") is not None
                else ""
            )
        )
    return lines


def caveats(states: dict[str, dict[str, Any]], backbone_note: str | None = None) -> list[str]:
    """What the numbers do not show, from the recorded settings."""
    b = next(iter(states.values()))["backbone"]
    pre = b.get("pretraining", {})
    origin = f"pretrained on {pre['data']}" if pre.get("data") else "(its pretraining is not recorded here)"
    note = f" ({backbone_note})" if backbone_note else ""
    lines = [
        f"- **Backbone.** A small {b['backbone_params'] / 1e6:.1f} M-parameter {architecture(b)} "
        f"{origin}{note}, not the ImageNet-22k ConvNeXt-B of the UPetu paper: absolute numbers are far below the "
        "paper's, and the ranking of methods on a large, strongly pretrained backbone may differ. Relative "
        "comparisons on this backbone are what the benchmark measures.",
    ]
    for task, state in states.items():
        splits = next((s.get("splits") for s in state["summary"].values() if s.get("splits")), None)
        pairs = state["protocol"].get("split", {}).get("by_pairs")
        if pairs:  # change detection: the training split holds repeated pairs; count the pairs
            splits = {f"{k} pairs": len(v) for k, v in pairs.items()}
        seeds = sorted({s["n"] for s in state["summary"].values()})
        n_splits = max(len(set(s.get("split_seeds") or [0])) for s in state["summary"].values())
        sizes = ", ".join(f"{k} {v}" for k, v in (splits or {}).items())
        spread = (
            f"{'/'.join(map(str, seeds))} run(s) per method over up to {n_splits} splits: the ± holds the "
            "split-to-split and the seed-to-seed spread; methods with fewer runs were run on fewer splits"
            if n_splits > 1
            else f"{'/'.join(map(str, seeds))} seed(s) per method on one fixed split: the ± is the seed-to-seed "
            "spread only, not the split-to-split one"
        )
        lines.append(
            f"- **{task}.** {sizes + ' examples' if sizes else 'Split sizes not recorded'} (search split); {spread}."
        )
    quick = [t for t, s in states.items() if s["protocol"].get("quick")]
    if quick:
        lines.append(
            f"- **Quick run** ({', '.join(quick)}): few methods, few epochs and subsampled data; a smoke check of the "
            "pipeline, not a result."
        )
    incomplete = [
        f"{t}/{v}"
        for t, s in states.items()
        for v, c in s.get("selection", {}).items()
        if not c.get("complete")
    ]
    failed = [f"{t}/{r['key']}" for t, s in states.items() for r in s["runs"] if r.get("status") != "ok"]
    if incomplete or failed:
        lines.append(
            f"- **Incomplete.** learning-rate search incomplete: {incomplete or 'none'}; failed runs: {failed or 'none'}."
        )
    lines.append(
        "- **Wall times** are per run (training plus per-epoch validation and the final test), on the hardware "
        "above, possibly shared with other jobs; the learning-rate search multiplies each method's cost by the "
        "number of candidates."
    )
    return lines


def commands(states: dict[str, dict[str, Any]]) -> list[str]:
    cmds = [s["command"] for state in states.values() for s in state.get("sessions", [])]
    return [*dict.fromkeys(cmds), "python scripts/make_report.py"]


def section(
    states: dict[str, dict[str, Any]],
    eff: dict[str, Any] | None,
    plot_path: str,
    summary_path: str | None,
    backbone_note: str | None = None,
) -> str:
    """The README "Results" section (markdown, without its `## Results` heading); links relative to its file."""
    if not states:
        return "No accuracy results yet: run `python scripts/benchmark_accuracy.py`, then `python scripts/make_report.py`.\n"
    quick = [t for t, s in states.items() if s["protocol"].get("quick")]
    lines = [
        "*Generated by `scripts/make_report.py` from `results/accuracy_*.json`"
        + (" and `results/efficiency.json`" if eff else "")
        + "; do not edit by hand."
        + (
            f" The learning-rate search and every run: [`{Path(summary_path).name}`]({summary_path})."
            if summary_path
            else ""
        )
        + "*",
        "",
        *(
            [
                f"**Quick run** ({', '.join(quick)}): a smoke check of the pipeline with few methods, few epochs "
                "and subsampled data, not a result.",
                "",
            ]
            if quick
            else []
        ),
        f"**Backbone.** {backbone_sentence(states)}",
        "",
        "**Hardware.**",
        "",
        *hardware_lines(states),
        "",
        "**Commands.**",
        "",
        "```bash",
        *commands(states),
        "```",
        "",
        "**Protocol.** For every method the learning rate is chosen on a validation part carved out of the "
        "training data, never on the test part: the same number of candidates and epochs for every method, one "
        "search seed; each run keeps its best-validation epoch (which chooses the number of epochs) and reports "
        "its test metric there once. The chosen learning rate is then trained with the other seeds (and splits, where "
        "several were run); the tables give mean ± sample std over those runs. Trainable % counts every trained parameter (heads included) against the "
        "model; adapter % counts the trained backbone parameters against the backbone; adapter size is the saved "
        "weights without the task head, checkpoint size with it (the linear probe's checkpoint is its head).",
        "",
        *protocol_lines(states),
    ]
    for state in states.values():
        lines += ["", f"#### {title(state)}", "", *results_table(state)]
        if paired := paired_table(state):
            lines += [
                "",
                "Paired differences of the test metric (points) over the (split, seed) pairs both methods ran; a "
                "difference is claimed only where its 95 % t-interval excludes 0:",
                "",
                *paired,
            ]
        if table := aims_table(state):
            lines += ["", "Aims of the benchmark issue:", "", *table]
    lines += [
        "",
        f"![test metric against trainable parameters]({plot_path})",
        "",
        "#### Efficiency",
        "",
        *efficiency_lines(eff),
        "",
        "#### What these numbers do not show",
        "",
        *caveats(states, backbone_note),
    ]
    return "\n".join(lines) + "\n"


def summary_markdown(
    states: dict[str, dict[str, Any]],
    eff: dict[str, Any] | None,
    plot_path: str,
    backbone_note: str | None = None,
) -> str:
    """`results/accuracy_summary.md`: the README section plus the search and every run."""
    lines = ["# UPetu accuracy benchmark", "", section(states, eff, plot_path, None, backbone_note)]
    for state in states.values():
        lines += [
            f"## {title(state)}: learning-rate search",
            "",
            *search_table(state),
            "",
            f"## {title(state)}: fit to the training data",
            "",
            *fit_table(state),
            "",
            f"## {title(state)}: every run",
            "",
            *runs_table(state),
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plot
def plot(states: dict[str, dict[str, Any]], path: Path) -> None:
    """Test metric (mean ± std over seeds) against trainable parameters (log x), one panel per task; marker area
    grows with the size of the checkpoint the task needs (adapter or model, with the head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in states.values() if s["summary"]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.2 * max(1, len(panels)), 4.8), squeeze=False)
    sizes = [s["weights_bytes_with_head"] for st in panels for s in st["summary"].values()]
    biggest = max(sizes, default=1) or 1

    def area(n: float) -> float:
        return 25 + 600 * math.sqrt(max(n, 0) / biggest)

    for ax, state in zip(axes[0], panels):
        for name, s in state["summary"].items():
            if s["test_mean"] is None:
                continue
            x, y, err = s["trainable_params"], 100 * s["test_mean"], 100 * s["test_std"]
            color = VARIANTS[name].colour if name in VARIANTS else DEFAULT_COLOUR
            ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, alpha=0.6, capsize=3, zorder=1)
            ax.scatter(
                x, y, s=area(s["weights_bytes_with_head"]), color=color, alpha=0.75, edgecolor="k", zorder=2
            )
            ax.annotate(s["label"], (x, y), textcoords="offset points", xytext=(6, 5), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale, heads included)")
        ax.set_ylabel(f"test {metric_name(state)} (%)")
        ax.set_title(title(state), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.12)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no results", ha="center", va="center")
    reference = [v for v in (1e4, 1e5, 1e6, 1e7, 1e8) if min(sizes, default=0) <= v * 3 and v <= biggest * 3]
    handles = [
        plt.scatter([], [], s=area(v), color="white", edgecolor="k", label=fmt_bytes(v))
        for v in reference[:4]
    ]
    if handles:
        fig.legend(
            handles=handles, title="checkpoint size", loc="lower center", ncol=len(handles), frameon=False
        )
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- headline
#: The headline's columns: the variants every task compares, in this order.
HEADLINE = ("upetu", "upetu-1bit", "lora", "full", "linear")
#: The headline's verdicts, read "a minus b" (`PAIRED` entries).
VERDICTS = (("upetu", "full"), ("upetu", "lora"), ("upetu-1bit", "upetu-32bit"))
#: The efficiency rows of the headline, on the benchmark's largest model.
EFFICIENCY_HEADLINE = ("upetu_1bit", "upetu_4bit", "lora_r8", "full")


#: Short names of the verdicts' variants.
SHORT = {"upetu": "UPetu", "upetu-1bit": "1-bit", "upetu-32bit": "32-bit", "full": "full", "lora": "LoRA"}


def verdict(summary: dict[str, Any], a: str, b: str) -> str | None:
    """`a − b +d [low, high]` in points from the paired comparison, and who is ahead when the interval excludes 0;
    None without pairs."""
    d = paired_difference(summary, a, b)
    if d is None:
        return None
    low, high = d["ci95"]
    ahead = "" if d["decided"] is None else f", {SHORT[d['decided']]} ahead"
    return f"{SHORT[a]} − {SHORT[b]} {100 * d['mean']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]{ahead}"


def headline_rows(states: dict[str, dict[str, Any]]) -> list[str]:
    """One row per task: the test metric of the `HEADLINE` variants and the `VERDICTS`."""
    labels = [VARIANTS[name].label for name in HEADLINE]
    lines = [f"| task | {' | '.join(labels)} | verdict: paired difference, points [95 % interval] |"]
    lines.append("|---|" + "---:|" * len(HEADLINE) + "---|")
    for state in states.values():
        s = state["summary"]
        cells = [
            f"{points(s[n]['test_mean'])} ± {points(s[n]['test_std'])}" if n in s else "-" for n in HEADLINE
        ]
        verdicts = [v for a, b in VERDICTS if (v := verdict(s, a, b))]
        lines.append(f"| {title(state)} | {' | '.join(cells)} | {'; '.join(verdicts)} |")
    return lines


def efficiency_headline(eff: dict[str, Any] | None) -> list[str]:
    """The efficiency benchmark's largest model: trainable share, adapter bytes, step time and memory."""
    if not eff or not eff.get("models"):
        return []
    name, data = list(eff["models"].items())[-1]
    lines = [
        f"| {name} | trainable % of backbone | on disk without head | train step vs full | peak memory vs full |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in (m for m in EFFICIENCY_HEADLINE if m in data["methods"]):
        entry, ratio = data["methods"][method], data.get("ratios", {}).get(method, {})
        step, memory = ratio.get("train_step_vs_full", 1.0), ratio.get("peak_memory_vs_full", 1.0)
        lines.append(
            f"| {entry['label']} | {entry['trainable_pct_of_backbone']:.2f} % "
            f"| {fmt_bytes(entry['disk_bytes_without_head'])} | {step:.2f}x | {memory:.2f}x |"
        )
    return lines


def headline(states: dict[str, dict[str, Any]], eff: dict[str, Any] | None, links: dict[str, str]) -> str:
    """The README's results table (at most 25 lines): current numbers only, with verdicts; `links` maps `docs`
    and `index` to paths relative to the README."""
    if not states:
        return "No accuracy results yet: run `python scripts/benchmark_accuracy.py`, then `python scripts/make_report.py`.\n"
    b = next(iter(states.values()))["backbone"]
    lines = [
        f"*Generated by `scripts/make_report.py` from the current files of [`results/`]({links['index']}); "
        f"protocol, every table and the caveats: [{Path(links['docs']).name}]({links['docs']}).*",
        "",
        f"Test metric (%), mean ± std over the runs of each method, on a {b['backbone_params'] / 1e6:.1f} M-parameter "
        f"{architecture(b)} backbone, each method at its learning rate chosen on validation. Verdicts pair the runs "
        "of two methods; one is called ahead only where the 95 % interval excludes 0:",
        "",
        *headline_rows(states),
    ]
    if table := efficiency_headline(eff):
        lines += ["", "Efficiency (`results/efficiency.json`, randomly initialised model, CPU):", "", *table]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- results index
ACCURACY = "`python scripts/benchmark_accuracy.py` (each session's command is in the file's `sessions`)"
REPORT = "`python scripts/make_report.py`"
#: What every file under `results/` is, in order of precedence: (glob, status, what, command). A file that matches
#: none is listed as undescribed (and `tests/test_layout_scripts.py` fails).
RESULTS: tuple[tuple[str, str, str, str], ...] = (
    ("README.md", "current", "this index", REPORT),
    (
        "accuracy_summary.md",
        "current",
        "every table, learning-rate search and run of the accuracy benchmark",
        REPORT,
    ),
    ("accuracy_vs_params.png", "current", "test metric against trainable parameters", REPORT),
    (
        "accuracy_oscd13_default_head.json",
        "current",
        "OSCD-13: 13 bands against RGB, default head rate",
        "`python scripts/benchmark_oscd.py` (command in `sessions`)",
    ),
    (
        "accuracy_oscd13.json",
        "current",
        "OSCD-13 with the head at the adapter's rate (`--head-lr lr`)",
        "`python scripts/benchmark_oscd.py --head-lr lr` (command in `sessions`)",
    ),
    (
        "accuracy_*.json",
        "current",
        "the accuracy benchmark's ledger of one task: every run, choice, summary",
        ACCURACY,
    ),
    (
        "efficiency.*",
        "current",
        "parameters, bytes, step time, memory, launch-bound costs",
        "`python scripts/benchmark_efficiency.py` (command in `meta`)",
    ),
    (
        "budget.json",
        "current",
        "adapter and decoder sizes on ConvNeXt-B and -atto",
        "`python scripts/budget.py`",
    ),
    (
        "checkpoint_sizes.json",
        "current",
        "bytes of a training checkpoint per method",
        "`python scripts/checkpoint_sizes.py`",
    ),
    (
        "fault_table.*",
        "current",
        "what `upetu-train` / `upetu-eval` say on each fault",
        "`python scripts/fault_table.py`",
    ),
    (
        "peft_custom_suite.json",
        "current",
        "peft's own custom-model test suite run on UPetu",
        "`python scripts/peft_custom_suite.py`",
    ),
    (
        "head_lr_*.json",
        "current",
        "the dense heads' learning-rate search behind `DENSE_HEAD_LR` / `dense_head_lr`",
        "`python scripts/head_lr_search.py` (command in `sessions`)",
    ),
    ("search2/*.json", "current", "UCM-55 with a two-seed learning-rate search", ACCURACY),
    ("epochs20/*.json", "current", "UCM-55 at 20 epochs", ACCURACY),
    (
        "search2/*",
        "current",
        "the report of `search2/`",
        "`python scripts/make_report.py --results-dir results/search2 --efficiency results/efficiency.json --readme /dev/null`",
    ),
    (
        "epochs20/*",
        "current",
        "the report of `epochs20/`",
        "`python scripts/make_report.py --results-dir results/epochs20 --efficiency results/efficiency.json --readme /dev/null`",
    ),
    ("speed/*.json", "current", "one 1-bit run before and after the fast paths: the same numbers", ACCURACY),
    (
        "format_comparison/*",
        "current",
        "issue 27's format comparison, running from a worktree at commit a423d7e",
        "`bash results/format_comparison/run.sh`, then `python scripts/format_comparison.py results/format_comparison`",
    ),
    (
        "history/provenance.json",
        "current",
        "the command and commit of every file under `history/`",
        "written once, by hand, when the trials retired (issue 29)",
    ),
    (
        "history/qlinear_ablations/*",
        "superseded",
        "one Q-Linear design trial on UCM-55 (1-bit unless named)",
        "",
    ),
    ("history/qlinear_v*", "superseded", "UCM-55 ledger of one Q-Linear format (1 to 5)", ""),
    (
        "history/*qlinear_comparison.*",
        "superseded",
        "the Q-Linear formats compared (retired `compare_qlinear.py`)",
        "",
    ),
    (
        "history/epochs20/bits_*",
        "superseded",
        "1-bit against 32-bit at 20 epochs (input of the comparison)",
        "",
    ),
)


def describe(path: str, provenance: dict[str, Any]) -> tuple[str, str, str]:
    """(status, what, command) of the file at `path` (relative to `results/`)."""
    for pattern, status, what, command in RESULTS:
        if fnmatch.fnmatch(path, pattern):
            record = provenance.get(path)
            if record:  # retired: its command and the commit it was committed in
                text = record["command"] if len(record["command"]) <= 100 else record["command"][:100] + " …"
                command = f"`{text}` (commit {record['committed_in'][:10]})"
            return status, what, command
    return "undescribed", "**not described: add it to `make_report.RESULTS`**", "-"


def results_index(results_dir: Path) -> str:
    """`results/README.md`: every file under `results_dir`, its status, what it holds and its command."""
    provenance_file = results_dir / "history" / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    files = sorted(p.relative_to(results_dir).as_posix() for p in results_dir.rglob("*") if p.is_file())
    lines = [
        "# results/",
        "",
        "Written by `python scripts/make_report.py`; do not edit by hand. Every file under `results/`, whether it is "
        "current or superseded, what it holds and the command that produces it. Superseded files live under "
        "`history/` with the command and the commit they were committed in (`history/provenance.json`); the "
        "scripts of retired trials are gone, so rerun them from that commit. `format_comparison/` runs from a "
        "worktree at commit a423d7e (`format_comparison/run.sh`), not from the current scripts.",
        "",
        "| file | status | what | command |",
        "|---|---|---|---|",
    ]
    for path in files:
        status, what, command = describe(path, provenance)
        lines.append(f"| `{path}` | {status} | {what} | {command} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- files
def update_markers(path: Path, text: str) -> bool:
    """Replace what lies between the markers of `path`, leaving the rest alone; False (file untouched) when the
    file or its markers are missing."""
    if not path.is_file():
        return False
    content = path.read_text()
    start, end = content.find(START), content.find(END)
    if start < 0 or end < start:
        return False
    write_text_atomic(path, content[: start + len(START)] + "\n" + text + content[end:])
    return True


def relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder` for a markdown link (`..` allowed), or absolute on another drive."""
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = REPO_ROOT / "results"
    parser.add_argument("--results-dir", default=str(default), help="where accuracy_*.json are")
    parser.add_argument("--efficiency", help="efficiency JSON (default: <results-dir>/efficiency.json)")
    parser.add_argument("--markdown", help="summary file (default: <results-dir>/accuracy_summary.md)")
    parser.add_argument("--plot", help="plot file (default: <results-dir>/accuracy_vs_params.png)")
    parser.add_argument(
        "--readme", default=str(REPO_ROOT / "README.md"), help="README for the headline table"
    )
    parser.add_argument("--docs", help="page for the full tables (default: docs/benchmarks.md for results/)")
    parser.add_argument("--index", help="the index of results/ (default: results/README.md for results/)")
    parser.add_argument(
        "--backbone-note",
        help='what the JSON cannot know about the backbone, added to the caveats, e.g. "pretrained from scratch '
        'on a CPU"',
    )
    args = parser.parse_args(argv)
    if Path(args.results_dir).resolve() == default.resolve():  # another folder is a side protocol's
        args.docs = args.docs or str(REPO_ROOT / "docs" / "benchmarks.md")
        args.index = args.index or str(default / "README.md")
    return args


def write_section(path: Path, text: str, what: str) -> None:
    """`text` between the markers of `path`, or printed when it has none."""
    if update_markers(path, text):
        print(f"make_report: updated the {what} of {path}", file=sys.stderr)
    else:
        print(f"make_report: {path} has no {START} ... {END} markers; the {what} follows.", file=sys.stderr)
        print(f"{START}\n{text}{END}")


def main(argv: Sequence[str] | None = None) -> str:
    """Write the summary, the plot, the README's headline, the docs' full tables and the index of results/ (each
    where asked); returns the full section."""
    args = parse_args(argv)
    results = Path(args.results_dir)
    states = load_accuracy(results)
    eff = load_efficiency(Path(args.efficiency) if args.efficiency else results / "efficiency.json")
    markdown = Path(args.markdown) if args.markdown else results / "accuracy_summary.md"
    plot_file = Path(args.plot) if args.plot else results / "accuracy_vs_params.png"
    readme = Path(args.readme)
    page = Path(args.docs) if args.docs else readme  # without a docs page the README gets the full section
    text = section(
        states, eff, relative(plot_file, page.parent), relative(markdown, page.parent), args.backbone_note
    )
    plot(states, plot_file)
    write_text_atomic(
        markdown, summary_markdown(states, eff, relative(plot_file, markdown.parent), args.backbone_note)
    )
    if args.docs:
        index = Path(args.index) if args.index else results / "README.md"
        links = {"docs": relative(page, readme.parent), "index": relative(index, readme.parent)}
        write_section(page, text, "full tables")
        write_section(readme, headline(states, eff, links), "headline table")
    else:
        write_section(readme, text, "results section")
    if args.index:
        write_text_atomic(Path(args.index), results_index(results))
    print(f"make_report: wrote {markdown} and {plot_file}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
