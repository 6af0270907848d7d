"""scripts/sizes.py: the UperNet decoder sizes quoted in the docs come from the decoder transformers builds, and the
checkpoint sizes from a real run's `checkpoints/step_1` (full fine-tuning keeps the whole model, UPetu what trains)."""

from __future__ import annotations

from conftest import requires_shared, tiny_config
from test_benchmark_accuracy import load_script
from transformers import ConvNextForImageClassification


def test_upernet_decoder_sizes():
    sizes = load_script("sizes")
    default = sizes.decoder_size(sizes.CONVNEXT["convnext-atto"], sizes.DECODERS["default"])
    small = sizes.decoder_size(sizes.CONVNEXT["convnext-atto"], sizes.DECODERS["head-hidden-size 64"])
    assert (
        default["params"] == 28_610_826
    )  # the trainable head count of a default `upetu-train segmentation` run
    assert default["float32_bytes"] == 4 * default["params"]
    assert 0 < small["params"] < default["params"] / 30
    base = sizes.decoder_size(sizes.CONVNEXT["convnext-b"], sizes.DECODERS["default"])
    assert base["params"] > default["params"]  # wider stage inputs, same decoder width


def test_full_fine_tuning_keeps_whole_checkpoints_and_upetu_stays_small(tmp_path):
    sizes = load_script("sizes")
    model = ConvNextForImageClassification(tiny_config(num_labels=sizes.NUM_LABELS))
    model.save_pretrained(tmp_path / "model")
    whole = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    data = load_script("_common").class_folder(tmp_path / "data", sizes.NUM_LABELS, 2)
    full, upetu = (sizes.checkpoint_bytes(tmp_path / "model", data, method) for method in ("full", "upetu"))
    assert "frozen.json" not in full and "frozen.json" in upetu
    assert full["model.safetensors"] > whole > 2 * upetu["model.safetensors"]
    assert full["total"] == sum(v for k, v in full.items() if k != "total")


@requires_shared
def test_a_upetu_checkpoint_of_the_shared_atto_model_is_at_most_2_mb():
    sizes = load_script("sizes")
    (row,) = sizes.checkpoint_sizes(["atto"], ["upetu"])
    assert row["model"] == "atto" and "frozen.json" in row["files"] and row["bytes"] <= 2_000_000
