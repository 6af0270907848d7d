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
      reused while every parameter is the same tensor with the same version counter and storage.
      The cache is dropped by `.to()` / `.half()` / device moves (`_apply`), by `load_state_dict` (which writes
      in place and so bumps the version counters, or assigns new tensors), by `requires_grad_(True)` and by any
      in-place write to a parameter (`copy_`, optimizers, `torch.no_grad()` updates).

    Writes through `param.data` (e.g. `param.data.add_(x)` or `param.data[...] = x`) bypass the version counter
    and are not seen: write with `param.copy_(...)` under `torch.no_grad()`, or call `clear_weights_cache()`.
    Under `torch.compile` the weights are always computed (the compiler fuses them into the graph).
    """

    _weights_cache: tuple[tuple[int, ...], tuple[torch.Tensor, ...], tuple] | None = None
    _weights_slots: tuple[tuple[dict, str], ...] | None = None

    def compute_weights(self) -> tuple[torch.Tensor | None, ...]:
        """The tensors the forward pass uses, from the current parameters."""
        raise NotImplementedError

    def _slots(self) -> tuple[tuple[dict, str], ...]:
        """Where this module's parameters live: (a submodule's `_parameters`, name), found once (the adapter
        modules never gain or lose submodules; a replaced parameter is read afresh from its slot)."""
        if self._weights_slots is None:
            self._weights_slots = tuple(
                (module._parameters, name)
                for module in self.modules()
                for name, param in module._parameters.items()
                if param is not None
            )
        return self._weights_slots

    def _weights_key(self) -> tuple[tuple[int, ...], tuple[torch.Tensor, ...]] | None:
        """What the cached weights depend on (identity, version counter and storage of every parameter, as ints)
        and the parameters themselves; None while the module is trainable. Cheap: it runs at every forward pass."""
        key: list[int] = []
        params = []
        for slot, name in self._slots():
            param = slot[name]
            if param.requires_grad:
                return None
            key += (id(param), param._version, param.data_ptr())
            params.append(param)
        return tuple(key), tuple(params)

    def weights(self) -> tuple[torch.Tensor | None, ...]:
        if torch.compiler.is_compiling():
            return self.compute_weights()
        found = self._weights_key()
        if found is None:
            self._weights_cache = None
            return self.compute_weights()
        key, params = found
        cached = self._weights_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.inference_mode(False), torch.no_grad():
            values = self.compute_weights()
        # the parameters are kept with the key, so that their ids cannot be reused by other objects meanwhile
        self._weights_cache = (key, values, params)
        return values

    def clear_weights_cache(self) -> None:
        """Forget the cached weights (needed only after writes through `param.data`)."""
        self._weights_cache = None

    def _apply(self, fn, recurse: bool = True):
        # Overridden because `.to()`, `.half()` and device moves replace the parameters' storage: drop the cache.
        self._weights_cache = None
        return super()._apply(fn, recurse)
