"""Write a converted model into OUTPUT_DIR atomically, touching only the converter's own files.

Everything is first written to a staging folder beside OUTPUT_DIR (same file system). A new OUTPUT_DIR is then
the staging folder renamed into place (one atomic rename). Into an existing folder (empty, a previous conversion,
or with `overwrite`) each file is moved with `os.replace` (atomic per file) and the record `conversion.json`,
which lists the files, comes last; files that a previous conversion recorded and this one no longer writes are
removed. No other file in OUTPUT_DIR is ever changed or deleted. Files and a new folder get the umask's modes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..._files import current_umask, file_mode
from .errors import ConversionError

RECORD_NAME = "conversion.json"
CONVERTER = "upetu-convert"


def previous_record(output_dir: Path) -> dict | None:
    """The record of a previous conversion in `output_dir`, or None."""
    try:
        record = json.loads((output_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("converter") == CONVERTER else None


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an OUTPUT_DIR that is a file, or a non-empty folder that is neither a previous conversion nor
    allowed by `overwrite`. Called before any work is done."""
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"output {str(output_dir)!r} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite and previous_record(output_dir) is None:
            raise ConversionError(
                f"output folder {str(output_dir)!r} is not empty and holds no previous conversion; choose an empty "
                "folder, or pass --overwrite to replace only the files the converter writes"
            )
    return output_dir


def write_output(output_dir: Path, write: Callable[[Path], None], record: dict) -> list[str]:
    """Call ``write(staging)``, add `record` (plus ``converter`` and ``files``), then publish into `output_dir`.

    Returns:
        the names of the files written.
    """
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.upetu-convert-", dir=output_dir.parent))
    try:
        write(staging)
        names = sorted(p.name for p in staging.iterdir() if p.name != RECORD_NAME)
        for name in names:
            if not (staging / name).is_file():
                raise RuntimeError(f"unexpected folder {name!r} in the converted output")
        full = {"converter": CONVERTER, **record, "files": [*names, RECORD_NAME]}
        (staging / RECORD_NAME).write_text(json.dumps(full, indent=2) + "\n")
        for name in full["files"]:  # safetensors and mkdtemp create 0600/0700: follow the umask instead
            (staging / name).chmod(file_mode())
        if not output_dir.exists():
            staging.chmod(0o777 & ~current_umask())
            os.rename(staging, output_dir)
            return full["files"]
        stale = set((previous_record(output_dir) or {}).get("files", [])) - set(full["files"])
        for name in full["files"]:  # the record last
            os.replace(staging / name, output_dir / name)
        for name in stale:
            if name == Path(name).name and name not in ("", ".", "..", RECORD_NAME):
                (output_dir / name).unlink(missing_ok=True)
        return full["files"]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
