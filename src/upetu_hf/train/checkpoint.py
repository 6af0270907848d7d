"""Atomic files and resumable checkpoints.

A checkpoint is `output_dir/checkpoints/step_<N>/`: `accelerator.save_state` (model with the full fp32 latent
weights, optimizer, scaler, one RNG file per process, the LR scheduler), `trainer_state.json` (epoch, batch
position, step, best epoch, history), `run_config.json` and, once an epoch has been evaluated,
`best_model.safetensors` (the trainable tensors of the best epoch so far). It is written to
`checkpoints/.tmp-step_<N>` and renamed into place, so a folder named `step_<N>` is always complete; a killed
save leaves at most a `.tmp-*` folder, which is ignored and later removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import MODEL_IDENTITY, RESUME_FREE, TrainingArguments

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
RUN_CONFIG_FILE = "run_config.json"
BEST_WEIGHTS_FILE = "best_model.safetensors"
MODEL_WEIGHTS_FILE = "model.safetensors"  # written by accelerator.save_state
_STEP_DIR = re.compile(r"^step_(\d+)$")
#: What a run leaves in `output_dir` (removed by `--overwrite`).
RUN_ARTIFACTS = (
    CHECKPOINTS_DIR,
    "logs",
    RUN_CONFIG_FILE,
    "metrics.json",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "model.safetensors",
)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to `path` via a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, allow_nan=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def resolve_checkpoint(resume: str, output_dir: str | os.PathLike) -> Path:
    """`"latest"` -> the newest complete checkpoint in `output_dir`; a path -> that checkpoint, checked."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume-from-checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}."
            )
        return found[-1]
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {resume} does not exist.")
    missing = [f for f in (STATE_FILE, RUN_CONFIG_FILE, MODEL_WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        raise ValueError(
            f"{resume} is not a complete upetu-train checkpoint (missing {', '.join(missing)}); pass a "
            f"{CHECKPOINTS_DIR}/step_<N> folder of a run, or 'latest'."
        )
    return path


def check_output_dir(args: TrainingArguments, resuming: bool) -> None:
    """Refuse to mix two runs in one folder: a non-empty `output_dir` needs `--overwrite` or a resume."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} exists and is not a folder.")
    if not out.is_dir() or resuming or args.overwrite:
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        previous = ""
        if (out / RUN_CONFIG_FILE).is_file():
            previous = " It holds another upetu-train run."
        raise ValueError(
            f"--output-dir {out} is not empty ({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}).{previous} "
            "Pass --overwrite to replace its run, --resume-from-checkpoint latest to continue it, or choose "
            "another folder."
        )


def clear_run_artifacts(output_dir: str | os.PathLike) -> None:
    """Remove what an earlier run left in `output_dir` (for `--overwrite`); other files stay."""
    out = Path(output_dir)
    for name in RUN_ARTIFACTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def check_compatible(
    checkpoint: Path, args: TrainingArguments, class_names: list[str], model: torch.nn.Module
) -> list[str]:
    """Raise `ValueError` unless `checkpoint` was written by a run of the same model (same task, base model,
    method and method options, classes, and tensor shapes); return the names of the other settings that differ
    (resuming with them is allowed but no longer reproduces the original run)."""
    saved = json.loads((checkpoint / RUN_CONFIG_FILE).read_text())
    differences = args.differences(saved.get("arguments", {}))
    identity = {k: v for k, v in differences.items() if k in MODEL_IDENTITY}
    if saved.get("class_names") != list(class_names):
        identity["classes"] = (list(class_names), saved.get("class_names"))
    if identity:
        listing = "; ".join(
            f"{k}: checkpoint {theirs!r}, this run {mine!r}" for k, (mine, theirs) in identity.items()
        )
        raise ValueError(f"Checkpoint {checkpoint} was written for a different model ({listing}).")
    with safe_open(str(checkpoint / MODEL_WEIGHTS_FILE), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} tensors missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if mismatched:
            details.append(
                f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]}: checkpoint {shapes[mismatched[0]]}, "
                f"model {expected[mismatched[0]]})"
            )
        raise ValueError(f"Checkpoint {checkpoint} does not match this model: {'; '.join(details)}.")
    return [k for k in differences if k not in RESUME_FREE]


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    state: dict[str, Any],
    run_config: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
    total_limit: int,
) -> Path:
    """Save a resumable checkpoint atomically (collective: every process must call it)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, state)
        write_json_atomic(tmp / RUN_CONFIG_FILE, run_config)
        if best_weights is not None:
            save_file({k: v.contiguous() for k, v in best_weights.items()}, str(tmp / BEST_WEIGHTS_FILE))
        _fsync_tree(tmp)
        if final.exists():  # an older run reached this step before being resumed from an earlier checkpoint
            stale = root / f".stale-step_{step}"
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(final, stale)
            os.rename(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, final)
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state and the best weights."""
    accelerator.load_state(str(checkpoint))
    state = json.loads((checkpoint / STATE_FILE).read_text())
    best_path = checkpoint / BEST_WEIGHTS_FILE
    best = load_file(str(best_path)) if best_path.is_file() else None
    return state, best


def remove_stale_temporaries(output_dir: str | os.PathLike) -> None:
    """Remove `.tmp-*` / `.stale-*` folders that a killed save left behind."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".stale-")):
                shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
