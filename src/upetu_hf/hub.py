"""Model cards and publishing for UPetu adapters.

`PeftModel.push_to_hub` (inherited from transformers) replaces the README with a card that says
`library_name: transformers` and has no `base_model`; `push_to_hub` here uploads the adapter together with a
correct card instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from peft import PeftModel

from .tuner.config import ADAPTER_WEIGHTS_NAME, UPetuConfig

CARD_TAGS = ["upetu", "peft", "remote-sensing", "convnext", "parameter-efficient-fine-tuning"]


def adapter_card(
    model: PeftModel,
    adapter_name: str = "default",
    adapter_bytes: int | None = None,
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
) -> ModelCard:
    """A Hub model card for a UPetu adapter: `library_name: peft`, `base_model`, tags, and a summary table with
    the bit width, trainable share, adapter size on disk and (optionally) evaluation metrics."""
    config: UPetuConfig = model.peft_config[adapter_name]
    base_model = config.base_model_name_or_path or None
    counts = model.base_model.parameter_counts(adapter_name)
    share = 100.0 * counts["adapter"] / max(counts["backbone"], 1)
    tags = CARD_TAGS + ([f"base_model:adapter:{base_model}"] if base_model else [])
    data = ModelCardData(library_name="peft", base_model=base_model, tags=tags, datasets=datasets or None)
    rows = [
        ("method", "UPetu (EQAM + CAPM)" if config.use_eqam and config.use_capm else "UPetu (ablation)"),
        ("Q-Linear bit width", str(config.bits)),
        ("side-tensor bits", str(config.effective_side_bits)),
        ("EQAM bottleneck r", str(config.r)),
        ("CAPM prompt size", f"{config.prompt_size}x{config.prompt_size}"),
        ("trainable adapter parameters", f"{counts['adapter']:,} ({share:.2f} % of the backbone)"),
        ("task-head parameters (modules_to_save)", f"{counts['head']:,}"),
    ]
    if adapter_bytes is not None:
        rows.append(("adapter_model.safetensors", f"{adapter_bytes / 1000:.1f} KB"))
    for key, value in (metrics or {}).items():
        rows.append((f"eval {key}", f"{value:.4f}" if isinstance(value, float) else str(value)))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    base_line = f"`{base_model}`" if base_model else "a ConvNeXt model"
    body = f"""# UPetu adapter for {base_line}

A [UPetu](https://doi.org/10.1109/TGRS.2024.3382734) adapter (Dong, Gu, Liu, IEEE TGRS 2024) trained with
[upetu-hf](https://github.com/upetu-hf/upetu-hf): quantized EQAM adapters in every ConvNeXt block and CAPM
prompts on every stage, stored as packed {config.bits}-bit codes.

| property | value |
|---|---|
{table}

## Usage

```python
import upetu_hf  # registers UPetu with peft: import it before loading
from peft import PeftModel
from transformers import AutoModelForImageClassification

base = AutoModelForImageClassification.from_pretrained("{base_model or "<base model>"}")
model = PeftModel.from_pretrained(base, "<this repo id>")
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def save_adapter(
    model: PeftModel,
    save_directory: str | os.PathLike,
    adapter_name: str = "default",
    metrics: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
) -> Path:
    """Save one adapter (packed weights, config, model card) into `save_directory`, atomically per file.

    Everything is first written to a temporary folder next to the target and then moved in with `os.replace`,
    so an interrupted save never leaves a half-written file behind.
    """
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, selected_adapters=[adapter_name])
        written = tmp / adapter_name if adapter_name != "default" else tmp
        card = adapter_card(
            model, adapter_name, (written / ADAPTER_WEIGHTS_NAME).stat().st_size, metrics, datasets
        )
        card.save(written / "README.md")
        target.mkdir(exist_ok=True)
        for item in written.iterdir():
            if item.is_file():
                os.replace(item, target / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    api = api or HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapter(model, Path(tmp) / "adapter", adapter_name, metrics, datasets)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, repo_type="model"
        )
