"""README.md and docs/: the README stays short, every relative link (and its #anchor) leads somewhere, and the
README's test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import _facts
import pytest
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300
#: `[text](target)` and `![alt](target)`; the target ends at the first space or closing parenthesis.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def prose(markdown: str) -> str:
    """The markdown without fenced code blocks and code spans, where brackets are code, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
        found.add(slug.replace(" ", "-"))
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` whose file (or folder) is missing, or whose #anchor names no heading."""
    broken = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text("utf-8")):
            broken.append(f"{target} (no heading #{anchor})")
    return broken


def readme_test_command(readme: str) -> str:
    """The command in the first code block of the README's `## Tests` section."""
    section = readme.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"^```bash\n(.*?)\n```", section, re.S | re.M).group(1).strip()


def ci_test_command() -> str:
    """The last command of `.ci/run`, the one its comment calls the README's test command."""
    lines = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    marker = lines.index("# The README's test command:")
    return "\n".join(line for line in lines[marker + 1 :] if line.strip()).strip()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"training.md", "backbones.md", "method.md", "benchmarks.md", "qlinear_history.md"} <= names


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_broken_links_are_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n\n## Second `one`: here\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#second-one-here) [ok](https://example.com/x) [ok](#local)\n"
        "[gone](missing.md) ![gone](img/none.png) [bad](there.md#nowhere)\n"
        "`[code](not-a-link.md)`\n\n```python\nx[0](also-not-a-link)\n```\n\n## Local\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "img/none.png (no such file)",
        "there.md#nowhere (no heading #nowhere)",
    ]


def test_readme_test_command_is_the_one_ci_runs():
    command = readme_test_command(README.read_text(encoding="utf-8"))
    assert command == ci_test_command() == "python -m pytest -q"


def test_results_markers_appear_once_in_readme_and_benchmarks():
    for path in (README, REPO_ROOT / "docs" / "benchmarks.md"):
        text = path.read_text(encoding="utf-8")
        start, end = text.count("<!-- results:start -->"), text.count("<!-- results:end -->")
        assert (start, end) == (1, 1), path.name
        assert text.index("<!-- results:start -->") < text.index("<!-- results:end -->")


#: what reads as a measured number in prose: a decimal, a percentage or a ± (integers are counts and settings)
MEASURED = re.compile(r"\d+\.\d+|(?<![\d.])(?!95 ?%)\d+ ?%|±")  # a 95 % interval is a setting
GENERATED = re.compile(r"<!-- results:start -->.*?<!-- results:end -->", re.S)


def uncited_numbers(markdown: str) -> list[str]:
    """Each line of `markdown`'s prose that holds a measured number outside a cited number (`_facts`), a region
    `make_report` writes, code, a link target or an HTML comment."""
    text = _facts.FACT.sub("", GENERATED.sub("", markdown))
    text = re.sub(r"<!--.*?-->", "", prose(text), flags=re.S)
    text = re.sub(r"\]\([^)\s]*\)", "]", text)
    return [line.strip() for line in text.splitlines() if MEASURED.search(line)]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_measured_number_is_cited_from_a_results_file(path):
    assert uncited_numbers(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_cited_numbers_match_their_results_files(path):
    text = path.read_text(encoding="utf-8")
    assert _facts.render(text, path.name) == text, "stale: run `python scripts/make_report.py`"


def test_the_citation_checks_catch_what_they_look_for():
    cited = "<!-- n accuracy_classification.json summary/upetu/lr lr -->0.01<!-- /n -->"
    assert uncited_numbers(f"LoRA scores 76.2 here.\n{cited} and `0.05`\n[x](a1.5.md)\n") == [
        "LoRA scores 76.2 here."
    ]
    assert _facts.render(cited.replace("0.01<", "0.02<")) == cited
    with pytest.raises(ValueError, match="not a file"):
        _facts.render("<!-- n nowhere.json a/b f1 -->1.0<!-- /n -->")


def test_facts_queries_and_formats(monkeypatch):
    run = {"variant": "v", "status": "ok", "options": {}, "split_seed": 0, "validation_score": 0.6}
    summary = {"lr": 0.01, "options": {}, "seeds": [0, 1], "test_scores": [0.5, 0.7]}  # split seed 0
    ledger = {
        "summary": {"v": summary},
        "runs": [
            dict(run, lr=0.01, seed=0, test_score=0.5, history=[{"train_loss": 0.4}]),
            dict(run, lr=0.01, seed=1, test_score=0.7, history=[{"train_loss": 0.2}]),
            dict(run, lr=0.03, seed=0, test_score=0.3, history=[{"train_loss": 0.9}]),
            dict(run, lr=0.03, seed=2, test_score=0.9, history=[{"train_loss": 0.1}]),  # not a final pair
        ],
    }
    assert _facts.evaluate(ledger, "pm(v)", "pt1") == "60.0 ± 14.1"
    assert _facts.evaluate(ledger, "mean(v,loss)", "f2") == "0.30"
    assert _facts.evaluate(ledger, "mean(v,test,0.03)", "pt1") == "30.0"
    other = {"summary": {"w": dict(summary, test_scores=[0.4, 0.5])}, "runs": []}
    monkeypatch.setattr(_facts, "load", {"other.json": other}.__getitem__)
    assert _facts.evaluate(ledger, "paired(v,other.json:w)", "pt1") == "+15.0 [-48.5, +78.5]"
    data = {"a b": {"mean": 1.0, "ci95": [-0.25, 2.5]}, "c": {"mean": 2.0, "std": 0.5}, "n": [3374520, 1000]}
    assert _facts.evaluate(data, "a%20b", "f1") == "+1.0 [-0.2, +2.5]"
    assert _facts.evaluate(data, "c", "f2") == "2.00 ± 0.50"
    assert _facts.evaluate(data, "n/0", "M") == "3.4 M"
    assert _facts.evaluate(data, "minus(n/1,c/mean)", "sf1") == "+998.0"
    assert _facts.evaluate(data, "spread(n)", "M") == "1.7 M ± 2.4 M"
    with pytest.raises(ValueError, match="unknown query"):
        _facts.evaluate(data, "median(v)", "f1")
