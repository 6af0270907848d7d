"""Read a checkpoint file safely and find its state dict inside any wrapper.

PyTorch files (`.pth`, `.pt`, `.bin`, anything not `.safetensors`) are read with
``torch.load(weights_only=True)``: only tensors and plain containers are unpickled, never code. Safetensors files
are read with `safetensors`. The only class allowed besides tensors is `argparse.Namespace`, which many
training scripts save next to the weights. A wrapper is a dict that holds the state dict under a key, as training scripts save
it: ``{"model": ...}``, ``{"state_dict": ...}``, ``{"module": ...}`` (SMLFR, SparK), possibly nested and next to
optimizer states and arguments. Non-tensor entries inside the state dict (e.g. SMLFR's ``"config"``) are dropped.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors

from .errors import ConversionError, preview

# Keys under which training scripts store the weights, by priority (EMA copies only when named with `key`).
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "model_state", "net", "network")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """The object stored in `path` (a dict of tensors for safetensors), loaded without running pickled code.

    Raises:
        ConversionError: the file is missing, is not a readable checkpoint (corrupt, truncated, not a
            checkpoint), or holds pickled objects other than tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise ConversionError(
                f"{path}: not a readable safetensors file ({_first_line(error)})"
            ) from error
    try:
        # argparse.Namespace (training arguments saved next to the weights) is a plain attribute container
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt zip, bad pickle, refused object: all one-line user errors
        if "Weights only load failed" in str(error):
            raise ConversionError(
                f"{path}: holds pickled objects other than tensors, which are not loaded for safety "
                "(torch.load(weights_only=True)); re-save it as torch.save(model.state_dict(), path)"
            ) from error
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({_first_line(error)})") from error


def _has_tensors(obj: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint, and the wrapper path that led to it (``""``, ``"module"``).

    Args:
        obj: what [`load_checkpoint_file`] returned.
        key: wrapper path to follow, ``/``-separated (e.g. ``"model_ema"`` or ``"checkpoint/model"``); by default
            the first of `WRAPPER_KEYS` holding a dict is followed for as long as there is one.
    """
    path: list[str] = []
    if key:
        for part in key.split("/"):
            if not isinstance(obj, Mapping) or part not in obj:
                found = list(obj) if isinstance(obj, Mapping) else []
                raise ConversionError(
                    f"no entry {part!r} in the checkpoint{' under ' + '/'.join(path) if path else ''}; "
                    f"its keys: {preview([str(k) for k in found]) or '(none)'}"
                )
            obj = obj[part]
            path.append(part)
    else:
        # a state dict never holds dicts under these names, so a dict there is a wrapper (even next to tensors
        # such as a saved `best_acc`)
        while isinstance(obj, Mapping):
            inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = obj[inner]
            path.append(inner)
    if not isinstance(obj, Mapping) or not _has_tensors(obj):
        found = [str(k) for k in obj] if isinstance(obj, Mapping) else [type(obj).__name__]
        raise ConversionError(
            f"found no tensors in the checkpoint{' under ' + '/'.join(path) if path else ''}; its entries: "
            f"{preview(found)}; name the entry holding the weights with --key"
        )
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}, "/".join(path)
