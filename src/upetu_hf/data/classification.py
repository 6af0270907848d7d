"""Scene-classification datasets: local ``<root>/<class>/*.jpg`` folders or Hub ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import PIL.Image
from datasets import ClassLabel, Dataset, Features, Image

from ._io import list_image_files, open_image, probe_image, utf8_named
from .transforms import image_to_array, resize_image


def load_image_folder(path: str | Path, verify: bool = False) -> Dataset:
    """Load ``<path>/<class>/*.{jpg,png,tif,...}`` as a ``Dataset`` with columns ``image`` and ``label``.

    ``image`` is a ``datasets.Image`` feature (files are referenced by path, not copied); ``label`` is a
    ``ClassLabel`` whose names are the class folder names sorted alphabetically. Every file's header is
    read (``verify=True`` decodes every pixel) so unreadable files fail here, naming the file.
    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` for an empty folder or one class.
    """
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist or is not a folder.")
    class_dirs = sorted(utf8_named(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {d.name: list_image_files(d) for d in class_dirs}
    files = {name: fs for name, fs in files.items() if fs}
    if not files:
        loose = list_image_files(root)
        hint = (
            f" It holds {len(loose)} images directly; put them in one sub-folder per class." if loose else ""
        )
        raise ValueError(
            f"No images found in {root}: expected <root>/<class>/*.jpg|png|tif with at least 2 class folders.{hint}"
        )
    if len(files) < 2:
        (only,) = files
        raise ValueError(
            f"Only one class ({only!r}) found in {root}; classification needs at least 2 class sub-folders."
        )
    names = sorted(files)
    paths: list[str] = []
    labels: list[int] = []
    for idx, name in enumerate(names):
        for file in files[name]:
            probe_image(file, verify)
            paths.append(str(file))
            labels.append(idx)
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": paths, "label": labels}, features=features)


def save_resized_image_folder(source: str | Path, target: str | Path, size: int) -> int:
    """Write every image of ``<source>/<class>/`` to ``<target>/<class>/<stem>.webp`` (lossless), resized to ``size`` x
    ``size`` as the training pipeline resizes it: runs on the copy at ``--image-size size`` see the pixels that runs
    on ``source`` see, from a folder small enough to ship to a remote GPU. Returns the number of images.

    Raises ``ValueError`` for a ``size`` below 1, a ``target`` inside ``source`` or holding files already, and two
    images of one class with the same stem (``a.jpg``, ``a.png``), which would overwrite each other.
    """
    root, out = Path(source).expanduser().resolve(), Path(target).expanduser().resolve()
    if size < 1:
        raise ValueError(f"size must be at least 1 pixel, got {size}.")
    if out == root or root in out.parents:
        raise ValueError(f"{out} is inside {root}: write the resized copy to a folder outside the dataset.")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: name a new or empty folder for the resized copy.")
    dataset = load_image_folder(root)
    names, copies = dataset.features["label"].names, {}  # every name is checked before anything is written
    for row in dataset.cast_column("image", Image(decode=False)):
        path = Path(row["image"]["path"])
        file = out / names[row["label"]] / f"{path.stem}.webp"
        if file in copies:
            raise ValueError(
                f"{path} and {copies[file]} share the name {path.stem!r} in one class: rename one."
            )
        copies[file] = path
    for file, path in copies.items():
        pixels = resize_image(image_to_array(open_image(str(path), str(path))), size)
        file.parent.mkdir(parents=True, exist_ok=True)
        # lossless at every compression effort; method 6 is about 20x slower than 4 for 1 % smaller files
        PIL.Image.fromarray(pixels).save(file, "WEBP", lossless=True, quality=100, method=4)
    return len(dataset)


def require_column(ds: Dataset, column: str, argument: str = "label_column") -> None:
    """Raise ``ValueError`` naming the columns found when ``column`` is missing from ``ds``."""
    if column not in ds.column_names:
        raise ValueError(
            f"Dataset has no column {column!r}; columns found: {ds.column_names}. "
            f"Pass {argument}=<name> naming the right column."
        )


def load_classification_dataset(
    name_or_path: str | Path,
    split: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    verify: bool = False,
    **load_kwargs: Any,
) -> Dataset | datasets.DatasetDict:
    """Load a classification dataset from a local class-folder tree or a Hugging Face Hub id.

    A local folder goes through :func:`load_image_folder`; anything else goes to
    ``datasets.load_dataset(name_or_path, split=split, **load_kwargs)``. The result always has the
    columns ``image`` (``datasets.Image``) and ``label`` (``ClassLabel``, at least 2 classes): Hub
    columns named by ``image_column`` / ``label_column`` are renamed, and a non-``ClassLabel`` label
    column is class-encoded. ``split`` is ignored for local folders (use :func:`stratified_split`).
    """
    if Path(name_or_path).expanduser().is_dir():
        return load_image_folder(name_or_path, verify=verify)
    loaded = datasets.load_dataset(str(name_or_path), split=split, **load_kwargs)
    if isinstance(loaded, datasets.DatasetDict):
        return datasets.DatasetDict(
            {k: _standardise(v, image_column, label_column) for k, v in loaded.items()}
        )
    return _standardise(loaded, image_column, label_column)


def _standardise(ds: Dataset, image_column: str, label_column: str) -> Dataset:
    require_column(ds, image_column, "image_column")
    require_column(ds, label_column, "label_column")
    if not isinstance(ds.features[image_column], Image):
        ds = ds.cast_column(image_column, Image())
    if not isinstance(ds.features[label_column], ClassLabel):
        ds = ds.class_encode_column(label_column)
    ds = ds.rename_columns(
        {k: v for k, v in {image_column: "image", label_column: "label"}.items() if k != v}
    )
    if ds.features["label"].num_classes < 2:
        raise ValueError(f"Dataset has only {ds.features['label'].num_classes} class; need at least 2.")
    return ds
