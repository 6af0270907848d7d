"""Tuning methods: UPetu and the baselines (full fine-tuning, linear probe, LoRA, IA3), and what to decay.

`apply_method(model, "lora", r=4)` (or `apply_method(model, args)` with `TrainingArguments`) returns the model to
train: a `PeftModel` for the PEFT methods (UPetu, LoRA, IA3; task heads in `modules_to_save`), the model itself for
full fine-tuning and the linear probe (only the heads trainable). The training loop and both benchmark scripts use
it, so every method is built one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peft import IA3Config, LoraConfig, PeftConfig, get_peft_model
from torch import nn

from ..tuner import UPetuConfig
from ..tuner.model import KNOWN_HEADS
from ..tuner.quantization import kbit_latents
from .tasks import get_task

METHODS = ("upetu", "full", "linear", "lora", "ia3")
PEFT_METHODS = ("upetu", "lora", "ia3")
#: Default learning rate of each method (used when `lr` is None). UPetu needs a high rate because its scales
#: (`s`, `beta`) start at 0; full fine-tuning a low one.
DEFAULT_LR = {"upetu": 1e-2, "full": 5e-4, "linear": 1e-2, "lora": 3e-3, "ia3": 3e-3}
#: Options that only mean something for one family of methods (`r` is the UPetu bottleneck and the LoRA rank).
UPETU_OPTIONS = (
    "bits",
    "prompt_size",
    "activation",
    "codebook",
    "side_bits",
    "conv_kernel",
    "norm_affine",
    "use_eqam",
    "use_capm",
    "stages",
)
LORA_OPTIONS = ("lora_alpha", "lora_dropout")
RANK_METHODS = ("upetu", "lora")
#: Task heads of the three task models (classifier; UperNet decode/auxiliary heads; change-detection decoder).
HEAD_NAMES = KNOWN_HEADS  # the heads UPetu trains by default
#: The ConvNeXt block layers the LoRA / IA3 baselines adapt.
BASELINE_TARGETS = ["pwconv1", "pwconv2"]
DEFAULT_LORA_R = 8


def dense_head_lr(task: str, head_hidden_size: int | None = None) -> float:
    """The PEFT methods' default decoder rate on a dense task: `spec.head_lr * spec.decoder_width / head_hidden_size`
    (`TaskSpec`, where each search is recorded), i.e. the task's searched rate for the decoder `upetu-train` builds
    by default (`head_hidden_size=None`), scaled inversely with the width of a narrower or wider one. Those decoders
    (a UperNet of ~29 M parameters on ConvNeXt-B, the change-detection decoder) start from scratch and are far
    larger than the adapter: at UPetu's adapter rate of 1e-2 the default UperNet collapsed to the majority class.

    Why: Adam moves every weight by about the learning rate, so a layer's output moves in proportion to its fan-in;
    a decoder 8x narrower needs an 8x larger rate for the same pace (the muP rule for hidden layers under Adam).
    Measured on GID validation with a 64-channel UperNet (results/head_lr_segmentation_h64.json: UPetu, seeds 0 and
    1, mean mIoU 63.7 / 67.8 / 72.1 / 72.1 / 70.3 / 70.3 at 1e-4 / 3e-4 / 8e-4 / 1e-3 / 3e-3 / 1e-2): the rule's
    8e-4 is level with the best rate, the default decoder's 1e-4 is 8 points behind; and on LEVIR + DSIFN with a
    32-channel change-detection decoder (results/head_lr_change_detection_h32.json: 3 splits, mean F1 61.7 / 65.8
    / 65.9 / 65.6 / 20.8 / 21.0 at 1e-4 / 3e-4 / 1e-3 / 1.2e-3 / 3e-3 / 1e-2): the rule's 1.2e-3 is level with the
    best; and with a 256-channel one (results/head_lr_change_detection_h256.json: mean F1 63.0 / 64.7 / 62.3 / 61.7
    / 58.0 at 3e-5 / 1e-4 / 1.5e-4 / 3e-4 / 1e-3): the best rate lies below the default width's, the rule's 1.5e-4
    is level with it.
    """
    spec = get_task(task)
    if head_hidden_size is None:
        return spec.head_lr
    return spec.head_lr * spec.decoder_width / head_hidden_size


def default_head_lr(task: str, method: str, lr: float, head_hidden_size: int | None = None) -> float:
    """The heads' learning rate when `--head-lr` is not given: `dense_head_lr` for the PEFT methods on the dense
    tasks, otherwise the method's own `lr` (a classifier is a single linear layer; full fine-tuning and the linear
    probe train everything at one rate)."""
    if method in PEFT_METHODS and get_task(task).head_lr is not None:
        return dense_head_lr(task, head_hidden_size)
    return lr


def head_names(model: nn.Module) -> list[str]:
    """The task heads among the model's direct children."""
    return [name for name, _ in model.named_children() if name in HEAD_NAMES]


def peft_config(method: str, heads: list[str] | None = None, **options: Any) -> PeftConfig:
    """The PEFT config of `method` with `heads` in `modules_to_save`; options left out (or None) keep the
    defaults: `UPetuConfig`'s for UPetu, `r=8`, `lora_alpha=2r`, no dropout for LoRA."""
    options = {k: v for k, v in options.items() if v is not None}
    if method == "upetu":
        return UPetuConfig(modules_to_save=heads or None, **options)
    if method == "lora":
        r = options.get("r", DEFAULT_LORA_R)
        return LoraConfig(
            r=r,
            lora_alpha=options.get("lora_alpha", 2 * r),
            lora_dropout=options.get("lora_dropout", 0.0),
            target_modules=list(BASELINE_TARGETS),
            modules_to_save=heads,
        )
    if method == "ia3":
        # peft's IA3 scales a target's output, or its input for a feed-forward module: the 4C hidden of every block
        # is scaled after pwconv1 and again (after GELU) before pwconv2, the paper's l_ff on ConvNeXt's MLP.
        return IA3Config(
            target_modules=list(BASELINE_TARGETS), feedforward_modules=["pwconv2"], modules_to_save=heads
        )
    raise ValueError(f"{method!r} is not a PEFT method ({', '.join(PEFT_METHODS)}).")


def apply_method(
    model: nn.Module, method: Any = "upetu", extra_modules: Sequence[str] = (), **options: Any
) -> nn.Module:
    """Make `model` trainable the way `method` says and return the model to train.

    `method` is a method name with its options as keywords, or `TrainingArguments` (its method and options).
    `extra_modules` (module name suffixes, e.g. an inflated stem's `STEM_MODULES_TO_SAVE`) train with every method:
    in `modules_to_save` next to the heads for the PEFT methods, unfrozen for the linear probe.

    - `upetu`, `lora`, `ia3`: `get_peft_model` with the heads in `modules_to_save`;
    - `full`: every parameter trains;
    - `linear`: only the task heads train (a linear probe for classification, a frozen-backbone decoder for the
      dense tasks).
    """
    if not isinstance(method, str):  # TrainingArguments
        method, options = method.method, method.method_options()
    heads = head_names(model)
    if method in PEFT_METHODS:
        return get_peft_model(model, peft_config(method, heads + list(extra_modules), **options))
    if method not in ("full", "linear") or options:
        raise ValueError(f"apply_method({method!r}, {options}): choose one of {', '.join(METHODS)}.")
    if method == "linear":
        if not heads:
            raise ValueError(
                f"--method linear needs a task head ({', '.join(HEAD_NAMES)}); the model has none."
            )
        model.requires_grad_(False)
        for name in heads:
            getattr(model, name).requires_grad_(True)
        for name, module in model.named_modules():
            if any(name == e or name.endswith("." + e) for e in extra_modules):
                module.requires_grad_(True)
    else:
        model.requires_grad_(True)
    return model


def uses_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Weight decay belongs on weight matrices and convolution kernels (>= 2-D) only: not on biases, norms,
    layer scales, UPetu scales / betas (1-D), UPetu prompts (3-D maps added to features) or IA3 scaling vectors."""
    if param.ndim < 2:
        return False
    return not (name.endswith("prompt.latent") or ".ia3_l." in name)


def parameter_groups(
    model: nn.Module, weight_decay: float, module_lrs: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: with and without weight decay (none on UPetu's
    k-bit latents, see `kbit_latents`). `module_lrs` gives the parameters under some modules their own learning
    rate (`{"embeddings.patch_embeddings": 5e-4}`: a name containing `.embeddings.patch_embeddings.`, e.g. an
    inflated stem that trains next to an adapter); the others take the optimizer's."""
    module_lrs = module_lrs or {}
    groups: dict[tuple[bool, float | None], list[nn.Parameter]] = {}
    kbit = kbit_latents(model)
    for name, param in model.named_parameters():
        if param.requires_grad:
            decayed = uses_weight_decay(name, param) and id(param) not in kbit
            lr = next((v for k, v in module_lrs.items() if f".{k}." in f".{name}"), None)
            groups.setdefault((decayed, lr), []).append(param)
    if not groups:
        raise ValueError("The model has no trainable parameter.")
    order = sorted(groups, key=lambda key: (not key[0], key[1] is not None, key[1] or 0.0))
    return [
        {"params": groups[key], "weight_decay": weight_decay if key[0] else 0.0}
        | ({"lr": key[1]} if key[1] is not None else {})
        for key in order
    ]


def is_head_parameter(name: str) -> bool:
    """Whether a (plain or PEFT-prefixed) parameter or weight name belongs to a task head."""
    return any(part in HEAD_NAMES for part in name.split("."))


def parameter_summary(model: nn.Module) -> dict[str, int]:
    """Counts of `trainable` and `total` parameters, and of the trainable ones `head` (the task heads, in
    `modules_to_save` for PEFT models) and `adapter` (the others). The head copies peft keeps are counted in
    `total`; for full fine-tuning `adapter` is the trained backbone."""
    trainable = head = total = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            if is_head_parameter(name):
                head += param.numel()
    return {"trainable": trainable, "total": total, "adapter": trainable - head, "head": head}
