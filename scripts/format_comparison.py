#!/usr/bin/env python
"""Report of issue 27's comparison of Q-Linear formats (plan: results/format_comparison/PLAN.md): each candidate's
runs at the learning rate its own search chose, paired over their shared (split seed, seed) pairs against today's
default (format4-4bit) and 32-bit (`_ledger.paired_scores`), and the plan's decision rule on validation only.
Writes `report.json` and `report.md` beside the ledgers.

    python scripts/format_comparison.py results/format_comparison
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _common import fill, row, table, write_json_atomic, write_text_atomic
from _ledger import fmt_interval, paired_scores, split_of

#: candidate -> (its ledger file in the folder, its variant name in that ledger)
CANDIDATES = {
    "format4-4bit": ("format4.json", "upetu"),
    "derived-4bit": ("derived.json", "upetu"),
    "format5-1bit": ("format5.json", "upetu-1bit"),
    "32bit": ("b32.json", "upetu-32bit"),
}
DEFAULT, REFERENCE = "format4-4bit", "32bit"
SMALLER_FIRST = ["format5-1bit", "derived-4bit", "format4-4bit"]  # stored bytes, for exact ties
MIN_PAIRS = 24
PARTS = ("validation", "test")


def candidate_runs(folder: Path, name: str) -> dict[str, Any] | None:
    """The candidate's chosen learning rate and its runs there: {(split, seed): (validation, test)}."""
    file, variant = CANDIDATES[name]
    if not (folder / file).exists():
        return None
    ledger = json.loads((folder / file).read_text())
    choice = {k: ledger.get("selection", {}).get(variant, {}).get(k) for k in ("lr", "lr_factor", "interior")}
    wanted = (variant, choice["lr"], "ok")
    mine = [r for r in ledger["runs"] if (r["variant"], r["lr"], r.get("status")) == wanted]
    runs = {(split_of(r), r["seed"]): (r["validation_score"], r["test_score"]) for r in mine}
    return {**choice, "runs": runs}


def differences(a: dict, b: dict, name_a: str, name_b: str) -> dict[str, Any]:
    """Paired validation and test differences `a - b` over their shared pairs."""
    scores = [[{k: v[i] for k, v in c["runs"].items()} for c in (a, b)] for i in range(len(PARTS))]
    return {split: paired_scores(*scores[i], name_a, name_b) for i, split in enumerate(PARTS)}


def decide(report: dict[str, Any]) -> dict[str, Any]:
    """The plan's rule: the quantized candidate with the best mean validation becomes the default unless its paired
    95 % interval against today's default includes 0 (an exact tie: the smaller file)."""
    quantized = {n: c for n, c in report["candidates"].items() if n != REFERENCE and c["n"]}
    if any(c["n"] < MIN_PAIRS for c in quantized.values()):
        return {"decided": False, "why": f"fewer than {MIN_PAIRS} pairs for some candidate"}
    # the best mean validation; an exact tie goes to the smaller file (1 bit, then 4 bits as listed)
    best = max(quantized, key=lambda n: (quantized[n]["validation_mean"], -SMALLER_FIRST.index(n)))
    if best == DEFAULT:
        return {"decided": True, "default": DEFAULT, "why": "today's default has the best mean validation"}
    versus = report["versus"][DEFAULT][best]["validation"]
    low, high = versus["ci95"]
    shown = f"{best} has the best mean validation, {fmt_interval(versus)} points against {DEFAULT}"
    if low <= 0 <= high:
        return {"decided": True, "default": DEFAULT, "why": f"{shown}: the interval includes 0"}
    return {"decided": True, "default": best, "why": f"{shown}: the interval excludes 0"}


def build(folder: Path) -> dict[str, Any]:
    """Every candidate's choice and means, the paired differences against both anchors, and the decision."""
    found = {n: candidate_runs(folder, n) for n in CANDIDATES}
    report: dict[str, Any] = {"candidates": {}, "versus": {DEFAULT: {}, REFERENCE: {}}}
    for name, c in found.items():
        c, runs = c or {}, (c or {}).get("runs", {})
        entry = {**{k: c.get(k) for k in ("lr", "lr_factor", "interior")}, "n": len(runs)}
        for i, part in enumerate(PARTS):
            entry[f"{part}_mean"] = statistics.fmean(v[i] for v in runs.values()) if runs else None
        report["candidates"][name] = entry
    for anchor in (DEFAULT, REFERENCE):
        for name, c in found.items():
            if name != anchor and c and found[anchor]:
                report["versus"][anchor][name] = differences(c, found[anchor], name, anchor)
    report["decision"] = decide(report)
    return report


def pct(x: float | None) -> str:
    """A mean score in points, empty when there is none."""
    return "" if x is None else f"{100 * x:.2f}"


def interval(d: dict[str, Any] | None) -> str:
    """A paired difference with its 95 % interval and number of pairs."""
    return "(fewer than 2 pairs)" if d is None else f"{fmt_interval(d)} (n={d['n']})"


def markdown(report: dict[str, Any], command: str) -> str:
    """The report as markdown: the candidates, the paired differences, the decision."""
    rows = []
    for name, c in report["candidates"].items():
        lr = f"{c['lr']} (x{c['lr_factor'] or 0:.3g}, {c['interior']})"
        rows.append(row(name, lr, c["n"], pct(c["validation_mean"]), pct(c["test_mean"])))
    header = "candidate | lr (factor, interior) | pairs | validation | test"
    lines = [fill("format_comparison", command=command), "", *table(header, "llrrr", rows)]
    for anchor, versus in report["versus"].items():
        lines += ["", f"Paired differences against {anchor} (points, 95 % t-interval):", ""]
        rows = [row(n, interval(d["validation"]), interval(d["test"])) for n, d in versus.items()]
        lines += table("candidate | validation | test", "lrr", rows)
    decision = report["decision"]
    default = decision.get("default", "not decided yet")
    return "\n".join([*lines, "", f"Decision rule (PLAN.md): {default} — {decision['why']}.", ""])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build the report of the ledgers' folder, write it as JSON and markdown, print the markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the four ledgers' folder (results/format_comparison)")
    args = parser.parse_args(argv)
    report, command = build(args.folder), f"python scripts/format_comparison.py {args.folder}"
    write_json_atomic(args.folder / "report.json", report)
    write_text_atomic(args.folder / "report.md", text := markdown(report, command))
    print(text, end="")
    return report


if __name__ == "__main__":
    main()
