"""scripts/peft_custom_suite.py: failures of peft's suite are sorted into the two expected causes and "other"."""

from __future__ import annotations

import pytest
from test_benchmark_accuracy import load_script

JUNIT = """<?xml version="1.0"?>
<testsuites><testsuite name="pytest">
<testcase name="test_save_pretrained[ConvNeXt UPetu 1bit-ConvNeXt-UPetuConfig-config_kwargs1]">
  <failure message="AssertionError">assert torch.allclose(...)\nE AssertionError</failure></testcase>
<testcase name="test_save_pretrained[ConvNeXt UPetu 32bit-ConvNeXt-UPetuConfig-config_kwargs2]">
  <failure message="AssertionError">E AssertionError</failure></testcase>
<testcase name="test_safe_merge[ConvNeXt UPetu default-ConvNeXt-UPetuConfig-config_kwargs0]">
  <failure message="ValueError: UPetu adapters cannot be merged into the base weights">raise</failure></testcase>
<testcase name="test_forward_output_finite[ConvNeXt UPetu default-ConvNeXt-UPetuConfig-config_kwargs0]"/>
<testcase name="test_lora_only[x]"><skipped message="not LoRA"/></testcase>
</testsuite></testsuites>
"""


def test_failures_are_sorted_by_cause(tmp_path):
    suite = load_script("peft_custom_suite")
    (tmp_path / "report.xml").write_text(JUNIT)
    rows = suite.classify(tmp_path / "report.xml")
    assert [(r["outcome"], r["cause"]) for r in rows] == [
        ("failed", suite.LATENTS_NOT_SAVED),
        ("failed", "other"),  # at 32 bits the state dict must survive a save: a failure there is unexpected
        ("failed", suite.MERGE_REFUSED),
        ("passed", None),
        ("skipped", None),
    ]


def test_a_folder_without_peft_tests_is_refused(tmp_path):
    suite = load_script("peft_custom_suite")
    with pytest.raises(SystemExit, match="peft source checkout"):
        suite.main(["--peft", str(tmp_path), "--output", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()
