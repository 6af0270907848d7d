"""Multi-band GeoTIFF reading (`data/multispectral.py`) and one-pass per-band statistics
(`data/band_statistics.py`), on synthetic 13-band / 4-band TIFFs and on the real OSCD-13 scenes in ../shared."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import tifffile
from conftest import SHARED, requires_shared

from upetu_hf.data.band_statistics import BandStatistics, compute_band_statistics, normalize_bands
from upetu_hf.data.multispectral import (
    S2_L1C_BANDS,
    S2_RGB_BANDS,
    BandInfo,
    band_indices,
    probe_multiband,
    read_band_names,
    read_multiband_image,
)

OSCD = SHARED / "data" / "oscd13_s2"


def sentinel_like(seed: int, height: int = 37, width: int = 29) -> np.ndarray:
    """13 x H x W uint16 reflectance-like counts (band c around 1000 * (c + 1))."""
    rng = np.random.default_rng(seed)
    base = 1000 * np.arange(1, 14, dtype=np.int64)[:, None, None]
    return (base + rng.integers(0, 500, size=(13, height, width))).astype(np.uint16)


@pytest.fixture
def s2_file(tmp_path):
    """A 13-band planar, zlib-compressed uint16 GeoTIFF-like file (as OSCD-13 stores its scenes)."""
    array = sentinel_like(0)
    path = tmp_path / "scene13.tif"
    tifffile.imwrite(path, array, photometric="minisblack", compression="zlib")
    return path, array


@pytest.fixture
def rgbn_file(tmp_path):
    """A 4-band RGB+NIR aerial tile, pixel-interleaved (H, W, 4) uint8."""
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, size=(24, 31, 4), dtype=np.uint8)
    path = tmp_path / "tile4.tif"
    tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig")
    return path, array


# ------------------------------------------------------------------------------------------------ reading


def test_reads_a_13_band_planar_tiff(s2_file):
    path, array = s2_file
    image = read_multiband_image(path, num_bands=13)
    assert image.shape == (13, 37, 29) and image.dtype == np.float32
    np.testing.assert_array_equal(image, array.astype(np.float32))
    assert probe_multiband(path) == BandInfo(13, 37, 29, "uint16")


def test_reads_a_4_band_pixel_interleaved_tiff_band_first(rgbn_file):
    path, array = rgbn_file
    image = read_multiband_image(path)
    assert image.shape == (4, 24, 31)
    np.testing.assert_array_equal(image, array.transpose(2, 0, 1).astype(np.float32))
    assert probe_multiband(path) == BandInfo(4, 24, 31, "uint8")


def test_reads_one_band_per_page(tmp_path):
    array = sentinel_like(2, 10, 12)[:5]
    path = tmp_path / "pages.tif"
    for band in array:
        tifffile.imwrite(path, band, append=True)
    image = read_multiband_image(path, num_bands=5)
    np.testing.assert_array_equal(image, array.astype(np.float32))
    assert probe_multiband(path).num_bands == 5


def test_band_selection_keeps_the_given_order(s2_file):
    path, array = s2_file
    image = read_multiband_image(path, num_bands=13, bands=[3, 2, 1])
    np.testing.assert_array_equal(image, array[[3, 2, 1]].astype(np.float32))
    with pytest.raises(ValueError, match=r"band indices \[13\] must be non-empty and in \[0, 13\)"):
        read_multiband_image(path, bands=[13])


def test_band_count_that_disagrees_is_refused(rgbn_file):
    path, _ = rgbn_file
    with pytest.raises(ValueError, match=r"tile4.tif has 4 bands but 13 are expected"):
        read_multiband_image(path, num_bands=13)


def test_single_band_mask_given_as_an_image_is_refused(tmp_path):
    mask = (np.arange(20 * 30).reshape(20, 30) % 2 * 255).astype(np.uint8)
    png = tmp_path / "label.png"
    PIL.Image.fromarray(mask).save(png)
    tif = tmp_path / "label.tif"
    tifffile.imwrite(tif, mask)
    for path in (png, tif):
        with pytest.raises(ValueError, match="has a single band .* looks like a mask"):
            read_multiband_image(path, num_bands=13)
        with pytest.raises(ValueError, match="single band"):
            read_multiband_image(path)
        single = read_multiband_image(path, num_bands=1)  # explicitly single-band data is fine
        np.testing.assert_array_equal(single[0], mask.astype(np.float32))
    palette = PIL.Image.fromarray(mask // 255).convert("P")
    palette.save(tmp_path / "classes.png")
    with pytest.raises(ValueError, match="palette image"):
        read_multiband_image(tmp_path / "classes.png")


def test_non_image_tiffs_are_refused(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.tif is not a TIFF image"):
        read_multiband_image(text)
    with pytest.raises(ValueError, match="notes.tif is not a TIFF image"):
        probe_multiband(text)
    complex_tif = tmp_path / "fft.tif"
    tifffile.imwrite(complex_tif, np.ones((3, 8, 8), dtype=np.complex64), photometric="minisblack")
    with pytest.raises(ValueError, match="complex64 is not a numeric image type"):
        read_multiband_image(complex_tif)
    stack = tmp_path / "volume.tif"
    tifffile.imwrite(stack, np.ones((2, 3, 8, 8), dtype=np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="is not an image of bands x height x width"):
        read_multiband_image(stack)
    lzw = (
        tmp_path / "lzw.tif"
    )  # an LZW-compressed file needs imagecodecs: the error says so and names the file
    tifffile.imwrite(lzw, np.ones((3, 8, 8), dtype=np.uint16), photometric="minisblack")
    with tifffile.TiffFile(lzw, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(5)
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(
            ValueError, match="lzw.tif: cannot decode the TIFF raster.*pip install imagecodecs"
        ):
            read_multiband_image(lzw)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="Cannot read image file"):
        read_multiband_image(broken)


def test_band_indices_by_name_and_index():
    assert band_indices(S2_RGB_BANDS, S2_L1C_BANDS) == [3, 2, 1]
    assert band_indices(["B08", 0], S2_L1C_BANDS) == [7, 0]
    with pytest.raises(ValueError, match="Unknown band 'B13'"):
        band_indices(["B13"], S2_L1C_BANDS)
    with pytest.raises(ValueError, match="names a band twice"):
        band_indices(["B04", 3], S2_L1C_BANDS)
    with pytest.raises(ValueError, match="out of range"):
        band_indices([13], S2_L1C_BANDS)


def test_read_band_names(tmp_path):
    (tmp_path / "bands.json").write_text(json.dumps({"bands": ["R", "G", "B", "NIR"]}))
    assert read_band_names(tmp_path) == ["R", "G", "B", "NIR"]
    (tmp_path / "bad.json").write_text(json.dumps({"bands": []}))
    with pytest.raises(ValueError, match="non-empty list of band names"):
        read_band_names(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------------ statistics


def reference_statistics(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass float64 mean / population std over all pixels of all arrays (C, H, W)."""
    pixels = np.concatenate([a.reshape(a.shape[0], -1).astype(np.float64) for a in arrays], axis=1)
    return pixels.mean(axis=1), pixels.std(axis=1)


def test_band_statistics_match_a_two_pass_reference(tmp_path):
    arrays = [sentinel_like(seed, 20 + seed, 15 + 2 * seed) for seed in range(4)]
    paths = []
    for index, array in enumerate(arrays):
        paths.append(tmp_path / f"s{index}.tif")
        tifffile.imwrite(paths[-1], array, photometric="minisblack")
    stats = compute_band_statistics(paths, num_bands=13)
    mean, std = reference_statistics(arrays)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std, std, rtol=1e-9)
    assert stats.num_pixels == sum(a.shape[1] * a.shape[2] for a in arrays) and stats.num_files == 4
    # plain lists, JSON-serialisable for the run record, and back
    record = json.loads(json.dumps(stats.to_dict()))
    assert isinstance(record["mean"], list) and len(record["std"]) == 13
    assert BandStatistics.from_dict(record) == stats
    # a band selection gives the selected bands' statistics, in the selection's order
    rgb = compute_band_statistics(paths, bands=[3, 2, 1])
    np.testing.assert_allclose(rgb.mean, mean[[3, 2, 1]], rtol=1e-12)
    np.testing.assert_allclose(rgb.std, std[[3, 2, 1]], rtol=1e-9)


def test_band_statistics_keep_precision_for_large_offsets(tmp_path):
    """Values 60000 + {0, 1, 2}: the variance (~0.67) is 1e-10 of the squared mean. Unshifted float32 sums lose
    it; the shifted float64 sums keep it to 1e-9."""
    rng = np.random.default_rng(5)
    arrays = [(60000 + rng.integers(0, 3, size=(2, 64, 64))).astype(np.uint16) for _ in range(3)]
    paths = [tmp_path / f"f{i}.tif" for i in range(3)]
    for path, array in zip(paths, arrays):
        tifffile.imwrite(path, array, photometric="minisblack")
    stats = compute_band_statistics(paths)
    mean, std = reference_statistics(arrays)
    np.testing.assert_allclose(stats.std, std, rtol=1e-9)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-14)
    assert 0.7 < stats.std[0] < 0.9


def test_band_statistics_errors(tmp_path, s2_file, rgbn_file):
    with pytest.raises(ValueError, match="No image files"):
        compute_band_statistics([])
    with pytest.raises(ValueError, match="tile4.tif has 4 bands but the first file has 13"):
        compute_band_statistics([s2_file[0], rgbn_file[0]])
    with pytest.raises(ValueError, match="has 4 bands but 13 are expected"):
        compute_band_statistics([s2_file[0], rgbn_file[0]], num_bands=13)


def test_normalize_bands(s2_file):
    path, _ = s2_file
    image = read_multiband_image(path)
    stats = compute_band_statistics([path])
    normalised = normalize_bands(image, stats.mean, stats.std)
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(normalised.std(axis=(1, 2)), 1, atol=1e-4)
    constant = normalize_bands(np.full((2, 4, 4), 7.0), [7.0, 7.0], [0.0, 0.0])
    assert np.all(constant == 0)
    with pytest.raises(ValueError, match="with 3 means"):
        normalize_bands(image, [0.0] * 3, [1.0] * 3)


# ------------------------------------------------------------------------------------------------ real OSCD-13


@requires_shared
def test_oscd13_scenes_read_as_13_bands_with_their_recorded_sizes():
    names = read_band_names(OSCD)
    assert names == list(S2_L1C_BANDS)
    cities = json.loads((OSCD / "bands.json").read_text())["cities"]
    for city, facts in cities.items():
        for date in ("A", "B"):
            assert probe_multiband(OSCD / date / f"{city}.tif") == BandInfo(13, *facts["shape"], "uint16")
    image = read_multiband_image(
        OSCD / "A" / "bercy.tif", num_bands=13, bands=band_indices(S2_RGB_BANDS, names)
    )
    assert image.shape == (3, 198, 180)
    assert 0 < image.min() and image.max() < 20000  # reflectance counts, not 8-bit
    with pytest.raises(ValueError, match="bercy.png has a single band"):
        read_multiband_image(OSCD / "label" / "bercy.png", num_bands=13)


@requires_shared
def test_oscd13_band_statistics_in_one_pass():
    paths = [OSCD / date / f"{city}.tif" for city in ("bercy", "paris") for date in ("A", "B")]
    stats = compute_band_statistics(paths, num_bands=13)
    mean, std = reference_statistics([read_multiband_image(p) for p in paths])
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.std, std, rtol=1e-9)
    assert all(0 < m < 5000 for m in stats.mean) and all(s > 1 for s in stats.std)
    assert int(np.argmin(stats.mean)) == S2_L1C_BANDS.index("B10")  # cirrus: reflects little over land
