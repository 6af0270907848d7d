"""`FrozenWeights`: a module whose forward weights are a function of its parameters, computed once while the
module is frozen and reused until any of those parameters changes."""

from __future__ import annotations

import torch
from torch import nn


class FrozenWeights(nn.Module):
    """Base class of the adapter modules (EQAM, CAPM, the LayerNorm correction): `weights()` returns
    `compute_weights()`, the tensors the forward pass uses (dequantized Q-Linear weights, side tensors).

    - Trainable (any parameter requires grad, as during training): computed afresh at every call, with the
      straight-through gradients, exactly as the training semantics need.
    - Frozen (no parameter requires grad, e.g. an adapter loaded with `PeftModel.from_pretrained`): computed once,
      under `no_grad` and outside `inference_mode` (so the cached tensors never poison a later autograd graph), and
      reused while every parameter is the same tensor with the same version counter, storage, dtype and device.
      The cache is dropped by `.to()` / `.half()` / device moves (`_apply`), by `load_state_dict` (which writes
      in place and so bumps the version counters, or assigns new tensors), by `requires_grad_(True)` and by any
      in-place write to a parameter (`copy_`, optimizers, `torch.no_grad()` updates).

    Writes through `param.data` (e.g. `param.data.add_(x)` or `param.data[...] = x`) bypass the version counter
    and are not seen: write with `param.copy_(...)` under `torch.no_grad()`, or call `clear_weights_cache()`.
    Under `torch.compile` the weights are always computed (the compiler fuses them into the graph).
    """

    _weights_cache: tuple[tuple, tuple[torch.Tensor | None, ...]] | None = None

    def compute_weights(self) -> tuple[torch.Tensor | None, ...]:
        """The tensors the forward pass uses, from the current parameters."""
        raise NotImplementedError

    def _weights_key(self) -> tuple | None:
        """What the cached weights depend on, or None while the module is trainable."""
        key = []
        for param in self.parameters():
            if param.requires_grad:
                return None
            key.append((param, param._version, param.data_ptr(), param.dtype, param.device))
        return tuple(key)

    def weights(self) -> tuple[torch.Tensor | None, ...]:
        if torch.compiler.is_compiling():
            return self.compute_weights()
        key = self._weights_key()
        if key is None:
            self._weights_cache = None
            return self.compute_weights()
        cached = self._weights_cache
        if (
            cached is not None
            and len(cached[0]) == len(key)
            and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(cached[0], key))
        ):
            return cached[1]
        with torch.inference_mode(False), torch.no_grad():
            values = self.compute_weights()
        self._weights_cache = (key, values)
        return values

    def clear_weights_cache(self) -> None:
        """Forget the cached weights (needed only after writes through `param.data`)."""
        self._weights_cache = None

    def _apply(self, fn, recurse: bool = True):
        # Overridden because `.to()`, `.half()` and device moves replace the parameters' storage: drop the cache.
        self._weights_cache = None
        return super()._apply(fn, recurse)
