"""Tuning methods: UPetu and the baselines (full fine-tuning, linear probe, LoRA, IA3), and what to decay.

`apply_method(model, args)` returns the model to train: a `PeftModel` for the PEFT methods (UPetu, LoRA, IA3;
task heads in `modules_to_save`), the model itself for full fine-tuning and the linear probe (only the heads
trainable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from torch import nn

from ..tuner import UPetuConfig
from ..tuner.model import KNOWN_HEADS
from ..tuner.quantization import unitless_latents
from .config import PEFT_METHODS, UPETU_OPTIONS

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainingArguments

#: Task heads of the three task models (classifier; UperNet decode/auxiliary heads; change-detection decoder).
HEAD_NAMES = KNOWN_HEADS  # the heads UPetu trains by default
#: The ConvNeXt block layers the LoRA / IA3 baselines adapt.
BASELINE_TARGETS = ["pwconv1", "pwconv2"]
DEFAULT_LORA_R = 8


def head_names(model: nn.Module) -> list[str]:
    """The task heads among the model's direct children."""
    return [name for name, _ in model.named_children() if name in HEAD_NAMES]


def upetu_config(args: TrainingArguments, modules_to_save: list[str] | None) -> UPetuConfig:
    """`UPetuConfig` from the run's UPetu options; options left at None keep `UPetuConfig`'s defaults."""
    options = {name: getattr(args, name) for name in ("r", *UPETU_OPTIONS) if getattr(args, name) is not None}
    return UPetuConfig(modules_to_save=modules_to_save, **options)


def method_config(args: TrainingArguments, model: nn.Module):
    """The PEFT config of a PEFT method, with the model's task heads in `modules_to_save`."""
    heads = head_names(model)
    if args.method == "upetu":
        return upetu_config(args, modules_to_save=heads or None)
    if args.method == "lora":
        r = args.r or DEFAULT_LORA_R
        return LoraConfig(
            r=r,
            lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * r,
            lora_dropout=args.lora_dropout or 0.0,
            target_modules=list(BASELINE_TARGETS),
            modules_to_save=heads,
        )
    if args.method == "ia3":
        return IA3Config(
            target_modules=list(BASELINE_TARGETS), feedforward_modules=["pwconv2"], modules_to_save=heads
        )
    raise ValueError(f"{args.method!r} is not a PEFT method ({', '.join(PEFT_METHODS)}).")


def apply_method(model: nn.Module, args: TrainingArguments) -> nn.Module:
    """Make `model` trainable the way `args.method` says and return the model to train.

    - `upetu`, `lora`, `ia3`: `get_peft_model` with the heads in `modules_to_save`;
    - `full`: every parameter trains;
    - `linear`: only the task heads train (a linear probe for classification, a frozen-backbone decoder for the
      dense tasks).
    """
    if args.method in PEFT_METHODS:
        return get_peft_model(model, method_config(args, model))
    heads = head_names(model)
    if args.method == "linear":
        if not heads:
            raise ValueError(
                f"--method linear needs a task head ({', '.join(HEAD_NAMES)}); the model has none."
            )
        model.requires_grad_(False)
        for name in heads:
            getattr(model, name).requires_grad_(True)
    else:
        model.requires_grad_(True)
    return model


def uses_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Weight decay belongs on weight matrices and convolution kernels (>= 2-D) only: not on biases, norms,
    layer scales, UPetu scales / betas (1-D), UPetu prompts (3-D maps added to features) or IA3 scaling vectors."""
    if param.ndim < 2:
        return False
    if name.endswith("prompt.latent") or ".ia3_l." in name:
        return False
    return True


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: with and without weight decay (none on UPetu's
    unitless k-bit latents, see `unitless_latents`)."""
    decay, no_decay = [], []
    unitless = unitless_latents(model)
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if uses_weight_decay(name, param) and id(param) not in unitless else no_decay).append(
                param
            )
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameter.")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def parameter_summary(model: nn.Module) -> dict[str, int]:
    """Counts of `trainable` and `total` parameters; for PEFT models also `head` (`modules_to_save`) and
    `adapter` (the other trainable parameters)."""
    trainable = head = total = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            if "modules_to_save" in name.split("."):
                head += param.numel()
    summary = {"trainable": trainable, "total": total}
    if isinstance(model, PeftModel):
        summary.update(adapter=trainable - head, head=head)
    return summary
