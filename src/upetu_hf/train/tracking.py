"""Experiment tracking through Accelerate: a JSON-lines log always, TensorBoard when it is installed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process
from accelerate.utils import is_tensorboard_available

from .._files import finite_json, write_atomic
from .arguments import LOG_FILE


class JsonLinesTracker(GeneralTracker):
    """An Accelerate tracker that appends one JSON object per `accelerator.log` call to `path`:
    `{"step": ..., "time": ..., **values}`. Each line is written with one `write` and flushed; `lines` counts the
    lines of the file, so a checkpoint can record where the log stood."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self._file = None
        self.lines = 0

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            with open(self.path, "rb") as handle:
                self.lines = sum(1 for _ in handle)
        self._file = open(self.path, "a", encoding="utf-8")

    @property
    def tracker(self):
        return self._file

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        pass  # the run's configuration is run_config.json

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        record = finite_json({"step": step, "time": round(time.time(), 3), **values})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self.lines += 1

    @on_main_process
    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def trackers(logging_dir: str | os.PathLike) -> list:
    """The trackers of a run: JSON lines in `logging_dir/log.jsonl`, plus TensorBoard when installed."""
    selected: list = [JsonLinesTracker(Path(logging_dir) / LOG_FILE)]
    if is_tensorboard_available():
        selected.append("tensorboard")
    return selected


def truncate_log(path: str | os.PathLike, last_step: int, lines: int | None = None) -> None:
    """On resume: keep the log as it stood at the checkpoint, i.e. its first `lines` lines when the checkpoint
    recorded them (entries logged at the checkpoint's own step after it was saved, such as the test metrics of a
    finished run, then go too), else the complete lines up to `last_step`. A killed run may have logged past its
    last checkpoint, or died in the middle of a line."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines()[:lines]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (record.get("step") is None or record["step"] <= last_step):
            kept.append(line)
    write_atomic(path, "".join(f"{line}\n" for line in kept))
