"""Command line: `upetu-train {classification,segmentation,change-detection,eval}` and `upetu-eval`.

Both also run as `python -m upetu_hf.train ...`, under `torchrun` and under `accelerate launch`.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .._files import finite_json
from .arguments import EvalArguments, TrainingArguments, flag
from .tasks import TASKS, get_task

#: Errors caused by the user's input: reported as one line, without a traceback, with exit code 2.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
)


#: OS errors that the user's machine causes and the user can fix (read-only, full or forbidden places).
USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: Exit code of a run stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is an expected failure (bad input, or a fixable OS condition), reported as one line."""
    return isinstance(err, USER_ERRORS) or (isinstance(err, OSError) and err.errno in USER_OS_ERRORS)


def user_error_message(err: BaseException) -> str:
    """One line that names the file and the fix."""
    if isinstance(err, OSError) and err.errno in USER_OS_ERRORS and err.filename:
        where, why = err.filename, err.strerror or "failed"
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"{why}: no space left for {where}; free some space (or choose another --output-dir) and run "
                "again, with --resume-from-checkpoint latest if the run saved checkpoints."
            )
        if err.errno == errno.EFBIG:
            return (
                f"{why}: {where} is larger than this file system or the process's file-size limit (ulimit -f) "
                "allows; raise the limit (or choose another --output-dir) and run again, with "
                "--resume-from-checkpoint latest if the run saved checkpoints."
            )
        if err.errno == errno.EROFS:
            return f"{where} is on a read-only file system ({why}): choose a writable --output-dir."
        return (
            f"permission denied for {where} ({why}): make it writable (readable for inputs) for this user, or "
            "choose another path."
        )
    return " ".join(str(err).split())


def _report(prog: str, err: BaseException) -> int:
    print(f"{prog}: error: {user_error_message(err)}", file=sys.stderr)
    return 2


def _failed(prog: str, err: BaseException, interrupted: Callable[[], None]) -> int:
    """The exit code of an expected failure, reported as one line (`interrupted` prints Ctrl-C's); any other
    error propagates with its traceback."""
    if isinstance(err, KeyboardInterrupt):
        interrupted()
        return INTERRUPTED
    if not is_user_error(err):
        raise err
    return _report(prog, err)


def _interrupted(argv: Sequence[str], output_dir: str) -> None:
    """Ctrl-C: one line, with the command that resumes the run from its newest checkpoint (if it saved one)."""
    from .checkpoint import list_checkpoints

    if list_checkpoints(output_dir):
        kept, skip = [], False
        for arg in argv:  # drop an earlier --resume-from-checkpoint and --overwrite
            if skip or arg in ("--overwrite",):
                skip = False
                continue
            if arg.startswith("--resume-from-checkpoint"):
                skip = "=" not in arg
                continue
            kept.append(arg)
        hint = f"resume it with: upetu-train {shlex.join(kept)} --resume-from-checkpoint latest"
    else:
        hint = "it saved no checkpoint yet; start it again (with --overwrite)."
    print(f"upetu-train: interrupted; {hint}", file=sys.stderr)


_TYPES = {"int": int, "float": float}


def add_options(parser: argparse.ArgumentParser, cls: type, task: str | None = None) -> None:
    """One option per field of the dataclass `cls` that applies to `task`, in field order, in the groups of the
    fields' metadata; the default is the field's own (see `arguments.option`)."""
    groups: dict[str | None, Any] = {None: parser}
    for spec in dataclasses.fields(cls):
        meta = spec.metadata
        if "cli" not in meta or (task is not None and task not in meta["tasks"]):
            continue
        kwargs = dict(meta["cli"])
        name = kwargs.pop("flag", flag(spec.name))
        hint = str(spec.type).replace(" | None", "")
        if hint.startswith("list["):
            kwargs.setdefault("nargs", "+")
            hint = hint[len("list[") : -1]
        if hint == "bool":
            kwargs.setdefault("action", "store_false" if spec.default else "store_true")
        elif hint in _TYPES:
            kwargs.setdefault("type", _TYPES[hint])
        if spec.default is dataclasses.MISSING:
            kwargs["required"] = True
        elif spec.default is not None:
            kwargs["default"] = spec.default
        help_text = get_task(task).option_help.get(spec.name, meta["help"]) if task else meta["help"]
        if help_text:
            kwargs["help"] = help_text
        if name != flag(spec.name):
            kwargs["dest"] = spec.name
        group = meta["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        groups[group].add_argument(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upetu-train",
        description="Train UPetu adapters (or baselines) on ConvNeXt checkpoints with Accelerate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(TASKS) + ",eval}")
    for task in TASKS:
        add_options(
            sub.add_parser(task, help=get_task(task).summary, description=get_task(task).summary),
            TrainingArguments,
            task,
        )
    add_options(
        sub.add_parser("eval", help="evaluate a trained run or write its predictions (= upetu-eval)"),
        EvalArguments,
    )
    return parser


def build_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upetu-eval",
        description="Evaluate a trained upetu-train run on a dataset, or write its predictions.",
    )
    add_options(parser, EvalArguments)
    return parser


def training_arguments(namespace: argparse.Namespace) -> TrainingArguments:
    """`TrainingArguments` from parsed `upetu-train <task>` options."""
    values = {k: v for k, v in vars(namespace).items() if k != "command"}
    return TrainingArguments(task=namespace.command, **values)


def _print_main(data: Any) -> None:
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(finite_json(data), indent=2, default=str, allow_nan=False))


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    keep = {"task", "method", "best_epoch", "selection_split", "selection_metric", "hub_model_id"}
    summary = {k: v for k, v in results.items() if k in keep}
    for split in ("validation", "test"):
        if results.get(split):
            summary[split] = {k: v for k, v in results[split].items() if not isinstance(v, dict)}
    summary["train"] = results.get("train")
    return summary


def _run_eval(namespace: argparse.Namespace, prog: str) -> int:
    from .inference import evaluate_model

    try:
        metrics = evaluate_model(
            EvalArguments(**{k: v for k, v in vars(namespace).items() if k != "command"})
        )
    except (OSError, ValueError, KeyboardInterrupt) as err:
        return _failed(prog, err, lambda: print(f"{prog}: interrupted.", file=sys.stderr))
    _print_main(metrics)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `upetu-train` (and `python -m upetu_hf.train`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    namespace = build_parser().parse_args(argv)
    if namespace.command == "eval":
        return _run_eval(namespace, "upetu-train eval")
    from .loop import train

    # DDP warns about the (harmless) gradient layout of the depthwise 3x3 context kernels of CAPM.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    try:
        results = train(training_arguments(namespace))
    except (OSError, ValueError, KeyboardInterrupt) as err:
        return _failed("upetu-train", err, lambda: _interrupted(argv, namespace.output_dir))
    _print_main(_summary(results))
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `upetu-eval`."""
    return _run_eval(build_eval_parser().parse_args(argv), "upetu-eval")
