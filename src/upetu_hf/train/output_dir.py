"""The run's `--output-dir`: one run at a time (a lock file), what may be written into it, and what `--overwrite`
removes (only a previous run's own files, never the model being trained from nor anything else)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from .._files import MANIFEST_FILE, manifest_names, read_json
from ..hub import saved_file_names
from .arguments import (
    LOCK_FILE,
    LOG_FILE,
    LOGS_DIR,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    TENSORBOARD_RUN,
    TrainingArguments,
)
from .checkpoint import remove_checkpoints
from .methods import PEFT_METHODS

#: A lock file younger than this may still be being written by the run that created it.
_FRESH_LOCK_S = 10.0


# ---------------------------------------------------------------------------------------------- lock
def _process_start(pid: int) -> str | None:
    """Start time of a process (Linux `/proc`), which tells a live run from a new process reusing its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_is_gone(holder: dict[str, Any] | None, lock: Path) -> bool:
    """Whether the run that wrote this lock has ended (a killed run leaves its lock behind)."""
    if not holder:  # unreadable: possibly being written right now
        try:
            return time.time() - lock.stat().st_mtime > _FRESH_LOCK_S
        except FileNotFoundError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell for another machine
    pid = int(holder.get("pid", -1))
    if pid <= 0 or not _alive(pid):
        return True
    started = holder.get("process_start")
    return started is not None and _process_start(pid) not in (None, started)


def _read_holder(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class OutputLock:
    """An exclusive lock on an output folder: the file `.upetu-train.lock`, created with `O_EXCL` and holding the
    owner's pid, host and start time. A lock whose process has ended is stale and is taken over."""

    def __init__(self, folder: Path, created: list[Path]) -> None:
        self.folder, self.created = folder, created
        self.path = folder / LOCK_FILE

    @classmethod
    def acquire(cls, folder: str | os.PathLike) -> OutputLock:
        """Lock `folder` (created if needed); `ValueError` if another live run holds it."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--output-dir {folder} exists and is not a folder; choose a folder.")
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        lock = cls(folder, created)
        for _ in range(3):
            if lock._create():
                return lock
            holder = _read_holder(lock.path)
            if not _holder_is_gone(holder, lock.path):
                lock._release_folder()
                raise ValueError(lock._busy_message(holder))
            lock._remove_stale(holder)
        raise ValueError(lock._busy_message(_read_holder(lock.path)))

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(holder, handle)
        return True

    def _remove_stale(self, holder: dict[str, Any] | None) -> None:
        """Remove a stale lock, unless another run replaced it in the meantime."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_holder(aside) != holder:  # a live run took the lock between our read and the rename
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
            if holder
            else "a run that is starting"
        )
        return (
            f"--output-dir {self.folder} is in use by another upetu-train run ({who}); wait for it to end or "
            f"choose another folder. If no run is using it, delete {self.path}."
        )

    def _release_folder(self) -> None:
        """Remove the folders this run created, innermost first, as long as they are empty."""
        for path in self.created:
            try:
                path.rmdir()
            except OSError:
                return

    def release(self) -> None:
        """Remove the lock file (only ours) and the folders this run created if it left them empty."""
        if (_read_holder(self.path) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self._release_folder()


# ---------------------------------------------------------------------------------------------- checks
def previous_run(folder: Path) -> dict[str, Any] | None:
    """The `run_config.json` of a previous upetu-train run in `folder`, or None when it holds none."""
    path = folder / RUN_CONFIG_FILE
    if not path.is_file():
        return None
    record = read_json(path, "run config")
    arguments = record.get("arguments") if isinstance(record, dict) else None
    if not isinstance(arguments, dict) or "task" not in arguments or "method" not in arguments:
        return None
    return record


def _is_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(args: TrainingArguments, resuming: bool) -> None:
    """Refuse an `output_dir` that holds the model being trained from, or that is not empty, unless it holds a
    previous run and `--overwrite` or a resume was asked for."""
    out = Path(args.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} exists and is not a folder; choose a folder.")
    model = Path(args.model).expanduser()
    if model.is_dir() and _is_inside(model.resolve(), out.resolve()):
        raise ValueError(
            f"--output-dir {out} holds the model being trained from (--model {args.model}); choose another "
            "--output-dir."
        )
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
    if not entries or resuming:
        return
    listing = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    if previous_run(out) is None:
        raise ValueError(
            f"--output-dir {out} is not empty ({listing}) and holds no upetu-train run; choose an empty or new "
            "folder (--overwrite only replaces a previous upetu-train run, never other files)."
        )
    if not args.overwrite:
        raise ValueError(
            f"--output-dir {out} is not empty ({listing}). It holds another upetu-train run. Pass --overwrite "
            "to replace that run's files, --resume-from-checkpoint latest to continue it, or choose another "
            "folder."
        )


def run_files(folder: Path) -> list[Path]:
    """The files and folders that the previous run in `folder` wrote (what `--overwrite` removes)."""
    record = previous_run(folder)
    if record is None:
        return []
    method = record["arguments"]["method"]
    names = {RUN_CONFIG_FILE, METRICS_FILE, MANIFEST_FILE, *saved_file_names(method in PEFT_METHODS)}
    try:  # the files the run listed directly in its folder (the log is removed below)
        names |= {name for name in manifest_names(folder) if Path(name).name == name}
    except (ValueError, AttributeError):
        pass
    temporaries = re.compile(r"^\.(" + "|".join(re.escape(n) for n in sorted(names)) + r")\..*\.tmp$")
    found = [folder / n for n in sorted(names) if (folder / n).is_file()]
    found += [p for p in folder.iterdir() if temporaries.match(p.name) or p.name.startswith(".tmp-save-")]
    logs = folder / LOGS_DIR
    found += [p for p in (logs / LOG_FILE,) if p.is_file()]
    if (logs / TENSORBOARD_RUN).is_dir():
        found += sorted((logs / TENSORBOARD_RUN).glob("events.out.tfevents.*"))
    return found


def clear_previous_run(folder: str | os.PathLike) -> list[Path]:
    """`--overwrite`: remove the previous run's own files (`run_files`) and its checkpoints; every other file
    stays. Folders are removed only when this leaves them empty. Returns what was removed."""
    folder = Path(folder)
    removed = run_files(folder)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    remove_checkpoints(folder)
    for sub in (folder / LOGS_DIR / TENSORBOARD_RUN, folder / LOGS_DIR):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    return removed
