"""Numbers cited in README.md and docs/ prose, each read from a results file and kept current by `make_report.py`.

A cited number is written in the Markdown as

    <!-- n FILE QUERY FORMAT -->TEXT<!-- /n -->

(the comments do not render). `FILE` is a JSON file under `results/` (`accuracy_classification.json`,
`history/qlinear_comparison.json`), `QUERY` says what to read from it and `FORMAT` how to print it; `render`
replaces every `TEXT` with what they give, so a rerun benchmark updates the prose with its tables, and
tests/test_docs.py requires every number of the prose to be cited (or inside a generated region, or code).

QUERY is one of:
- `a/b/c`: the value at that path (dict keys, `%20` for a space in a key, or list indices); a `{mean, ci95}`
  object there prints as `mean [low, high]`, a `{mean, std}` object as `mean ± std`;
- `minus(P,Q)`: the value at path P minus the value at path Q; `spread(P)`: mean ± std of the numbers at path P;
- `paired(A,B[,SCORE])`: A minus B over the (split seed, seed) pairs both ran at their chosen learning rates, a
  benchmark ledger's scores (SCORE below), as `mean [low, high]` (95 % t-interval); `OTHER:B` is variant B of the
  ledger `results/OTHER` (`paired(upetu,format_comparison/format4.json:upetu,validation)`);
- `pm(A[,SCORE[,LR]])`: mean ± std of variant A's final runs in a benchmark ledger, `mean(A[,SCORE[,LR]])` the
  mean alone; SCORE is `test` (the default), `validation` or `loss` (the last epoch's training loss), LR the runs
  at that learning rate on the same (split seed, seed) pairs instead of those at the chosen one.

FORMAT is `pt1` / `pt2` (a fraction in points, 1 or 2 decimals), `spt1` / `spt2` (the same with a sign), `f1` /
`f2` / `f3` (decimals), `sf1` / `sf2` (the same with a sign), `int` (thousands separated), `M` (millions), `kb`
(bytes in KB), `mb` (bytes in MB), `lr` (3 significant digits); a paired difference is printed with a sign.

`python scripts/make_report.py` refreshes them; tests/test_docs.py requires them current.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any
from urllib.parse import unquote

from _common import REPO_ROOT
from _ledger import final_pairs, fmt_interval, mean_std, paired_scores, split_of, test_scores_by_pair

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
    "sf1": lambda x: f"{x:+.1f}",
    "sf2": lambda x: f"{x:+.2f}",
    "int": lambda x: f"{round(x):,}",
    "M": lambda x: f"{x / 1e6:.1f} M",
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


#: What a run scores: its test or validation metric, or its training loss over the last epoch.
SCORES: dict[str, Callable[[dict[str, Any]], float]] = {
    "test": lambda run: run["test_score"],
    "validation": lambda run: run["validation_score"],
    "loss": lambda run: run["history"][-1]["train_loss"],
}


def final_scores(
    state: dict[str, Any], variant: str, score: str = "test", lr: str | None = None
) -> dict[tuple[int, int], float]:
    """Variant's final-run scores keyed by (split seed, seed): the summary's test scores, or `SCORES[score]` of the
    ledger's runs on the same pairs at the chosen rate (or at `lr`)."""
    s = state["summary"][variant]
    if score == "test" and lr is None:
        return test_scores_by_pair(s)
    rate = s["lr"] if lr is None else float(lr)
    runs = [
        r for r in state["runs"] if r["variant"] == variant and r.get("status") == "ok" and r["lr"] == rate
    ]
    by_pair = {(split_of(r), r["seed"]): SCORES[score](r) for r in runs if r["options"] == s["options"]}
    return {p: by_pair[p] for p in final_pairs(s) if p in by_pair}


def ledger_scores(data: dict[str, Any], variant: str, score: str) -> dict[tuple[int, int], float]:
    """`final_scores` of `variant` in `data`, or of `NAME:variant` in the ledger `results/NAME`."""
    name, _, variant = variant.rpartition(":")
    return final_scores(load(name) if name else data, variant, score)


def at(data: Any, path: str) -> Any:
    """The value at `path` (module docstring)."""
    value = data
    for part in path.split("/"):
        value = value[int(part)] if isinstance(value, list) else value[unquote(part)]
    return value


def show(value: Any, fmt: str) -> str:
    """A number, a `{mean, ci95}` difference (with a sign) or a `{mean, std}` spread, printed in `fmt`."""
    if isinstance(value, dict) and "ci95" in value:
        return fmt_interval(value, number=FORMATS[fmt if fmt.startswith("s") else "s" + fmt])
    if isinstance(value, dict):
        return f"{FORMATS[fmt](value['mean'])} ± {FORMATS[fmt.lstrip('s')](value['std'])}"
    return FORMATS[fmt](value)


def evaluate(data: Any, query: str, fmt: str) -> str:
    """The text of one cited number (module docstring)."""
    call = CALL.fullmatch(query)
    if call is None:
        return show(at(data, query), fmt)
    kind, args = call.group(1), call.group(2).split(",")
    if kind == "minus":
        return FORMATS[fmt](at(data, args[0]) - at(data, args[1]))
    if kind == "spread":
        mean, std = mean_std(at(data, args[0]))
        return show({"mean": mean, "std": std}, fmt)
    if kind == "paired":
        score = args[2] if len(args) > 2 else "test"
        return show(paired_scores(*(ledger_scores(data, variant, score) for variant in args[:2])), fmt)
    if kind in ("pm", "mean"):
        mean, std = mean_std(list(final_scores(data, *args[:3]).values()))
        return show({"mean": mean, "std": std} if kind == "pm" else mean, fmt)
    raise ValueError(
        f"unknown query {query!r}: use a path, minus(P,Q), spread(P), paired(A,B[,SCORE]), pm(A[,SCORE[,LR]]) or "
        "mean(A[,SCORE[,LR]])"
    )


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
