"""Numbers cited in README.md and docs/ prose, each read from a results file and kept current by `make_report.py`.

A cited number is written in the Markdown as

    <!-- n FILE QUERY FORMAT -->TEXT<!-- /n -->

(the comments do not render). `FILE` is a JSON file under `results/` (`accuracy_classification.json`,
`history/qlinear_comparison.json`), `QUERY` says what to read from it and `FORMAT` how to print it; `render`
replaces every `TEXT` with what they give, so a rerun benchmark updates the prose with its tables, and
tests/test_docs.py requires every number of the prose to be cited (or inside a generated region, or code).

QUERY is one of:
- `a/b/c`: the value at that path (dict keys or list indices);
- `paired(A,B)` or `paired(A,B,validation)`: A minus B over the (split seed, seed) pairs both ran at their chosen
  learning rates, a benchmark ledger's test (or validation) scores, as `mean [low, high]` (95 % t-interval);
- `pm(A)` or `pm(A,validation)`: mean ± std of variant A's final runs in a benchmark ledger.

FORMAT is `pt1` / `pt2` (a fraction in points, 1 or 2 decimals), `spt1` / `spt2` (the same with a sign), `f1` /
`f2` / `f3` (decimals), `int` (thousands separated), `kb` (bytes in KB), `mb` (bytes in MB), `lr` (3 significant
digits); `paired` and `pm` use the points formats.

Usage: `python scripts/_facts.py README.md docs/*.md` (rewrites them; `--check` only reports what would change).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, write_text_atomic
from _ledger import mean_std, paired_scores, split_of

RESULTS = REPO_ROOT / "results"
FACT = re.compile(r"<!-- n (\S+) (\S+) (\S+) -->(.*?)<!-- /n -->", re.S)
CALL = re.compile(r"(\w+)\((.*)\)")

FORMATS: dict[str, Callable[[float], str]] = {
    "pt1": lambda x: f"{100 * x:.1f}",
    "pt2": lambda x: f"{100 * x:.2f}",
    "spt1": lambda x: f"{100 * x:+.1f}",
    "spt2": lambda x: f"{100 * x:+.2f}",
    "f1": lambda x: f"{x:.1f}",
    "f2": lambda x: f"{x:.2f}",
    "f3": lambda x: f"{x:.3f}",
    "int": lambda x: f"{round(x):,}",
    "kb": lambda x: f"{x / 1e3:.0f} KB",
    "mb": lambda x: f"{x / 1e6:.1f} MB",
    "lr": lambda x: f"{x:.3g}",
}


@cache
def load(name: str) -> Any:
    """The JSON file `results/<name>`, read once."""
    path = RESULTS / name
    if not path.is_file():
        raise ValueError(f"a cited number reads {name}, which is not a file under {RESULTS}")
    return json.loads(path.read_text())


def final_scores(state: dict[str, Any], variant: str, split: str) -> dict[tuple[int, int], float]:
    """Variant's final-run scores keyed by (split seed, seed): the summary's test scores, or the validation scores
    of the ledger's runs at the chosen rate on the same pairs."""
    s = state["summary"][variant]
    pairs = list(zip(s.get("split_seeds") or [0] * len(s["seeds"]), s["seeds"]))
    if split == "test":
        return {p: v for p, v in zip(pairs, s["test_scores"]) if v is not None}
    runs = [r for r in state["runs"] if r["variant"] == variant and r.get("status") == "ok" and r["lr"] == s["lr"]]
    by_pair = {(split_of(r), r["seed"]): r["validation_score"] for r in runs if r["options"] == s["options"]}
    return {p: by_pair[p] for p in pairs if p in by_pair}


def evaluate(data: Any, query: str, fmt: str) -> str:
    """The text of one cited number (module docstring)."""
    call = CALL.fullmatch(query)
    if call is None:
        value = data
        for part in query.split("/"):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return FORMATS[fmt](value)
    kind, args = call.group(1), call.group(2).split(",")
    split = args[2] if kind == "paired" and len(args) > 2 else args[1] if kind == "pm" and len(args) > 1 else "test"
    if kind == "pm":
        mean, std = mean_std(list(final_scores(data, args[0], split).values()))
        return f"{FORMATS[fmt](mean)} ± {FORMATS[fmt.lstrip('s')](std)}"
    if kind == "paired":
        d = paired_scores(final_scores(data, args[0], split), final_scores(data, args[1], split))
        low, high = d["ci95"]
        sign = fmt if fmt.startswith("s") else "s" + fmt
        return f"{FORMATS[sign](d['mean'])} [{FORMATS[sign](low)}, {FORMATS[sign](high)}]"
    raise ValueError(f"unknown query {query!r}: use a path, paired(A,B[,validation]) or pm(A[,validation])")


def render(text: str, where: str = "") -> str:
    """`text` with every cited number recomputed from its results file."""

    def one(match: re.Match) -> str:
        name, query, fmt = match.group(1, 2, 3)
        try:
            if fmt not in FORMATS:
                raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
            value = evaluate(load(name), query, fmt)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: cannot cite {name} {query}: {error!r}") from None
        return f"<!-- n {name} {query} {fmt} -->{value}<!-- /n -->"

    return FACT.sub(one, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="Markdown files to update")
    parser.add_argument("--check", action="store_true", help="report stale numbers, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        old = path.read_text(encoding="utf-8")
        new = render(old, str(path))
        if new != old:
            stale.append(str(path))
            if not args.check:
                write_text_atomic(path, new)
    print(f"_facts: {'stale' if args.check else 'updated'}: {', '.join(stale) or 'none'}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
