"""Chips written by tifffile with GDAL's tags read back exactly like chips GDAL writes itself."""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio
import tifffile
from affine import Affine

from m3leo_tiles.core.enums import ChipCodec
from m3leo_tiles.dataset.geotiff import (
    CODECS,
    GEO_KEYS,
    MODEL_TIEPOINT,
    ChipEncoder,
    ChipKind,
    encode_with_gdal,
)
from m3leo_tiles.grid.tile import Tile

NORTH = Tile.from_point(12.5, 41.9)  # Rome, EPSG:32633
SOUTH = Tile.from_point(-47.9, -15.8)  # Brasília, EPSG:32723 (false northing)
# Values GDAL escapes (twice) in its metadata XML, a control character it drops, non-ASCII.
TAGS = {"inputs": "a.tif;b & <c>.tif", "recipe": 'say "hi"\tto\x01 São Tomé', "tile_id": "x"}
TIFF_RESOLUTION = {"TIFFTAG_XRESOLUTION", "TIFFTAG_YRESOLUTION", "TIFFTAG_RESOLUTIONUNIT"}

KINDS = [
    # (tile, resolution, bands, dtype, nodata): strip and tiled layouts, integer and float
    (NORTH, 89.6, ("elevation",), "int16", -32768),
    (SOUTH, 89.6, ("agb", "agb_sd"), "float32", float("nan")),
    (NORTH, 20, ("B11", "B8A", "B05"), "uint16", 0),
    (SOUTH, 10, ("vv",), "float32", -9999.0),
    (NORTH, 224, ("Klasse-Größe",), "uint8", None),  # a non-ASCII band name
]


def chip_data(count: int, size: int, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        data = rng.normal(100, 30, (count, size, size)).astype(dtype)
        data[:, :3, :5] = np.nan
        return data
    limits = np.iinfo(dtype)
    return rng.integers(limits.min, limits.max, (count, size, size), endpoint=True, dtype=dtype)


def read_back(payload: bytes) -> dict:
    """Everything a reader of a chip sees through GDAL, plus the pixels."""
    with rasterio.MemoryFile(payload) as memory, memory.open() as dataset:
        return {
            "crs": dataset.crs.to_wkt(),
            "transform": dataset.transform,
            "shape": (dataset.count, dataset.height, dataset.width),
            "dtypes": dataset.dtypes,
            "nodata": dataset.nodata,
            "descriptions": dataset.descriptions,
            "tags": dataset.tags(),
            "structure": dataset.tags(ns="IMAGE_STRUCTURE"),
            "blocks": dataset.block_shapes,
            "compression": dataset.compression,
            "data": dataset.read(),
        }


def same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (np.isnan(a) and np.isnan(b)) or a == b


@pytest.mark.parametrize("codec", list(ChipCodec))
@pytest.mark.parametrize(("tile", "resolution", "bands", "dtype", "nodata"), KINDS)
def test_tifffile_chip_reads_back_like_the_gdal_chip(tile, resolution, bands, dtype, nodata, codec):
    encoder = ChipEncoder()
    grid = tile.pixel_grid(resolution)
    for seed in (1, 2):  # the first chip builds the kind's template, the second reuses it
        data = chip_data(len(bands), grid.width, dtype, seed)
        tags = {**TAGS, "tile_id": f"{tile.identifier}-{seed}"}
        payload = encoder.encode(
            data, grid.crs, grid.transform, dtype, nodata, bands, tags, codec=codec
        )
        ours = read_back(payload)
        kind = ChipKind(grid.crs, (grid.transform.a, grid.transform.e), len(bands), grid.height,
                        grid.width, dtype, nodata, bands, tuple(sorted(tags)), codec)  # fmt: skip
        gdal = read_back(encode_with_gdal(data, kind, grid.transform, tags))

        np.testing.assert_array_equal(ours.pop("data"), gdal.pop("data"))
        assert same_nodata(ours.pop("nodata"), gdal.pop("nodata"))
        extra = {key: ours["tags"].pop(key) for key in TIFF_RESOLUTION & set(ours["tags"])}
        assert extra in ({}, {"TIFFTAG_XRESOLUTION": "1", "TIFFTAG_YRESOLUTION": "1",
                              "TIFFTAG_RESOLUTIONUNIT": "1 (unitless)"})  # fmt: skip
        assert ours == gdal
        assert ours["transform"] == grid.transform
        assert ours["tags"]["tile_id"] == tags["tile_id"]
        assert ours["tags"]["inputs"] == TAGS["inputs"]  # XML special characters survive
        assert ours["tags"]["recipe"] == 'say "hi"\tto São Tomé'
        expected = CODECS[codec].gdal
        assert ours["structure"].get("COMPRESSION") == (expected.upper() if expected else None)
        predictor = CODECS[codec].predictor(dtype)
        assert ours["structure"].get("PREDICTOR") == (str(predictor) if predictor > 1 else None)


def test_every_codec_is_lossless_and_read_by_tifffile_as_by_gdal():
    """The Dataset reads chips with tifffile: each codec gives it GDAL's pixels, NaN kept."""
    grid = SOUTH.pixel_grid(10)
    data = chip_data(3, grid.width, "float32", 5)
    for codec in ChipCodec:
        payload = ChipEncoder().encode(
            data, grid.crs, grid.transform, "float32", None, ("a", "b", "c"), TAGS, codec=codec
        )
        np.testing.assert_array_equal(read_back(payload)["data"], data)
        with tifffile.TiffFile(io.BytesIO(payload)) as tiff:
            np.testing.assert_array_equal(tiff.asarray(), data)


def test_later_chips_are_written_by_tifffile_with_their_own_corner():
    encoder = ChipEncoder()
    grids = [Tile(33, 1036, col).pixel_grid(89.6) for col in (60, 61)]
    data = chip_data(1, 50, "int16", 3)
    payloads = [
        encoder.encode(data, g.crs, g.transform, "int16", -32768, ("e",), TAGS) for g in grids
    ]
    for payload, grid in zip(payloads, grids, strict=True):
        with tifffile.TiffFile(io.BytesIO(payload)) as tiff:
            tags = tiff.pages[0].tags
            assert "XResolution" in tags  # tifffile writes it, GDAL does not
            assert GEO_KEYS in tags
            assert tuple(tags[MODEL_TIEPOINT].value)[3:5] == (grid.transform.c, grid.transform.f)
    assert len(encoder._templates) == 1  # one GDAL template served both chips


def test_rotated_grid_falls_back_to_gdal():
    encoder = ChipEncoder()
    grid = NORTH.pixel_grid(89.6)
    rotated = grid.transform * Affine.rotation(10)
    data = chip_data(1, 50, "int16", 4)
    payload = encoder.encode(data, grid.crs, rotated, "int16", -32768, ("e",), TAGS)
    with rasterio.MemoryFile(payload) as memory, memory.open() as dataset:
        assert dataset.transform.almost_equals(rotated)
        np.testing.assert_array_equal(dataset.read(), data)


def band_tags_of(payload: bytes) -> list[dict[str, str]]:
    with rasterio.MemoryFile(payload) as memory, memory.open() as dataset:
        return [dataset.tags(index) for index in range(1, dataset.count + 1)]


def written_by_tifffile(payload: bytes) -> bool:
    with tifffile.TiffFile(io.BytesIO(payload)) as tiff:
        return "XResolution" in tiff.pages[0].tags  # tifffile writes it, GDAL does not


def test_chips_with_the_same_per_band_tags_reuse_a_template_from_the_second_on():
    """Earth Engine's chips tag each band with its source band and window, the same on every
    tile: from the second chip of such a kind tifffile writes them, and GDAL reads them back
    (per-band tags included) exactly as from the chip GDAL writes itself."""
    encoder = ChipEncoder()
    bands = ("mar_B2", "mar_B3", "jun_B2")
    band_tags = (
        {"source_band": "B2", "window": "2020-03-01/2020-04-01"},
        {"source_band": "B3", "window": "2020-03-01/2020-04-01", "note": 'a & <b> "c"'},
        {"source_band": "B2", "window": "2020-06-01/2020-07-01", "group": "São"},
    )
    grids = [Tile(33, 1036, col).pixel_grid(20) for col in (60, 61, 62)]
    written = []
    for seed, grid in enumerate(grids):
        data = chip_data(len(bands), grid.width, "uint16", seed)
        tags = {**TAGS, "tile_id": f"t{seed}"}
        payload = encoder.encode(data, grid.crs, grid.transform, "uint16", 0, bands, tags,
                                 band_tags)  # fmt: skip
        written.append(written_by_tifffile(payload))
        size = (grid.height, grid.width)
        kind = ChipKind(grid.crs, (grid.transform.a, grid.transform.e), len(bands), *size,
                        "uint16", 0, bands, tuple(sorted(tags)))  # fmt: skip
        reference = encode_with_gdal(data, kind, grid.transform, tags, band_tags)
        assert band_tags_of(payload) == band_tags_of(reference) == [dict(t) for t in band_tags]
        ours, gdal = read_back(payload), read_back(reference)
        np.testing.assert_array_equal(ours.pop("data"), gdal.pop("data"))
        for key in TIFF_RESOLUTION & set(ours["tags"]):
            ours["tags"].pop(key)
        assert ours == gdal
    assert written == [False, True, True]  # GDAL wrote the first, the template the others
    other = ({"source_band": "B4"}, {"source_band": "B3"}, {"source_band": "B2"})
    data = chip_data(len(bands), grids[0].width, "uint16", 9)
    payload = encoder.encode(data, grids[0].crs, grids[0].transform, "uint16", 0, bands, TAGS,
                             other)  # fmt: skip
    assert not written_by_tifffile(payload)  # other band tags: another kind, met once
    assert band_tags_of(payload) == [dict(t) for t in other]


def test_chips_with_band_scales_stay_with_gdal():
    encoder = ChipEncoder()
    grid = NORTH.pixel_grid(89.6)
    scaled = ({"scale": "0.5", "offset": "1", "unit": "dB"},)
    for seed in (1, 2):
        data = chip_data(1, 50, "int16", seed)
        payload = encoder.encode(data, grid.crs, grid.transform, "int16", None, ("a",), TAGS,
                                 scaled)  # fmt: skip
        assert not written_by_tifffile(payload)
        with rasterio.MemoryFile(payload) as memory, memory.open() as dataset:
            assert dataset.scales == (0.5,) and dataset.offsets == (1.0,)
            assert dataset.tags(1) == {"unit": "dB"}
