"""Runs of the test-only ``fake-synthetic`` source (helpers/fake_sources.py), whose outcome
each tile's params steer, on the shared cluster: for the tests of fetch/ and tools/."""

from __future__ import annotations

from pathlib import Path

from m3leo_tiles.fetch.api import fetch_tiles
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe

ORIGIN = Tile.from_point(-118.0, 34.0)
TILES = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(3) for j in range(4)]
IDS = [t.identifier for t in TILES]


def recipe(**params) -> Recipe:
    return Recipe(
        name="fake",
        source="fake-synthetic",
        resolution=224.0,
        bands=("value",),
        dtype="int16",
        nodata=-1,
        params=params,
    )


def run_on(address: str, the_recipe: Recipe, out: Path, tiles=TILES, **kwargs):
    return fetch_tiles(
        the_recipe, tiles, aoi="testaoi", out=out, scheduler=address, progress=False, **kwargs
    )


def run(cluster, the_recipe: Recipe, out: Path, tiles=TILES, **kwargs):
    return run_on(cluster.scheduler_address, the_recipe, out, tiles, **kwargs)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tif")}
