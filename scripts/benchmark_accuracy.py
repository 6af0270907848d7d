#!/usr/bin/env python
"""Accuracy benchmark of UPetu against full fine-tuning, the linear probe, LoRA and IA3 on real data, through the
training API (`upetu_hf.train.train`). Tasks
(`BENCHMARKS`, data under `../shared`): classification on UCM-55, segmentation on GID tiles, change detection on
LEVIR + DSIFN pairs, and oscd13 (OSCD's 13-band Sentinel-2 cities: UPetu on 13 bands against RGB).

Every variant of a task gets the same protocol: the learning rate `DEFAULT_LR[method] x f` (`--lr-factors`) is
chosen on the mean validation metric of the first `--search-seeds` seeds on the first split seed
(`_ledger.select`), never on test; the chosen rate then trains every seed on every split seed, each reporting its
test metric at its best validation epoch. Each run is written to `<output-dir>/accuracy_<task>.json` as it
finishes: `--resume` continues it, shards (`--methods`, each its own `--output-dir`) merge with `--resume
--import-runs`.

    python scripts/benchmark_accuracy.py --tasks classification --methods upetu,full --resume
    python scripts/benchmark_accuracy.py --dry-run           # print the planned runs and exit
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache, partial
from pathlib import Path
from typing import Any

import _common as common
import numpy as np
import torch
import transformers
from _ledger import SCHEMA_VERSION, import_runs, load_state, run_key, save_state, select
from _variants import MATCHED, SMALL, SMALL_MATCHED, VARIANTS, Variant

import upetu_hf
from upetu_hf._files import finite_json
from upetu_hf.hub import saved_file_names
from upetu_hf.train import DEFAULT_LR, PEFT_METHODS, TASK_METRICS, TrainingArguments, get_task, train
from upetu_hf.train.methods import apply_method, dense_head_lr, parameter_summary

#: The code whose uncommitted changes a session records.
CODE_PATHS = ("src/upetu_hf", "scripts/benchmark_accuracy.py", "scripts/_common.py", "scripts/_ledger.py")
DATA = common.SHARED / "data"
#: The `count_parameters` entries that resolve the `_variants` placeholders of `r`.
RANKS = {MATCHED: "lora_matched_r", SMALL: "upetu_small_r", SMALL_MATCHED: "lora_small_r"}
#: Fraction of the backbone that `upetu-small` must stay under.
SMALL_BUDGET = 0.01
#: Change detection: fractions of each source folder's pairs for test and validation.
CD_TEST_FRACTION, CD_VALIDATION_FRACTION = 0.4, 0.2
CLASSIFICATION_VARIANTS = (
    "linear", "full", "lora", "ia3", "upetu", "upetu-1bit", "upetu-2bit", "upetu-32bit", "eqam-only",
    "upetu-conv3", "upetu-norm", "capm-only", "upetu-small", "lora-small",
)  # fmt: skip
DENSE_VARIANTS = ("full", "lora", "upetu")


@dataclass(frozen=True)
class Benchmark:
    """A task on a data set: the training task, the variants compared, and settings no flag changes."""

    task: str
    variants: tuple[str, ...]
    fixed: dict[str, Any] = field(default_factory=dict)  # `TrainingArguments` fields of every run
    epochs: int = 20  # the dense tasks' default of `--dense-epochs`
    batch_size: int = 16  # the dense tasks' default of `--dense-batch-size`


OSCD_FIXED = dict(crops_per_image="auto", dice_weight=1.0)
#: The benchmark's tasks, by the name `--tasks` takes and the results file carries; one crop per tile (pair
#: copy) and epoch is the protocol of the recorded dense results.
BENCHMARKS = {
    "classification": Benchmark("classification", CLASSIFICATION_VARIANTS),
    "segmentation": Benchmark("segmentation", DENSE_VARIANTS, dict(crops_per_image=1)),
    "change-detection": Benchmark("change-detection", DENSE_VARIANTS, dict(crops_per_image=1)),
    "oscd13": Benchmark("change-detection", ("upetu-13band", "upetu-rgb"), OSCD_FIXED, 40, 8),
}


log = partial(common.log, who="benchmark_accuracy")  # progress to stderr, with the time


def parse_factors(text: str) -> list[float]:
    """`"1/3,1,3"` -> `[0.333..., 1.0, 3.0]` (fractions allowed), sorted, without duplicates."""
    try:
        values = sorted({float(Fraction(part.strip())) for part in text.split(",") if part.strip()})
    except (ValueError, ZeroDivisionError) as err:
        raise argparse.ArgumentTypeError(f"invalid learning-rate factors {text!r}: {err}") from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"learning-rate factors must be positive numbers, got {text!r}")
    return values


def parse_list(text: str, kind: type = int) -> list:
    """`"0,1,2"` -> `[0, 1, 2]` (order kept, duplicates dropped)."""
    values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return list(dict.fromkeys(values))


def round_lr(value: float) -> float:
    """A learning rate rounded to 3 significant digits, so that run keys are stable."""
    return float(f"{value:.3g}")


def fmt4(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def device_name(cpu: bool = False) -> str:
    """What the training API will train on: the CUDA device name, or `cpu (<model>, <threads>)`."""
    if torch.cuda.is_available() and not cpu:
        return f"cuda ({torch.cuda.get_device_name(0)})"
    threads = torch.get_num_threads()
    return f"cpu ({common.cpu_model()}, {threads} thread{'' if threads == 1 else 's'})"


def backbone_description(model: str) -> dict[str, Any]:
    """The checkpoint's architecture (`config.json`) and its recipe (a `pretrain_log.json` beside it, if any)."""
    out: dict[str, Any] = {"model": model, "name": Path(model).name or model}
    try:
        config = transformers.AutoConfig.from_pretrained(model)
        out.update(model_type=config.model_type, image_size=getattr(config, "image_size", None))
        out.update({k: list(getattr(config, k, []) or []) for k in ("depths", "hidden_sizes")})
    except Exception as err:  # an unreadable config must not stop the benchmark
        out["config_error"] = f"{type(err).__name__}: {err}"
    try:
        pretrain = json.loads((Path(model).expanduser() / "pretrain_log.json").read_text())
        recipe, last = pretrain.get("args", {}), (pretrain.get("log") or [{}])[-1]
        out["pretraining"] = {k: recipe[k] for k in ("data", "res", "epochs", "lr", "bs") if k in recipe}
        out["pretraining"].update({"final_heldout_accuracy": last["val_acc"]} if "val_acc" in last else {})
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return out


@dataclass
class TaskSetup:
    """Everything that is the same for all runs of one task; the search varies the learning rate on the first split
    and `n_search_seeds` seeds."""

    name: str  # the `BENCHMARKS` key, the results file's task
    task: str  # the training task
    fixed: dict[str, Any]  # TrainingArguments fields shared by every run
    epochs: int
    batch_size: int
    lr_factors: list[float]
    seeds: list[int]
    variants: list[str]
    n_search_seeds: int
    split_seeds: list[int]
    split: dict[str, Any]  # the search split's description
    sources: list[str]  # the data folders given
    split_data: dict[int, list[str]]  # data per split seed, where not `sources` (the dense pairs' links)
    head_lr: float | str | None  # the PEFT methods' decoder rate on a dense task ('lr': each run's)

    def __post_init__(self) -> None:
        self.key = self.name.replace("-", "_")
        self.path_name = f"accuracy_{self.key}.json"
        self.search_seeds, self.search_splits = self.seeds[: self.n_search_seeds], self.split_seeds[:1]
        self.data = self.data_for(self.split_seeds[0])

    @property
    def metric(self) -> str:
        return TASK_METRICS[self.task][0]  # the training API's default selection metric

    def data_for(self, split_seed: int) -> list[str]:
        """The data paths of a run on split `split_seed`."""
        return self.split_data.get(split_seed, self.sources)

    def grid(self, method: str) -> list[tuple[float, float]]:
        """(learning-rate factor, learning rate) of every candidate."""
        return [(f, round_lr(DEFAULT_LR[method] * f)) for f in self.lr_factors]

    def protocol(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings that change results: runs recorded under another protocol are never reused."""
        protocol = dict(schema=SCHEMA_VERSION, task=self.task, metric=self.metric, epochs=self.epochs)
        protocol.update(batch_size=self.batch_size, lr_factors=[round(f, 6) for f in self.lr_factors])
        protocol["search_seed"] = self.seeds[0]
        if len(self.search_seeds) > 1:  # they change the choices; one, the first files', adds nothing
            protocol["search_seeds"] = self.search_seeds
        if self.head_lr is not None:  # the PEFT methods' decoder rate on the dense tasks
            protocol["dense_head_lr"] = self.head_lr
        protocol.update(split_seed=self.split_seeds[0], split_seeds=self.split_seeds)  # the first searches
        protocol.update(mixed_precision=args.mixed_precision, weight_decay=TrainingArguments.weight_decay)
        protocol.update(warmup_ratio=TrainingArguments.warmup_ratio, quick=False)  # the retired --quick
        # one crop per scene copy is what every recorded run did: not a protocol entry
        protocol.update({k: v for k, v in self.fixed.items() if not (k == "crops_per_image" and v == 1)})
        return finite_json({**protocol, "split": self.split})


def link_split(root: Path, parts: dict[str, list[tuple[str, Path, str]]], repeats: int = 1) -> None:
    """`root/{train,val,test}/{A,B,label}/` of links (copies where links fail) named `name` + the file's suffix to
    each `(name, source folder, stem)` of `parts`; every training pair `repeats` times (`<name>__r<k>`)."""
    shutil.rmtree(root, ignore_errors=True)
    for part, entries in parts.items():
        copies = repeats if part == "train" else 1
        for (name, source, stem), sub in ((entry, sub) for entry in entries for sub in ("A", "B", "label")):
            (folder := root / {"validation": "val"}.get(part, part) / sub).mkdir(parents=True, exist_ok=True)
            matches = [p for p in (source / sub).iterdir() if p.stem == stem]
            if len(matches) != 1:
                raise FileNotFoundError(f"{source / sub}: expected one file named {stem}.*")
            for k in range(copies):
                link = folder / f"{name}{f'__r{k}' if copies > 1 else ''}{matches[0].suffix}"
                try:
                    link.symlink_to(matches[0])
                except OSError:
                    shutil.copy2(matches[0], link)


def stems(source: str, flag: str, at_least: int) -> tuple[Path, list[str]]:
    """The folder and the sorted names of its `label/`, after checking the `A/ B/ label/` layout."""
    folder = Path(source).expanduser().resolve()
    if not all((folder / sub).is_dir() for sub in ("A", "B", "label")):
        raise FileNotFoundError(f"{flag} {folder}: expected A/, B/ and label/ sub-folders")
    names = sorted(p.stem for p in (folder / "label").iterdir() if p.is_file())
    if len(names) < at_least:
        raise ValueError(f"{flag} {folder}: {len(names)} pairs; the split needs {at_least}")
    return folder, names


def cd_split(roots: Sequence[str], seed: int, work_dir: Path, repeats: int) -> tuple[Path, dict[str, Any]]:
    """A split by pairs, stratified by source folder (`CD_TEST_FRACTION` test, `CD_VALIDATION_FRACTION` validation,
    the rest training, `repeats` times), as a folder of links (`link_split`): the folder and the pairs per part."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "validation": [], "test": []}
    for source in roots:
        folder, names = stems(source, "--cd", 3)
        order = [names[i] for i in rng.permutation(len(names))]
        n_val = max(1, round(len(names) * CD_VALIDATION_FRACTION))
        n_test = min(max(1, round(len(names) * CD_TEST_FRACTION)), len(names) - n_val - 1)
        ends = {"test": (0, n_test), "validation": (n_test, n_test + n_val), "train": (n_test + n_val, None)}
        for part, (start, end) in ends.items():
            parts[part] += [(f"{folder.name}__{stem}", folder, stem) for stem in sorted(order[start:end])]
    link_split(root := work_dir / f"cd-split-seed{seed}-x{repeats}", parts, repeats)
    by_pairs = {part: [name for name, *_ in entries] for part, entries in parts.items()}
    return root, {"by_pairs": by_pairs, "seed": seed, "train_repeats": repeats}


def city_split(source: str, seed: int, counts: Sequence[int], work_dir: Path) -> tuple[Path, dict[str, Any]]:
    """OSCD's split by city (`counts`: training, validation; the rest test), as links with `bands.json`."""
    folder, cities = stems(source, "--oscd", sum(counts) + 1)
    order = [cities[i] for i in np.random.default_rng(seed).permutation(len(cities))]
    ends = {"train": (0, counts[0]), "validation": (counts[0], sum(counts)), "test": (sum(counts), None)}
    chosen = {part: sorted(order[start:end]) for part, (start, end) in ends.items()}
    root = work_dir / f"oscd-split-seed{seed}"
    link_split(root, {part: [(city, folder, city) for city in names] for part, names in chosen.items()})
    shutil.copy(folder / "bands.json", root / "bands.json")
    return root, {"by_cities": chosen, "seed": seed}


def task_data(name: str, args: argparse.Namespace, work_dir: Path) -> tuple[dict, dict, list[str], dict]:
    """The task's fixed `TrainingArguments` fields, split description, data sources and data per split seed."""
    fixed, split_data = dict(BENCHMARKS[name].fixed), {}
    if name == "classification":
        fixed.update(train_fraction=args.train_fraction, validation_fraction=args.validation_fraction)
        fixed, sources = dict(fixed, image_size=args.image_size), [args.ucm]
    elif name == "segmentation":  # a seeded 60 / 20 / 20 split of the tiles
        fixed.update(train_fraction=0.8, validation_fraction=0.25, resize=args.seg_resize or args.image_size)
        fixed.update(image_size=args.seg_crop, head_hidden_size=args.seg_head_hidden or None)
        sources = [args.gid]
    else:
        sources = args.cd if name == "change-detection" else [args.oscd]
        for split_seed in reversed(args.split_seeds):  # ends with the search split's description
            if name == "change-detection":
                folder, split = cd_split(args.cd, split_seed, work_dir, args.cd_repeats)
            else:
                folder, split = city_split(args.oscd, split_seed, args.oscd_cities, work_dir)
            split_data[split_seed] = [str(folder)]
        fixed.update(image_size=args.cd_crop or 32 * math.ceil(args.image_size / 32), resize=args.cd_resize)
        fixed.update({"head_hidden_size": args.cd_head_hidden} if args.cd_head_hidden else {})
    if "train_fraction" in fixed:
        split = {k: fixed[k] for k in ("train_fraction", "validation_fraction")}
    fixed.update(max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples)
    return fixed, split, [str(s) for s in sources], split_data


def make_setups(args: argparse.Namespace, work_dir: Path) -> list[TaskSetup]:
    """One `TaskSetup` per requested task, with the flags resolved."""
    setups = []
    for name in args.tasks:
        bench = BENCHMARKS[name]
        if not (variants := [v for v in args.methods or bench.variants if v in bench.variants]):
            log(f"{name}: none of the requested methods applies; skipped")
            continue
        fixed, split, sources, split_data = task_data(name, args, work_dir)
        sizes = dict(epochs=args.epochs, batch_size=args.batch_size, lr_factors=args.lr_factors, head_lr=None)
        if name != "classification":  # head_lr: by default the rate `upetu-train` gives a decoder this wide
            sizes["epochs"] = args.dense_epochs or bench.epochs
            sizes["batch_size"] = args.dense_batch_size or bench.batch_size
            sizes["lr_factors"] = args.dense_lr_factors or args.lr_factors
            sizes["head_lr"] = args.dense_head_lr or dense_head_lr(bench.task, fixed.get("head_hidden_size"))
        sizes |= dict(seeds=args.seeds, n_search_seeds=args.search_seeds, split_seeds=args.split_seeds)
        sizes |= dict(split=split, sources=sources, split_data=split_data, variants=variants)
        setups.append(TaskSetup(name, bench.task, fixed, **sizes))
    return setups


#: `TrainingArguments` fields every run takes from the options as they are.
RUNTIME_FIELDS = ("model", "mixed_precision", "num_workers", "cpu")


def training_arguments(
    setup: TaskSetup, args: argparse.Namespace, method: str, options: dict[str, Any], output_dir: Path,
    lr: float | None = None, seed: int = 0, verify: bool = False, split_seed: int | None = None,
) -> TrainingArguments:  # fmt: skip
    """The `TrainingArguments` of one run (on the search split unless `split_seed` is given)."""
    split_seed = setup.split_seeds[0] if split_seed is None else split_seed
    if setup.head_lr is not None and method in PEFT_METHODS:
        options = {"head_lr": lr if setup.head_lr == "lr" else setup.head_lr, **options}
    run = dict(task=setup.task, data=setup.data_for(split_seed), output_dir=str(output_dir), method=method)
    run.update(lr=lr, seed=seed, split_seed=split_seed, epochs=setup.epochs, batch_size=setup.batch_size)
    run.update({name: getattr(args, name) for name in RUNTIME_FIELDS})
    run.update(overwrite=True, checkpointing_steps=None, verify_images=verify)
    return TrainingArguments(**run, **setup.fixed, **options)


def count_parameters(setup: TaskSetup, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Parameter counts of the task model on this backbone, the LoRA rank whose adapter is closest to UPetu's
    default adapter, and the largest UPetu `r` whose adapter stays under `SMALL_BUDGET` of the backbone."""
    spec = get_task(setup.task)
    probe = training_arguments(setup, args, "full", {}, work_dir / "unused", verify=True)
    class_names = spec.load_data(probe).class_names
    whole = parameter_summary(apply_method(spec.build_model(probe, class_names), "full"))

    @cache
    def adapter(method: str, r: int | None = None) -> int:
        """The adapter parameters of `method` (at rank `r`, else its default) on this task model."""
        targs = training_arguments(setup, args, method, {} if r is None else {"r": r}, work_dir / "unused")
        return int(parameter_summary(apply_method(spec.build_model(targs, class_names), targs))["adapter"])

    def matched_lora_rank(target: int) -> int:
        """The LoRA rank whose adapter is closest to `target` parameters (the smaller one on a tie)."""
        guess = max(1, round((target - (adapter("lora", 1) - per_rank)) / per_rank))
        return min({max(1, guess - 1), guess, guess + 1}, key=lambda r: (abs(adapter("lora", r) - target), r))

    backbone, default_r = whole["total"] - whole["head"], upetu_hf.UPetuConfig().r
    per_rank, budget = adapter("lora", 2) - adapter("lora", 1), SMALL_BUDGET * backbone
    # adapters grow with r: the number of ranks under the budget is the largest of them (1 when none is)
    small_r = max(1, bisect(range(1, default_r + 1), False, key=lambda r: adapter("upetu", r) >= budget))
    small = adapter("upetu", small_r)
    lora_r, lora_small_r = matched_lora_rank(adapter("upetu")), matched_lora_rank(small)
    return {
        "num_labels": len(class_names), "class_names": class_names, "total_params": whole["total"],
        "head_params": whole["head"], "backbone_params": backbone, "upetu_default_r": default_r,
        "upetu_default_adapter_params": adapter("upetu"), "lora_adapter_params_per_rank": per_rank,
        "lora_matched_r": lora_r, "lora_matched_adapter_params": adapter("lora", lora_r),
        "upetu_small_r": small_r, "upetu_small_adapter_params": small,
        "upetu_small_pct_of_backbone": 100.0 * small / backbone, "upetu_small_budget_met": small < budget,
        "lora_small_r": lora_small_r, "lora_small_adapter_params": adapter("lora", lora_small_r),
    }  # fmt: skip


def execute_run(args: argparse.Namespace, record: dict, targs: TrainingArguments, counts: dict) -> dict:
    """Train `targs` (images unchecked: `count_parameters` checks them) and complete `record`: status `ok` with the
    scores at the best epoch, parameter counts, times and weight sizes, or `failed` with the error."""
    record["arguments"] = {k: v for k, v in targs.to_dict().items() if k not in ("output_dir", "data")}
    run_dir, method, metric = Path(targs.output_dir), targs.method, record["metric"]
    start = time.perf_counter()
    try:
        result = train(targs)
    except Exception as err:  # one failed run must not lose the others
        error = f"{type(err).__name__}: {err}"
        return dict(record, status="failed", error=error, traceback=traceback.format_exc(limit=8),
                    wall_time_s=time.perf_counter() - start)  # fmt: skip
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    wall = time.perf_counter() - start
    config = upetu_hf.train.load_run(str(run_dir)).extra  # what the run's data scan decided
    record["splits"] = config.get("splits")
    record.update({"bands": config["bands"]} if config.get("bands") else {})  # multispectral runs
    record.update(status="ok", best_epoch=result["best_epoch"], selection_split=result["selection_split"])
    for part in ("validation", "test"):
        record[f"{part}_score"] = finite_json((result.get(part) or {}).get(metric))
    params, steps = result["parameters"], result["train"]
    record.update({part: result.get(part) for part in ("validation", "test", "history")}, parameters=params)
    record.update(trainable_params=params["trainable"], head_params=params["head"])
    # peft keeps the original heads next to the trained copies; the linear probe's adapter is 0 (heads only)
    base_total = params["total"] - (params["trainable"] if method in PEFT_METHODS else 0)
    record.update(adapter_params=params["adapter"], base_model_params=base_total)
    record.update(trainable_pct=100.0 * params["trainable"] / base_total)
    record["adapter_pct_of_backbone"] = 100.0 * params["adapter"] / counts["backbone_params"]
    record.update(wall_time_s=wall, train_runtime_s=steps["runtime_s"])
    record.update(samples_per_second=steps["samples_per_second"], steps=steps["steps"])
    # the weights file (`adapter_model.safetensors` or `model.safetensors`) re-saved with / without the heads;
    # the linear probe's checkpoint is its trained heads alone
    name = saved_file_names(method in PEFT_METHODS)[1]
    with_head, without_head = common.head_bytes(run_dir / name, heads_only=method == "linear")
    record.update(checkpoint_file=name, checkpoint_bytes=(run_dir / name).stat().st_size)
    record.update(weights_bytes_with_head=with_head, weights_bytes_without_head=without_head)
    for path in run_dir.glob("*.safetensors") if args.delete_weights else ():
        path.unlink()
    return record


class TaskRunner:
    """Runs the search and seed runs of one task, skipping finished ones, saving after each run."""

    def __init__(self, setup: TaskSetup, args: argparse.Namespace, work_dir: Path, command: str) -> None:
        self.setup, self.args, self.work_dir, self.command = setup, args, work_dir, command
        self.path = Path(args.output_dir) / setup.path_name
        self.state = load_state(self.path, setup, args)
        for other in args.import_runs:
            added = import_runs(self.state, Path(other), setup, args)
            log(f"{setup.name}: imported {added} finished run(s) from {other}")
        if args.resume and self.state["runs"]:
            log(f"{setup.name}: resuming {self.path} ({len(self.state['runs'])} finished run(s) kept)")
        self.done = {r["key"]: r for r in self.state["runs"] if r.get("status") == "ok"}
        self.planned: list[str] = self.state.setdefault("planned", [])
        self.counts: dict[str, Any] = {}

    def ensure(self, variant: Variant, options: dict, candidate: tuple, seed: int, phase: str, split=None):
        """The record of a run of a `(factor, learning rate)` candidate, trained unless one is on file."""
        setup, state, name, (factor, lr) = self.setup, self.state, variant.name, candidate
        split_seed = setup.split_seeds[0] if split is None else split
        key = run_key(name, options, lr, seed, split_seed)
        self.planned += [] if key in self.planned else [key]  # `state["planned"]` itself
        folder = f"lr{lr:g}-seed{seed}" + (f"-split{split_seed}" if split_seed else "")
        where = f"{setup.name}/{name}: {folder}"
        if key in self.done or self.args.merge_only:
            log(f"{where}: {'done' if key in self.done else 'not on file (--merge-only)'}")
            return self.done.get(key)
        log(f"{where}: {phase} run (x{factor:.3g}), {setup.epochs} epochs")
        run_dir = self.work_dir / setup.key / name / folder
        run = (variant.method, options, run_dir, lr, seed, False, split_seed)
        targs = training_arguments(setup, self.args, *run)
        record = {
            "key": key, "task": setup.task, "variant": name, "label": variant.label, "method": variant.method,
            "options": options, "lr": lr, "lr_factor": factor, "head_lr": targs.head_lr, "seed": seed,
            "split_seed": split_seed, "epochs": setup.epochs, "run_dir": str(run_dir),
            "device": device_name(self.args.cpu), "started": common.now(), "metric": setup.metric,
        }  # fmt: skip
        record = dict(execute_run(self.args, record, targs, self.counts), phase=phase)
        state["runs"] = [r for r in state["runs"] if r["key"] != key] + [record]
        if record["status"] == "ok":
            self.done[key] = record
            score = f"{fmt4(record['validation_score'])} (epoch {record['best_epoch']})"
            log(f"{where}: validation {score}, test {fmt4(record['test_score'])}")
        else:
            log(f"{where}: FAILED: {record['error']}")
        save_state(self.path, state, setup)
        return record

    def choose(self, variant: Variant, options: dict[str, Any], grid: list[tuple[float, float]]) -> dict:
        """The search's choice (`_ledger.select`); an unsettled tie trains the tied rates on the next seed
        (phase `tie-break`; the winner's run is a final run) and chooses again until seeds settle it or run out."""
        setup, factors = self.setup, {lr: f for f, lr in grid}
        for seed in [*setup.seeds[len(setup.search_seeds) :], None]:  # None: no seed left to break a tie
            ran = [r for r in self.done.values() if r["variant"] == variant.name and r["options"] == options]
            chosen = select(ran, grid, setup.search_seeds, setup.search_splits)
            if seed is None or chosen.get("tie", {}).get("decided_by", "seeds") == "seeds":
                return chosen
            for lr in chosen["tie"]["lrs"]:
                self.ensure(variant, options, (factors[lr], lr), seed, "tie-break")

    def run(self) -> dict[str, Any]:
        """Search, select and seed every variant; returns the task's final state."""
        setup, args, state, started = self.setup, self.args, self.state, time.perf_counter()
        log(f"{setup.name}: counting parameters on {args.model}")
        self.counts = count_parameters(setup, args, self.work_dir)
        state["backbone"] = {**backbone_description(args.model), **self.counts}
        paths = dict(model=args.model, data=setup.data, sources=setup.sources, work_dir=str(self.work_dir))
        machine, git = common.machine_info(device_name(args.cpu)), common.git_state(CODE_PATHS)
        session = dict(command=self.command, date=common.now(), machine=machine, git=git, paths=paths)
        session.update(methods=setup.variants, seeds=setup.seeds)
        state["sessions"].append(session)
        searched = [(split, seed) for split in setup.search_splits for seed in setup.search_seeds]
        for name in setup.variants:
            variant = VARIANTS[name]
            options, grid = dict(variant.options), setup.grid(variant.method)
            if options.get("r") in RANKS:  # a placeholder: the rank computed on this backbone
                options["r"] = self.counts[RANKS[options["r"]]]
            entry = dict(label=variant.label, method=variant.method, options=options, lr_grid=grid)
            state["variants"][name] = entry
            for (split_seed, seed), candidate in ((pair, c) for pair in searched for c in grid):
                self.ensure(variant, options, candidate, seed, "search", split_seed)
            if not (choice := self.choose(variant, options, grid))["complete"]:
                log(f"{setup.name}/{name}: search incomplete (a run failed or is missing); no seed runs")
                continue
            rate, edge = choice["lr"], "" if choice["interior"] else " -- AT THE EDGE of its grid"
            score = fmt4(choice["validation_score"])
            log(f"{setup.name}/{name}: chosen lr {rate:g} (validation {score}){edge}")
            for split_seed in setup.split_seeds:
                phase = "seed" if split_seed == setup.split_seeds[0] else "split"
                for seed in (s for s in setup.seeds if (split_seed, s) not in searched):
                    self.ensure(variant, options, (choice["lr_factor"], rate), seed, phase, split_seed)
        session["wall_time_s"] = time.perf_counter() - started
        save_state(self.path, state, setup)
        log(f"{setup.name}: wrote {self.path} ({session['wall_time_s']:.0f} s)")
        return state


def print_summary(state: dict[str, Any]) -> None:
    """A short table on stdout."""
    print(f"\n{state['task']} ({state['metric']}, test, mean +- std over seeds):")
    for s in state["summary"].values():
        mean, std = s["test_mean"], s["test_std"]
        scores = "n/a" if mean is None else f"{100 * mean:6.2f} +- {100 * std:5.2f}"
        print(f"  {s['label']:<32} {scores}  (n={s['n']}, lr {s['lr']:g})")


def plan(setups: list[TaskSetup]) -> list[str]:
    """Human-readable list of the runs the benchmark would do (search and seeds)."""
    lines = []
    for setup in setups:
        k, rates = len(setup.search_seeds), len(setup.lr_factors)
        more = len(setup.seeds) * len(setup.split_seeds) - k
        searched = f"{rates} learning rates" + ("" if k == 1 else f" x {k} search seeds")
        n = len(setup.variants) * (rates * k + more)
        runs = f"({searched} + {more} more seed/split runs) = {n} runs of {setup.epochs} epochs"
        lines.append(f"{setup.name}: {len(setup.variants)} methods x {runs}")
        for name in setup.variants:
            rates_text = ", ".join(f"{rate:g}" for _, rate in setup.grid(VARIANTS[name].method))
            lines.append(f"  {name:<12} lr in {{{rates_text}}}, seeds {setup.seeds}")
            lines[-1] += f", split seeds {setup.split_seeds}"
    return lines


#: flag -> (default, type, help); a string default goes through the type too, a False one makes a switch.
OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "--ucm": (str(DATA / "ucmerced"), str, "UC Merced class-per-folder images"),
    "--gid": (str(DATA / "gid5_landcover"), str, "GID tiles: images/ + masks/"),
    "--oscd": (str(DATA / "oscd13_s2"), str, "OSCD cities: A/ B/ label/ and bands.json"),
    "--tasks": ("classification,segmentation,change-detection", lambda t: parse_list(t, str),
                f"comma-separated subset of {', '.join(BENCHMARKS)}"),
    "--methods": (None, lambda t: parse_list(t, str), "comma-separated variants (default: the task's)"),
    "--seeds": ("0,1,2", parse_list, "seeds of the final runs; the first --search-seeds also search (0,1,2)"),
    "--search-seeds": (1, int, "choose the rate on the mean validation of the first N seeds of --seeds (1)"),
    "--dense-epochs": (None, int, "dense-task epochs per run (20; oscd13 40)"),
    "--lr-factors": ("1/3,1,3", parse_factors, "learning rates tried: DEFAULT_LR[method] x each factor"),
    "--dense-lr-factors": (None, parse_factors, "the same for the dense tasks (default: --lr-factors)"),
    "--dense-head-lr": (None, lambda t: t if t == "lr" else float(t),
                        "the PEFT methods' decoder rate on the dense tasks, or 'lr' for each run's rate (default: "
                        "the training API's for the decoder's width: `dense_head_lr`)"),
    "--dense-batch-size": (None, int, "dense-task batch size (16; oscd13 8)"),
    "--split-seeds": ("0", parse_list, "seeds of the data splits; the first is the search's (0)"),
    "--seg-resize": (None, int, "GID tiles resized to this (default: --image-size)"),
    "--seg-crop": (None, int, "GID random training crop (default: none)"),
    "--seg-head-hidden": (64, int, "UperNet channels (64; 0: the training API's default decoder)"),
    "--cd-head-hidden": (None, int, "change-detection decoder channels (default: the training API's)"),
    "--cd-crop": (None, int, "change-detection training crop, a multiple of 32 (default: --image-size, x32)"),
    "--cd-resize": (None, int, "resize change-detection pairs first (default: no)"),
    "--cd-repeats": (16, int, "copies of each training pair per epoch (16)"),
    "--oscd-cities": ("8,2", parse_list, "oscd13: training and validation cities; the rest test (8,2)"),
    "--threads": (None, int, "torch CPU threads (default: torch's); on a CPU shared with other jobs try 1"),
    "--output-dir": (str(common.REPO_ROOT / "results"), str, "where the results files go"),
    "--work-dir": (None, str, "run folders (default: a temporary folder, removed at the end)"),
    "--retrain": ("", lambda t: parse_list(t, str) if t else [], "methods whose runs on file are set aside"),
    "--resume": (False, None, "continue the JSON files, skipping finished runs"),
    "--overwrite": (False, None, "start the JSON files afresh"),
    "--delete-weights": (False, None, "delete each run's weights once measured"),
    "--merge-only": (False, None, "train nothing: merge and summarise the runs on file (--resume, --import-runs)"),
    "--dry-run": (False, None, "print the planned runs and exit"),
}  # fmt: skip
#: Forwarded to every run's `TrainingArguments` as `upetu-train classification` offers them, some with the
#: benchmark's own default (`num_workers`: 0 on a CPU, else up to 8).
TRAINING_OPTIONS = "model epochs batch_size image_size train_fraction validation_fraction".split()
TRAINING_OPTIONS += ["mixed_precision", "max_train_samples", "max_eval_samples", "num_workers", "cpu"]
TRAINING_DEFAULTS = dict(model=str(common.SHARED_BACKBONE), epochs=20, image_size=112, train_fraction=0.5)
TRAINING_DEFAULTS.update(validation_fraction=0.2, num_workers=None)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options: data, what to run, the protocol (some as `upetu-train` offers them), runtime."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cd = [str(DATA / "levir_cd_samples"), str(DATA / "dsifn_cd_samples")]
    parser.add_argument("--cd", nargs="+", default=cd, help="change-detection A/B/label folders")
    parser.add_argument("--import-runs", nargs="+", default=[], metavar="JSON", help="merge their runs")
    for flag, (default, kind, help_text) in OPTIONS.items():
        flag_kind = dict(action="store_true") if default is False else dict(default=default, type=kind)
        parser.add_argument(flag, help=help_text, **flag_kind)
    common.add_training_options(parser, "classification", TRAINING_OPTIONS, **TRAINING_DEFAULTS)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options with the lists parsed; a bad combination is a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    known = {v for bench in BENCHMARKS.values() for v in bench.variants}
    n_seeds, methods = len(args.seeds), (args.methods or []) + args.retrain
    dense = (args.dense_epochs or 1, args.dense_batch_size or 1)
    sizes = (args.epochs, args.batch_size, args.cd_repeats, *dense)
    errors = {
        f"unknown task(s): choose from {', '.join(BENCHMARKS)}": set(args.tasks) - set(BENCHMARKS),
        f"unknown method(s): choose from {', '.join(sorted(known))}": set(methods) - known,
        "epochs, batch sizes and --cd-repeats must be >= 1": min(sizes) < 1,
        "--cd-crop must be a multiple of 32 (the backbone stride)": (args.cd_crop or 0) % 32,
        "--merge-only, --import-runs and --retrain work on the files of --resume: pass --resume too":
            not args.resume and (args.merge_only or args.import_runs or args.retrain),
        "--resume and --overwrite exclude each other": args.resume and args.overwrite,
        f"--search-seeds must be between 1 and the number of --seeds ({n_seeds})":
            not 0 < args.search_seeds <= n_seeds,
        "--threads must be >= 1": args.threads is not None and args.threads < 1,
        "--oscd-cities takes two counts (training, validation)": len(args.oscd_cities) != 2,
    }  # fmt: skip
    for message, failed in errors.items():
        if failed:
            parser.error(message)
    if args.num_workers is None:
        args.num_workers = 0 if args.cpu or not torch.cuda.is_available() else min(8, os.cpu_count() or 1)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the benchmark; returns `{task: state}` as written to `accuracy_<task>.json`."""
    args = parse_args(argv)
    command = " ".join(["python scripts/benchmark_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    transformers.utils.logging.disable_progress_bar()
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    temporary = args.work_dir is None
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="upetu-accuracy-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    states: dict[str, dict[str, Any]] = {}
    try:
        setups = make_setups(args, work_dir)
        for line in plan(setups):
            log(line)
        if args.dry_run:
            return {}
        log(f"device: {device_name(args.cpu)}; run folders under {work_dir}")
        for setup in setups:
            states[setup.name] = TaskRunner(setup, args, work_dir, command).run()
            print_summary(states[setup.name])
    finally:
        torch.set_num_threads(threads_before)
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
    failed = [r["key"] for s in states.values() for r in s["runs"] if r.get("status") != "ok"]
    if failed:
        log(f"{len(failed)} run(s) failed: {failed}; rerun with --resume to retry them")
    log("next: python scripts/make_report.py")
    return states


if __name__ == "__main__":
    # a plain `kill` ends the run like Ctrl-C: the finished runs are on disk, the temporary run folders removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    states = main()
    sys.exit(1 if any(r.get("status") != "ok" for s in states.values() for r in s["runs"]) else 0)
