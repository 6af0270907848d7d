"""scripts/compare_qlinear.py: the numbers of the Q-Linear comparison come from the runs it is given."""

from __future__ import annotations

import json

import pytest
from test_benchmark_accuracy import SCRIPTS, load_script


def ledger(scores: dict[str, list[tuple[int, int, float, float]]], lr: float = 0.01) -> dict:
    """A minimal accuracy_classification.json: per variant, runs (split, seed, validation, test) at `lr`."""
    runs, summary = [], {}
    for variant, rows in scores.items():
        for split, seed, val, test in rows:
            runs.append(dict(key=f"{variant}|lr={lr}|seed={seed}|split={split}", variant=variant, status="ok", lr=lr,
                             seed=seed, split_seed=split, validation_score=val, test_score=test))  # fmt: skip
        # as the benchmark writes it: the (split, seed) of every reported run, in two aligned lists
        summary[variant] = {
            "lr": lr,
            "seeds": [row[1] for row in rows],
            "split_seeds": [row[0] for row in rows],
        }
    return {"runs": runs, "summary": summary}


def write_ledgers(folder, **files: dict) -> dict:
    """Write each ledger to `folder/<name>.json`; returns the paths by name."""
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


def test_designs_aims_and_split_filter(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # as when run as a script: its helpers sit next to it
    compare = load_script("compare_qlinear")
    old = ledger({"upetu-1bit": [(0, 0, 0.70, 0.60), (0, 1, 0.72, 0.62)], "upetu-32bit": [(0, 0, 0.8, 0.7)]})
    new = ledger(
        {
            "upetu-1bit": [(0, 0, 0.75, 0.70), (0, 1, 0.77, 0.72), (1, 0, 0.10, 0.10)],  # split 1: ignored
            "upetu-32bit": [(0, 0, 0.78, 0.71), (0, 1, 0.78, 0.73)],
        }
    )
    paths = write_ledgers(tmp_path, a=old, b=new)
    result = compare.main(
        ["--design", f"a={paths['a']}", "--design", f"b={paths['b']}", "--output-dir", str(tmp_path / "out")]
    )
    rows = result["bits"]["rows"]
    assert rows["upetu-1bit"]["a"]["test"]["mean"] == pytest.approx(61.0)
    assert rows["upetu-1bit"]["b"]["test"]["mean"] == pytest.approx(71.0)  # the split-1 run is left out
    aims = result["bits"]["aims"]
    assert aims["1-bit minus 32-bit (test, points), aim >= -0.5"] == pytest.approx(-1.0)
    assert aims["1-bit std minus 32-bit std (test, points), aim <= 0"] == pytest.approx(0.0, abs=1e-9)
    text = (tmp_path / "out" / "qlinear_comparison.md").read_text()
    assert "71.00 ± 1.41 (n=2)" in text and "| -1.00 | **no** |" in text
    # the file says how to regenerate it, with the arguments it was made from
    command = (
        f"python scripts/compare_qlinear.py --design a={paths['a']} --design b={paths['b']} --output-dir"
    )
    assert result["command"].startswith(command) and f"Regenerate with `{result['command']}`." in text
    with pytest.raises(SystemExit):
        compare.main(
            ["--design", f"b={paths['b']}", "--ablated-design", "zzz", "--output-dir", str(tmp_path)]
        )


def test_trials_per_design_and_levers_paired_over_splits(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    compare = load_script("compare_qlinear")
    a = ledger({"upetu-1bit": [(0, 0, 0.70, 0.60), (0, 1, 0.72, 0.62)]})
    b = ledger({"upetu-1bit": [(0, 0, 0.74, 0.60), (0, 1, 0.76, 0.62)]})
    more_b = ledger({"upetu-1bit": [(0, 2, 0.78, 0.6)]})
    trial_a = ledger({"upetu-1bit": [(0, 0, 0.71, 0.5), (0, 1, 0.73, 0.5)]})
    trial_b = ledger(
        {"upetu-1bit": [(0, 0, 0.70, 0.5), (0, 1, 0.70, 0.5), (0, 2, 0.70, 0.5), (1, 0, 0.1, 0.1)]}
    )
    main = ledger({"upetu": [(s, e, 0.75, 0.70 + 0.01 * s) for s in (0, 1, 2) for e in (0, 1)]})
    lever = ledger({"upetu": [(s, e, 0.74 + 0.002 * e, 0.68 + 0.01 * s) for s in (0, 1, 2) for e in (0, 1)]})
    lever["summary"]["upetu"]["lr"] = main["summary"]["upetu"]["lr"] = 0.01
    paths = write_ledgers(tmp_path, a=a, b=b, more_b=more_b, ta=trial_a, tb=trial_b, main=main, lever=lever)
    result = compare.main(
        [
            "--design", f"a={paths['a']}", "--design", f"b={paths['b']}", "--tried-on", "a",
            "--trial", f"x={paths['ta']}", "--trial", f"y@b={paths['tb']}", "--reference", f"b={paths['more_b']}",
            "--lever", f"seq={paths['lever']}", "--lever-reference", str(paths["main"]),
            "--output-dir", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    x, y = result["trials"]["a"]["x"], result["trials"]["b"]["y"]
    assert x["design_validation"]["mean"] == pytest.approx(71.0) and x["ablation_validation"]["mean"] == 72.0
    # b's seeds 0-1 pooled with its extra seed 2
    assert y["design_validation"]["mean"] == pytest.approx(76.0) and y["design_validation"]["n"] == 3
    assert y["ablation_validation"]["mean"] == pytest.approx(70.0)  # the trial's split-1 run is left out
    row = result["levers"]["seq (upetu)"]
    assert row["validation"]["n"] == 6 and row["validation"]["mean"] == pytest.approx(-0.9)
    assert row["test"]["mean"] == pytest.approx(-2.0) and row["test"]["decided"] == "design"
    text = (tmp_path / "out" / "qlinear_comparison.md").read_text()
    assert "Remedies tried on top of b" in text and "| seq (upetu) | 6 |" in text
    with pytest.raises(SystemExit):
        compare.main(
            ["--design", f"a={paths['a']}", "--trial", f"x@zzz={paths['ta']}", "--output-dir", str(tmp_path)]
        )


def test_diagnostics_report_the_design_runs_of_the_same_seeds(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    compare = load_script("compare_qlinear")
    design = ledger(
        {
            "upetu-1bit": [(0, 0, 0.70, 0.60), (0, 1, 0.72, 0.64), (0, 2, 0.1, 0.1)],  # seed 2: not diagnosed
            "upetu-32bit": [(0, 0, 0.80, 0.70), (0, 1, 0.80, 0.72), (1, 0, 0.1, 0.1)],  # split 1: left out
        }
    )
    off_rate = dict(key="off-rate", variant="upetu-32bit", status="ok", lr=0.03, seed=0, split_seed=0,
                    validation_score=0.1, test_score=0.1)  # fmt: skip
    design["runs"].append(off_rate)  # not the chosen rate: left out
    diagnostic = ledger({"upetu-1bit": [(0, 0, 0.75, 0.66), (0, 1, 0.75, 0.68)]})
    search = dict(key="search", variant="upetu-1bit", status="ok", lr=0.003, seed=0, split_seed=0,
                  validation_score=0.99, test_score=0.99)  # fmt: skip
    diagnostic["runs"].append(search)  # a search run of the diagnostic at a rate it did not choose: left out
    paths = write_ledgers(tmp_path, d=design, x=diagnostic)
    result = compare.main(
        ["--design", f"d={paths['d']}", "--diagnostic", f"down-32bit@d={paths['x']}", "--output-dir",
         str(tmp_path / "out")]
    )  # fmt: skip
    entry = result["diagnostics"]["d"]["down-32bit"]
    assert entry["seeds"] == [0, 1]
    assert entry["diagnostic"]["test"]["mean"] == pytest.approx(67.0)
    assert entry["upetu-1bit"]["n"] == 2 and entry["upetu-1bit"]["test"]["mean"] == pytest.approx(62.0)
    assert entry["upetu-32bit"]["n"] == 2 and entry["upetu-32bit"]["test"]["mean"] == pytest.approx(71.0)
    text = (tmp_path / "out" / "qlinear_comparison.md").read_text()
    assert "| down-32bit | 0, 1 | 75.00 ± 0.00 (n=2) | 67.00 ± 1.41 (n=2) | 71.00 ± 1.41 (n=2) |" in text
    with pytest.raises(SystemExit):
        compare.main(["--design", f"d={paths['d']}", "--diagnostic", f"x@zzz={paths['x']}", "--output-dir",
                      str(tmp_path)])  # fmt: skip


def test_lever_versus_compares_a_lever_with_another_method(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    compare = load_script("compare_qlinear")
    design = ledger({"upetu-1bit": [(0, 0, 0.70, 0.60), (0, 1, 0.72, 0.62)]})
    main = ledger(
        {
            "upetu": [(s, e, 0.75, 0.70) for s in (0, 1) for e in (0, 1)],
            "full": [(s, e, 0.80, 0.76 + 0.01 * e) for s in (0, 1) for e in (0, 1)],
        }
    )
    lever = ledger({"upetu": [(s, e, 0.81, 0.77) for s in (0, 1) for e in (0, 1)]})
    paths = write_ledgers(tmp_path, d=design, main=main, lever=lever)
    result = compare.main(
        ["--design", f"d={paths['d']}", "--lever", f"r-64={paths['lever']}", "--lever-reference",
         str(paths["main"]), "--lever-versus", "full", "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    own, full = result["levers"]["r-64 (upetu)"], result["levers"]["r-64 (upetu) vs full"]
    assert own["test"]["mean"] == pytest.approx(7.0) and own["versus"] == "upetu"
    assert full["test"]["mean"] == pytest.approx(0.5) and full["validation"]["mean"] == pytest.approx(1.0)
    assert full["test"]["n"] == 4 and full["versus"] == "full"
    assert "| r-64 (upetu) vs full | 4 |" in (tmp_path / "out" / "qlinear_comparison.md").read_text()


def test_levers_pair_only_the_runs_their_summaries_report(tmp_path, monkeypatch):
    """A lever file can hold more runs at its chosen rate than it reports (seeds imported from a wider search):
    only the reported (split, seed) runs are paired, on both sides."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    compare = load_script("compare_qlinear")
    design = ledger({"upetu-1bit": [(0, 0, 0.70, 0.60), (0, 1, 0.72, 0.62)]})
    main = ledger({"upetu-1bit": [(s, e, 0.75, 0.70) for s in (0, 1) for e in (0, 1)]})
    main["runs"].append({**main["runs"][0], "seed": 2, "key": "extra-main", "test_score": 0.0})
    lever = ledger({"upetu-1bit": [(s, e, 0.76, 0.72) for s in (0, 1) for e in (0, 1)]})
    lever["runs"].append({**lever["runs"][0], "seed": 2, "key": "extra-lever", "test_score": 1.0})
    paths = write_ledgers(tmp_path, d=design, main=main, lever=lever)
    result = compare.main(
        ["--design", f"d={paths['d']}", "--lever", f"wide={paths['lever']}", "--lever-reference",
         str(paths["main"]), "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip
    row = result["levers"]["wide (upetu-1bit)"]
    # seed 2 is left out on both sides
    assert row["test"]["n"] == 4 and row["test"]["mean"] == pytest.approx(2.0)
    assert row["test_mean"] == pytest.approx(72.0)


def test_aims_over_every_seed_pool_the_reference_files(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    compare = load_script("compare_qlinear")
    design = ledger(
        {
            "upetu-1bit": [(0, 0, 0.75, 0.70), (0, 1, 0.77, 0.72)],
            "upetu-32bit": [(0, 0, 0.78, 0.74), (0, 1, 0.78, 0.74)],
        }
    )
    more = ledger({"upetu-1bit": [(0, 2, 0.7, 0.65), (1, 3, 0.1, 0.1)], "upetu-32bit": [(0, 2, 0.7, 0.71)]})
    off_rate = ledger({"upetu-32bit": [(0, 3, 0.7, 0.10)]}, lr=0.03)  # not the design's chosen rate
    paths = write_ledgers(tmp_path, design=design, more=more, off=off_rate)
    references = ["--reference", f"d={paths['more']}", "--reference", f"d={paths['off']}"]
    result = compare.main(
        ["--design", f"d={paths['design']}", *references, "--output-dir", str(tmp_path / "out")]
    )
    # the 3 final seeds' aims are unchanged; every seed: 1-bit 70, 72, 65 (split 1 left out), 32-bit 74, 74, 71
    assert result["bits"]["aims"]["1-bit minus 32-bit (test, points), aim >= -0.5"] == pytest.approx(-3.0)
    pooled = result["every_seed"]
    assert pooled["upetu-1bit"]["seeds"] == [0, 1, 2] and pooled["upetu-32bit"]["seeds"] == [0, 1, 2]
    assert pooled["aims"]["1-bit minus 32-bit (test, points), aim >= -0.5"] == pytest.approx(69.0 - 73.0)
    text = (tmp_path / "out" / "qlinear_comparison.md").read_text()
    assert "| aim (d, every seed) | value | met |" in text and "| -4.00 | **no** |" in text
