#!/usr/bin/env python
"""Bytes of a resumable `upetu-train` checkpoint per method, on ConvNeXt-B (random weights, nothing downloaded)
and the shared atto backbone: each model gets a 21-class head, is made trainable by `apply_method`, takes one
AdamW step and is saved by the training code's `save_checkpoint` (PEFT methods leave the frozen backbone out).
The share is a checkpoint's bytes over full fine-tuning's of the same model.

    python scripts/checkpoint_sizes.py --models atto --methods upetu full --output /tmp/sizes.json
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import REPO_ROOT, SHARED_BACKBONE, random_convnext, write_json_atomic
from transformers import ConvNextForImageClassification

from upetu_hf.train.accelerator import make_accelerator
from upetu_hf.train.arguments import TrainingArguments
from upetu_hf.train.checkpoint import FrozenBackbone, Trainables, save_checkpoint
from upetu_hf.train.methods import apply_method, parameter_groups

NUM_LABELS = 21


def build_model(name: str) -> tuple[torch.nn.Module, str]:
    """A ConvNeXt classifier with a `NUM_LABELS`-class head and the source `--model` would name."""
    if name == "convnext-base":
        return random_convnext("convnext-b", NUM_LABELS), name
    torch.manual_seed(0)
    head = dict(num_labels=NUM_LABELS, ignore_mismatched_sizes=True)
    return ConvNextForImageClassification.from_pretrained(SHARED_BACKBONE, **head), str(SHARED_BACKBONE)


def checkpoint_bytes(model: torch.nn.Module, source: str, method: str, folder: Path) -> dict[str, int]:
    """`model` made trainable by `method`, one AdamW step, saved to `folder`: bytes per file and in total."""
    fields = dict(task="classification", model=source, data="-", output_dir=str(folder))
    args = TrainingArguments(**fields, method=method)
    model = apply_method(model, args)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay, {}), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(pixel_values=torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    accelerator = make_accelerator(True, "no")
    trainables = Trainables(model, optimizer, scheduler, FrozenBackbone.of(model, source))
    state = ({"global_step": 1}, {"arguments": {}}, None, 1)
    saved = save_checkpoint(accelerator, folder, 1, *state, trainables)
    files = {p.name: p.stat().st_size for p in sorted(saved.iterdir())}
    return {"total": sum(files.values()), **files}


def measure(models: Sequence[str], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per model and method: the checkpoint's bytes, per file, and its share of full fine-tuning's."""
    rows = []
    for name in models:
        for method in methods:
            model, source = build_model(name)
            with tempfile.TemporaryDirectory() as tmp:
                sizes = checkpoint_bytes(model, source, method, Path(tmp))
            rows.append({"model": name, "method": method, "bytes": sizes["total"], "files": sizes})
            print(f"{name:14s} {method:6s} {sizes['total'] / 1e6:9.3f} MB", flush=True)
    for row in rows:
        full = next((r["bytes"] for r in rows if r["model"] == row["model"] and r["method"] == "full"), None)
        row["share_of_full"] = row["bytes"] / full if full else None
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, write `--output` and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    models = ["convnext-base"] + (["atto"] if SHARED_BACKBONE.is_dir() else [])
    parser.add_argument("--models", nargs="+", default=models, choices=["convnext-base", "atto"])
    parser.add_argument("--methods", nargs="+", default=["upetu", "lora", "linear", "full"])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "checkpoint_sizes.json")
    args = parser.parse_args(argv)
    rows = measure(args.models, args.methods)
    write_json_atomic(args.output, {"num_labels": NUM_LABELS, "checkpoints": rows})
    print(f"{'model':14s} {'method':6s} {'MB':>9s} {'share of full':>14s}")
    for row in rows:
        share = "-" if row["share_of_full"] is None else f"{100 * row['share_of_full']:.2f} %"
        print(f"{row['model']:14s} {row['method']:6s} {row['bytes'] / 1e6:9.3f} {share:>14s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
