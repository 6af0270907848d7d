"""The Accelerate training loop: `train(args) -> metrics`, the Python API behind `upetu-train`."""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import ProjectConfiguration, set_seed
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .. import __version__
from .._files import read_json, write_json_atomic
from ..hub import save_adapter, save_model, upload_folder
from .checkpoint import (
    CHECKPOINTS_DIR,
    RUN_CONFIG_FILE,
    STATE_FILE,
    Trainables,
    check_compatible,
    load_checkpoint,
    remove_checkpoints,
    remove_stale_temporaries,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import PEFT_METHODS, TrainingArguments, flat_config
from .data import TransformedDataset, make_loader, set_epoch
from .evaluate import RunRecord, evaluate_loader, make_accelerator
from .methods import apply_method, parameter_groups, parameter_summary
from .output_dir import LOGS_DIR, METRICS_FILE, OutputLock, check_output_dir, clear_previous_run
from .tasks import TaskData, TaskSpec, get_task
from .tracking import LOG_FILE, JsonLinesTracker, trackers, truncate_log

#: Task metrics that can pick the best epoch (higher is better).
TASK_METRICS = {
    "classification": (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "kappa",
    ),
    "segmentation": ("mean_iou", "overall_accuracy", "mean_accuracy", "mean_f1", "frequency_weighted_iou"),
    "change-detection": ("f1", "iou", "precision", "recall", "overall_accuracy", "kappa"),
}


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{k}": v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _score(metrics: dict[str, Any], name: str) -> float:
    value = metrics.get(name, float("nan"))
    return -math.inf if value is None or math.isnan(value) else float(value)


def _prepare_model(spec: TaskSpec, args: TrainingArguments, data: TaskData):
    model = spec.load_model(args, data.class_names)
    model.name_or_path = args.model  # PEFT records it as base_model_name_or_path
    model.config.name_or_path = args.model
    return apply_method(model, args)


def _usage(args: TrainingArguments) -> str:
    return f"""Reload and evaluate it with [upetu-hf](https://github.com/upetu-hf/upetu-hf):

```bash
upetu-eval --adapter <this repo id or folder> --model {args.model}
```

```python
from upetu_hf.train import load_trained_model

model, run = load_trained_model("<this repo id or folder>")
```"""


def train(args: TrainingArguments) -> dict[str, Any]:
    """Train a model as `args` says and return the content of `metrics.json`.

    Works on one CPU, one GPU or several processes (`torchrun` / `accelerate launch`). Every input is checked
    before anything is written; `output_dir` then receives `run_config.json`, `logs/`, resumable checkpoints
    under `checkpoints/` and, at the end, the trained adapter (or model) with its card and `metrics.json`. The
    run holds a lock on `output_dir` (`.upetu-train.lock`) from start to end, so a second run is refused.
    """
    spec = get_task(args.task)
    if args.selection_metric not in TASK_METRICS[spec.name]:
        raise ValueError(
            f"--metric-for-best {args.selection_metric!r} is invalid for {spec.name}: allowed values are "
            f"{', '.join(TASK_METRICS[spec.name])}."
        )
    output_dir = Path(args.output_dir)
    tracker_list = trackers(output_dir / LOGS_DIR)
    accelerator = make_accelerator(
        args.cpu,
        args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=tracker_list,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / LOGS_DIR)
        ),
    )
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed-precision fp16 needs a GPU; use bf16 on CPU.")
    lock = _lock_output_dir(accelerator, output_dir)
    try:
        return _train(args, spec, accelerator, output_dir, tracker_list[0])
    finally:
        if lock is not None:
            lock.release()


def _agree(accelerator, error: Exception | None) -> None:
    """Raise `error` on the process that hit it and a short error on the others, so that no process waits for
    one that gave up (collective)."""
    failed = torch.tensor(float(error is not None), device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    if error is not None:
        raise error
    if float(failed) > 0:
        raise ValueError("Another process of this run stopped with an error (see its message above).")


def _lock_output_dir(accelerator, output_dir: Path) -> OutputLock | None:
    """The main process locks `output_dir` for this run (collective)."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = OutputLock.acquire(output_dir)
        except (ValueError, OSError) as err:
            error = err
    _agree(accelerator, error)
    return lock


def _resume_log(log: Path, checkpoint: Path) -> None:
    """Cut the log back to what it held when `checkpoint` was saved (a killed or finished run logged past it)."""
    state = read_json(checkpoint / STATE_FILE, "checkpoint's trainer state")
    truncate_log(log, state["global_step"], state.get("log_lines"))


def _train(
    args: TrainingArguments, spec: TaskSpec, accelerator, output_dir: Path, log: JsonLinesTracker
) -> dict[str, Any]:
    set_seed(args.seed)

    # ---- check everything before writing anything
    checkpoint = (
        resolve_checkpoint(args.resume_from_checkpoint, output_dir) if args.resume_from_checkpoint else None
    )
    check_output_dir(args, resuming=checkpoint is not None)
    data = spec.load_data(args)
    model = _prepare_model(spec, args, data)
    if checkpoint is not None:
        changed = check_compatible(checkpoint, args, data.class_names, model)
        if changed:
            warnings.warn(
                f"Resuming with changed settings {changed}: the run will differ from the original one.",
                stacklevel=2,
            )
    record = RunRecord(
        args,
        data.class_names,
        {"splits": {k: len(v) for k, v in data.splits.items()}, "upetu_hf_version": __version__},
    )

    # ---- outputs: only once every process has checked the inputs against the untouched output_dir
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.overwrite:
            clear_previous_run(output_dir)
        remove_stale_temporaries(output_dir)
        if checkpoint is not None:
            _resume_log(output_dir / LOGS_DIR / LOG_FILE, checkpoint)
        write_json_atomic(output_dir / RUN_CONFIG_FILE, record.to_dict())
    accelerator.wait_for_everyone()
    accelerator.init_trackers("upetu-train", config=flat_config(args))

    # ---- data, optimizer, schedule
    num_labels = len(data.class_names)
    train_set = TransformedDataset(
        data.splits["train"], spec.transform(args, num_labels, train=True), seed=args.seed
    )
    drop_last = len(train_set) >= args.batch_size * accelerator.num_processes
    train_loader = make_loader(
        train_set, args.batch_size, spec.collate_fn, args.seed, True, args.num_workers, drop_last=drop_last
    )
    eval_loaders = {
        name: make_loader(
            TransformedDataset(ds, spec.transform(args, num_labels, train=False)),
            args.per_device_eval_batch_size,
            spec.collate_fn,
            args.seed,
            False,
            args.num_workers,
        )
        for name, ds in data.splits.items()
        if name != "train"
    }
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr)
    schedule_optimizer = optimizer  # the scheduler drives the plain optimizer that Accelerate wraps
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loaders = {name: accelerator.prepare_data_loader(loader) for name, loader in eval_loaders.items()}
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_steps = steps_per_epoch * args.epochs
    scheduler = get_cosine_schedule_with_warmup(
        schedule_optimizer, round(args.warmup_ratio * total_steps), total_steps
    )
    trainables = Trainables(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    tracked = {n for n, p in unwrapped.named_parameters() if p.requires_grad} | {
        n for n, _ in unwrapped.named_buffers()
    }

    state: dict[str, Any] = {
        "epoch": 0,
        "batch_in_epoch": 0,
        "global_step": 0,
        "best_epoch": None,
        "best_score": None,
        "best_metrics": None,
        "history": [],
        "epoch_loss_sum": 0.0,
        "epoch_loss_count": 0,
        "train_runtime_s": 0.0,
        "train_samples": 0,
    }
    best_weights = None
    if checkpoint is not None:
        state, best_weights = load_checkpoint(accelerator, checkpoint, trainables)
        accelerator.print(f"Resumed from {checkpoint} (epoch {state['epoch']}, step {state['global_step']}).")

    main = accelerator.is_main_process
    device = accelerator.device
    loss_sum = torch.tensor(state["epoch_loss_sum"] if main else 0.0, dtype=torch.float64, device=device)
    loss_count = torch.tensor(state["epoch_loss_count"] if main else 0, dtype=torch.float64, device=device)
    selection = data.selection_split
    if selection == "test" and main:
        warnings.warn(
            "No validation split: the best epoch is selected on the test split. Pass "
            "--validation-fraction for an unbiased test score.",
            stacklevel=2,
        )

    def checkpoint_now() -> None:
        nonlocal loss_sum, loss_count
        # fold the running epoch loss into the main process so the stored state is complete
        loss_sum, loss_count = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(loss_count, "sum")
        if not main:
            loss_sum, loss_count = torch.zeros_like(loss_sum), torch.zeros_like(loss_count)
        state["epoch_loss_sum"], state["epoch_loss_count"] = float(loss_sum), int(loss_count)
        state["train_runtime_s"] = runtime()
        state["log_lines"] = log.lines
        save_checkpoint(
            accelerator,
            output_dir,
            state["global_step"],
            state,
            record.to_dict(),
            best_weights,
            args.save_total_limit,
            trainables,
        )

    segment_start = time.perf_counter()
    runtime_before = state["train_runtime_s"]

    def runtime() -> float:
        return runtime_before + time.perf_counter() - segment_start

    progress = tqdm(
        total=total_steps,
        initial=state["global_step"],
        disable=not accelerator.is_local_main_process,
        desc=f"{spec.name} ({args.method})",
        unit="step",
        dynamic_ncols=True,
    )
    window_loss, window_batches, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
    samples_per_batch = args.batch_size * accelerator.num_processes
    for epoch in range(state["epoch"], args.epochs):
        model.train()
        set_epoch(train_loader, epoch)
        loader = train_loader
        if state["batch_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, state["batch_in_epoch"])
            set_epoch(loader, epoch)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**spec.model_inputs(batch), labels=batch["labels"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state["batch_in_epoch"] += 1
            state["train_samples"] += samples_per_batch
            loss_value = loss.detach().to(torch.float64)
            loss_sum += loss_value
            loss_count += 1
            window_loss += float(loss_value)
            window_batches += 1
            window_samples += samples_per_batch
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state["global_step"] += 1
            step = state["global_step"]
            progress.update(1)
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            progress.set_postfix(
                loss=f"{window_loss / window_batches:.4f}",
                img_s=f"{window_samples / elapsed:.1f}",
                epoch=epoch + 1,
            )
            if step % args.logging_steps == 0:
                mean_loss = accelerator.reduce(
                    torch.tensor(window_loss / window_batches, device=device), "mean"
                )
                accelerator.log(
                    {
                        "train/loss": float(mean_loss),
                        "train/lr": scheduler.get_last_lr()[0],
                        "train/samples_per_second": window_samples / elapsed,
                        "train/epoch": epoch + 1,
                    },
                    step=step,
                )
                window_loss, window_batches, window_samples, window_start = 0.0, 0, 0, time.perf_counter()
            if isinstance(args.checkpointing_steps, int) and step % args.checkpointing_steps == 0:
                checkpoint_now()

        # ---- end of epoch: evaluate, keep the best epoch
        total_loss = accelerator.reduce(loss_sum, "sum")
        total_count = accelerator.reduce(loss_count, "sum")
        loss_sum.zero_()
        loss_count.zero_()
        state.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
        metrics = evaluate_loader(
            model, eval_loaders[selection], accelerator, spec, data.class_names, args.ignore_index
        )
        score = _score(metrics, args.selection_metric)
        entry = {
            "epoch": epoch + 1,
            "step": state["global_step"],
            "train_loss": float(total_loss / max(float(total_count), 1.0)),
            **_scalars(metrics, f"{selection}/"),
        }
        state["history"].append(entry)
        accelerator.log(
            {k: v for k, v in entry.items() if k not in ("epoch", "step")} | {"train/epoch": epoch + 1},
            step=state["global_step"],
        )
        if state["best_score"] is None or score > state["best_score"]:
            state.update(best_epoch=epoch + 1, best_score=score, best_metrics=metrics)
            best_weights = {
                k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items() if k in tracked
            }
        if main:
            progress.write(
                f"epoch {epoch + 1}/{args.epochs}: train loss {entry['train_loss']:.4f}, {selection} "
                f"{args.selection_metric} {metrics.get(args.selection_metric, float('nan')):.4f} "
                f"(best: epoch {state['best_epoch']})",
                file=sys.stderr,
            )
        if args.checkpointing_steps == "epoch":
            checkpoint_now()
    progress.close()

    # ---- the best epoch: test metrics, outputs
    train_runtime = runtime()
    if best_weights is not None:
        result = unwrapped.load_state_dict(best_weights, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"Best-epoch weights do not fit the model: {result.unexpected_keys[:5]}")
    if selection == "validation" and "test" in eval_loaders:
        test_metrics = evaluate_loader(
            model, eval_loaders["test"], accelerator, spec, data.class_names, args.ignore_index
        )
    elif selection == "test":
        test_metrics = state["best_metrics"]
    else:
        test_metrics = None
    results: dict[str, Any] = {
        "task": spec.name,
        "method": args.method,
        "model": args.model,
        "data": args.data,
        "best_epoch": state["best_epoch"],
        "selection_split": selection,
        "selection_metric": args.selection_metric,
    }
    if selection == "validation":
        results["validation"] = state["best_metrics"]
    if test_metrics is not None:
        results["test"] = test_metrics
    results["train"] = {
        "epochs": args.epochs,
        "steps": state["global_step"],
        "runtime_s": round(train_runtime, 2),
        "samples_per_second": round(state["train_samples"] / max(train_runtime, 1e-9), 2),
        "num_processes": accelerator.num_processes,
        "mixed_precision": args.mixed_precision,
    }
    results["parameters"] = parameter_summary(unwrapped)
    results["history"] = state["history"]
    if test_metrics is not None:
        accelerator.log(_scalars(test_metrics, "test/"), step=state["global_step"])

    if main:
        _write_outputs(unwrapped, args, results, data)
        if args.push_to_hub:
            repo_id = args.hub_model_id or output_dir.resolve().name
            upload_folder(
                output_dir,
                repo_id,
                private=args.hub_private,
                token=args.hub_token,
                commit_message=f"upetu-train {spec.name} ({args.method})",
                ignore_patterns=[f"{CHECKPOINTS_DIR}/**", ".*"],
            )
            results["hub_model_id"] = repo_id
        if not args.keep_checkpoints:
            remove_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    # Free the DDP wrapper while the process group still exists: its C++ reducer holds the group, and when it is
    # the last holder (after `end_training`) gloo's destructor runs with the GIL held and can deadlock at exit.
    model = optimizer = train_loader = trainables = None
    accelerator.free_memory()
    accelerator.end_training()
    return results


def _card_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers for the model card: test metrics, the selection metric, the best epoch."""
    card = {}
    if results.get("test"):
        card.update(_scalars({k: v for k, v in results["test"].items() if not k.startswith("num_")}, "test_"))
    if results.get("validation"):
        name = results["selection_metric"]
        card[f"validation_{name}"] = results["validation"].get(name)
    card["best_epoch"] = results["best_epoch"]
    return card


def _write_outputs(model, args: TrainingArguments, results: dict[str, Any], data: TaskData) -> None:
    """Main process: the adapter (or model) with its card, `metrics.json`, `run_config.json`; each atomic."""
    output_dir = Path(args.output_dir)
    card_metrics = _card_metrics(results)
    if args.method in PEFT_METHODS:
        assert isinstance(model, PeftModel)
        save_adapter(
            model, output_dir, metrics=card_metrics, datasets=data.hub_ids or None, usage=_usage(args)
        )
        results["adapter_bytes"] = (output_dir / "adapter_model.safetensors").stat().st_size
    else:
        method = {"full": "full fine-tuning", "linear": "linear probe (frozen backbone)"}[args.method]
        save_model(
            model,
            output_dir,
            base_model=args.model,
            method=method,
            parameters=results["parameters"],
            metrics=card_metrics,
            datasets=data.hub_ids or None,
            usage=_usage(args),
        )
        results["model_bytes"] = (output_dir / "model.safetensors").stat().st_size
    write_json_atomic(output_dir / METRICS_FILE, results)
