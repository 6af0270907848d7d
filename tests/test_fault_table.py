"""The fault table (results/fault_table.md, issue 28) is generated, not written by hand: a fresh run of
`scripts/fault_table.py` on some of its cases (the three real operating-system faults among them) gives the
committed rows exactly, and every row is one `upetu-...` line naming its fault, with exit code 2 (Ctrl-C: 130) and
no temporary file left behind.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import fault_table
import pytest
from conftest import REPO_ROOT

TABLE = REPO_ROOT / "results" / "fault_table.md"
#: What each case's message must say (the fault it names).
NAMES = {
    "damaged_checkpoint": "is damaged",
    "divergence": "diverged",
    "full_disk": "no space left",
    "interrupt": "resume it with",
    "mask_as_image": "single band",
    "nan_pixels": "nan or infinite",
    "nan_statistics": "must be finite",
    "no_peft_type": "peft_type",
    "non_utf8_name": "not valid utf-8",
    "not_empty": "not empty",
    "other_frozen_weights": "frozen weights",
    "push_offline": "--push-to-hub",
    "read_only": "read-only",
    "rgb_run_on_bands": "13 band",
    "wrong_band_count": "--num-channels",
}
#: Cases that need a private mount namespace (`unshare -rm`).
MOUNTED = {"full_disk", "read_only"}
CAN_MOUNT = bool(shutil.which("unshare")) and subprocess.run(["unshare", "-rm", "true"]).returncode == 0
#: The cases run afresh: the three real operating-system faults and two quick ones (one of `upetu-eval`).
FRESH = [
    n
    for n in ["full_disk", "interrupt", "no_peft_type", "read_only", "wrong_band_count"]
    if CAN_MOUNT or n not in MOUNTED
]


def committed() -> list[dict]:
    return json.loads(TABLE.with_suffix(".json").read_text())["cases"]


def problems(row: dict) -> list[str]:
    """What is wrong with one row: the exit code, the shape of the message, the fault it names, files left."""
    interrupted = row["name"] == "interrupt"
    found = [] if row["exit_code"] == (130 if interrupted else 2) else [f"exit code {row['exit_code']}"]
    shape = r"upetu-(train|eval): " + (r"interrupted; .+" if interrupted else r"error: .+")
    found += [] if re.fullmatch(shape, row["message"]) else [f"message {row['message']!r}"]
    found += [] if NAMES[row["name"]] in row["message"].lower() else [f"does not say {NAMES[row['name']]!r}"]
    return found + [f"left {path}" for path in row["left_behind"]]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> list[dict]:
    return fault_table.fault_table(tmp_path_factory.mktemp("faults"), FRESH, workers=len(FRESH))


def test_every_committed_row_is_one_line_naming_its_fault():
    rows = committed()
    assert [row["name"] for row in rows] == fault_table.CASE_NAMES == sorted(NAMES)
    assert {row["name"]: problems(row) for row in rows if problems(row)} == {}
    assert TABLE.read_text() == fault_table.markdown(rows)


def test_a_fresh_run_gives_the_committed_rows(fresh):
    assert {row["name"]: problems(row) for row in fresh if problems(row)} == {}
    by_name = {row["name"]: row for row in committed()}
    assert fresh == [by_name[name] for name in FRESH]


def test_a_full_disk_names_the_checkpoint_and_the_fix():
    message = {row["name"]: row for row in committed()}["full_disk"]["message"]
    assert "o-disk/checkpoints" in message and "free some space" in message


def test_the_checks_catch_a_broken_row():
    good = {row["name"]: row for row in committed()}
    assert problems(good["read_only"]) == problems(good["interrupt"]) == []
    broken = [
        {**good["read_only"], "exit_code": 1},
        {**good["interrupt"], "exit_code": 2},
        {**good["read_only"], "message": "OSError: [Errno 30] Read-only file system"},
        {**good["read_only"], "message": "upetu-train: error: something failed"},
        {**good["full_disk"], "left_behind": ["o-disk/checkpoints/.tmp-step_1"]},
    ]
    assert [len(problems(row)) > 0 for row in broken] == [True] * len(broken)
