#!/usr/bin/env python
"""OSCD-13 change detection: do Sentinel-2's extra bands help? UPetu on all 13 bands against UPetu on RGB only
(B04, B03, B02), same backbone, same protocol, through the training API (`upetu_hf.train.train`).

Data: `--data` (default `../shared/data/oscd13_s2`), the 14 labelled OSCD cities as 13-band uint16 GeoTIFF pairs
`A/<city>.tif`, `B/<city>.tif`, change masks `label/<city>.png` and `bands.json`. The cities are split by a seeded
permutation (`--split-seed`): `--train-cities` train, `--val-cities` validation, the rest test; the split is a
folder of symlinks with `train/ val/ test/` sub-folders.

Models: `--model` (default `../shared/models/rs-convnext-atto-aid`, an RGB ConvNeXt-atto), Siamese change detection
with UPetu (`r` 16, 4 bits: the defaults). 13 bands: the RGB stem is inflated (pretrained kernels on B04, B03, B02,
zeros elsewhere) and trains with the adapter (`modules_to_save`); RGB: the stem is the pretrained one, frozen.
Both normalise each band with the training split's statistics (one pass, recorded in the run).

Protocol, the same for both (the accuracy benchmark's, `scripts/benchmark_accuracy.py`, on one task):

1. Learning-rate search: `DEFAULT_LR["upetu"] x f` for every `f` in `--lr-factors`, seed `seeds[0]`, `--epochs`
   epochs of random `--crop` crops (`--crops-per-image` per city and epoch, default 'auto': enough to cover the
   average city once), AdamW with a cosine schedule; each run keeps its best validation epoch (change F1). The
   best validation F1 picks the learning rate (`_ledger.select`; ties: the last epochs, then the smaller rate).
2. Seeds: the chosen rate trains with every seed of `--seeds`; each run reports its test change F1 once, at its
   best validation epoch, on whole cities (padded to the stride and cropped back). Mean +- sample std over seeds.

The results (protocol, split, every run, selection, summary, machine, git state) go to `--output` (default
`results/accuracy_oscd13.json`), rewritten atomically after every run; `--resume` skips the finished runs.

Usage:
    python scripts/benchmark_oscd.py --threads 1 --lr-factors 0.111111,0.333333,1,3 \
        --output results/accuracy_oscd13_default_head.json   # the README table (52 min, one core)
    OMP_NUM_THREADS=2 python scripts/benchmark_oscd.py --threads 2 --head-lr lr   # results/accuracy_oscd13.json
    python scripts/benchmark_oscd.py --epochs 4 --seeds 0 --lr-factors 1 --output /tmp/oscd.json   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    REPO_ROOT,
    SHARED,
    SHARED_BACKBONE,
    add_training_options,
    clean,
    git_state,
    machine_info,
    write_json_atomic,
)
from _ledger import mean_std, run_key, select
from _variants import VARIANTS

from upetu_hf.train import DEFAULT_LR, TrainingArguments, train
from upetu_hf.train.methods import DENSE_HEAD_LR

CODE_PATHS = ("src/upetu_hf", "scripts/benchmark_oscd.py", "scripts/_common.py", "scripts/_ledger.py")
#: The two models compared, by their bands (`_variants.VARIANTS`): all 13, or Sentinel-2's RGB bands.
BANDS = {name: VARIANTS[name].options["bands"] for name in ("upetu-13band", "upetu-rgb")}
METRIC = "f1"


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def city_split(
    data: Path, seed: int, n_train: int, n_val: int, work_dir: Path
) -> tuple[Path, dict[str, list]]:
    """`work_dir/split` with `train/ val/ test/` folders of symlinks to the cities (and `bands.json`), split by a
    seeded permutation of the sorted city names; returns the folder and the cities of each part."""
    cities = sorted(p.stem for p in (data / "label").iterdir() if p.is_file())
    if n_train + n_val >= len(cities):
        raise SystemExit(
            f"{data}: {len(cities)} cities cannot give {n_train} train + {n_val} validation + test."
        )
    order = [cities[i] for i in np.random.default_rng(seed).permutation(len(cities))]
    parts = {
        "train": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }
    root = work_dir / "split"
    shutil.rmtree(root, ignore_errors=True)
    for part, names in parts.items():
        for sub in ("A", "B", "label"):
            folder = root / {"validation": "val"}.get(part, part) / sub
            folder.mkdir(parents=True)
            for name in names:
                (source,) = [p for p in (data / sub).iterdir() if p.stem == name]
                (folder / source.name).symlink_to(source.resolve())
    shutil.copy(data / "bands.json", root / "bands.json")
    return root, parts


def run_record(result: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The numbers of a finished run: validation and test metrics at the best epoch, history, sizes, times."""
    record = json.loads((run_dir / "run_config.json").read_text())
    scalar = lambda m: {k: v for k, v in (m or {}).items() if not isinstance(v, dict)}  # noqa: E731
    return dict(
        status="ok",
        best_epoch=result["best_epoch"],
        validation_score=clean((result.get("validation") or {}).get(METRIC)),
        test_score=clean((result.get("test") or {}).get(METRIC)),
        validation=scalar(result.get("validation")),
        test=scalar(result.get("test")),
        history=result["history"],
        parameters=result["parameters"],
        adapter_bytes=result.get("adapter_bytes"),
        steps=result["train"]["steps"],
        train_runtime_s=result["train"]["runtime_s"],
        crops_per_image=record.get("crops_per_image"),
        bands={k: record["bands"][k] for k in ("selected", "indices", "rgb_indices", "mean", "std")},
    )


def training_arguments(args: argparse.Namespace, data: Path, bands, lr: float, seed: int, out: Path):
    return TrainingArguments(
        task="change-detection",
        model=str(args.model),
        data=str(data),
        output_dir=str(out),
        method="upetu",
        bands=bands,
        lr=lr,
        seed=seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.crop,
        crops_per_image=args.crops_per_image,
        dice_weight=args.dice_weight,
        head_lr=lr if args.head_lr == "lr" else float(args.head_lr),
        checkpointing_steps=None,
        overwrite=True,
        cpu=args.cpu,
    )


class Benchmark:
    """The state of `--output`: every run, kept after each one; the search and seed runs of both variants."""

    def __init__(self, args: argparse.Namespace, data: Path, split: dict[str, list]) -> None:
        self.args, self.data = args, data
        self.grid = [(f, float(f"{DEFAULT_LR['upetu'] * f:.3g}")) for f in args.lr_factors]
        self.state: dict[str, Any] = {
            "benchmark": "oscd13",
            "protocol": self.protocol(split),
            "runs": [],
            "selection": {},
            "summary": {},
            "sessions": [],
        }
        path = Path(args.output)
        if args.resume and path.is_file():
            old = json.loads(path.read_text())

            # the seeds may change: a shorter list summarises the runs so far (after an interruption)
            def same(protocol: dict | None) -> dict:  # as JSON stores it (tuples become lists)
                return {
                    k: v
                    for k, v in json.loads(json.dumps(protocol or {})).items()
                    if k not in ("seeds", "reduced")
                }

            # files from before --head-lr existed: the decoder trained at the adapter's rate
            recorded = {"head_lr": "lr", **(old.get("protocol") or {})}
            if same(recorded) != same(self.state["protocol"]):
                raise SystemExit(f"{path} was recorded under another protocol; use another --output.")
            self.state["runs"] = [r for r in old["runs"] if r.get("status") == "ok"]
            self.state["sessions"] = old.get("sessions", [])

    def protocol(self, split: dict[str, list]) -> dict[str, Any]:
        a = self.args
        return {
            "task": "change-detection",
            "metric": METRIC,
            "model": Path(a.model).name,
            "data": Path(a.data).name,
            "split": split,
            "split_seed": a.split_seed,
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "crop": a.crop,
            "crops_per_image": a.crops_per_image,
            "dice_weight": a.dice_weight,
            "head_lr": a.head_lr,
            "lr_grid": self.grid,
            "seeds": a.seeds,
            "variants": BANDS,
            "method": "upetu (r 16, 4 bits, defaults)",
            "reduced": a.reduced,
        }

    def save(self) -> None:
        write_json_atomic(Path(self.args.output), self.state)

    def ensure(self, variant: str, lr: float, factor: float, seed: int, phase: str) -> dict[str, Any]:
        key = run_key(variant, {"bands": BANDS[variant]}, lr, seed)
        for done in self.state["runs"]:
            if done["key"] == key:
                return done
        out = Path(self.args.work_dir) / variant / f"lr{lr:g}-seed{seed}"
        log(f"{variant}: {phase} run, lr {lr:g}, seed {seed}, {self.args.epochs} epochs")
        record: dict[str, Any] = {"key": key, "variant": variant, "lr": lr, "lr_factor": factor, "seed": seed}
        record["phase"] = phase
        start = time.perf_counter()
        try:
            targs = training_arguments(self.args, self.data, BANDS[variant], lr, seed, out)
            record.update(run_record(train(targs), out))
        except Exception as err:  # one failed run must not lose the others
            record.update(
                status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()
            )
        record["wall_time_s"] = round(time.perf_counter() - start, 1)
        if record["status"] == "ok":
            log(
                f"{variant}: validation F1 {record['validation_score']:.4f} (epoch {record['best_epoch']}), "
                f"test F1 {record['test_score']:.4f}, {record['wall_time_s']:.0f} s"
            )
        else:
            log(f"{variant}: FAILED {record['error']}")
        self.state["runs"].append(record)
        self.save()
        return record

    def run(self) -> dict[str, Any]:
        """Both variants' searches first, then their seed runs, one seed at a time for both (an interrupted
        benchmark still compares them on the same seeds)."""
        seeds = self.args.seeds
        searches = {v: [self.ensure(v, lr, f, seeds[0], "search") for f, lr in self.grid] for v in BANDS}
        choices = {v: select(search, self.grid, seeds[0], metric=METRIC) for v, search in searches.items()}
        self.state["selection"] = choices
        done = {v: choices[v]["complete"] for v in BANDS}
        finals = {
            v: [search[[lr for _, lr in self.grid].index(choices[v]["lr"])]] if done[v] else []
            for v, search in searches.items()
        }
        for seed in seeds[1:]:
            for variant in (v for v in BANDS if done[v]):
                choice = choices[variant]
                finals[variant].append(self.ensure(variant, choice["lr"], choice["lr_factor"], seed, "seed"))
        for variant, runs in finals.items():
            if not done[variant]:
                log(f"{variant}: learning-rate search incomplete; no seed runs")
                continue
            ok = [r for r in runs if r.get("status") == "ok"]
            scores = [r.get("test_score") for r in ok]
            mean, std = mean_std(scores)
            validation = [r.get("validation_score") for r in ok]
            self.state["summary"][variant] = {
                "bands": BANDS[variant] or "all 13",
                "lr": choices[variant]["lr"],
                "validation_f1_search": choices[variant]["validation_score"],
                "test_f1": scores,
                "test_f1_mean": mean,
                "test_f1_std": std,
                "validation_f1": validation,
                "validation_f1_mean": mean_std(validation)[0],
                "n": len(scores),
                "trainable_params": runs[0].get("parameters", {}).get("trainable"),
                "adapter_bytes": runs[0].get("adapter_bytes"),
            }
        self.save()
        return self.state


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "oscd13_s2"))
    parser.add_argument("--model", default=str(SHARED_BACKBONE))
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "accuracy_oscd13.json"))
    parser.add_argument("--work-dir", default=None, help="Runs and the split (default: a folder in /tmp).")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--train-cities", type=int, default=8)
    parser.add_argument("--val-cities", type=int, default=2)
    parser.add_argument("--crop", type=int, default=128, help="Random training crop (a multiple of 32).")
    parser.add_argument("--crops-per-image", default="auto")
    # forwarded to every run's TrainingArguments, as `upetu-train change-detection` offers them
    names = ("epochs", "batch_size", "dice_weight", "cpu")
    add_training_options(parser, "change-detection", names, epochs=40, batch_size=8, dice_weight=1.0)
    parser.add_argument("--lr-factors", default="0.333333,1,3", help="Multiples of UPetu's default 1e-2.")
    parser.add_argument(
        "--head-lr",
        default=f"{DENSE_HEAD_LR['change-detection']:g}",
        help="Learning rate of the change-detection decoder: a number, or 'lr' for the adapter's rate of each run "
        "(the protocol of results/accuracy_oscd13.json, run before the training API had a head rate). Default: "
        "the training API's (%(default)s).",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument(
        "--reduced",
        default=None,
        help="Say why this is a smaller run than the protocol (recorded, e.g. time).",
    )
    parser.add_argument("--resume", action="store_true", help="Keep the finished runs of --output.")
    args = parser.parse_args(argv)
    if args.head_lr != "lr":
        try:
            args.head_lr = f"{float(args.head_lr):g}"
        except ValueError:
            parser.error(f"--head-lr={args.head_lr!r}: give a learning rate or 'lr'")
    args.lr_factors = [float(f) for f in args.lr_factors.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work_dir = args.work_dir or str(Path("/tmp") / "upetu-oscd13")
    data = Path(args.data).expanduser().resolve()
    split_root, split = city_split(
        data, args.split_seed, args.train_cities, args.val_cities, Path(args.work_dir)
    )
    bench = Benchmark(args, split_root, split)
    started = time.perf_counter()
    session = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info("cpu" if args.cpu or not torch.cuda.is_available() else "cuda"),
        "git": git_state(CODE_PATHS),
    }
    bench.state["sessions"].append(session)
    state = bench.run()
    session["wall_time_s"] = round(time.perf_counter() - started, 1)
    bench.save()
    for variant, s in state["summary"].items():
        if s["test_f1_mean"] is not None:
            print(
                f"{variant:14s} test F1 {100 * s['test_f1_mean']:.2f} +- {100 * s['test_f1_std']:.2f} (n={s['n']})"
            )
    return state


if __name__ == "__main__":
    main()
