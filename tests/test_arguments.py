"""The run's description has one source: every command-line option comes from a field of `TrainingArguments` /
`EvalArguments`, with that field's default."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from upetu_hf.train.arguments import TASKS, EvalArguments, TrainingArguments
from upetu_hf.train.cli import build_eval_parser, build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


PARSERS = [(task, TrainingArguments, task) for task in TASKS] + [("eval", EvalArguments, None)]


@pytest.mark.parametrize(("command", "cls", "task"), PARSERS)
def test_every_cli_default_is_the_dataclass_default(command, cls, task):
    options = _options(_subparsers(build_parser())[command])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert options, command
    for dest, action in options.items():
        field = fields[dest]  # every option is a field
        if field.default is dataclasses.MISSING:
            assert action.required, dest
        else:
            assert action.default == field.default, (command, dest, action.default, field.default)
    offered = {
        name
        for name, f in fields.items()
        if "cli" in f.metadata and (task in f.metadata["tasks"] or not task)
    }
    assert set(options) == offered, command


def test_upetu_eval_is_the_eval_subcommand():
    eval_options = _options(build_eval_parser())
    sub = _options(_subparsers(build_parser())["eval"])
    assert {d: (a.option_strings, a.default) for d, a in eval_options.items()} == {
        d: (a.option_strings, a.default) for d, a in sub.items()
    }


def test_a_changed_dataclass_default_reaches_the_cli(monkeypatch):
    """The parser reads the defaults when it is built: no second copy can drift."""
    field = next(f for f in dataclasses.fields(TrainingArguments) if f.name == "epochs")
    monkeypatch.setattr(field, "default", 7)
    parsed = build_parser().parse_args(["classification", "--model", "m", "--data", "d", "--output-dir", "o"])
    assert parsed.epochs == 7


def test_flags_that_switch_off_keep_their_field_default():
    parser = build_parser()
    plain = parser.parse_args(["segmentation", "--model", "m", "--data", "d", "--output-dir", "o"])
    assert (plain.use_eqam, plain.use_capm, plain.verify_images) == (None, None, True)
    off = parser.parse_args(
        [
            "segmentation",
            "--model",
            "m",
            "--data",
            "d",
            "--output-dir",
            "o",
            "--no-eqam",
            "--no-verify-images",
        ]
    )
    assert (off.use_eqam, off.verify_images) == (False, False)


def test_selection_metric_and_device_checks_live_in_the_arguments():
    base = dict(task="segmentation", model="m", data="d", output_dir="o")
    with pytest.raises(ValueError, match="--metric-for-best 'accuracy' is invalid for segmentation"):
        TrainingArguments(**base, metric_for_best="accuracy")
    args = TrainingArguments(**base, mixed_precision="fp16")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        args.check_device("cpu")
    args.check_device("cuda")
    assert TrainingArguments(**{**base, "task": "semantic_segmentation"}).task == "segmentation"


def test_resolved_identity_resolves_the_method_defaults():
    base = dict(task="classification", model="m", data="d", output_dir="o")
    assert (
        TrainingArguments(**base, bits=4).resolved_identity() == TrainingArguments(**base).resolved_identity()
    )
    lora = TrainingArguments(**base, method="lora", r=4).resolved_identity()
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (4, 8.0, 0.0)
    assert TrainingArguments(**base, method="lora", r=4, lora_alpha=8).resolved_identity() == lora


BAD = {
    "count": 0,
    "optional count": 0,
    "positive": 0.0,
    "non-negative": -1,
    "fraction": 1.5,
    "rate": 1.0,
    "clip": -1,
}


@pytest.mark.parametrize(
    "field",
    [f for f in dataclasses.fields(TrainingArguments) if f.metadata.get("check")],
    ids=lambda f: f.name,
)
def test_every_checked_field_refuses_a_bad_value_by_its_flag(field):
    base = dict(task="segmentation", model="m", data="d", output_dir="o", method="lora")
    TrainingArguments(**base)  # the defaults pass
    with pytest.raises(ValueError, match=f"^--{field.name.replace('_', '-')}=.* is invalid"):
        TrainingArguments(**base, **{field.name: BAD[field.metadata["check"]]})


@pytest.mark.parametrize("task", TASKS)
def test_every_training_option_is_in_a_help_group(task):
    """One flat `TrainingArguments`, grouped for `--help` by its fields' metadata: every option (the task is the
    sub-command) sits under its group's heading."""
    fields = [f for f in dataclasses.fields(TrainingArguments) if f.name != "task"]
    assert all(f.metadata.get("group") for f in fields), [
        f.name for f in fields if not f.metadata.get("group")
    ]
    parser = _subparsers(build_parser())[task]
    grouped = {
        a.dest: group.title
        for group in parser._action_groups
        for a in group._group_actions
        if a.dest != "help"
    }
    for field in fields:
        if field.name in grouped:
            assert grouped[field.name] == field.metadata["group"], field.name
    assert {"method", "optimisation", "data", "model"} <= set(grouped.values())


def test_task_specific_help_comes_from_the_task_spec():
    from upetu_hf.train.tasks import get_task

    for task in TASKS:
        spec = get_task(task)
        options = _options(_subparsers(build_parser())[task])
        for name, text in spec.option_help.items():
            assert options[name].help == text
        assert _subparsers(build_parser())[task].description == spec.summary
    assert (
        _options(_subparsers(build_parser())["segmentation"])["data"].help
        == "Hub dataset id or local folder."
    )
