#!/usr/bin/env python
"""The fault table of the README's reliability section: each fault case run through `upetu-train` / `upetu-eval`
on tiny generated data (a random 4-stage ConvNeXt, 3 classes of 40 px noise images, 4-band GeoTIFF tiles), with
the exit code and the last line the command printed on stderr.

Cases marked "(simulated)" raise the operating-system condition in-process (the machine that runs the script may
be root, for whom nothing is read-only, and have a free disk): a full disk is an `ENOSPC` from the checkpoint's
tensor writer, a read-only folder an `EROFS` from the lock file, Ctrl-C a `KeyboardInterrupt` after epoch 1. Writes
`--output` (default results/fault_table.md) and its JSON twin; paths are shown relative to the scratch folder.

Usage:
    python scripts/fault_table.py
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # the push case must meet an offline Hub; nothing is downloaded
import numpy as np
import PIL.Image
import tifffile
from _common import REPO_ROOT, write_json_atomic, write_text_atomic
from transformers import ConvNextConfig, ConvNextForImageClassification

import upetu_hf.train.checkpoint
import upetu_hf.train.loop
from upetu_hf.train.cli import eval_main, main
from upetu_hf.train.output_dir import OutputLock


# ---------------------------------------------------------------------------------------------- tiny data
def tiny_model(folder: Path, seed: int = 0) -> Path:
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_labels=3)
    ConvNextForImageClassification(config).save_pretrained(folder)
    processor = {
        "image_processor_type": "ConvNextImageProcessor",
        "size": {"shortest_edge": 32},
        "crop_pct": 1.0,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def class_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(6):
            pixels = rng.normal(90 + 30 * c, 30, (40, 40, 3)).clip(0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(root / f"class_{c}" / f"{c}_{i}.png")
    return root


def band_tiles(root: Path, dtype=np.uint16, bands: int = 4) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "built"}))
    for i in range(4):
        mask = np.zeros((64, 64), np.uint8)
        mask[: 20 + 4 * i] = 1
        tile = 1000.0 + 300.0 * mask + rng.normal(0, 50, (bands, 64, 64))
        tifffile.imwrite(root / "images" / f"tile_{i}.tif", tile.astype(dtype), photometric="minisblack")
        PIL.Image.fromarray(mask).save(root / "masks" / f"tile_{i}.png")
    return root


# ---------------------------------------------------------------------------------------------- the cases
class Cases:
    """Each method `case_*` sets a fault up in `self.root` and returns `(description, command argv, patches)`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model = tiny_model(root / "model")
        self.images = class_folder(root / "scenes")

    def train(self, out: str, *extra: str, data: Path | None = None, model: Path | None = None) -> list[str]:
        return [
            "classification", "--model", str(model or self.model), "--data", str(data or self.images),
            "--output-dir", str(self.root / out), "--train-fraction", "0.5", "--batch-size", "4", "--epochs", "1",
            *extra,
        ]  # fmt: skip

    def segment(self, out: str, data: Path, *extra: str) -> list[str]:
        return [
            "segmentation", "--model", str(self.model), "--data", str(data), "--output-dir", str(self.root / out),
            "--train-fraction", "0.5", "--epochs", "1", "--image-size", "32", *extra,
        ]  # fmt: skip

    def finished(self, out: str) -> Path:
        """A finished 2-epoch run that kept a checkpoint per step."""
        args = self.train(out, "--epochs", "2", "--checkpointing-steps", "1", "--keep-checkpoints")
        if main(args) != 0:
            raise RuntimeError(f"the reference run {out} failed")
        return self.root / out

    def case_nan_pixels(self):
        data = band_tiles(self.root / "nan", np.float32)
        tile = tifffile.imread(data / "images" / "tile_1.tif")
        tile[2, 10:20, 10:20] = np.nan
        tifffile.imwrite(data / "images" / "tile_1.tif", tile, photometric="minisblack")
        return "a float GeoTIFF with NaN pixels", main, self.segment("o-nan", data), {}

    def case_nan_statistics(self):
        data = band_tiles(self.root / "stats")
        stats = self.root / "stats.json"
        stats.write_text('{"mean": [1000, 1000, 1000, 1000], "std": [50, NaN, 50, 50]}')
        argv = self.segment("o-stats", data, "--band-statistics", str(stats))
        return "a --band-statistics file with a NaN std", main, argv, {}

    def case_divergence(self):
        argv = self.train(
            "o-lr", "--epochs", "3", "--lr", "1e3", "--max-grad-norm", "0", "--checkpointing-steps", "1"
        )
        return "--lr 1e3 --max-grad-norm 0: the loss explodes", main, argv, {}

    def case_wrong_band_count(self):
        data = band_tiles(self.root / "bands")
        return (
            "--num-channels 13 on 4-band images",
            main,
            self.segment("o-bands", data, "--num-channels", "13"),
            {},
        )

    def case_mask_as_image(self):
        data = self.root / "rgb-seg"
        band_tiles(data)
        for path in (data / "images").glob("*.tif"):
            image = tifffile.imread(path)[:3].transpose(1, 2, 0) / 8
            PIL.Image.fromarray(image.astype(np.uint8)).save(path.with_suffix(".png"))
            path.unlink()
        shutil.copy(data / "masks" / "tile_2.png", data / "images" / "tile_2.png")
        return "a single-band mask in an RGB images/ folder", main, self.segment("o-mask", data), {}

    def case_non_utf8_name(self):
        data = self.root / "latin1"
        shutil.copytree(self.images, data)
        first = sorted((data / "class_0").iterdir())[0]
        os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9.png"))
        return "a file name that is not UTF-8", main, self.train("o-utf8", data=data), {}

    def case_push_offline(self):
        argv = self.train("o-push", "--push-to-hub", "--hub-model-id", "someone/run")
        return "--push-to-hub while offline (checked before training)", main, argv, {}

    def case_not_empty(self):
        run = self.finished("o-busy")
        return "an --output-dir holding a run, without --overwrite", main, self.train(run.name), {}

    def case_damaged_checkpoint(self):
        run = self.finished("o-damaged")
        weights = run / "checkpoints" / "step_4" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-100] ^= 0xFF
        weights.write_bytes(bytes(data))
        argv = self.train(run.name, "--epochs", "2", "--resume-from-checkpoint", "latest")
        return "a damaged checkpoint on resume", main, argv, {}

    def case_other_frozen_weights(self):
        model = self.root / "model-copy"
        shutil.copytree(self.model, model)
        run = self.root / "o-frozen"
        main(self.train(run.name, "--checkpointing-steps", "1", "--keep-checkpoints", model=model))
        shutil.rmtree(model)
        tiny_model(model, seed=1)
        argv = self.train(run.name, "--resume-from-checkpoint", "latest", model=model)
        return "a resume whose --model has other frozen weights", main, argv, {}

    def case_no_peft_type(self):
        run = self.finished("o-config")
        config = json.loads((run / "adapter_config.json").read_text())
        del config["peft_type"]
        (run / "adapter_config.json").write_text(json.dumps(config))
        return "an adapter_config.json without peft_type", eval_main, ["--adapter", str(run)], {}

    def case_rgb_run_on_bands(self):
        run = self.finished("o-rgb")
        data = self.root / "s2"
        for c in range(3):
            (data / f"class_{c}").mkdir(parents=True)
            tifffile.imwrite(data / f"class_{c}" / "a.tif", np.full((13, 40, 40), 1000, np.uint16))
        argv = ["--adapter", str(run), "--data", str(data), "--split", "all"]
        return "upetu-eval of an RGB run on 13-band GeoTIFFs", eval_main, argv, {}

    def case_full_disk(self):
        writes = []
        original = upetu_hf.train.checkpoint.save_tensors

        def full_disk(tensors, path, metadata=None):
            writes.append(path)
            if len(writes) > 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return original(tensors, path, metadata)

        argv = self.train("o-disk", "--checkpointing-steps", "1")
        return (
            "a full disk at a checkpoint (simulated)",
            main,
            argv,
            {(upetu_hf.train.checkpoint, "save_tensors"): full_disk},
        )

    def case_read_only(self):
        def read_only(lock):
            raise OSError(errno.EROFS, "Read-only file system", str(lock.path))

        return (
            "a read-only --output-dir (simulated)",
            main,
            self.train("o-ro"),
            {(OutputLock, "_create"): read_only},
        )

    def case_interrupt(self):
        def interrupt(run, epoch):
            raise KeyboardInterrupt

        argv = self.train("o-int", "--epochs", "2", "--checkpointing-steps", "1")
        return (
            "Ctrl-C during training (simulated)",
            main,
            argv,
            {(upetu_hf.train.loop._Run, "end_epoch"): interrupt},
        )


def run_case(call: Callable[[list[str]], int], argv: list[str], patches: dict) -> tuple[int, str]:
    """Run one command in this process with `patches` applied; its exit code and the last line of stderr."""
    saved = {(owner, name): getattr(owner, name) for owner, name in patches}
    for (owner, name), value in patches.items():
        setattr(owner, name, value)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = call(argv)
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
    lines = [line for line in err.getvalue().replace("\r", "\n").splitlines() if line.startswith("upetu-")]
    return code, lines[-1] if lines else ""


def fault_table(root: Path) -> list[dict[str, Any]]:
    cases = Cases(root)
    rows = []
    for name in [n for n in dir(Cases) if n.startswith("case_")]:
        description, call, argv, patches = getattr(cases, name)()
        code, message = run_case(call, argv, patches)
        rows.append({"case": description, "exit_code": code, "message": message.replace(f"{root}/", "")})
        print(f"{code}  {description}: {rows[-1]['message'][:100]}", flush=True)
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# Fault table",
        "",
        "Generated by `python scripts/fault_table.py` (tiny generated data; paths relative to its scratch folder).",
        "",
        "| case | exit code | message |",
        "|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['exit_code']} | `{r['message'].replace('|', '/')}` |" for r in rows]
    return "\n".join(lines) + "\n"


def main_script(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "fault_table.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = fault_table(Path(tmp))
    write_text_atomic(args.output, markdown(rows))
    write_json_atomic(args.output.with_suffix(".json"), {"cases": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main_script())
