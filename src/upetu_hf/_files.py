"""Files that upetu-hf writes: one atomic writer, file modes that follow the umask, names that stay in their folder,
and JSON that names its file when it cannot be read."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: written last by every save (name, size and SHA-256 of each file), so that a save cut short is detectable
MANIFEST_FILE = "manifest.json"
_UNSAFE = re.compile(r"[\x00-\x1f/\\:]+")
MAX_NAME_LENGTH = 200


def current_umask() -> int:
    """The process umask (read without changing it for longer than two system calls)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 minus the umask (`mkstemp` gives 0600)."""
    return 0o666 & ~current_umask()


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, fsync it, give it the umask's mode,
    and rename it into place with `os.replace`: readers see the old file or the new one, never a part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            # a failed write or fsync (a full disk) names no file: name the one being written, for the message
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    return path


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite float (nested in dicts, lists and tuples) replaced by None: strict JSON
    has no `NaN` / `Infinity` literals, which many readers refuse. Numpy scalars and 0-d arrays or tensors become
    Python numbers, paths strings."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # np.float32(1), torch.tensor(1.0)
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """`data` as indented, strict JSON (non-finite floats become null, see `finite_json`), written with
    `write_atomic`."""
    return write_atomic(path, json.dumps(finite_json(data), indent=indent, allow_nan=False) + "\n")


def sorted_safetensors_header(data: bytes) -> bytes:
    """A safetensors file's bytes with its JSON header rewritten with sorted keys.

    safetensors keeps the metadata in a Rust `HashMap`, whose order changes from call to call, so equal tensors
    and metadata give different bytes. The layout is ``u64 little-endian header length N | N bytes of JSON
    (space-padded to a multiple of 8) | tensor data``; the header's offsets count from the data, so the data is
    kept as it is."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    padded = text.ljust(-(-len(text) // 8) * 8, b" ")
    return len(padded).to_bytes(8, "little") + padded + data[8 + length :]


def save_tensors(
    tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Tensors as a safetensors file with a sorted header (`sorted_safetensors_header`: equal inputs give equal
    bytes), written with `write_atomic` (safetensors itself creates 0600 files)."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    return write_atomic(path, sorted_safetensors_header(data))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a syntax error becomes a one-line `ValueError` that names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); restore the {what} from a backup or write it again."
        ) from err


def safe_file_name(name: str, fallback: str) -> str:
    """`name` as a single file name that cannot leave its folder: path separators and control characters become
    `_`, leading dots are dropped (no `..`, no hidden files), the length is capped; empty results give
    `fallback`."""
    cleaned = _UNSAFE.sub("_", str(name)).lstrip(". ")[:MAX_NAME_LENGTH].rstrip(" ")
    return cleaned or fallback


def path_inside(folder: str | os.PathLike, name: str) -> Path:
    """`folder / name`, refused (`ValueError`) unless it lies directly inside `folder`."""
    folder = Path(folder)
    target = folder / name
    if target.resolve().parent != folder.resolve():
        raise ValueError(f"Refusing to write {target}: the name {name!r} would leave {folder}.")
    return target


def is_local(source: str) -> bool:
    """Whether `source` (a `--model`, `--data` or `--adapter` value) means a local path rather than a Hub id: it
    exists, or it is spelled like a path (starts with `.`, `/` or `~`, or holds a backslash)."""
    return source.startswith((".", "/", "~")) or "\\" in source or Path(source).expanduser().exists()


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike, names: Iterable[str], version: int = 1) -> Path:
    """Write `folder/manifest.json`: the size and SHA-256 of each file of `names` (paths relative to `folder`,
    with `/`), sorted by name. Written last by every save, so that a save cut short is detectable."""
    folder = Path(folder)
    files = {
        name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)}
        for name in sorted(set(names))
    }
    return write_json_atomic(folder / MANIFEST_FILE, {"format_version": version, "files": files})


def manifest_names(folder: str | os.PathLike) -> list[str]:
    """The files `folder/manifest.json` lists (none without a manifest)."""
    path = Path(folder) / MANIFEST_FILE
    files = read_json(path, "manifest").get("files", {}) if path.is_file() else {}
    return list(files) if isinstance(files, dict) else []


def manifest_problem(folder: str | os.PathLike) -> str | None:
    """What disagrees with `folder/manifest.json` ("X is missing / differs from the file that was saved according
    to M"), or None when every listed file matches or there is no manifest (saved by peft itself, or by an older
    upetu-hf)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = read_json(path, "manifest")
    for name, entry in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file() or file.stat().st_size != entry["bytes"] or sha256_of(file) != entry["sha256"]:
            state = "is missing" if not file.is_file() else "differs from the file that was saved"
            return f"{file} {state} according to {path}"
    return None


def verify_manifest(folder: str | os.PathLike) -> None:
    """Raise a one-line `ValueError` when a saved folder disagrees with its `manifest.json` (`manifest_problem`)."""
    problem = manifest_problem(folder)
    if problem is not None:
        raise ValueError(
            f"{problem}: it was edited, replaced or removed after the save, or a save was cut short; restore the "
            "file, or save the adapter (or re-run the training) again."
        )
