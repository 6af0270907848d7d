"""Compare Q-Linear designs on UCM-55 from the accuracy benchmark's raw results (issue 10).

Reads the classification results of each design (`--design NAME=JSON`, oldest first; the last one is the current
design) and of the ablation runs of `scripts/ablate_qlinear.py`, and writes `qlinear_comparison.json` (every number
used) and `qlinear_comparison.md` (the tables) into `--output-dir`. Designs so far:

- format1: per-tensor mean/std recomputed from the latent weight (detached), unclipped STE;
- format2: latents in weight units, learned unit-sized row scales, exact idempotent codecs, no weight decay on
  k-bit latents;
- format3: format 2 with the k-bit row magnitudes (W_down's alpha, EQAM's s) in weight units, so Adam moves them at
  the 32-bit pace;
- format4: format 3 with a learned per-column scale on EQAM's W_up at 1 and 2 bits (4, 8 and 32 bits unchanged);
- format5: format 4 with 1-bit weights `sign(L) * mean|L|` over each row of W_down and each column of W_up,
  derived from plain latent weights (`SignCodec`) instead of learned magnitudes (2 to 32 bits unchanged).

Only runs on split seed 0 count (the benchmark protocol of issue 10: one split, the final seeds).

- Bit widths: test accuracy mean ± std over the final seeds per design, and the aims "1-bit within 0.5 points of
  32-bit" and "1-bit seed spread no larger than 32-bit's" for the current design.
- Remedies: validation accuracy (never test) of each ablation against the runs of the design they ablate
  (`--ablated-design`, format2 for the committed ablations), same variant, learning rate and seeds; likewise each
  trial against the design it was tried on (`--trial NAME@DESIGN=JSON`, default design `--tried-on`).
- Diagnostics (`--diagnostic NAME@DESIGN=JSON`, e.g. `down-32bit`: one EQAM projection left unquantized, or the
  control `kbit-parameterization`): not remedies and never adopted, so they report test accuracy too (1050
  images, five times the validation part): the diagnostic's runs next to the design's 1-bit and 32-bit runs of
  the same seeds, at the design's chosen rates.
- Levers on the main protocol (`--lever NAME=JSON`: a trial run on every split, e.g. 3 splits x 2 seeds, with its own
  learning-rate search): the lever minus the current design (`--lever-reference`, the main benchmark's
  results/accuracy_classification.json), same variant, paired over the (split, seed) runs both have, on validation
  (which decides) and on test, with 95 % t-intervals (`_ledger.paired_scores`).

The command that wrote results/qlinear_comparison.md (and the JSON beside it) is at the top of that file;
rerunning it regenerates both. A small example:

```bash
python scripts/compare_qlinear.py --design format3=results/qlinear_v3_accuracy_classification.json \
    --design format4=results/qlinear_v4_accuracy_classification.json \
    --trial r-24@format4=results/qlinear_ablations/r-24.json --output-dir /tmp/qlinear
```
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import write_text_atomic
from _ledger import paired_scores

BITS = {"upetu-1bit": 1, "upetu-2bit": 2, "upetu": 4, "upetu-32bit": 32}


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    values = [100.0 * v for v in values]
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def fmt(stats: dict[str, Any] | None) -> str:
    if not stats or stats["mean"] is None:
        return "—"
    std = f" ± {stats['std']:.2f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.2f}{std} (n={stats['n']})"


def final_runs(data: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """The runs the benchmark reports for `variant`: its chosen learning rate, every final seed."""
    summary = data["summary"].get(variant)
    if not summary:
        return []
    return [
        r
        for r in data["runs"]
        if r["variant"] == variant and r.get("status") == "ok" and r["lr"] == summary["lr"]
        and r["seed"] in summary["seeds"] and r.get("split_seed", 0) == 0
    ]  # fmt: skip


def aim_values(one: dict[str, Any] | None, full: dict[str, Any] | None) -> dict[str, float]:
    """Issue 10's two aims from the 1-bit and 32-bit test statistics (points)."""
    if not one or not full or one["mean"] is None or full["mean"] is None:
        return {}
    return {
        "1-bit minus 32-bit (test, points), aim >= -0.5": one["mean"] - full["mean"],
        "1-bit std minus 32-bit std (test, points), aim <= 0": (one["std"] or 0.0) - (full["std"] or 0.0),
    }


def design_runs(
    design: dict[str, Any], extra: Sequence[dict[str, Any]], variant: str, seeds: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """The design's split-0 runs of `variant` at its chosen rate, pooled over its file and `extra` (its
    `--reference` files), each run once; only `seeds` if given."""
    lr = (design["summary"].get(variant) or {}).get("lr")
    runs = {
        r["key"]: r
        for data in (design, *extra)
        for r in data["runs"]
        if r["variant"] == variant and r.get("status") == "ok" and r.get("split_seed", 0) == 0 and r["lr"] == lr
        and (seeds is None or r["seed"] in seeds)
    }  # fmt: skip
    return list(runs.values())


def every_seed(design: dict[str, Any], extra: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """1-bit and 32-bit test accuracy over every seed of split 0 run at the design's chosen rates, in the design's
    file and in its `--reference` files (more seeds of the same design): the aims on more than the 3 final seeds."""
    stats = {}
    for variant in ("upetu-1bit", "upetu-32bit"):
        runs = design_runs(design, extra, variant)
        stats[variant] = {
            "seeds": sorted(r["seed"] for r in runs),
            "test": mean_std([r["test_score"] for r in runs]),
        }
    return {**stats, "aims": aim_values(stats["upetu-1bit"]["test"], stats["upetu-32bit"]["test"])}


def bit_widths(designs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = {}
    for variant, bits in BITS.items():
        row: dict[str, Any] = {"bits": bits}
        for name, data in designs.items():
            runs = final_runs(data, variant)
            row[name] = {
                "lr": data["summary"].get(variant, {}).get("lr"),
                "test": mean_std([r["test_score"] for r in runs]) if runs else None,
                "validation": mean_std([r["validation_score"] for r in runs]) if runs else None,
            }
        rows[variant] = row
    current = list(designs)[-1]
    aims = aim_values(rows["upetu-1bit"][current]["test"], rows["upetu-32bit"][current]["test"])
    return {"designs": list(designs), "rows": rows, "aims": aims}


def ablations(
    new: dict[str, Any], files: dict[str, dict[str, Any]], extra: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Validation accuracy of each ablation's split-0 runs vs the ablated design `new` at the same variant, learning
    rate and seeds (the design's runs pooled with `extra`, more runs of the same design, e.g. further seeds). A
    trial that also ran other splits (e.g. as a lever) is compared on split 0 only, like the design."""
    pool = [
        r
        for data in (new, *extra)
        for r in data["runs"]
        if r.get("status") == "ok" and r.get("split_seed", 0) == 0
    ]
    result = {}
    for name, data in files.items():
        runs = [r for r in data["runs"] if r.get("status") == "ok" and r.get("split_seed", 0) == 0]
        keys = {(r["variant"], r["lr"], r["seed"]) for r in runs}
        reference = list({r["key"]: r for r in pool if (r["variant"], r["lr"], r["seed"]) in keys}.values())
        result[name] = {
            "runs": sorted(keys),
            "ablation_validation": mean_std([r["validation_score"] for r in runs]),
            "design_validation": mean_std([r["validation_score"] for r in reference]),
        }
    return result


def diagnostics(
    design: dict[str, Any], files: dict[str, dict[str, Any]], extra: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Validation and test accuracy of each diagnostic's runs (split 0, at the diagnostic's own chosen rate) and of
    the design's runs of the same seeds for each variant the diagnostic ran and for `upetu-1bit` and `upetu-32bit`,
    at the design's chosen rates."""
    chosen = {variant: s["lr"] for variant, s in design["summary"].items()}

    def scores(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {part: mean_std([r[f"{part}_score"] for r in runs]) for part in ("validation", "test")}

    result = {}
    for name, data in files.items():
        # the diagnostic's final runs: split 0, at its own chosen rate where it searched one (e.g. `r-64` at 1 bit)
        rate = {variant: s.get("lr") for variant, s in data.get("summary", {}).items()}
        runs = [
            r for r in data["runs"]
            if r.get("status") == "ok" and r.get("split_seed", 0) == 0 and rate.get(r["variant"], r["lr"]) == r["lr"]
        ]  # fmt: skip
        seeds = sorted({r["seed"] for r in runs})
        entry: dict[str, Any] = {"seeds": seeds, "diagnostic": scores(runs)}
        for variant in sorted({r["variant"] for r in runs} | {"upetu-1bit", "upetu-32bit"}):
            same = design_runs(design, extra, variant, seeds)
            entry[variant] = {"lr": chosen.get(variant), "n": len(same), **scores(same)}
        result[name] = entry
    return result


def levers(
    reference: dict[str, Any], files: dict[str, dict[str, Any]], versus: Sequence[str] = ()
) -> dict[str, Any]:
    """Each lever minus `reference` (the main benchmark's results) for the variants it ran, paired over the
    (split, seed) runs at each one's chosen learning rate, on validation and on test (points). With `versus`, each
    lever variant is also compared with those other methods of `reference` (e.g. `full`): rows `NAME (variant) vs
    method`."""

    def entry(data: dict[str, Any], variant: str, score: str) -> tuple[float, dict] | None:
        """The chosen rate and its runs' `score` (points) by (split seed, seed), for the runs the summary reports
        (a file can hold more seeds at that rate, imported from a search on more seeds)."""
        summary = data["summary"].get(variant) or {}
        seeds = summary.get("seeds", [])
        splits = summary.get("split_seeds") or [0] * len(seeds)  # files from before repeated splits: split 0
        lr, reported = summary.get("lr"), set(zip(splits, seeds))
        runs = [
            r for r in data["runs"] if r["variant"] == variant and r.get("status") == "ok" and r["lr"] == lr
            and (r.get("split_seed", 0), r["seed"]) in reported
        ]  # fmt: skip
        return (lr, {(r.get("split_seed", 0), r["seed"]): 100.0 * r[score] for r in runs}) if runs else None

    result: dict[str, Any] = {}
    for name, data in files.items():
        for variant in data["summary"]:
            for other in (variant, *versus):
                row: dict[str, Any] = {"variant": variant, "versus": other}
                for part in ("validation", "test"):
                    lever, design = (
                        entry(data, variant, f"{part}_score"),
                        entry(reference, other, f"{part}_score"),
                    )
                    if lever is None or design is None:
                        continue
                    (row["lr"], lever_scores), (row["design_lr"], design_scores) = lever, design
                    row[part] = paired_scores(lever_scores, design_scores, "lever", "design")
                    row[f"{part}_mean"] = statistics.fmean(lever_scores.values())
                if "validation" in row:
                    result[f"{name} ({variant})" + ("" if other == variant else f" vs {other}")] = row
    return result


def remedy_rows(entries: dict[str, Any]) -> list[str]:
    """Markdown rows of an ablation or trial table: runs, validation with and without, difference."""
    lines = []
    for name, entry in entries.items():
        a, d = entry["ablation_validation"], entry["design_validation"]
        diff = a["mean"] - d["mean"] if a["mean"] is not None and d["mean"] is not None else None
        lines.append(
            f"| {name} | {len(entry['runs'])} | {fmt(a)} | {fmt(d)} | {'—' if diff is None else f'{diff:+.2f}'} |"
        )
    return lines


def aim_rows(aims: dict[str, float]) -> list[str]:
    """Markdown rows of an aim table: the value and whether it meets the aim."""
    rows = []
    for aim, value in aims.items():
        met = value >= -0.5 if "aim >= -0.5" in aim else value <= 0
        rows.append(f"| {aim} | {value:+.2f} | {'yes' if met else '**no**'} |")
    return rows


def markdown(comparison: dict[str, Any]) -> str:
    designs = comparison["bits"]["designs"]
    current = designs[-1]
    lines = [
        "# Q-Linear designs on UCM-55 (accuracy, %)",
        "",
        "*Generated by `scripts/compare_qlinear.py` from the benchmark's raw results; do not edit by hand.*",
        "",
        *([f"Regenerate with `{comparison['command']}`.", ""] if comparison.get("command") else []),
        "format1: per-tensor mean/std recomputed from the latent weight (detached; unclipped STE). format2: latents",
        "in weight units, learned unit-sized row scales, exact idempotent codecs, no weight decay on k-bit latents.",
        "format3: format2 with the k-bit row magnitudes in weight units (Adam moves them at the 32-bit pace).",
        "format4: format3 with a learned per-column scale on EQAM's W_up at 1 and 2 bits (4 and 32 bits unchanged,",
        "their runs shared with format3). format5 (current): format4 with 1-bit weights `sign(L) * mean|L|` per row of",
        "W_down and column of W_up, derived from plain latent weights instead of learned (2, 4 and 32 bits",
        "unchanged, their runs shared with format4). Mean ± sample std over the final seeds of split 0, each design",
        "at its own chosen learning rate.",
        "",
        "| bits | "
        + " | ".join(f"{d} test" for d in designs)
        + " | "
        + " | ".join(f"{d} validation" for d in designs)
        + " | "
        + " | ".join(f"{d} lr" for d in designs)
        + " |",
        "|---:|" + "---:|" * (3 * len(designs)),
    ]
    for row in comparison["bits"]["rows"].values():
        cells = [fmt(row[d]["test"]) for d in designs] + [fmt(row[d]["validation"]) for d in designs]
        cells += [str(row[d]["lr"] or "—") for d in designs]
        lines.append(f"| {row['bits']} | " + " | ".join(cells) + " |")
    lines += ["", f"| aim ({current}) | value | met |", "|---|---:|---|"]
    lines += aim_rows(comparison["bits"]["aims"])
    pooled = comparison.get("every_seed")
    if pooled and pooled["aims"]:
        one, full = pooled["upetu-1bit"], pooled["upetu-32bit"]
        lines += [
            "",
            f"The same aims over every seed of split 0 run at {current}'s rates (its file and its `--reference` "
            f"files): 1-bit {fmt(one['test'])}, seeds {', '.join(map(str, one['seeds']))}; 32-bit "
            f"{fmt(full['test'])}, seeds {', '.join(map(str, full['seeds']))} (test):",
            "",
            f"| aim ({current}, every seed) | value | met |",
            "|---|---:|---|",
            *aim_rows(pooled["aims"]),
        ]
    if comparison["ablations"]:
        lines += [
            "",
            f"Remedies, each undone on its own in {comparison['ablated_design']} (validation accuracy, same variant, "
            "learning rate and seeds):",
            "",
            "| ablation | runs | validation with the ablation | validation of the design | difference |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += remedy_rows(comparison["ablations"])
    for design, trials in comparison.get("trials", {}).items():
        lines += [
            "",
            f"Remedies tried on top of {design} (validation accuracy, same variant, learning rate and seeds; the "
            "design with the best validation mean is adopted):",
            "",
            "| remedy | runs | validation with the remedy | validation of the design | difference |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += remedy_rows(trials)
    for design, entries in comparison.get("diagnostics", {}).items():
        lines += [
            "",
            f"Diagnostics on {design} (not remedies, never adopted; test shown because nothing is chosen on it): the "
            "diagnostic's runs and the design's 1-bit and 32-bit runs of the same seeds, at the design's rates:",
            "",
            "| diagnostic | seeds | validation | test | 1-bit validation | 1-bit test | 32-bit validation "
            "| 32-bit test |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, entry in entries.items():
            one, full = entry.get("upetu-1bit", {}), entry["upetu-32bit"]
            cells = [fmt(entry["diagnostic"][p]) for p in ("validation", "test")]
            cells += [fmt(one.get(p)) for p in ("validation", "test")]
            cells += [fmt(full[p]) for p in ("validation", "test")]
            lines.append(f"| {name} | {', '.join(map(str, entry['seeds']))} | " + " | ".join(cells) + " |")
    if comparison.get("levers"):
        lines += [
            "",
            "Levers on the main protocol (every split and seed, each with its own learning-rate search): the lever "
            "minus the current design (or, in rows `vs METHOD`, minus that method) over the (split, seed) pairs both "
            "ran, with its 95 % t-interval (points; validation decides, test is reported):",
            "",
            "| lever | pairs | lr (design's) | validation | validation difference | test | test difference |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in comparison["levers"].items():
            cells = []
            for part in ("validation", "test"):
                d = row.get(part)
                cells += [
                    f"{row[f'{part}_mean']:.2f}" if f"{part}_mean" in row else "—",
                    f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d else "—",
                ]
            n = row["validation"]["n"] if row.get("validation") else 0
            lines.append(
                f"| {name} | {n} | {row['lr']:g} ({row['design_lr']:g}) | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--design",
        action="append",
        required=True,
        metavar="NAME=JSON",
        help="accuracy_classification.json of a design, oldest first (the last is the current design)",
    )
    parser.add_argument(
        "--ablation", action="append", default=[], metavar="NAME=JSON", help="ablation results"
    )
    parser.add_argument(
        "--trial",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="results of a remedy tried on top of --tried-on, or of DESIGN with NAME@DESIGN=JSON "
        "(scripts/ablate_qlinear.py)",
    )
    parser.add_argument(
        "--diagnostic",
        action="append",
        default=[],
        metavar="NAME@DESIGN=JSON",
        help="results of a diagnostic run on DESIGN (scripts/ablate_qlinear.py down-32bit, up-32bit)",
    )
    parser.add_argument("--tried-on", help="the design the trials were run on (default: the last)")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="[DESIGN=]JSON",
        help="more runs of a design (default --tried-on; e.g. further seeds), pooled with its file for the trials",
    )
    parser.add_argument(
        "--lever", action="append", default=[], metavar="NAME=JSON", help="a trial on the main protocol"
    )
    parser.add_argument(
        "--lever-reference",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "results" / "accuracy_classification.json",
        help="the current design on the main protocol (results/accuracy_classification.json)",
    )
    parser.add_argument(
        "--lever-versus",
        action="append",
        default=[],
        metavar="METHOD",
        help="also compare each lever with this method of --lever-reference (e.g. full, lora)",
    )
    parser.add_argument(
        "--ablated-design", help="the design the ablations undo a remedy of (default: the last)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args(argv)

    def named(items: list[str]) -> dict[str, Path]:
        pairs = [item.partition("=") for item in items]
        bad = [item for item, (name, _, path) in zip(items, pairs) if not name or not path]
        if bad:
            parser.error(f"expected NAME=JSON, got {bad}")
        return {name: Path(path) for name, _, path in pairs}

    design_paths, ablation_paths = named(args.design), named(args.ablation)
    ablated = args.ablated_design or list(design_paths)[-1]
    tried_on = args.tried_on or list(design_paths)[-1]

    def by_design(items: list[str]) -> dict[str, dict[str, list[Path]]]:
        """`NAME[@DESIGN]=JSON` items per design (default `--tried-on`); a name given twice pools its files (e.g.
        two sets of seeds, or shards)."""
        paths: dict[str, dict[str, list[Path]]] = {}
        for item in items:
            name, path = next(iter(named([item]).items()))
            name, _, design = name.partition("@")
            paths.setdefault(design or tried_on, {}).setdefault(name, []).append(path)
        return paths

    trial_paths, diagnostic_paths = by_design(args.trial), by_design(args.diagnostic)
    reference_paths: dict[str, list[str]] = {}
    for item in args.reference:
        design, sep, path = item.partition("=")
        reference_paths.setdefault(design if sep else tried_on, []).append(path if sep else item)
    for flag, names in (
        ("--ablated-design", [ablated]),
        ("--tried-on", [tried_on]),
        ("--trial NAME@DESIGN", list(trial_paths)),
        ("--diagnostic NAME@DESIGN", list(diagnostic_paths)),
        ("--reference DESIGN=", list(reference_paths)),
    ):
        for name in names:
            if name not in design_paths:
                parser.error(f"{flag} {name!r} is not one of the designs {list(design_paths)}")
    designs = {name: json.loads(path.read_text()) for name, path in design_paths.items()}
    files = {name: json.loads(path.read_text()) for name, path in ablation_paths.items()}
    references = {
        design: [json.loads(Path(path).read_text()) for path in paths]
        for design, paths in reference_paths.items()
    }

    def pooled(by_name: dict[str, list[Path]]) -> dict[str, dict[str, Any]]:
        """Each name's runs pooled over its files, and each variant's chosen rate (from the first file that
        chose one)."""
        result = {}
        for name, paths in by_name.items():
            files = [json.loads(path.read_text()) for path in paths]
            summary: dict[str, Any] = {}
            for data in reversed(files):
                summary.update(data.get("summary", {}))
            result[name] = {"runs": [r for data in files for r in data["runs"]], "summary": summary}
        return result

    trials = {
        design: ablations(designs[design], pooled(by_name), references.get(design, []))
        for design, by_name in trial_paths.items()
    }
    diagnosed = {
        design: diagnostics(designs[design], pooled(by_name), references.get(design, []))
        for design, by_name in diagnostic_paths.items()
    }
    lever_paths = named(args.lever)
    lever_files = {name: json.loads(path.read_text()) for name, path in lever_paths.items()}
    command = ["python", "scripts/compare_qlinear.py", *(sys.argv[1:] if argv is None else argv)]
    comparison = {
        "command": shlex.join(command),  # what regenerates this file and its table
        "sources": {
            "designs": {k: str(v) for k, v in design_paths.items()},
            "ablations": {k: str(v) for k, v in ablation_paths.items()},
            "trials": {d: {k: [str(p) for p in v] for k, v in t.items()} for d, t in trial_paths.items()},
            "diagnostics": {
                d: {k: [str(p) for p in v] for k, v in t.items()} for d, t in diagnostic_paths.items()
            },
            "references": reference_paths,
            "levers": {k: str(v) for k, v in lever_paths.items()},
            "lever_reference": str(args.lever_reference) if lever_paths else None,
        },
        "bits": bit_widths(designs),
        "every_seed": every_seed(designs[list(designs)[-1]], references.get(list(designs)[-1], [])),
        "ablated_design": ablated,
        "ablations": ablations(designs[ablated], files),
        "trials": trials,
        "diagnostics": diagnosed,
        "levers": (
            levers(json.loads(args.lever_reference.read_text()), lever_files, args.lever_versus)
            if lever_files
            else {}
        ),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output_dir / "qlinear_comparison.json", json.dumps(comparison, indent=2) + "\n")
    write_text_atomic(args.output_dir / "qlinear_comparison.md", markdown(comparison))
    print(markdown(comparison))
    return comparison


if __name__ == "__main__":
    main()
