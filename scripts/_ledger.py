"""The accuracy benchmark's ledger: one JSON file per task (`accuracy_<task>.json`) that records every run, is
continued by `--resume`, merges the runs of parallel shards (`--import-runs`), picks each method's learning rate on
validation and summarises the seeds. `scripts/make_report.py` renders these files; the schema only grows."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import write_json_atomic

SCHEMA_VERSION = 1


def run_key(variant: str, options: dict[str, Any], lr: float, seed: int) -> str:
    """Identifies a run within a task and protocol."""
    return f"{variant}|{json.dumps(options, sort_keys=True)}|lr={lr:.6g}|seed={seed}"


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for a single value); `(None, None)` when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def select(runs: list[dict[str, Any]], grid: list[tuple[float, float]], seed: int) -> dict[str, Any]:
    """The learning rate with the best validation metric among the search runs (seed `seed`); ties go to the
    smaller learning rate. `complete` is False while a candidate is missing or failed."""
    by_lr = {r["lr"]: r for r in runs if r["seed"] == seed and r.get("status") == "ok"}
    candidates = [
        {
            "lr": lr,
            "lr_factor": f,
            "finished": lr in by_lr,
            "validation_score": by_lr[lr]["validation_score"] if lr in by_lr else None,
        }
        for f, lr in grid
    ]
    scored = [c for c in candidates if c["finished"]]
    if not scored:
        return {"candidates": candidates, "complete": False, "lr": None}

    def rank(c: dict[str, Any]) -> tuple[float, float]:  # an undefined (NaN -> None) score ranks last
        score = c["validation_score"]
        return (-math.inf if score is None or math.isnan(score) else score, -c["lr"])

    best = max(scored, key=rank)
    return {
        "candidates": candidates,
        "complete": len(scored) == len(candidates),
        "lr": best["lr"],
        "lr_factor": best["lr_factor"],
        "validation_score": best["validation_score"],
        "best_epoch": by_lr[best["lr"]]["best_epoch"],
    }


def summarize(state: dict[str, Any], setup) -> dict[str, Any]:
    """Per variant: the chosen learning rate and the mean +- std over seeds of the runs at that rate."""
    summary: dict[str, Any] = {}
    for name in state["variants"]:
        options = state["variants"][name]["options"]
        runs = [r for r in state["runs"] if r["variant"] == name and r["options"] == options]
        grid = [(f, lr) for f, lr in state["variants"][name]["lr_grid"]]
        choice = select(runs, grid, setup.seeds[0])
        state["selection"][name] = choice
        final = sorted(
            (
                r
                for r in runs
                if r.get("status") == "ok" and r["lr"] == choice["lr"] and r["seed"] in setup.seeds
            ),
            key=lambda r: r["seed"],
        )
        if not final:
            continue
        test_mean, test_std = mean_std([r["test_score"] for r in final])
        val_mean, val_std = mean_std([r["validation_score"] for r in final])
        first = final[0]
        summary[name] = {
            "label": state["variants"][name]["label"],
            "method": first["method"],
            "options": first["options"],
            "lr": choice["lr"],
            "lr_factor": choice.get("lr_factor"),
            "selection_complete": choice["complete"],
            "seeds": [r["seed"] for r in final],
            "n": len(final),
            "test_scores": [r["test_score"] for r in final],
            "test_mean": test_mean,
            "test_std": test_std,
            "validation_mean": val_mean,
            "validation_std": val_std,
            "best_epochs": [r["best_epoch"] for r in final],
            "trainable_params": first["trainable_params"],
            "adapter_params": first["adapter_params"],
            "head_params": first["head_params"],
            "trainable_pct": first["trainable_pct"],
            "adapter_pct_of_backbone": first["adapter_pct_of_backbone"],
            "checkpoint_bytes": first["checkpoint_bytes"],
            "weights_bytes_with_head": first["weights_bytes_with_head"],
            "weights_bytes_without_head": first["weights_bytes_without_head"],
            "wall_time_s_mean": statistics.fmean(r["wall_time_s"] for r in final),
            "train_runtime_s_mean": statistics.fmean(r["train_runtime_s"] for r in final),
            "wall_time_s_all_runs": sum(r["wall_time_s"] for r in runs if r.get("wall_time_s")),
            "runs_all": len(runs),
            "devices": sorted({r["device"] for r in final}),
            "splits": first.get("splits"),
        }
    return summary


def new_state(setup, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "task": setup.task,
        "metric": setup.metric,
        "protocol": setup.protocol(args),
        "sessions": [],
        "backbone": {},
        "variants": {},
        "runs": [],
        "selection": {},
        "summary": {},
    }


def load_state(path: Path, setup, args: argparse.Namespace) -> dict[str, Any]:
    """The task's JSON to continue (`--resume`), or a fresh one; refuses to clobber results by accident."""
    protocol = setup.protocol(args)
    if path.is_file():
        old = json.loads(path.read_text())
        if args.overwrite or not old.get("runs"):
            return new_state(setup, args)
        if not args.resume:
            raise SystemExit(
                f"{path} already holds {len(old['runs'])} run(s): pass --resume to continue it, or --overwrite "
                "to start afresh."
            )
        if old.get("protocol") != protocol:
            changed = sorted(
                k
                for k in set(protocol) | set(old.get("protocol", {}))
                if protocol.get(k) != old.get("protocol", {}).get(k)
            )
            raise SystemExit(
                f"{path} was recorded with other settings ({', '.join(changed)}); its runs cannot be mixed with "
                "these. Use the same settings, another --output-dir, or --overwrite."
            )
        old["runs"] = [r for r in old["runs"] if r.get("status") == "ok"]
        return old
    return new_state(setup, args)


def import_runs(state: dict[str, Any], path: Path, setup, args: argparse.Namespace) -> int:
    """Add the finished runs (and sessions) of another JSON of the same task and protocol to `state`: shards of
    one benchmark run in parallel processes (`--methods`, separate `--output-dir`) merge this way. Only runs of
    this run's methods (`setup.variants`) are taken, and the first file to hold a run key wins. Files of other
    tasks are ignored; a file of this task recorded under another protocol is refused. Returns how many runs were
    added."""
    if not path.is_file():
        raise SystemExit(f"--import-runs {path}: no such file")
    other = json.loads(path.read_text())
    if other.get("task") != setup.task:
        return 0
    if other.get("protocol") != setup.protocol(args):
        raise SystemExit(
            f"--import-runs {path}: recorded with other settings than this run; only shards of the same protocol "
            "(the same flags apart from --methods, paths and runtime options) can be merged."
        )
    known = {r["key"] for r in state["runs"] if r.get("status") == "ok"}
    added = [
        r
        for r in other.get("runs", [])
        if r.get("status") == "ok" and r["key"] not in known and r["variant"] in setup.variants
    ]
    state["runs"].extend(added)
    new_sessions = [s for s in other.get("sessions", []) if s not in state["sessions"]]
    state["sessions"].extend(new_sessions)
    return len(added)


def save_state(path: Path, state: dict[str, Any], setup) -> None:
    state["summary"] = summarize(state, setup)
    finished = {r["key"] for r in state["runs"] if r.get("status") == "ok"}
    planned = state.get("planned", [])
    state["complete"] = bool(planned) and all(k in finished for k in planned)
    state["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(path, state)
