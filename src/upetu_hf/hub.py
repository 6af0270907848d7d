"""Model cards and publishing for UPetu adapters (and for the baselines that `upetu-train` trains: other PEFT
adapters such as LoRA / IA3, and fully fine-tuned models).

`PeftModel.push_to_hub` (inherited from transformers) replaces the README with a card that says
`library_name: transformers` and has no `base_model`; `push_to_hub` here uploads the adapter together with a
correct card instead. `upload_folder` publishes an already saved folder (e.g. a training run's outputs).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file

from ._files import file_mode, is_local, save_tensors, write_manifest
from ._files import verify_manifest as verify_manifest  # re-exported: the check of what `save_adapter` writes
from .tuner.config import ADAPTER_WEIGHTS_NAME, PEFT_TYPE, format_metadata

CARD_TAGS = ["upetu", "peft", "remote-sensing", "convnext", "parameter-efficient-fine-tuning"]
BASELINE_TAGS = ["peft", "remote-sensing", "convnext", "parameter-efficient-fine-tuning"]
#: Written last by `save_adapter` / `save_model`: every saved file's size and SHA-256.
MANIFEST_VERSION = 1


def _hub_id(base_model: str | None) -> str | None:
    """`base_model` for the card metadata: a Hub id, or None for a local path (which the Hub would reject)."""
    if not base_model or is_local(base_model):
        return None
    return base_model


#: The Hub pipeline of each `upetu-train` task (change detection predicts a per-pixel mask, as segmentation).
PIPELINE_TAGS = {
    "classification": "image-classification",
    "segmentation": "image-segmentation",
    "change-detection": "image-segmentation",
}


@dataclass
class TaskResults:
    """A trained model's evaluation, for the card's `model-index` (the Hub's results widget and search): the
    `upetu-train` task, the dataset (a Hub id, else a name), the split and its scalar metrics."""

    task: str
    dataset: str
    metrics: dict[str, Any]
    split: str = "test"
    name: str = "upetu-hf model"

    @property
    def pipeline_tag(self) -> str:
        return PIPELINE_TAGS[self.task]

    def eval_results(self) -> list[EvalResult]:
        """One `EvalResult` per finite scalar metric (counts such as `num_samples` left out)."""
        return [
            EvalResult(
                task_type=self.pipeline_tag,
                dataset_type=self.dataset,
                dataset_name=self.dataset,
                dataset_split=self.split,
                metric_type=key,
                metric_name=key,
                metric_value=float(value),
            )
            for key, value in self.metrics.items()
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not key.startswith("num_")
            and math.isfinite(value)
        ]


def pipeline_tag(model) -> str | None:
    """The Hub pipeline of a (PEFT-wrapped) task model, from its class: image classification, or image
    segmentation for UperNet and change detection; None for a bare backbone."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if "ImageClassification" in name:
        return "image-classification"
    if "SemanticSegmentation" in name or "ChangeDetection" in name:
        return "image-segmentation"
    return None


def card_data(
    library_name: str,
    base_model: str | None,
    tags: list[str],
    datasets: list[str] | None,
    tag: str | None,
    results: TaskResults | None,
) -> ModelCardData:
    """The card's metadata: library, `base_model` (a Hub id only), tags, `datasets`, `pipeline_tag` (the
    results' task, else `tag`) and the results as `model-index`."""
    evaluated = results.eval_results() if results is not None else []
    return ModelCardData(
        library_name=library_name,
        base_model=base_model,
        tags=tags,
        datasets=datasets or None,
        pipeline_tag=results.pipeline_tag if results is not None else tag,
        model_name=results.name if evaluated else None,
        eval_results=evaluated or None,
    )


def _metric_rows(metrics: dict[str, Any] | None) -> list[tuple[str, str]]:
    return [
        (f"eval {key}", f"{value:.4f}" if isinstance(value, float) else str(value))
        for key, value in (metrics or {}).items()
    ]


def adapter_card(
    model: PeftModel,
    adapter_name: str = "default",
    adapter_bytes: int | None = None,
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    usage: str | None = None,
    results: TaskResults | None = None,
) -> ModelCard:
    """A Hub model card for a UPetu adapter: `library_name: peft`, `base_model`, `pipeline_tag`, tags, `datasets`,
    the `results` as `model-index`, and a summary table with the bit width, trainable share, adapter size on disk
    and (optionally) evaluation metrics.

    Other PEFT adapters (e.g. the LoRA / IA3 baselines) get a card with the same metadata and a table of their
    own settings. `usage` (Markdown) replaces the default "Usage" section.
    """
    config = model.peft_config[adapter_name]
    card = dict(datasets=datasets, tag=pipeline_tag(model), results=results)
    if config.peft_type != PEFT_TYPE:
        return _baseline_adapter_card(model, adapter_name, adapter_bytes, metrics, usage, card)
    base_model = config.base_model_name_or_path or None
    counts = model.base_model.parameter_counts(adapter_name)
    share = 100.0 * counts["adapter"] / max(counts["backbone"], 1)
    rows = [
        ("method", "UPetu (EQAM + CAPM)" if config.use_eqam and config.use_capm else "UPetu (ablation)"),
        ("Q-Linear bit width", str(config.bits)),
        ("side-tensor bits", str(config.effective_side_bits)),
        ("EQAM bottleneck r", str(config.r)),
        ("CAPM prompt size", f"{config.prompt_size}x{config.prompt_size}"),
        ("trainable adapter parameters", f"{counts['adapter']:,} ({share:.2f} % of the backbone)"),
        ("task-head parameters (modules_to_save)", f"{counts['head']:,}"),
    ]
    intro = f"""A [UPetu](https://doi.org/10.1109/TGRS.2024.3382734) adapter (Dong, Gu, Liu, IEEE TGRS 2024) trained with
[upetu-hf](https://github.com/upetu-hf/upetu-hf): quantized EQAM adapters in every ConvNeXt block and CAPM
prompts on every stage, stored as packed {config.bits}-bit codes."""
    return _peft_card(
        base_model,
        CARD_TAGS,
        "UPetu",
        intro,
        rows,
        adapter_bytes,
        metrics,
        usage or _default_usage(base_model, upetu=True),
        card,
    )


def _peft_card(
    base_model: str | None,
    tags: list[str],
    method: str,
    intro: str,
    rows: list[tuple[str, str]],
    adapter_bytes: int | None,
    metrics: dict[str, Any] | None,
    usage: str,
    card: dict[str, Any],
) -> ModelCard:
    """The card of a PEFT adapter: peft metadata (`card`: `card_data`'s datasets, tag and results), a property
    table (+ size and metrics), a usage section."""
    hub_base = _hub_id(base_model)
    tags = tags + ([f"base_model:adapter:{hub_base}"] if hub_base else [])
    data = card_data("peft", hub_base, tags, **card)
    if adapter_bytes is not None:
        rows = rows + [("adapter_model.safetensors", f"{adapter_bytes / 1000:.1f} KB")]
    rows = rows + _metric_rows(metrics)
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    base_line = f"`{base_model}`" if base_model else "a ConvNeXt model"
    body = f"""# {method} adapter for {base_line}

{intro}

| property | value |
|---|---|
{table}

## Usage

{usage}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _default_usage(base_model: str | None, upetu: bool) -> str:
    first = "import upetu_hf  # registers UPetu with peft: import it before loading\n" if upetu else ""
    return f"""```python
{first}from peft import PeftModel
from transformers import AutoModelForImageClassification

base = AutoModelForImageClassification.from_pretrained("{base_model or "<base model>"}")
model = PeftModel.from_pretrained(base, "<this repo id>")
```"""


def _baseline_adapter_card(
    model: PeftModel,
    adapter_name: str,
    adapter_bytes: int | None,
    metrics: dict[str, Any] | None,
    usage: str | None,
    card: dict[str, Any],
) -> ModelCard:
    config = model.peft_config[adapter_name]
    method = str(getattr(config.peft_type, "value", config.peft_type))
    method = {"LORA": "LoRA", "LOHA": "LoHa", "LOKR": "LoKr"}.get(method, method)
    base_model = config.base_model_name_or_path or None
    prefix = getattr(model.base_model, "prefix", None) or f"{method.lower()}_"
    adapter = head = 0
    for name, param in model.named_parameters():
        parts = name.split(".")
        if adapter_name not in parts:
            continue
        if "modules_to_save" in parts:
            head += param.numel()
        elif any(part.startswith(prefix) for part in parts):
            adapter += param.numel()
    rows = [("method", method)]
    for field_name in ("r", "lora_alpha", "lora_dropout", "target_modules", "feedforward_modules"):
        value = getattr(config, field_name, None)
        if value is not None:
            rows.append((field_name, str(sorted(value) if isinstance(value, (set, list)) else value)))
    rows += [
        ("trainable adapter parameters", f"{adapter:,}"),
        ("task-head parameters (modules_to_save)", f"{head:,}"),
    ]
    intro = f"A {method} adapter trained with [upetu-hf](https://github.com/upetu-hf/upetu-hf), as a baseline for UPetu."
    return _peft_card(
        base_model,
        BASELINE_TAGS + [method.lower()],
        method,
        intro,
        rows,
        adapter_bytes,
        metrics,
        usage or _default_usage(base_model, upetu=False),
        card,
    )


def model_card(
    base_model: str | None,
    method: str = "full fine-tuning",
    parameters: dict[str, int] | None = None,
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    usage: str | None = None,
    results: TaskResults | None = None,
    tag: str | None = None,
) -> ModelCard:
    """A Hub model card for a whole fine-tuned model (`library_name: transformers`, `base_model`, tags,
    `pipeline_tag` (`tag`, or the results' task) and the `results` as `model-index`)."""
    hub_base = _hub_id(base_model)
    tags = ["remote-sensing", "convnext", "upetu-hf"] + (
        [f"base_model:finetune:{hub_base}"] if hub_base else []
    )
    data = card_data("transformers", hub_base, tags, datasets, tag, results)
    rows = [("method", method)]
    rows += [(f"{key} parameters", f"{value:,}") for key, value in (parameters or {}).items()]
    rows += _metric_rows(metrics)
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    base_line = f"`{base_model}`" if base_model else "a ConvNeXt model"
    default_usage = """```python
from transformers import AutoModel

model = AutoModel.from_pretrained("<this repo id>")
```"""
    body = f"""# {base_line}, {method}

Trained with [upetu-hf](https://github.com/upetu-hf/upetu-hf), as a baseline for UPetu.

| property | value |
|---|---|
{table}

## Usage

{usage or default_usage}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def saved_file_names(adapter: bool) -> tuple[str, ...]:
    """The files `save_adapter` (`adapter=True`) or `save_model` writes, besides `manifest.json`: the
    configuration, the weights and the card, in that order."""
    if adapter:
        return ("adapter_config.json", ADAPTER_WEIGHTS_NAME, "README.md")
    return ("config.json", "model.safetensors", "README.md")


def _move_order(path: Path) -> tuple[int, str]:
    """Weights first, then configurations, the card last: a fresh folder cut short has no loadable config."""
    return (0 if path.suffix == ".safetensors" else 2 if path.name == "README.md" else 1, path.name)


def _save_folder(target: Path, write: Callable[[Path], Path]) -> Path:
    """Run `write(tmp)` (which returns the folder it filled) in a temporary folder inside `target`, move each file
    into `target` with `os.replace` and write `manifest.json` (name, size and SHA-256 of every file) last.

    A previous manifest stays until the new one replaces it, so a save cut short between two moves leaves files
    that disagree with the manifest, which `verify_manifest` reports. Nothing is written outside `target`, so its
    parent may be read-only."""
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-save-", dir=target))
    try:
        written = write(tmp)
        files = sorted((p for p in written.iterdir() if p.is_file()), key=_move_order)
        for path in files:
            os.chmod(path, file_mode())  # some writers create 0600 files
            os.replace(path, target / path.name)
        write_manifest(target, [p.name for p in files], MANIFEST_VERSION)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _add_format_metadata(weights: Path, config) -> None:
    """Rewrite `weights` with the adapter's format in its safetensors metadata (peft writes `format: pt` only)."""
    with safe_open(str(weights), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(str(weights))
    save_tensors(tensors, weights, metadata={**metadata, **format_metadata(config)})


def save_adapter(
    model: PeftModel,
    save_directory: str | os.PathLike,
    adapter_name: str = "default",
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    usage: str | None = None,
    results: TaskResults | None = None,
) -> Path:
    """Save one adapter (packed weights, config, model card, `manifest.json`) into `save_directory`.

    The files are written in a temporary folder inside `save_directory` and moved into place one by one
    (`os.replace`), `manifest.json` last (see `_save_folder`): a save cut short is detected by `verify_manifest`,
    and the parent folder is never written to. A UPetu adapter's weights file records its format (bits, codebook,
    side bits) in its safetensors metadata. Works for UPetu and other PEFT adapters.
    """
    config = model.peft_config[adapter_name]

    def write(tmp: Path) -> Path:
        model.save_pretrained(tmp, selected_adapters=[adapter_name])
        written = tmp / adapter_name if adapter_name != "default" else tmp
        weights = written / ADAPTER_WEIGHTS_NAME
        if config.peft_type == PEFT_TYPE:
            _add_format_metadata(weights, config)
        card = adapter_card(model, adapter_name, weights.stat().st_size, metrics, datasets, usage, results)
        card.save(written / "README.md")
        return written

    return _save_folder(Path(save_directory), write)


def save_model(
    model,
    save_directory: str | os.PathLike,
    base_model: str | None = None,
    method: str = "full fine-tuning",
    parameters: dict[str, int] | None = None,
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    usage: str | None = None,
    results: TaskResults | None = None,
) -> Path:
    """Save a whole `PreTrainedModel` (`save_pretrained`) with a `model_card` and `manifest.json`, as
    `save_adapter` does."""

    def write(tmp: Path) -> Path:
        model.save_pretrained(tmp)
        card = model_card(
            base_model, method, parameters, metrics, datasets, usage, results, pipeline_tag(model)
        )
        card.save(tmp / "README.md")
        return tmp

    return _save_folder(Path(save_directory), write)


def check_push_access(repo_id: str, token: str | None = None, api: HfApi | None = None) -> None:
    """Raise a one-line `ValueError` unless `repo_id` is a valid Hub repo id and the Hub answers for `token` (or
    the logged-in one): checked before training, so that an upload cannot fail only after it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"--hub-model-id {repo_id!r} is not a valid Hub repo id ({err}); pass --hub-model-id user/name."
        ) from None
    try:
        (api or HfApi(token=token)).whoami()
    except Exception as err:  # offline mode, no network, no token or a bad one: each its own exception type
        reason = " ".join(str(err).split())[:200]
        raise ValueError(
            f"--push-to-hub: the Hub does not answer for this token ({type(err).__name__}: {reason}); log in "
            "(`hf auth login`) or pass --hub-token, check the network and HF_HUB_OFFLINE, or drop --push-to-hub."
        ) from None


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload UPetu adapter",
    api: HfApi | None = None,
    ignore_patterns: list[str] | None = None,
):
    """Create the Hub model repo `repo_id` if needed and upload `folder` (minus `ignore_patterns`) to it.

    Returns the `huggingface_hub.CommitInfo` of the upload.
    """
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    extra = {"ignore_patterns": ignore_patterns} if ignore_patterns else {}
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model", **extra
    )


def push_to_hub(
    model: PeftModel,
    repo_id: str,
    adapter_name: str = "default",
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload UPetu adapter",
    api: HfApi | None = None,
):
    """Upload a UPetu adapter with its model card to the Hub repo `repo_id` (created if needed).

    Returns the `huggingface_hub.CommitInfo` of the upload.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapter(model, Path(tmp) / "adapter", adapter_name, metrics, datasets)
        return upload_folder(folder, repo_id, private, token, commit_message, api)
