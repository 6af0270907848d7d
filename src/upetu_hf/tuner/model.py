"""`UPetuModel`: finds the ConvNeXt blocks and stages of a model and injects UPetu layers into them."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from transformers.models.convnext.modeling_convnext import ConvNextLayer, ConvNextStage
from transformers.models.convnextv2.modeling_convnextv2 import ConvNextV2Layer, ConvNextV2Stage

from .config import UPetuConfig
from .grouped import grouped_quantization
from .layer import UPetuLayer, cannot_merge
from .quantization import PACKED_FIELDS, QuantizedParameter

STAGE_TYPES = (ConvNextStage, ConvNextV2Stage)
BLOCK_TYPES = (ConvNextLayer, ConvNextV2Layer)
KNOWN_HEADS = ("classifier", "decode_head", "auxiliary_head")
SUPPORTED_MODELS = (
    "ConvNextModel, ConvNextForImageClassification, ConvNextBackbone, ConvNextV2Model, "
    "ConvNextV2ForImageClassification, ConvNextV2Backbone, UperNetForSemanticSegmentation with a ConvNeXt "
    "backbone, ConvNextForChangeDetection, or any model containing them"
)


def _matches(patterns: str | list[str] | None, key: str) -> bool:
    """PEFT's matching rule: a string is a regex matched in full, a list holds names or name suffixes."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, key) is not None
    return any(key == p or key.endswith("." + p) for p in patterns or [])


def plan_targets(model: nn.Module, config: UPetuConfig) -> dict[str, tuple[bool, bool]]:
    """Which ConvNeXt blocks get EQAM and/or CAPM: `{block name: (eqam, capm)}`.

    CAPM goes on the last block of each adapted stage, so it acts on the stage output. Raises a `ValueError` when
    the model holds no ConvNeXt block, naming the supported module types.
    """
    plan: dict[str, tuple[bool, bool]] = {}
    num_stages = 0
    matched_target = False
    for stage_name, stage in model.named_modules():
        if not isinstance(stage, STAGE_TYPES):
            continue
        index = int(stage_name.rsplit(".", 1)[-1]) if stage_name.rsplit(".", 1)[-1].isdigit() else num_stages
        num_stages = max(num_stages, index + 1)
        if config.stages is not None and index not in config.stages:
            continue
        depth = len(stage.layers)
        for j in range(depth):
            key = f"{stage_name}.layers.{j}" if stage_name else f"layers.{j}"
            targeted = config.target_modules is None or _matches(config.target_modules, key)
            matched_target = matched_target or (config.target_modules is not None and targeted)
            excluded = config.exclude_modules is not None and _matches(config.exclude_modules, key)
            eqam = config.use_eqam and targeted and not excluded
            capm = config.use_capm and j == depth - 1  # CAPM belongs to the stage, whatever its blocks get
            if eqam or capm:
                plan[key] = (eqam, capm)
    if num_stages == 0:
        raise ValueError(
            f"UPetu found no ConvNeXt blocks in {type(model).__name__}: it adapts ConvNextLayer / ConvNextV2Layer "
            f"blocks inside ConvNextStage / ConvNextV2Stage modules. Supported models: {SUPPORTED_MODELS}."
        )
    if config.stages is not None and max(config.stages) >= num_stages:
        raise ValueError(
            f"UPetuConfig.stages={config.stages} is invalid for this model: allowed values are 0 to {num_stages - 1}."
        )
    if config.use_eqam and config.target_modules is not None and not matched_target:
        raise ValueError(
            f"UPetuConfig.target_modules={config.target_modules!r} matches no ConvNeXt block of this model, so no "
            "block would get EQAM: fix the names (they look like 'convnext.encoder.stages.2.layers.5'; a list "
            "entry may be a suffix such as 'stages.2.layers.5', a string is a regex matched in full)."
        )
    if not plan:
        raise ValueError(
            "UPetuConfig selects no ConvNeXt block of this model: check `stages`, `target_modules` and "
            "`exclude_modules` (block names look like 'convnext.encoder.stages.0.layers.0')."
        )
    return plan


class UPetuModel(BaseTuner):
    """Injects UPetu (EQAM + CAPM) into ConvNeXt models; created by `peft.get_peft_model` with a `UPetuConfig`.

    Example:

    ```py
    >>> import upetu_hf
    >>> from peft import get_peft_model
    >>> from transformers import ConvNextForImageClassification
    >>> model = ConvNextForImageClassification.from_pretrained("facebook/convnext-base-224-22k")
    >>> model = get_peft_model(model, upetu_hf.UPetuConfig(bits=1))
    >>> model.print_trainable_parameters()
    ```
    """

    prefix: str = "upetu_"
    tuner_layer_cls = UPetuLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: UPetuConfig, model_config: dict) -> UPetuConfig:
        return peft_config

    def _prepare_model(self, peft_config: UPetuConfig, model: nn.Module) -> None:
        self._plan = plan_targets(model, peft_config)
        if peft_config.modules_to_save is None:
            heads = [name for name, _ in model.named_children() if name in KNOWN_HEADS]
            peft_config.modules_to_save = heads or None
        self._warn_untrained_head(peft_config, model)

    @staticmethod
    def _warn_untrained_head(peft_config: UPetuConfig, model: nn.Module) -> None:
        saved = set(peft_config.modules_to_save or [])
        frozen_heads = [
            name for name, _ in model.named_children() if name in KNOWN_HEADS and name not in saved
        ]
        if frozen_heads:
            warnings.warn(
                f"The task head(s) {frozen_heads} stay frozen and are not saved with the adapter. If they are freshly "
                "initialised, add them to `modules_to_save` (the default, modules_to_save=None, does so).",
                stacklevel=3,
            )

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs) -> Iterator[None]:
        """Entered by `PeftModel.forward` around every forward pass: quantizes the trainable side tensors of the
        active adapters in one grouped pass (`grouped_quantization`), instead of one small pass per tensor."""
        with grouped_quantization(self._active_quantized_parameters()):
            yield

    def _active_quantized_parameters(self) -> Iterator[QuantizedParameter]:
        for layer in self.model.modules():
            if isinstance(layer, UPetuLayer) and not layer.disable_adapters:
                for name in layer.active_adapters:
                    for adapters in (layer.upetu_eqam, layer.upetu_norm, layer.upetu_capm):
                        if name in adapters:
                            yield from (
                                m for m in adapters[name].modules() if isinstance(m, QuantizedParameter)
                            )

    def _check_target_module_exists(self, peft_config: UPetuConfig, key: str) -> bool:
        return key in self._plan

    def _create_and_replace(
        self,
        peft_config: UPetuConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        eqam, capm = self._plan[current_key]
        if isinstance(target, UPetuLayer):
            target.update_layer(adapter_name, peft_config, eqam=eqam, capm=capm)
            return
        new_module = UPetuLayer(target, adapter_name, peft_config, eqam=eqam, capm=capm)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # ConvNeXt blocks have no `weight` of their own, which BaseTuner._replace_module relies on.
        setattr(parent, child_name, new_module)
        reference = child.get_base_layer() if hasattr(child, "get_base_layer") else child
        weight = next(reference.parameters(), None)
        if weight is None:
            return
        for name, module in new_module.named_modules():
            if self.prefix in name and not any(p.device.type == "meta" for p in module.parameters()):
                module.to(weight.device)

    def _check_merge_allowed(self) -> None:
        # Overridden because no UPetu adapter can be merged: refuse before peft touches any weight.
        raise cannot_merge()

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        # Overridden so that the error is the same as for `merge_and_unload`.
        raise cannot_merge()

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        """Not supported: a weighted sum of UPetu adapters is not a UPetu adapter (EQAM is nonlinear and its
        Q-Linear weights are codes on a fixed codebook)."""
        raise ValueError(
            "UPetu adapters cannot be combined with `add_weighted_adapter`: EQAM is nonlinear and its Q-Linear weights "
            "are k-bit codes, so a weighted sum of two adapters is not an adapter. Load the adapters under different "
            "names and switch between them with `set_adapter`."
        )

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """`...upetu_eqam.<adapter>.down.packed` -> `...upetu_eqam.down.packed` (the name sits mid-key)."""
        for container in UPetuLayer.adapter_layer_names:
            key = key.replace(f".{container}.{adapter_name}.", f".{container}.")
        return key

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: UPetuConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """Select the adapter's tensors and store each quantized tensor as packed codes plus statistics."""
        selected = super()._get_adapter_state_dict(
            model, config, adapter_name, state_dict, unwanted_adapter_names
        )
        packed: dict[str, torch.Tensor] = {}
        for key, value in selected.items():
            owner, _, leaf = key.rpartition(".")
            module = model.get_submodule(owner) if leaf == "latent" else None
            if isinstance(module, QuantizedParameter):
                packed.update({f"{owner}.{name}": t for name, t in module.pack(value).items()})
            else:
                packed[key] = value
        return packed

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: UPetuConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Insert the adapter name into checkpoint keys; packed entries follow the latent tensor they encode."""
        packed = {k: v for k, v in state_dict.items() if k.rpartition(".")[2] in PACKED_FIELDS}
        plain = {k: v for k, v in state_dict.items() if k not in packed}
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, plain)
        owners = sorted({k.rpartition(".")[0] for k in packed})
        latent_keys = super()._remap_adapter_state_dict_for_load(
            model, config, adapter_name, {f"{owner}.latent": None for owner in owners}
        )
        owner_map = dict(zip(owners, (k.rpartition(".")[0] for k in latent_keys)))
        for key, value in packed.items():
            owner, _, leaf = key.rpartition(".")
            remapped[f"{owner_map[owner]}.{leaf}"] = value
        cls._check_adapter_tensors(model, adapter_name, set(owner_map.values()))
        return remapped

    @staticmethod
    def _check_adapter_tensors(model: nn.Module, adapter_name: str, loaded: set[str]) -> None:
        """Refuse a checkpoint that would half-load: every UPetu tensor of `adapter_name` in the model must be in it,
        and nothing else (peft would only warn, leaving untrained adapters next to loaded ones)."""
        expected = {
            name.rpartition(".")[0]
            for name, _ in model.named_parameters()
            if name.endswith(".latent") and f".{adapter_name}." in name and ".upetu_" in name
        }
        missing, unexpected = sorted(expected - loaded), sorted(loaded - expected)
        if missing or unexpected:

            def show(names: list[str]) -> str:
                return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

            parts = ([f"{len(missing)} missing ({show(missing)})"] if missing else []) + (
                [f"{len(unexpected)} unexpected ({show(unexpected)})"] if unexpected else []
            )
            raise ValueError(
                f"The UPetu adapter checkpoint does not fit this model: {'; '.join(parts)} adapter tensors. It was saved "
                "for a base model with other depths or stages, with another UPetu config, or by another version of "
                "upetu-hf: load it onto the base model named in its adapter_config.json (base_model_name_or_path)."
            )

    def parameter_counts(self, adapter_name: str = "default") -> dict[str, int]:
        """Parameter counts: `adapter` (UPetu modules of `adapter_name`), `head` (its `modules_to_save` copies),
        `backbone` (base parameters outside the task heads) and `base` (all base parameters)."""
        counts = {"adapter": 0, "head": 0, "backbone": 0, "base": 0}
        for name, param in self.model.named_parameters():
            parts = name.split(".")
            if any(p.startswith(self.prefix) for p in parts):
                counts["adapter"] += param.numel() if adapter_name in parts else 0
            elif "modules_to_save" in parts:
                counts["head"] += param.numel() if adapter_name in parts else 0
            else:
                counts["base"] += param.numel()
                if "original_module" not in parts and parts[0] not in KNOWN_HEADS:
                    counts["backbone"] += param.numel()
        return counts
