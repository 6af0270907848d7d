"""`scripts/make_report.py` renders the committed `results/` files (written by earlier versions of the benchmark
scripts): the results JSON schema stays readable, and the key numbers reach the README section."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
from conftest import REPO_ROOT

RESULTS = REPO_ROOT / "results"


def load_report():
    return importlib.import_module("make_report")


@pytest.mark.skipif(not list(RESULTS.glob("accuracy_*.json")), reason="no committed results/accuracy_*.json")
def test_committed_results_render_with_their_numbers(tmp_path, capsys):
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    readme = tmp_path / "README.md"
    readme.write_text("# p\n\n<!-- results:start -->\nSTALE-SECTION\n<!-- results:end -->\n")
    argv = ["--results-dir", str(tmp_path), "--readme", str(readme)]
    section = load_report().main([*argv, "--plot", str(tmp_path / "plot.png")])
    summary = (tmp_path / "accuracy_summary.md").read_text()
    assert section in readme.read_text() and "STALE-SECTION" not in readme.read_text()
    for path in RESULTS.glob("accuracy_*.json"):
        state = json.loads(path.read_text())
        if "task" not in state:  # another benchmark's file (accuracy_oscd13.json): make_report skips it too
            continue
        assert state["summary"], path.name
        for name, entry in state["summary"].items():
            if entry["test_mean"] is None:
                continue
            shown = f"{100 * entry['test_mean']:.2f} ± {100 * entry['test_std']:.2f}"
            assert f"| {entry['label']} | {shown} |" in section, (path.name, name, shown)
            assert shown in summary
    efficiency = RESULTS / "efficiency.json"
    if efficiency.is_file():  # the section shows every table of results/efficiency.md, the targets' included
        lines, report = section.splitlines(), (RESULTS / "efficiency.md").read_text().splitlines()
        tables = [line for line in report if line.startswith("|")]
        assert tables and [line for line in tables if line not in lines] == []
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("|")]
        header = next(c for c in cells if c[:2] == ["model", "target"])
        targets = [t for t in json.loads(efficiency.read_text())["targets"] if t["primary"]]
        assert targets
        for t in (t for t in targets if "bytes" not in t["target"]):
            shown = next(c for c in cells if c[:2] == [t["model"], t["target"]])[header.index(t["method"])]
            assert shown == f"{t['value']:.2f} {'yes' if t['met'] else '**NO**'}", t
    assert "has a layout this report does not know" not in section


def test_dense_aims_follow_the_paired_comparison():
    """The dense tasks' aim (UPetu level with full fine-tuning and LoRA) is missed only when the paired interval
    puts the other method ahead."""

    def entry(label, scores):
        return {"label": label, "seeds": [0, 1, 0], "split_seeds": [0, 0, 1], "test_scores": scores}

    summary = {
        "upetu": entry("UPetu", [0.50, 0.52, 0.51]),
        "full": entry("Full", [0.60, 0.63, 0.61]),  # clearly ahead: aim missed
        "lora": entry("LoRA", [0.49, 0.54, 0.50]),  # mixed: aim met
    }
    checks = load_report().aims({"task": "segmentation", "summary": summary})
    assert [c["met"] for c in checks] == [False, True]
    assert checks[0]["difference_points"] == pytest.approx(-10.333, abs=1e-3)
    assert checks[1]["difference_points"] == pytest.approx(0.0, abs=1e-9)
    assert "Full" in checks[0]["aim"] and "LoRA" in checks[1]["aim"]


def test_fit_table_averages_the_last_epoch_loss_of_the_summary_runs_only():
    """The fit table uses exactly the runs behind a summary row (chosen rate, its split and seed pairs, same
    options), and the last epoch's training loss of each."""

    def run(lr, split, seed, loss, options=None):
        history = [{"epoch": 1, "train_loss": 9.0}, {"epoch": 2, "train_loss": loss}]
        return {"variant": "upetu", "status": "ok", "lr": lr, "split_seed": split, "seed": seed,
                "options": options or {}, "history": history}  # fmt: skip

    state = {
        "metric": "accuracy",
        "runs": [
            run(0.01, 0, 0, 0.2),
            run(0.01, 1, 0, 0.4),
            run(0.03, 0, 0, 5.0),  # another learning rate (a search candidate)
            run(0.01, 2, 0, 5.0),  # a pair outside the summary
            run(0.01, 0, 1, 5.0, {"r": 64}),  # other options
        ],
        "summary": {
            "upetu": {
                "label": "UPetu",
                "lr": 0.01,
                "options": {},
                "seeds": [0, 0],
                "split_seeds": [0, 1],
                "validation_mean": 0.8,
                "validation_std": 0.01,
                "test_mean": 0.75,
                "test_std": 0.02,
            }  # fmt: skip
        },
    }
    table = load_report().fit_table(state)
    assert table[-1] == "| UPetu | 2 | 0.300 ± 0.141 | 80.00 ± 1.00 | 75.00 ± 2.00 |"


def test_the_efficiency_report_renders_from_the_committed_json():
    """`results/efficiency.md` is `efficiency_markdown` of `results/efficiency.json`, byte for byte (the benchmark
    writes it that way), with the benchmark issue's own target named."""
    efficiency = importlib.import_module("benchmark_efficiency")
    results = json.loads((RESULTS / "efficiency.json").read_text())
    target = (efficiency.TARGET_MODEL, efficiency.TARGET_METHOD)
    assert load_report().efficiency_markdown(results, target) == (RESULTS / "efficiency.md").read_text()


def test_every_results_pattern_has_a_status_a_description_and_a_command():
    """The rows of `templates/results_files.md` parse into (pattern, status, what, command); a current file names
    the command that writes it, a superseded one takes it from `history/provenance.json`."""
    rows = load_report().results_files()
    assert rows and all(status in ("current", "superseded") for _, status, _, _ in rows)
    assert all(what and (command or status == "superseded") for _, status, what, command in rows)
    assert ("README.md", "current", "this index", "`python scripts/make_report.py`") == rows[0]
