"""The Accelerate training loop: `train(args) -> metrics`, the Python API behind `upetu-train`.

`train` reads top to bottom as the loop: check the inputs, prepare, then for every epoch train on its batches,
evaluate, keep the best epoch and save a checkpoint; last, score the best epoch on test and write the outputs.
Where the run stands is one `TrainState`, saved in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .. import __version__
from .._files import manifest_names, read_json, write_json_atomic, write_manifest
from ..hub import TaskResults, check_push_access, save_adapter, save_model, saved_file_names, upload_folder
from ..models.padding import model_total_stride
from .accelerator import agree, make_accelerator
from .arguments import (
    CHECKPOINTS_DIR,
    LOG_FILE,
    LOGS_DIR,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    RunRecord,
    TrainingArguments,
    check_tile_options,
)
from .bands import (
    BandSetup,
    adapt_stem,
    check_scene_sizes,
    crops_per_image,
    input_channels,
    processor_of,
    resolve_bands,
    scan_data,
    uniform_sizes,
)
from .checkpoint import (
    STATE_FILE,
    FrozenBackbone,
    Trainables,
    check_compatible,
    list_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    remove_stale_temporaries,
    resolve_checkpoint,
    save_checkpoint,
)
from .inference import evaluate_loader, run_bands, scene_tiling
from .loaders import TransformedDataset, make_loader, set_epoch
from .methods import (
    DEFAULT_LR,
    PEFT_METHODS,
    apply_method,
    head_names,
    parameter_groups,
    parameter_summary,
)
from .output_dir import OutputLock, check_output_dir, clear_previous_run
from .tasks import TaskData, TaskSpec, get_task, image_processor_settings
from .tracking import JsonLinesTracker, trackers, truncate_log

#: A run stops when a step's loss exceeds this many times its first step's loss (or 1, if larger): a diverging run
#: (too high a learning rate) climbs by orders of magnitude before it reaches NaN.
DIVERGENCE_FACTOR = 1000.0


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite, or grew past the divergence bound: the run stopped before the
    step, its checkpoints untouched (a `ValueError`: the CLI reports it as one line, exit code 2)."""


@dataclass
class TrainState:
    """Where a run stands (`trainer_state.json` of a checkpoint): position, best epoch so far, history, the loss
    summed over the batches of the current epoch, runtime and samples seen, the first step's loss (the reference
    of the divergence bound) and the logging window not yet logged (loss sum, batches, samples)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    best_metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    train_runtime_s: float = 0.0
    train_samples: int = 0
    log_lines: int | None = None
    first_loss: float | None = None
    log_window: list[float] = field(default_factory=lambda: [0.0, 0, 0])

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def train(args: TrainingArguments) -> dict[str, Any]:
    """Train a model as `args` says and return the content of `metrics.json`.

    Works on one CPU, one GPU or several processes (`torchrun` / `accelerate launch`). Every input is checked
    before anything is written; `output_dir` then receives `run_config.json`, `logs/`, resumable checkpoints
    under `checkpoints/` and, at the end, the trained adapter (or model) with its card and `metrics.json`. The
    run holds a lock on `output_dir` (`.upetu-train.lock`) from start to end, so a second run is refused.
    """
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
    args.check_device(accelerator.device.type)
    lock = _lock_output_dir(accelerator, output_dir)
    run = None
    try:
        run = _Run.start(args, get_task(args.task), accelerator, tracker_list[0])
        model, optimizer, scheduler = run.trainables.model, run.trainables.optimizer, run.trainables.scheduler
        state = run.state
        for epoch in range(state.epoch, args.epochs):
            model.train()
            for batch in run.batches(epoch):
                with accelerator.accumulate(model):
                    loss = model(**run.spec.model_inputs(batch), labels=batch["labels"]).loss
                    run.check_loss(loss, epoch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                run.count_batch(loss)
                if not accelerator.sync_gradients:
                    continue
                if not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                run.count_step(epoch)
                if (
                    isinstance(args.checkpointing_steps, int)
                    and state.global_step % args.checkpointing_steps == 0
                ):
                    run.save_checkpoint()
            run.end_epoch(epoch)
            if args.checkpointing_steps == "epoch":
                run.save_checkpoint()
        del model, optimizer, scheduler  # `finish` frees the DDP wrapper before the process group ends
        return run.finish()
    except BaseException as err:
        if run is not None:  # the error's line goes below the progress bar, not onto it
            run.progress.close()
            if isinstance(err, TrainingDiverged):  # every process stopped at the same step: end the trackers
                accelerator.end_training()
        raise
    finally:
        if lock is not None:
            lock.release()


def _lock_output_dir(accelerator: Accelerator, output_dir: Path) -> OutputLock | None:
    """The main process locks `output_dir` for this run (collective)."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = OutputLock.acquire(output_dir)
        except (ValueError, OSError) as err:
            error = err
    agree(accelerator, error)
    return lock


@dataclass
class _Inputs:
    """What `_check_inputs` read and checked: the checkpoint to resume, the data and what its scan decided (bands,
    crops per scene, one-scene evaluation batches), the model to train, the run record, and the frozen tensors
    that checkpoints reference instead of holding."""

    checkpoint: Path | None
    data: TaskData
    bands: BandSetup | None
    crops: int
    eval_sizes_vary: dict[str, bool]
    model: Any
    record: RunRecord
    module_lrs: dict[str, float] = field(default_factory=dict)
    frozen: FrozenBackbone | None = None


def _check_inputs(args: TrainingArguments, spec: TaskSpec) -> _Inputs:
    """Everything a run reads, checked before anything is written: checkpoint, output folder, data (every image's
    header: bands and sizes), model."""
    output_dir = Path(args.output_dir)
    checkpoint = (
        resolve_checkpoint(args.resume_from_checkpoint, output_dir) if args.resume_from_checkpoint else None
    )
    check_output_dir(args, resuming=checkpoint is not None)
    if args.push_to_hub:
        check_push_access(_repo_id(args), args.hub_token)
    data = spec.load_data(args)
    base = spec.load_model(args, data.class_names)
    base.name_or_path = base.config.name_or_path = args.model  # PEFT records it as base_model_name_or_path
    scan = scan_data(data.splits, spec.image_columns)
    bands = resolve_bands(
        args, scan, input_channels(base), processor_of(image_processor_settings(args.model))
    )
    if spec.dense:
        stride = model_total_stride(base)
        check_scene_sizes(args, scan, stride)
        if args.tile_size is not None:
            check_tile_options(args.tile_size, args.tile_overlap, args.tile_window, stride)
    crops = crops_per_image(args, scan)
    stem = adapt_stem(base, bands)
    heads = head_names(base)
    model = apply_method(base, args, extra_modules=stem)
    # the heads' own rate, when it differs from the optimizer's (see `default_head_lr`)
    module_lrs = dict.fromkeys(heads, args.head_lr) if args.head_lr != args.lr else {}
    if stem and args.method != "full":  # full fine-tuning trains the stem with everything else
        module_lrs.update(dict.fromkeys(stem, args.stem_lr or DEFAULT_LR["full"]))
    frozen = FrozenBackbone.of(model, args.model)  # what checkpoints leave out (nothing for full fine-tuning)
    if checkpoint is not None:
        changed = check_compatible(checkpoint, args, data.class_names, model, frozen)
        if changed:
            warnings.warn(
                f"Resuming with changed settings {changed}: the run will differ from the original one.",
                stacklevel=3,
            )
    splits = {k: len(v) for k, v in data.splits.items()}
    extra = {"splits": splits, "crops_per_image": crops, "upetu_hf_version": __version__}
    if bands is not None:
        extra["bands"] = bands.to_dict()
    record = RunRecord(args, data.class_names, extra)
    vary = {
        name: not uniform_sizes(scan, name) and args.resize is None for name in data.splits if name != "train"
    }
    return _Inputs(checkpoint, data, bands, crops, vary, model, record, module_lrs, frozen)


def _start_outputs(
    accelerator: Accelerator, args: TrainingArguments, checkpoint: Path | None, record
) -> None:
    """Once every process has checked the inputs against the untouched `output_dir` (collective): clear a
    previous run (`--overwrite`) and killed saves, cut the log back to the checkpoint, write `run_config.json`."""
    output_dir = Path(args.output_dir)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.overwrite:
            clear_previous_run(output_dir)
        remove_stale_temporaries(output_dir)
        if checkpoint is not None:  # a killed or finished run logged past it
            saved = read_json(checkpoint / STATE_FILE, "checkpoint's trainer state")
            truncate_log(output_dir / LOGS_DIR / LOG_FILE, saved["global_step"], saved.get("log_lines"))
        write_json_atomic(output_dir / RUN_CONFIG_FILE, record.to_dict())
    accelerator.wait_for_everyone()
    accelerator.init_trackers("upetu-train", config=args.flat())


def _loaders(args: TrainingArguments, spec: TaskSpec, inputs: _Inputs, num_processes: int):
    """The shuffled, augmenting training loader (each scene `inputs.crops` times, each copy its own seeded random
    crop) and one evaluation loader per other split (one scene per batch when the split's sizes vary)."""
    data, bands = inputs.data, inputs.bands
    num_labels = len(data.class_names)
    train_split = data.splits["train"]
    if inputs.crops > 1:
        train_split = train_split.select([i for i in range(len(train_split)) for _ in range(inputs.crops)])
    train_set = TransformedDataset(
        train_split, spec.transform(args, num_labels, True, bands=bands), seed=args.seed
    )
    drop_last = len(train_set) >= args.batch_size * num_processes
    train_loader = make_loader(
        train_set, args.batch_size, spec.collate_fn, args.seed, True, args.num_workers, drop_last=drop_last
    )
    eval_loaders = {
        name: make_loader(
            TransformedDataset(ds, spec.transform(args, num_labels, train=False, bands=bands)),
            1 if inputs.eval_sizes_vary.get(name) else args.per_device_eval_batch_size,
            spec.collate_fn,
            args.seed,
            False,
            args.num_workers,
        )
        for name, ds in data.splits.items()
        if name != "train"
    }
    return train_loader, eval_loaders


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{k}": v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _score(metrics: dict[str, Any], name: str) -> float:
    value = metrics.get(name, float("nan"))
    return -math.inf if value is None or math.isnan(value) else float(value)


@dataclass
class _Run:
    """A started run: what `train` prepared, its `TrainState`, the best weights so far, the running loss of the
    epoch (a float64 tensor per process, summed when read) and of the logging window, and the clock."""

    args: TrainingArguments
    spec: TaskSpec
    accelerator: Accelerator
    log: JsonLinesTracker
    data: TaskData
    record: RunRecord
    trainables: Trainables
    train_loader: Any
    eval_loaders: dict[str, Any]
    state: TrainState
    best_weights: dict[str, torch.Tensor] | None
    progress: Any = None
    loss_sum: torch.Tensor | None = None
    loss_count: torch.Tensor | None = None
    window: list[float] = field(default_factory=list)  # loss, batches, samples, start time
    worst_loss: float = -math.inf  # of this process's batches since the last optimizer step (NaN sticks)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, args: TrainingArguments, spec: TaskSpec, accelerator: Accelerator, log) -> _Run:
        """Check the inputs, start the outputs, prepare model, optimizer, schedule and loaders, resume."""
        set_seed(args.seed)
        inputs = _check_inputs(args, spec)
        checkpoint, data, model, record = inputs.checkpoint, inputs.data, inputs.model, inputs.record
        _start_outputs(accelerator, args, checkpoint, record)
        train_loader, eval_loaders = _loaders(args, spec, inputs, accelerator.num_processes)
        groups = parameter_groups(model, args.weight_decay, inputs.module_lrs)
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
        plain_optimizer = optimizer  # the scheduler drives the plain optimizer that Accelerate wraps
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        eval_loaders = {
            name: accelerator.prepare_data_loader(loader) for name, loader in eval_loaders.items()
        }
        total_steps = math.ceil(len(train_loader) / args.gradient_accumulation_steps) * args.epochs
        scheduler = get_cosine_schedule_with_warmup(
            plain_optimizer, round(args.warmup_ratio * total_steps), total_steps
        )
        trainables = Trainables(model, optimizer, scheduler, inputs.frozen)
        state, best = TrainState(), None
        if checkpoint is not None:
            saved, best = load_checkpoint(accelerator, checkpoint, trainables)
            state = TrainState.from_dict(saved)
            accelerator.print(f"Resumed from {checkpoint} (epoch {state.epoch}, step {state.global_step}).")
        if data.selection_split == "test" and accelerator.is_main_process:
            warnings.warn(
                "No validation split: the best epoch is selected on the test split. Pass "
                "--validation-fraction for an unbiased test score.",
                stacklevel=3,
            )
        run = cls(
            args, spec, accelerator, log, data, record, trainables, train_loader, eval_loaders, state, best
        )
        main, device = accelerator.is_main_process, accelerator.device
        run.loss_sum = torch.tensor(state.epoch_loss_sum if main else 0.0, dtype=torch.float64, device=device)
        run.loss_count = torch.tensor(
            state.epoch_loss_count if main else 0, dtype=torch.float64, device=device
        )
        run.window = [*state.log_window, time.perf_counter()]
        run.progress = tqdm(
            total=total_steps,
            initial=state.global_step,
            disable=not accelerator.is_local_main_process,
            desc=f"{spec.name} ({args.method})",
            unit="step",
            dynamic_ncols=True,
        )
        return run

    @property
    def runtime(self) -> float:
        """Training seconds, those of the runs this one resumed included."""
        return self.state.train_runtime_s + time.perf_counter() - self.started

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.trainables.model)

    def batches(self, epoch: int):
        """The training batches of `epoch`, without those a resumed checkpoint had already seen."""
        set_epoch(self.train_loader, epoch)
        if not self.state.batch_in_epoch:
            return self.train_loader
        loader = self.accelerator.skip_first_batches(self.train_loader, self.state.batch_in_epoch)
        set_epoch(loader, epoch)
        return loader

    def check_loss(self, loss: torch.Tensor, epoch: int) -> None:
        """Stop a diverging run before its optimizer step (collective on a step's last batch): the worst loss of
        the step's batches on any process must be finite and at most `DIVERGENCE_FACTOR` x max(the run's first
        step's worst loss, 1)."""
        value = float(loss.detach())
        # a NaN value replaces the worst so far, then sticks
        if not math.isnan(self.worst_loss) and not value <= self.worst_loss:
            self.worst_loss = value
        if not self.accelerator.sync_gradients:
            return
        mine = torch.tensor([self.worst_loss], dtype=torch.float64, device=self.accelerator.device)
        worst, self.worst_loss = float(self.accelerator.gather(mine).max()), -math.inf
        state = self.state
        if state.first_loss is None and math.isfinite(worst):
            state.first_loss = worst
        limit = DIVERGENCE_FACTOR * max(state.first_loss or 1.0, 1.0)
        if math.isfinite(worst) and worst <= limit:
            return
        kept = list_checkpoints(self.args.output_dir)
        reason = "not a finite number" if not math.isfinite(worst) else f"above the bound {limit:.3g}"
        raise TrainingDiverged(
            f"the training loss is {worst:.3g} ({reason}) at step {state.global_step + 1} (epoch {epoch + 1}): "
            f"the run diverged and stopped before that step. Start again with a lower --lr (now {self.args.lr:g}) "
            "or with --max-grad-norm > 0 (--overwrite replaces this run)"
            + (f"; its last checkpoint, {kept[-1]}, is kept." if kept else ".")
        )

    def count_batch(self, loss: torch.Tensor) -> None:
        samples = self.args.batch_size * self.accelerator.num_processes
        self.state.batch_in_epoch += 1
        self.state.train_samples += samples
        value = loss.detach().to(torch.float64)
        self.loss_sum += value
        self.loss_count += 1
        self.window[:3] = [self.window[0] + float(value), self.window[1] + 1, self.window[2] + samples]

    def count_step(self, epoch: int) -> None:
        """An optimizer step was taken: progress bar, and every `--logging-steps` the window's mean loss."""
        self.state.global_step += 1
        step = self.state.global_step
        loss, batches, samples, start = self.window
        elapsed = max(time.perf_counter() - start, 1e-9)
        self.progress.update(1)
        self.progress.set_postfix(
            loss=f"{loss / batches:.4f}", img_s=f"{samples / elapsed:.1f}", epoch=epoch + 1
        )
        if step % self.args.logging_steps:
            return
        mean_loss = self.accelerator.reduce(
            torch.tensor(loss / batches, device=self.accelerator.device), "mean"
        )
        values = {
            "train/loss": float(mean_loss),
            "train/lr": self.trainables.scheduler.get_last_lr()[0],
            "train/samples_per_second": samples / elapsed,
            "train/epoch": epoch + 1,
        }
        self.accelerator.log(values, step=step)
        self.window = [0.0, 0, 0, time.perf_counter()]

    def end_epoch(self, epoch: int) -> None:
        """Evaluate on the selection split, log the epoch, keep its weights if it is the best so far."""
        args, state, accelerator = self.args, self.state, self.accelerator
        total_loss = accelerator.reduce(self.loss_sum, "sum")
        total_count = accelerator.reduce(self.loss_count, "sum")
        self.loss_sum.zero_()
        self.loss_count.zero_()
        state.epoch, state.batch_in_epoch, state.epoch_loss_sum, state.epoch_loss_count = epoch + 1, 0, 0.0, 0
        selection = self.data.selection_split
        metrics = self.evaluate(selection)
        score = _score(metrics, args.selection_metric)
        entry = {
            "epoch": epoch + 1,
            "step": state.global_step,
            "train_loss": float(total_loss / max(float(total_count), 1.0)),
            **_scalars(metrics, f"{selection}/"),
        }
        state.history.append(entry)
        logged = {k: v for k, v in entry.items() if k not in ("epoch", "step")}
        accelerator.log(logged | {"train/epoch": epoch + 1}, step=state.global_step)
        best = -math.inf if state.best_score is None else state.best_score  # None: a non-finite score (JSON)
        if state.best_epoch is None or score > best:
            state.best_epoch, state.best_score, state.best_metrics = epoch + 1, score, metrics
            model = self.unwrapped
            tracked = {n for n, p in model.named_parameters() if p.requires_grad}
            tracked |= {n for n, _ in model.named_buffers()}
            self.best_weights = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in tracked
            }
        if accelerator.is_main_process:
            self.progress.write(
                f"epoch {epoch + 1}/{args.epochs}: train loss {entry['train_loss']:.4f}, {selection} "
                f"{args.selection_metric} {metrics.get(args.selection_metric, float('nan')):.4f} "
                f"(best: epoch {state.best_epoch})",
                file=sys.stderr,
            )

    def evaluate(self, split: str) -> dict[str, Any]:
        return evaluate_loader(
            self.trainables.model,
            self.eval_loaders[split],
            self.accelerator,
            self.spec,
            self.data.class_names,
            self.args.ignore_index,
            tiling=scene_tiling(self.args, self.unwrapped),
        )

    def save_checkpoint(self) -> None:
        """A resumable checkpoint of the current step (collective); the epoch's loss is summed on the main
        process first, so that the stored state is complete."""
        accelerator = self.accelerator
        window = torch.tensor(self.window[0], dtype=torch.float64, device=accelerator.device)
        window = accelerator.reduce(window, "mean")
        self.window[0] = float(window)  # every process resumes the same window, whose mean is then logged
        self.loss_sum = accelerator.reduce(self.loss_sum, "sum")
        self.loss_count = accelerator.reduce(self.loss_count, "sum")
        if not accelerator.is_main_process:
            self.loss_sum, self.loss_count = (
                torch.zeros_like(self.loss_sum),
                torch.zeros_like(self.loss_count),
            )
        state = dataclasses.replace(
            self.state,
            epoch_loss_sum=float(self.loss_sum),
            epoch_loss_count=int(self.loss_count),
            train_runtime_s=self.runtime,
            log_lines=self.log.lines,
            log_window=self.window[:3],
        )
        save_checkpoint(
            accelerator,
            self.args.output_dir,
            state.global_step,
            dataclasses.asdict(state),
            self.record.to_dict(),
            self.best_weights,
            self.args.save_total_limit,
            self.trainables,
        )

    def finish(self) -> dict[str, Any]:
        """Restore the best epoch, score it on test, write the outputs (main process), end the run."""
        args, state, accelerator = self.args, self.state, self.accelerator
        self.progress.close()
        train_runtime = self.runtime
        if self.best_weights is not None:
            loaded = self.unwrapped.load_state_dict(self.best_weights, strict=False)
            if loaded.unexpected_keys:
                raise RuntimeError(f"Best-epoch weights do not fit the model: {loaded.unexpected_keys[:5]}")
        selection = self.data.selection_split
        test_metrics = state.best_metrics if selection == "test" else None
        if selection == "validation" and "test" in self.eval_loaders:
            test_metrics = self.evaluate("test")
        results = {
            "task": self.spec.name,
            "method": args.method,
            "model": args.model,
            "data": args.data,
            "best_epoch": state.best_epoch,
            "selection_split": selection,
            "selection_metric": args.selection_metric,
        }
        if selection == "validation":
            results["validation"] = state.best_metrics
        if test_metrics is not None:
            results["test"] = test_metrics
        results["train"] = {
            "epochs": args.epochs,
            "steps": state.global_step,
            "runtime_s": round(train_runtime, 2),
            "samples_per_second": round(state.train_samples / max(train_runtime, 1e-9), 2),
            "num_processes": accelerator.num_processes,
            "mixed_precision": args.mixed_precision,
        }
        results["parameters"] = parameter_summary(self.unwrapped)
        results["history"] = state.history
        if test_metrics is not None:
            accelerator.log(_scalars(test_metrics, "test/"), step=state.global_step)
        if accelerator.is_main_process:
            _write_outputs(self.unwrapped, args, results, self.data, run_bands(self.record))
            if not args.keep_checkpoints:
                remove_checkpoints(args.output_dir)
        accelerator.wait_for_everyone()
        # Free the DDP wrapper while the process group still exists: its C++ reducer holds the group, and when it is
        # the last holder (after `end_training`) gloo's destructor runs with the GIL held and can deadlock at exit.
        self.trainables = self.train_loader = None
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


def _task_results(args: TrainingArguments, results: dict[str, Any], data: TaskData) -> TaskResults | None:
    """The test metrics for the card's `model-index`, on the dataset's Hub id (or its folder's name)."""
    if not results.get("test"):
        return None
    dataset = data.hub_ids[0] if data.hub_ids else Path(args.data[0]).expanduser().resolve().name
    name = Path(args.hub_model_id or args.output_dir).name
    return TaskResults(args.task, dataset, results["test"], "test", name)


def _usage(args: TrainingArguments, bands: BandSetup | None = None) -> str:
    return f"""Reload and evaluate it with [upetu-hf](https://github.com/upetu-hf/upetu-hf):

```bash
upetu-eval --adapter <this repo id or folder> --model {args.model}
```

```python
from upetu_hf.train import load_trained_model

model, run = load_trained_model("<this repo id or folder>")
```""" + (_bands_section(bands) if bands is not None else "")


def _bands_section(bands: BandSetup) -> str:
    """The card's table of the input bands and their normalisation, ``(x * scale - mean) / std``."""
    rows = "\n".join(
        f"| {name} | {index} | {mean:.6g} | {std:.6g} |"
        for name, index, mean, std in zip(bands.selected, bands.indices, bands.mean, bands.std)
    )
    stem = (
        f"inflated from {bands.model_channels} channels (pretrained kernels on bands {bands.rgb_indices}), saved "
        "with the adapter"
        if bands.inflates
        else "the checkpoint's own"
    )
    return f"""

### Input bands

{bands.num_channels} of the {bands.file_bands} bands of each file, normalised `(x * {bands.scale:g} - mean) / std` with
statistics from `{bands.statistics_source}` (also in `run_config.json`); the stem is {stem}.

| band | index in the file | mean | std |
|---|---|---|---|
{rows}"""


def _repo_id(args: TrainingArguments) -> str:
    """The Hub repo of `--push-to-hub`: `--hub-model-id`, else the output folder's name."""
    return args.hub_model_id or Path(args.output_dir).resolve().name


def _write_outputs(
    model, args: TrainingArguments, results: dict[str, Any], data: TaskData, bands: BandSetup | None
) -> None:
    """Main process: the adapter (or model) with its card, `metrics.json` (each atomic), then `--push-to-hub`."""
    output_dir = Path(args.output_dir)
    card = dict(
        metrics=_card_metrics(results),
        datasets=data.hub_ids or None,
        usage=_usage(args, bands),
        results=_task_results(args, results, data),
    )
    peft = args.method in PEFT_METHODS
    if peft:
        save_adapter(model, output_dir, **card)
    else:
        method = {"full": "full fine-tuning", "linear": "linear probe (frozen backbone)"}[args.method]
        counts = {k: results["parameters"][k] for k in ("trainable", "total")}
        save_model(model, output_dir, base_model=args.model, method=method, parameters=counts, **card)
    weights = output_dir / saved_file_names(peft)[1]
    results["adapter_bytes" if peft else "model_bytes"] = weights.stat().st_size
    write_json_atomic(output_dir / METRICS_FILE, results)
    # last: the manifest of the saved files, the run's record, metrics and log (TensorBoard's files are not listed)
    logged = [f"{LOGS_DIR}/{LOG_FILE}"] if (output_dir / LOGS_DIR / LOG_FILE).is_file() else []
    write_manifest(output_dir, [*manifest_names(output_dir), METRICS_FILE, RUN_CONFIG_FILE, *logged])
    if args.push_to_hub:  # the folder as written, without checkpoints
        repo_id = _repo_id(args)
        upload_folder(
            output_dir,
            repo_id,
            private=args.hub_private,
            token=args.hub_token,
            commit_message=f"upetu-train {args.task} ({args.method})",
            ignore_patterns=[f"{CHECKPOINTS_DIR}/**", ".*"],
        )
        results["hub_model_id"] = repo_id
