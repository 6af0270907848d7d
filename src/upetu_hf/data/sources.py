"""Where a dataset comes from, and the splits of a run: one `--data` value (a local folder in a task's layout, a
folder of `train/ val/ test/` sub-folders in that layout, a dataset saved with `save_to_disk`, data files that
`datasets.load_dataset` reads, or a Hub dataset id), several of them concatenated, named splits recognised,
seeded random splits and subsampling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, DatasetDict

from .._files import is_local
from ._io import list_image_files

#: Folder and split names, and the split each stands for.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}


def load_source(
    source: str,
    task: str,
    layout: str,
    is_layout: Callable[[Path], bool],
    load_folder: Callable[[Path], Dataset],
) -> tuple[Dataset | DatasetDict, str | None]:
    """Load one `--data` value of `task`, whose folders look like `layout` (`is_layout`, read by `load_folder`);
    returns the dataset and its Hub id (None for local data)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path)), None
        if is_layout(path):
            return load_folder(path), None
        subfolders = {
            SPLIT_NAMES[p.name.lower()]: p
            for p in sorted(path.iterdir())
            if p.is_dir() and p.name.lower() in SPLIT_NAMES and is_layout(p)
        }
        if subfolders:
            return DatasetDict({k: load_folder(p) for k, p in subfolders.items()}), None
        try:
            return datasets.load_dataset(str(path)), None
        except Exception as err:
            raise ValueError(
                f"{path} is not a {task} dataset folder: expected {layout}, train/ val/ test/ sub-folders in that "
                f"layout, a dataset saved with save_to_disk, or data files that datasets.load_dataset reads "
                f"({type(err).__name__}: {err})."
            ) from err
    if path.exists():
        raise ValueError(f"--data {source} is a file; pass a folder or a Hub dataset id.")
    if is_local(source):
        raise FileNotFoundError(f"Dataset folder {source} does not exist.")
    try:
        return datasets.load_dataset(source), source
    except Exception as err:
        raise ValueError(
            f"Could not load the dataset {source!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            "Check the id, your connection and HF_TOKEN, or pass a local folder."
        ) from err


def concatenate(parts: list[Dataset | DatasetDict]) -> Dataset | DatasetDict:
    """Several sources as one: single sets are concatenated, and so are sets with the same splits, split by split."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, Dataset) for p in parts):
        return datasets.concatenate_datasets(parts)
    if all(isinstance(p, DatasetDict) for p in parts) and len({tuple(sorted(p)) for p in parts}) == 1:
        return DatasetDict({k: datasets.concatenate_datasets([p[k] for p in parts]) for k in parts[0]})
    raise ValueError("Several --data values must all be single folders or all have the same splits.")


def named_splits(raw: DatasetDict, train_fraction: float | None) -> DatasetDict:
    """The `train` / `validation` / `test` splits of a dataset that has them (`SPLIT_NAMES` spellings)."""
    renamed = {SPLIT_NAMES.get(k.lower(), k): v for k, v in raw.items()}
    if train_fraction is not None:
        raise ValueError(
            f"The dataset already has the splits {sorted(raw)}; --train-fraction splits a single folder."
        )
    if "train" not in renamed:
        raise ValueError(f"The dataset has no train split (splits: {sorted(raw)}).")
    if "test" not in renamed and "validation" not in renamed:
        raise ValueError(
            f"The dataset has no test or validation split (splits: {sorted(raw)}); pass a single folder with "
            "--train-fraction instead."
        )
    return DatasetDict({k: renamed[k] for k in ("train", "validation", "test") if k in renamed})


def random_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded random split: `fraction` of the rows first (at least one row on each side), order kept."""
    order = np.random.default_rng(seed).permutation(len(ds))
    n_first = min(max(int(np.floor(len(ds) * fraction + 0.5)), 1), len(ds) - 1)
    return ds.select(sorted(order[:n_first].tolist())), ds.select(sorted(order[n_first:].tolist()))


def limit_splits(splits: DatasetDict, max_train: int | None, max_eval: int | None, seed: int) -> DatasetDict:
    """At most `max_train` training and `max_eval` other examples per split, a seeded random subset."""
    out = {}
    for name, ds in splits.items():
        limit = max_train if name == "train" else max_eval
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=seed).select(range(limit))
        out[name] = ds
    return DatasetDict(out)


def load_unlabeled_folder(folder: Path, paired: bool = False) -> Dataset | None:
    """Images without labels, for predictions, with a `name` column (the file stems): a flat image folder (or its
    `images/` sub-folder) as `image`, or with `paired` (change detection) `A/` + `B/` folders as `image_a` /
    `image_b`. None if `folder` is not such a folder."""

    def images(path: Path) -> dict[str, Path]:
        return {p.stem: p for p in list_image_files(path)}

    if paired:
        if not ((folder / "A").is_dir() and (folder / "B").is_dir()):
            return None
        a, b = images(folder / "A"), images(folder / "B")
        unpaired = sorted(set(a) ^ set(b))
        if unpaired:
            raise ValueError(f"Unpaired images in {folder}/A and {folder}/B: {unpaired[:10]}.")
        names = sorted(a)
        columns = {
            "image_a": [str(a[n]) for n in names],
            "image_b": [str(b[n]) for n in names],
            "name": names,
        }
        features = {"image_a": datasets.Image(), "image_b": datasets.Image()}
    else:
        found = images(folder / "images" if (folder / "images").is_dir() else folder)
        if not found:
            return None
        columns = {"image": [str(p) for p in found.values()], "name": list(found)}
        features = {"image": datasets.Image()}
    return Dataset.from_dict(
        columns, features=datasets.Features({**features, "name": datasets.Value("string")})
    )
