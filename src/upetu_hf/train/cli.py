"""Command line: `upetu-train {classification,segmentation,change-detection,eval}` and `upetu-eval`.

Both also run as `python -m upetu_hf.train ...`, under `torchrun` and under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .config import DEFAULT_LR, METHODS, MIXED_PRECISION, TASKS, TrainingArguments
from .evaluate import SPLITS, EvalArguments

#: Errors caused by the user's input: reported as one line, without a traceback, with exit code 2.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
)


def user_error_message(err: BaseException) -> str:
    """One line that names the file and the fix."""
    if isinstance(err, PermissionError) and err.filename:
        return (
            f"permission denied for {err.filename}: make it writable (readable for inputs) for this user, or "
            "choose another path."
        )
    return " ".join(str(err).split())


def _report(prog: str, err: BaseException) -> int:
    print(f"{prog}: error: {user_error_message(err)}", file=sys.stderr)
    return 2


TASK_HELP = {
    "classification": "scene classification: <root>/<class>/*.jpg folders or Hub datasets (image, label)",
    "segmentation": "semantic segmentation (UperNet): <root>/images + <root>/masks or Hub datasets (image, mask)",
    "change-detection": "binary change detection: <root>/A, <root>/B, <root>/label or Hub datasets",
}


def _add_training_options(parser: argparse.ArgumentParser, task: str) -> None:
    required = parser.add_argument_group("required")
    required.add_argument(
        "--model", required=True, help="Hub model id or local folder of a ConvNeXt checkpoint."
    )
    required.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="Hub dataset id or local folder"
        + (" (several roots are concatenated)" if task == "change-detection" else "")
        + ".",
    )
    required.add_argument("--output-dir", required=True, help="Where the run writes its outputs.")

    method = parser.add_argument_group("method")
    lrs = ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LR.items())
    method.add_argument(
        "--method",
        default="upetu",
        choices=METHODS,
        help="upetu (default), or a baseline: full fine-tuning, linear probe, lora, ia3.",
    )
    method.add_argument("--r", type=int, help="UPetu EQAM bottleneck (default 16) / LoRA rank (default 8).")
    method.add_argument("--bits", type=int, help="UPetu: Q-Linear bit width 1, 2, 4 (default), 8 or 32.")
    method.add_argument("--prompt-size", type=int, help="UPetu: side of the CAPM prompt maps (default 4).")
    method.add_argument("--activation", help="UPetu: EQAM activation (default gelu).")
    method.add_argument("--codebook", help="UPetu: lloyd (default) or quantile.")
    method.add_argument("--side-bits", type=int, help="UPetu: side-tensor storage bits 8, 16 or 32.")
    method.add_argument(
        "--no-eqam", dest="use_eqam", action="store_const", const=False, help="UPetu: no EQAM."
    )
    method.add_argument(
        "--no-capm", dest="use_capm", action="store_const", const=False, help="UPetu: no CAPM."
    )
    method.add_argument("--stages", type=int, nargs="+", help="UPetu: 0-based stages to adapt (default all).")
    method.add_argument("--lora-alpha", type=float, help="LoRA: alpha (default 2 * r).")
    method.add_argument("--lora-dropout", type=float, help="LoRA: dropout (default 0).")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=10)
    optim.add_argument("--batch-size", type=int, default=32, help="Per-process training batch size.")
    optim.add_argument(
        "--eval-batch-size", type=int, help="Per-process evaluation batch size (default --batch-size)."
    )
    optim.add_argument("--lr", type=float, help=f"Peak learning rate (defaults: {lrs}).")
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=0.05,
        help="AdamW weight decay on weight matrices and kernels only (default 0.05).",
    )
    optim.add_argument("--warmup-ratio", type=float, default=0.05, help="Linear warmup share of the steps.")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1)
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="Gradient clipping (0 = off).")
    optim.add_argument("--mixed-precision", default="no", choices=MIXED_PRECISION, help="fp16 needs a GPU.")
    optim.add_argument("--seed", type=int, default=42)

    data = parser.add_argument_group("data")
    data.add_argument(
        "--image-size",
        type=int,
        help="Input size (default: the checkpoint's image processor, else 224)."
        if task == "classification"
        else "Random training crop (default: whole images).",
    )
    data.add_argument(
        "--train-fraction",
        type=float,
        help="Split a single folder: this share of each class trains, the rest tests (UCM-55: 0.5).",
    )
    data.add_argument(
        "--validation-fraction",
        type=float,
        help="Carve this share of train out as validation; the best epoch is then picked on it.",
    )
    data.add_argument("--split-seed", type=int, default=0, help="Seed of the splits (default 0).")
    data.add_argument("--max-train-samples", type=int)
    data.add_argument("--max-eval-samples", type=int)
    data.add_argument("--image-column", help="Image column of a Hub dataset.")
    data.add_argument("--label-column", help="Label (mask) column of a Hub dataset.")
    data.add_argument(
        "--no-verify-images",
        dest="verify_images",
        action="store_false",
        help="Skip decoding every local image before training.",
    )
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process.")
    if task != "classification":
        data.add_argument(
            "--resize", type=int, help="Resize images and masks to this size first (train and eval)."
        )
        data.add_argument(
            "--ignore-index", type=int, default=255, help="Label value ignored by loss and metrics."
        )
    if task == "segmentation":
        data.add_argument(
            "--num-labels", type=int, help="Number of classes (or --class-names, or classes.json)."
        )
        data.add_argument("--class-names", nargs="+", help="Class names, in label order.")

    model = parser.add_argument_group("model")
    model.add_argument("--drop-path-rate", type=float, help="Stochastic depth of the backbone.")
    model.add_argument(
        "--metric-for-best", help="Metric that picks the best epoch (default: accuracy / mean_iou / f1)."
    )
    if task != "classification":
        model.add_argument(
            "--head-hidden-size", type=int, help="Channels of the decoder (default: the model's)."
        )

    run = parser.add_argument_group("checkpoints, logging, outputs")
    run.add_argument(
        "--checkpointing-steps",
        default="epoch",
        help="Save a resumable checkpoint every N optimizer steps, every 'epoch' (default) or 'no'.",
    )
    run.add_argument("--save-total-limit", type=int, default=2, help="Checkpoints kept (default 2).")
    run.add_argument(
        "--keep-checkpoints", action="store_true", help="Keep checkpoints/ after a successful run."
    )
    run.add_argument(
        "--resume-from-checkpoint",
        nargs="?",
        const="latest",
        help="Resume from a checkpoint folder, or 'latest' (the default when given without a value).",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace the previous upetu-train run in --output-dir (only its own files).",
    )
    run.add_argument("--logging-steps", type=int, default=10)
    run.add_argument("--push-to-hub", action="store_true", help="Upload the outputs to the Hub at the end.")
    run.add_argument("--hub-model-id", help="Hub repo of --push-to-hub (default: the output folder's name).")
    run.add_argument("--hub-private", action="store_true")
    run.add_argument("--hub-token", help="Hub token (default: the logged-in one).")
    run.add_argument("--cpu", action="store_true", help="Train on CPU even if a GPU is available.")


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter",
        required=True,
        help="Output folder of an upetu-train run, or the Hub repo it was pushed to.",
    )
    parser.add_argument("--model", help="Base checkpoint (default: the run's --model).")
    parser.add_argument("--data", nargs="+", help="Dataset (default: the run's).")
    parser.add_argument(
        "--split",
        default="test",
        choices=SPLITS,
        help="Which split of the run's splits to use, or 'all' of --data (default test).",
    )
    parser.add_argument("--train-fraction", type=float)
    parser.add_argument("--validation-fraction", type=float)
    parser.add_argument("--split-seed", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--resize", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument(
        "--predict-dir", help="Write predictions here: predictions.csv, or one PNG mask per image."
    )
    parser.add_argument("--metrics-file", help="Also write the metrics to this JSON file.")
    parser.add_argument("--mixed-precision", default="no", choices=MIXED_PRECISION)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--cpu", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upetu-train",
        description="Train UPetu adapters (or baselines) on ConvNeXt checkpoints with Accelerate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(TASKS) + ",eval}")
    for task in TASKS:
        _add_training_options(sub.add_parser(task, help=TASK_HELP[task], description=TASK_HELP[task]), task)
    _add_eval_options(
        sub.add_parser("eval", help="evaluate a trained run or write its predictions (= upetu-eval)")
    )
    return parser


def build_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upetu-eval",
        description="Evaluate a trained upetu-train run on a dataset, or write its predictions.",
    )
    _add_eval_options(parser)
    return parser


def training_arguments(namespace: argparse.Namespace) -> TrainingArguments:
    """`TrainingArguments` from parsed `upetu-train <task>` options."""
    values = {k: v for k, v in vars(namespace).items() if k != "command"}
    return TrainingArguments(task=namespace.command, **values)


def _print_main(data: Any) -> None:
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(data, indent=2, default=str))


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    keep = {"task", "method", "best_epoch", "selection_split", "selection_metric", "hub_model_id"}
    summary = {k: v for k, v in results.items() if k in keep}
    for split in ("validation", "test"):
        if results.get(split):
            summary[split] = {k: v for k, v in results[split].items() if not isinstance(v, dict)}
    summary["train"] = results.get("train")
    return summary


def _run_eval(namespace: argparse.Namespace, prog: str) -> int:
    from .evaluate import evaluate_model

    try:
        metrics = evaluate_model(
            EvalArguments(**{k: v for k, v in vars(namespace).items() if k != "command"})
        )
    except USER_ERRORS as err:
        return _report(prog, err)
    _print_main(metrics)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `upetu-train` (and `python -m upetu_hf.train`)."""
    namespace = build_parser().parse_args(argv)
    if namespace.command == "eval":
        return _run_eval(namespace, "upetu-train eval")
    from .loop import train

    # DDP warns about the (harmless) gradient layout of the depthwise 3x3 context kernels of CAPM.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    try:
        results = train(training_arguments(namespace))
    except USER_ERRORS as err:
        return _report("upetu-train", err)
    _print_main(_summary(results))
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `upetu-eval`."""
    return _run_eval(build_eval_parser().parse_args(argv), "upetu-eval")
