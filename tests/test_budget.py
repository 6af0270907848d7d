"""scripts/budget.py: the UperNet decoder sizes quoted in the README come from the decoder transformers builds."""

from __future__ import annotations

from test_benchmark_accuracy import load_script


def test_upernet_decoder_sizes():
    budget = load_script("budget")
    default = budget.decoder_size(budget.CONVNEXT["convnext-atto"], budget.DECODERS["default"])
    small = budget.decoder_size(budget.CONVNEXT["convnext-atto"], budget.DECODERS["head-hidden-size 64"])
    assert (
        default["params"] == 28_610_826
    )  # the trainable head count of a default `upetu-train segmentation` run
    assert default["float32_bytes"] == 4 * default["params"]
    assert 0 < small["params"] < default["params"] / 30
    base = budget.decoder_size(budget.CONVNEXT["convnext-b"], budget.DECODERS["default"])
    assert base["params"] > default["params"]  # wider stage inputs, same decoder width
