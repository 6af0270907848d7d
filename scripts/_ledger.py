"""The accuracy benchmark's ledger: one JSON file per task (`accuracy_<task>.json`) that records every run, is
continued by `--resume`, merges the runs of parallel shards (`--import-runs`), picks each method's learning rate on
validation and summarises the seeds. `scripts/make_report.py` renders these files; the schema only grows."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import now, write_json_atomic

SCHEMA_VERSION = 1


#: Protocol entries that do not change any run's result, so files that differ only there can be merged: the
#: learning-rate grid (runs are keyed by their learning rate), the list of split seeds (runs are keyed by theirs)
#: and the search seeds (runs are keyed by their seed; the choice is made again from the runs on file).
MERGEABLE_PROTOCOL_KEYS = ("lr_factors", "split_seeds", "search_seeds")


def run_key(variant: str, options: dict[str, Any], lr: float, seed: int, split_seed: int = 0) -> str:
    """Identifies a run within a task and protocol (split seed 0 adds nothing, the key of the first files)."""
    split = f"|split={split_seed}" if split_seed else ""
    return f"{variant}|{json.dumps(options, sort_keys=True)}|lr={lr:.6g}|seed={seed}{split}"


def same_protocol(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The protocol entries in which `a` and `b` differ, apart from `MERGEABLE_PROTOCOL_KEYS`."""
    keys = (set(a) | set(b)) - set(MERGEABLE_PROTOCOL_KEYS)
    return sorted(k for k in keys if a.get(k) != b.get(k))


def split_of(run: dict[str, Any]) -> int:
    """A run's split seed (runs recorded before repeated splits used split seed 0)."""
    return run.get("split_seed", 0)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for a single value); `(None, None)` when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


#: Scores closer than this are a tie (on 210 validation images one image moves the accuracy by 0.0048).
TIE_TOLERANCE = 1e-9
#: Ties are broken by the mean validation metric of the last this many epochs of the search runs.
LAST_EPOCHS = 3


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None when a value is undefined (NaN is stored as null) or there is none."""
    if not values or any(v is None or math.isnan(v) for v in values):
        return None
    return statistics.fmean(values)


def break_tie(by_rate: dict[float, dict], tied: list[float], pairs: list[tuple]) -> tuple[float, str]:
    """The rate among `tied` (tied on the search's (split seed, seed) `pairs`) that the first decisive rule puts
    ahead, and that rule's name: `seeds`, the mean validation over every pair all of them ran (when that adds
    pairs), then `last epochs`, the mean validation of the last `LAST_EPOCHS` epochs of the search runs; a rule that
    cannot score every tied rate is skipped, and when none decides, the smaller rate wins (`smaller rate`)."""
    common = sorted(set.intersection(*(set(by_rate[lr]) for lr in tied)))
    metric = by_rate[tied[0]][pairs[0]].get("metric", "")

    def last(run: dict[str, Any]) -> float | None:
        values = [h.get(f"validation/{metric}") for h in (run.get("history") or [])[-LAST_EPOCHS:]]
        return mean_or_none(values) if values else None

    evidence = [("seeds", lambda lr: mean_or_none([by_rate[lr][p]["validation_score"] for p in common]))]
    evidence = evidence[: set(common) > set(pairs)]  # only when other seeds add evidence
    evidence.append(("last epochs", lambda lr: mean_or_none([last(by_rate[lr][p]) for p in pairs])))
    for rule, score in evidence:
        scores = {lr: score(lr) for lr in tied}
        if any(v is None for v in scores.values()):
            continue
        tied = [lr for lr in tied if max(scores.values()) - scores[lr] <= TIE_TOLERANCE]
        if len(tied) == 1:
            return tied[0], rule
    return min(tied), "smaller rate"


def select(runs: list[dict], grid: list[tuple[float, float]], seeds, splits=0) -> dict:
    """The rate of the `grid` ((factor, rate) pairs) with the best mean validation over the search runs of `seeds`
    on the split seeds `splits`. A tie is broken by more evidence (`break_tie`) and recorded as `tie`; `complete`
    is False while a candidate misses a run; `interior`: neither the smallest nor the largest candidate."""
    seeds, splits = ([v] if isinstance(v, int) else list(v) for v in (seeds, splits))
    pairs = [(split, seed) for split in splits for seed in seeds]
    by_rate: dict[float, dict[tuple[int, int], dict[str, Any]]] = {}
    for r in runs:
        if r.get("status") == "ok" and split_of(r) in splits:
            by_rate.setdefault(r["lr"], {})[split_of(r), r["seed"]] = r
    candidates = []
    for f, lr in grid:
        mine = by_rate.get(lr, {})
        scores = [mine[p]["validation_score"] if p in mine else None for p in pairs]
        finished = all(p in mine for p in pairs)
        mean = statistics.fmean(scores) if finished and None not in scores else None
        candidates.append({"lr": lr, "lr_factor": f, "finished": finished, "validation_score": mean})
        candidates[-1].update({"validation_scores": scores} if len(pairs) > 1 else {})
    scored = [c for c in candidates if c["finished"]]
    if not scored:
        return {"candidates": candidates, "complete": False, "lr": None}

    def score(c: dict[str, Any]) -> float:  # an undefined score ranks last
        value = c["validation_score"]
        return -math.inf if value is None or math.isnan(value) else value

    top = max(score(c) for c in scored)
    tied = [c["lr"] for c in scored if top - score(c) <= TIE_TOLERANCE]
    rate, rule = break_tie(by_rate, tied, pairs) if len(tied) > 1 else (tied[0], None)
    best, lrs = next(c for c in scored if c["lr"] == rate), [lr for _, lr in grid]
    choice = dict(candidates=candidates, complete=len(scored) == len(candidates))
    choice.update({"interior": min(lrs) < rate < max(lrs), "lr": rate, "lr_factor": best["lr_factor"]})
    choice.update(validation_score=best["validation_score"], best_epoch=by_rate[rate][pairs[0]]["best_epoch"])
    return dict(choice, tie={"lrs": tied, "decided_by": rule}) if rule else choice


#: Two-sided 95 % quantiles of Student's t distribution by degrees of freedom (beyond 30: the normal's 1.96).
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def paired_difference(summary: dict[str, Any], a: str, b: str) -> dict[str, Any] | None:
    """`a` minus `b` over the (split seed, seed) pairs both ran at their chosen rates (`paired_scores`); pairing
    removes what a pair shares (split, seed), so it detects smaller differences than two means do."""
    if a not in summary or b not in summary:
        return None
    return paired_scores(test_scores_by_pair(summary[a]), test_scores_by_pair(summary[b]), a, b)


def final_pairs(s: dict[str, Any]) -> list[tuple[int, int]]:
    """The (split seed, seed) pairs of a variant summary's final runs, in its order."""
    return list(zip(s.get("split_seeds") or [0] * len(s["seeds"]), s["seeds"]))


def test_scores_by_pair(s: dict[str, Any]) -> dict[tuple[int, int], float]:
    """A variant summary's test scores keyed by (split seed, seed), undefined ones left out."""
    return {p: v for p, v in zip(final_pairs(s), s["test_scores"]) if v is not None}


def paired_scores(left: dict, right: dict, a: str = "a", b: str = "b") -> dict[str, Any] | None:
    """`left` minus `right` (scores by (split seed, seed)) over the keys both have (None under 2): mean, std,
    the 95 % t-interval of the mean, and `decided`: `a` or `b` when the interval excludes 0, else None."""
    pairs = sorted(set(left) & set(right))
    if len(pairs) < 2:
        return None
    diffs = [left[p] - right[p] for p in pairs]
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    half = (_T95[len(diffs) - 2] if len(diffs) - 1 <= len(_T95) else 1.96) * std / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    out = dict(a=a, b=b, n=len(pairs), pairs=[list(p) for p in pairs], mean=mean, std=std)
    return dict(out, ci95=[low, high], decided=a if low > 0 else b if high < 0 else None)


def fmt_interval(d: dict[str, Any], sep: str = " ", number: Callable[[float], str] | None = None) -> str:
    """A paired difference (`paired_scores`): `+1.23 [+0.45, +2.01]`, mean and interval joined by `sep`, each
    printed by `number` (default: in points with a sign, 2 decimals)."""
    number = number or (lambda x: f"{100 * x:+.2f}")
    low, high = d["ci95"]
    return f"{number(d['mean'])}{sep}[{number(low)}, {number(high)}]"


def summarize(state: dict[str, Any], setup) -> dict[str, Any]:
    """Per variant: the chosen rate (`select`, into `state["selection"]`) and the mean +- std of its final runs."""
    summary: dict[str, Any] = {}
    for name, variant in state["variants"].items():
        runs = [r for r in state["runs"] if r["variant"] == name and r["options"] == variant["options"]]
        grid = [tuple(g) for g in variant["lr_grid"]]
        choice = select(runs, grid, setup.search_seeds, setup.search_splits)
        state["selection"][name] = choice
        at_choice = [r for r in runs if r.get("status") == "ok" and r["lr"] == choice["lr"]]
        final = [r for r in at_choice if r["seed"] in setup.seeds and split_of(r) in setup.split_seeds]
        final.sort(key=lambda r: (split_of(r), r["seed"]))
        if final:
            summary[name] = run_summary(variant["label"], choice, final, runs)
    return summary


#: Entries of the first final run that a summary repeats (the same for every run of a variant).
SIZES = (
    "trainable_params", "adapter_params", "head_params", "trainable_pct", "adapter_pct_of_backbone",
    "checkpoint_bytes", "weights_bytes_with_head", "weights_bytes_without_head",
)  # fmt: skip


def run_summary(label: str, choice: dict, final: list[dict], runs: list[dict]) -> dict[str, Any]:
    """One variant's summary: its choice, and the scores, sizes and times of its `final` runs."""
    first, (test_mean, test_std) = final[0], mean_std([r["test_score"] for r in final])
    val_mean, val_std = mean_std([r["validation_score"] for r in final])
    out = {"label": label, "method": first["method"], "options": first["options"], "lr": first["lr"]}
    out.update(lr_factor=choice.get("lr_factor"), selection_complete=choice["complete"])
    out.update(seeds=[r["seed"] for r in final], split_seeds=[split_of(r) for r in final], n=len(final))
    out.update(test_scores=[r["test_score"] for r in final], test_mean=test_mean, test_std=test_std)
    out.update(validation_mean=val_mean, validation_std=val_std, best_epochs=[r["best_epoch"] for r in final])
    out.update({k: first[k] for k in SIZES})
    out["wall_time_s_mean"] = statistics.fmean(r["wall_time_s"] for r in final)
    out["train_runtime_s_mean"] = statistics.fmean(r["train_runtime_s"] for r in final)
    out["wall_time_s_all_runs"] = sum(r["wall_time_s"] for r in runs if r.get("wall_time_s"))
    out.update(runs_all=len(runs), devices=sorted({r["device"] for r in final}), splits=first.get("splits"))
    return out


def new_state(setup, args: argparse.Namespace) -> dict[str, Any]:
    """An empty ledger of `setup`'s task."""
    state = dict(schema=SCHEMA_VERSION, task=setup.name, metric=setup.metric, protocol=setup.protocol(args))
    return dict(state, sessions=[], backbone={}, variants={}, runs=[], selection={}, summary={})


def load_state(path: Path, setup, args: argparse.Namespace) -> dict[str, Any]:
    """The task's JSON to continue (`--resume`), or a fresh one; refuses to clobber results by accident."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    if args.overwrite or not old.get("runs"):
        return new_state(setup, args)
    if not args.resume:
        raise SystemExit(
            f"{path} already holds {len(old['runs'])} run(s): pass --resume to continue it, or --overwrite "
            "to start afresh."
        )
    protocol = setup.protocol(args)
    if changed := same_protocol(protocol, old.get("protocol", {})):
        raise SystemExit(
            f"{path} was recorded with other settings ({', '.join(changed)}); its runs cannot be mixed with "
            "these. Use the same settings, another --output-dir, or --overwrite."
        )
    old["runs"] = [r for r in old["runs"] if r.get("status") == "ok"]
    if retrain := set(args.retrain or ()):  # a design change: keep the old runs on record, never reuse them
        old.setdefault("superseded", []).extend(r for r in old["runs"] if r["variant"] in retrain)
        old["runs"] = [r for r in old["runs"] if r["variant"] not in retrain]
    old["protocol"] = protocol  # this session's grid and split seeds (the other runs are kept either way)
    return old


def import_runs(state: dict[str, Any], path: Path, setup, args: argparse.Namespace) -> int:
    """Add the finished runs of this run's variants (and sessions) of another JSON of the same task and protocol:
    how parallel shards merge. Another task's file is ignored, another protocol's refused. Returns the count."""
    if not path.is_file():
        raise SystemExit(f"--import-runs {path}: no such file")
    other = json.loads(path.read_text())
    if other.get("task") != setup.name:
        return 0
    if same_protocol(other.get("protocol", {}), setup.protocol(args)):
        raise SystemExit(
            f"--import-runs {path}: recorded with other settings than this run; only shards of the same protocol "
            "(the same flags apart from --methods, paths and runtime options) can be merged."
        )
    known = {r["key"] for r in state["runs"] if r.get("status") == "ok"}
    added = [r for r in other.get("runs", []) if r.get("status") == "ok" and r["key"] not in known]
    added = [r for r in added if r["variant"] in setup.variants]
    state["runs"].extend(added)
    state["sessions"].extend(s for s in other.get("sessions", []) if s not in state["sessions"])
    return len(added)


def save_state(path: Path, state: dict[str, Any], setup) -> None:
    """Summarise `state` and write it to `path` atomically."""
    state["summary"] = summarize(state, setup)
    finished = {r["key"] for r in state["runs"] if r.get("status") == "ok"}
    planned = state.get("planned", [])
    state["complete"] = bool(planned) and all(k in finished for k in planned)
    state["updated"] = now()
    write_json_atomic(path, state)
