"""Smoke test of scripts/benchmark_accuracy.py and scripts/make_report.py on a tiny ConvNeXt and tiny synthetic
data (classification, segmentation and change detection), so that neither script can rot."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import PIL.Image
import pytest
from transformers import ConvNextConfig, ConvNextForImageClassification

from upetu_hf.train.tasks import get_task

CLASSES = ("alpha", "beta", "gamma")


def load_script(name: str) -> ModuleType:
    """Import a script of `scripts/` as a module (pytest puts scripts/ on the path: pyproject's `pythonpath`)."""
    return importlib.import_module(name)


def write_assets(root: Path) -> dict[str, Path]:
    """A tiny ConvNeXt checkpoint (depths 1-1-1-1, widths 8-16-32-64), 3 classes x 8 images of 48 px, 10
    segmentation tiles and two change-detection folders of 5 pairs each."""
    rng = np.random.default_rng(0)
    model = root / "tiny-convnext"
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_labels=4, image_size=48)
    ConvNextForImageClassification(config).save_pretrained(model)

    ucm = root / "ucm"
    for k, name in enumerate(CLASSES):
        (ucm / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.normal(60 + 60 * k, 30, (48, 48, 3)).clip(0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(ucm / name / f"{name}{i:02d}.png")

    gid = root / "gid"
    (gid / "images").mkdir(parents=True)
    (gid / "masks").mkdir()
    (gid / "classes.json").write_text(json.dumps({"0": "a", "1": "b", "2": "c", "255": "ignore"}))
    for i in range(10):
        mask = rng.integers(0, 3, (8, 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        mask[:4, :4] = 255
        image = (mask[..., None] * 70 + rng.normal(0, 20, (64, 64, 3))).clip(0, 255).astype(np.uint8)
        PIL.Image.fromarray(image).save(gid / "images" / f"tile{i:02d}.png")
        PIL.Image.fromarray(mask).save(gid / "masks" / f"tile{i:02d}.png")

    cd = []
    for source in ("levir", "dsifn"):
        folder = root / source
        for sub in ("A", "B", "label"):
            (folder / sub).mkdir(parents=True)
        for i in range(5):
            a = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
            b = a.copy()
            label = np.zeros((64, 64), np.uint8)
            label[16:40, 8 + i : 30 + i] = 255
            b[label > 0] = 255 - b[label > 0]
            for sub, array in (("A", a), ("B", b), ("label", label)):
                PIL.Image.fromarray(array).save(folder / sub / f"p{i}.png")
        cd.append(folder)
    return {"model": model, "ucm": ucm, "gid": gid, "cd_a": cd[0], "cd_b": cd[1]}


def bench_args(assets: dict[str, Path], out: Path, work: Path, *extra: str) -> list[str]:
    return [
        "--model", str(assets["model"]),
        "--ucm", str(assets["ucm"]),
        "--gid", str(assets["gid"]),
        "--cd", str(assets["cd_a"]), str(assets["cd_b"]),
        "--image-size", "48",
        "--batch-size", "4",
        "--dense-batch-size", "4",
        "--epochs", "2",
        "--dense-epochs", "1",
        "--seeds", "0",
        "--threads", "1",
        "--output-dir", str(out),
        "--work-dir", str(work),
        *extra,
    ]  # fmt: skip


def forbid_training(monkeypatch: pytest.MonkeyPatch, module: ModuleType, why: str) -> None:
    """Make any training run in `module` fail the test with `why`."""

    def no_training(*args, **kwargs):
        raise AssertionError(why)

    monkeypatch.setattr(module, "train", no_training)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the benchmark once: classification (full, UPetu; 2 learning rates, 1 seed, 2 epochs) and the dense
    tasks (UPetu; 1 learning rate, 1 epoch)."""
    root = tmp_path_factory.mktemp("accuracy")
    assets = write_assets(root)
    out, work = root / "results", root / "work"
    module = load_script("benchmark_accuracy")
    classification = module.main(
        bench_args(
            assets, out, work, "--tasks", "classification", "--methods", "full,upetu", "--lr-factors", "1,3"
        )
    )
    dense = module.main(
        bench_args(
            assets, out, work, "--tasks", "segmentation,change-detection", "--methods", "upetu",
            "--lr-factors", "1", "--cd-repeats", "2",
        )
    )  # fmt: skip
    return {
        "module": module,
        "assets": assets,
        "out": out,
        "work": work,
        "states": {**classification, **dense},
    }


def test_classification_runs_selection_and_counts(bench):
    state = json.loads((bench["out"] / "accuracy_classification.json").read_text())
    assert state == json.loads(json.dumps(bench["states"]["classification"]))  # returned == written
    runs = state["runs"]
    assert len(runs) == 4 and all(r["status"] == "ok" for r in runs)
    for name, base_lr in (("full", 5e-4), ("upetu", 1e-2)):
        mine = [r for r in runs if r["variant"] == name]
        assert sorted(r["lr"] for r in mine) == pytest.approx([base_lr, 3 * base_lr])
        top = max(r["validation_score"] for r in mine)
        tied = sorted(r["lr"] for r in mine if r["validation_score"] == top)
        choice = state["selection"][name]
        assert choice["complete"] and choice["lr"] in tied
        assert ("tie" in choice) == (len(tied) > 1)  # a tie is broken by more evidence, and recorded
        best = next(r for r in mine if r["lr"] == choice["lr"])
        assert choice["validation_score"] == max(r["validation_score"] for r in mine)
        summary = state["summary"][name]
        assert summary["lr"] == best["lr"] and summary["n"] == 1
        assert summary["test_mean"] == best["test_score"] == best["test"]["accuracy"]
        assert summary["test_std"] == 0.0
        for r in mine:
            assert r["validation_score"] == max(h["validation/accuracy"] for h in r["history"])
            assert len(r["history"]) == 2 and r["best_epoch"] in (1, 2)
            assert r["wall_time_s"] > 0 and r["device"]
            assert r["test"]["num_samples"] == 12  # UCM-55 of 3 x 8: 4 per class for training, 4 for testing
            assert r["validation"]["num_samples"] == 3  # 20 % of each class's training half
    full, upetu = state["summary"]["full"], state["summary"]["upetu"]
    assert full["trainable_params"] > upetu["trainable_params"] > 0
    assert upetu["adapter_params"] == state["backbone"]["upetu_default_adapter_params"] > 0
    assert full["adapter_pct_of_backbone"] == pytest.approx(100.0)
    assert (
        0
        < upetu["weights_bytes_without_head"]
        < upetu["weights_bytes_with_head"]
        == upetu["checkpoint_bytes"]
    )
    assert full["weights_bytes_without_head"] < full["checkpoint_bytes"]
    backbone = state["backbone"]
    per_rank = backbone["lora_adapter_params_per_rank"]
    assert (
        abs(backbone["lora_matched_adapter_params"] - backbone["upetu_default_adapter_params"])
        <= per_rank / 2
    )
    assert (
        abs(backbone["lora_small_adapter_params"] - backbone["upetu_small_adapter_params"]) <= per_rank / 2
        or backbone["lora_small_r"] == 1
    )
    assert backbone["upetu_small_adapter_params"] < 0.01 * backbone["backbone_params"] or (
        backbone["upetu_small_r"] == 1 and not backbone["upetu_small_budget_met"]
    )
    assert state["complete"] and len(state["planned"]) == 4
    assert state["protocol"]["epochs"] == 2 and state["sessions"][0]["machine"]["torch"]


def test_dense_tasks_record_their_metric(bench):
    for key, metric in (("segmentation", "mean_iou"), ("change_detection", "f1")):
        state = json.loads((bench["out"] / f"accuracy_{key}.json").read_text())
        (run,) = state["runs"]
        assert run["status"] == "ok" and run["metric"] == metric
        assert run["test_score"] == run["test"][metric] and 0 <= run["test_score"] <= 1
        assert state["summary"]["upetu"]["n"] == 1
    cd = json.loads((bench["out"] / "accuracy_change_detection.json").read_text())
    split = cd["protocol"]["split"]["by_pairs"]
    assert sorted(len(v) for v in split.values()) == [2, 4, 4]  # 5 pairs per source: 2 test, 1 val, 2 train
    assert not set(split["train"]) & set(split["test"])


def test_resume_skips_finished_runs_and_refuses_to_clobber(bench, monkeypatch):
    module, assets, out, work = bench["module"], bench["assets"], bench["out"], bench["work"]
    before = (out / "accuracy_classification.json").read_text()
    argv = bench_args(
        assets, out, work, "--tasks", "classification", "--methods", "full,upetu", "--lr-factors", "1,3"
    )
    with pytest.raises(SystemExit, match="--resume"):
        module.main(argv)

    forbid_training(monkeypatch, module, "a finished run was trained again")
    states = module.main([*argv, "--resume"])
    assert [r["key"] for r in states["classification"]["runs"]] == [
        r["key"] for r in json.loads(before)["runs"]
    ]
    with pytest.raises(SystemExit, match="other settings"):
        module.main([*argv, "--resume", "--epochs", "3"])


def test_import_runs_merges_shards_without_training(bench, monkeypatch, tmp_path):
    module, assets, work = bench["module"], bench["assets"], bench["work"]
    whole = json.loads((bench["out"] / "accuracy_classification.json").read_text())
    shards = {}
    for name in ("full", "upetu"):  # two shards, as two processes with --methods would write them
        shard = dict(whole, runs=[r for r in whole["runs"] if r["variant"] == name], summary={}, selection={})
        shards[name] = tmp_path / name
        shards[name].mkdir()
        (shards[name] / "accuracy_classification.json").write_text(json.dumps(shard))

    forbid_training(monkeypatch, module, "an imported run was trained again")
    argv = bench_args(
        assets,
        shards["full"],
        work,
        "--tasks",
        "classification",
        "--methods",
        "full,upetu",
        "--lr-factors",
        "1,3",
    )
    other = str(shards["upetu"] / "accuracy_classification.json")
    with pytest.raises(SystemExit):  # merging writes into the --resume files only
        module.main([*argv, "--import-runs", other])
    merged = module.main([*argv, "--resume", "--import-runs", other])["classification"]
    assert sorted(r["key"] for r in merged["runs"]) == sorted(r["key"] for r in whole["runs"])
    assert (
        merged["complete"]
        and merged["summary"]["upetu"]["test_mean"] == whole["summary"]["upetu"]["test_mean"]
    )
    assert merged["summary"]["full"]["test_mean"] == whole["summary"]["full"]["test_mean"]
    alien = json.loads(Path(other).read_text())
    alien["protocol"]["epochs"] = 3  # a shard run with other settings must not be mixed in
    (tmp_path / "alien.json").write_text(json.dumps(alien))
    with pytest.raises(SystemExit, match="other settings"):
        module.main([*argv, "--resume", "--import-runs", str(tmp_path / "alien.json")])


def test_make_report_writes_tables_plot_and_readme_section(bench, tmp_path, capsys):
    report = load_script("make_report")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# project\n\nintro\n\n## Results\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\ntail\n"
    )
    md, png = tmp_path / "summary.md", tmp_path / "plot.png"
    argv = ["--results-dir", str(bench["out"]), "--markdown", str(md), "--plot", str(png)]
    report.main([*argv, "--readme", str(readme)])
    text = md.read_text()
    state = json.loads((bench["out"] / "accuracy_classification.json").read_text())
    upetu = state["summary"]["upetu"]
    assert f"{100 * upetu['test_mean']:.2f}" in text and "Full fine-tuning" in text
    assert "mIoU" in text and "F1" in text
    updated = readme.read_text()
    assert updated.startswith("# project\n\nintro\n\n## Results\n\n<!-- results:start -->\n")
    assert updated.endswith("<!-- results:end -->\n\ntail\n") and "old" not in updated
    assert "python scripts/benchmark_accuracy.py" in updated and f"{100 * upetu['test_mean']:.2f}" in updated

    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and float(np.std(pixels[..., :3])) > 0.01

    bare = tmp_path / "BARE.md"
    bare.write_text("# project\n")
    capsys.readouterr()
    report.main([*argv, "--readme", str(bare)])
    assert bare.read_text() == "# project\n"  # no markers: the section is printed, the file left alone
    assert "<!-- results:start -->" in capsys.readouterr().out


def test_repeated_splits_train_every_seed_on_every_split(bench, tmp_path, monkeypatch):
    module, assets = bench["module"], bench["assets"]
    out, work = tmp_path / "results", tmp_path / "work"
    argv = bench_args(
        assets, out, work, "--tasks", "classification,change-detection", "--methods", "upetu",
        "--lr-factors", "1", "--split-seeds", "0,1", "--seeds", "0,1", "--cd-repeats", "2",
    )  # fmt: skip
    states = module.main(argv)
    for state in states.values():
        runs = state["runs"]
        assert sorted((r["split_seed"], r["seed"]) for r in runs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert len({r["key"] for r in runs}) == 4 and all(r["status"] == "ok" for r in runs)
        assert all(r["arguments"]["split_seed"] == r["split_seed"] for r in runs)
        summary = state["summary"]["upetu"]
        assert summary["n"] == 4 and sorted(summary["split_seeds"]) == [0, 0, 1, 1]
        assert summary["test_mean"] == pytest.approx(sum(r["test_score"] for r in runs) / 4)
        assert [r["phase"] for r in runs].count("split") == 2
    # change detection: each split seed has its own pairs
    assert sorted(p.name for p in (work / "cd-split-seed0-x2" / "test" / "label").iterdir()) != sorted(
        p.name for p in (work / "cd-split-seed1-x2" / "test" / "label").iterdir()
    )
    # the classification splits differ: the same seed scores differently on another split
    first = {(r["split_seed"], r["seed"]): r for r in states["classification"]["runs"]}
    assert first[(0, 0)]["history"] != first[(1, 0)]["history"]

    # --merge-only trains nothing: with a third split requested, the missing runs are listed, not trained
    forbid_training(monkeypatch, module, "--merge-only trained a run")
    more = [*argv, "--resume", "--merge-only"]
    more[more.index("0,1", more.index("--split-seeds"))] = "0,1,2"
    merged = module.main(more)
    for state in merged.values():
        assert state["summary"]["upetu"]["n"] == 4 and not state["complete"]
    with pytest.raises(SystemExit):
        module.main([*argv, "--merge-only"])  # merging needs --resume
    monkeypatch.undo()

    # a wider learning-rate grid resumes the same file: the finished runs are kept, only the new rate trains
    trained = []
    real_train = module.train

    def counting_train(targs):
        trained.append((targs.lr, targs.seed, targs.split_seed))
        return real_train(targs)

    monkeypatch.setattr(module, "train", counting_train)
    wider = [
        *argv[: argv.index("--lr-factors")],
        "--lr-factors",
        "1,3",
        *argv[argv.index("--lr-factors") + 2 :],
    ]
    wider[wider.index("classification,change-detection")] = "classification"
    state = module.main([*wider, "--resume"])["classification"]
    assert [(lr, seed, split) for lr, seed, split in trained if seed == 0 and split == 0] == [(3e-2, 0, 0)]
    choice = state["selection"]["upetu"]
    assert len(choice["candidates"]) == 2 and choice["interior"] is False  # two candidates: no interior


def test_paired_difference_interval_and_verdict():
    paired_difference = load_script("_ledger").paired_difference

    def entry(scores, splits, seeds):
        return {"test_scores": scores, "split_seeds": splits, "seeds": seeds}

    summary = {
        "a": entry([0.80, 0.82, 0.78, 0.81], [0, 0, 1, 1], [0, 1, 0, 1]),
        "b": entry([0.70, 0.73, 0.69, 0.70, 0.99], [0, 0, 1, 1, 2], [0, 1, 0, 1, 0]),
        "c": entry([0.79, 0.84, 0.77, 0.82], [0, 0, 1, 1], [0, 1, 0, 1]),
    }
    d = paired_difference(summary, "a", "b")  # differences 0.10, 0.09, 0.09, 0.11 on the 4 shared pairs
    assert d["n"] == 4 and d["pairs"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert d["mean"] == pytest.approx(0.0975) and d["std"] == pytest.approx(0.00957427, rel=1e-5)
    half = 3.182 * 0.00957427 / 2  # t(0.975, 3) * std / sqrt(4)
    assert d["ci95"] == pytest.approx([0.0975 - half, 0.0975 + half], rel=1e-4)
    assert d["decided"] == "a"
    assert paired_difference(summary, "b", "a")["decided"] == "a"
    # differences +0.01, -0.02, +0.01, -0.01: the interval holds 0, no verdict
    assert paired_difference(summary, "a", "c")["decided"] is None
    assert paired_difference(summary, "a", "missing") is None


def test_select_on_the_mean_over_several_search_seeds():
    select = load_script("_ledger").select
    grid = [(1.0, 0.01), (3.0, 0.03), (9.0, 0.09)]

    def run(lr, seed, score, split_seed=0):
        return {"lr": lr, "seed": seed, "split_seed": split_seed, "status": "ok", "validation_score": score,
                "best_epoch": 7 + seed}  # fmt: skip

    runs = [
        run(0.01, 0, 0.70), run(0.03, 0, 0.78), run(0.09, 0, 0.60),  # seed 0 alone picks 0.03
        run(0.01, 1, 0.80), run(0.03, 1, 0.70), run(0.09, 1, 0.62),  # the mean picks 0.01 (0.75 vs 0.74)
        run(0.03, 2, 0.99), run(0.01, 0, 0.10, split_seed=1),  # another seed, another split: ignored
    ]  # fmt: skip
    one = select(runs, grid, 0)
    assert (one["lr"], one["validation_score"], one["interior"]) == (0.03, 0.78, True)
    assert "validation_scores" not in one["candidates"][0]
    two = select(runs, grid, [0, 1])
    assert (two["lr"], two["complete"], two["interior"], two["best_epoch"]) == (0.01, True, False, 7)
    assert two["validation_score"] == pytest.approx(0.75)
    assert [c["validation_scores"] for c in two["candidates"]] == [[0.70, 0.80], [0.78, 0.70], [0.60, 0.62]]
    # a candidate missing one search seed is unfinished: the choice is incomplete and made among the others
    partial = select([r for r in runs if not (r["lr"] == 0.01 and r["seed"] == 1)], grid, [0, 1])
    assert not partial["complete"] and partial["lr"] == 0.03
    assert partial["candidates"][0] == {
        "lr": 0.01, "lr_factor": 1.0, "finished": False, "validation_score": None, "validation_scores": [0.70, None]
    }  # fmt: skip


def test_a_tie_is_broken_by_more_evidence_before_the_smaller_rate():
    select = load_script("_ledger").select
    grid = [(1.0, 0.01), (3.0, 0.03)]

    def run(lr, seed, score, last=(0.5, 0.5, 0.5)):
        history = [{"validation/accuracy": v} for v in last]
        return {"lr": lr, "seed": seed, "status": "ok", "validation_score": score, "best_epoch": 3,
                "metric": "accuracy", "history": history}  # fmt: skip

    # a tie on seed 0: the last epochs decide (0.03 ends higher)
    tied = [run(0.01, 0, 0.75, (0.70, 0.72, 0.75)), run(0.03, 0, 0.75, (0.74, 0.75, 0.75))]
    choice = select(tied, grid, 0)
    assert (choice["lr"], choice["tie"]) == (0.03, {"lrs": [0.01, 0.03], "decided_by": "last epochs"})
    # a seed both tied rates ran comes first: here it favours 0.01
    more = [*tied, run(0.01, 1, 0.80), run(0.03, 1, 0.70)]
    assert select(more, grid, 0)["tie"]["decided_by"] == "seeds" and select(more, grid, 0)["lr"] == 0.01
    # equal everywhere: the smaller rate, as before
    flat = [run(0.01, 0, 0.75), run(0.03, 0, 0.75)]
    assert (
        select(flat, grid, 0)["lr"] == 0.01 and select(flat, grid, 0)["tie"]["decided_by"] == "smaller rate"
    )
    # no tie, no record
    assert "tie" not in select([run(0.01, 0, 0.75), run(0.03, 0, 0.76)], grid, 0)


def test_a_tie_trains_the_tied_rates_on_the_next_seeds_until_they_decide():
    module = load_script("benchmark_accuracy")
    grid = [(1.0, 0.01), (3.0, 0.03), (9.0, 0.09)]
    scores = {(0.01, 0): 0.75, (0.03, 0): 0.75, (0.09, 0): 0.5, (0.01, 1): 0.70, (0.03, 1): 0.70}
    scores |= {(0.01, 2): 0.70, (0.03, 2): 0.72}  # seed 1 ties again, seed 2 decides for 0.03
    runner = object.__new__(module.TaskRunner)
    runner.setup = SimpleNamespace(seeds=[0, 1, 2, 3], search_seeds=[0], split_seeds=[0], search_splits=[0])
    runner.done, trained = {}, []
    variant = module.VARIANTS["upetu"]

    def ensure(variant, options, candidate, seed, phase, split=None):
        lr = candidate[1]
        trained.append((lr, seed, phase))
        record = {"variant": variant.name, "options": options, "lr": lr, "seed": seed, "status": "ok",
                  "validation_score": scores[lr, seed], "best_epoch": 1, "metric": "accuracy",
                  "history": [{"validation/accuracy": 0.5}]}  # fmt: skip
        runner.done[f"{lr}-{seed}"] = record

    runner.ensure = ensure
    for f, lr in grid:
        ensure(variant, {}, (f, lr), 0, "search")
    choice = runner.choose(variant, {}, grid)
    assert choice["lr"] == 0.03 and choice["tie"] == {"lrs": [0.01, 0.03], "decided_by": "seeds"}
    assert trained[3:] == [
        (0.01, 1, "tie-break"),
        (0.03, 1, "tie-break"),
        (0.01, 2, "tie-break"),
        (0.03, 2, "tie-break"),
    ]


def test_search_seeds_search_every_candidate_with_each_and_reuse_them_as_final_runs(
    bench, tmp_path, monkeypatch
):
    """`--search-seeds 2` on a finished one-seed benchmark (`--resume`): only the search runs of the second seed
    that are not on file train; the choice is the best mean validation; every search run is a final run."""
    module, assets = bench["module"], bench["assets"]
    argv = bench_args(
        assets, tmp_path / "o", tmp_path / "w", "--tasks", "classification", "--methods", "upetu",
        "--lr-factors", "1,3", "--seeds", "0,1,2",
    )  # fmt: skip
    first = module.main(argv)["classification"]
    assert "search_seeds" not in first["protocol"]
    before = {(r["lr"], r["seed"]) for r in first["runs"]}
    # seed 0 at both rates, seeds 1 and 2 at the chosen one (and the tied rates on the next seeds, on a tie)
    chosen = first["summary"]["upetu"]["lr"]
    assert {(1e-2, 0), (3e-2, 0), (chosen, 1), (chosen, 2)} <= before

    argv = [*argv, "--search-seeds", "2", "--resume"]
    assert "2 learning rates x 2 search seeds + 1 more" in "\n".join(
        module.plan(module.make_setups(module.parse_args(argv), tmp_path / "w"))
    )
    trained = []
    real_train = module.train

    def counting_train(targs):
        trained.append((targs.lr, targs.seed))
        return real_train(targs)

    monkeypatch.setattr(module, "train", counting_train)
    state = module.main(argv)["classification"]
    runs = {(r["lr"], r["seed"]): r for r in state["runs"]}
    chosen = state["summary"]["upetu"]["lr"]
    assert sorted(runs) == sorted({(1e-2, 0), (1e-2, 1), (3e-2, 0), (3e-2, 1), (chosen, 2)} | before)
    assert trained == [k for k in [(1e-2, 1), (3e-2, 1), (chosen, 2)] if k not in before]
    choice = state["selection"]["upetu"]
    for c in choice["candidates"]:
        scores = [runs[(c["lr"], s)]["validation_score"] for s in (0, 1)]
        assert c["validation_scores"] == scores and c["validation_score"] == pytest.approx(sum(scores) / 2)
    best = max(choice["candidates"], key=lambda c: (c["validation_score"], -c["lr"]))
    assert choice["lr"] == best["lr"] or choice["tie"]["decided_by"] == "seeds"  # seed 2 breaks a tie
    summary = state["summary"]["upetu"]
    assert summary["seeds"] == [0, 1, 2] and summary["n"] == 3
    assert state["protocol"]["search_seeds"] == [0, 1]
    report = load_script("make_report")
    assert "x {1, 3} on seeds 0, 1 (their mean validation accuracy) of split 0" in "\n".join(
        report.protocol_lines({"classification": state})
    )
    assert "per learning rate (mean over seeds 0, 1)" in report.search_table(state)[0]
    for bad in ("0", "4"):
        with pytest.raises(SystemExit):
            module.parse_args([*argv[:-2], bad])


def test_retrain_sets_aside_a_methods_runs_and_takes_the_new_ones(bench, monkeypatch, tmp_path, capsys):
    """After a design change: `--retrain upetu --import-runs NEW` keeps the old UPetu runs under 'superseded' and
    summarises the new ones; the other methods' runs stay."""
    module, assets, work = bench["module"], bench["assets"], bench["work"]
    whole = json.loads((bench["out"] / "accuracy_classification.json").read_text())
    merged_dir, new_dir = tmp_path / "merged", tmp_path / "new"
    merged_dir.mkdir()
    new_dir.mkdir()
    (merged_dir / "accuracy_classification.json").write_text(json.dumps(whole))
    new_runs = [
        dict(r, validation_score=r["validation_score"] / 2, test_score=0.125, wall_time_s=1.0)
        for r in whole["runs"]
        if r["variant"] == "upetu"
    ]
    (new_dir / "accuracy_classification.json").write_text(json.dumps(dict(whole, runs=new_runs)))

    forbid_training(monkeypatch, module, "nothing should be trained")
    argv = bench_args(
        assets,
        merged_dir,
        work,
        "--tasks",
        "classification",
        "--methods",
        "full,upetu",
        "--lr-factors",
        "1,3",
    )
    with pytest.raises(SystemExit):
        module.main([*argv, "--retrain", "upetu"])
    assert "pass --resume too" in capsys.readouterr().err
    merged = module.main(
        [
            *argv,
            "--resume",
            "--merge-only",
            "--retrain",
            "upetu",
            "--import-runs",
            str(new_dir / "accuracy_classification.json"),
        ]
    )["classification"]
    assert merged["summary"]["upetu"]["test_mean"] == 0.125
    assert merged["summary"]["full"]["test_mean"] == whole["summary"]["full"]["test_mean"]
    old_upetu = [r for r in whole["runs"] if r["variant"] == "upetu"]
    assert [r["test_score"] for r in merged["superseded"]] == [r["test_score"] for r in old_upetu]
    assert all(r["variant"] != "upetu" or r["test_score"] == 0.125 for r in merged["runs"])


def test_dense_head_lr_is_the_training_apis_default_unless_given(bench, tmp_path):
    module = bench["module"]
    cd = json.loads((bench["out"] / "accuracy_change_detection.json").read_text())
    assert cd["protocol"]["dense_head_lr"] == get_task("change-detection").head_lr
    (run,) = cd["runs"]
    assert run["arguments"]["head_lr"] == get_task("change-detection").head_lr

    args = module.parse_args(
        bench_args(
            bench["assets"], tmp_path / "o", tmp_path / "w", "--tasks", "change-detection,classification"
        )
        + ["--dense-head-lr", "7e-4"]
    )
    setups = {s.task: s for s in module.make_setups(args, tmp_path / "w")}
    cd_setup, cls_setup = setups["change-detection"], setups["classification"]
    assert cd_setup.protocol(args)["dense_head_lr"] == 7e-4 and "dense_head_lr" not in cls_setup.protocol(
        args
    )
    peft = module.training_arguments(cd_setup, args, "upetu", {}, tmp_path / "r", lr=1e-2)
    full = module.training_arguments(cd_setup, args, "full", {}, tmp_path / "r", lr=5e-4)
    assert (peft.head_lr, full.head_lr) == (7e-4, 5e-4)  # full fine-tuning trains its decoder at --lr

    # segmentation's 64-channel UperNet: the rate upetu-train gives a decoder of that width (512 / 64 x the default)
    args = module.parse_args(
        bench_args(bench["assets"], tmp_path / "o", tmp_path / "w", "--tasks", "segmentation")
    )
    (seg_setup,) = module.make_setups(args, tmp_path / "w")
    assert args.seg_head_hidden == 64 and seg_setup.head_lr == get_task("segmentation").head_lr * 8
    peft = module.training_arguments(seg_setup, args, "lora", {}, tmp_path / "r", lr=3e-3)
    assert peft.head_lr == seg_setup.protocol(args)["dense_head_lr"] == 8e-4
