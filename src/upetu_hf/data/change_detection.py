"""Change-detection datasets from ``<root>/A``, ``<root>/B`` and ``<root>/label`` paired by file stem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, Features, Image, Value, concatenate_datasets

from ._io import check_pair_sizes
from .segmentation import pair_by_stem


def _load_one(root: Path, a_dir: str, b_dir: str, label_dir: str, verify: bool) -> Dataset:
    pairs = pair_by_stem({"image_a": root / a_dir, "image_b": root / b_dir, "label": root / label_dir})
    for _, files in pairs:
        check_pair_sizes(files, verify)
    features = Features({"image_a": Image(), "image_b": Image(), "label": Image(), "name": Value("string")})
    columns = {
        "image_a": [str(f[0]) for _, f in pairs],
        "image_b": [str(f[1]) for _, f in pairs],
        "label": [str(f[2]) for _, f in pairs],
        "name": [stem for stem, _ in pairs],
    }
    return Dataset.from_dict(columns, features=features)


def load_change_detection_folder(
    paths: str | Path | Sequence[str | Path],
    a_dir: str = "A",
    b_dir: str = "B",
    label_dir: str = "label",
    verify: bool = False,
) -> Dataset:
    """Load one or several ``<root>/{A,B,label}/*`` folders (paired by stem) as one ``Dataset``.

    Columns: ``image_a``, ``image_b``, ``label`` (all ``datasets.Image``, referenced by path) and
    ``name`` (the stem). Labels are stored as-is (LEVIR/DSIFN: 0 = no change, 255 = change); the
    mapping to 0/1 happens in :class:`ChangeDetectionTransform`. Several roots (e.g. LEVIR + DSIFN) are
    concatenated in the given order. Raises ``ValueError`` naming the files for a missing partner, an
    unreadable file, or A/B/label size mismatch.
    """
    roots = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not roots:
        raise ValueError("No change-detection folder given.")
    parts = [_load_one(Path(r).expanduser().resolve(), a_dir, b_dir, label_dir, verify) for r in roots]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
