"""Runs over the Rome DEM sample: a grid file of its tiles, a raster recipe, a fetch on the
shared cluster; for the tests of what a run decides (tests/fetch)."""

from __future__ import annotations

from pathlib import Path

from helpers import grid_files
from m3leo_tiles.fetch.api import fetch
from m3leo_tiles.grid.tile import Tile

ROME = "dem/Rome-30m-DEM.tif"
ROME_TILES = [Tile.from_point(12.5, 42.0), Tile.from_point(12.46, 42.02)]


def write_grid(path: Path, tiles: list[Tile], aoi: str = "t") -> Path:
    return grid_files.write_grid(path, tiles, aoi)


def dem_recipe(folder: Path, **extra) -> Path:
    path = folder / "dem.yaml"
    lines = ["source: raster", "resolution: 448", "bands: [elevation]", "dtype: float32",
             "nodata: -9999", "resampling: bilinear", *extra.pop("lines", [])]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def fetch_on(cluster, recipe, grid: Path, out: Path, **kwargs):
    return fetch(recipe, grid=grid, out=out, scheduler=cluster.scheduler_address,
                 progress=False, **kwargs)  # fmt: skip
