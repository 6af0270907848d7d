"""Evaluation and prediction: the evaluation loop shared with training, reloading a trained run (a local
`upetu-train` output folder or a Hub repo), and the `upetu-eval` Python API `evaluate_model`."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from peft import PeftModel
from torch import nn

from .._files import path_inside, read_json, safe_file_name, write_atomic, write_json_atomic
from ..data import IMAGE_EXTENSIONS
from ..hub import verify_manifest
from ..metrics import ConfusionMatrix, metrics_from_confusion
from ..tuner.config import ADAPTER_WEIGHTS_NAME
from .checkpoint import RUN_CONFIG_FILE
from .config import MIXED_PRECISION, PEFT_METHODS, TrainingArguments
from .data import TransformedDataset, make_loader
from .tasks import TaskSpec, get_task

SPLITS = ("train", "validation", "test", "all")


# ---------------------------------------------------------------------------------------------- evaluation loop
@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader,
    accelerator: Accelerator,
    spec: TaskSpec,
    class_names: list[str],
    ignore_index: int = 255,
    on_batch: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, Any]:
    """The task's metrics of `model` on a prepared loader; collective (every process must call it).

    Predictions, labels and row indices are gathered with `accelerator.gather_for_metrics`, so the samples that
    Accelerate repeats to even out the last batch are dropped and each sample counts once. `on_batch` (main
    process only) receives the gathered `preds`, `index` (and `labels`, `scores`) of every batch. Returns `{}`
    for unlabeled data.
    """
    model.eval()
    classification = spec.name == "classification"
    matrix = ConfusionMatrix(len(class_names), ignore_index=None if classification else ignore_index)
    labeled = False
    for batch in loader:
        logits = model(**spec.model_inputs(batch)).logits
        payload = {"preds": spec.predictions(logits), "index": batch["index"]}
        if "labels" in batch:
            payload["labels"] = batch["labels"]
        if classification and on_batch is not None:
            payload["scores"] = logits.float().softmax(dim=1).amax(dim=1)
        gathered = accelerator.gather_for_metrics(payload)
        if "labels" in gathered:
            labeled = True
            matrix.update(gathered["preds"].cpu(), gathered["labels"].cpu())
        if on_batch is not None and accelerator.is_main_process:
            on_batch({k: v.cpu() for k, v in gathered.items()})
    if not labeled:
        return {}
    metrics = metrics_from_confusion(spec.metric_task, matrix, class_names)
    metrics["num_samples" if classification else "num_pixels"] = matrix.total
    return metrics


# ---------------------------------------------------------------------------------------------- reloading
@dataclass
class RunRecord:
    """What `run_config.json` holds: the arguments of the run and the class names it resolved."""

    arguments: TrainingArguments
    class_names: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"arguments": self.arguments.to_dict(), "class_names": self.class_names, **self.extra}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunRecord:
        extra = {k: v for k, v in values.items() if k not in ("arguments", "class_names")}
        return cls(TrainingArguments.from_dict(values["arguments"]), list(values["class_names"]), extra)


def _resolve_file(source: str, filename: str, **hub_kwargs) -> Path:
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{source} has no {filename}: pass the output folder of an upetu-train run (or its Hub repo)."
            )
        return path
    if local.exists() or source.startswith((".", "/", "~")):
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
    for name in ("adapter_config.json", ADAPTER_WEIGHTS_NAME) if adapter else ("config.json",):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the run did not finish saving; re-run it, or resume it with "
                "--resume-from-checkpoint if it kept checkpoints."
            )
        if path.suffix == ".json":
            read_json(path, "saved configuration")
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
        trained = PeftModel.from_pretrained(base, source, **hub_kwargs)
    else:
        trained = spec.model_class.from_pretrained(source, **hub_kwargs)
    return trained.eval(), record


# ---------------------------------------------------------------------------------------------- data
def _unlabeled_folder(spec: TaskSpec, folder: Path) -> datasets.Dataset | None:
    """Images without labels, for predictions: a flat image folder (classification, segmentation; or its
    `images/` sub-folder) or `A/` + `B/` folders (change detection). None if `folder` is not such a folder."""

    def images(path: Path) -> dict[str, Path]:
        return {
            p.stem: p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        }

    if spec.name == "change-detection":
        if not ((folder / "A").is_dir() and (folder / "B").is_dir()):
            return None
        a, b = images(folder / "A"), images(folder / "B")
        unpaired = sorted(set(a) ^ set(b))
        if unpaired:
            raise ValueError(f"Unpaired images in {folder}/A and {folder}/B: {unpaired[:10]}.")
        names = sorted(a)
        columns = {
            "image_a": [str(a[n]) for n in names],
            "image_b": [str(b[n]) for n in names],
            "name": names,
        }
        features = {"image_a": datasets.Image(), "image_b": datasets.Image()}
    else:
        source = folder / "images" if (folder / "images").is_dir() else folder
        found = images(source)
        if not found:
            return None
        columns = {"image": [str(p) for p in found.values()], "name": list(found)}
        features = {"image": datasets.Image()}
    return datasets.Dataset.from_dict(
        columns, features=datasets.Features({**features, "name": datasets.Value("string")})
    )


def evaluation_dataset(spec: TaskSpec, args: TrainingArguments, split: str) -> tuple[datasets.Dataset, bool]:
    """The dataset to evaluate (`split` of the run's splits, or `all` of `args.data`) and whether it is labeled."""
    if split == "all":
        if len(args.data) == 1 and Path(args.data[0]).is_dir() and not spec.is_layout(Path(args.data[0])):
            unlabeled = _unlabeled_folder(spec, Path(args.data[0]))
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


def _names(ds: datasets.Dataset) -> list[str]:
    """A file-friendly name per row: the `name` column, else the image file stem, else the row number."""
    if "name" in ds.column_names:
        names = [str(n) for n in ds["name"]]
    else:
        column = "image" if "image" in ds.column_names else "image_a"
        values = ds.cast_column(column, datasets.Image(decode=False))[column]
        names = [Path(v["path"]).stem if v.get("path") else f"{i:06d}" for i, v in enumerate(values)]
    names = [safe_file_name(n, f"{i:06d}") for i, n in enumerate(names)]
    if len(set(names)) != len(names):
        names = [f"{i:06d}_{n}" for i, n in enumerate(names)]
    return names


class PredictionWriter:
    """Writes predictions on the main process: `predictions.csv` (classification) or one PNG mask per example
    (segmentation: class indices; change detection: 0 / 255), each file atomically. File names come from the
    dataset's `name` column made safe (`safe_file_name`): nothing is written outside `folder`."""

    def __init__(
        self, folder: str | os.PathLike, spec: TaskSpec, ds: datasets.Dataset, class_names: list[str]
    ) -> None:
        self.folder = Path(folder)
        self.spec, self.class_names = spec, class_names
        self.names = _names(ds)
        self.paths = None
        if spec.name == "classification":
            values = ds.cast_column("image", datasets.Image(decode=False))["image"]
            self.paths = [v.get("path") or "" for v in values]
        self.rows: list[dict[str, Any]] = []

    def __call__(self, gathered: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for j, index in enumerate(gathered["index"].tolist()):
            pred = gathered["preds"][j]
            if self.spec.name == "classification":
                row = {
                    "index": index,
                    "name": self.names[index],
                    "path": self.paths[index],
                    "prediction": self.class_names[int(pred)],
                    "prediction_id": int(pred),
                    "score": round(float(gathered["scores"][j]), 6),
                }
                if "labels" in gathered:
                    row["label"] = self.class_names[int(gathered["labels"][j])]
                self.rows.append(row)
            else:
                mask = pred.numpy().astype(np.uint8)
                if self.spec.name == "change-detection":
                    mask = mask * 255
                self._write_png(path_inside(self.folder, f"{self.names[index]}.png"), mask)

    @staticmethod
    def _write_png(path: Path, mask: np.ndarray) -> None:
        buffer = io.BytesIO()
        PIL.Image.fromarray(mask, mode="L").save(buffer, format="PNG")
        write_atomic(path, buffer.getvalue())

    def close(self) -> None:
        if self.spec.name != "classification":
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = sorted(self.rows, key=lambda r: r["index"])
        fields = list(rows[0]) if rows else ["index", "name", "path", "prediction", "prediction_id", "score"]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.folder / "predictions.csv", text.getvalue())


# ---------------------------------------------------------------------------------------------- API
@dataclass
class EvalArguments:
    """Settings of `upetu-eval`. Data settings left at None are taken from the trained run (so by default the
    run's own test split is evaluated, reproducing the reported metrics)."""

    adapter: str
    model: str | None = None
    data: list[str] | None = None
    split: str = "test"
    train_fraction: float | None = None
    validation_fraction: float | None = None
    split_seed: int | None = None
    max_eval_samples: int | None = None
    image_size: int | None = None
    resize: int | None = None
    batch_size: int | None = None
    predict_dir: str | None = None
    metrics_file: str | None = None
    mixed_precision: str = "no"
    num_workers: int = 0
    cpu: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if self.split not in SPLITS:
            raise ValueError(f"--split {self.split!r} is invalid: allowed values are {', '.join(SPLITS)}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"--mixed-precision {self.mixed_precision!r} is invalid: use {', '.join(MIXED_PRECISION)}."
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"--batch-size={self.batch_size} is invalid: it must be >= 1.")


def make_accelerator(cpu: bool, mixed_precision: str, **kwargs) -> Accelerator:
    """An `Accelerator`; on machines without an accelerator it is forced to CPU, which is also what makes
    `torchrun` / `accelerate launch --multi_gpu` start a multi-process gloo run there.

    In a single process (a notebook calling `train` twice, say) the state of a previous run is cleared first,
    so each call may choose its own mixed precision and accumulation steps.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "accelerator") and torch.accelerator.current_accelerator() is not None
    )
    return Accelerator(cpu=cpu or not has_accelerator, mixed_precision=mixed_precision, **kwargs)


def evaluate_model(args: EvalArguments) -> dict[str, Any]:
    """Evaluate a trained run on a dataset and/or write its predictions; returns the metrics (`{}` for
    unlabeled data). Runs on one or several processes (`torchrun` / `accelerate launch`)."""
    accelerator = make_accelerator(args.cpu, args.mixed_precision)
    model, record = load_trained_model(args.adapter, args.model)
    run = record.arguments
    overrides = {
        k: v
        for k, v in dict(
            data=args.data,
            train_fraction=args.train_fraction,
            validation_fraction=args.validation_fraction,
            split_seed=args.split_seed,
            max_eval_samples=args.max_eval_samples,
            image_size=args.image_size,
            resize=args.resize,
        ).items()
        if v is not None
    }
    run = replace(run, **overrides)
    spec = get_task(run.task)
    ds, labeled = evaluation_dataset(spec, run, args.split)
    if labeled and spec.name == "classification" and list(ds.features["label"].names) != record.class_names:
        raise ValueError(
            f"The dataset's classes {ds.features['label'].names} are not the {record.class_names} the model was "
            "trained on."
        )
    transform = spec.transform(run, len(record.class_names), train=False, label_column=labeled)
    loader = make_loader(
        TransformedDataset(ds, transform),
        args.batch_size or run.per_device_eval_batch_size,
        spec.collate_fn,
        seed=run.seed,
        train=False,
        num_workers=args.num_workers,
    )
    model = accelerator.prepare_model(model, evaluation_mode=True)
    loader = accelerator.prepare_data_loader(loader)
    writer = PredictionWriter(args.predict_dir, spec, ds, record.class_names) if args.predict_dir else None
    metrics = evaluate_loader(model, loader, accelerator, spec, record.class_names, run.ignore_index, writer)
    if accelerator.is_main_process:
        if writer is not None:
            writer.close()
        if args.metrics_file:
            write_json_atomic(args.metrics_file, {"split": args.split, "data": run.data, **metrics})
    accelerator.wait_for_everyone()
    return metrics
