"""Semantic-segmentation datasets from ``<root>/images/*`` + ``<root>/masks/*`` paired by file stem."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, Features, Image, Value

from ._io import check_pair_sizes, files_by_stem


def pair_by_stem(folders: dict[str, Path]) -> list[tuple[str, list[Path]]]:
    """Pair the images of several folders by file stem; raise ``ValueError`` naming unpaired files.

    ``folders`` maps a role (``"image"``, ``"mask"``, ...) to a folder. Returns ``(stem, [path per role])``
    sorted by stem.
    """
    found = {role: files_by_stem(folder) for role, folder in folders.items()}
    all_stems = set().union(*found.values())
    if not all_stems:
        raise ValueError(f"No image files found in {', '.join(str(f) for f in folders.values())}.")
    problems = []
    for stem in sorted(all_stems):
        missing = [role for role in found if stem not in found[role]]
        if missing:
            present = next(found[r][stem] for r in found if stem in found[r])
            where = ", ".join(f"{folders[r]}/{stem}.*" for r in missing)
            problems.append(f"{present} has no partner file (expected {where})")
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise ValueError(f"{len(problems)} unpaired file(s): {shown}.")
    return [(stem, [found[role][stem] for role in found]) for stem in sorted(all_stems)]


def load_segmentation_folder(
    path: str | Path, images_dir: str = "images", masks_dir: str = "masks", verify: bool = False
) -> Dataset:
    """Load ``<path>/images/*`` and ``<path>/masks/*`` (paired by file stem) as a ``Dataset``.

    Columns: ``image`` and ``mask`` (both ``datasets.Image``, referenced by path) and ``name`` (the
    stem). Mask pixel values are class indices, kept as stored (e.g. GID: 0..4 and 255 = ignore); they
    are validated by :class:`SegmentationTransform`. Raises ``ValueError`` naming the file when an image
    has no mask (or vice versa), a file cannot be read, or an image and its mask differ in size.
    """
    root = Path(path).expanduser().resolve()
    pairs = pair_by_stem({"image": root / images_dir, "mask": root / masks_dir})
    for _, files in pairs:
        check_pair_sizes(files, verify)
    features = Features({"image": Image(), "mask": Image(), "name": Value("string")})
    return Dataset.from_dict(
        {
            "image": [str(f[0]) for _, f in pairs],
            "mask": [str(f[1]) for _, f in pairs],
            "name": [stem for stem, _ in pairs],
        },
        features=features,
    )
