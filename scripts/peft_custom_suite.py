#!/usr/bin/env python
"""Run peft's own custom-model test suite (`tests/test_custom_models.py` upstream) against UPetu: the suite is
copied from a peft checkout into a temporary folder and changed there in three places (`HOOKS`) so that its cases
are UPetu's (`templates/peft_upetu_cases.py`: tiny ConvNeXt models behind the suite's interface). Every outcome
goes to `--output`, failures grouped by cause, so that the expected ones (UPetu refuses to merge; raw state dicts
differ across a save at 1-8 bits, README "What is exact") stand apart. Nothing from peft is copied here.

    python scripts/peft_custom_suite.py --peft /path/to/peft/checkout --output /tmp/peft_suite.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from xml.etree import ElementTree

from _common import REPO_ROOT, write_json_atomic

SUITE_FILES = ("testing_common.py", "testing_utils.py", "test_custom_models.py", "conftest.py")
#: The UPetu cases, written into the copied suite as `upetu_cases.py`.
CASES = (Path(__file__).parent / "templates" / "peft_upetu_cases.py").read_text()
#: What the copied `test_custom_models.py` gets instead of each of these texts (each must be there).
HOOKS = {
    "class MockTransformerWrapper:": "from .upetu_cases import UPETU_TEST_CASES, build as _upetu_build, inputs as "
    "_upetu_inputs\nTEST_CASES = UPETU_TEST_CASES\n\n\nclass MockTransformerWrapper:",
    '        if model_id == "MLP":\n': '        if model_id.startswith("ConvNeXt"):\n            return '
    '_upetu_build(model_id).to(dtype)\n\n        if model_id == "MLP":\n',
    "    def prepare_inputs_for_testing(self):\n        X = torch.arange(90).view(9, 10).to(self.torch_device)\n"
    '        return {"X": X}': "    def prepare_inputs_for_testing(self):\n        return _upetu_inputs(self.torch_device)",
}
MERGE_REFUSED = "merge refused (expected: EQAM and CAPM are not weight updates)"
LATENTS_NOT_SAVED = (
    "raw state dict differs across a save (expected at 1-8 bits: the file keeps no fp32 latents)"
)
#: peft's tests that compare raw state dicts before saving and after loading (README, "What is exact").
STATE_DICT_TESTS = ("test_save_pretrained", "test_save_pretrained_pickle")
STATE_DICT_TESTS += ("test_parameters_after_loading_model",)


def failure_cause(name: str, text: str) -> str:
    """The known cause of a failed test, or "other"."""
    if "UPetu adapters cannot be merged" in text:
        return MERGE_REFUSED
    if name.split("[")[0] in STATE_DICT_TESTS and "32bit" not in name and "AssertionError" in text:
        return LATENTS_NOT_SAVED
    return "other"


def patch_suite(folder: Path) -> None:
    """Point the copied suite at the UPetu cases; fail loudly if peft's file no longer has the expected hooks."""
    path = folder / "test_custom_models.py"
    text = path.read_text()
    for old, new in HOOKS.items():
        if old not in text:
            raise SystemExit(f"peft's test_custom_models.py lacks {old.strip()!r}: an unsupported peft.")
        text = text.replace(old, new)
    path.write_text(text)
    (folder / "upetu_cases.py").write_text(CASES)
    (folder / "__init__.py").write_text("")


def classify(junit: Path) -> list[dict]:
    """One row per test of pytest's JUnit XML report: outcome and, for a failure, its cause."""
    rows = []
    for case in ElementTree.parse(junit).iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped") is not None
        outcome = "failed" if problem is not None else "skipped" if skipped else "passed"
        text = "" if problem is None else (problem.get("message") or "") + (problem.text or "")
        cause = None if problem is None else failure_cause(case.get("name"), text)
        rows.append({"test": case.get("name"), "outcome": outcome, "cause": cause})
    return rows


def run_suite(tests: Path, k: str) -> list[dict]:
    """peft's suite copied from `tests` into a temporary folder, patched, run on the cases matching `k`."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tests").mkdir()
        for name in SUITE_FILES:
            shutil.copy(tests / name, root / "tests" / name)
        patch_suite(root / "tests")
        try:  # testing_common imports diffusers for tests UPetu never reaches
            import diffusers  # noqa: F401
        except ImportError:
            (stub := root / "stubs" / "diffusers").mkdir(parents=True)
            (stub / "__init__.py").write_text("class StableDiffusionPipeline:\n    pass\n")
        paths = os.pathsep.join([str(root / "stubs"), str(root), str(REPO_ROOT / "src")])
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["tests/test_custom_models.py", "-k", k, f"--junitxml={root / 'report.xml'}"]
        subprocess.run(command, cwd=root, env=dict(os.environ, PYTHONPATH=paths), check=False)
        return classify(root / "report.xml")


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the suite, write the outcomes, print their counts and any unexpected failure."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--peft", type=Path, required=True, help="a peft source checkout (its tests/)")
    parser.add_argument("--output", type=Path, default=Path("peft_suite.json"), help="JSON file of outcomes")
    parser.add_argument("-k", default="UPetu", help="pytest -k expression (default: every UPetu case)")
    args = parser.parse_args(argv)
    tests = args.peft / "tests"
    if missing := [name for name in SUITE_FILES if not (tests / name).is_file()]:
        raise SystemExit(f"{tests} lacks {', '.join(missing)}: pass the root of a peft source checkout.")
    rows = run_suite(tests, args.k)
    counts = Counter(r["outcome"] if r["cause"] is None else f"failed: {r['cause']}" for r in rows)
    git = subprocess.run(["git", "-C", str(args.peft), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = git.stdout.strip() if git.returncode == 0 else ""
    result = dict(peft_tests_from=str(args.peft), peft_commit=commit or None, peft_installed=version("peft"))
    result |= dict(counts=dict(counts), tests=rows)
    write_json_atomic(args.output, result)
    for outcome, n in counts.most_common():
        print(f"{n:4d}  {outcome}")
    for r in rows:
        if r["cause"] == "other":
            print("unexpected failure:", r["test"])
    return result


if __name__ == "__main__":
    main()
