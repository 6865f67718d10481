"""Chips are written whole or not at all, with the metadata a reader needs."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers.full_disk import FullDiskFile
from m3leo_tiles import __version__
from m3leo_tiles.core.errors import DiskFullError
from m3leo_tiles.dataset.chipfile import (
    chip_is_empty,
    read_chip_tags,
    remove_partials,
    write_chip,
)
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import Chip

TILE = Tile.from_point(12.5, 41.9)


def recipe_for(tmp_path: Path, resolution: float, dtype: str = "float32", nodata=-9999, **more):
    data = {
        "name": "r",
        "source": "raster",
        "resolution": resolution,
        "bands": ["a", "b"],
        "dtype": dtype,
        "nodata": nodata,
        "params": {"inputs": "x.tif"},
        **more,
    }
    return parse_recipe(data, "test", tmp_path / "r.yaml")


def chip_for(resolution: float, dtype: str = "float32") -> Chip:
    size = TILE.pixel_grid(resolution).width
    data = np.arange(2 * size * size).reshape(2, size, size).astype(dtype)
    return Chip(data, ("a", "b"))


@pytest.mark.parametrize(
    ("resolution", "compress", "codec", "tiled"),
    [
        (89.6, None, "zstd", False),  # the default codec: one strip per band up to 1024 px
        (10, None, "zstd", False),
        (10, "deflate", "deflate", True),  # as chips were written before: 256 px tiles
        (89.6, "deflate", "deflate", False),
        (10, "lzw", "lzw", True),
        (10, "none", None, False),
    ],
)
def test_written_chip_has_grid_metadata_and_tags(
    tmp_path: Path, resolution: float, compress: str | None, codec: str | None, tiled: bool
) -> None:
    more = {"compress": compress} if compress else {}
    recipe = recipe_for(tmp_path, resolution, **more)
    chip = chip_for(resolution)
    path = tmp_path / f"{TILE.identifier}.tif"
    write_chip(path, chip, TILE.pixel_grid(resolution), recipe, {"tile_id": TILE.identifier})
    with rasterio.open(path) as dataset:
        assert dataset.crs.to_epsg() == TILE.epsg
        assert tuple(dataset.bounds) == TILE.bounds
        assert dataset.descriptions == ("a", "b")
        assert dataset.nodata == -9999 and dataset.dtypes == ("float32", "float32")
        assert (dataset.compression.name.lower() if dataset.compression else None) == codec
        assert (dataset.block_shapes[0] == (256, 256)) is tiled
        np.testing.assert_array_equal(dataset.read(), chip.data)
    tags = read_chip_tags(path)
    assert tags["recipe"] == "r" and tags["recipe_hash"] == recipe.recipe_hash
    assert tags["software"] == f"m3leo-tiles {__version__}"
    assert tags["tile_id"] == TILE.identifier
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".yaml"] == [path.name]


def test_failure_mid_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    recipe = recipe_for(tmp_path, 89.6)

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr("m3leo_tiles.dataset.chipfile.os.replace", broken_replace)
    with pytest.raises(OSError, match="I/O error"):
        write_chip(tmp_path / "x.tif", chip_for(89.6), TILE.pixel_grid(89.6), recipe, {})
    assert [p.name for p in tmp_path.iterdir()] == []


def test_full_disk_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    recipe = recipe_for(tmp_path, 89.6)
    monkeypatch.setattr(
        "m3leo_tiles.core.atomic.open", FullDiskFile, raising=False
    )  # the one writer
    with pytest.raises(DiskFullError, match="no space left") as caught:
        write_chip(tmp_path / "x.tif", chip_for(89.6), TILE.pixel_grid(89.6), recipe, {})
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == []


def test_remove_partials_only_removes_partials(tmp_path: Path) -> None:
    for name in (".a.tif.12.ab12cd34.part", ".b.tif.99.ffffffff.part", "c.tif", "manifest.csv"):
        (tmp_path / name).write_text("x")
    from m3leo_tiles.dataset.layout import DatasetLayout

    assert remove_partials(tmp_path, DatasetLayout(tmp_path).scan().partials) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "manifest.csv"]


def test_chip_is_empty() -> None:
    nan = Chip(np.full((1, 4, 4), np.nan, "float32"), ("a",))
    assert chip_is_empty(nan, None) and chip_is_empty(nan, -9999)
    nodata = Chip(np.zeros((2, 4, 4), "uint8"), ("a", "b"))
    assert chip_is_empty(nodata, 0) and not chip_is_empty(nodata, None)
    one = Chip(np.zeros((2, 4, 4), "uint8"), ("a", "b"))
    one.data[1, 3, 3] = 7
    assert not chip_is_empty(one, 0)
    mixed = Chip(np.array([[[np.nan, -9999.0]]], "float32"), ("a",))
    assert chip_is_empty(mixed, -9999)
    assert chip_is_empty(Chip(np.zeros((0, 4, 4), "uint8"), ()), 0)  # no pixel at all
    assert not chip_is_empty(Chip(np.array([[[np.inf]]], "float32"), ("a",)), None)


def test_a_chip_whose_first_pixel_holds_a_value_is_decided_without_a_full_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker tests every chip for emptiness: a 16 MB chip need not cost a 8 M-pixel mask
    when its first pixel already says it holds data."""
    from m3leo_tiles.dataset import chipfile

    sizes: list[int] = []
    real = chipfile.missing_mask

    def spy(data, nodata, *, finite=True):
        sizes.append(data.size)
        return real(data, nodata, finite=finite)

    monkeypatch.setattr(chipfile, "missing_mask", spy)
    data = np.full((3, 64, 64), 5, "uint16")
    assert not chip_is_empty(Chip(data, ("a", "b", "c")), 0)
    assert max(sizes) == 1
    data[0, 0, 0] = 0  # the first pixel is nodata: the whole chip decides
    sizes.clear()
    assert not chip_is_empty(Chip(data, ("a", "b", "c")), 0)
    assert max(sizes) == data.size


@pytest.mark.parametrize("size", [0, 1, 7, 4096, 1_000_003])
def test_chip_checksums_are_zlibs_crc32_as_manifests_recorded_them(size: int) -> None:
    """Manifests written before keep matching: the faster CRC is the same CRC-32."""
    import zlib

    from m3leo_tiles.dataset.chipfile import Written

    payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert Written.of(payload) == Written(size, f"{zlib.crc32(payload):08x}")
