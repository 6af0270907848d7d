"""`TrainingArguments`: the single source of truth for a training run, saved as `run_config.json`."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("classification", "segmentation", "change-detection")
METHODS = ("upetu", "full", "linear", "lora", "ia3")
PEFT_METHODS = ("upetu", "lora", "ia3")
MIXED_PRECISION = ("no", "bf16", "fp16")

#: Default learning rate of each method (used when `lr` is None). UPetu needs a high rate because its scales
#: (`s`, `beta`) start at 0; full fine-tuning a low one.
DEFAULT_LR = {"upetu": 1e-2, "full": 5e-4, "linear": 1e-2, "lora": 3e-3, "ia3": 3e-3}

#: Options that only mean something for one family of methods.
UPETU_OPTIONS = (
    "bits",
    "prompt_size",
    "activation",
    "codebook",
    "side_bits",
    "use_eqam",
    "use_capm",
    "stages",
)
LORA_OPTIONS = ("lora_alpha", "lora_dropout")
RANK_METHODS = ("upetu", "lora")

#: Fields that define the trained model: a checkpoint is only resumable by a run that agrees on all of them.
MODEL_IDENTITY = (
    "task",
    "model",
    "method",
    "r",
    *UPETU_OPTIONS,
    *LORA_OPTIONS,
    "head_hidden_size",
    "class_names",
    "num_labels",
    "ignore_index",
)
#: Fields that may differ between a run and the run it resumes without changing the result.
RESUME_FREE = (
    "output_dir",
    "resume_from_checkpoint",
    "overwrite",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "hub_token",
    "num_workers",
    "logging_steps",
    "keep_checkpoints",
    "save_total_limit",
    "checkpointing_steps",
    "verify_images",
    "cpu",
)
#: Never written to disk.
SECRET_FIELDS = ("hub_token",)


def flag(name: str) -> str:
    """The command-line spelling of a field: `prompt_size` -> `--prompt-size`."""
    return "--" + name.replace("_", "-")


def normalize_task(task: str) -> str:
    """`"change_detection"` / `"change-detection"` / `"cd"` -> `"change-detection"`; raise on unknown tasks."""
    key = str(task).strip().lower().replace("_", "-")
    key = {"cd": "change-detection", "seg": "segmentation", "cls": "classification"}.get(key, key)
    if key not in TASKS:
        raise ValueError(f"task={task!r} is invalid: allowed values are {', '.join(TASKS)}.")
    return key


@dataclass
class TrainingArguments:
    """Every setting of a `upetu-train` run; `upetu_hf.train.train(args)` consumes it.

    Options left at `None` take a documented default: `lr` the method's default (`DEFAULT_LR`), the UPetu
    options those of `UPetuConfig`, `image_size` the checkpoint's image-processor size (classification) or no
    crop (dense tasks).
    """

    task: str
    model: str
    data: list[str]
    output_dir: str
    method: str = "upetu"
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    seed: int = 42
    # data
    image_size: int | None = None
    resize: int | None = None
    train_fraction: float | None = None
    validation_fraction: float | None = None
    split_seed: int = 0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    image_column: str | None = None
    label_column: str | None = None
    num_labels: int | None = None
    class_names: list[str] | None = None
    ignore_index: int = 255
    verify_images: bool = True
    num_workers: int = 0
    # model
    head_hidden_size: int | None = None
    drop_path_rate: float | None = None
    metric_for_best: str | None = None
    # method options (UPetu; `r` is also the LoRA rank)
    r: int | None = None
    bits: int | None = None
    prompt_size: int | None = None
    activation: str | None = None
    codebook: str | None = None
    side_bits: int | None = None
    use_eqam: bool | None = None
    use_capm: bool | None = None
    stages: list[int] | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    # checkpoints, logging, outputs
    checkpointing_steps: int | str | None = "epoch"
    save_total_limit: int = 2
    keep_checkpoints: bool = False
    resume_from_checkpoint: str | None = None
    overwrite: bool = False
    logging_steps: int = 10
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    hub_token: str | None = field(default=None, repr=False)
    cpu: bool = False

    def __post_init__(self) -> None:
        self.task = normalize_task(self.task)
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [str(d) for d in self.data]
        self.output_dir = str(self.output_dir)
        if isinstance(self.checkpointing_steps, str) and self.checkpointing_steps.isdigit():
            self.checkpointing_steps = int(self.checkpointing_steps)
        if self.checkpointing_steps in ("no", "none", 0):
            self.checkpointing_steps = None
        self.validate()
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ValueError` with a message naming the offending option (as a command-line flag)."""

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        check(
            self.method in METHODS,
            f"--method {self.method!r} is invalid: allowed values are {', '.join(METHODS)}.",
        )
        check(bool(self.model), "--model is required: a Hub model id or a local ConvNeXt checkpoint folder.")
        check(len(self.data) >= 1, "--data is required: a Hub dataset id or a local folder.")
        if self.task != "change-detection":
            check(
                len(self.data) == 1,
                f"--data takes one dataset for {self.task}, got {len(self.data)}: {self.data}.",
            )
        check(bool(self.output_dir), "--output-dir is required.")
        for name in (
            "epochs",
            "batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "save_total_limit",
        ):
            value = getattr(self, name)
            check(
                isinstance(value, int) and value >= 1, f"{flag(name)}={value!r} is invalid: it must be >= 1."
            )
        for name in (
            "eval_batch_size",
            "max_train_samples",
            "max_eval_samples",
            "num_labels",
            "head_hidden_size",
        ):
            value = getattr(self, name)
            check(
                value is None or (isinstance(value, int) and value >= 1),
                f"{flag(name)}={value!r} is invalid: it must be a positive integer.",
            )
        check(self.lr is None or self.lr > 0, f"--lr={self.lr!r} is invalid: it must be > 0.")
        check(self.weight_decay >= 0, f"--weight-decay={self.weight_decay!r} is invalid: it must be >= 0.")
        check(0 <= self.warmup_ratio < 1, f"--warmup-ratio={self.warmup_ratio!r} is invalid: use 0 <= x < 1.")
        check(
            self.max_grad_norm >= 0, f"--max-grad-norm={self.max_grad_norm!r} is invalid: use >= 0 (0 = off)."
        )
        check(
            self.mixed_precision in MIXED_PRECISION,
            f"--mixed-precision {self.mixed_precision!r} is invalid: allowed values are {', '.join(MIXED_PRECISION)}.",
        )
        check(self.num_workers >= 0, f"--num-workers={self.num_workers!r} is invalid: it must be >= 0.")
        for name in ("train_fraction", "validation_fraction"):
            value = getattr(self, name)
            check(
                value is None or 0 < value < 1,
                f"{flag(name)}={value!r} is invalid: it must lie strictly between 0 and 1.",
            )
        check(
            self.drop_path_rate is None or 0 <= self.drop_path_rate < 1,
            f"--drop-path-rate={self.drop_path_rate!r} is invalid: use 0 <= x < 1.",
        )
        if self.image_size is not None:
            check(self.image_size >= 32, f"--image-size={self.image_size} is invalid: it must be >= 32.")
            if self.task == "change-detection":
                check(
                    self.image_size % 32 == 0,
                    f"--image-size={self.image_size} is invalid for change detection: it must be a multiple of "
                    "32 (the backbone stride), e.g. 256.",
                )
        if self.resize is not None:
            check(self.task != "classification", "--resize applies to the dense tasks; use --image-size.")
            check(self.resize >= 32, f"--resize={self.resize} is invalid: it must be >= 32.")
        if self.task == "classification":
            for name in ("num_labels", "class_names"):
                check(
                    getattr(self, name) is None,
                    f"{flag(name)} applies to segmentation only; "
                    "classification takes its classes from the dataset.",
                )
        if self.task == "change-detection":
            check(
                self.class_names is None and self.num_labels in (None, 2),
                "change detection is binary (no change / change): --num-labels and --class-names do not apply.",
            )
        if self.class_names is not None and self.num_labels is not None:
            check(
                len(self.class_names) == self.num_labels,
                f"--class-names has {len(self.class_names)} names but --num-labels is {self.num_labels}.",
            )
        cp = self.checkpointing_steps
        check(
            cp is None or cp == "epoch" or (isinstance(cp, int) and cp >= 1),
            f"--checkpointing-steps={cp!r} is invalid: use a positive number of steps, 'epoch' or 'no'.",
        )
        check(
            not (self.overwrite and self.resume_from_checkpoint),
            "--overwrite and --resume-from-checkpoint exclude each other: resuming continues the run in "
            "--output-dir, --overwrite starts it afresh.",
        )
        check(
            self.hub_model_id is None or self.push_to_hub, "--hub-model-id is only used with --push-to-hub."
        )
        self._validate_method_options()

    def _validate_method_options(self) -> None:
        misplaced = []
        if self.method != "upetu":
            misplaced += [n for n in UPETU_OPTIONS if getattr(self, n) is not None]
        if self.method != "lora":
            misplaced += [n for n in LORA_OPTIONS if getattr(self, n) is not None]
        if self.method not in RANK_METHODS and self.r is not None:
            misplaced.append("r")
        if misplaced:
            owners = {n: "UPetu" for n in UPETU_OPTIONS} | {n: "LoRA" for n in LORA_OPTIONS}
            owners["r"] = "UPetu/LoRA"
            described = ", ".join(f"{flag(n)} ({owners[n]})" for n in misplaced)
            raise ValueError(
                f"{described} do(es) not apply to --method {self.method}: remove them, or choose the method they "
                "belong to."
            )
        if self.method == "upetu":
            # Let UPetuConfig check the values now, before anything is loaded or written.
            from .methods import upetu_config

            upetu_config(self, modules_to_save=None)
        if self.r is not None and (not isinstance(self.r, int) or self.r < 1):
            raise ValueError(f"--r={self.r!r} is invalid: it must be a positive integer.")
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora-dropout={self.lora_dropout!r} is invalid: use 0 <= x < 1.")

    # ------------------------------------------------------------------ derived values
    @property
    def selection_metric(self) -> str:
        """The metric that picks the best epoch (higher is better)."""
        if self.metric_for_best:
            return self.metric_for_best
        return {"classification": "accuracy", "segmentation": "mean_iou", "change-detection": "f1"}[self.task]

    @property
    def per_device_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields except secrets (`hub_token`), JSON-serialisable."""
        values = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            values.pop(name, None)
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingArguments:
        """Inverse of `to_dict`; unknown keys (from a newer version) are ignored with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            warnings.warn(f"Ignoring unknown run-config keys {unknown}.", stacklevel=2)
        return cls(**{k: v for k, v in values.items() if k in known})

    def differences(self, other: TrainingArguments | dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """`{field: (self value, other value)}` for every field that differs."""
        mine = self.to_dict()
        theirs = other.to_dict() if isinstance(other, TrainingArguments) else dict(other)
        return {
            k: (mine.get(k), theirs.get(k))
            for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)
        }


def resolved_model(model: str) -> str:
    """`--model` as a comparable value: the absolute path of a local folder (no trailing `/`), else the Hub id."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def resolved_identity(args: TrainingArguments) -> dict[str, Any]:
    """The `MODEL_IDENTITY` fields of a run with every default resolved, so that `--bits 4` equals leaving the
    default 4 and `./model/` equals `model`. Classes and head width are left out (`None`): the resolved class
    list and the tensor shapes of a checkpoint are compared instead."""
    from .methods import DEFAULT_LORA_R, upetu_config

    values = {name: getattr(args, name) for name in MODEL_IDENTITY}
    values.update(model=resolved_model(args.model), class_names=None, num_labels=None, head_hidden_size=None)
    if args.method == "upetu":
        config = upetu_config(args, modules_to_save=None)
        values.update({name: getattr(config, name) for name in ("r", *UPETU_OPTIONS)})
        values["side_bits"] = config.effective_side_bits
        values["stages"] = sorted(config.stages) if config.stages is not None else None
    elif args.method == "lora":
        r = args.r or DEFAULT_LORA_R
        alpha = args.lora_alpha if args.lora_alpha is not None else 2 * r
        values.update(r=r, lora_alpha=float(alpha), lora_dropout=float(args.lora_dropout or 0.0))
    return values


def flat_config(args: TrainingArguments) -> dict[str, Any]:
    """The run config with only `str`/`int`/`float`/`bool` values, as experiment trackers want it."""
    out: dict[str, Any] = {}
    for key, value in args.to_dict().items():
        if value is None or isinstance(value, (list, tuple, dict)):
            value = json.dumps(value)
        out[key] = value
    return out
