"""Using a trained run: the evaluation loop (shared with training), reloading a run (a local `upetu-train` output
folder or a Hub repo), writing predictions, and the `upetu-eval` Python API `evaluate_model`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from peft import PeftModel
from torch import nn

from .._files import is_local, read_json, write_json_atomic
from ..data.sources import load_unlabeled_folder
from ..hub import saved_file_names, verify_manifest
from ..metrics import ConfusionMatrix, metrics_from_confusion
from ..models.padding import model_total_stride
from ..models.tiling import scene_logits
from .accelerator import make_accelerator
from .arguments import RUN_CONFIG_FILE, EvalArguments, RunRecord, TrainingArguments
from .bands import BandSetup, adapt_stem, check_band_count, check_rgb_images, scan_data, uniform_sizes
from .loaders import TransformedDataset, make_loader
from .methods import PEFT_METHODS
from .tasks import TaskSpec, get_task


# ---------------------------------------------------------------------------------------------- evaluation loop
def scene_tiling(args: TrainingArguments, model: nn.Module) -> dict[str, Any] | None:
    """How dense tasks predict a whole scene (`upetu_hf.models.tiling.scene_logits` keywords), or None for
    classification (a plain forward pass of the resized image).

    - Tiled with `--tile-size` / `--tile-overlap` / `--tile-window`: tiles on the backbone's stride grid.
    - Change detection: zero-padded to the backbone's total stride and cropped back, because the model refuses
      other sizes (its training crops are multiples of the stride already).
    - Segmentation: the scene as it is (`multiple=1`). UperNet takes any size and trains on unpadded images or
      crops, so padding only at evaluation would show it inputs it never trained on: on GID tiles resized to 112 px
      (padded to 128) that cut the validation mIoU of the same trained weights from about 0.77 to 0.53.
    """
    spec = get_task(args.task)
    if not spec.dense:
        return None
    pads = args.tile_size is not None or spec.stride_sized
    return {
        "tile_size": args.tile_size,
        "tile_overlap": args.tile_overlap if args.tile_size is not None else 0,
        "window": args.tile_window,
        "multiple": model_total_stride(model) if pads else 1,
    }


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader,
    accelerator: Accelerator,
    spec: TaskSpec,
    class_names: list[str],
    ignore_index: int = 255,
    on_batch: Callable[[dict[str, torch.Tensor]], None] | None = None,
    tiling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The task's metrics of `model` on a prepared loader; collective (every process must call it).

    Dense tasks predict with `scene_logits(model, inputs, **tiling)` (any scene size; see `scene_tiling`). Their
    predictions and labels `(N, H, W)` are padded to the largest scene of all processes (labels with
    `ignore_index`, so padding never counts) before they are gathered, with each scene's `sizes` `(N, 2)`.
    Predictions, labels and row indices are gathered with `accelerator.gather_for_metrics`, so the samples that
    Accelerate repeats to even out the last batch are dropped and each sample counts once. `on_batch` (main
    process only) receives the gathered `preds`, `index` (and `labels`, `scores`, `sizes`) of every batch. Returns
    `{}` for unlabeled data.
    """
    model.eval()
    dense = spec.dense
    matrix = ConfusionMatrix(len(class_names), ignore_index=spec.confusion_ignore_index(ignore_index))
    labeled = False
    for batch in loader:
        inputs = spec.model_inputs(batch)
        if tiling is None:
            logits = model(**inputs).logits
        else:
            logits = scene_logits(model, inputs, **tiling)
        payload = {"preds": spec.predictions(logits), "index": batch["index"]}
        if "labels" in batch:
            payload["labels"] = batch["labels"]
        if not dense and on_batch is not None:
            payload["scores"] = logits.float().softmax(dim=1).amax(dim=1)
        if dense:
            payload = _pad_scenes(accelerator, payload, ignore_index)
        gathered = accelerator.gather_for_metrics(payload)
        if "labels" in gathered:
            labeled = True
            matrix.update(gathered["preds"].cpu(), gathered["labels"].cpu())
        if on_batch is not None and accelerator.is_main_process:
            on_batch({k: v.cpu() for k, v in gathered.items()})
    if not labeled:
        return {}
    metrics = metrics_from_confusion(spec.name, matrix, class_names)
    metrics["num_pixels" if dense else "num_samples"] = matrix.total
    return metrics


def _pad_scenes(accelerator: Accelerator, payload: dict[str, torch.Tensor], ignore_index: int):
    """`preds` and `labels` `(N, H, W)` padded to the largest `H` and `W` of all processes (so they can be
    gathered), and the scenes' own `sizes` `(N, 2)` to crop them back."""
    preds = payload["preds"]
    sizes = torch.tensor([list(preds.shape[-2:])] * preds.shape[0], device=preds.device)
    padded = dict(payload, sizes=sizes)
    for key, value in (("preds", 0), ("labels", ignore_index)):
        if key in padded:
            for dim in (1, 2):
                padded[key] = accelerator.pad_across_processes(padded[key], dim=dim, pad_index=value)
    return padded


# ---------------------------------------------------------------------------------------------- reloading
def _resolve_file(source: str, filename: str, **hub_kwargs) -> Path:
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{source} has no {filename}: pass the output folder of an upetu-train run (or its Hub repo)."
            )
        return path
    if is_local(source):
        raise FileNotFoundError(f"{source} is not an upetu-train output folder.")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename, **hub_kwargs))
    except Exception as err:
        raise ValueError(
            f"Could not download {filename} of {source!r} from the Hub ({type(err).__name__}: {err})."
        ) from err


def load_run(source: str, **hub_kwargs) -> RunRecord:
    """The `RunRecord` of a trained run (local output folder or Hub repo id)."""
    path = _resolve_file(source, RUN_CONFIG_FILE, **hub_kwargs)
    values = read_json(path, "run config")
    if not isinstance(values, dict) or not isinstance(values.get("arguments"), dict):
        raise ValueError(f"{path} is not the run_config.json of an upetu-train run (no 'arguments').")
    return RunRecord.from_dict(values)


def _check_saved_folder(source: str, adapter: bool) -> None:
    """For a local folder: the saved files exist, `adapter_config.json` parses, and the files agree with
    `manifest.json` (a save cut short is refused), each reported as one line naming the file."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return
    for name in saved_file_names(adapter)[: 2 if adapter else 1]:  # the configuration (and adapter weights)
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the run did not finish saving; re-run it, or resume it with "
                "--resume-from-checkpoint if it kept checkpoints."
            )
        if path.suffix == ".json":
            config = read_json(path, "saved configuration")
            field = "peft_type" if adapter else "model_type"
            if not isinstance(config, dict) or field not in config:
                raise ValueError(
                    f"{path} has no {field!r} field: restore the file the run saved (or write the field back)."
                )
    verify_manifest(folder)


def load_trained_model(source: str, model: str | None = None, **hub_kwargs) -> tuple[nn.Module, RunRecord]:
    """Rebuild a trained model in eval mode from an `upetu-train` output folder or Hub repo.

    PEFT runs (UPetu, LoRA, IA3) rebuild the task model from the base checkpoint (`model`, default: the run's
    `--model`) and load the adapter with its heads; full fine-tuning and linear-probe runs load the saved model.
    """
    record = load_run(source, **hub_kwargs)
    args = record.arguments
    if model is not None:
        args = replace(args, model=model)
        record = replace(record, arguments=args)
    spec = get_task(args.task)
    _check_saved_folder(source, adapter=args.method in PEFT_METHODS)
    if args.method in PEFT_METHODS:
        base = spec.load_model(args, record.class_names, hint="pass the base checkpoint with --model")
        adapt_stem(base, run_bands(record))  # the adapter's stem was trained on the run's bands
        trained = PeftModel.from_pretrained(base, source, **hub_kwargs)
    else:
        trained = spec.model_class.from_pretrained(source, **hub_kwargs)
    return trained.eval(), record


def run_bands(record: RunRecord) -> BandSetup | None:
    """The bands a run read (its record's `"bands"`), or None for an RGB run."""
    values = record.extra.get("bands")
    return BandSetup.from_dict(values) if values else None


def evaluation_dataset(spec: TaskSpec, args: TrainingArguments, split: str) -> tuple[datasets.Dataset, bool]:
    """The dataset to evaluate (`split` of the run's splits, or `all` of `args.data`) and whether it is labeled."""
    if split == "all":
        if len(args.data) == 1 and Path(args.data[0]).is_dir() and not spec.is_layout(Path(args.data[0])):
            unlabeled = load_unlabeled_folder(Path(args.data[0]), paired=len(spec.image_columns) == 2)
            if unlabeled is not None:
                return unlabeled, False
        loaded = [spec.standardize(spec.load_source(s, args)[0], args, s) for s in args.data]
        parts = [p for ds in loaded for p in (ds.values() if isinstance(ds, datasets.DatasetDict) else [ds])]
        everything = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        if args.max_eval_samples is not None and args.max_eval_samples < len(everything):
            everything = everything.select(range(args.max_eval_samples))
        return everything, True
    splits = spec.load_data(args).splits
    if split not in splits:
        raise ValueError(f"The run's data has no {split} split (splits: {sorted(splits)}); try --split all.")
    return splits[split], True


# ---------------------------------------------------------------------------------------------- API
def evaluate_model(args: EvalArguments) -> dict[str, Any]:
    """Evaluate a trained run on a dataset and/or write its predictions; returns the metrics (`{}` for
    unlabeled data). Images are read as the run read them (its bands and per-band statistics, from the run
    record); dense scenes of any size are predicted whole (padded to the stride) or tiled (`--tile-size`). Runs
    on one or several processes (`torchrun` / `accelerate launch`)."""
    accelerator = make_accelerator(args.cpu, args.mixed_precision)
    model, record = load_trained_model(args.adapter, args.model)
    run = replace(record.arguments, **args.data_overrides())
    spec = get_task(run.task)
    ds, labeled = evaluation_dataset(spec, run, args.split)
    if labeled and not spec.dense and list(ds.features["label"].names) != record.class_names:
        raise ValueError(
            f"The dataset's classes {ds.features['label'].names} are not the {record.class_names} the model was "
            "trained on."
        )
    bands = run_bands(record)
    scan = scan_data(datasets.DatasetDict(eval=ds), spec.image_columns)
    if bands is not None:
        check_band_count(scan, bands)
    else:
        check_rgb_images(scan)
    transform = spec.transform(run, len(record.class_names), train=False, label_column=labeled, bands=bands)
    batch_size = args.batch_size or run.per_device_eval_batch_size
    if spec.dense and run.resize is None and not uniform_sizes(scan, "eval"):
        batch_size = 1  # whole scenes of different sizes: one per batch
    loader = make_loader(
        TransformedDataset(ds, transform),
        batch_size,
        spec.collate_fn,
        seed=run.seed,
        train=False,
        num_workers=args.num_workers,
    )
    tiling = scene_tiling(run, model)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = accelerator.prepare_data_loader(loader)
    writer = spec.prediction_writer(args.predict_dir, ds, record.class_names) if args.predict_dir else None
    metrics = evaluate_loader(
        model, loader, accelerator, spec, record.class_names, run.ignore_index, writer, tiling
    )
    if accelerator.is_main_process:
        if writer is not None:
            writer.close()
        if args.metrics_file:
            write_json_atomic(args.metrics_file, {"split": args.split, "data": run.data, **metrics})
    accelerator.wait_for_everyone()
    return metrics
