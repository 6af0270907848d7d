"""A run's description: `TrainingArguments` and `EvalArguments` (every option, its default, its command-line help,
and all validation), the run record (`run_config.json`) and the names of every file a run writes.

Each field's metadata holds its command-line help, its group and the tasks it applies to; `cli.py` builds the
parsers from them, so every default exists once, here.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.tiling import check_tiling
from .methods import (
    DEFAULT_LR,
    LORA_OPTIONS,
    METHODS,
    RANK_METHODS,
    UPETU_OPTIONS,
    default_head_lr,
    dense_head_lr,
    peft_config,
)
from .tasks import DENSE_TASKS, TASK_METRICS, TASK_SPECS, TASKS, get_task, normalize_task, require

MIXED_PRECISION = ("no", "bf16", "fp16")
SPLITS = ("train", "validation", "test", "all")

# ---- what a run writes into --output-dir (besides the adapter or model files of `upetu_hf.hub`)
RUN_CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.json"
LOGS_DIR = "logs"
LOG_FILE = "log.jsonl"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".upetu-train.lock"
#: TensorBoard's folder inside `logs/` (Accelerate names it after the project of `init_trackers`).
TENSORBOARD_RUN = "upetu-train"

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
    "bands",
    "num_channels",
    "new_band_scale",
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


#: Value checks of single fields (`option(check=...)`): what a valid value is, and the message's end otherwise.
CHECKS = {
    "count": (lambda v: isinstance(v, int) and v >= 1, "it must be >= 1"),
    "optional count": (
        lambda v: v is None or (isinstance(v, int) and v >= 1),
        "it must be a positive integer",
    ),
    "positive": (lambda v: v is None or v > 0, "it must be > 0"),
    "non-negative": (lambda v: v >= 0, "it must be >= 0"),
    "fraction": (lambda v: v is None or 0 < v < 1, "it must lie strictly between 0 and 1"),
    "rate": (lambda v: v is None or 0 <= v < 1, "use 0 <= x < 1"),
    "clip": (lambda v: v >= 0, "use >= 0 (0 = off)"),
}


def option(default: Any = None, help: str | None = None, group: str | None = None, **cli: Any):
    """A dataclass field with its command-line form: `help` (its text; a task may word it its own way,
    `TaskSpec.option_help`), `group` (of the help), `tasks` (those whose parser offers it; default all), `check`
    (one of `CHECKS`, which `validate` applies) and argparse keywords (`flag`, `action`, `choices`, ...) where the
    type annotation does not say them."""
    tasks, repr_, check = cli.pop("tasks", TASKS), cli.pop("repr", True), cli.pop("check", None)
    metadata = {"help": help, "group": group, "tasks": tasks, "check": check, "cli": cli}
    if default is dataclasses.MISSING:
        return field(metadata=metadata, repr=repr_)
    return field(default=default, metadata=metadata, repr=repr_)


def required(help: str, group: str | None = "required", **cli: Any):
    """A field without default: a required command-line option."""
    return option(dataclasses.MISSING, help, group, **cli)


#: the dense tasks' default head learning rates and decoder widths, for the help of `head_lr`
_DENSE_HEAD_LRS = " and ".join(
    f"{s.head_lr:g} on {s.name.replace('-', ' ')}" for s in TASK_SPECS.values() if s.head_lr is not None
)
_DECODER_WIDTHS = " and ".join(str(s.decoder_width) for s in TASK_SPECS.values() if s.decoder_width)
METHOD, OPTIM, DATA, MODEL, RUN = "method", "optimisation", "data", "model", "checkpoints, logging, outputs"
BANDS, SCENES, HARDWARE = "multispectral bands", "scenes of any size", "batches and hardware"
TILE_WINDOWS = ("uniform", "hann")
#: `--band-statistics` values besides a JSON file's path.
BAND_STATISTICS = ("train", "processor")


def parse_bands(values: list[str | int] | None) -> list[str | int] | None:
    """`--bands` values: band names stay strings, integers (or digit strings such as "3") become 0-based indices."""
    if values is None:
        return None
    return [int(v) if isinstance(v, str) and v.strip().isdigit() else v for v in values]


def parse_crops(value: int | str) -> int | str:
    """`--crops-per-image`: a positive integer, or "auto" (see `upetu_hf.data.crops.default_crops_per_image`)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


@dataclass
class TrainingArguments:
    """Every setting of a `upetu-train` run; `upetu_hf.train.train(args)` consumes it.

    Options left at `None` take a documented default: `lr` the method's default (`DEFAULT_LR`), the UPetu
    options those of `UPetuConfig`, `image_size` the checkpoint's image-processor size (classification) or no
    crop (dense tasks).
    """

    task: str
    model: str = required("Hub model id or local folder of a ConvNeXt checkpoint.")
    data: list[str] = required("Hub dataset id or local folder.")
    output_dir: str = required("Where the run writes its outputs.")
    # method options (UPetu; `r` is also the LoRA rank)
    method: str = option(
        "upetu",
        "upetu (default), or a baseline: full fine-tuning, linear probe, lora, ia3.",
        METHOD,
        choices=METHODS,
    )
    r: int | None = option(
        None, "UPetu EQAM bottleneck (default 16) / LoRA rank (default 8).", METHOD, check="optional count"
    )
    bits: int | None = option(None, "UPetu: Q-Linear bit width 1, 2, 4 (default), 8 or 32.", METHOD)
    prompt_size: int | None = option(None, "UPetu: side of the CAPM prompt maps (default 4).", METHOD)
    activation: str | None = option(None, "UPetu: EQAM activation (default gelu).", METHOD)
    codebook: str | None = option(None, "UPetu: lloyd (default) or quantile.", METHOD)
    side_bits: int | None = option(None, "UPetu: side-tensor storage bits 8, 16 or 32.", METHOD)
    conv_kernel: int | None = option(
        None,
        "UPetu: depthwise k x k convolution in the EQAM bottleneck (default 0: none; 3, 5 or 7).",
        METHOD,
    )
    norm_affine: bool | None = option(
        None,
        "UPetu: also train a correction of each adapted block's LayerNorm affine.",
        METHOD,
        flag="--norm-affine",
        action="store_const",
        const=True,
    )
    use_eqam: bool | None = option(
        None, "UPetu: no EQAM.", METHOD, flag="--no-eqam", action="store_const", const=False
    )
    use_capm: bool | None = option(
        None, "UPetu: no CAPM.", METHOD, flag="--no-capm", action="store_const", const=False
    )
    stages: list[int] | None = option(None, "UPetu: 0-based stages to adapt (default all).", METHOD)
    lora_alpha: float | None = option(None, "LoRA: alpha (default 2 * r).", METHOD)
    lora_dropout: float | None = option(None, "LoRA: dropout (default 0).", METHOD, check="rate")
    # optimisation
    epochs: int = option(10, None, OPTIM, check="count")
    batch_size: int = option(32, "Per-process training batch size.", OPTIM, check="count")
    eval_batch_size: int | None = option(
        None, "Per-process evaluation batch size (default --batch-size).", OPTIM, check="optional count"
    )
    lr: float | None = option(
        None,
        f"Peak learning rate (defaults: {', '.join(f'{m} {lr:g}' for m, lr in DEFAULT_LR.items())}).",
        OPTIM,
        check="positive",
    )
    head_lr: float | None = option(
        None,
        "Learning rate of the task heads (classifier, UperNet, change-detection decoder). Default: "
        f"for upetu/lora/ia3 {_DENSE_HEAD_LRS}, whose freshly initialised decoders are much larger than the "
        "adapter, scaled by default width / --head-hidden-size for decoders of another width (defaults "
        f"{_DECODER_WIDTHS}: --head-hidden-size 64 trains a UperNet at {dense_head_lr('segmentation', 64):g}); "
        "otherwise --lr.",
        OPTIM,
        check="positive",
    )
    weight_decay: float = option(
        0.05,
        "AdamW weight decay on weight matrices and kernels only (default 0.05).",
        OPTIM,
        check="non-negative",
    )
    warmup_ratio: float = option(0.05, "Linear warmup share of the steps.", OPTIM, check="rate")
    gradient_accumulation_steps: int = option(1, None, OPTIM, check="count")
    max_grad_norm: float = option(1.0, "Gradient clipping (0 = off).", OPTIM, check="clip")
    mixed_precision: str = option("no", "fp16 needs a GPU.", OPTIM, choices=MIXED_PRECISION)
    seed: int = option(42, None, OPTIM)
    # data
    image_size: int | None = option(None, "Random training crop (default: whole images).", DATA)
    train_fraction: float | None = option(
        None,
        "Split a single folder: this share of each class trains, the rest tests (UCM-55: 0.5).",
        DATA,
        check="fraction",
    )
    validation_fraction: float | None = option(
        None,
        "Carve this share of train out as validation; the best epoch is then picked on it.",
        DATA,
        check="fraction",
    )
    split_seed: int = option(0, "Seed of the splits (default 0).", DATA)
    max_train_samples: int | None = option(None, None, DATA, check="optional count")
    max_eval_samples: int | None = option(None, None, DATA, check="optional count")
    image_column: str | None = option(None, "Image column of a Hub dataset.", DATA)
    label_column: str | None = option(None, "Label (mask) column of a Hub dataset.", DATA)
    verify_images: bool = option(
        True, "Skip decoding every local image before training.", DATA, flag="--no-verify-images"
    )
    num_workers: int = option(0, "DataLoader workers per process.", DATA, check="non-negative")
    resize: int | None = option(
        None, "Resize images and masks to this size first (train and eval).", DATA, tasks=DENSE_TASKS
    )
    ignore_index: int = option(255, "Label value ignored by loss and metrics.", DATA, tasks=DENSE_TASKS)
    num_labels: int | None = option(
        None,
        "Number of classes (or --class-names, or classes.json).",
        DATA,
        tasks=("segmentation",),
        check="optional count",
    )
    class_names: list[str] | None = option(
        None, "Class names, in label order.", DATA, tasks=("segmentation",)
    )
    crops_per_image: int | str = option(
        "auto",
        "Random training crops drawn from every scene per epoch: a number, or 'auto' (default: enough crops of "
        "--image-size to cover the average training scene once, at most 64; 1 without --image-size).",
        DATA,
        tasks=DENSE_TASKS,
    )
    # multispectral bands
    bands: list[str | int] | None = option(
        None,
        "Bands to use, by name (bands.json next to the data; Sentinel-2 names B01..B12 for 13-band files) or "
        "0-based index, e.g. --bands B04 B03 B02 B08 (default: every band of the files).",
        BANDS,
    )
    num_channels: int | None = option(
        None,
        "Band count the images must have (default: read from the files; checked when the data is scanned).",
        BANDS,
        check="optional count",
    )
    new_band_scale: float = option(
        0.0,
        "Inflating an RGB stem: the kernels of non-RGB bands start at this times the mean RGB kernel (0: zero).",
        BANDS,
    )
    stem_lr: float | None = option(
        None,
        "Learning rate of an inflated stem, which trains with the adapter (default 5e-4, full fine-tuning's: the "
        "pretrained kernels change gently, the new bands' kernels grow from zero).",
        BANDS,
        check="positive",
    )
    band_statistics: str | None = option(
        None,
        "Per-band mean/std: 'train' (computed on the training split in one pass; the default for multi-band "
        "files), 'processor' (the checkpoint's image_mean/image_std, one per band; the default for RGB) or a JSON "
        "file with 'mean' and 'std' lists.",
        BANDS,
    )
    # scenes of any size (dense evaluation)
    tile_size: int | None = option(
        None,
        "Evaluate scenes with a sliding window of this side (a multiple of 32); default: the whole scene, padded "
        "to a multiple of 32 and cropped back.",
        SCENES,
        tasks=DENSE_TASKS,
        check="optional count",
    )
    tile_overlap: int = option(
        0, "Pixels shared by neighbouring tiles (a multiple of 32).", SCENES, tasks=DENSE_TASKS
    )
    tile_window: str = option(
        "uniform",
        "How overlapping tiles are averaged: uniform or hann (tile centres weigh more).",
        SCENES,
        tasks=DENSE_TASKS,
        choices=TILE_WINDOWS,
    )
    # model
    drop_path_rate: float | None = option(None, "Stochastic depth of the backbone.", MODEL, check="rate")
    metric_for_best: str | None = option(
        None,
        f"Metric that picks the best epoch (default: {' / '.join(m[0] for m in TASK_METRICS.values())}).",
        MODEL,
    )
    head_hidden_size: int | None = option(
        None,
        "Channels of the freshly built decoder (default: "
        + ", ".join(f"{s.decoder_name}'s {s.decoder_width}" for s in TASK_SPECS.values() if s.decoder_width)
        + ").",
        MODEL,
        tasks=DENSE_TASKS,
        check="optional count",
    )
    dice_weight: float = option(
        0.0,
        "Add this times a soft-Dice loss to the cross-entropy (for rare changes, e.g. 1.0 on OSCD).",
        MODEL,
        tasks=("change-detection",),
        check="non-negative",
    )
    # checkpoints, logging, outputs
    checkpointing_steps: int | str | None = option(
        "epoch", "Save a resumable checkpoint every N optimizer steps, every 'epoch' (default) or 'no'.", RUN
    )
    save_total_limit: int = option(2, "Checkpoints kept (default 2).", RUN, check="count")
    keep_checkpoints: bool = option(False, "Keep checkpoints/ after a successful run.", RUN)
    resume_from_checkpoint: str | None = option(
        None,
        "Resume from a checkpoint folder, or 'latest' (the default when given without a value).",
        RUN,
        nargs="?",
        const="latest",
    )
    overwrite: bool = option(
        False, "Replace the previous upetu-train run in --output-dir (only its own files).", RUN
    )
    logging_steps: int = option(10, None, RUN, check="count")
    push_to_hub: bool = option(False, "Upload the outputs to the Hub at the end.", RUN)
    hub_model_id: str | None = option(
        None, "Hub repo of --push-to-hub (default: the output folder's name).", RUN
    )
    hub_private: bool = option(False, None, RUN)
    hub_token: str | None = option(None, "Hub token (default: the logged-in one).", RUN, repr=False)
    cpu: bool = option(False, "Train on CPU even if a GPU is available.", RUN)

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
        self.bands = parse_bands(self.bands)
        self.crops_per_image = parse_crops(self.crops_per_image)
        self.validate()
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if self.head_lr is None:
            self.head_lr = default_head_lr(self.task, self.method, self.lr, self.head_hidden_size)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ValueError` with a message naming the offending option (as a command-line flag)."""
        require(
            self.method in METHODS,
            f"--method {self.method!r} is invalid: allowed values are {', '.join(METHODS)}.",
        )
        require(
            bool(self.model), "--model is required: a Hub model id or a local ConvNeXt checkpoint folder."
        )
        require(len(self.data) >= 1, "--data is required: a Hub dataset id or a local folder.")
        require(bool(self.output_dir), "--output-dir is required.")
        self._validate_numbers()
        get_task(self.task).check_options(self)
        self._validate_band_options()
        check_tile_options(self.tile_size, self.tile_overlap, self.tile_window)
        self._validate_run_options()
        self._validate_method_options()

    def _validate_numbers(self) -> None:
        for spec in dataclasses.fields(self):
            if spec.metadata.get("check"):
                valid, requirement = CHECKS[spec.metadata["check"]]
                value = getattr(self, spec.name)
                require(valid(value), f"{flag(spec.name)}={value!r} is invalid: {requirement}.")
        require(
            self.mixed_precision in MIXED_PRECISION,
            f"--mixed-precision {self.mixed_precision!r} is invalid: allowed values are {', '.join(MIXED_PRECISION)}.",
        )

    def _validate_band_options(self) -> None:
        crops = self.crops_per_image
        require(
            crops == "auto" or (isinstance(crops, int) and not isinstance(crops, bool) and crops >= 1),
            f"--crops-per-image={crops!r} is invalid: use a positive number of crops or 'auto'.",
        )
        require(
            get_task(self.task).dense or crops in ("auto", 1),
            "--crops-per-image applies to segmentation and change detection (random crops of large scenes).",
        )
        if self.bands is not None:
            require(len(self.bands) >= 1, "--bands needs at least one band name or index.")
            require(len(set(self.bands)) == len(self.bands), f"--bands {self.bands} names a band twice.")
        stats = self.band_statistics
        require(
            stats is None or stats in BAND_STATISTICS or stats.lower().endswith(".json"),
            f"--band-statistics {stats!r} is invalid: use 'train', 'processor' or the path of a .json file with "
            "'mean' and 'std' lists.",
        )

    def _validate_run_options(self) -> None:
        cp = self.checkpointing_steps
        require(
            cp is None or cp == "epoch" or (isinstance(cp, int) and cp >= 1),
            f"--checkpointing-steps={cp!r} is invalid: use a positive number of steps, 'epoch' or 'no'.",
        )
        require(
            not (self.overwrite and self.resume_from_checkpoint),
            "--overwrite and --resume-from-checkpoint exclude each other: resuming continues the run in "
            "--output-dir, --overwrite starts it afresh.",
        )
        require(
            self.hub_model_id is None or self.push_to_hub, "--hub-model-id is only used with --push-to-hub."
        )

    def _validate_method_options(self) -> None:
        misplaced = []
        if self.method != "upetu":
            misplaced += [n for n in UPETU_OPTIONS if getattr(self, n) is not None]
        if self.method != "lora":
            misplaced += [n for n in LORA_OPTIONS if getattr(self, n) is not None]
        if self.method not in RANK_METHODS and self.r is not None:
            misplaced.append("r")
        if misplaced:
            owners = (
                {n: "UPetu" for n in UPETU_OPTIONS} | {n: "LoRA" for n in LORA_OPTIONS} | {"r": "UPetu/LoRA"}
            )
            described = ", ".join(f"{flag(n)} ({owners[n]})" for n in misplaced)
            raise ValueError(
                f"{described} do(es) not apply to --method {self.method}: remove them, or choose the method they "
                "belong to."
            )
        if self.method == "upetu":
            self.peft_config()  # UPetuConfig checks the values now, before anything is loaded or written

    def check_device(self, device_type: str) -> None:
        """Refuse settings the device the run got cannot honour (known once Accelerate has chosen it)."""
        require(
            not (self.mixed_precision == "fp16" and device_type == "cpu"),
            "--mixed-precision fp16 needs a GPU; use bf16 on CPU.",
        )

    # ------------------------------------------------------------------ derived values
    def method_options(self) -> dict[str, Any]:
        """The options given for the method (`r`, the UPetu or the LoRA options), for `apply_method`."""
        names = {"upetu": ("r", *UPETU_OPTIONS), "lora": ("r", *LORA_OPTIONS)}.get(self.method, ())
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def peft_config(self, heads: list[str] | None = None):
        """The PEFT config of a PEFT method with every default resolved (`upetu_hf.train.methods.peft_config`)."""
        return peft_config(self.method, heads, **self.method_options())

    @property
    def selection_metric(self) -> str:
        """The metric that picks the best epoch (higher is better)."""
        return self.metric_for_best or TASK_METRICS[self.task][0]

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
        keys = sorted(set(mine) | set(theirs))
        return {k: (mine.get(k), theirs.get(k)) for k in keys if mine.get(k) != theirs.get(k)}

    def resolved_identity(self) -> dict[str, Any]:
        """The `MODEL_IDENTITY` fields with every default resolved, so that `--bits 4` equals leaving the default 4
        and `./model/` equals `model`. Classes and head width are left out (`None`): the resolved class list and the
        tensor shapes of a checkpoint are compared instead."""
        values = {name: getattr(self, name) for name in MODEL_IDENTITY}
        path = Path(self.model).expanduser()
        values.update(
            model=str(path.resolve()) if path.is_dir() else self.model,
            class_names=None,
            num_labels=None,
            head_hidden_size=None,
        )
        if self.method == "upetu":
            config = self.peft_config()
            values.update({name: getattr(config, name) for name in ("r", *UPETU_OPTIONS)})
            values["side_bits"] = config.effective_side_bits
            values["stages"] = sorted(config.stages) if config.stages is not None else None
        elif self.method == "lora":
            config = self.peft_config()
            values.update(
                r=config.r, lora_alpha=float(config.lora_alpha), lora_dropout=float(config.lora_dropout)
            )
        return values

    def flat(self) -> dict[str, Any]:
        """The run config with only `str`/`int`/`float`/`bool` values, as experiment trackers want it."""
        return {
            k: json.dumps(v) if v is None or isinstance(v, (list, tuple, dict)) else v
            for k, v in self.to_dict().items()
        }


def check_tile_options(tile_size: int | None, tile_overlap: int, tile_window: str, stride: int = 32) -> None:
    """`--tile-size` / `--tile-overlap` / `--tile-window` (`upetu_hf.models.tiling.check_tiling`, with the flags
    named); `stride` is the backbone's total stride (32 for every released ConvNeXt; the model's own is checked
    again once it is loaded)."""
    require(
        tile_window in TILE_WINDOWS,
        f"--tile-window {tile_window!r} is invalid: allowed values are {', '.join(TILE_WINDOWS)}.",
    )
    if tile_size is None:
        require(tile_overlap == 0, "--tile-overlap needs --tile-size (the sliding window's side).")
        return
    try:
        check_tiling(tile_size, tile_overlap, stride)
    except ValueError as err:
        message = str(err).replace("tile_size=", "--tile-size=").replace("tile_overlap=", "--tile-overlap=")
        raise ValueError(message) from None


@dataclass
class EvalArguments:
    """Settings of `upetu-eval`. Data settings left at None are taken from the trained run (so by default the
    run's own test split is evaluated, reproducing the reported metrics)."""

    adapter: str = required("Output folder of an upetu-train run, or the Hub repo it was pushed to.", None)
    model: str | None = option(None, "Base checkpoint (default: the run's --model).", MODEL)
    data: list[str] | None = option(None, "Dataset (default: the run's).", DATA)
    split: str = option(
        "test",
        "Which split of the run's splits to use, or 'all' of --data (default test).",
        DATA,
        choices=SPLITS,
    )
    train_fraction: float | None = option(
        None, "Training share when --data is split (default: the run's).", DATA
    )
    validation_fraction: float | None = option(None, "Validation share (default: the run's).", DATA)
    split_seed: int | None = option(None, "Seed of the split (default: the run's).", DATA)
    max_eval_samples: int | None = option(
        None, "Evaluate at most this many items (default: the run's).", DATA
    )
    image_size: int | None = option(None, "Input side in pixels (default: the run's).", DATA)
    resize: int | None = option(None, "Resize side before the crop (default: the run's).", DATA)
    tile_size: int | None = option(
        None,
        "Sliding-window side for segmentation / change detection (default: the run's, else whole scenes).",
        SCENES,
    )
    tile_overlap: int | None = option(None, "Tile overlap (default: the run's).", SCENES)
    tile_window: str | None = option(
        None, "uniform or hann (default: the run's).", SCENES, choices=TILE_WINDOWS
    )
    batch_size: int | None = option(None, "Batch size (default: the run's evaluation batch size).", HARDWARE)
    predict_dir: str | None = option(
        None, "Write predictions here: predictions.csv, or one PNG mask per image.", RUN
    )
    metrics_file: str | None = option(None, "Also write the metrics to this JSON file.", RUN)
    mixed_precision: str = option("no", "fp16 needs a GPU.", HARDWARE, choices=MIXED_PRECISION)
    num_workers: int = option(0, "DataLoader workers.", HARDWARE)
    cpu: bool = option(False, "Evaluate on CPU even if a GPU is available.", HARDWARE)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        require(
            self.split in SPLITS,
            f"--split {self.split!r} is invalid: allowed values are {', '.join(SPLITS)}.",
        )
        require(
            self.mixed_precision in MIXED_PRECISION,
            f"--mixed-precision {self.mixed_precision!r} is invalid: use {', '.join(MIXED_PRECISION)}.",
        )
        require(
            self.batch_size is None or self.batch_size >= 1,
            f"--batch-size={self.batch_size} is invalid: it must be >= 1.",
        )
        if self.tile_size is not None or self.tile_overlap:
            check_tile_options(self.tile_size, self.tile_overlap or 0, self.tile_window or "uniform")

    def data_overrides(self) -> dict[str, Any]:
        """The data settings given, which replace the trained run's."""
        names = (
            "data",
            "train_fraction",
            "validation_fraction",
            "split_seed",
            "max_eval_samples",
            "image_size",
        )
        names = (*names, "resize", "tile_size", "tile_overlap", "tile_window")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


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
