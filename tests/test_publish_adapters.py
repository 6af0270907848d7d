"""scripts/publish_adapters.sh: its dry run prints two `upetu-train` commands that the real CLI parser accepts, and
they train and push exactly the adapters notebook 4 loads (ConvNeXt-B on UC Merced, 1 and 4 bits)."""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess

import pytest
from conftest import REPO_ROOT

from upetu_hf.train.cli import build_parser, training_arguments

SCRIPT = REPO_ROOT / "scripts" / "publish_adapters.sh"
NOTEBOOK = REPO_ROOT / "notebooks" / "04_adapters_from_the_hub.ipynb"


def dry_run(*args: str, env: dict[str, str] | None = None) -> list[list[str]]:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, check=True, env=env
    )
    return [shlex.split(line) for line in out.stdout.splitlines()]


def notebook_adapter_ids() -> dict[int, str]:
    """Notebook 4's `ADAPTER_<k>BIT_ID` parameters, by bit width."""
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    ids = {}
    for node in ast.parse("".join(cell["source"])).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        name = target.id if isinstance(target, ast.Name) else ""
        if name.startswith("ADAPTER_") and name.endswith("BIT_ID"):
            ids[int(name[len("ADAPTER_") : -len("BIT_ID")])] = node.value.value
    return ids


def test_dry_run_commands_parse_with_the_cli_and_publish_notebook_4s_adapters():
    commands = dry_run()
    assert len(commands) == 2
    published = {}
    for argv in commands:
        assert argv[0] == "upetu-train"
        args = training_arguments(build_parser().parse_args(argv[1:]))  # exits on an unknown or bad option
        assert (args.task, args.method) == ("classification", "upetu")
        assert args.model == "facebook/convnext-base-224-22k" and args.data == ["blanchon/UC_Merced"]
        assert (args.train_fraction, args.split_seed, args.mixed_precision) == (0.5, 0, "bf16")
        assert args.push_to_hub and args.hub_model_id.startswith("upetu-hf/")
        assert args.output_dir == f"runs/{args.hub_model_id.split('/')[1]}"
        published[args.bits] = args.hub_model_id
    expected = {1: "upetu-hf/convnext-base-ucm-upetu-1bit", 4: "upetu-hf/convnext-base-ucm-upetu-4bit"}
    assert published == notebook_adapter_ids() == expected


def test_dry_run_keeps_an_output_root_with_spaces_and_passes_extra_args(tmp_path):
    root = tmp_path / "my runs"
    commands = dry_run("--output-root", str(root), env=dict(os.environ, EXTRA_ARGS="--overwrite"))
    for argv in commands:
        args = training_arguments(build_parser().parse_args(argv[1:]))
        assert args.output_dir.startswith(f"{root}/") and args.overwrite


@pytest.mark.parametrize("argv", [["--bogus"], ["--output-root"]])
def test_bad_options_are_refused(argv):
    out = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True)
    assert out.returncode == 2 and "publish_adapters.sh:" in out.stderr and not out.stdout
