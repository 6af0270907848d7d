#!/usr/bin/env python
"""Parameter budget and adapter size of UPetu configurations on ConvNeXt-B (built from its config with random
weights: nothing is downloaded): adapter parameters as a % of the backbone (the paper's 0.73 %; the default must
stay within 0.65-0.80 %), the bytes of `adapter_model.safetensors` per bit width (1-bit default: at most 200 KB),
and the UperNet decoder `upetu-train segmentation` saves with the adapter (default, `--head-hidden-size 64`).

    python scripts/budget.py --configs '{}' '{"conv_kernel": 3}' --bits 1,4 --output /tmp/budget.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import CONVNEXT, REPO_ROOT, random_convnext, write_json_atomic
from peft import get_peft_model
from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

from upetu_hf import UPetuConfig
from upetu_hf.tuner.config import ADAPTER_WEIGHTS_NAME

#: UperNet decoders: the transformers default, and `--head-hidden-size 64` (hidden and auxiliary channels).
DECODERS = {"default": {}, "head-hidden-size 64": dict(hidden_size=64, auxiliary_channels=64)}
#: The configurations measured by default; `r` 64 is the capacity point of the accuracy benchmark (README,
#: Results), an option, not the default.
DEFAULT_CONFIGS = ["{}", '{"conv_kernel": 3}', '{"norm_affine": true}']
DEFAULT_CONFIGS += ['{"conv_kernel": 3, "norm_affine": true}', '{"r": 64}']


def measure(options: dict[str, Any], bits: int) -> dict[str, Any]:
    """Adapter share of the backbone and adapter file size of one configuration on ConvNeXt-B."""
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every configuration at every bit width and the decoders; write and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="UPetuConfig options as JSON")
    parser.add_argument("--bits", default="1,4", help="bit widths (1,4)")
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "budget.json"))
    args = parser.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    rows = [measure(json.loads(options), b) for options in args.configs for b in bits]
    decoders = [
        {"backbone": name, "decoder": decoder, **decoder_size(CONVNEXT[name], options)}
        for name in ("convnext-b", "convnext-atto")
        for decoder, options in DECODERS.items()
    ]
    result = {"backbone": "ConvNeXt-B (random weights)", "rows": rows, "upernet_decoders": decoders}
    write_json_atomic(Path(args.output), result)
    print("| options | bits | adapter % of backbone | adapter file |\n|---|---:|---:|---:|")
    for r in rows:
        pct, size = r["adapter_pct_of_backbone"], r["adapter_bytes"] / 1e3
        print(f"| {json.dumps(r['options'])} | {r['bits']} | {pct:.3f} % | {size:.1f} KB |")
    print("\n| backbone | UperNet decoder | parameters | float32 |\n|---|---|---:|---:|")
    for d in decoders:
        params, size = d["params"] / 1e6, d["float32_bytes"] / 1e6
        print(f"| {d['backbone']} | {d['decoder']} | {params:.2f} M | {size:.0f} MB |")
    return result


if __name__ == "__main__":
    main()
