"""Provenance and file helpers shared by the benchmark scripts (imported as a sibling module)."""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import accelerate
import numpy as np
import peft
import PIL.Image
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save
from transformers import ConvNextConfig, ConvNextForImageClassification

import upetu_hf
from upetu_hf import _files as files
from upetu_hf.train import TrainingArguments
from upetu_hf.train.cli import add_options
from upetu_hf.train.methods import is_head_parameter

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The shared data and models (`../shared`), and the benchmarks' reference backbone in it.
SHARED = REPO_ROOT.parent / "shared"
SHARED_BACKBONE = SHARED / "models" / "rs-convnext-atto-aid"
#: ConvNeXt sizes the scripts build from scratch (`ConvNextConfig` keywords).
CONVNEXT = {
    "convnext-t": dict(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768]),
    "convnext-b": dict(depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024]),  # convnext-base-224-22k
    "convnext-atto": dict(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320]),  # the reference backbone's
    "tiny": dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64]),  # for quick checks
}
TEMPLATE_FILE = REPO_ROOT / "scripts" / "templates" / "report.md"
_BLOCKS = re.split(r"^<!-- ([\w-]+) -->\n", TEMPLATE_FILE.read_text(), flags=re.M)
#: The prose blocks of `templates/report.md` by name.
TEMPLATES = {name: text.rstrip("\n") for name, text in zip(_BLOCKS[1::2], _BLOCKS[2::2])}


def fill(block: str, /, **values: Any) -> str:
    """The block `block` of `templates/report.md` with `values` filled in (a missing value reads None)."""
    return TEMPLATES[block].format_map(collections.defaultdict(lambda: None, values))


def row(*cells: Any) -> str:
    """A row of a markdown table."""
    return f"| {' | '.join(map(str, cells))} |"


def table(header: str, align: str, rows: list[str]) -> list[str]:
    """A markdown table: `header` cells and `align` (one `-`, `:`-suffixed for right, per column) joined by `|`."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return [row(*(c.strip() for c in header.split("|"))), rule, *rows]


def random_convnext(name: str, num_labels: int, seed: int = 0) -> ConvNextForImageClassification:
    """A `CONVNEXT[name]` classifier with `num_labels` classes and random weights drawn after `manual_seed(seed)`."""
    torch.manual_seed(seed)
    return ConvNextForImageClassification(ConvNextConfig(**CONVNEXT[name], num_labels=num_labels))


def class_folder(root: Path, classes: int = 3, images: int = 6) -> Path:
    """A class-per-folder dataset in `root`: `classes` classes of `images` random 40-px PNG images each."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(images):
            pixels = rng.normal(90 + 30 * c, 30, (40, 40, 3)).clip(0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(root / f"class_{c}" / f"{c}_{i}.png")
    return root


def log(message: str, who: str = "") -> None:
    """Progress to stderr, with the time (after `who`, when given)."""
    print(f"[{f'{who} ' if who else ''}{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now() -> str:
    """The UTC time, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


#: `path.write_text(text)` through `upetu_hf`'s one atomic writer (a temporary file in the same folder, then
#: `os.replace`, with the umask's file mode), so a crash never leaves a half-written file.
write_text_atomic = files.write_atomic


def write_json_atomic(path: Path, data: Any) -> None:
    """`data` as strict JSON (`upetu_hf._files.finite_json`: NaN is null), indented by 1, written atomically."""
    files.write_json_atomic(path, data, indent=1)


def fmt_count(n: float | None) -> str:
    """Parameter counts in K / M (`-` for None)."""
    if n is None or n < 1e3:
        return "-" if n is None else str(int(n))
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def head_bytes(path: Path, heads_only: bool = False) -> tuple[int, int]:
    """Bytes of the safetensors file `path` with and without its task heads, that part re-saved alone (same
    format and metadata); `heads_only` (a linear probe's file, trained heads only): the heads alone, and 0."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if is_head_parameter(k) == heads_only}
    resaved = len(save(tensors, metadata=metadata)) if tensors else 0
    return (resaved, 0) if heads_only else (path.stat().st_size, resaved)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpus_available() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info(device: str) -> dict[str, Any]:
    """CPU, GPUs, thread settings, load and library versions of this process; `device` says where it runs."""
    info = dict(hostname=platform.node(), cpu_model=cpu_model(), cpu_count=os.cpu_count())
    info.update(cpus_available=cpus_available(), torch_num_threads=torch.get_num_threads())
    info["torch_num_interop_threads"] = torch.get_num_interop_threads()
    info.update(cpu_capability=torch.backends.cpu.get_cpu_capability(), platform=platform.platform())
    info.update(loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    info.update(python=platform.python_version())
    info.update({m.__name__: m.__version__ for m in (torch, transformers, peft, accelerate, upetu_hf)})
    info.update(cuda_available=torch.cuda.is_available(), device=device)
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def git_state(paths: Sequence[str]) -> dict[str, Any]:
    """Commit of the checkout and the uncommitted files among `paths` (the code a benchmark runs)."""

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
            done.check_returncode()
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", *paths)
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted": dirty.splitlines()}


def count_top_level_ops(fn: Callable[[], Any]) -> int:
    """The ATen ops one call of `fn` dispatches from Python (`aten::` events whose parent is not one): on a GPU
    each is a kernel launch, so the count is a step's launch-bound cost, independent of the machine's speed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    top = [e for e in prof.events() if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return sum(1 for event in top if event.name.startswith("aten::"))


def add_training_options(group: argparse._ActionsContainer, task: str, names: Sequence[str], **defaults):
    """The options of `upetu-train <task>` for the `TrainingArguments` fields `names`, as its CLI builds them
    (`upetu_hf.train.cli.add_options`), with `defaults` where a benchmark's protocol has its own."""
    source = argparse.ArgumentParser(add_help=False)
    add_options(source, TrainingArguments, task)
    actions = {action.dest: action for action in source._actions}
    for name in names:
        action = actions[name]
        if name in defaults:
            action.default, action.required = defaults[name], False
            if defaults[name] is not None:
                action.help = f"{action.help or ''} (here: {defaults[name]})".strip()
        group._add_action(action)
