"""The one exception of the converter: a user error (bad file, unmappable layout, bad option)."""

from __future__ import annotations

from collections.abc import Sequence


class ConversionError(ValueError):
    """A checkpoint or option the converter refuses; the message says why (the CLI exits with status 2)."""


def preview(keys: Sequence[str], limit: int = 8) -> str:
    """``"a, b, c (first 3 of 40)"``: the first `limit` keys and the count, for error messages."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} (first {limit} of {len(keys)})"
