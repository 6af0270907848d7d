#!/usr/bin/env python
"""Choose the default learning rate of the task heads of PEFT methods on the dense tasks (`DENSE_HEAD_LR`) on
validation data, with the decoders `upetu-train` builds by default (segmentation: the checkpoint's UperNet, 512
channels, ~29 M parameters on ConvNeXt-B, far more than the adapter; change detection: the 128-channel
change-detection decoder).

Every run is `upetu_hf.train.train` with the CLI defaults (method, adapter learning rate, decoder, weight decay,
schedule) apart from `head_lr`, the split and, to fit a CPU, the image sizes, `--epochs`, `--batch-size` and the
sample limits:
- segmentation (`--task segmentation`, GID): `--train-fraction 0.8 --validation-fraction 0.25` (60 / 20 / 20, the
  accuracy benchmark's), tiles resized to `--resize`, `--max-train-samples` tiles;
- change detection (`--task change-detection`, LEVIR + DSIFN pairs): the accuracy benchmark's split by pairs
  (`benchmark_accuracy.cd_split`: 40 % test, 20 % validation per source folder, every training pair repeated
  `--cd-repeats` times, one random `--image-size` crop per copy), evaluation on the full pairs.
One run per head learning rate, method, seed and split seed; the mean validation score (mIoU, change F1) over them
decides (the test split is evaluated by the training API and recorded, never used). Results: `--output` (default
results/head_lr_<task>.json), written after every run (atomic), so an interrupted search continues where it stopped.

Usage:
    python scripts/head_lr_search.py --threads 1
    python scripts/head_lr_search.py --methods upetu,lora --head-lrs 1e-2,1e-3,3e-4,3e-3,1e-4 --epochs 5
    python scripts/head_lr_search.py --task change-detection --split-seeds 0,1,2 --threads 1
    python scripts/head_lr_search.py --head-hidden-size 64 --output results/head_lr_segmentation_h64.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import (
    REPO_ROOT,
    SHARED,
    SHARED_BACKBONE,
    add_training_options,
    clean,
    git_state,
    machine_info,
    write_json_atomic,
)
from _ledger import TIE_TOLERANCE, break_tie, last_epochs_score, mean_or_none, paired_scores
from benchmark_accuracy import cd_split

from upetu_hf.train import DEFAULT_LR, TrainingArguments, train
from upetu_hf.train.methods import dense_head_lr

TASKS = ("segmentation", "change-detection")
#: Per task: the default data, the validation metric, and the CPU-sized defaults of the search.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "segmentation": {
        "data": [str(SHARED / "data" / "gid5_landcover")],
        "metric": "mean_iou",
        "epochs": 5,
        "max_train_samples": 320,
        "max_eval_samples": 139,  # half of the 278 validation tiles
    },
    "change-detection": {
        "data": [str(SHARED / "data" / "levir_cd_samples"), str(SHARED / "data" / "dsifn_cd_samples")],
        "metric": "f1",
        "epochs": 8,  # the accuracy benchmark's dense epochs
        "max_train_samples": None,
        "max_eval_samples": None,
    },
}


def log(message: str) -> None:
    print(f"[head_lr_search {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_key(method: str, head_lr: float, seed: int, split_seed: int = 0) -> str:
    """A run's key; split seed 0 leaves no mark (the keys of the first, single-split segmentation search)."""
    split = f"|split={split_seed}" if split_seed else ""
    return f"{method}|head_lr={head_lr:.6g}|seed={seed}{split}"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every run shares (a file recorded with other settings is never continued)."""
    common = {
        "task": args.task,
        "data": Path(args.data[0]).name if args.task == "segmentation" else [Path(d).name for d in args.data],
        "model": Path(args.model).name,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    if args.task == "segmentation":
        return {
            **common,
            "resize": args.resize,
            "max_train_samples": args.max_train_samples,
            "max_eval_samples": args.max_eval_samples,
            "train_fraction": 0.8,
            "validation_fraction": 0.25,
            "split_seed": 0,
            "head_hidden_size": args.head_hidden_size,  # None: the checkpoint's default decoder
        }
    return {
        **common,
        "image_size": args.image_size,
        "cd_repeats": args.cd_repeats,
        "crops_per_image": 1,
        "split": "benchmark_accuracy.cd_split",
        "head_hidden_size": args.head_hidden_size,  # None: the change-detection model's default decoder (128)
    }


def training_arguments(
    args: argparse.Namespace, method: str, head_lr: float, split_seed: int, data: str, output_dir: Path
) -> TrainingArguments:
    """The `TrainingArguments` of one run: the CLI's defaults apart from the head rate, the split and the sizes."""
    if args.task == "segmentation":
        task_fields: dict[str, Any] = dict(
            resize=args.resize,
            train_fraction=0.8,
            validation_fraction=0.25,
            split_seed=split_seed,
            head_hidden_size=args.head_hidden_size,
        )
    else:  # the split is the folder's train/ val/ test/ (cd_split); training pairs already repeated
        task_fields = dict(
            image_size=args.image_size, crops_per_image=1, head_hidden_size=args.head_hidden_size
        )
    return TrainingArguments(
        task=args.task,
        model=args.model,
        data=data,
        output_dir=str(output_dir),
        method=method,
        head_lr=head_lr,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        checkpointing_steps=None,
        overwrite=True,
        **task_fields,
    )


def choose(runs: list[dict[str, Any]], head_lrs: list[float], metric: str) -> dict[str, Any]:
    """Per head learning rate, the mean validation score over methods, seeds and splits; the best one (a tie goes
    to the better mean of the runs' last epochs, then to the smaller rate, and is recorded as `tie`), whether it is interior to the grid, and the best rate minus each other one, paired over the
    (split seed, seed) runs both have (mean and 95 % t-interval, `_ledger.paired_scores`; one method)."""
    per_lr = {}
    for lr in head_lrs:
        scores = [r["validation_score"] for r in runs if r["head_lr"] == lr]
        if scores:
            per_lr[lr] = sum(scores) / len(scores)
    if not per_lr:
        return {}
    top = max(per_lr.values())
    tied = [lr for lr in per_lr if top - per_lr[lr] <= TIE_TOLERANCE]
    best, rule = tied[0], None
    if len(tied) > 1:  # the same tie rule as the accuracy benchmark's: the last epochs, then the smaller rate
        last = [
            (
                "last epochs",
                lambda lr: mean_or_none([last_epochs_score(r, metric) for r in runs if r["head_lr"] == lr]),
            )
        ]
        best, rule = break_tie(tied, last)
    # validation scores by (split seed, seed): one method only (with several, a pair is not one run)
    by_pair = {}
    for lr in per_lr:
        chosen = [r for r in runs if r["head_lr"] == lr]
        if len({r["method"] for r in chosen}) == 1:
            by_pair[lr] = {(r.get("split_seed", 0), r["seed"]): r["validation_score"] for r in chosen}
    paired = {}
    for lr in by_pair:
        diff = paired_scores(by_pair[best], by_pair[lr]) if lr != best and best in by_pair else None
        if diff:
            paired[f"{lr:g}"] = {k: diff[k] for k in ("n", "mean", "ci95")}
    return {
        "mean_validation_by_head_lr": {f"{lr:g}": v for lr, v in per_lr.items()},
        "head_lr": best,
        "interior": min(head_lrs) < best < max(head_lrs),
        "complete": len(per_lr) == len(head_lrs),
        "best_minus_other_validation": paired,
        **({"tie": {"lrs": tied, "decided_by": rule}} if rule else {}),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, default="segmentation")
    parser.add_argument("--model", default=str(SHARED_BACKBONE))
    parser.add_argument(
        "--data",
        "--gid",
        nargs="+",
        help="GID folder (segmentation) or A/ B/ label/ pair folders (change detection; default LEVIR + DSIFN)",
    )
    parser.add_argument("--methods", default="upetu", help="comma-separated PEFT methods (upetu)")
    parser.add_argument(
        "--head-lrs",
        default="1e-2,1e-3,3e-4,3e-3,1e-4",
        help="candidates, run in this order (1e-2: the adapter's)",
    )
    parser.add_argument("--split-seeds", default="0", help="comma-separated split seeds (0)")
    parser.add_argument("--epochs", type=int, help="5 (segmentation), 8 (change detection)")
    parser.add_argument(
        "--cd-repeats",
        type=int,
        default=16,
        help="change detection: copies of each training pair per epoch (16)",
    )
    parser.add_argument("--max-train-samples", type=int, help="320 (segmentation), all (change detection)")
    parser.add_argument(
        "--max-eval-samples", type=int, help="139, half the GID validation tiles (segmentation)"
    )
    # forwarded to every run's TrainingArguments, as `upetu-train segmentation` offers them (the image size is
    # change detection's training crop, a multiple of 32; the batch is the accuracy benchmark's dense batch)
    names = ("seed", "resize", "head_hidden_size", "image_size", "batch_size")
    add_training_options(parser, "segmentation", names, seed=0, resize=112, image_size=128, batch_size=16)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output", help="default: results/head_lr_<task>.json")
    parser.add_argument("--work-dir", help="run folders (default: a temporary folder)")
    parser.add_argument(
        "--merge-only", action="store_true", help="train nothing: choose from the runs on file (and imported)"
    )
    parser.add_argument(
        "--import-runs",
        nargs="+",
        default=[],
        metavar="JSON",
        help="add the runs of these files (same settings; e.g. another seed searched in a parallel process with its "
        "own --output) to --output; their runs are not trained again",
    )
    args = parser.parse_args(argv)
    defaults = TASK_DEFAULTS[args.task]
    for name in ("data", "epochs", "max_train_samples", "max_eval_samples"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.head_hidden_size is not None and args.head_hidden_size < 1:
        parser.error(f"--head-hidden-size={args.head_hidden_size}: the decoder needs at least one channel")
    if args.task == "segmentation" and len(args.data) != 1:
        parser.error("--data: segmentation takes one GID folder")
    if args.image_size % 32:
        parser.error(f"--image-size={args.image_size}: change-detection crops must be a multiple of 32")
    args.split_seeds = [int(x) for x in args.split_seeds.split(",") if x.strip()]
    if args.task == "segmentation" and args.split_seeds != [0]:
        parser.error("--split-seeds: the segmentation search runs on split seed 0 only")
    args.output = args.output or str(REPO_ROOT / "results" / f"head_lr_{args.task.replace('-', '_')}.json")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    metric = TASK_DEFAULTS[args.task]["metric"]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    # in the order given (the most informative first, for a search that may be cut short); duplicates dropped
    head_lrs = list(dict.fromkeys(float(x) for x in args.head_lrs.split(",") if x.strip()))
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    state: dict[str, Any] = {"settings": settings(args), "runs": [], "sessions": []}
    if output.is_file():
        old = json.loads(output.read_text())
        if old.get("settings") != state["settings"]:
            raise SystemExit(f"{output} was recorded with other settings: use another --output")
        state = old
    state["sessions"].append(
        {
            "command": " ".join(
                ["python scripts/head_lr_search.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(f"cpu ({torch.get_num_threads()} threads)"),
            "git": git_state(("src/upetu_hf", "scripts/head_lr_search.py")),
        }
    )
    for other in args.import_runs:
        shard = json.loads(Path(other).read_text())
        if shard.get("settings") != state["settings"]:
            raise SystemExit(f"--import-runs {other} was recorded with other settings: it cannot be merged")
        known = {r["key"] for r in state["runs"]}
        state["runs"] += [r for r in shard["runs"] if r["key"] not in known]
        state["sessions"] += [x for x in shard.get("sessions", []) if x not in state["sessions"]]
    done = {r["key"] for r in state["runs"]}
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="upetu-head-lr-"))
    for split_seed in args.split_seeds:
        keys = [(m, lr, run_key(m, lr, args.seed, split_seed)) for m in methods for lr in head_lrs]
        todo = [k for k in keys if k[2] not in done and not args.merge_only]
        for method, head_lr, key in keys:
            if (method, head_lr, key) not in todo:
                log(f"{key}: {'done' if key in done else 'not on file'}, skipped")
        if not todo:
            continue
        if args.task == "change-detection":
            folder, _ = cd_split(args.data, split_seed, work, args.cd_repeats)
            data = str(folder)
        else:
            data = args.data[0]
        for method, head_lr, key in todo:
            log(f"{key}: training ({args.epochs} epochs)")
            start = time.perf_counter()
            result = train(
                training_arguments(args, method, head_lr, split_seed, data, work / key.replace("|", "_"))
            )
            record = {
                "key": key,
                "method": method,
                "lr": DEFAULT_LR[method],
                "head_lr": head_lr,
                "seed": args.seed,
                "split_seed": split_seed,
                "best_epoch": result["best_epoch"],
                "validation_score": clean(result["validation"][metric]),
                "test_score": clean(result["test"][metric]),
                "validation_per_class_iou": clean(result["validation"].get("per_class_iou")),
                "history": clean(result["history"]),
                "parameters": result["parameters"],
                "wall_time_s": time.perf_counter() - start,
            }
            state["runs"].append(record)
            state["selection"] = choose(state["runs"], head_lrs, metric)
            write_json_atomic(output, state)
            log(f"{key}: validation {metric} {record['validation_score']:.4f} (epoch {record['best_epoch']})")
    state["selection"] = choose(state["runs"], head_lrs, metric)
    # the rate upetu-train gives a decoder of this width (DENSE_HEAD_LR at the default width)
    state["current_default"] = dense_head_lr(args.task, args.head_hidden_size)
    write_json_atomic(output, state)
    log(f"selection: {state['selection']}")
    return state


if __name__ == "__main__":
    main()
