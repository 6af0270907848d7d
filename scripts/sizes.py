#!/usr/bin/env python
"""What UPetu and its baselines store, measured without downloading anything:

- `adapters`: on ConvNeXt-B (random weights), each UPetu configuration's adapter as a % of the backbone (the paper's
  0.73 %; the default must stay within 0.65-0.80 %) and the bytes of its `adapter_model.safetensors` per bit width
  (1-bit default: at most 200 KB);
- `upernet_decoders`: the UperNet decoder `upetu-train segmentation` saves with the adapter (default, and
  `--head-hidden-size 64`), on ConvNeXt-B and -atto;
- `checkpoints`: the bytes of the checkpoint a real `upetu-train` run writes after its first step
  (`checkpoints/step_1`) per method, on ConvNeXt-B and the shared atto backbone: `upetu_hf.train.train` fits a
  21-class head on generated images for one AdamW step on CPU (PEFT methods and linear probes leave the frozen
  backbone out); the share is a checkpoint's bytes over full fine-tuning's of the same model.

    python scripts/sizes.py --configs '{}' '{"conv_kernel": 3}' --bits 1,4 --models atto --output /tmp/sizes.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import CONVNEXT, REPO_ROOT, SHARED_BACKBONE, class_folder, random_convnext, write_json_atomic
from peft import get_peft_model
from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

from upetu_hf import UPetuConfig
from upetu_hf.train import TrainingArguments, train
from upetu_hf.tuner.config import ADAPTER_WEIGHTS_NAME

#: UperNet decoders: the transformers default, and `--head-hidden-size 64` (hidden and auxiliary channels).
DECODERS = {"default": {}, "head-hidden-size 64": dict(hidden_size=64, auxiliary_channels=64)}
#: The configurations measured by default; `r` 64 is the capacity point of the accuracy benchmark, not the default.
DEFAULT_CONFIGS = ["{}", '{"conv_kernel": 3}', '{"norm_affine": true}']
DEFAULT_CONFIGS += ['{"conv_kernel": 3, "norm_affine": true}', '{"r": 64}']
NUM_LABELS = 21
#: One epoch of one step (2 training images, 32-px crops) on CPU, checkpointed after the step and kept.
RUN = dict(task="classification", train_fraction=0.5, max_train_samples=2, batch_size=2, image_size=32)
RUN.update(epochs=1, cpu=True, mixed_precision="no", checkpointing_steps=1, keep_checkpoints=True)


def adapter_size(options: dict[str, Any], bits: int) -> dict[str, Any]:
    """Adapter share of the backbone and adapter file size of one UPetu configuration on ConvNeXt-B."""
    with torch.random.fork_rng():
        model = random_convnext("convnext-b", 10)
    peft_model = get_peft_model(model, UPetuConfig(bits=bits, modules_to_save=[], **options))
    counts = peft_model.base_model.parameter_counts()
    with tempfile.TemporaryDirectory() as folder:
        peft_model.save_pretrained(folder)
        size = (Path(folder) / ADAPTER_WEIGHTS_NAME).stat().st_size
    adapter, backbone = counts["adapter"], counts["backbone"]
    out = dict(options=options, bits=bits, adapter_params=adapter, backbone_params=backbone)
    return out | dict(adapter_pct_of_backbone=100.0 * adapter / backbone, adapter_bytes=size)


def decoder_size(backbone: dict[str, Any], decoder: dict[str, int]) -> dict[str, Any]:
    """Parameters (and float32 bytes) of a UperNet's decode and auxiliary heads, built on the meta device."""
    stages = ConvNextConfig(**backbone, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=stages, num_labels=5, **decoder)
    with torch.device("meta"):
        model = UperNetForSemanticSegmentation(config)
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone."))
    return {"params": params, "float32_bytes": 4 * params}


def checkpoint_bytes(model: str | Path, data: Path, method: str) -> dict[str, int]:
    """Bytes per file (relative to the checkpoint folder) and in total of `checkpoints/step_1` of a `method` run
    of `model` on the class folder `data`."""
    with tempfile.TemporaryDirectory() as out:
        train(TrainingArguments(model=str(model), data=str(data), output_dir=out, method=method, **RUN))
        folder = Path(out) / "checkpoints" / "step_1"
        paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
        files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in paths}
    return {"total": sum(files.values()), **files}


def checkpoint_sizes(models: Sequence[str], methods: Sequence[str]) -> list[dict]:
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure the adapters, decoders and checkpoints; write `--output` and print a line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="UPetuConfig options as JSON")
    parser.add_argument("--bits", default="1,4", help="bit widths of the adapters (1,4)")
    models = ["convnext-base"] + (["atto"] if SHARED_BACKBONE.is_dir() else [])
    checkpoint_help = "models whose checkpoints are measured (none: skip the checkpoints)"
    parser.add_argument(
        "--models", nargs="*", default=models, choices=["convnext-base", "atto"], help=checkpoint_help
    )
    parser.add_argument(
        "--methods", nargs="+", default=["upetu", "lora", "linear", "full"], help="of the checkpoints"
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "sizes.json")
    args = parser.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    adapters = [adapter_size(json.loads(options), b) for options in args.configs for b in bits]
    decoders = [
        {"backbone": name, "decoder": decoder, **decoder_size(CONVNEXT[name], options)}
        for name in ("convnext-b", "convnext-atto")
        for decoder, options in DECODERS.items()
    ]
    checkpoints = checkpoint_sizes(args.models, args.methods)
    result = {"backbone": "ConvNeXt-B (random weights)", "adapters": adapters, "upernet_decoders": decoders}
    result |= {"num_labels": NUM_LABELS, "checkpoints": checkpoints}
    write_json_atomic(args.output, result)
    for r in adapters:
        size = f"{r['adapter_pct_of_backbone']:.3f} % of the backbone, {r['adapter_bytes'] / 1e3:.1f} KB"
        print(f"adapter {json.dumps(r['options'])} {r['bits']}-bit: {size}")
    for d in decoders:
        print(f"UperNet {d['decoder']} on {d['backbone']}: {d['params'] / 1e6:.2f} M parameters")
    for r in checkpoints:
        share = "" if r["share_of_full"] is None else f" ({100 * r['share_of_full']:.2f} % of full's)"
        print(f"checkpoint {r['model']} {r['method']}: {r['bytes'] / 1e6:.3f} MB{share}")
    return result


if __name__ == "__main__":
    main()
