#!/usr/bin/env python
"""Choose the default learning rate of the task heads of PEFT methods on segmentation (`DENSE_HEAD_LR`) on GID
validation, with the decoder `upetu-train segmentation` builds by default (the checkpoint's UperNet, 512 channels:
~29 M parameters on ConvNeXt-B, far more than the adapter).

Every run is `upetu_hf.train.train` with the CLI defaults (method, adapter learning rate, decoder, weight decay,
schedule) apart from `head_lr`, the split (`--train-fraction 0.8 --validation-fraction 0.25`: 60 / 20 / 20, the
accuracy benchmark's) and, to fit a CPU, `--resize`, `--epochs`, `--batch-size` and `--max-train-samples`. One run per head
learning rate and method; the validation mIoU at the best epoch decides (the test split is evaluated by the
training API and recorded, never used). Results: `--output` (default results/head_lr_segmentation.json), written
after every run (atomic), so an interrupted search continues where it stopped.

Usage:
    python scripts/head_lr_search.py --threads 1
    python scripts/head_lr_search.py --methods upetu,lora --head-lrs 1e-2,1e-3,3e-4,3e-3,1e-4 --epochs 5
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

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT / "src", REPO_ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from _common import clean, git_state, machine_info, write_json_atomic  # noqa: E402

from upetu_hf.train import DEFAULT_LR, TrainingArguments, train  # noqa: E402
from upetu_hf.train.methods import DENSE_HEAD_LR  # noqa: E402

SHARED = REPO_ROOT.parent / "shared"


def log(message: str) -> None:
    print(f"[head_lr_search {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_key(method: str, head_lr: float, seed: int) -> str:
    return f"{method}|head_lr={head_lr:.6g}|seed={seed}"


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every run shares (a file recorded with other settings is never continued)."""
    return {
        "task": "segmentation",
        "data": Path(args.gid).name,
        "model": Path(args.model).name,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "resize": args.resize,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "train_fraction": 0.8,
        "validation_fraction": 0.25,
        "split_seed": 0,
        "head_hidden_size": None,  # the checkpoint's default decoder
    }


def choose(runs: list[dict[str, Any]], head_lrs: list[float]) -> dict[str, Any]:
    """Per head learning rate, the mean validation mIoU over methods; the best one (ties: the smaller rate), and
    whether it is interior to the grid."""
    per_lr = {}
    for lr in head_lrs:
        scores = [r["validation_score"] for r in runs if r["head_lr"] == lr]
        if scores:
            per_lr[lr] = sum(scores) / len(scores)
    if not per_lr:
        return {}
    best = max(per_lr, key=lambda lr: (per_lr[lr], -lr))
    return {
        "mean_validation_by_head_lr": {f"{lr:g}": v for lr, v in per_lr.items()},
        "head_lr": best,
        "interior": min(head_lrs) < best < max(head_lrs),
        "complete": len(per_lr) == len(head_lrs),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "rs-convnext-atto-aid"))
    parser.add_argument("--gid", default=str(SHARED / "data" / "gid5_landcover"))
    parser.add_argument("--methods", default="upetu", help="comma-separated PEFT methods (upetu)")
    parser.add_argument(
        "--head-lrs",
        default="1e-2,1e-3,3e-4,3e-3,1e-4",
        help="candidates, run in this order (1e-2: the adapter's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--resize", type=int, default=112, help="tiles resized to this (112)")
    parser.add_argument("--max-train-samples", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16, help="16, the accuracy benchmark's dense batch")
    parser.add_argument("--max-eval-samples", type=int, default=139, help="half of the 278 validation tiles")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "head_lr_segmentation.json"))
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
    for method in methods:
        for head_lr in head_lrs:
            key = run_key(method, head_lr, args.seed)
            if key in done or args.merge_only:
                log(f"{key}: {'done' if key in done else 'not on file'}, skipped")
                continue
            log(f"{key}: training ({args.epochs} epochs)")
            start = time.perf_counter()
            result = train(
                TrainingArguments(
                    task="segmentation",
                    model=args.model,
                    data=args.gid,
                    output_dir=str(work / key.replace("|", "_")),
                    method=method,
                    head_lr=head_lr,
                    seed=args.seed,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    resize=args.resize,
                    train_fraction=0.8,
                    validation_fraction=0.25,
                    max_train_samples=args.max_train_samples,
                    max_eval_samples=args.max_eval_samples,
                    checkpointing_steps=None,
                    overwrite=True,
                )
            )
            record = {
                "key": key,
                "method": method,
                "lr": DEFAULT_LR[method],
                "head_lr": head_lr,
                "seed": args.seed,
                "best_epoch": result["best_epoch"],
                "validation_score": clean(result["validation"]["mean_iou"]),
                "test_score": clean(result["test"]["mean_iou"]),
                "validation_per_class_iou": clean(result["validation"].get("per_class_iou")),
                "history": clean(result["history"]),
                "parameters": result["parameters"],
                "wall_time_s": time.perf_counter() - start,
            }
            state["runs"].append(record)
            state["selection"] = choose(state["runs"], head_lrs)
            write_json_atomic(output, state)
            log(f"{key}: validation mIoU {record['validation_score']:.4f} (epoch {record['best_epoch']})")
    state["selection"] = choose(state["runs"], head_lrs)
    state["current_default"] = DENSE_HEAD_LR["segmentation"]
    write_json_atomic(output, state)
    log(f"selection: {state['selection']}")
    return state


if __name__ == "__main__":
    main()
