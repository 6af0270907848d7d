#!/usr/bin/env python
"""Bytes of the checkpoint a real `upetu-train` run writes after its first step (`checkpoints/step_1`), per method,
on ConvNeXt-B (random weights, nothing downloaded) and the shared atto backbone: `upetu_hf.train.train` fits a
21-class head on generated images for one AdamW step on CPU, checkpointing every step and keeping the checkpoints
(PEFT methods and linear probes leave the frozen backbone out). The share is a checkpoint's bytes over full
fine-tuning's of the same model.

    python scripts/checkpoint_sizes.py --models atto --methods upetu full --output /tmp/sizes.json
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _common import REPO_ROOT, SHARED_BACKBONE, class_folder, random_convnext, write_json_atomic

from upetu_hf.train import TrainingArguments, train

NUM_LABELS = 21
#: One epoch of one step (2 training images, 32-px crops) on CPU, checkpointed after the step and kept.
RUN = dict(task="classification", train_fraction=0.5, max_train_samples=2, batch_size=2, image_size=32)
RUN.update(epochs=1, cpu=True, mixed_precision="no", checkpointing_steps=1, keep_checkpoints=True)


def checkpoint_bytes(model: str | Path, data: Path, method: str) -> dict[str, int]:
    """Bytes per file (relative to the checkpoint folder) and in total of `checkpoints/step_1` of a `method` run
    of `model` on the class folder `data`."""
    with tempfile.TemporaryDirectory() as out:
        train(TrainingArguments(model=str(model), data=str(data), output_dir=out, method=method, **RUN))
        folder = Path(out) / "checkpoints" / "step_1"
        paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in paths}
    return {"total": sum(files.values()), **files}


def measure(models: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """One row per model and method: the checkpoint's bytes, per file, and its share of full fine-tuning's."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = class_folder(Path(tmp) / "data", NUM_LABELS, 2)
        for name in models:
            model = SHARED_BACKBONE if name == "atto" else Path(tmp) / name
            if name == "convnext-base":
                random_convnext("convnext-b", NUM_LABELS).save_pretrained(model)
            for method in methods:
                sizes = checkpoint_bytes(model, data, method)
                rows.append({"model": name, "method": method, "bytes": sizes["total"], "files": sizes})
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
    for row in rows:
        share = "-" if row["share_of_full"] is None else f"{100 * row['share_of_full']:.2f} %"
        print(f"{row['model']:14s} {row['method']:6s} {row['bytes'] / 1e6:9.3f} MB {share:>9s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
