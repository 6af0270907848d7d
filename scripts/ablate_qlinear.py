"""Ablations and trials of the Q-Linear and EQAM design (issues 10 and 13): change one thing, then run the accuracy
benchmark.

Each one changes exactly one thing of the library's default UPetu, in this process only. Ablations undo a
remedy of the design:

- `decay`: weight decay on the k-bit latents (the default leaves them out, `kbit_latents`);
- `clip`: a clipped straight-through estimator (no gradient where |latent| > bound; the default passes it);
- `fixed-down-scale`: `W_down` keeps the fixed init gain instead of a learned per-row scale (LSQ / XNOR-Net alpha);
- `no-up-column-scale`: `W_up` without its per-column scale at 1 and 2 bits (format 3).

Trials add a remedy:

- `latent-unit-K` (K = 3, 10, 30): k-bit latents in K times the init std (same forward weights; each Adam step
  flips K times fewer codes);
- `grid-init`: k-bit latents start on their codebook levels;
- `capm-no-gate`: CAPM without its context gate, `F + beta * resize(P)` (a CAPM variant of issue 13: does the
  context-aware gate `sigmoid(DWConv3x3(F))` earn its 9 C parameters per stage?);
- `down-column-scale`: at 1 and 2 bits `W_down` gets a learned per-column (per input channel) scale too, so an
  EQAM can weigh the block's channels (a 1-bit row gives every channel the same magnitude; C numbers per block);
- `r-24`: a bottleneck of 24 instead of 16 (more parameters: an option at 1 bit, never the default);
- `r-64`: a bottleneck of 64 (about 4x the parameters; with `--methods upetu`, a point on the capacity curve
  between `upetu-small` (r = 4), the default (r = 16) and full fine-tuning, for issue 13's "why");
- `down-32bit`, `up-32bit`: diagnostics, not remedies. At k bits one of EQAM's two Q-Linear weights (`W_down` or
  `W_up`) stays unquantized, so a 1-bit run shows which of the two carries the 1-bit loss;
- `kbit-parameterization`: a control, not a remedy. At 32 bits EQAM's two weights are built as at 1 bit (latents
  from N(0, gain^2) in weight units, `W_down`'s learned row scale, `W_up`'s learned column scale, no weight decay on
  the latents) but never quantized, so a `upetu-32bit` run separates the cost of the 1-bit parameterization from
  the cost of the 1-bit codes;
- `plain-scale`: at k bits EQAM's per-channel scale `s` multiplies `W_up` directly, as at 32 bits, instead of in
  the units of `W_up`'s entries (`s / gain_up`). At k bits a step of `s` then moves the adapter's output at the
  32-bit pace; in the design it moves it `0.8 / (0.87 gain_up)` (6.4x at r = 16) times faster;
- `hidden-bias`: at k bits EQAM learns a bias on its r hidden units, `act(W_down @ u + b)` (ReActNet's learned shift
  ahead of a binary layer's activation): a 1-bit row's offset is otherwise tied to its sign pattern. `b` (r,) starts
  at 0 and is a side tensor (r numbers per block; no weight decay, as every 1-D parameter);
- `fast-magnitudes-3`: at k bits every learned magnitude (`W_down`'s row scale, `W_up`'s column scale, EQAM's `s`)
  in a third of the design's unit, so Adam moves them 3 times faster while the latents (the codes) keep their pace
  (the converse of `plain-scale`, whose slower `s` fitted the training data less well);
- `latent-clip-2`: BinaryConnect's box on the latent weights: before every training forward pass each k-bit latent
  tensor is clamped to +-2 units (its init std; the 1-bit levels sit at +-0.80 units). Without it a latent that
  received consistent gradients drifts tens of units past its threshold (Adam moves it about lr per step, 20-50
  units over a run at lr 1e-2) and its code can no longer flip back; with it every code stays a few steps from
  flipping. The clamp keeps every code (the box is beyond the last threshold), so evaluation is unchanged;
- `s-weight-units`: a diagnostic, not a remedy. At 32 bits EQAM's `s` in the units of `W_up`'s entries, as at k
  bits (`up = W_up * s / gain_up`): with plain 32-bit weights, does the k-bit pace of `s` alone cost accuracy?
- `derived-magnitudes`: at k bits the magnitudes are computed from the latent weights instead of learned (XNOR-Net's
  alpha, with its gradient): `W = q(L) * mean|L| / mean|q(L)|`, means over each row of `W_down` and each column of
  `W_up` (at 1 bit `sign(L) * mean|L|`). The latents are plain 32-bit weights (Kaiming-uniform init, weight decay,
  stored whole, so a reload is exact), so they learn with the 32-bit dynamics; no learned row or column scales.
  The `kbit-parameterization` control tied the 1-bit loss to the learned magnitudes, not to the codes;
- `eqam-sequential`: EQAM after the block's MLP instead of parallel to it (issue 13's "where EQAM sits"): it reads
  the MLP output `f = pwconv2(...)` and adds its delta there, `f + EQAM(f)`, ahead of the layer scale (the
  sequential adapter of Houlsby et al. / AdaptFormer; same parameters).
- `progressive-F` (F = 0.25, 0.5): gradual quantization. Over the first fraction F of the optimizer steps the
  k-bit weights phase in: the training forward uses `(1 - a) * latent + a * q(latent)`, `a = step / (F * total)`
  (then `q(latent)` alone); the straight-through gradient to the latent stays 1. Every evaluation uses
  `q(latent)`, so validation scores and the best-epoch choice are the k-bit model's, and the saved adapter is the
  usual k-bit one. (The latent entries start from N(0, gain^2), whose mean magnitude is the 1-bit level 0.80
  gain, so the two ends of the blend have the same scale.)
- `distill`: knowledge distillation from a 32-bit adapter (Hinton et al.; the usual remedy of binary networks).
  Every 1- or 2-bit UPetu run first trains the same configuration at 32 bits (same data, seed and learning rate;
  folder `<run>-teacher`, deleted afterwards), then trains the k-bit adapter on
  `(1 - a) * CE + a * T^2 * KL(p_teacher(T) || p_student(T))`, `a = 0.5`, `T = 2`, the teacher's logits from an
  eval-mode forward of the same batch. Evaluation and the saved adapter are as usual. Twice the training cost.

(The `up-column-scale` trial of results/qlinear_ablations/ ran at commit a14dd3b, on format 3; it is now the
design. `derived-magnitudes` at 1 bit became format 5: since then the library's 1-bit weights are `SignCodec`
weights without learned magnitudes, so the trials that change learned magnitudes or codebook latents act at 2 to 8
bits only, and their 1-bit results in results/qlinear_ablations/ are format 4's.)

Several names joined by `+` apply each change in turn (e.g. `kbit-parameterization+plain-scale`). Everything
after `--` goes to `scripts/benchmark_accuracy.py` unchanged, so the protocol (splits, epochs, seeds,
learning rates) is the benchmark's. Example, the 1-bit remedies on validation:

```bash
python scripts/ablate_qlinear.py clip -- --tasks classification --methods upetu-1bit --lr-factors 1 \
    --seeds 0,1,2 --epochs 12 --threads 1 --ucm /tmp/bench/ucmerced-112 --output-dir /tmp/bench/abl-clip
```

Compare the runs' `validation_score` with the default design's runs of the same seeds (never the test score).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _decay() -> None:
    from upetu_hf.train import methods

    methods.kbit_latents = lambda model: set()


def _clip() -> None:
    from upetu_hf.tuner.quantization import KBitCodec

    original = KBitCodec.__init__

    def init(self, bits: int, codebook: str = "lloyd", unit: float = 1.0, clip: bool = False) -> None:
        original(self, bits, codebook, unit, clip=True)

    KBitCodec.__init__ = init


def _fixed_down_scale() -> None:
    from upetu_hf.tuner import layer

    original = layer.QLinearWeight

    def qlinear(*args, learn_scale: bool, **kwargs):
        return original(*args, learn_scale=False, **kwargs)

    layer.QLinearWeight = qlinear


def _latent_unit(factor: float) -> Callable[[], None]:
    """k-bit latents (init and codebook) in units of `factor` times the weight's init std, row scales to match:
    the forward weights are unchanged, Adam's steps (about lr per entry) flip `factor` times fewer codes."""

    def patch() -> None:
        import math

        import torch

        from upetu_hf.tuner.quantization import QLinearWeight, make_codec

        original = QLinearWeight.__init__

        def init(self, out_features, in_features, bits, codebook, side_bits, **scales) -> None:
            original(self, out_features, in_features, bits, codebook, side_bits, **scales)
            if bits == 32:
                return
            unit = factor / math.sqrt(3.0 * in_features)
            with torch.no_grad():
                self.weight.latent.mul_(factor)
                if self.column_scale is not None:  # its multiplier, column_scale * row_scale_unit, stays 1
                    self.column_scale.latent.mul_(factor)
            self.weight.codec = make_codec(bits, codebook, unit=unit)
            self.row_scale_unit = 1.0 / unit

        QLinearWeight.__init__ = init

    return patch


def _grid_init() -> None:
    """k-bit latents start on their codebook levels (the quantized value of the usual random init): every entry
    starts half a gap from a threshold, none so close that the first noisy steps flip it."""
    import torch

    from upetu_hf.tuner.quantization import QLinearWeight

    original = QLinearWeight.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        with torch.no_grad():
            self.weight.latent.copy_(self.weight.codec.quantize(self.weight.latent))

    QLinearWeight.__init__ = init


def _no_up_column_scale() -> None:
    """Format 3's `W_up` at 1 and 2 bits: no per-column scale (the `up-column-scale` trial of
    results/qlinear_ablations/ added it to format 3 and was adopted as format 4)."""
    from upetu_hf.tuner import layer

    original = layer.QLinearWeight

    def qlinear(*args, learn_column_scale: bool = False, **kwargs):
        return original(*args, learn_column_scale=False, **kwargs)

    layer.QLinearWeight = qlinear


def _capm_no_gate() -> None:
    """CAPM's prompt added without the context gate: `F' = F + beta * resize(P)` (the gate's weights stay unused)."""
    import torch.nn.functional as F

    from upetu_hf.tuner.layer import CAPM

    def forward(self, features):
        prompt = self.prompt()
        prompt = F.interpolate(
            prompt.unsqueeze(0), size=features.shape[-2:], mode="bilinear", align_corners=False
        )
        beta = self.beta().view(1, features.shape[1], 1, 1)
        return features + (beta * prompt).to(features.dtype)

    CAPM.forward = forward


def _down_column_scale() -> None:
    """`W_down` (the one Q-Linear weight with a row scale) also learns a column scale at 1 and 2 bits."""
    from upetu_hf.tuner import layer

    original = layer.QLinearWeight

    def qlinear(out_features, in_features, bits, *args, learn_scale: bool, learn_column_scale: bool = False):
        column = learn_column_scale or (learn_scale and bits <= 2)
        return original(
            out_features, in_features, bits, *args, learn_scale=learn_scale, learn_column_scale=column
        )

    layer.QLinearWeight = qlinear


def _rank(r: int) -> Callable[[], None]:
    """UPetu adapters with bottleneck width `r` instead of the default (issue 13's "a larger r at 1 bit")."""

    def patch() -> None:
        from upetu_hf.train import methods

        original = methods.peft_config

        def config(method: str, heads=None, **options):
            if method == "upetu" and options.get("r") is None:  # the default width (explicit ones stay)
                options["r"] = r
            return original(method, heads, **options)

        methods.peft_config = config

    return patch


def _full_precision(projection: str) -> Callable[[], None]:
    """EQAM's `projection` ("down" or "up") at 32 bits whatever the adapter's bit width (the other stays k-bit)."""

    def patch() -> None:
        from upetu_hf.tuner import layer

        original = layer.QLinearWeight

        def qlinear(out_features, in_features, bits, *args, learn_scale: bool, **kwargs):
            # EQAM builds `down` with a learned row scale and `up` without one
            if learn_scale == (projection == "down"):
                bits = 32
            return original(out_features, in_features, bits, *args, learn_scale=learn_scale, **kwargs)

        layer.QLinearWeight = qlinear

    return patch


def _kbit_parameterization() -> None:
    """32-bit EQAM weights with the 1-bit design's parameterization, unquantized (see the module docstring)."""
    from upetu_hf.train import methods
    from upetu_hf.tuner import layer
    from upetu_hf.tuner.quantization import QLinearWeight, make_codec

    def qlinear(
        out_features, in_features, bits, codebook, side_bits, *, learn_scale, learn_column_scale=False
    ):
        if bits != 32:
            return QLinearWeight(out_features, in_features, bits, codebook, side_bits, learn_scale=learn_scale,
                                 learn_column_scale=learn_column_scale)  # fmt: skip
        # format 4's 1-bit structure, which is the 2-bit one (latents from N(0, gain^2), `down`'s row scale, `up`'s
        # column scale), then the float codec: no quantization
        weight = QLinearWeight(out_features, in_features, 2, codebook, side_bits, learn_scale=learn_scale,
                               learn_column_scale=not learn_scale)  # fmt: skip
        weight.weight.codec = make_codec(32)
        return weight

    layer.QLinearWeight = qlinear
    # as the k-bit latents: no weight decay on either weight's latent
    methods.kbit_latents = lambda model: {
        id(m.weight.latent) for m in model.modules() if isinstance(m, QLinearWeight)
    }


def _eqam_delta(eqam, u, up, bias=None):
    """EQAM's forward pass (`upetu_hf.tuner.layer.EQAM.forward`) with a given (C, r) up weight and an optional
    bias on the r hidden units: `up @ act(DWConv?(W_down @ u + bias))`, u (N, H, W, C) -> (N, H, W, C)."""
    import torch.nn.functional as F

    down = eqam.down()  # (r, C)
    hidden = F.linear(u.to(down.dtype), down, bias)  # (N, H, W, r)
    if eqam.conv is not None:
        kernel = eqam.conv()  # (r, 1, k, k)
        hidden = F.conv2d(
            hidden.permute(0, 3, 1, 2), kernel, padding=kernel.shape[-1] // 2, groups=kernel.shape[0]
        ).permute(0, 2, 3, 1)
    return F.linear(eqam.act(hidden), up).to(u.dtype)


def _plain_scale() -> None:
    """EQAM's `s` as a plain multiplier of the (C, r) up weight at every bit width (see the module docstring)."""
    from upetu_hf.tuner.layer import EQAM

    def forward(self, u):
        return _eqam_delta(self, u, self.up() * self.scale().unsqueeze(1))  # no `row_scale_unit` on s

    EQAM.forward = forward


def _hidden_bias() -> None:
    """A learned bias on EQAM's hidden units at k bits (see the module docstring)."""
    import torch

    from upetu_hf.tuner.layer import EQAM
    from upetu_hf.tuner.quantization import QuantizedParameter, make_side_codec

    original = EQAM.__init__

    def init(self, channels, config) -> None:
        original(self, channels, config)
        self.hidden_bias = None
        if config.bits != 32:
            codec = make_side_codec(config.effective_side_bits)
            self.hidden_bias = QuantizedParameter(torch.zeros(config.r), codec)

    def forward(self, u):
        up = self.up() * (self.scale() * self.up.row_scale_unit).unsqueeze(1)  # (C, r), as in the design
        return _eqam_delta(self, u, up, None if self.hidden_bias is None else self.hidden_bias())

    EQAM.__init__ = init
    EQAM.forward = forward


def _fast_magnitudes(factor: float) -> Callable[[], None]:
    """k-bit magnitudes (row, column and EQAM scales) learned `factor` times faster (see the module docstring)."""

    def patch() -> None:
        import torch

        from upetu_hf.tuner.layer import EQAM

        original = EQAM.__init__

        def init(self, channels, config) -> None:
            original(self, channels, config)
            if config.bits == 32:  # plain weights, no magnitudes
                return
            # every multiplier `scale * row_scale_unit` keeps its value, so the forward pass is unchanged
            with torch.no_grad():
                for weight in (self.down, self.up):
                    weight.row_scale_unit *= factor
                    for scale in (weight.scale, weight.column_scale):
                        if scale is not None:
                            scale.latent.div_(factor)
                self.scale.latent.div_(factor)  # EQAM's s, in `up`'s unit

        EQAM.__init__ = init

    return patch


def _latent_clip(bound: float) -> Callable[[], None]:
    """k-bit latents clamped to +-`bound` units before every training forward pass (see the module docstring)."""

    def patch() -> None:
        import torch

        from upetu_hf.tuner.quantization import KBitCodec, QuantizedParameter, codebook_levels

        original = QuantizedParameter.forward

        def forward(self):
            codec = self.codec
            if isinstance(codec, KBitCodec) and self.training and torch.is_grad_enabled():
                unit = float(codec.levels[-1]) / codebook_levels(codec.bits, codec.codebook)[-1]
                limit = bound * unit
                assert limit > float(codec.thresholds[-1]), "the box must keep every code"
                with torch.no_grad():
                    self.latent.clamp_(-limit, limit)
            return original(self)

        QuantizedParameter.forward = forward

    return patch


def _s_weight_units() -> None:
    """At 32 bits, EQAM's `s` divided by `W_up`'s init gain, as at k bits (see the module docstring)."""
    import math

    from upetu_hf.tuner.layer import EQAM

    original = EQAM.__init__

    def init(self, channels, config) -> None:
        original(self, channels, config)
        if config.bits == 32:  # a 32-bit `up` has no scales of its own: its unit only enters through `s`
            self.up.row_scale_unit = math.sqrt(3.0 * config.r)

    EQAM.__init__ = init


def _derived_magnitudes() -> None:
    """k-bit Q-Linear weights with magnitudes derived from 32-bit latents (see the module docstring)."""
    import math

    import torch

    from upetu_hf.tuner import layer
    from upetu_hf.tuner.quantization import QLinearWeight, _StraightThrough, make_codec

    class DerivedMagnitudes(QLinearWeight):
        def __init__(self, out_features, in_features, bits, codebook, side_bits, *, learn_scale, **_) -> None:
            # a plain 32-bit weight (Kaiming-uniform, weight decay, stored whole), quantized in `forward`
            super().__init__(out_features, in_features, 32, codebook, side_bits, learn_scale=False)
            self.axis = self.quantizer = None
            if bits != 32:
                gain = 1.0 / math.sqrt(3.0 * in_features)
                self.quantizer = make_codec(bits, codebook, unit=gain)
                self.axis = 1 if learn_scale else 0  # `W_down`: per row; `W_up`: per column
                self.row_scale_unit = 1.0 / gain  # EQAM's s in `W_up`'s weight units, as at k bits

        def forward(self) -> torch.Tensor:
            latent = self.weight()
            if self.quantizer is None:
                return latent
            if torch.is_grad_enabled() and latent.requires_grad:
                codes = _StraightThrough.apply(latent, self.quantizer)
            else:
                codes = self.quantizer.quantize(latent).to(latent.dtype)
            magnitude = latent.abs().mean(dim=self.axis, keepdim=True)
            return codes * (magnitude / codes.detach().abs().mean(dim=self.axis, keepdim=True))

    layer.QLinearWeight = DerivedMagnitudes


def _eqam_sequential() -> None:
    """EQAM in series after the block's MLP: `f = pwconv2(act(pwconv1(LN(dwconv(x)))))` (V2: with GRN),
    `f = f + EQAM(f)`, then layer scale, drop path and the residual; CAPM unchanged."""
    from upetu_hf.tuner.layer import UPetuLayer

    original = UPetuLayer.forward

    def forward(self, hidden_states):
        base = self.base_layer
        eqams = [self.upetu_eqam[name] for name in self.active_adapters if name in self.upetu_eqam]
        if self.disable_adapters or not eqams or self.upetu_norm:
            return original(self, hidden_states)
        features = base.dwconv(hidden_states).permute(0, 2, 3, 1)  # (N, H, W, C)
        features = base.act(base.pwconv1(base.layernorm(features)))
        if getattr(base, "grn", None) is not None:
            features = base.grn(features)
        features = base.pwconv2(features)
        for eqam in eqams:
            features = features + eqam(features)
        if getattr(base, "layer_scale_parameter", None) is not None:
            features = base.layer_scale_parameter * features
        output = hidden_states + base.drop_path(features.permute(0, 3, 1, 2))
        for name in self.active_adapters:
            if name in self.upetu_capm:
                output = self.upetu_capm[name](output)
        return output

    UPetuLayer.forward = forward


def _progressive(fraction: float) -> Callable[[], None]:
    """k-bit weights phase in over the first `fraction` of the optimizer steps (see the module docstring)."""

    def patch() -> None:
        import torch

        from upetu_hf.train import loop
        from upetu_hf.tuner.quantization import KBitCodec, QuantizedParameter

        progress: dict = {"scheduler": None, "total": 1}
        schedule = loop.get_cosine_schedule_with_warmup

        def recorded_schedule(optimizer, warmup_steps: int, total_steps: int):
            scheduler = schedule(optimizer, warmup_steps, total_steps)
            progress.update(scheduler=scheduler, total=max(total_steps, 1))
            return scheduler

        loop.get_cosine_schedule_with_warmup = recorded_schedule
        original = QuantizedParameter.forward

        def forward(self):
            value = original(self)
            scheduler = progress["scheduler"]
            training = self.training and torch.is_grad_enabled() and self.latent.requires_grad
            if scheduler is None or not training or not isinstance(self.codec, KBitCodec):
                return value
            blend = min(1.0, scheduler.last_epoch / (fraction * progress["total"]))
            return value if blend >= 1.0 else self.latent + blend * (value - self.latent)

        QuantizedParameter.forward = forward

    return patch


def _distill(weight: float = 0.5, temperature: float = 2.0) -> Callable[[], None]:
    """k-bit UPetu runs learn from a 32-bit teacher trained first on the same run (see the module docstring)."""

    def patch() -> None:
        import dataclasses
        import shutil

        import benchmark_accuracy
        import torch
        import torch.nn.functional as F

        from upetu_hf.train import loop
        from upetu_hf.train.inference import load_trained_model

        teacher: dict = {}
        train = benchmark_accuracy.train

        def train_with_teacher(args):
            if args.method != "upetu" or args.bits not in (1, 2):
                return train(args)
            folder = f"{args.output_dir}-teacher"
            train(dataclasses.replace(args, bits=32, output_dir=folder))
            teacher["model"], _ = load_trained_model(folder)
            try:
                return train(args)
            finally:
                teacher.clear()
                shutil.rmtree(folder, ignore_errors=True)

        benchmark_accuracy.train = train_with_teacher
        start = loop._Run.start.__func__

        def start_with_teacher(cls, args, spec, accelerator, log):
            run = start(cls, args, spec, accelerator, log)
            if "model" not in teacher:
                return run
            model = teacher["model"].to(accelerator.device)

            def distill(module, inputs, kwargs, output):
                if not module.training or output.loss is None:
                    return output
                with torch.no_grad():
                    target = model(pixel_values=kwargs["pixel_values"]).logits.float()
                kl = F.kl_div(
                    F.log_softmax(output.logits.float() / temperature, dim=-1),
                    F.log_softmax(target / temperature, dim=-1),
                    log_target=True,
                    reduction="batchmean",
                )
                output.loss = (1 - weight) * output.loss + weight * temperature**2 * kl
                return output

            run.trainables.model.register_forward_hook(distill, with_kwargs=True)
            return run

        loop._Run.start = classmethod(start_with_teacher)

    return patch


ABLATIONS: dict[str, Callable[[], None]] = {
    "distill": _distill(),
    **{f"progressive-{f:g}": _progressive(f) for f in (0.25, 0.5)},
    "eqam-sequential": _eqam_sequential,
    "plain-scale": _plain_scale,
    "hidden-bias": _hidden_bias,
    "fast-magnitudes-3": _fast_magnitudes(3.0),
    "latent-clip-2": _latent_clip(2.0),
    "s-weight-units": _s_weight_units,
    "derived-magnitudes": _derived_magnitudes,
    "down-column-scale": _down_column_scale,
    "capm-no-gate": _capm_no_gate,
    "r-24": _rank(24),
    "r-64": _rank(64),
    "down-32bit": _full_precision("down"),
    "kbit-parameterization": _kbit_parameterization,
    "up-32bit": _full_precision("up"),
    "no-up-column-scale": _no_up_column_scale,
    "grid-init": _grid_init,
    "decay": _decay,
    "clip": _clip,
    "fixed-down-scale": _fixed_down_scale,
    **{f"latent-unit-{f:g}": _latent_unit(f) for f in (3.0, 10.0, 30.0)},
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = argv[0].split("+") if argv else []
    if len(argv) < 2 or not names or any(name not in ABLATIONS for name in names) or argv[1] != "--":
        raise SystemExit(
            f"usage: ablate_qlinear.py NAME[+NAME...] -- BENCHMARK_ARGS... (NAME: {', '.join(ABLATIONS)})"
        )
    for name in names:  # e.g. `kbit-parameterization+plain-scale`: both changes, applied in this order
        ABLATIONS[name]()
    import benchmark_accuracy

    # the results record this command, so that rerunning it repeats the trial, not the plain benchmark
    benchmark_accuracy.main(argv[2:], program=f"python scripts/ablate_qlinear.py {argv[0]} --")


if __name__ == "__main__":
    main()
