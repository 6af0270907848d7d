"""Resumable checkpoints, stored as safetensors and JSON only: nothing in a checkpoint is ever unpickled.

A checkpoint is `output_dir/checkpoints/step_<N>/`:

- `model.safetensors`: the state of what trains (`saved_keys`: the trainable parameters with their fp32 latent
  weights, the buffers, peft's copies of trained modules); for PEFT methods and linear probes the frozen backbone
  is left out and referenced by `frozen.json` (its `--model` and the SHA-256 of its tensors, checked before a
  resume); full fine-tuning trains everything, so its checkpoints hold the whole model;
- `optimizer.safetensors` + `training_state.json`: the optimizer's tensors, and as JSON its parameter groups and
  scalar state, the LR scheduler, the gradient scaler and Accelerate's accumulation counter;
- `random_states_<rank>.json`: the Python, NumPy and torch (CPU, CUDA) generators of every process;
- `trainer_state.json` (epoch, batch position, step, best epoch, history, log position), `run_config.json` and, once
  an epoch has been evaluated, `best_model.safetensors` (the trainable tensors of the best epoch so far);
- `manifest.json`, written last: every file's size and SHA-256, checked when a run resumes (a damaged checkpoint is
  refused, naming the file and the previous checkpoint to resume from).

Accelerate's `save_state` / `load_state` are not used: they pickle registered objects and load them with
`weights_only=False`, which runs any code a replaced file carries. A checkpoint is written to
`checkpoints/.tmp-step_<N>` and renamed into place, so a folder named `step_<N>` is always complete; a killed
save leaves at most a `.tmp-*` folder, which is ignored and later removed; a save that fails (a full disk) removes
its `.tmp-*` folder itself.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .._files import manifest_problem, read_json, save_tensors, write_json_atomic, write_manifest
from .arguments import CHECKPOINTS_DIR, MODEL_IDENTITY, RESUME_FREE, RUN_CONFIG_FILE, TrainingArguments

STATE_FILE = "trainer_state.json"
FROZEN_FILE = "frozen.json"
BEST_WEIGHTS_FILE = "best_model.safetensors"
MODEL_WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_STATE_FILE = "training_state.json"
RANDOM_STATES_FILE = "random_states_{}.json"
REQUIRED_FILES = (STATE_FILE, RUN_CONFIG_FILE, MODEL_WEIGHTS_FILE, OPTIMIZER_FILE, TRAINING_STATE_FILE)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMPORARY_STEP_DIR = re.compile(r"^\.(tmp|stale)-step_\d+$")


#: peft's frozen copy of a module it trains (`modules_to_save`): saved, as it may be freshly initialised (a new head)
_FROZEN_COPY = ".original_module."


def saved_keys(model: torch.nn.Module) -> set[str]:
    """The state-dict keys a checkpoint holds: every parameter that trains, every buffer, and peft's frozen copies
    of trained modules. Full fine-tuning trains everything, so its checkpoints hold the whole model."""
    keys = {name for name, param in model.named_parameters() if param.requires_grad}
    keys |= {name for name, _ in model.named_buffers()}
    return keys | {key for key in model.state_dict() if _FROZEN_COPY in f".{key}"}


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (name, dtype, shape and bytes of each, by sorted name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class FrozenBackbone:
    """The frozen tensors a checkpoint leaves out (`frozen.json`): the `--model` they were loaded from (a path or a
    Hub id), the number of tensors and their `tensors_sha256`, checked before a run resumes."""

    source: str
    tensors: int
    sha256: str

    @classmethod
    def of(cls, model: torch.nn.Module, source: str) -> FrozenBackbone | None:
        """The reference of `model`'s frozen tensors, or None when everything trains (full fine-tuning)."""
        kept = saved_keys(model)
        frozen = {k: v for k, v in model.state_dict().items() if k not in kept}
        return cls(source, len(frozen), tensors_sha256(frozen)) if frozen else None

    def check(self, checkpoint: Path) -> None:
        """Raise `ValueError` unless `checkpoint` was trained on these frozen tensors (checkpoints of older
        versions, which hold the whole model, pass)."""
        path = checkpoint / FROZEN_FILE
        if not path.is_file():
            return
        saved = read_json(path, "checkpoint's frozen-backbone reference")
        if (saved.get("tensors"), saved.get("sha256")) != (self.tensors, self.sha256):
            raise ValueError(
                f"The frozen weights of --model {self.source} (SHA-256 {self.sha256[:12]}, {self.tensors} tensors) "
                f"are not those checkpoint {checkpoint} was trained on ({saved.get('source')}: SHA-256 "
                f"{str(saved.get('sha256'))[:12]}, {saved.get('tensors')} tensors, see {path}); resume with that model."
            )


@dataclass
class Trainables:
    """What a checkpoint restores besides the trainer state: the prepared model, optimizer and LR scheduler, and
    the reference of the frozen tensors that it leaves out (None: it holds the whole model)."""

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    frozen: FrozenBackbone | None = None


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
        path = found[-1]
    else:
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"Checkpoint folder {resume} does not exist.")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if not missing:
        try:
            problem = manifest_problem(path)
        except ValueError as err:  # an unreadable manifest
            problem = str(err)
        if problem is not None:
            raise ValueError(f"Checkpoint {path} is damaged ({problem}); {_fallback(path)}")
    if missing:
        pickled = sorted(p.name for p in path.glob("*") if p.suffix in (".pkl", ".bin", ".pt"))
        hint = (
            f" It holds pickled state ({', '.join(pickled[:3])}) of an older upetu-hf, which is never loaded "
            "because unpickling can run code; start the run afresh."
            if pickled
            else f" Pass a {CHECKPOINTS_DIR}/step_<N> folder of a run, or 'latest'."
        )
        raise ValueError(
            f"{path} is not a complete upetu-train checkpoint (missing {', '.join(missing)}).{hint}"
        )
    return path


def _fallback(checkpoint: Path) -> str:
    """What to resume from instead of a damaged `checkpoint`: the newest earlier one of its run, if any."""
    match = _STEP_DIR.match(checkpoint.name)
    step = int(match.group(1)) if match else None
    earlier = [c for c in list_checkpoints(checkpoint.parent.parent) if step is not None and _step(c) < step]
    if earlier:
        return f"resume from the previous one with --resume-from-checkpoint {earlier[-1]}."
    return "no earlier checkpoint is left: start the run again with --overwrite."


def _step(checkpoint: Path) -> int:
    return int(_STEP_DIR.match(checkpoint.name).group(1))


def check_compatible(
    checkpoint: Path,
    args: TrainingArguments,
    class_names: list[str],
    model: torch.nn.Module,
    frozen: FrozenBackbone | None = None,
) -> list[str]:
    """Raise `ValueError` unless `checkpoint` was written by a run of the same model (same task, base model,
    method and method options once defaults are resolved, classes, tensor shapes, and frozen weights: `frozen`,
    default `FrozenBackbone.of(model, args.model)`); return the names of the other settings that differ (resuming
    with them is allowed but no longer reproduces the original run)."""
    saved = read_json(checkpoint / RUN_CONFIG_FILE, "checkpoint's run config")
    saved_args = TrainingArguments.from_dict(saved.get("arguments", {}))
    mine, theirs = args.resolved_identity(), saved_args.resolved_identity()
    identity = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
    if saved.get("class_names") != list(class_names):
        identity["classes"] = (list(class_names), saved.get("class_names"))
    if identity:
        listing = "; ".join(
            f"{k}: checkpoint {theirs!r}, this run {mine!r}" for k, (mine, theirs) in identity.items()
        )
        raise ValueError(f"Checkpoint {checkpoint} was written for a different model ({listing}).")
    _check_shapes(checkpoint, model)
    frozen = frozen or FrozenBackbone.of(model, args.model)
    if frozen is not None:
        frozen.check(checkpoint)
    differences = args.differences(saved_args)
    return [k for k in differences if k not in RESUME_FREE and k not in MODEL_IDENTITY]


def _check_shapes(checkpoint: Path, model: torch.nn.Module) -> None:
    with safe_open(str(checkpoint / MODEL_WEIGHTS_FILE), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    state = model.state_dict()
    kept = saved_keys(model)
    expected = {key: tuple(t.shape) for key, t in state.items() if key in kept}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(state))  # frozen tensors: held by checkpoints of older versions
    expected.update({key: tuple(state[key].shape) for key in set(shapes) & set(state)})
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


# ---------------------------------------------------------------------------------------------- state files
def _split_tensors(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `value` where every tensor is moved to `tensors` and replaced by `{"tensor": key}`."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to("cpu").contiguous()
        return {"tensor": prefix}
    if isinstance(value, dict):
        return {str(k): _split_tensors(v, f"{prefix}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    return value


def _join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_split_tensors`."""
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            return tensors[value["tensor"]]
        return {k: _join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    return value


def _optimizer_state(optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    state = optimizer.state_dict()
    return {
        "state": _split_tensors(state["state"], "state", tensors),
        "param_groups": state["param_groups"],
    }, tensors


def _restore_optimizer(optimizer, saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    state = {int(k): v for k, v in _join_tensors(saved["state"], tensors).items()}
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _random_states() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        states["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return states


def _restore_random_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    if torch.cuda.is_available() and "cuda" in states:
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])


def save_training_state(accelerator, folder: Path, trainables: Trainables) -> None:
    """Write model (its `saved_keys` when `trainables.frozen` references the rest), optimizer, scheduler, scaler
    and RNG states into `folder` (collective)."""
    model_state = accelerator.get_state_dict(trainables.model)
    if accelerator.is_main_process:
        if trainables.frozen is not None:
            kept = saved_keys(accelerator.unwrap_model(trainables.model))
            model_state = {k: v for k, v in model_state.items() if k in kept}
            write_json_atomic(folder / FROZEN_FILE, asdict(trainables.frozen))
        save_tensors(model_state, folder / MODEL_WEIGHTS_FILE)
        optimizer_json, optimizer_tensors = _optimizer_state(trainables.optimizer)
        save_tensors(optimizer_tensors, folder / OPTIMIZER_FILE)
        scaler = getattr(accelerator, "scaler", None)
        write_json_atomic(
            folder / TRAINING_STATE_FILE,
            {
                "optimizer": optimizer_json,
                "scheduler": trainables.scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "accelerator_step": accelerator.step,
            },
        )
    write_json_atomic(folder / RANDOM_STATES_FILE.format(accelerator.process_index), _random_states())


def load_training_state(accelerator, folder: Path, trainables: Trainables) -> None:
    """Restore what `save_training_state` wrote (every process reads the files; nothing is unpickled)."""
    model = accelerator.unwrap_model(trainables.model)
    loaded = model.load_state_dict(load_file(str(folder / MODEL_WEIGHTS_FILE)), strict=False)
    missing = set(loaded.missing_keys) & saved_keys(model)  # the others are the verified frozen tensors
    if missing or loaded.unexpected_keys:
        raise ValueError(
            f"{folder / MODEL_WEIGHTS_FILE} does not fit the model (missing {sorted(missing)[:3]}, unexpected "
            f"{loaded.unexpected_keys[:3]}); {_fallback(folder)}"
        )
    saved = read_json(folder / TRAINING_STATE_FILE, "checkpoint's training state")
    _restore_optimizer(trainables.optimizer, saved["optimizer"], load_file(str(folder / OPTIMIZER_FILE)))
    trainables.scheduler.load_state_dict(saved["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    accelerator.step = int(saved.get("accelerator_step", 0))
    random_file = folder / RANDOM_STATES_FILE.format(accelerator.process_index)
    if random_file.is_file():
        _restore_random_states(read_json(random_file, "checkpoint's random states"))
    else:
        warnings.warn(
            f"{random_file} is missing (the checkpoint was written by fewer processes): this process keeps its "
            "random state, so the resumed run is no longer bit-identical.",
            stacklevel=2,
        )


# ---------------------------------------------------------------------------------------------- save / load
def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    state: dict[str, Any],
    run_config: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
    total_limit: int,
    trainables: Trainables,
) -> Path:
    """Save a resumable checkpoint atomically (collective: every process must call it)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    try:
        _write_checkpoint(accelerator, tmp, state, run_config, best_weights, trainables)
    except BaseException as err:
        # a full disk, say: leave no partial folder behind (the earlier checkpoints stay), name the checkpoint
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.filename:
            reason = f"{err.strerror or err} (saving checkpoint {final})"
            raise type(err)(err.errno, reason, err.filename) from err
        raise
    if accelerator.is_main_process:
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


def _write_checkpoint(
    accelerator,
    tmp: Path,
    state: dict[str, Any],
    run_config: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None,
    trainables: Trainables,
) -> None:
    """Fill the temporary folder `tmp` of a checkpoint, `manifest.json` (every file's size and SHA-256, checked on
    resume) last, and sync it to disk (collective)."""
    if accelerator.is_main_process:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    save_training_state(accelerator, tmp, trainables)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, state)
        write_json_atomic(tmp / RUN_CONFIG_FILE, run_config)
        if best_weights is not None:
            save_tensors(best_weights, tmp / BEST_WEIGHTS_FILE)
        write_manifest(tmp, [p.name for p in tmp.iterdir() if p.is_file()])
        _fsync_tree(tmp)


def load_checkpoint(
    accelerator, checkpoint: Path, trainables: Trainables
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state and the best weights."""
    load_training_state(accelerator, checkpoint, trainables)
    state = read_json(checkpoint / STATE_FILE, "checkpoint's trainer state")
    best_path = checkpoint / BEST_WEIGHTS_FILE
    best = load_file(str(best_path)) if best_path.is_file() else None
    return state, best


def remove_checkpoints(output_dir: str | os.PathLike, keep_complete: bool = False) -> None:
    """Remove the checkpoint folders a run wrote (`step_<N>`, and the `.tmp-*` / `.stale-*` folders a killed save
    left), or with `keep_complete` only the latter; other files in `checkpoints/` stay, and so does the folder
    unless it is then empty."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return
    for path in root.iterdir():
        ours = _TEMPORARY_STEP_DIR.match(path.name) or (not keep_complete and _STEP_DIR.match(path.name))
        if ours and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
    if not keep_complete and not any(root.iterdir()):
        root.rmdir()


def remove_stale_temporaries(output_dir: str | os.PathLike) -> None:
    """Remove the `.tmp-*` / `.stale-*` checkpoint folders and the `.tmp-save-*` folders of `save_adapter` /
    `save_model` that a killed save left behind (call it while holding the output folder's lock)."""
    remove_checkpoints(output_dir, keep_complete=True)
    for path in Path(output_dir).glob(".tmp-save-*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


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
