"""The `Accelerator` of a run, and how its processes agree that none of them failed."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator


def make_accelerator(cpu: bool, mixed_precision: str, **kwargs) -> Accelerator:
    """An `Accelerator`; on machines without an accelerator it is forced to CPU, which is also what makes
    `torchrun` / `accelerate launch --multi_gpu` start a multi-process gloo run there.

    In a single process (a notebook calling `train` twice, say) the state of a previous run is cleared first,
    so each call may choose its own mixed precision and accumulation steps. Accelerate keeps that state in
    singletons and offers no public reset, hence the private `_reset_state`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(cpu=cpu or not has_accelerator(), mixed_precision=mixed_precision, **kwargs)


def has_accelerator() -> bool:
    """Whether a device other than the CPU can run: a CUDA (or other) build of torch names its accelerator even
    on a machine without one (`current_accelerator()` is `cuda` while `cuda.is_available()` is False), so the
    device must also be usable. Every process of a `torchrun` launch then decides alike, CPU (gloo) or not."""
    if torch.cuda.is_available():
        return True
    if not hasattr(torch, "accelerator"):
        return False
    device = torch.accelerator.current_accelerator()
    if device is None or device.type == "cuda":  # cuda: not available, checked above
        return False
    backend = getattr(torch, device.type, None)
    return bool(backend is not None and getattr(backend, "is_available", lambda: False)())


def agree(accelerator: Accelerator, error: Exception | None) -> None:
    """Raise `error` on the process that hit it and a short error on the others, so that no process waits for
    one that gave up (collective)."""
    failed = torch.tensor(float(error is not None), device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")
    if error is not None:
        raise error
    if float(failed) > 0:
        raise ValueError("Another process of this run stopped with an error (see its message above).")
