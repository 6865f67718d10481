"""A grid file of given tiles (all ``train``), as ``m3leo-tiles grid`` would write it."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd

from m3leo_tiles.grid.tile import Tile


def write_grid(path: Path, tiles: list[Tile], aoi: str = "testaoi") -> Path:
    frame = gpd.GeoDataFrame(
        {
            "identifier": [t.identifier for t in tiles],
            "aoi": [aoi] * len(tiles),
            "split": ["train"] * len(tiles),
        },
        geometry=[t.lonlat_polygon() for t in tiles],
        crs="EPSG:4326",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_file(path, driver="GeoJSON")
    return path
