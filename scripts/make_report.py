#!/usr/bin/env python
"""Every generated report of the benchmarks, from `results/accuracy_*.json` (`scripts/benchmark_accuracy.py`) and
`results/efficiency.json` (`scripts/benchmark_efficiency.py`): numbers from the JSON files, prose from
`templates/report.md`. Writes `accuracy_summary.md` and `accuracy_vs_params.png` into the results folder; for
`results/` itself also the region between `<!-- results:start -->` and `<!-- results:end -->` of README.md (a
headline of at most 25 lines) and of docs/benchmarks.md (full tables, protocol, caveats), and `results/README.md`,
the index of every file under `results/` (`templates/results_files.md`), and refreshes the numbers cited in the
prose of README.md and docs/*.md (`_facts.py`). Another folder's full section goes to
`--readme`; a file without markers is left alone and the section printed. `efficiency_markdown` renders
`results/efficiency.md`.

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

from _common import REPO_ROOT, TEMPLATE_FILE, fill, fmt_count, row, table, write_text_atomic
from _facts import render as render_facts
from _ledger import final_pairs, fmt_interval, mean_std, paired_difference, split_of
from _variants import DEFAULT_COLOUR, VARIANTS

START, END = "<!-- results:start -->", "<!-- results:end -->"
TASK_ORDER = ("classification", "segmentation", "change-detection")
TASK_TITLES = dict(zip(TASK_ORDER, ("Scene classification", "Semantic segmentation", "Change detection")))
METRIC_NAMES = {"accuracy": "accuracy", "mean_iou": "mIoU", "f1": "change F1"}
#: Paired comparisons shown per task: (a, b), read "a minus b".
PAIRED = (("upetu", "full"), ("upetu", "lora"), ("upetu", "linear"), ("upetu-1bit", "upetu-32bit"),
          ("upetu", "upetu-32bit"), ("upetu-small", "lora-small"))  # fmt: skip
#: Aims of the benchmark issue (thresholds, not results).
ONE_BIT_MAX_LOSS = 0.5  # accuracy points, 1-bit vs 32-bit
SMALL_BUDGET_PCT = 1.0  # % of the backbone for `upetu-small`
#: The headline's columns: the variants every task compares, in this order.
HEADLINE = ("upetu", "upetu-1bit", "lora", "full", "linear")
#: The headline's verdicts, read "a minus b" (`PAIRED` entries).
VERDICTS = (("upetu", "full"), ("upetu", "lora"), ("upetu-1bit", "upetu-32bit"))
#: The efficiency rows of the headline, on the benchmark's largest model.
EFFICIENCY_HEADLINE = ("upetu_1bit", "upetu_4bit", "lora_r8", "full")
#: Below this share of CPU time per thread, other processes competed for the cores (efficiency benchmark).
CONTENDED_CPU_SHARE = 0.8
#: Short names of the verdicts' variants.
SHORT = {"upetu": "UPetu", "upetu-1bit": "1-bit", "upetu-32bit": "32-bit", "full": "full", "lora": "LoRA"}
#: How an aim's verdict reads.
MET = {True: "yes", False: "**no**", None: "not measured"}
#: Protocol entries that subsample the data.
LIMITS = ("max_train_samples", "max_eval_samples")


def load_accuracy(results_dir: Path) -> dict[str, dict[str, Any]]:
    """`{task: state}` of every `accuracy_*.json` of `benchmark_accuracy.py` in `results_dir`, in task order."""
    states = [json.loads(path.read_text()) for path in sorted(results_dir.glob("accuracy_*.json"))]
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    states = {s["task"]: s for s in states if "task" in s and "summary" in s}
    return dict(sorted(states.items(), key=lambda item: order.get(item[0], len(order))))


def fmt_bytes(n: float | None) -> str:
    """Bytes as KB / MB (powers of 1000)."""
    return "-" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def fmt_size(n: float) -> str:
    """Bytes in B / KB / MB / GB with one decimal (powers of 1000), as the efficiency report shows them."""
    unit, scale = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)) if n >= s), ("B", 0))
    return f"{n / scale:.1f} {unit}" if scale else f"{int(n)} B"


def fmt_seconds(s: float | None) -> str:
    return "-" if s is None else f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def fmt_lr(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.3g}"


def ratio(value: float | None, digits: int = 2) -> str:
    """A ratio as `1.23x`, `-` when absent."""
    return "-" if value is None else f"{value:.{digits}f}x"


def spread(q: dict[str, float], digits: int = 2) -> str:
    """A ratio's median and quartiles: `1.23x [1.10-1.30]`."""
    return f"{q['median']:.{digits}f}x [{q['q1']:.{digits}f}-{q['q3']:.{digits}f}]"


def points(x: float | None) -> str:
    """A metric in [0, 1] as percentage points."""
    return "-" if x is None else f"{100 * x:.2f}"


def mean_pm(s: dict[str, Any], key: str = "test") -> str:
    """`mean ± std` of a summary row's `key` metric, in points."""
    return f"{points(s[f'{key}_mean'])} ± {points(s[f'{key}_std'])}"


def metric_name(state: dict[str, Any]) -> str:
    return METRIC_NAMES.get(state["metric"], state["metric"])


def architecture(backbone: dict[str, Any]) -> str:
    kind = backbone.get("model_type") or "convnext"
    return {"convnext": "ConvNeXt", "convnextv2": "ConvNeXt V2"}.get(kind, kind)


def title(state: dict[str, Any]) -> str:
    paths = state["sessions"][-1]["paths"] if state.get("sessions") else {}
    data = ", ".join(Path(d).name for d in paths.get("sources") or paths.get("data") or [])
    base = TASK_TITLES.get(state["task"], state["task"])
    return f"{base} ({data}, {metric_name(state)})" if data else f"{base} ({metric_name(state)})"


def results_table(state: dict[str, Any]) -> list[str]:
    """One row per method: test metric mean +- std, parameters, sizes, learning rate and wall time."""
    rows = []
    for s in state["summary"].values():
        factor = f" (x{s['lr_factor']:.3g})" if s.get("lr_factor") is not None else ""
        flag = "" if s.get("selection_complete", True) else " (search incomplete)"
        splits, seeds = len(set(s.get("split_seeds") or [0])), len(set(s["seeds"]))
        runs = str(s["n"]) if splits == 1 else f"{s['n']} ({splits} splits x {seeds} seeds)"
        rows.append(
            f"| {s['label']}{flag} | {mean_pm(s)} | {runs} "
            f"| {fmt_count(s['trainable_params'])} | {s['trainable_pct']:.2f} % "
            f"| {s['adapter_pct_of_backbone']:.2f} % | {fmt_bytes(s['weights_bytes_without_head'])} "
            f"| {fmt_bytes(s['weights_bytes_with_head'])} | {fmt_lr(s['lr'])}{factor} "
            f"| {', '.join(str(e) for e in s['best_epochs'])} | {fmt_seconds(s['wall_time_s_mean'])} |"
        )
    return table(fill("results_header", metric=metric_name(state)), "lrrrrrrrrlr", rows)


def paired_table(state: dict[str, Any]) -> list[str]:
    """Paired test differences (points, 95 % t-interval) between methods; one is ahead where it excludes 0."""
    labels = {name: s["label"] for name, s in state["summary"].items()}
    rows = []
    for d in (d for a, b in PAIRED if (d := paired_difference(state["summary"], a, b))):
        verdict = "no difference shown" if d["decided"] is None else f"{labels[d['decided']]} ahead"
        pair = f"{labels[d['a']]} − {labels[d['b']]}"
        rows.append(f"| {pair} | {d['n']} | {fmt_interval(d, ' | ')} | {verdict} |")
    return rows and table("comparison | pairs | mean difference | 95 % interval | verdict", "lrrll", rows)


def search_table(state: dict[str, Any]) -> list[str]:
    """Validation metric of every learning-rate candidate, the choice in bold, an edge of the grid flagged."""
    seeds = state.get("protocol", {}).get("search_seeds")
    mean = f" (mean over seeds {', '.join(map(str, seeds))})" if seeds else ""
    rows = []
    for variant, choice in state.get("selection", {}).items():
        cells = []
        for c in choice.get("candidates", []):
            score = points(c["validation_score"]) if c["validation_score"] is not None else "missing"
            cell = f"{fmt_lr(c['lr'])}: {score}"
            cells.append(f"**{cell}**" if c["lr"] == choice.get("lr") else cell)
        edge = "" if choice.get("interior", True) else " (edge of the grid)"
        label = state["variants"].get(variant, {}).get("label", variant)
        rows.append(f"| {label} | {'; '.join(cells)} | {fmt_lr(choice.get('lr'))}{edge} |")
    return table(fill("search_header", metric=metric_name(state), mean=mean), "llr", rows)


def fit_table(state: dict[str, Any]) -> list[str]:
    """How closely each method fits its training data: the last epoch's training loss (augmentation and drop path
    on) over the summary's runs; higher than another method's at its own tuned rate means underfitting."""
    rows = []
    for variant, s in state["summary"].items():
        pairs = set(final_pairs(s))
        same = (variant, "ok", s["lr"], s["options"])
        runs = [r for r in state["runs"] if (r["variant"], r.get("status"), r["lr"], r["options"]) == same]
        runs = [r for r in runs if (split_of(r), r["seed"]) in pairs]
        if losses := [r["history"][-1]["train_loss"] for r in runs if r.get("history")]:
            loss = "{:.3f} ± {:.3f}".format(*mean_std(losses))
            rows.append(row(s["label"], len(losses), loss, mean_pm(s, "validation"), mean_pm(s)))
    return table(fill("fit_header", metric=metric_name(state)), "lrrrr", rows)


def runs_table(state: dict[str, Any]) -> list[str]:
    """Every run: configuration, best epoch, validation and test metric, wall time, device."""
    rows = []
    for r in state["runs"]:
        head = f"| {r['label']} | {fmt_lr(r['lr'])} | {r.get('split_seed', 0)} | {r['seed']} "
        if r.get("status") != "ok":
            rows.append(f"{head}| FAILED: {r.get('error', '')} |||||")
            continue
        phase = r.get("phase", "")
        if phase == "search" and state.get("selection", {}).get(r["variant"], {}).get("lr") == r["lr"]:
            phase = "search, chosen (final seed)"
        rows.append(
            f"{head}| {phase} | {r['best_epoch']} | {points(r['validation_score'])} "
            f"| {points(r['test_score'])} | {fmt_seconds(r['wall_time_s'])} | {r['device']} |"
        )
    return table(fill("runs_header", metric=metric_name(state)), "lrrrlrrrrl", rows)


def aims(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark issue's aims for the task, checked on the summary (`met` None: not measured)."""
    s = state["summary"]
    if state.get("task") != "classification":
        return dense_aims(s)
    lora = s.get("lora", {}).get("options", {}).get("r") or state.get("backbone", {}).get("lora_matched_r")
    clearly, one_bit = "by more than the sum of the stds", f"1-bit loses at most {ONE_BIT_MAX_LOSS} points"
    checks = [
        ("UPetu (default) >= full fine-tuning", "upetu", "full", lambda d: d >= 0),
        (f"UPetu (default) beats LoRA r={lora} at matched parameters {clearly}", "upetu", "lora", None),
        (f"UPetu (default) beats the linear probe clearly ({clearly})", "upetu", "linear", None),
        (f"{one_bit} vs 32-bit", "upetu-1bit", "upetu-32bit", lambda d: d >= -ONE_BIT_MAX_LOSS),
    ]
    if small := s.get("upetu-small"):
        pct, paired = small["adapter_pct_of_backbone"], paired_difference(s, "upetu-small", "lora-small")
        aim = fill("aim_small", r=small["options"].get("r"), pct=pct, budget=SMALL_BUDGET_PCT)

        def beats(d: float) -> bool:
            return pct < SMALL_BUDGET_PCT and (paired["decided"] == "upetu-small" if paired else d > 0)

        checks.append((aim, "upetu-small", "lora-small", beats))

    def mean(name: str) -> float | None:
        return 100 * s[name]["test_mean"] if s.get(name, {}).get("test_mean") is not None else None

    def std(name: str) -> float:
        return 100 * (s.get(name, {}).get("test_std") or 0.0)

    found = []
    for aim, a, b, met in checks:
        d = None if mean(a) is None or mean(b) is None else mean(a) - mean(b)
        met = met or (lambda d, a=a, b=b: d > std(a) + std(b))
        found.append({"aim": aim, "difference_points": d, "met": None if d is None else met(d)})
    return found


def dense_aims(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The dense tasks' aims: UPetu level with full fine-tuning and LoRA, unless paired comparisons say behind."""
    found = []
    for other in (o for o in ("full", "lora") if o in s and "upetu" in s):
        aim, paired = fill("aim_dense", label=s[other]["label"]), paired_difference(s, "upetu", other)
        d, met = (None, None) if paired is None else (100 * paired["mean"], paired["decided"] != other)
        found.append({"aim": aim, "difference_points": d, "met": met})
    return found


def launch_bound_lines(data: dict[str, Any]) -> list[str]:
    """One model's table "Launch-bound regime (batch 1 / op counts)" from its `launch_bound` record (op counts and
    their ratio to LoRA r=8, batch-1 latency against the base model); none under `--no-launch-bound`."""
    if not (launch := data.get("launch_bound")):
        return []
    ref = launch["reference"]
    label, base_ms = data["methods"].get(ref, {}).get("label", ref), launch["base_latency"]["median"] * 1e3
    ops = f"{launch['base_inference_ops']:,} | {ratio(launch[f'base_inference_ops_vs_{ref}'])}"
    lines = ["", fill("launch_bound", **launch, label=label, base_ms=base_ms)]
    lines.append(f"| Base model (no adapter) | - | - | {ops} | 1.00x |")
    for name, entry in data["methods"].items():
        bound = entry["launch_bound"]
        lines.append(
            f"| {entry.get('label', name)} | {bound['train_step_ops']:,} "
            f"| {ratio(bound[f'train_step_ops_vs_{ref}'])} | {bound['loaded_inference_ops']:,} "
            f"| {ratio(bound[f'loaded_inference_ops_vs_{ref}'])} | {spread(bound['batch1_latency_ratio'])} |"
        )
    return lines


def efficiency_lines(eff: dict[str, Any] | None) -> list[str]:
    """The docs' part of the efficiency benchmark: where it ran, then `results/efficiency.md`'s table of every model
    and of the targets (those of the entries marked primary) under smaller headings; a note when it is absent."""
    if eff is None:
        return [fill("efficiency_absent")]
    meta, machine = eff["meta"], eff["meta"]["machine"]
    values = {**meta, **machine, "processor": machine.get("gpu") or machine["cpu_model"]}
    values["quick"] = " " + fill("efficiency_quick") if meta["quick"] else ""
    lines = [fill("efficiency_from", **values)]
    for name, data in eff["models"].items():
        lines += efficiency_model(name, data, meta, "#####")
    if target := next(((t["model"], t["method"]) for t in eff["targets"] if t["primary"]), None):
        lines += efficiency_targets(eff["targets"], *target, "#####")
    return lines


def efficiency_model(name: str, data: dict[str, Any], meta: dict[str, Any], heading: str = "##") -> list[str]:
    """One model's part of `efficiency_markdown` (`heading`: its markdown heading's hashes): table, contention
    warning, noise and launch-bound table."""
    shape = {k: "-".join(map(str, data[k])) for k in ("depths", "widths")}
    backbone = fmt_count(data["backbone_params"])
    lines = ["", fill("efficiency_model", heading=heading, name=name, backbone=backbone, **shape)]
    for method, entry in data["methods"].items():
        r, step = data["ratios"][method], entry["train_step"]
        lines.append(
            f"| {entry['label']} | {fmt_count(entry['trainable_params_without_head'])} "
            f"| {entry['trainable_pct_of_backbone']:.2f} % | {fmt_size(entry['disk_bytes_without_head'])} "
            f"| {fmt_size(entry['disk_bytes_with_head'])} | {step['median']:.3f} ± {step['rel_iqr'] * 100:.0f} % "
            f"| {ratio(r.get('train_step_vs_full'))} | {ratio(r.get('train_step_vs_lora_r8'))} "
            f"| {fmt_size(entry['memory']['peak_bytes'])} | {ratio(r.get('peak_memory_vs_full'))} "
            f"| {spread(entry['inference_ratio'], 3)} |"
        )
    noise, base = data["noise"], data["base_inference"]
    values = dict(share=noise["cpu_share"], load_start=noise["loadavg_start"][0], wall=data["wall_time_s"])
    values |= dict(load_end=noise["loadavg_end"][0], median=base["median"], iqr=base["rel_iqr"] * 100)
    if noise["cpu_share"] < CONTENDED_CPU_SHARE:
        load, threads = max(values["load_start"], values["load_end"]), meta["machine"]["torch_num_threads"]
        lines += ["", fill("efficiency_contended", share=noise["cpu_share"], threads=threads, load=load)]
    controls = noise["same_architecture_inference_ratio"].items()
    controls = ", ".join(f"{data['methods'][n]['label']} {spread(c, 3)}" for n, c in controls)
    values["controls"] = controls and fill("efficiency_controls", controls=controls)
    return [*lines, "", fill("efficiency_noise", **values), *launch_bound_lines(data)]


def efficiency_targets(targets: list[dict], model: str, method: str, heading: str = "##") -> list[str]:
    """The benchmark issue's targets, one column per UPetu variant, under a `heading` (markdown hashes)."""
    variants = list(dict.fromkeys(check["method"] for check in targets))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for check in targets:
        shown = fmt_size(check["value"]) if "bytes" in check["target"] else f"{check['value']:.2f}"
        met = "yes" if check["met"] else "**NO**"
        cells.setdefault((check["model"], check["target"]), {})[check["method"]] = f"{shown} {met}"
    rows = [row(m, t, *(c.get(v, "-") for v in variants)) for (m, t), c in cells.items()]
    lines = ["", fill("efficiency_targets", heading=heading, model=model, method=method), ""]
    return lines + table(" | ".join(["model", "target", *variants]), "ll" + "r" * len(variants), rows)


def efficiency_markdown(results: dict[str, Any], target: tuple[str, str]) -> str:
    """`results/efficiency.md`: settings, a table per model, the targets (`target`: the issue's own) and notes."""
    meta, machine = results["meta"], results["meta"]["machine"]
    num_labels = next(iter(results["models"].values()))["num_labels"]
    quick = "\n- " + fill("efficiency_quick") if meta["quick"] else ""
    values = {**meta, **machine, "load": machine["loadavg"][0], "quick": quick}
    lines = [fill("efficiency_head", **values, num_labels=num_labels)]
    for name, data in results["models"].items():
        lines += efficiency_model(name, data, meta)
    if results["targets"]:
        lines += efficiency_targets(results["targets"], *target)
    return "\n".join([*lines, "", fill("efficiency_notes"), ""])


def backbone_sentence(states: dict[str, dict[str, Any]]) -> str:
    """The backbone as the JSON records it (architecture, size, pretraining)."""
    b = next(iter(states.values()))["backbone"]
    depths, widths = ("-".join(map(str, b.get(k, []))) for k in ("depths", "hidden_sizes"))
    text = f"`{b.get('name', b.get('model'))}`: {architecture(b)}, depths {depths}, widths {widths}, "
    text += f"{b['backbone_params'] / 1e6:.2f} M backbone parameters"
    if pre := b.get("pretraining"):
        text += f"; pretrained on {pre.get('data', '?')} at {pre.get('res', '?')} px for {pre.get('epochs', '?')} epochs"
        if "final_heldout_accuracy" in pre:
            text += f" ({100 * pre['final_heldout_accuracy']:.1f} % held-out accuracy)"
    return text + "."


def hardware_lines(states: dict[str, dict[str, Any]]) -> list[str]:
    """Per task: the devices the runs used, and the machines of the sessions."""
    lines = []
    for task, state in states.items():
        devices = "; ".join(sorted({r["device"] for r in state["runs"] if r.get("device")})) or "-"
        machines = [session["machine"] for session in state.get("sessions", [])]
        loads = ", ".join(f"{m['loadavg'][0]:.1f}" for m in machines if m.get("loadavg"))
        loads = f"; load average at start {loads}" if loads else ""
        gpus = [", ".join(m["gpus"]) + " + " if m.get("gpus") else "" for m in machines]
        machines = "; ".join(dict.fromkeys(g + fill("machine", **m) for g, m in zip(gpus, machines)))
        lines.append(f"- {task}: runs on {devices}; machine(s): {machines}{loads}.")
    return lines


def data_sentence(task: str, p: dict[str, Any]) -> str:
    """How a task's data were split and sized (the `data_<task>` block of the templates)."""
    split = p.get("split", {})
    tf, vf = split.get("train_fraction", 0), split.get("validation_fraction", 0)
    pairs, repeats = split.get("by_pairs", {}), split.get("train_repeats")
    values = {f"{k}_pairs": len(pairs.get(k, [])) for k in ("train", "validation", "test")}
    values |= dict(train_pct=100 * tf, validation_pct=100 * vf, tile_train=100 * tf * (1 - vf))
    values |= dict(tile_validation=100 * tf * vf, tile_test=100 * (1 - tf), train_repeats=repeats)
    values["split_seeds"] = p.get("split_seeds", [p.get("split_seed", 0)])  # the first files: one
    return fill(f"data_{task}", **{**p, **values})


def protocol_lines(states: dict[str, dict[str, Any]]) -> list[str]:
    """The protocol, from each task's recorded settings."""
    lines = []
    for task, state in states.items():
        p, metric = state["protocol"], metric_name(state)
        limits = [f"{k.replace('_', ' ')} {p[k]}" for k in LIMITS if p.get(k) is not None]
        if p.get("search_seeds"):
            search = f"seeds {', '.join(map(str, p['search_seeds']))} (their mean validation {metric})"
        else:
            search = f"seed {p['search_seed']}"
        values = dict(data=data_sentence(task, p), split=p.get("split_seed", 0), search=search, metric=metric)
        values["limits"] = "; subsampled: " + ", ".join(limits) if limits else ""
        values["epochs"] = f"{p['epochs']} epoch" + ("" if p["epochs"] == 1 else "s")
        values["factors"] = ", ".join(f"{f:.3g}" for f in p["lr_factors"])
        values["seeds"] = sorted({seed for s in state["summary"].values() for seed in s["seeds"]})
        head = p.get("dense_head_lr")
        values["head"] = "" if head is None else " " + fill("protocol_head", lr=head)
        lines.append(fill("protocol", **{**p, **values}))
    return lines


def caveats(states: dict[str, dict[str, Any]]) -> list[str]:
    """What the numbers do not show, from the recorded settings."""
    b = next(iter(states.values()))["backbone"]
    pre = b.get("pretraining", {})
    origin = f"pretrained on {pre['data']}" if pre.get("data") else "(its pretraining is not recorded here)"
    size, arch = b["backbone_params"] / 1e6, architecture(b)
    lines = [fill("caveat_backbone", size=size, architecture=arch, origin=origin)]
    for task, state in states.items():
        summary = state["summary"].values()
        splits = next((s.get("splits") for s in summary if s.get("splits")), None)
        if pairs := state["protocol"].get("split", {}).get("by_pairs"):  # change detection: count the pairs
            splits = {f"{k} pairs": len(v) for k, v in pairs.items()}
        runs = "/".join(map(str, sorted({s["n"] for s in summary})))
        n_splits = max(len(set(s.get("split_seeds") or [0])) for s in summary)
        spread_of = fill("caveat_splits" if n_splits > 1 else "caveat_one_split", runs=runs, splits=n_splits)
        sizes = ", ".join(f"{k} {v}" for k, v in (splits or {}).items())
        sizes = f"{sizes} examples" if sizes else "Split sizes not recorded"
        lines.append(f"- **{task}.** {sizes} (search split); {spread_of}.")
    choices = [(t, v, c) for t, s in states.items() for v, c in s.get("selection", {}).items()]
    incomplete = [f"{t}/{v}" for t, v, c in choices if not c.get("complete")]
    failed = [f"{t}/{r['key']}" for t, s in states.items() for r in s["runs"] if r.get("status") != "ok"]
    if incomplete or failed:
        lines.append(fill("caveat_incomplete", incomplete=incomplete or "none", failed=failed or "none"))
    return [*lines, fill("caveat_wall_times")]


def task_tables(state: dict[str, Any]) -> str:
    """A task's part of the section: its results table, paired differences and aims (those measured)."""
    lines = ["", "", f"#### {title(state)}", "", *results_table(state)]
    if paired := paired_table(state):
        lines += ["", fill("paired"), "", *paired]
    rows = []
    for c in aims(state):
        d = "-" if c["difference_points"] is None else f"{c['difference_points']:+.2f}"
        rows.append(f"| {c['aim']} | {d} | {MET[c['met']]} |")
    if rows:
        lines += ["", fill("aims"), "", *table("aim | difference (points) | met", "lrl", rows)]
    return "\n".join(lines)


def section(states: dict[str, dict], eff: dict | None, plot_path: str, summary_path: str | None) -> str:
    """The README "Results" section (markdown, without its `## Results` heading); links relative to its file."""
    if not states:
        return fill("no_results") + "\n"
    quick = ", ".join(t for t, s in states.items() if s["protocol"].get("quick"))
    link = summary_path and fill("summary_link", name=Path(summary_path).name, path=summary_path)
    commands = [s["command"] for state in states.values() for s in state.get("sessions", [])]
    values = dict(with_efficiency=" and `results/efficiency.json`" if eff else "", summary_link=link or "")
    values |= dict(quick=quick and fill("quick", tasks=quick) + "\n\n", backbone=backbone_sentence(states))
    values |= dict(hardware="\n".join(hardware_lines(states)), protocol="\n".join(protocol_lines(states)))
    values["commands"] = "\n".join([*dict.fromkeys(commands), "python scripts/make_report.py"])
    values |= dict(plot=plot_path, tasks="".join(map(task_tables, states.values())))
    values |= dict(efficiency="\n".join(efficiency_lines(eff)), caveats="\n".join(caveats(states)))
    return fill("section", **values) + "\n"


def summary_markdown(states: dict[str, dict[str, Any]], eff: dict[str, Any] | None, plot_path: str) -> str:
    """`results/accuracy_summary.md`: the README section plus the search, the fit and every run."""
    lines = ["# UPetu accuracy benchmark", "", section(states, eff, plot_path, None)]
    tables = {"learning-rate search": search_table, "fit to the training data": fit_table}
    tables["every run"] = runs_table
    for state in states.values():
        for heading, rows in tables.items():
            lines += [f"## {title(state)}: {heading}", "", *rows(state), ""]
    return "\n".join(lines)


def plot(states: dict[str, dict[str, Any]], path: Path) -> None:
    """Test metric against trainable parameters (log x), a panel per task, marker area the checkpoint's size."""
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
        for name, s in ((n, s) for n, s in state["summary"].items() if s["test_mean"] is not None):
            x, y, err = s["trainable_params"], 100 * s["test_mean"], 100 * s["test_std"]
            color = VARIANTS[name].colour if name in VARIANTS else DEFAULT_COLOUR
            ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, alpha=0.6, capsize=3, zorder=1)
            size = area(s["weights_bytes_with_head"])
            ax.scatter(x, y, s=size, color=color, alpha=0.75, edgecolor="k", zorder=2)
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
    key = dict(color="white", edgecolor="k")
    legend = [plt.scatter([], [], s=area(v), label=fmt_bytes(v), **key) for v in reference[:4]]
    if legend:
        key = dict(title="checkpoint size", loc="lower center", ncol=len(legend), frameon=False)
        fig.legend(handles=legend, **key)
    fig.tight_layout(rect=(0, 0.1 if legend else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def verdict(summary: dict[str, Any], a: str, b: str) -> str | None:
    """`a − b +d [low, high]` (points) of the paired comparison and who is ahead; None without pairs."""
    if (d := paired_difference(summary, a, b)) is None:
        return None
    ahead = "" if d["decided"] is None else f", {SHORT[d['decided']]} ahead"
    return f"{SHORT[a]} − {SHORT[b]} {fmt_interval(d)}{ahead}"


def headline(states: dict[str, dict[str, Any]], eff: dict[str, Any] | None, links: dict[str, str]) -> str:
    """The README's results (at most 25 lines): per task the `HEADLINE` variants' test metric and the `VERDICTS`,
    and the efficiency of the largest model; `links` maps `docs` and `index` to paths relative to the README."""
    if not states:
        return fill("no_results") + "\n"
    b = next(iter(states.values()))["backbone"]
    size, arch = b["backbone_params"] / 1e6, architecture(b)
    intro = fill("headline", **links, docs_name=Path(links["docs"]).name, size=size, architecture=arch)
    rows = []
    for state in states.values():
        s = state["summary"]
        cells = [mean_pm(s[n]) if n in s else "-" for n in HEADLINE]
        verdicts = [v for a, b in VERDICTS if (v := verdict(s, a, b))]
        rows.append(f"| {title(state)} | {' | '.join(cells)} | {'; '.join(verdicts)} |")
    header = " | ".join(["task", *(VARIANTS[name].label for name in HEADLINE), fill("verdict_header")])
    lines = [intro, "", *table(header, "l" + "r" * len(HEADLINE) + "l", rows)]
    if eff and eff.get("models"):
        lines += ["", fill("efficiency_headline"), "", *efficiency_headline(eff)]
    return "\n".join(lines) + "\n"


def efficiency_headline(eff: dict[str, Any]) -> list[str]:
    """The headline's efficiency table: the `EFFICIENCY_HEADLINE` methods of the benchmark's last (largest) model."""
    name, data = list(eff["models"].items())[-1]
    rows = []
    for method in (m for m in EFFICIENCY_HEADLINE if m in data["methods"]):
        e, r = data["methods"][method], data.get("ratios", {}).get(method, {})
        cells = [f"{e['trainable_pct_of_backbone']:.2f} %", fmt_bytes(e["disk_bytes_without_head"])]
        cells += [ratio(r.get(f"{measure}_vs_full")) for measure in ("train_step", "peak_memory")]
        rows.append(row(e["label"], *cells))
    columns = "trainable % of backbone | on disk without head | train step vs full | peak memory vs full"
    return table(f"{name} | {columns}", "lrrrr", rows)


def results_files() -> list[tuple[str, str, str, str]]:
    """(pattern, status, what, command) of every row of `templates/results_files.md`, in order of precedence."""
    lines = TEMPLATE_FILE.with_name("results_files.md").read_text().splitlines()
    rows = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines if line[:1] == "|"]
    if any(len(cells) != 4 for cells in rows):
        raise ValueError("templates/results_files.md: each row needs 4 cells: pattern, status, what, command")
    return [(cells[0].strip("`"), *cells[1:]) for cells in rows[2:]]


def describe(path: str, provenance: dict[str, Any]) -> tuple[str, str, str]:
    """(status, what, command) of the file at `path` (relative to `results/`)."""
    for pattern, status, what, command in results_files():
        if fnmatch.fnmatch(path, pattern):
            if record := provenance.get(path):  # retired: its command and the commit it was committed in
                text = record["command"] if len(record["command"]) <= 100 else record["command"][:100] + " …"
                command = f"`{text}` (commit {record['committed_in'][:10]})"
            return status, what, command
    return "undescribed", "**not described: add it to `templates/results_files.md`**", "-"


def results_index(results_dir: Path) -> str:
    """`results/README.md`: every file under `results_dir`, its status, what it holds and its command."""
    provenance_file = results_dir / "history" / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    files = sorted(p.relative_to(results_dir).as_posix() for p in results_dir.rglob("*") if p.is_file())
    rows = [f"| `{path}` | {' | '.join(describe(path, provenance))} |" for path in files]
    return "\n".join([fill("results_index"), *rows]) + "\n"


def relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder` for a markdown link (`..` allowed), or absolute on another drive."""
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def write_section(path: Path, text: str, what: str) -> None:
    """`text` between the markers of `path`, the rest left alone; printed when the file or markers are missing."""
    content = path.read_text() if path.is_file() else ""
    start, end = content.find(START), content.find(END)
    if 0 <= start < end:
        write_text_atomic(path, content[: start + len(START)] + "\n" + text + content[end:])
        print(f"make_report: updated the {what} of {path}", file=sys.stderr)
    else:
        print(f"make_report: {path} has no {START} ... {END} markers; the {what} follows.", file=sys.stderr)
        print(f"{START}\n{text}{END}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options; for `results/` itself the docs page and the index default to theirs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = REPO_ROOT / "results"
    for flag, value, text in (
        ("--results-dir", str(default), "where accuracy_*.json are"),
        ("--efficiency", None, "efficiency JSON (default: <results-dir>/efficiency.json)"),
        ("--markdown", None, "summary file (default: <results-dir>/accuracy_summary.md)"),
        ("--plot", None, "plot file (default: <results-dir>/accuracy_vs_params.png)"),
        ("--readme", str(REPO_ROOT / "README.md"), "README for the headline table"),
        ("--docs", None, "page for the full tables (default: docs/benchmarks.md for results/)"),
        ("--index", None, "the index of results/ (default: results/README.md for results/)"),
    ):
        parser.add_argument(flag, default=value, help=text)
    args = parser.parse_args(argv)
    if Path(args.results_dir).resolve() == default.resolve():  # another folder is a side protocol's
        args.docs = args.docs or str(REPO_ROOT / "docs" / "benchmarks.md")
        args.index = args.index or str(default / "README.md")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Write the summary, plot, headline, full tables and results index (each where asked); return the section."""
    args = parse_args(argv)
    results = Path(args.results_dir)
    eff_file = Path(args.efficiency) if args.efficiency else results / "efficiency.json"
    states, eff = load_accuracy(results), json.loads(eff_file.read_text()) if eff_file.is_file() else None
    markdown = Path(args.markdown) if args.markdown else results / "accuracy_summary.md"
    plot_file = Path(args.plot) if args.plot else results / "accuracy_vs_params.png"
    readme = Path(args.readme)
    page = Path(args.docs) if args.docs else readme  # without a docs page the README gets the full section
    text = section(states, eff, relative(plot_file, page.parent), relative(markdown, page.parent))
    plot(states, plot_file)
    write_text_atomic(markdown, summary_markdown(states, eff, relative(plot_file, markdown.parent)))
    if args.docs:
        index = Path(args.index) if args.index else results / "README.md"
        links = {"docs": relative(page, readme.parent), "index": relative(index, readme.parent)}
        write_section(page, text, "full tables")
        write_section(readme, headline(states, eff, links), "headline table")
        for path in (
            readme,
            *sorted(page.parent.glob("*.md")),
        ):  # the numbers cited in their prose (`_facts`)
            if (cited := render_facts(old := path.read_text(encoding="utf-8"), str(path))) != old:
                write_text_atomic(path, cited)
    else:
        write_section(readme, text, "results section")
    if args.index:
        write_text_atomic(Path(args.index), results_index(results))
    print(f"make_report: wrote {markdown} and {plot_file}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
