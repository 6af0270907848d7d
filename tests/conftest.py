"""Shared fixtures: tiny ConvNeXt configs (nothing downloaded) and the location of the real data in ../shared."""

from __future__ import annotations

import os

# The suite never touches the network: set the offline switches before huggingface_hub is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import ConvNextConfig, ConvNextV2Config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = (REPO_ROOT / ".." / "shared").resolve()
SHARED_BACKBONE = SHARED / "models" / "rs-convnext-atto-aid"

requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is missing")


def tiny_config(version: int = 1, num_labels: int = 5, **kwargs):
    """A ConvNeXt(V2) config small enough for CPU unit tests (4 stages, depths 1-1-2-1, widths 8..64)."""
    cls = ConvNextConfig if version == 1 else ConvNextV2Config
    defaults = dict(depths=[1, 1, 2, 1], hidden_sizes=[8, 16, 32, 64], num_labels=num_labels)
    defaults.update(kwargs)
    return cls(**defaults)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """One tiny run's inputs, built once for the suite: a random 4-stage ConvNeXt checkpoint (`checkpoint`), a
    3-class folder of noise images (`images`) and a segmentation folder (`segmentation`). Read-only for tests:
    copy before changing anything."""
    from test_train import write_checkpoint, write_class_folder, write_segmentation_folder

    root = tmp_path_factory.mktemp("tiny-assets")
    return {
        "checkpoint": write_checkpoint(root / "convnext-tiny"),
        "images": write_class_folder(root / "scenes"),
        "segmentation": write_segmentation_folder(root / "landcover"),
    }
