"""Prediction files of `upetu-eval --predict-dir`: a table of scene labels, or one PNG mask per example.

Each task names its writer (`TaskSpec.prediction_writer`). A writer runs on the main process: `writer(gathered)`
per batch (the gathered `preds`, `index` and optionally `labels`, `scores`, `sizes`), then `close()`. Every file is
written atomically, and file names come from the dataset's `name` column made safe (`safe_file_name`), so nothing
is written outside the folder.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

from .._files import path_inside, safe_file_name, write_atomic


def example_names(ds: datasets.Dataset) -> list[str]:
    """A file-friendly name per row: the `name` column, else the image file stem, else the row number."""
    if "name" in ds.column_names:
        names = [str(n) for n in ds["name"]]
    else:
        column = "image" if "image" in ds.column_names else "image_a"
        values = ds.cast_column(column, datasets.Image(decode=False))[column]
        names = [Path(v["path"]).stem if v.get("path") else f"{i:06d}" for i, v in enumerate(values)]
    names = [safe_file_name(n, f"{i:06d}") for i, n in enumerate(names)]
    if len(set(names)) != len(names):
        names = [f"{i:06d}_{n}" for i, n in enumerate(names)]
    return names


class PredictionWriter:
    """Writes the predictions of `ds`'s examples into `folder` (subclasses: the file format)."""

    def __init__(self, folder: str | os.PathLike, ds: datasets.Dataset, class_names: list[str]) -> None:
        self.folder = Path(folder)
        self.class_names = class_names
        self.names = example_names(ds)

    def __call__(self, gathered: dict[str, torch.Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Write what was collected (nothing to do for writers that write per batch)."""


class TablePredictions(PredictionWriter):
    """`predictions.csv`, one row per image: index, name, path, predicted class (name and id), its score, and the
    label when the data is labeled; rows in dataset order."""

    def __init__(self, folder: str | os.PathLike, ds: datasets.Dataset, class_names: list[str]) -> None:
        super().__init__(folder, ds, class_names)
        values = ds.cast_column("image", datasets.Image(decode=False))["image"]
        self.paths = [v.get("path") or "" for v in values]
        self.rows: list[dict[str, Any]] = []

    def __call__(self, gathered: dict[str, torch.Tensor]) -> None:
        for j, index in enumerate(gathered["index"].tolist()):
            pred = gathered["preds"][j]
            row = {
                "index": index,
                "name": self.names[index],
                "path": self.paths[index],
                "prediction": self.class_names[int(pred)],
                "prediction_id": int(pred),
                "score": round(float(gathered["scores"][j]), 6),
            }
            if "labels" in gathered:
                row["label"] = self.class_names[int(gathered["labels"][j])]
            self.rows.append(row)

    def close(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = sorted(self.rows, key=lambda r: r["index"])
        fields = list(rows[0]) if rows else ["index", "name", "path", "prediction", "prediction_id", "score"]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.folder / "predictions.csv", text.getvalue())


class MaskPredictions(PredictionWriter):
    """One 8-bit PNG per example, `<name>.png`: the predicted class index of every pixel times `value_scale`
    (segmentation: class indices; change detection: 0 / 255), cropped back to the scene's own size."""

    #: multiplies the class index in the PNG
    value_scale: int = 1

    def __call__(self, gathered: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for j, index in enumerate(gathered["index"].tolist()):
            pred = gathered["preds"][j]
            if "sizes" in gathered:  # a scene padded to its batch's largest: crop it back to its own size
                height, width = gathered["sizes"][j].tolist()
                pred = pred[:height, :width]
            mask = pred.numpy().astype(np.uint8)
            if self.value_scale != 1:
                mask = mask * self.value_scale
            self._write_png(path_inside(self.folder, f"{self.names[index]}.png"), mask)

    @staticmethod
    def _write_png(path: Path, mask: np.ndarray) -> None:
        buffer = io.BytesIO()
        PIL.Image.fromarray(mask, mode="L").save(buffer, format="PNG")
        write_atomic(path, buffer.getvalue())


class ChangeMaskPredictions(MaskPredictions):
    """Change masks: 0 (no change) / 255 (change)."""

    value_scale = 255
