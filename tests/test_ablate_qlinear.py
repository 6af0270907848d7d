"""scripts/ablate_qlinear.py: each ablation or trial changes the one thing it names. Each runs in a subprocess,
because they patch the library for the whole process. Side tensors in float32 (`side_bits=32`), so that rescaled
scales are not re-rounded by the int8 codec. The probes build 2-bit adapters: the trials of learned magnitudes and
codebook latents act on k-bit codebook weights, which since format 5 are the 2-, 4- and 8-bit ones."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys, torch
sys.path.insert(0, {scripts!r})
from transformers import ConvNextConfig, ConvNextForImageClassification

def build():
    from upetu_hf.train.methods import apply_method
    torch.manual_seed(0)
    model = ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=3))
    torch.manual_seed(1)
    return apply_method(model, "upetu", bits=2, side_bits=32, init_weights=False).eval()

def probe(model):
    eqam = model.base_model.model.convnext.encoder.stages[1].layers[0].upetu_eqam["default"]
    latent = eqam.down.weight.latent
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))).logits
    return {{
        "r": model.peft_config["default"].r,
        "column_scale": eqam.up.column_scale is not None,
        "down_column_scale": None if eqam.down.column_scale is None else list(eqam.down.column_scale.latent.shape),
        "latent_std": latent.std().item(),
        "full_precision": [m for m in ("down", "up") if getattr(eqam, m).row_scale_unit == 1.0],
        "unit": eqam.down.row_scale_unit,
        "on_grid": bool(torch.equal(latent, eqam.down.weight.codec.quantize(latent))),
        "logits": logits.flatten().tolist(),
    }}

before = probe(build())
import ablate_qlinear
ablate_qlinear.ABLATIONS[{name!r}]()
print(json.dumps({{"before": before, "after": probe(build())}}))
"""


def run(name: str) -> tuple[dict, dict]:
    code = PROBE.format(scripts=str(ROOT / "scripts"), name=name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["before"], result["after"]


def test_no_up_column_scale_removes_only_the_column_scale():
    before, after = run("no-up-column-scale")
    assert before["column_scale"] and not after["column_scale"]
    assert after["r"] == before["r"] == 16


def test_latent_unit_keeps_the_forward_weights_and_scales_the_latents():
    before, after = run("latent-unit-10")
    assert after["latent_std"] == pytest.approx(10 * before["latent_std"], rel=1e-5)
    assert after["logits"] == pytest.approx(before["logits"], abs=1e-5)


def test_grid_init_starts_the_latents_on_their_levels():
    before, after = run("grid-init")
    assert not before["on_grid"] and after["on_grid"]
    assert after["logits"] == pytest.approx(before["logits"], abs=1e-6)


def test_r_24_widens_only_the_default_bottleneck():
    before, after = run("r-24")
    assert (before["r"], after["r"]) == (16, 24)


def test_r_64_widens_only_the_default_bottleneck():
    before, after = run("r-64")
    assert (before["r"], after["r"]) == (16, 64)


@pytest.mark.parametrize("projection", ["down", "up"])
def test_full_precision_diagnostic_unquantizes_one_projection(projection):
    before, after = run(f"{projection}-32bit")
    assert before["full_precision"] == [] and after["full_precision"] == [projection]
    assert after["r"] == 16


def test_eqam_sequential_moves_eqam_and_nothing_else():
    before, after = run("eqam-sequential")
    assert (after["r"], after["column_scale"], after["latent_std"]) == (
        before["r"],
        before["column_scale"],
        before["latent_std"],
    )
    # same weights, EQAM reads and adds to the MLP output instead of the normalised input: other logits
    assert max(abs(a - b) for a, b in zip(after["logits"], before["logits"])) > 1e-4


def test_down_column_scale_adds_one_scale_per_input_channel_at_k_bits():
    before, after = run("down-column-scale")
    assert before["down_column_scale"] is None and after["down_column_scale"] == [16]  # stage 1: C = 16
    assert after["column_scale"] and after["r"] == 16
    assert after["logits"] == pytest.approx(before["logits"], abs=1e-5)  # a multiplier of 1 at init


def test_capm_no_gate_changes_the_capm_output_only():
    before, after = run("capm-no-gate")
    assert (after["r"], after["latent_std"]) == (before["r"], before["latent_std"])
    # with beta != 0 (init_weights=False) the prompt now enters ungated: other logits
    assert max(abs(a - b) for a, b in zip(after["logits"], before["logits"])) > 1e-4


PROGRESSIVE = """
import json, sys, torch
sys.path.insert(0, {scripts!r})
import ablate_qlinear
ablate_qlinear.ABLATIONS["progressive-0.5"]()
from upetu_hf.train import loop
from upetu_hf.tuner.quantization import QuantizedParameter, make_codec

torch.manual_seed(0)
param = QuantizedParameter(torch.randn(4, 8) * 0.2, make_codec(1, unit=0.2)).train()
latent = param.latent.detach().clone()
q = param.codec.quantize(latent)
optimizer = torch.optim.SGD(param.parameters(), lr=0.0)
scheduler = loop.get_cosine_schedule_with_warmup(optimizer, 0, 10)
values = {{}}
for step in range(7):
    if step in (0, 2, 5, 6):
        values[step] = param()
    optimizer.step()
    scheduler.step()
values[2].sum().backward()
with torch.no_grad():
    evaluated = param.eval()()
def gap(a, b):
    return (a.detach() - b).abs().max().item()
print(json.dumps({{
    "start": gap(values[0], latent), "blend": gap(values[2], latent + 0.4 * (q - latent)),
    "end": gap(values[5], q), "after": gap(values[6], q), "eval": gap(evaluated, q),
    "q_vs_latent": gap(q, latent), "grad": param.latent.grad.tolist(),
}}))
"""


def test_progressive_blends_the_k_bit_weights_in_training_only():
    code = PROGRESSIVE.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["q_vs_latent"] > 0.05  # the two ends differ, so the checks below can fail
    assert result["start"] == 0.0  # step 0 of 10, F = 0.5: the latent itself
    assert result["blend"] < 1e-6  # step 2: 40 % of the way to q(latent)
    assert result["end"] == result["after"] == 0.0  # from step F * total = 5 on: q(latent), exactly
    assert result["eval"] == 0.0  # evaluation is always the k-bit model
    assert result["grad"] == [[1.0] * 8] * 4  # the straight-through gradient stays 1 along the blend


DISTILL = """
import json, sys, torch
sys.path.insert(0, {scripts!r})
import benchmark_accuracy
from upetu_hf.train import TrainingArguments, inference, loop
calls = []
benchmark_accuracy.train = lambda args: calls.append((args.bits, args.output_dir)) or {{"ok": True}}
inference.load_trained_model = lambda folder: (torch.nn.Identity(), None)
import ablate_qlinear
ablate_qlinear.ABLATIONS["distill"]()
common = dict(task="classification", model="m", data="d", method="upetu", lr=1e-2)
benchmark_accuracy.train(TrainingArguments(output_dir="/tmp/x/run", bits=1, **common))
benchmark_accuracy.train(TrainingArguments(output_dir="/tmp/x/other", bits=4, **common))
print(json.dumps({{"calls": calls, "start_patched": loop._Run.start.__func__.__name__}}))
"""


def test_distill_trains_a_32_bit_teacher_first_for_k_bit_runs_only():
    code = DISTILL.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["calls"] == [[32, "/tmp/x/run-teacher"], [1, "/tmp/x/run"], [4, "/tmp/x/other"]]
    assert result["start_patched"] == "start_with_teacher"


RECORDED = """
import json, sys
sys.path.insert(0, {scripts!r})
import ablate_qlinear, benchmark_accuracy
seen = {{}}
benchmark_accuracy.main = lambda argv, program: seen.update(argv=argv, program=program)
ablate_qlinear.main(["r-64", "--", "--tasks", "classification", "--quick"])
print(json.dumps(seen))
"""


def test_the_results_record_the_trial_command_not_the_plain_benchmark():
    code = RECORDED.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {
        "argv": ["--tasks", "classification", "--quick"],
        "program": "python scripts/ablate_qlinear.py r-64 --",
    }


KBIT_PARAMETERIZATION = """
import json, sys, torch
sys.path.insert(0, {scripts!r})
import ablate_qlinear
ablate_qlinear.ABLATIONS["kbit-parameterization"]()
from transformers import ConvNextConfig, ConvNextForImageClassification
from upetu_hf.train import methods
from upetu_hf.train.methods import apply_method
from upetu_hf.tuner.quantization import FloatCodec

model = apply_method(ConvNextForImageClassification(ConvNextConfig(
    hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=3)), "upetu", bits=32)
eqam = model.base_model.model.convnext.encoder.stages[1].layers[0].upetu_eqam["default"]
print(json.dumps({{
    "float": [isinstance(getattr(eqam, m).weight.codec, FloatCodec) for m in ("down", "up")],
    "row_scale": eqam.down.scale is not None,
    "column_scale": eqam.up.column_scale is not None,
    "unit": eqam.up.row_scale_unit,
    "no_decay": sorted(methods.kbit_latents(model)) == sorted(
        id(getattr(eqam_, m).weight.latent) for eqam_ in model.modules() if type(eqam_).__name__ == "EQAM"
        for m in ("down", "up")),
}}))
"""


def test_kbit_parameterization_builds_unquantized_weights_with_the_1_bit_structure():
    code = KBIT_PARAMETERIZATION.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["float"] == [True, True] and seen["row_scale"] and seen["column_scale"]
    assert seen["unit"] > 1.0  # the 1-bit units: s in units of the weight's init gain
    assert seen["no_decay"]


PLAIN_SCALE = """
import json, math, sys, torch
sys.path.insert(0, {scripts!r})
from upetu_hf.tuner.config import UPetuConfig
from upetu_hf.tuner.layer import EQAM

def deltas():
    out = {{}}
    for bits in (1, 4, 32):
        torch.manual_seed(1)
        eqam = EQAM(40, UPetuConfig(bits=bits, side_bits=32, init_weights=False)).eval()
        with torch.no_grad():
            out[bits] = eqam(torch.randn(2, 3, 3, 40, generator=torch.Generator().manual_seed(2)))
    return out

before = deltas()
import ablate_qlinear
ablate_qlinear.ABLATIONS["plain-scale"]()
after = deltas()
gain_up = 1 / math.sqrt(3 * 16)
print(json.dumps({{bits: (after[bits] - gain_up * before[bits]).abs().max().item() if bits < 32
                   else (after[bits] - before[bits]).abs().max().item() for bits in before}}))
"""


def test_plain_scale_drops_the_weight_units_of_s_at_k_bits_only():
    code = PLAIN_SCALE.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # EQAM's delta is linear in s: at k bits it shrinks by exactly gain_up (s no longer divided by it),
    # at 32 bits (where s was already a plain multiplier) it is unchanged
    assert seen["1"] < 1e-6 and seen["4"] < 1e-6
    assert seen["32"] == 0.0


HIDDEN_BIAS = """
import json, sys, torch
sys.path.insert(0, {scripts!r})
from upetu_hf.tuner.config import UPetuConfig
from upetu_hf.tuner.layer import EQAM

def deltas(bump=False):
    out = {{}}
    for bits in (1, 32):
        torch.manual_seed(1)
        eqam = EQAM(40, UPetuConfig(bits=bits, side_bits=32, init_weights=False)).eval()
        bias = getattr(eqam, "hidden_bias", None)
        with torch.no_grad():
            if bump and bias is not None:
                bias.latent.fill_(0.5)
            u = torch.randn(2, 3, 3, 40, generator=torch.Generator().manual_seed(2))
            out[bits] = (eqam(u), None if bias is None else list(bias.latent.shape))
    return out

before = deltas()
import ablate_qlinear
ablate_qlinear.ABLATIONS["hidden-bias"]()
after, bumped = deltas(), deltas(bump=True)
print(json.dumps({{bits: {{
    "shape": after[bits][1],
    "at_init": (after[bits][0] - before[bits][0]).abs().max().item(),
    "bumped": (bumped[bits][0] - before[bits][0]).abs().max().item(),
}} for bits in before}}))
"""


def test_hidden_bias_adds_a_zero_initialised_bias_at_k_bits_only():
    code = HIDDEN_BIAS.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["1"]["shape"] == [16] and seen["32"]["shape"] is None  # r = 16 hidden units, k bits only
    assert seen["1"]["at_init"] == 0.0 and seen["32"]["at_init"] == 0.0  # zero bias: the design's EQAM
    assert seen["1"]["bumped"] > 1e-3 and seen["32"]["bumped"] == 0.0  # the bias enters the 1-bit forward


def test_fast_magnitudes_keeps_the_forward_weights_and_speeds_up_the_scales():
    before, after = run("fast-magnitudes-3")
    assert after["latent_std"] == pytest.approx(before["latent_std"])  # the codes' latents are untouched
    assert after["logits"] == pytest.approx(before["logits"], abs=1e-5)  # every multiplier is still 1 at init
    assert after["unit"] == pytest.approx(3 * before["unit"])  # so each Adam step moves it 3 times as far


LATENT_CLIP = """
import json, math, sys, torch
sys.path.insert(0, {scripts!r})
import ablate_qlinear
ablate_qlinear.ABLATIONS["latent-clip-2"]()
from upetu_hf.tuner.quantization import QLinearWeight

torch.manual_seed(0)
weight = QLinearWeight(8, 12, 2, "lloyd", 32, learn_scale=True)
gain = 1 / math.sqrt(3 * 12)
with torch.no_grad():
    weight.weight.latent.mul_(10)  # drifted far past the outer thresholds
codes = weight.weight.codec.codes(weight.weight.latent).clone()
weight.eval()
eval_max = (weight.weight.latent.abs().max() / gain).item()
weight()  # an eval forward does not clamp
after_eval = (weight.weight.latent.abs().max() / gain).item()
weight.train()
forward = weight()
print(json.dumps({{
    "eval": [eval_max, after_eval],
    "train_max": (weight.weight.latent.abs().max() / gain).item(),
    "codes_kept": bool(torch.equal(weight.weight.codec.codes(weight.weight.latent), codes)),
}}))
"""


def test_latent_clip_boxes_the_latents_in_training_and_keeps_every_code():
    code = LATENT_CLIP.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["eval"][0] > 10 and seen["eval"][1] == seen["eval"][0]  # evaluation leaves the latents alone
    assert seen["train_max"] == pytest.approx(2.0, rel=1e-5)  # a training forward clamps them to +-2 units
    assert seen["codes_kept"]


COMBINED = """
import json, math, sys, torch
sys.path.insert(0, {scripts!r})
from upetu_hf.tuner.config import UPetuConfig
from upetu_hf.tuner.layer import EQAM

def delta(bits):
    torch.manual_seed(1)
    eqam = EQAM(40, UPetuConfig(bits=bits, side_bits=32, init_weights=False)).eval()
    with torch.no_grad():
        return eqam(torch.randn(2, 3, 3, 40, generator=torch.Generator().manual_seed(2))), eqam

before, _ = delta(32)
import ablate_qlinear, benchmark_accuracy
seen = {{}}
benchmark_accuracy.main = lambda argv, program: seen.update(program=program)
ablate_qlinear.main([{names!r}, "--", "--quick"])
after, eqam = delta(32)
seen.update(ratio=(after.abs().sum() / before.abs().sum()).item(), unit=eqam.up.row_scale_unit,
            column_scale=eqam.up.column_scale is not None)
print(json.dumps(seen))
"""


def combined(names: str) -> dict:
    code = COMBINED.format(scripts=str(ROOT / "scripts"), names=names)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_s_weight_units_speeds_up_s_at_32_bits_only():
    seen = combined("s-weight-units")
    assert seen["ratio"] == pytest.approx(math.sqrt(3 * 16), rel=1e-5)  # s / gain_up, gain_up = 1 / sqrt(3 r)
    assert not seen["column_scale"]  # plain 32-bit weights otherwise


def test_names_joined_by_plus_apply_every_change_and_are_recorded():
    seen = combined("kbit-parameterization+plain-scale")
    assert seen["program"] == "python scripts/ablate_qlinear.py kbit-parameterization+plain-scale --"
    assert seen["column_scale"] and seen["unit"] > 1.0  # the 1-bit structure of kbit-parameterization...
    # ...with a plain s: EQAM's delta no longer has the 1 / gain_up factor the structure alone gives it
    alone = combined("kbit-parameterization")
    assert seen["ratio"] == pytest.approx(alone["ratio"] / math.sqrt(3 * 16), rel=1e-4)
    with pytest.raises(subprocess.CalledProcessError):
        combined("kbit-parameterization+no-such-trial")


DERIVED = """
import json, sys, torch
sys.path.insert(0, {scripts!r})
import ablate_qlinear
ablate_qlinear.ABLATIONS["derived-magnitudes"]()
from upetu_hf.tuner import layer
from upetu_hf.tuner.quantization import FloatCodec

torch.manual_seed(0)
down = layer.QLinearWeight(8, 12, 1, "lloyd", 8, learn_scale=True)
up = layer.QLinearWeight(12, 8, 1, "lloyd", 8, learn_scale=False, learn_column_scale=True)
plain = layer.QLinearWeight(8, 12, 32, "lloyd", 8, learn_scale=True)
w, u, latent = down(), up(), down.weight.latent
print(json.dumps({{
    "row_magnitudes": (w.abs() - latent.abs().mean(1, keepdim=True)).abs().max().item(),
    "signs": bool(torch.equal(torch.sign(w), torch.sign(latent))),
    "column_magnitudes": (u.abs() - up.weight.latent.abs().mean(0, keepdim=True)).abs().max().item(),
    "learned_scales": [m.scale is not None or m.column_scale is not None for m in (down, up)],
    "stored_whole": isinstance(down.weight.codec, FloatCodec),
    "plain_32": bool(torch.equal(plain(), plain.weight.latent)),
}}))
"""


def test_derived_magnitudes_take_each_rows_mean_magnitude_from_the_latents():
    code = DERIVED.format(scripts=str(ROOT / "scripts"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # 1 bit: sign(L) * mean |L| over each row of W_down and each column of W_up, nothing learned besides L
    assert seen["row_magnitudes"] < 1e-6 and seen["column_magnitudes"] < 1e-6 and seen["signs"]
    assert seen["learned_scales"] == [False, False] and seen["stored_whole"] and seen["plain_32"]
