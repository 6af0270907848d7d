"""Mutation check: plant one known bug at a time in a copy of `src/` and run the tests that should catch it.

A mutant is caught when its tests fail. Add a mutant whenever a planted bug once passed every test, and keep the
list growing: `python tests/mutation_check.py` (about 5 minutes on 2 cores), `--only N` for one mutant. Writes one
JSON line per mutant to stdout; exits 1 if any mutant survives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: (what the bug does, file under src/upetu_hf, text, replacement, the tests that must catch it)
MUTANTS = [
    ("CAPM gate tanh instead of sigmoid", "tuner/layer.py", "gate = torch.sigmoid(", "gate = torch.tanh(",
     ["tests/test_formulas.py"]),
    ("gradients never zeroed between steps", "train/loop.py", "                    optimizer.zero_grad()\n", "",
     ["tests/test_faults.py::test_every_training_step_starts_from_zero_gradients"]),
    ("RGB kernels put on the bands in reverse order", "models/stem.py", "inflated[:, indices] = weight",
     "inflated[:, list(reversed(indices))] = weight", ["tests/test_stem.py"]),
    ("segmentation IoU without subtracting the intersection", "metrics/functional.py",
     "iou = _divide(tp, support + predicted - tp, NAN)", "iou = _divide(tp, support + predicted, NAN)",
     ["tests/test_metrics.py"]),
    ("change IoU forgets false negatives", "metrics/functional.py", "_divide(tp, tp + fp + fn, zero_division)",
     "_divide(tp, tp + fp, zero_division)", ["tests/test_metrics.py"]),
    ("int8 scale rounded down", "tuner/quantization.py", "torch.exp2(torch.ceil(torch.log2(absmax",
     "torch.exp2(torch.floor(torch.log2(absmax", ["tests/test_quantization.py"]),
]  # fmt: skip


def run(index: int) -> dict:
    name, rel, old, new, tests = MUTANTS[index]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(REPO / "src", src)
        path = src / "upetu_hf" / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(
                f"mutant {index} ({name}): {rel} holds its text {text.count(old)} times, not once"
            )
        path.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    return {
        "mutant": f"{rel}: {name}",
        "caught": done.returncode == 1,
        "by": failed[0][7:] if failed else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=int, help="run mutant N only (0-based)")
    args = parser.parse_args()
    rows = [run(i) for i in ([args.only] if args.only is not None else range(len(MUTANTS)))]
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0 if all(row["caught"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
