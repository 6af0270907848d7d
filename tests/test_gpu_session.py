"""scripts/gpu_session.sh: the parts that run without a GPU (its argument and input checks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def test_the_script_parses_and_refuses_unknown_commands() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    out = subprocess.run(["bash", str(SCRIPT), "train"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: bash scripts/gpu_session.sh {prepare|run}" in out.stderr


def test_run_without_prepared_inputs_says_how_and_writes_nothing(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    (copy / "scripts" / "gpu_session.sh").write_text(SCRIPT.read_text())
    out_dir = tmp_path / "out"
    out = subprocess.run(
        ["bash", str(copy / "scripts" / "gpu_session.sh"), "run"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "OUT": str(out_dir)},
    )
    assert out.returncode == 2 and "run 'bash scripts/gpu_session.sh prepare' and carry .gpu" in out.stderr
    assert not out_dir.exists() and sorted(p.name for p in copy.iterdir()) == ["scripts"]
