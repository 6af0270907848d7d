"""Write a pixel-identical, pre-resized copy of a class-per-folder image dataset (lossless WebP): exactly the
pixels the training pipeline feeds the model at `--size`, so runs on the copy match runs on the original folder,
and the copy is small enough to ship to a remote GPU machine (`upetu_hf.data.save_resized_image_folder`).

    python scripts/resize_image_folder.py ../shared/data/ucmerced /tmp/ucmerced-112 --size 112
"""

from __future__ import annotations

import argparse
from pathlib import Path

from upetu_hf.data import save_resized_image_folder


def main() -> None:
    """Resize `source` into `target`."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    try:
        count = save_resized_image_folder(args.source, args.target, args.size)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    print(f"wrote {count} images to {args.target}")


if __name__ == "__main__":
    main()
