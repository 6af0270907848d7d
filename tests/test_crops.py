"""The default number of random training crops per scene (`data/crops.py`)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED, requires_shared

from upetu_hf.data.crops import default_crops_per_image


def test_crop_sized_tiles_keep_one_crop_per_image():
    assert default_crops_per_image([(256, 256)] * 100, 256) == 1
    assert default_crops_per_image([(224, 224), (200, 250)], 256) == 1
    assert default_crops_per_image([(4000, 4000)], None) == 1  # whole images: no crop


def test_large_scenes_are_covered_about_once_per_epoch():
    # issue 14: 7 aerial pairs of 952 x 640 at crop 256 -> 609,280 / 65,536 = 9.3 -> 10 crops each
    assert default_crops_per_image([(640, 952)] * 7, 256) == 10
    assert default_crops_per_image([(512, 512), (256, 256)], 256) == 3  # mean area 2.5 crops -> 3
    assert default_crops_per_image([(10000, 10000)], 256) == 64  # capped
    assert default_crops_per_image([(10000, 10000)], 256, max_crops=200) == 200


def test_a_handful_of_scenes_gets_enough_crops_per_epoch():
    # issue 14: 7 pairs in batches of 32 at 8 batches per epoch: 256 crops -> ceil(256 / 7) = 37 each
    assert default_crops_per_image([(640, 952)] * 7, 256, min_crops=8 * 32) == 37
    assert default_crops_per_image([(256, 256)] * 1000, 256, min_crops=256) == 1  # many tiles: unchanged
    assert default_crops_per_image([(256, 256)], 256, min_crops=1000) == 64  # still capped


def test_invalid_arguments():
    with pytest.raises(ValueError, match="No scene sizes"):
        default_crops_per_image([], 256)
    with pytest.raises(ValueError, match="must be positive"):
        default_crops_per_image([(10, 10)], 0)


@requires_shared
def test_oscd13_default_from_the_recorded_city_sizes():
    cities = json.loads((SHARED / "data" / "oscd13_s2" / "bands.json").read_text())["cities"]
    sizes = [tuple(c["shape"]) for c in cities.values()]
    mean_area = sum(h * w for h, w in sizes) / len(sizes)
    assert 100_000 < mean_area < 160_000  # 170-590 px a side
    assert default_crops_per_image(sizes, 128) == -(-int(mean_area) // 128**2)
    assert default_crops_per_image(sizes, 128) >= 7
