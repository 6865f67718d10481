"""Chips of every codec, old deflate chips among them, read alike by every reader.

Two datasets of the same pixels on the same tiles: one all deflate (chips as written before
the codec was a choice), one whose tiles each use another codec (a dataset fetched partly
before, partly after a change of codec). Every reader must see the same in both: GDAL
(rasterio), tifffile, the Dataset's chip reader, stats, pack, the Dataset, quicklook and
status --verify.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import tifffile
import torch

from m3leo_tiles.core.enums import ChipCodec, TileStatus
from m3leo_tiles.dataset.chipfile import write_chip
from m3leo_tiles.dataset.chipread import _tifffile_layout, read_blocks
from m3leo_tiles.dataset.manifest import ManifestRow, write_manifest
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.ml import M3LEODataset
from m3leo_tiles.ml.inputs import read_chip_array
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import Chip
from m3leo_tiles.tools.pack import open_pack, pack
from m3leo_tiles.tools.quicklook import quicklook
from m3leo_tiles.tools.stats import compute_stats, read_stats, write_stats
from m3leo_tiles.tools.status import verify_dataset

WORLDCOVER = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100])
TILES = [Tile(33, 1036, 60 + i) for i in range(8)]
CODECS = list(ChipCodec)
# (name, resolution, bands, dtype, nodata): 448 px (tiled when deflate or lzw) and 50 px chips
KINDS = [
    ("opt", 89.6, ["B2", "B3"], "uint16", 0),
    ("sar", 10, ["vv", "vh", "ratio"], "float32", -9999.0),  # deflate: predictor 3 in tiles
    ("esawc", 89.6, ["map"], "uint8", 0),  # WorldCover's classes: a categorical target
]


def pixels(index: int, size: int, count: int, dtype: str, nodata: float) -> np.ndarray:
    rng = np.random.default_rng(index)
    data = rng.normal(1000, 300, (count, size, size)).clip(1, 60000)
    if dtype == "uint8":
        data = rng.choice(WORLDCOVER, (count, size, size))
    data = data.astype(dtype)
    data[:, :4, :6] = nodata
    return data


def write_dataset(root: Path, name: str, kind: tuple, codec_of) -> Path:
    label, resolution, bands, dtype, nodata = kind
    folder = root / "data" / "tst" / name
    folder.mkdir(parents=True)
    rows = {}
    for index, tile in enumerate(TILES):
        spec = {"name": label, "source": "raster", "params": {"inputs": "/none.tif"},
                "resolution": resolution, "bands": bands, "dtype": dtype, "nodata": nodata,
                "compress": str(codec_of(index))}  # fmt: skip
        recipe = parse_recipe(spec, "test")
        grid = tile.pixel_grid(resolution)
        data = pixels(index, grid.height, len(bands), dtype, nodata)
        written = write_chip(folder / f"{tile.identifier}.tif", Chip(data, tuple(bands)), grid,
                             recipe, {})  # fmt: skip
        rows[tile.identifier] = ManifestRow(
            tile.identifier, TileStatus.OK, recipe_hash=recipe.recipe_hash,
            bytes=written.size, crc32=written.crc32,
        )  # fmt: skip
    write_manifest(folder / "manifest.csv", rows)
    return folder


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """``deflate``: all chips deflate; ``mixed``: tile i in ``CODECS[i % 4]``; one grid."""
    roots = {}
    for tree in ("deflate", "mixed"):
        root = tmp_path_factory.mktemp(tree)
        grid = root / "grids" / "tst" / "tiles.geojson"
        grid.parent.mkdir(parents=True)
        gpd.GeoDataFrame(
            {"identifier": [t.identifier for t in TILES], "aoi": "tst", "split": "train"},
            geometry=[t.lonlat_polygon() for t in TILES], crs="EPSG:4326",
        ).to_file(grid, driver="GeoJSON")  # fmt: skip
        for kind in KINDS:
            codec_of = (lambda i: ChipCodec.DEFLATE) if tree == "deflate" else (
                lambda i: CODECS[i % len(CODECS)])  # fmt: skip
            folder = write_dataset(root, kind[0], kind, codec_of)
            write_stats(compute_stats(folder, "train", grids_dir=root / "grids"), folder)
        roots[tree] = root
    return roots


def test_every_codec_reads_back_the_same_pixels_everywhere(trees: dict[str, Path]) -> None:
    mixed = trees["mixed"] / "data" / "tst"
    seen = set()
    for label, resolution, bands, dtype, nodata in KINDS:
        for index, tile in enumerate(TILES):
            path = mixed / label / f"{tile.identifier}.tif"
            expected = pixels(index, tile.pixel_grid(resolution).height, len(bands), dtype, nodata)
            with rasterio.open(path) as chip:  # GDAL
                np.testing.assert_array_equal(chip.read(), expected)
                seen.add(chip.compression.name.lower() if chip.compression else "none")
            np.testing.assert_array_equal(tifffile.imread(path).reshape(expected.shape), expected)
            np.testing.assert_array_equal(read_chip_array(path), expected)
            fast = read_blocks(path)  # the Dataset's own fast path: taken for every codec
            assert fast is not None
            np.testing.assert_array_equal(fast, expected)
    assert seen == {str(c) for c in ChipCodec}


def test_stats_pack_dataset_quicklook_and_verify_see_no_codec(
    trees: dict[str, Path], tmp_path: Path
) -> None:
    folders = {tree: root / "data" / "tst" for tree, root in trees.items()}
    for label, *_ in KINDS:
        stats = {t: read_stats(f / label).bands for t, f in folders.items()}
        assert stats["deflate"] == stats["mixed"]
        for tree, folder in folders.items():
            verified = verify_dataset(folder / label)
            assert verified.checked == len(TILES) and not verified.damaged, tree
    samples = {}
    for tree, root in trees.items():
        inputs = [kind[0] for kind in KINDS[:2]]
        grid = root / "grids" / "tst" / "tiles.geojson"
        options = {"target": "esawc", "normalize": True}
        dataset = M3LEODataset(root / "data", grid, inputs, use_pack=False, **options)
        samples[tree] = [dataset[i] for i in range(len(dataset))]
        for label, *_ in KINDS:
            pack(folders[tree] / label)
        packed = M3LEODataset(root / "data", grid, inputs, **options)
        assert all(spec.packed for spec in packed.inputs)
        for index, sample in enumerate(samples[tree]):
            assert torch.equal(packed[index]["image"], sample["image"])
    for one, other in zip(samples["deflate"], samples["mixed"], strict=True):
        assert torch.equal(one["image"], other["image"])
        assert torch.equal(one["mask"], other["mask"])
    for label, *_ in KINDS:
        np.testing.assert_array_equal(open_pack(folders["deflate"] / label),
                                      open_pack(folders["mixed"] / label))  # fmt: skip
    looks = [quicklook([folders[tree] / "opt"], tmp_path / f"{tree}.png", max_px=200).read_bytes()
             for tree in trees]  # fmt: skip
    assert looks[0] == looks[1]


def test_other_layouts_are_read_the_general_way(tmp_path: Path) -> None:
    """Pixel-interleaved bands (another writer's layout): no fast path, the same pixels."""
    data = np.arange(3 * 20 * 30, dtype="uint16").reshape(20, 30, 3)
    path = tmp_path / "contig.tif"
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="contig", compression="zlib")
    assert read_blocks(path) is None
    np.testing.assert_array_equal(read_chip_array(path), np.moveaxis(data, -1, 0))


def test_other_tiffs_are_read_the_general_way(tmp_path: Path) -> None:
    """BigTIFF and big-endian files: their pixels are read whichever way reads them."""
    data = np.arange(2 * 30 * 40, dtype="float32").reshape(2, 30, 40)
    for name, options in {"big.tif": {"bigtiff": True}, "be.tif": {"byteorder": ">"}}.items():
        tifffile.imwrite(tmp_path / name, data, planarconfig="separate", **options)
        np.testing.assert_array_equal(read_chip_array(tmp_path / name), data)


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_read_blocks_writes_into_a_given_array_that_fits(trees: dict[str, Path], codec: str):
    """A chip is decoded into ``out`` when ``out`` has its shape and dtype (a row of a
    batch: no copy), into a new array otherwise; the same pixels either way."""
    index = CODECS.index(ChipCodec(codec))  # tile i of the mixed tree is in CODECS[i % 4]
    label, resolution, bands, dtype, nodata = KINDS[1]
    path = trees["mixed"] / "data" / "tst" / label / f"{TILES[index].identifier}.tif"
    expected = pixels(index, TILES[index].pixel_grid(resolution).height, len(bands), dtype, nodata)
    out = np.zeros(expected.shape, dtype)
    assert read_blocks(path, out) is out
    np.testing.assert_array_equal(out, expected)
    for other in (np.zeros(expected.shape, "float64"), np.zeros(expected.shape[1:], dtype)):
        read = read_blocks(path, other)
        assert read is not other and not other.any()
        np.testing.assert_array_equal(read, expected)


def test_uncompressed_strips_of_any_height_and_a_truncated_chip(tmp_path: Path) -> None:
    """GDAL's uncompressed chips with several strips per band are read row for row; a chip
    cut short is an error (the Dataset then treats it as missing), never short pixels."""
    data = np.random.default_rng(0).normal(size=(3, 50, 40)).astype("float32")
    path = tmp_path / "strips.tif"
    profile = {"driver": "GTiff", "width": 40, "height": 50, "count": 3, "dtype": "float32",
               "interleave": "band", "blockysize": 16, "crs": "EPSG:32633",
               "transform": rasterio.transform.from_origin(500000, 4600000, 10, 10)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as chip:
        chip.write(data)
    with open(path, "rb") as handle:
        layout = _tifffile_layout(handle)
    assert layout is not None and layout.compression == 1 and len(layout.offsets) == 3 * 4
    np.testing.assert_array_equal(read_blocks(path), data)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[: max(layout.offsets) + 100])
    with pytest.raises(ValueError, match="shorter than its pixels"):
        read_blocks(cut)
