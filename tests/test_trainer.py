"""UPetu under `transformers.Trainer` with its default optimizer (fused AdamW on recent torch)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from peft import PeftModel, get_peft_model
from transformers import ConvNextForImageClassification, Trainer, TrainingArguments

from upetu_hf import UPetuConfig


class Images(torch.utils.data.Dataset):
    """Sixteen fixed random 32-px images with labels 0-3."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(16, 3, 32, 32, generator=g)
        self.y = torch.arange(16) % 4

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def eval_loss(model: torch.nn.Module, data: Images) -> float:
    model.eval()
    with torch.no_grad():
        return model(pixel_values=data.x, labels=data.y).loss.item()


@pytest.mark.parametrize("bits", [1, 4])
def test_trainer_default_optimizer_evaluates_the_current_weights(tmp_path, bits):
    torch.manual_seed(0)
    model = get_peft_model(
        ConvNextForImageClassification(tiny_config(1, num_labels=4)), UPetuConfig(bits=bits)
    )
    train_data, eval_data = Images(0), Images(1)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-2,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    assert args.optim.value == "adamw_torch_fused"  # the default this test is about
    trainer = Trainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data)
    trainer.train()
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert len(losses) == 3 and len(set(losses)) == 3  # every evaluation sees the weights of its step
    final = trainer.evaluate()["eval_loss"]
    assert final == pytest.approx(eval_loss(copy.deepcopy(model), eval_data), abs=1e-6)
    # the saved adapter reproduces the trained model
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)
    base = ConvNextForImageClassification(tiny_config(1, num_labels=4))
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert eval_loss(loaded, eval_data) == pytest.approx(final, abs=1e-6)
