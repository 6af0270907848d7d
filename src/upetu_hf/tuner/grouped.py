"""Grouped quantization: one pass over all trainable side tensors of a model per training forward pass.

Quantizing tensor by tensor dispatches about ten small ops per int8 side tensor (EQAM's `s` and row scales, the
CAPM tensors, the 1-bit magnitudes `alpha`): thousands per step on ConvNeXt-B, which bind a GPU step to kernel
launches. `grouped_quantization` computes all of them before the forward pass with `torch._foreach_*` ops, whose
count does not grow with the number of tensors, and hands each `QuantizedParameter` its value for that pass. The
values are bit-identical to the per-tensor ones (`Int8Codec.quantize`, `SignCodec.magnitude`), and the gradients
are the same straight-through ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from .quantization import Int8Codec, QuantizedParameter, SignCodec


def quantize_int8(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`Int8Codec.quantize` of every float32 tensor in `tensors`, in a fixed number of dispatched ops:
    `x -> round(x / s) * s`, `s = 2**ceil(log2(max|x| / 127))` per tensor."""
    scales = Int8Codec.scale_of(torch.stack(torch._foreach_norm(tensors, math.inf))).unbind()
    values = torch._foreach_div(tensors, scales)
    torch._foreach_round_(values)
    torch._foreach_mul_(values, scales)
    return values


class _GroupedInt8(torch.autograd.Function):
    """Forward: `quantize_int8` of the latent tensors. Backward: the straight-through estimator (the gradient
    passes unchanged, as `Int8Codec`'s per-tensor one)."""

    @staticmethod
    def forward(ctx, *latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(quantize_int8(list(latents)))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return grads


@contextmanager
def grouped_quantization(parameters: Iterable[QuantizedParameter]) -> Iterator[None]:
    """For one training forward pass: quantize the int8 side tensors among `parameters` and the magnitudes of
    their 1-bit `SignCodec` weights in one grouped pass each, and let every parameter use its grouped value.

    Only trainable float32 latents are grouped (a frozen adapter caches its weights, `FrozenWeights`); the rest
    quantize themselves as usual. Outside grad mode and under `torch.compile` (which fuses the per-tensor ops)
    nothing is grouped.
    """
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        yield
        return
    side, signs = [], []
    for param in parameters:
        latent = param.latent
        if latent.requires_grad and latent.dtype == torch.float32 and latent.device.type != "mps":
            if type(param.codec) is Int8Codec:
                side.append(param)
            elif isinstance(param.codec, SignCodec) and type(param.codec.side) is Int8Codec:
                signs.append(param)
    try:
        if side:
            for param, value in zip(side, _GroupedInt8.apply(*(p.latent for p in side))):
                param._grouped = value
        if signs:
            with torch.no_grad():  # `_DerivedSign` gives alpha's gradient itself
                means = [p.codec.mean_magnitude(p.latent) for p in signs]
                for param, alpha in zip(signs, quantize_int8(means)):
                    param._grouped = alpha
        yield
    finally:
        for param in side + signs:
            param._grouped = None
