"""``upetu-convert CHECKPOINT OUTPUT_DIR [options]``: the command-line front of [`convert_checkpoint`].

Exit status: 0 on success, 2 on a user error (unreadable or foreign checkpoint, bad option, refused OUTPUT_DIR),
with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from transformers.utils import logging

from .api import convert_checkpoint
from .errors import ConversionError


def _numbers(kind: type):
    """argparse type: ``"3,3,9,3"`` or ``"3"`` (with nargs="+") -> list of numbers."""

    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.replace(",", " ").split()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"not a list of {kind.__name__} values: {text!r}") from error

    return parse


def _flatten(values: list[list] | None) -> list | None:
    return None if values is None else [v for group in values for v in group]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upetu-convert",
        description=(
            "Convert a ConvNeXt checkpoint (original ConvNeXt / ConvNeXt-V2 release, timm, SMLFR, wrapped under "
            "model/state_dict/module or prefixed) into a Hugging Face ConvNeXt folder for from_pretrained and "
            "upetu-train --model."
        ),
    )
    parser.add_argument(
        "checkpoint", help=".pth/.pt/.bin (loaded with weights_only=True) or .safetensors file"
    )
    parser.add_argument("output_dir", help="folder to write (new, empty, or a previous conversion)")
    parser.add_argument("--depths", type=_numbers(int), nargs="+", help="blocks per stage, e.g. 3 3 9 3")
    parser.add_argument(
        "--hidden-sizes", type=_numbers(int), nargs="+", help="width per stage, e.g. 96 192 384 768"
    )
    parser.add_argument(
        "--num-labels", type=int, help="classification labels (default: the checkpoint's head)"
    )
    parser.add_argument("--label-names", nargs="+", help="label names, in class-index order")
    parser.add_argument(
        "--image-mean", type=_numbers(float), nargs="+", help="per-channel mean (default ImageNet)"
    )
    parser.add_argument(
        "--image-std", type=_numbers(float), nargs="+", help="per-channel std (default ImageNet)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="processor shortest edge (default 224)")
    parser.add_argument(
        "--prefix", help="encoder key prefix to strip, e.g. 'sparse_encoder.sp_cnn.' (default: found)"
    )
    parser.add_argument("--key", help="checkpoint entry holding the weights, e.g. model_ema (default: found)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder (only the converter's files change)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.disable_progress_bar()  # "Writing model shards" bars say nothing for one small file
    try:
        report = convert_checkpoint(
            args.checkpoint,
            args.output_dir,
            depths=_flatten(args.depths),
            hidden_sizes=_flatten(args.hidden_sizes),
            num_labels=args.num_labels,
            label_names=args.label_names,
            image_mean=_flatten(args.image_mean),
            image_std=_flatten(args.image_std),
            image_size=args.image_size,
            prefix=args.prefix,
            key=args.key,
            overwrite=args.overwrite,
        )
    except ConversionError as error:
        print(f"upetu-convert: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. an OUTPUT_DIR whose parent cannot be written
        print(f"upetu-convert: error: cannot write {args.output_dir!r}: {error}", file=sys.stderr)
        return 2
    head = f", {report.num_labels} labels" if report.num_labels is not None else ", no head"
    print(
        f"{report.model_class} (ConvNeXt V{report.version}, depths {report.depths}, widths {report.hidden_sizes}"
        f"{head}) from the {report.layout} layout"
        + (f" under {report.wrapper!r}" if report.wrapper else "")
        + (f" with prefix {report.prefix!r}" if report.prefix else "")
        + f": {report.loaded} tensors -> {report.output_dir}"
    )
    for label, keys in (("initialised", report.initialised), ("dropped", report.dropped)):
        if keys:
            print(f"  {label}: {', '.join(keys)}")
    if report.ignored:
        print(f"  ignored {len(report.ignored)} keys outside the encoder prefix (e.g. {report.ignored[0]})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
