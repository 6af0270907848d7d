#!/usr/bin/env python
"""Accuracy benchmark of UPetu against full fine-tuning, the linear probe, LoRA and IA3, on real data, through the
training API (`upetu_hf.train.train`).

Tasks, data and methods (every path is a flag; the defaults point at `../shared`):

- classification, UCM-55 (`--ucm`, a class-per-folder image set): 50 % of each class for training, stratified,
  one split per `--split-seeds` entry. Methods: linear probe, full fine-tuning, LoRA on `pwconv1`/`pwconv2` with
  its rank matched to UPetu's trainable adapter parameters, IA3, UPetu at 4 (the default configuration), 1 and 32
  bits, EQAM only, CAPM only, UPetu with a 3x3 depthwise convolution in EQAM's bottleneck (`upetu-conv3`), UPetu
  with a trained LayerNorm affine correction (`upetu-norm`), UPetu with the largest `r` that keeps its adapter
  under 1 % of the backbone (`upetu-small`), and LoRA with its rank matched to that (`lora-small`).
  Images are resized to `--image-size` (112, the pretraining size of the reference backbone).
- segmentation, GID tiles (`--gid`): a seeded random 60 / 20 / 20 train / validation / test split of the tiles
  (`train_fraction` 0.8, `validation_fraction` 0.25 of it), tiles resized to `--image-size`, a UperNet head with
  `--seg-head-hidden` channels; metric mIoU. Methods: full fine-tuning, LoRA (matched rank), UPetu.
- change detection, LEVIR + DSIFN pairs (`--cd`, one or several `A/ B/ label/` folders): a seeded split by pairs,
  stratified by source folder (40 % test, 20 % validation, the rest training); training on random crops of
  `--cd-crop` pixels (a multiple of 32, the backbone stride: 128 for a 112-px backbone), each training pair
  repeated `--cd-repeats` times per epoch (so an epoch has enough steps); evaluation on the full pairs; metric
  change F1. Methods: full fine-tuning, LoRA (matched rank), UPetu.

Protocol, the same for every method of a task:

1. Learning-rate search: one run per candidate learning rate, `DEFAULT_LR[method] x f` for every `f` in
   `--lr-factors` (default 1/3, 1, 3: three candidates for every method), seed `seeds[0]` (or each of the first
   `--search-seeds` seeds), `--epochs` epochs with AdamW and a cosine schedule. Each run keeps the weights of its
   best validation epoch (the training API's best-epoch selection), which chooses the number of epochs; the
   candidate with the best validation metric (mean over the search seeds) wins; a tie is
   broken by more evidence (`_ledger.select`): the tied rates train on the next seeds of `--seeds` until the mean
   over the seeds they share decides (the winner's runs count as final runs), then the mean validation of the last
   3 epochs, then the smaller rate.
   The test split is never used for any choice.
   The search runs on the first split seed of `--split-seeds`; a choice at the smallest or largest candidate is
   flagged (widen `--lr-factors` until every choice is interior).
2. Seeds and splits: the chosen learning rate is trained with every seed of `--seeds` (default 0, 1, 2: the head
   initialisation, data order and augmentation) on every split of `--split-seeds` (default 0 only; e.g. 0,1,2 for
   repeated stratified splits, which add the split-to-split spread). The search runs are reused as the final runs
   of their (split, seed) pairs. Each run reports its TEST metric once, at its best-validation epoch; the report
   gives mean +- sample std over all final runs, and paired differences between methods over the (split, seed) pairs
   they share, with a 95 % t-interval (`_ledger.paired_difference`): a difference is claimed only when the
   interval excludes 0.

Every run (configuration, per-epoch validation metrics, validation and test metrics at the best epoch, trainable
parameters, bytes on disk, wall time, device) is written to `<output-dir>/accuracy_<task>.json` after it finishes
(atomic write), so an interrupted benchmark continues with `--resume`, skipping the finished runs. The training
itself runs wherever Accelerate puts it: a CUDA GPU when there is one, else the CPU. Each task has its own file,
so tasks may run in separate processes, sessions or machines (never one task in two processes at once); every run
records its device. On a GPU, data loading dominates: pass a pre-resized UCM copy (`scripts/resize_image_folder.py`,
pixel-identical) with `--ucm`.

CPU notes: on a CPU shared with other jobs, torch's default of one thread per core can be many times slower than
`--threads 1` (its threads wait for each other at every operation while other processes hold the cores); measure
both. bf16 autocast is slower than float32 on CPUs without native bf16 support, hence `--mixed-precision no` by
default; on a GPU, `--mixed-precision bf16` is the usual choice (record it: it is part of the protocol).

Usage:
    python scripts/benchmark_accuracy.py                     # the full benchmark (all tasks, methods, seeds)
    python scripts/benchmark_accuracy.py --quick             # a fast partial run: few methods, 1 seed, 2 epochs
    python scripts/benchmark_accuracy.py --tasks classification --methods upetu,full --resume
    python scripts/benchmark_accuracy.py --dry-run           # print the planned runs and exit
    # two shards in parallel processes, then one merge (trains nothing new, writes the combined summary):
    python scripts/benchmark_accuracy.py --tasks classification --methods upetu,lora --output-dir /tmp/a &
    python scripts/benchmark_accuracy.py --tasks classification --methods full,linear --output-dir /tmp/b &
    wait; python scripts/benchmark_accuracy.py --tasks classification --methods upetu,lora,full,linear \
        --output-dir /tmp/a --resume --import-runs /tmp/b/accuracy_classification.json
    python scripts/make_report.py                            # tables, plot and README section from the JSON
"""

from __future__ import annotations

import argparse
import datetime
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from _common import (
    REPO_ROOT,
    SHARED,
    SHARED_BACKBONE,
    add_training_options,
    clean,
    cpu_model,
    git_state,
    machine_info,
    resaved_bytes,
)
from _ledger import SCHEMA_VERSION, import_runs, load_state, run_key, save_state, select
from _variants import MATCHED, SMALL, SMALL_MATCHED, VARIANTS, Variant

import upetu_hf
from upetu_hf.hub import saved_file_names
from upetu_hf.train import (
    DEFAULT_LR,
    PEFT_METHODS,
    TASK_METRICS,
    TASKS,
    TrainingArguments,
    apply_method,
    get_task,
    parameter_summary,
    train,
)
from upetu_hf.train.arguments import RUN_CONFIG_FILE
from upetu_hf.train.methods import DENSE_HEAD_LR, dense_head_lr, is_head_parameter

#: The code whose uncommitted changes a session records.
CODE_PATHS = ("src/upetu_hf", "scripts/benchmark_accuracy.py", "scripts/_common.py")
DEFAULT_PATHS = {
    "model": SHARED_BACKBONE,
    "ucm": SHARED / "data" / "ucmerced",
    "gid": SHARED / "data" / "gid5_landcover",
    "cd": [SHARED / "data" / "levir_cd_samples", SHARED / "data" / "dsifn_cd_samples"],
}
#: Fraction of the backbone that `upetu-small` must stay under.
SMALL_BUDGET = 0.01
#: Change detection: fractions of each source folder's pairs for test and validation.
CD_TEST_FRACTION, CD_VALIDATION_FRACTION = 0.4, 0.2
#: Segmentation: `train_fraction` (train + validation vs test) and `validation_fraction` (of the former).
SEG_TRAIN_FRACTION, SEG_VALIDATION_FRACTION = 0.8, 0.25
#: The variants this benchmark compares, in the order of its tables (`_variants.VARIANTS`).
CLASSIFICATION_VARIANTS = [
    "linear", "full", "lora", "ia3", "upetu", "upetu-1bit", "upetu-2bit", "upetu-32bit", "eqam-only",
    "upetu-conv3", "upetu-norm", "capm-only", "upetu-small", "lora-small",
]  # fmt: skip
TASK_VARIANTS = {
    "classification": CLASSIFICATION_VARIANTS,
    "segmentation": ["full", "lora", "upetu"],
    "change-detection": ["full", "lora", "upetu"],
}
QUICK_VARIANTS = {
    "classification": ["linear", "upetu"],
    "segmentation": ["upetu"],
    "change-detection": ["upetu"],
}
#: Settings of the full benchmark and of `--quick`; any flag given explicitly overrides them.
FULL = dict(
    epochs=20,
    dense_epochs=20,
    seeds="0,1,2",
    dense_seeds=None,  # = seeds
    lr_factors="1/3,1,3",
    dense_lr_factors=None,  # = lr_factors
    cd_repeats=16,
    max_train_samples=None,
    max_eval_samples=None,
    dense_max_train_samples=None,
    dense_max_eval_samples=None,
)
QUICK = dict(
    epochs=2,
    dense_epochs=2,
    seeds="0",
    dense_seeds=None,
    lr_factors="1,3",
    dense_lr_factors=None,
    cd_repeats=2,
    max_train_samples=84,
    max_eval_samples=63,
    dense_max_train_samples=48,
    dense_max_eval_samples=24,
)


def log(message: str) -> None:
    """Progress to stderr, with the time."""
    print(f"[benchmark_accuracy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- small helpers
def parse_factors(text: str) -> list[float]:
    """`"1/3,1,3"` -> `[0.333..., 1.0, 3.0]` (fractions allowed), sorted, without duplicates."""
    try:
        values = sorted({float(Fraction(part.strip())) for part in text.split(",") if part.strip()})
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"invalid learning-rate factors {text!r}: {err}") from err
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"learning-rate factors must be positive numbers, got {text!r}")
    return values


def parse_ints(text: str) -> list[int]:
    """`"0,1,2"` -> `[0, 1, 2]` (order kept, duplicates dropped)."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values:
        raise ValueError(f"expected a comma-separated list of integers, got {text!r}")
    return list(dict.fromkeys(values))


def round_lr(value: float) -> float:
    """A learning rate rounded to 3 significant digits, so that run keys are stable."""
    return float(f"{value:.3g}")


def fmt4(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------- machine
def device_name(cpu: bool = False) -> str:
    """What the training API will train on: the CUDA device name, or `cpu (<model>)`."""
    if torch.cuda.is_available() and not cpu:
        return f"cuda ({torch.cuda.get_device_name(0)})"
    model = cpu_model()
    threads = torch.get_num_threads()
    return f"cpu ({model}, {threads} thread{'' if threads == 1 else 's'})"


def backbone_description(model: str) -> dict[str, Any]:
    """What the checkpoint says about itself: architecture from `config.json`, and the recipe from a
    `pretrain_log.json` next to it if there is one (the reference backbone has one)."""
    out: dict[str, Any] = {"model": model, "name": Path(model).name or model}
    try:
        config = transformers.AutoConfig.from_pretrained(model)
        out.update(
            model_type=config.model_type,
            depths=list(getattr(config, "depths", []) or []),
            hidden_sizes=list(getattr(config, "hidden_sizes", []) or []),
            image_size=getattr(config, "image_size", None),
        )
    except Exception as err:  # an unreadable config must not stop the benchmark
        out["config_error"] = f"{type(err).__name__}: {err}"
    log_file = Path(model).expanduser() / "pretrain_log.json"
    if log_file.is_file():
        try:
            pretrain = json.loads(log_file.read_text())
            recipe = pretrain.get("args", {})
            out["pretraining"] = {k: recipe[k] for k in ("data", "res", "epochs", "lr", "bs") if k in recipe}
            last = (pretrain.get("log") or [{}])[-1]
            if "val_acc" in last:
                out["pretraining"]["final_heldout_accuracy"] = last["val_acc"]
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    return out


# ---------------------------------------------------------------------------------------------- tasks
@dataclass
class TaskSetup:
    """Everything that is the same for all runs of one task."""

    task: str
    data: list[str]
    fixed: dict[str, Any]  # TrainingArguments fields shared by every run
    epochs: int
    batch_size: int
    lr_factors: list[float]
    seeds: list[int]
    variants: list[str]
    n_search_seeds: int = 1  # the learning rate is chosen on the mean validation over seeds[:n_search_seeds]
    split_seeds: list[int] = field(default_factory=lambda: [0])
    split: dict[str, Any] = field(default_factory=dict)  # the search split's description
    sources: list[str] = field(default_factory=list)  # the data folders given (`data` may come from them)
    split_data: dict[int, list[str]] = field(default_factory=dict)  # data per split seed, where it differs
    head_lr: float | None = None  # the PEFT methods' head rate on a dense task (None: classification)

    def data_for(self, split_seed: int) -> list[str]:
        """The data paths of a run on split `split_seed` (change detection: one folder of links per split)."""
        return self.split_data.get(split_seed, self.data)

    @property
    def key(self) -> str:
        return self.task.replace("-", "_")

    @property
    def search_seeds(self) -> list[int]:
        """The seeds of the learning-rate search, on the search split."""
        return self.seeds[: self.n_search_seeds]

    @property
    def metric(self) -> str:
        return TASK_METRICS[self.task][0]  # the training API's default selection metric

    def protocol(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings that change results: runs recorded under another protocol are never reused."""
        return clean(
            {
                "schema": SCHEMA_VERSION,
                "task": self.task,
                "metric": self.metric,
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "lr_factors": [round(f, 6) for f in self.lr_factors],
                "search_seed": self.seeds[0],
                # several search seeds change the choices; one, the protocol of the first files, records nothing
                **({"search_seeds": self.search_seeds} if self.n_search_seeds > 1 else {}),
                # the PEFT methods' decoders train at this rate on the dense tasks (default: the training API's)
                **({"dense_head_lr": self.head_lr} if self.head_lr is not None else {}),
                "split_seed": self.split_seeds[0],  # the search split
                "split_seeds": self.split_seeds,
                "mixed_precision": args.mixed_precision,
                "weight_decay": TrainingArguments.weight_decay,
                "warmup_ratio": TrainingArguments.warmup_ratio,
                "quick": bool(args.quick),
                # crops_per_image=1 is what every recorded run did (one crop per scene copy): not a protocol change
                **{k: v for k, v in self.fixed.items() if k not in ("verify_images", "crops_per_image")},
                "split": self.split,
            }
        )


def cd_split(roots: Sequence[str], seed: int, work_dir: Path, repeats: int) -> tuple[Path, dict[str, Any]]:
    """A `train/ val/ test/` folder of symlinks to the change-detection pairs, split by pairs and stratified by
    source folder; every training pair appears `repeats` times (`<name>__r<k>`) so one epoch holds enough
    random crops. Returns the folder and the split (pair names per part)."""
    rng = np.random.default_rng(seed)
    root = work_dir / f"cd-split-seed{seed}-x{repeats}"
    shutil.rmtree(root, ignore_errors=True)
    split: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for source in roots:
        source_dir = Path(source).expanduser().resolve()
        if not all((source_dir / sub).is_dir() for sub in ("A", "B", "label")):
            raise FileNotFoundError(f"--cd {source}: expected A/, B/ and label/ sub-folders")
        stems = sorted(p.stem for p in (source_dir / "label").iterdir() if p.is_file())
        if len(stems) < 3:
            raise ValueError(f"--cd {source}: {len(stems)} pairs; a train/validation/test split needs 3")
        order = [stems[i] for i in rng.permutation(len(stems))]
        n_test = max(1, round(len(stems) * CD_TEST_FRACTION))
        n_val = max(1, round(len(stems) * CD_VALIDATION_FRACTION))
        n_test = min(n_test, len(stems) - n_val - 1)
        parts = {
            "test": order[:n_test],
            "validation": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        for part, chosen in parts.items():
            folder = {"validation": "val"}.get(part, part)
            copies = repeats if part == "train" else 1
            for stem in sorted(chosen):
                name = f"{source_dir.name}__{stem}"
                split[part].append(name)
                for sub in ("A", "B", "label"):
                    (target_dir := root / folder / sub).mkdir(parents=True, exist_ok=True)
                    matches = [p for p in (source_dir / sub).iterdir() if p.stem == stem]
                    if len(matches) != 1:
                        raise FileNotFoundError(f"{source_dir / sub}: expected one file named {stem}.*")
                    for k in range(copies):
                        suffix = f"__r{k}" if copies > 1 else ""
                        link = target_dir / f"{name}{suffix}{matches[0].suffix}"
                        try:
                            link.symlink_to(matches[0])
                        except OSError:
                            shutil.copy2(matches[0], link)
    return root, {"by_pairs": split, "seed": seed, "train_repeats": repeats}


def make_setups(args: argparse.Namespace, work_dir: Path) -> list[TaskSetup]:
    """One `TaskSetup` per requested task, with the flags resolved."""
    setups = []
    for task in args.tasks:
        dense = task != "classification"
        requested = args.methods or (QUICK_VARIANTS if args.quick else TASK_VARIANTS)[task]
        variants = [v for v in requested if v in TASK_VARIANTS[task]]
        if not variants:
            log(f"{task}: none of the requested methods applies; skipped")
            continue
        limits = dict(
            max_train_samples=args.dense_max_train_samples if dense else args.max_train_samples,
            max_eval_samples=args.dense_max_eval_samples if dense else args.max_eval_samples,
        )
        split_data: dict[int, list[str]] = {}
        if task == "change-detection":
            for split_seed in reversed(args.split_seeds):  # ends with the search split's description
                folder, split = cd_split(args.cd, split_seed, work_dir, args.cd_repeats)
                split_data[split_seed] = [str(folder)]
            data = split_data[args.split_seeds[0]]
            crop = args.cd_crop or 32 * math.ceil(args.image_size / 32)
            # the training pairs are repeated by cd_split; one crop per copy keeps the protocol of the results
            fixed = dict(image_size=crop, resize=args.cd_resize, crops_per_image=1, **limits)
        else:
            seg = task == "segmentation"
            data = [args.gid if seg else args.ucm]
            split = {
                "train_fraction": SEG_TRAIN_FRACTION if seg else args.train_fraction,
                "validation_fraction": SEG_VALIDATION_FRACTION if seg else args.validation_fraction,
            }
            sizes = dict(image_size=args.image_size)
            if seg:
                sizes = dict(resize=args.seg_resize or args.image_size, image_size=args.seg_crop)
                sizes["head_hidden_size"] = args.seg_head_hidden
                sizes["crops_per_image"] = 1  # one crop per tile and epoch, the protocol of the results
            fixed = dict(**split, **sizes, **limits)
        setups.append(
            TaskSetup(
                task=task,
                data=[str(d) for d in data],
                fixed=fixed,
                epochs=args.dense_epochs if dense else args.epochs,
                batch_size=args.dense_batch_size if dense else args.batch_size,
                lr_factors=args.dense_lr_factors if dense else args.lr_factors,
                seeds=args.dense_seeds if dense else args.seeds,
                variants=variants,
                n_search_seeds=args.search_seeds,
                split_seeds=args.split_seeds,
                split=split,
                sources=[str(d) for d in (args.cd if task == "change-detection" else data)],
                split_data=split_data,
                # the rate `upetu-train` gives the PEFT methods' decoder of this width (fixed["head_hidden_size"])
                head_lr=(args.dense_head_lr or dense_head_lr(task, fixed.get("head_hidden_size")))
                if dense
                else None,
            )
        )
    return setups


def training_arguments(
    setup: TaskSetup,
    args: argparse.Namespace,
    method: str,
    options: dict[str, Any],
    output_dir: Path,
    lr: float | None = None,
    seed: int = 0,
    verify: bool = False,
    split_seed: int | None = None,
) -> TrainingArguments:
    """The `TrainingArguments` of one run (on the search split unless `split_seed` is given)."""
    split_seed = setup.split_seeds[0] if split_seed is None else split_seed
    if setup.head_lr is not None and method in PEFT_METHODS:
        options = {"head_lr": setup.head_lr, **options}
    return TrainingArguments(
        task=setup.task,
        model=args.model,
        data=list(setup.data_for(split_seed)),
        output_dir=str(output_dir),
        method=method,
        lr=lr,
        seed=seed,
        split_seed=split_seed,
        epochs=setup.epochs,
        batch_size=setup.batch_size,
        mixed_precision=args.mixed_precision,
        num_workers=args.num_workers,
        cpu=args.cpu,
        overwrite=True,
        checkpointing_steps=None,
        verify_images=verify,
        **setup.fixed,
        **options,
    )


# ---------------------------------------------------------------------------------------------- parameters
def count_parameters(setup: TaskSetup, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Parameter counts of the task model on this backbone, the LoRA rank whose adapter is closest to UPetu's
    default adapter, and the largest UPetu `r` whose adapter stays under `SMALL_BUDGET` of the backbone."""
    spec = get_task(setup.task)
    probe = training_arguments(setup, args, "full", {}, work_dir / "unused", verify=True)
    class_names = spec.load_data(probe).class_names
    whole = parameter_summary(apply_method(spec.build_model(probe, class_names), "full"))
    head, total = whole["head"], whole["total"]

    def adapter(method: str, **options: Any) -> int:
        targs = training_arguments(setup, args, method, options, work_dir / "unused")
        return int(parameter_summary(apply_method(spec.build_model(targs, class_names), targs))["adapter"])

    backbone = total - head
    upetu_default = adapter("upetu")
    lora_1, lora_2 = adapter("lora", r=1), adapter("lora", r=2)
    per_rank = lora_2 - lora_1

    def matched_lora_rank(target: int) -> tuple[int, int]:
        """The LoRA rank whose adapter is closest to `target` parameters, and its size."""
        guess = max(1, round((target - (lora_1 - per_rank)) / per_rank))
        sizes = {r: adapter("lora", r=r) for r in sorted({max(1, guess - 1), guess, guess + 1})}
        best = min(sizes, key=lambda r: (abs(sizes[r] - target), r))
        return best, sizes[best]

    lora_r, lora_params = matched_lora_rank(upetu_default)

    default_r = upetu_hf.UPetuConfig().r
    small_1, small_2 = adapter("upetu", r=1), adapter("upetu", r=2)
    slope = small_2 - small_1
    budget = SMALL_BUDGET * backbone
    small_r = int(min(default_r, max(1, math.floor((budget - (small_1 - slope)) / slope - 1e-9))))
    small = adapter("upetu", r=small_r)
    while small >= budget and small_r > 1:
        small_r -= 1
        small = adapter("upetu", r=small_r)
    while small_r < default_r and (bigger := adapter("upetu", r=small_r + 1)) < budget:
        small_r, small = small_r + 1, bigger
    lora_small_r, lora_small = matched_lora_rank(small)
    return {
        "num_labels": len(class_names),
        "class_names": class_names,
        "total_params": total,
        "head_params": head,
        "backbone_params": backbone,
        "upetu_default_r": default_r,
        "upetu_default_adapter_params": upetu_default,
        "lora_adapter_params_per_rank": per_rank,
        "lora_matched_r": lora_r,
        "lora_matched_adapter_params": lora_params,
        "upetu_small_r": small_r,
        "upetu_small_adapter_params": small,
        "upetu_small_pct_of_backbone": 100.0 * small / backbone,
        "upetu_small_budget_met": small < budget,
        "lora_small_r": lora_small_r,
        "lora_small_adapter_params": lora_small,
    }


def resolve_options(variant: Variant, counts: dict[str, Any]) -> dict[str, Any]:
    """The variant's options with the `r` placeholders replaced by the computed ranks."""
    options = dict(variant.options)
    if options.get("r") == MATCHED:
        options["r"] = counts["lora_matched_r"]
    elif options.get("r") == SMALL:
        options["r"] = counts["upetu_small_r"]
    elif options.get("r") == SMALL_MATCHED:
        options["r"] = counts["lora_small_r"]
    return options


def weight_sizes(run_dir: Path, method: str) -> dict[str, Any]:
    """Bytes of the weights file the run wrote, and of that file re-saved with / without the head tensors.

    PEFT methods: `adapter_model.safetensors` (adapter + heads). Full fine-tuning: `model.safetensors`. The linear
    probe saves the whole model too, but only its heads are trained: its checkpoint is the heads alone.
    """
    name = saved_file_names(method in PEFT_METHODS)[1]
    path = run_dir / name
    size = path.stat().st_size
    if method == "linear":
        with_head, without_head = resaved_bytes(path, is_head_parameter), 0
    else:
        with_head, without_head = size, resaved_bytes(path, lambda key: not is_head_parameter(key))
    return {
        "checkpoint_file": name,
        "checkpoint_bytes": size,
        "weights_bytes_with_head": with_head,
        "weights_bytes_without_head": without_head,
    }


# ---------------------------------------------------------------------------------------------- runs
def finished_run(
    result: dict[str, Any], metric: str, method: str, counts: dict[str, Any], wall: float
) -> dict[str, Any]:
    """The record of a finished run from what `train` returned: scores at the best epoch, parameter counts and
    shares, times."""
    params = result["parameters"]
    head, adapter = params["head"], params["adapter"]  # the linear probe trains its heads only: adapter 0
    # peft keeps the original heads next to the trained copies
    base_total = params["total"] - (params["trainable"] if method in PEFT_METHODS else 0)
    return dict(
        metric=metric,
        best_epoch=result["best_epoch"],
        selection_split=result["selection_split"],
        validation_score=clean((result.get("validation") or {}).get(metric)),
        test_score=clean((result.get("test") or {}).get(metric)),
        validation=result.get("validation"),
        test=result.get("test"),
        history=result.get("history"),
        parameters=params,
        trainable_params=params["trainable"],
        head_params=head,
        adapter_params=adapter,
        base_model_params=base_total,
        trainable_pct=100.0 * params["trainable"] / base_total,
        adapter_pct_of_backbone=100.0 * adapter / counts["backbone_params"],
        wall_time_s=wall,
        train_runtime_s=result["train"]["runtime_s"],
        samples_per_second=result["train"]["samples_per_second"],
        steps=result["train"]["steps"],
    )


def execute_run(
    setup: TaskSetup,
    args: argparse.Namespace,
    variant: Variant,
    options: dict[str, Any],
    lr: float,
    factor: float,
    seed: int,
    run_dir: Path,
    counts: dict[str, Any],
    verify: bool = False,
    split_seed: int = 0,
) -> dict[str, Any]:
    """Train one configuration and return its record (status `ok`, or `failed` with the error). Images are
    checked by `count_parameters` (once per task), so runs skip the check unless `verify`."""
    record: dict[str, Any] = {
        "key": run_key(variant.name, options, lr, seed, split_seed),
        "task": setup.task,
        "variant": variant.name,
        "label": variant.label,
        "method": variant.method,
        "options": options,
        "lr": lr,
        "lr_factor": factor,
        "seed": seed,
        "split_seed": split_seed,
        "epochs": setup.epochs,
        "run_dir": str(run_dir),
        "device": device_name(args.cpu),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    targs = training_arguments(setup, args, variant.method, options, run_dir, lr, seed, verify, split_seed)
    record["arguments"] = {k: v for k, v in targs.to_dict().items() if k not in ("output_dir", "data")}
    start = time.perf_counter()
    try:
        result = train(targs)
    except Exception as err:  # one failed run must not lose the others
        record.update(
            status="failed",
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(limit=8),
            wall_time_s=time.perf_counter() - start,
        )
        return record
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    wall = time.perf_counter() - start
    try:
        record["splits"] = json.loads((run_dir / RUN_CONFIG_FILE).read_text()).get("splits")
    except (OSError, ValueError):
        record["splits"] = None
    record.update(status="ok", **finished_run(result, setup.metric, variant.method, counts, wall))
    record.update(weight_sizes(run_dir, variant.method))
    if args.delete_weights:
        for path in run_dir.glob("*.safetensors"):
            path.unlink()
    return record


# ---------------------------------------------------------------------------------------------- main loop
class TaskRunner:
    """Runs the search and seed runs of one task, skipping finished ones, saving after each run."""

    def __init__(self, setup: TaskSetup, args: argparse.Namespace, work_dir: Path, command: str) -> None:
        self.setup, self.args, self.work_dir = setup, args, work_dir
        self.path = Path(args.output_dir) / f"accuracy_{setup.key}.json"
        self.state = load_state(self.path, setup, args)
        for other in args.import_runs:
            added = import_runs(self.state, Path(other), setup, args)
            log(f"{setup.task}: imported {added} finished run(s) from {other}")
        if args.resume and self.state["runs"]:
            log(f"{setup.task}: resuming {self.path} ({len(self.state['runs'])} finished run(s) kept)")
        self.done = {r["key"]: r for r in self.state["runs"] if r.get("status") == "ok"}
        self.planned: list[str] = list(self.state.get("planned", []))
        self.command = command
        self.counts: dict[str, Any] = {}

    def ensure(
        self,
        variant: Variant,
        options: dict[str, Any],
        lr: float,
        factor: float,
        seed: int,
        phase: str,
        split_seed: int | None = None,
    ):
        """The record of a run, trained now unless a finished one is on file."""
        setup, state, name = self.setup, self.state, variant.name
        split_seed = setup.split_seeds[0] if split_seed is None else split_seed
        key = run_key(name, options, lr, seed, split_seed)
        if key not in self.planned:
            self.planned.append(key)
        state["planned"] = self.planned
        where = f"seed {seed}" + (f", split {split_seed}" if split_seed else "")
        if key in self.done:
            log(f"{setup.task}/{name}: lr {lr:g} {where} already done, skipped")
            return self.done[key]
        if self.args.merge_only:
            log(f"{setup.task}/{name}: lr {lr:g} {where} not on file, not trained (--merge-only)")
            return None
        run_dir = (
            self.work_dir
            / setup.key
            / name
            / (f"lr{lr:g}-seed{seed}" + (f"-split{split_seed}" if split_seed else ""))
        )
        log(f"{setup.task}/{name}: {phase} run, lr {lr:g} (x{factor:.3g}), {where}, {setup.epochs} epochs")
        record = execute_run(
            setup, self.args, variant, options, lr, factor, seed, run_dir, self.counts, False, split_seed
        )
        record["phase"] = phase
        state["runs"] = [r for r in state["runs"] if r["key"] != key] + [record]
        if record["status"] == "ok":
            self.done[key] = record
            log(
                f"{setup.task}/{name}: validation {setup.metric} {fmt4(record['validation_score'])} "
                f"(epoch {record['best_epoch']}), test {fmt4(record['test_score'])}, {record['wall_time_s']:.0f} s"
            )
        else:
            log(f"{setup.task}/{name}: FAILED: {record['error']}")
        save_state(self.path, state, setup)
        return record

    def choose(
        self, variant: Variant, options: dict[str, Any], grid: list[tuple[float, float]]
    ) -> dict[str, Any]:
        """The search's choice (`_ledger.select`). A tie that other seeds have not settled trains the tied rates on
        the next seed of `seeds` (phase `tie-break`; the winner's run is one of its final runs) and chooses again,
        until the seeds settle it or run out."""
        setup, factors = self.setup, {lr: f for f, lr in grid}

        def choice() -> dict[str, Any]:
            ran = [r for r in self.done.values() if r["variant"] == variant.name and r["options"] == options]
            return select(ran, grid, setup.search_seeds, setup.split_seeds[0])

        chosen = choice()
        for seed in setup.seeds[setup.n_search_seeds :]:
            if chosen.get("tie", {}).get("decided_by", "seeds") == "seeds":
                break
            for lr in chosen["tie"]["lrs"]:
                self.ensure(variant, options, lr, factors[lr], seed, "tie-break")
            chosen = choice()
        return chosen

    def run(self) -> dict[str, Any]:
        """Search, select and seed every variant; returns the task's final state."""
        setup, args, state = self.setup, self.args, self.state
        started = time.perf_counter()
        log(f"{setup.task}: counting parameters on {args.model}")
        self.counts = count_parameters(setup, args, self.work_dir)
        state["backbone"] = {**backbone_description(args.model), **self.counts}
        session = {
            "command": self.command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(device_name(args.cpu)),
            "git": git_state(CODE_PATHS),
            "paths": {
                "model": args.model,
                "data": setup.data,
                "sources": setup.sources,
                "work_dir": str(self.work_dir),
            },
            "methods": setup.variants,
            "seeds": setup.seeds,
        }
        state["sessions"].append(session)
        for name in setup.variants:
            variant = VARIANTS[name]
            options = resolve_options(variant, self.counts)
            grid = [(f, round_lr(DEFAULT_LR[variant.method] * f)) for f in setup.lr_factors]
            state["variants"][name] = {
                "label": variant.label,
                "method": variant.method,
                "options": options,
                "lr_grid": grid,
            }
            for seed in setup.search_seeds:
                for f, lr in grid:
                    self.ensure(variant, options, lr, f, seed, "search")
            choice = self.choose(variant, options, grid)
            if not choice["complete"]:
                log(f"{setup.task}/{name}: learning-rate search incomplete (a run failed); no seed runs")
                continue
            edge = "" if choice["interior"] else " -- AT THE EDGE of its grid: widen --lr-factors"
            log(
                f"{setup.task}/{name}: chosen lr {choice['lr']:g} (validation {fmt4(choice['validation_score'])})"
                + edge
            )
            for split_seed in setup.split_seeds:
                for seed in setup.seeds:
                    if split_seed != setup.split_seeds[0] or seed not in setup.search_seeds:
                        phase = "seed" if split_seed == setup.split_seeds[0] else "split"
                        self.ensure(
                            variant, options, choice["lr"], choice["lr_factor"], seed, phase, split_seed
                        )
        session["wall_time_s"] = time.perf_counter() - started
        save_state(self.path, state, setup)
        log(f"{setup.task}: wrote {self.path} ({session['wall_time_s']:.0f} s)")
        return state


def print_summary(state: dict[str, Any]) -> None:
    """A short table on stdout."""
    metric = state["metric"]
    print(f"\n{state['task']} ({metric}, test, mean +- std over seeds):")
    for s in state["summary"].values():
        if s["test_mean"] is None:
            print(f"  {s['label']:<32} no test metric")
            continue
        print(
            f"  {s['label']:<32} {100 * s['test_mean']:6.2f} +- {100 * s['test_std']:5.2f}  (n={s['n']}, "
            f"lr {s['lr']:g}, trainable {s['trainable_pct']:.2f} %, {s['weights_bytes_without_head'] / 1e3:.1f} KB "
            f"without head, {s['wall_time_s_mean']:.0f} s/run)"
        )


def plan(setups: list[TaskSetup]) -> list[str]:
    """Human-readable list of the runs the benchmark would do (search and seeds)."""
    lines = []
    for setup in setups:
        k = setup.n_search_seeds
        more = len(setup.seeds) * len(setup.split_seeds) - k
        n = len(setup.variants) * (len(setup.lr_factors) * k + more)
        searched = f"{len(setup.lr_factors)} learning rates" + (f" x {k} search seeds" if k > 1 else "")
        lines.append(
            f"{setup.task}: {len(setup.variants)} methods x ({searched} + "
            f"{more} more seed/split runs) = {n} runs of {setup.epochs} epochs"
        )
        for name in setup.variants:
            lrs = ", ".join(f"{round_lr(DEFAULT_LR[VARIANTS[name].method] * f):g}" for f in setup.lr_factors)
            lines.append(
                f"  {name:<12} lr in {{{lrs}}}, seeds {setup.seeds}, split seeds {setup.split_seeds}"
            )
    return lines


# ---------------------------------------------------------------------------------------------- CLI
def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """The protocol's options (left at None: `FULL` or `QUICK`'s values)."""
    proto = parser.add_argument_group("protocol (defaults: the full benchmark, or --quick's)")
    proto.add_argument("--seeds", help="seeds of the final runs; the first one also does the search (0,1,2)")
    proto.add_argument(
        "--search-seeds",
        type=int,
        default=1,
        help="search the learning rate with the first N seeds of --seeds (and of --dense-seeds) and choose on their "
        "mean validation metric: a firmer choice where one seed's validation part is small, at N times the search's "
        "cost (1)",
    )
    proto.add_argument("--dense-seeds", help="seeds for segmentation and change detection (default: --seeds)")
    proto.add_argument("--epochs", type=int, help="classification epochs per run (20)")
    proto.add_argument("--dense-epochs", type=int, help="segmentation / change-detection epochs per run (20)")
    proto.add_argument(
        "--lr-factors", help="learning rates tried: DEFAULT_LR[method] x each factor (1/3,1,3)"
    )
    proto.add_argument("--dense-lr-factors", help="the same for the dense tasks (default: --lr-factors)")
    proto.add_argument(
        "--dense-head-lr",
        type=float,
        help="learning rate of the PEFT methods' decoders on the dense tasks (default: the training API's for the "
        f"decoder's width, `dense_head_lr`: DENSE_HEAD_LR {DENSE_HEAD_LR} at the default widths, "
        f"{dense_head_lr('segmentation', 64):g} for the 64-channel UperNet)",
    )
    # forwarded to every run's TrainingArguments, as `upetu-train classification` offers them
    names = ("image_size", "batch_size", "train_fraction", "validation_fraction", "mixed_precision")
    defaults = dict(image_size=112, train_fraction=0.5, validation_fraction=0.2)
    add_training_options(proto, "classification", names, **defaults)
    proto.add_argument("--dense-batch-size", type=int, default=16, help="dense-task batch size (16)")
    proto.add_argument(
        "--split-seeds",
        default="0",
        help="seeds of the data splits; the first one is the search split, every split trains every seed (0)",
    )
    proto.add_argument("--seg-resize", type=int, help="GID tiles resized to this (default: --image-size)")
    proto.add_argument("--seg-crop", type=int, help="GID random training crop (default: none)")
    proto.add_argument("--seg-head-hidden", type=int, default=64, help="UperNet channels (64)")
    proto.add_argument(
        "--cd-crop", type=int, help="change-detection training crop (default: --image-size up to x32)"
    )
    proto.add_argument("--cd-resize", type=int, help="resize change-detection pairs first (default: no)")
    proto.add_argument("--cd-repeats", type=int, help="copies of each training pair per epoch (16; quick 2)")
    proto.add_argument("--max-train-samples", type=int, help="subsample classification training images")
    proto.add_argument("--max-eval-samples", type=int, help="subsample classification validation/test images")
    proto.add_argument("--dense-max-train-samples", type=int, help="subsample dense training examples")
    proto.add_argument("--dense-max-eval-samples", type=int, help="subsample dense validation/test examples")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the runs execute and are recorded."""
    runtime = parser.add_argument_group("runtime")
    add_training_options(runtime, "classification", ("num_workers", "cpu"), num_workers=None)
    runtime.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's). On a CPU shared with other jobs use 1: see the notes above",
    )
    runtime.add_argument("--output-dir", default=str(REPO_ROOT / "results"), help="where accuracy_*.json go")
    runtime.add_argument("--work-dir", help="run folders (default: a temporary folder, removed at the end)")
    runtime.add_argument(
        "--resume", action="store_true", help="continue the JSON files, skipping finished runs"
    )
    runtime.add_argument("--overwrite", action="store_true", help="start the JSON files afresh")
    runtime.add_argument(
        "--retrain",
        metavar="METHODS",
        help="comma-separated methods whose runs on file (--resume) are set aside under 'superseded' and not "
        "reused: after a change to their design, their runs are trained (or imported) again",
    )
    runtime.add_argument(
        "--import-runs",
        nargs="+",
        default=[],
        metavar="JSON",
        help="merge the finished runs of these accuracy_<task>.json files (shards run with --methods in parallel "
        "processes, each with its own --output-dir) into this run's files; their runs are not trained again",
    )
    runtime.add_argument(
        "--delete-weights", action="store_true", help="delete each run's weights once measured"
    )
    runtime.add_argument(
        "--merge-only",
        action="store_true",
        help="train nothing: merge and summarise the runs on file (with --resume / --import-runs); the missing "
        "ones are listed, and a method shows the runs it has",
    )


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options; the protocol ones left at None take `FULL` or `QUICK`'s values."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    paths = parser.add_argument_group("data and backbone")
    paths.add_argument(
        "--model", default=str(DEFAULT_PATHS["model"]), help="ConvNeXt checkpoint: Hub id or folder"
    )
    paths.add_argument("--ucm", default=str(DEFAULT_PATHS["ucm"]), help="UC Merced class-per-folder images")
    paths.add_argument("--gid", default=str(DEFAULT_PATHS["gid"]), help="GID tiles: images/ + masks/")
    paths.add_argument(
        "--cd",
        nargs="+",
        default=[str(p) for p in DEFAULT_PATHS["cd"]],
        help="change-detection A/B/label folders",
    )
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}"
    )
    what.add_argument(
        "--methods",
        help=f"comma-separated subset of {', '.join(CLASSIFICATION_VARIANTS)} (default: the task's)",
    )
    what.add_argument(
        "--quick", action="store_true", help="fast partial run: few methods, 1 seed, 2 epochs, subsets"
    )
    what.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    add_protocol_options(parser)
    add_runtime_options(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options with the preset filled in and the lists parsed; a bad combination is a usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)

    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.tasks = [get_task(t).name for t in args.tasks.split(",") if t.strip()]
        args.seeds = parse_ints(args.seeds)
        args.split_seeds = parse_ints(args.split_seeds)
        args.dense_seeds = parse_ints(args.dense_seeds) if args.dense_seeds else args.seeds
        args.lr_factors = parse_factors(args.lr_factors)
        args.dense_lr_factors = (
            parse_factors(args.dense_lr_factors) if args.dense_lr_factors else args.lr_factors
        )
    except (ValueError, KeyError) as err:
        parser.error(str(err))
    if args.methods:
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in args.methods if m not in CLASSIFICATION_VARIANTS]
        if unknown:
            parser.error(f"unknown method(s) {unknown}: choose from {', '.join(CLASSIFICATION_VARIANTS)}")
    for name in ("epochs", "dense_epochs", "batch_size", "dense_batch_size", "cd_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.cd_crop is not None and args.cd_crop % 32:
        parser.error("--cd-crop must be a multiple of 32 (the backbone stride)")
    if args.merge_only and not args.resume:
        parser.error("--merge-only summarises the files of --resume: pass --resume too")
    if args.import_runs and not args.resume:
        parser.error("--import-runs merges into the files of --resume: pass --resume too")
    args.retrain = [m.strip() for m in (args.retrain or "").split(",") if m.strip()]
    if [m for m in args.retrain if m not in CLASSIFICATION_VARIANTS]:
        parser.error(f"unknown --retrain method(s): choose from {', '.join(CLASSIFICATION_VARIANTS)}")
    if args.retrain and not args.resume:
        parser.error("--retrain sets aside runs of the files of --resume: pass --resume too")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if not 1 <= args.search_seeds <= min(len(args.seeds), len(args.dense_seeds)):
        parser.error(
            f"--search-seeds {args.search_seeds} must be between 1 and the number of --seeds "
            f"({len(args.seeds)}) and --dense-seeds ({len(args.dense_seeds)})"
        )
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.num_workers is None:
        args.num_workers = 0 if args.cpu or not torch.cuda.is_available() else min(8, os.cpu_count() or 1)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the benchmark; returns `{task: state}` as written to `accuracy_<task>.json`."""
    args = parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python scripts/benchmark_accuracy.py", *argv_list])
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
            states[setup.task] = TaskRunner(setup, args, work_dir, command).run()
            print_summary(states[setup.task])
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
