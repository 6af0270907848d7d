"""How many random training crops to draw from each scene per epoch (`--crops-per-image`).

One random crop per scene and epoch starves datasets of a few large scenes (7 change-detection pairs of
952 x 640 at crop 256: 7 crops, one optimizer step, per epoch). The default draws as many crops as it takes to
cover the average scene once::

    k = min(max_crops, max(1, ceil(mean_i(H_i * W_i) / crop_size^2)))

so datasets of crop-sized tiles keep one crop per image (k = 1) and each pixel of a large scene is seen about
once per epoch (952 x 640 at 256: k = 10). A handful of scenes also gets at least `min_crops` crops per epoch in
all (`upetu-train` asks for 8 batches)::

    k = min(max_crops, max(k, ceil(min_crops / n)))

(7 pairs, batches of 32: k = ceil(256 / 7) = 37, 8 optimizer steps per epoch instead of 2). An epoch of `n` scenes
then holds `n * k` crops; with a
`datasets.Dataset` that is ``train.select([i for i in range(n) for _ in range(k)])``, each copy drawing its own
seeded crop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def default_crops_per_image(
    sizes: Iterable[tuple[int, int]], crop_size: int | None, max_crops: int = 64, min_crops: int = 0
) -> int:
    """`k` of the module docstring from the scenes' `(height, width)` (read at scan time), the crop side and the
    fewest crops an epoch should hold (`min_crops`, e.g. 8 batches).

    `crop_size=None` (whole images, no crop) gives 1.
    """
    if crop_size is None:
        return 1
    if crop_size < 1 or max_crops < 1:
        raise ValueError(f"crop_size ({crop_size}) and max_crops ({max_crops}) must be positive.")
    areas = [int(h) * int(w) for h, w in sizes]
    if not areas:
        raise ValueError("No scene sizes given.")
    mean_area = sum(areas) / len(areas)
    cover = max(1, math.ceil(mean_area / crop_size**2))
    return min(max_crops, max(cover, math.ceil(min_crops / len(areas))))


__all__ = ["default_crops_per_image"]
