#!/usr/bin/env python
"""The fault table of the README's reliability section: each fault case run as a real `upetu-train` / `upetu-eval`
process on tiny generated data, with its exit code, the last `upetu-...` line on stderr and the temporary files
(`TEMPORARY`) left in its output folder. The operating-system faults are real: Ctrl-C is a SIGINT once the first
checkpoint exists; a full disk and a read-only folder are tmpfs mounts on `--output-dir` in a private mount
namespace (`unshare -rm`). Writes `--output` (default results/fault_table.md) and its JSON twin.

    python scripts/fault_table.py [--cases interrupt full_disk ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

os.environ["HF_HUB_OFFLINE"] = "1"  # the push case must meet an offline Hub; nothing is downloaded
import numpy as np
import PIL.Image
import tifffile
from _common import (
    REPO_ROOT,
    class_folder,
    fill,
    random_convnext,
    row,
    table,
    write_json_atomic,
    write_text_atomic,
)

import upetu_hf
from upetu_hf.train.cli import main

#: How each program is started (with this interpreter and this script's `upetu_hf`).
COMMANDS = {
    "upetu-train": ["-m", "upetu_hf.train"],
    "upetu-eval": ["-c", "import sys; from upetu_hf.train.cli import eval_main; sys.exit(eval_main())"],
}
#: Run by `unshare -rm sh -c`: mount a tmpfs with options $1 on the output folder $2, run the command, then copy
#: the folder to `$2.after` (the mount vanishes with the namespace).
MOUNTED = (
    'mount -t tmpfs -o "$1" f "$2" || exit 97; o=$2; shift 2; "$@"; c=$?; cp -a "$o" "$o.after"; exit $c'
)
#: The temporary files a run must not leave behind, even when it fails.
TEMPORARY = (".tmp-*", ".stale-*", ".upetu-train.lock*")


class Case(NamedTuple):
    description: str
    argv: list[str]  #: the program's arguments
    output: Path  #: the folder checked for temporary files left behind
    prog: str = "upetu-train"
    mount: str = ""  #: tmpfs options mounted on `output` for the run
    interrupt: bool = False  #: send SIGINT once `output` holds a checkpoint


def tiny_model(folder: Path, seed: int = 0) -> Path:
    """A tiny random 3-class ConvNeXt checkpoint with a 32-px image processor."""
    random_convnext("tiny", 3, seed).save_pretrained(folder)
    processor = dict(image_processor_type="ConvNextImageProcessor", size={"shortest_edge": 32}, crop_pct=1)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def band_tiles(root: Path, dtype=np.uint16, nan: bool = False) -> Path:
    """4 tiles of 4 bands with masks; `nan`: float tiles, 100 NaN pixels in the second."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "built"}))
    for i in range(4):
        mask = np.zeros((64, 64), np.uint8)
        mask[: 20 + 4 * i] = 1
        tile = 1000.0 + 300.0 * mask + rng.normal(0, 50, (4, 64, 64))
        if nan and i == 1:
            tile[2, 10:20, 10:20] = np.nan
        tifffile.imwrite(root / "images" / f"tile_{i}.tif", tile.astype(dtype), photometric="minisblack")
        PIL.Image.fromarray(mask).save(root / "masks" / f"tile_{i}.png")
    return root


class Cases:
    """Each method `case_<name>` sets a fault up in `self.root` and returns its `Case`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model = tiny_model(root / "model")
        self.images = class_folder(root / "scenes")

    def train(self, what: str, out: str, *extra: str, task: str = "classification", **fields: Any) -> Case:
        """`upetu-train <task>` for `epochs=` (1) epochs on `data=` (the class folder) into `root/out`."""
        data, model = fields.pop("data", self.images), fields.pop("model", self.model)
        epochs = fields.pop("epochs", 1)
        argv = [
            task, "--model", str(model), "--data", str(data), "--output-dir", str(self.root / out),
            "--train-fraction", "0.5", "--batch-size", "4", "--epochs", str(epochs), "--image-size", "32", *extra,
        ]  # fmt: skip
        return Case(what, argv, self.root / out, **fields)

    def segment(self, what: str, data: Path, *extra: str) -> Case:
        return self.train(what, f"o-{data.name}", *extra, task="segmentation", data=data)

    def finished(self, out: str, **fields: Any) -> Path:
        """A finished 2-epoch run that kept a checkpoint per step (run in this process: a setup, not a fault)."""
        run = self.train("", out, "--checkpointing-steps", "1", "--keep-checkpoints", epochs=2, **fields)
        if main(run.argv):
            raise RuntimeError(f"the reference run {out} failed")
        return self.root / out

    def case_nan_pixels(self) -> Case:
        data = band_tiles(self.root / "nan", np.float32, nan=True)
        return self.segment("a float GeoTIFF with NaN pixels", data)

    def case_nan_statistics(self) -> Case:
        stats = self.root / "stats.json"
        stats.write_text('{"mean": [1000, 1000, 1000, 1000], "std": [50, NaN, 50, 50]}')
        what = "a --band-statistics file with a NaN std"
        return self.segment(what, band_tiles(self.root / "stats"), "--band-statistics", str(stats))

    def case_divergence(self) -> Case:
        extra = ("--lr", "1e3", "--max-grad-norm", "0", "--checkpointing-steps", "1")
        return self.train("--lr 1e3 --max-grad-norm 0: the loss explodes", "o-lr", *extra, epochs=3)

    def case_wrong_band_count(self) -> Case:
        what = "--num-channels 13 on 4-band images"
        return self.segment(what, band_tiles(self.root / "bands"), "--num-channels", "13")

    def case_mask_as_image(self) -> Case:
        data = band_tiles(self.root / "rgb-seg")
        for path in (data / "images").glob("*.tif"):
            image = tifffile.imread(path)[:3].transpose(1, 2, 0) / 8
            PIL.Image.fromarray(image.astype(np.uint8)).save(path.with_suffix(".png"))
            path.unlink()
        shutil.copy(data / "masks" / "tile_2.png", data / "images" / "tile_2.png")
        return self.segment("a single-band mask in an RGB images/ folder", data)

    def case_non_utf8_name(self) -> Case:
        data = shutil.copytree(self.images, self.root / "latin1")
        first = sorted((data / "class_0").iterdir())[0]
        os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9.png"))
        return self.train("a file name that is not UTF-8", "o-utf8", data=data)

    def case_push_offline(self) -> Case:
        what = "--push-to-hub while offline (checked before training)"
        return self.train(what, "o-push", "--push-to-hub", "--hub-model-id", "someone/run")

    def case_not_empty(self) -> Case:
        return self.train("an --output-dir holding a run, without --overwrite", self.finished("o-busy").name)

    def case_damaged_checkpoint(self) -> Case:
        weights = self.finished("o-damaged") / "checkpoints" / "step_4" / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
        what = "a damaged checkpoint on resume"
        return self.train(what, "o-damaged", "--resume-from-checkpoint", "latest", epochs=2)

    def case_other_frozen_weights(self) -> Case:
        model = self.root / "model-copy"
        self.finished("o-frozen", model=tiny_model(model))
        shutil.rmtree(model)
        what, model = "a resume whose --model has other frozen weights", tiny_model(model, seed=1)
        return self.train(what, "o-frozen", "--resume-from-checkpoint", "latest", epochs=2, model=model)

    def case_no_peft_type(self) -> Case:
        run = self.finished("o-config")
        config = json.loads((run / "adapter_config.json").read_text())
        del config["peft_type"]
        (run / "adapter_config.json").write_text(json.dumps(config))
        return Case("an adapter_config.json without peft_type", ["--adapter", str(run)], run, "upetu-eval")

    def case_rgb_run_on_bands(self) -> Case:
        run, data = self.finished("o-rgb"), self.root / "s2"
        for c in range(3):
            (data / f"class_{c}").mkdir(parents=True)
            tifffile.imwrite(data / f"class_{c}" / "a.tif", np.full((13, 40, 40), 1000, np.uint16))
        argv = ["--adapter", str(run), "--data", str(data), "--split", "all"]
        return Case("upetu-eval of an RGB run on 13-band GeoTIFFs", argv, run, "upetu-eval")

    def case_full_disk(self) -> Case:
        what = "a full disk (a 128 KiB tmpfs) at a checkpoint"
        return self.train(what, "o-disk", "--checkpointing-steps", "1", epochs=2, mount="size=128k")

    def case_read_only(self) -> Case:
        return self.train("a read-only --output-dir (a read-only tmpfs)", "o-ro", mount="ro")

    def case_interrupt(self) -> Case:
        what = "Ctrl-C (a real SIGINT) after the first checkpoint"
        return self.train(what, "o-int", "--checkpointing-steps", "1", epochs=1000, interrupt=True)


CASE_NAMES = sorted(name.removeprefix("case_") for name in dir(Cases) if name.startswith("case_"))


def run(case: Case, root: Path) -> dict[str, Any]:
    """Run `case` as a process: its exit code, last `upetu-` stderr line and the temporary files it left."""
    command = [sys.executable, *COMMANDS[case.prog], *case.argv]
    if case.mount:  # the mount point
        case.output.mkdir()
        command = ["unshare", "-rm", "sh", "-c", MOUNTED, "sh", case.mount, str(case.output), *command]
    source = str(Path(upetu_hf.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    log = case.output.with_name(case.output.name + ".stderr")
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        checkpoint = case.output / "checkpoints" / "step_1"
        while case.interrupt and process.poll() is None and not checkpoint.is_dir():
            time.sleep(0.05)
        if case.interrupt:
            process.send_signal(signal.SIGINT)
        code = process.wait()
    lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    message = ([line for line in lines if line.startswith("upetu-")] or [""])[-1]
    after = case.output.with_name(case.output.name + ".after") if case.mount else case.output
    left = sorted(str(p.relative_to(root)) for pattern in TEMPORARY for p in after.rglob(pattern))
    message = message.replace(f"{root}/", "").replace(str(root), ".")
    print(f"{code}  {case.description}: {message[:100]}", flush=True)
    return {"case": case.description, "exit_code": code, "message": message, "left_behind": left}


def fault_table(root: Path, names: Sequence[str] = CASE_NAMES, workers: int = 1) -> list[dict[str, Any]]:
    """Set the cases `names` up in `root`, then run them, `workers` at a time: one row per case."""
    cases = Cases(root)
    setups = [getattr(cases, f"case_{name}")() for name in names]
    with ThreadPoolExecutor(workers) as pool:
        return [{"name": name, **row} for name, row in zip(names, pool.map(lambda c: run(c, root), setups))]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """`results/fault_table.md`: one row per case."""
    lines = []
    for r in rows:
        message, left = r["message"].replace("|", "/"), ", ".join(r["left_behind"]) or "nothing"
        lines.append(row(r["case"], r["exit_code"], f"`{message}`", left))
    lines = table("case | exit code | message | left behind", "llll", lines)
    return "\n".join([fill("fault_table"), "", *lines, ""])


def main_script(argv: Sequence[str] | None = None) -> int:
    """Run the cases and write the table (markdown and JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "fault_table.md")
    parser.add_argument("--cases", nargs="+", choices=CASE_NAMES, default=CASE_NAMES)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 4))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = fault_table(Path(tmp), args.cases, args.workers)
    write_text_atomic(args.output, markdown(rows))
    write_json_atomic(args.output.with_suffix(".json"), {"cases": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main_script())
