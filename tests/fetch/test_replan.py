"""A no-op rerun's shortcut past the source's plan (``fetch.replan``): taken when nothing the
plan depends on changed, bypassed when an input, the mirror or the tiles did, so a changed
input still redoes exactly its tiles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from helpers.fake_runs import mtimes, run
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.manifest import read_manifest
from m3leo_tiles.fetch.plan import make_plan
from m3leo_tiles.fetch.replan import PLAN_KEY_NAME, plan_key
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import FetchOptions, get_source

WEST = [Tile.from_point(-118.0 + 0.05 * i, 34.0) for i in range(3)]  # cell N40W120
EAST = [Tile.from_point(-95.0 + 0.05 * i, 35.0) for i in range(3)]  # cell N40W100
TILES = WEST + EAST


def write_cell(folder: Path, name: str, west: float, value: float) -> Path:
    path = folder / name
    profile = dict(driver="GTiff", width=50, height=50, count=1, dtype="float32",
                   crs="EPSG:4326", transform=Affine(0.2, 0, west, 0, -0.2, 40.0),
                   nodata=-9999)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.full((1, 50, 50), value, "float32"))
    return path


@pytest.fixture
def world(tmp_path: Path):
    cells = tmp_path / "cells"
    cells.mkdir()
    write_cell(cells, "N40W120.tif", -120.0, 5.0)
    write_cell(cells, "N40W100.tif", -100.0, 7.0)
    params = {"inputs": str(cells / "{NS}{lat:02d}{EW}{lon:03d}.tif"), "tile_degrees": 10}
    data = {"name": "cells", "source": "raster", "resolution": 448, "bands": ["v"],
            "nodata": -9999, "dtype": "float32", "params": params}  # fmt: skip
    recipe = parse_recipe(data, "test", tmp_path / "cells.yaml")
    out = tmp_path / "out"
    return recipe, cells, out, DatasetLayout.of(out, "testaoi", recipe.dataset_name(None))


def test_a_no_op_rerun_takes_each_tiles_list_from_its_row_without_planning(
    cluster, world, monkeypatch
) -> None:
    recipe, _, out, layout = world
    assert run(cluster, recipe, out, TILES).ok == len(TILES)
    assert (layout.folder / PLAN_KEY_NAME).exists()
    adapter = get_source("raster")(recipe, FetchOptions())

    def no_plan(tiles):
        raise AssertionError("planned in full")

    monkeypatch.setattr(adapter, "plan", no_plan)
    rows = read_manifest(layout.manifest, lean=True)
    plan = make_plan(adapter, TILES, layout.folder, rows, overwrite=False,
                     key=plan_key(adapter, TILES))  # fmt: skip
    assert plan.reused and plan.skipped == len(TILES) and not plan.to_render
    # Another choice of tiles is another key: planned in full
    with pytest.raises(AssertionError, match="planned in full"):
        make_plan(adapter, TILES[:-1], layout.folder, rows, overwrite=False,
                  key=plan_key(adapter, TILES[:-1]))  # fmt: skip


def test_the_shortcut_is_bypassed_when_an_input_changes_and_exactly_its_tiles_are_redone(
    cluster, world
) -> None:
    recipe, cells, out, layout = world
    (cells / "N40W100.tif").unlink()  # the east cell is missing: its tiles are empty
    first = run(cluster, recipe, out, TILES)
    assert (first.ok, first.empty) == (len(WEST), len(EAST))
    assert run(cluster, recipe, out, TILES).skipped == len(TILES)  # the key is recorded
    before = mtimes(layout.folder)

    write_cell(cells, "N40W100.tif", -100.0, 7.0)  # a new file in the mirror
    again = run(cluster, recipe, out, TILES)
    assert (again.ok, again.skipped) == (len(EAST), len(WEST))
    after = mtimes(layout.folder)
    assert {name for name in after if before.get(name) != after[name]} == {
        f"{tile.identifier}.tif" for tile in EAST
    }

    write_cell(cells, "N40W120.tif", -120.0, 6.0)  # a source file replaced
    os.utime(cells / "N40W120.tif", ns=(1, 1))
    again = run(cluster, recipe, out, TILES)
    assert (again.ok, again.skipped) == (len(WEST), len(EAST))
    assert run(cluster, recipe, out, TILES).skipped == len(TILES)


def test_the_plans_key_follows_the_sources_files(tmp_path: Path) -> None:
    folder = tmp_path / "dem"
    folder.mkdir()
    write_cell(folder, "a.tif", -120.0, 1.0)
    params = {"inputs": [str(folder / "*.tif")]}
    data = {"name": "dem", "source": "raster", "resolution": 448, "bands": ["v"],
            "nodata": -9999, "dtype": "float32", "params": params}  # fmt: skip
    adapter = get_source("raster")(parse_recipe(data, "test", tmp_path / "d.yaml"))
    key = plan_key(adapter, TILES)
    assert key is not None and plan_key(adapter, TILES) == key
    os.utime(folder / "a.tif", ns=(1, 1))  # touched: it may have another footprint
    touched = plan_key(adapter, TILES)
    assert touched != key
    write_cell(folder, "b.tif", -100.0, 1.0)  # a new file the glob finds
    assert plan_key(adapter, TILES) not in (key, touched)
