"""The one registry of benchmark variants: a tuning method of `upetu_hf.train.apply_method` with fixed options, its
label in tables and its colour in plots. A variant's name is its key in the results files, so names never change.
A new baseline: implement it in `upetu_hf.train.methods`, add its variants here and list them in the benchmark that
compares them. `MATCHED`, `SMALL` and `SMALL_MATCHED` for `r` are placeholders the accuracy benchmark resolves per
backbone (`benchmark_accuracy.RANKS`): LoRA's rank matched to UPetu's default adapter, the largest UPetu `r` under
1 % of the backbone, and LoRA's rank matched to that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from upetu_hf.data.multispectral import S2_RGB_BANDS

MATCHED, SMALL, SMALL_MATCHED = "matched", "small", "small-matched"
#: Plot colour of a variant without its own.
DEFAULT_COLOUR = "#333333"


@dataclass(frozen=True)
class Variant:
    """One row of a benchmark: `apply_method(model, method, **options)`, shown as `label` in `colour`."""

    name: str
    method: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    colour: str = DEFAULT_COLOUR


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # the accuracy benchmark (`scripts/benchmark_accuracy.py`)
        Variant("linear", "linear", "Linear probe", colour="#7f7f7f"),
        Variant("full", "full", "Full fine-tuning", colour="#000000"),
        Variant("lora", "lora", "LoRA (rank matched to UPetu)", {"r": MATCHED}, "#1f77b4"),
        Variant("ia3", "ia3", "IA3", colour="#9467bd"),
        Variant("upetu", "upetu", "UPetu (default, 4-bit)", colour="#d62728"),
        Variant("upetu-1bit", "upetu", "UPetu 1-bit", {"bits": 1}, "#ff7f0e"),
        Variant("upetu-2bit", "upetu", "UPetu 2-bit", {"bits": 2}),
        Variant("upetu-32bit", "upetu", "UPetu 32-bit", {"bits": 32}, "#8c564b"),
        Variant("eqam-only", "upetu", "EQAM only (4-bit)", {"use_capm": False}, "#2ca02c"),
        Variant("upetu-conv3", "upetu", "UPetu + 3x3 depthwise conv in EQAM (4-bit)", {"conv_kernel": 3}),
        Variant("upetu-norm", "upetu", "UPetu + LayerNorm affine correction (4-bit)", {"norm_affine": True}),
        Variant("capm-only", "upetu", "CAPM only", {"use_eqam": False}, "#17becf"),
        Variant("upetu-small", "upetu", "UPetu < 1 % (4-bit)", {"r": SMALL}, "#e377c2"),
        Variant("lora-small", "lora", "LoRA (rank matched to UPetu < 1 %)", {"r": SMALL_MATCHED}, "#aec7e8"),
        # the efficiency benchmark (`scripts/benchmark_efficiency.py`)
        Variant("linear_probe", "linear", "Linear probe"),
        Variant("lora_r8", "lora", "LoRA r=8", {"r": 8}),
        Variant("lora_r16", "lora", "LoRA r=16", {"r": 16}),
        Variant("upetu_1bit", "upetu", "UPetu 1-bit", {"bits": 1}),
        Variant("upetu_4bit", "upetu", "UPetu 4-bit", {"bits": 4}),
        Variant("upetu_32bit", "upetu", "UPetu 32-bit", {"bits": 32}),
        # OSCD-13 change detection (`scripts/benchmark_accuracy.py --tasks oscd13`): every band, or Sentinel-2's RGB ones
        Variant("upetu-13band", "upetu", "UPetu, 13 bands", {"bands": None}),
        Variant("upetu-rgb", "upetu", "UPetu, RGB bands", {"bands": list(S2_RGB_BANDS)}),
    )
}
