"""Quicklook: a mosaic of real chips with the tile outlines drawn where the tiles are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import Resampling, reproject

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.grid import Tile
from m3leo_tiles.tools.quicklook import GRID_COLOUR, LABEL_HEIGHT, NODATA_COLOUR, quicklook


def _write_dem_chips(shared_data: Path, folder: Path) -> list[Tile]:
    """Nine 89.6 m chips around the LA DEM mosaic, warped with plain rasterio."""
    folder.mkdir(parents=True)
    centre = Tile.from_point(-118.0, 34.0)
    sources = [rasterio.open(shared_data / f"dem/los_angeles_tile_{i}.tif") for i in range(3)]
    tiles = [Tile(centre.zone, centre.row + dr, centre.col + dc) for dr in (-1, 0, 1)
             for dc in (-1, 0, 1)]  # fmt: skip
    for tile in tiles:
        grid = tile.pixel_grid(89.6)
        data = np.full((1, grid.height, grid.width), -9999, np.float32)
        for source in sources:
            reproject(rasterio.band(source, 1), data[0], dst_transform=grid.transform,
                      dst_crs=grid.crs, dst_nodata=-9999, init_dest_nodata=False,
                      resampling=Resampling.bilinear)  # fmt: skip
        profile = {
            "driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1,
            "dtype": "float32", "crs": grid.crs, "transform": grid.transform, "nodata": -9999,
        }  # fmt: skip
        with rasterio.open(folder / f"{tile.identifier}.tif", "w", **profile) as out:
            out.write(data)
    for source in sources:
        source.close()
    return tiles


def test_quicklook_draws_mosaic_and_grid(shared_data: Path, tmp_path: Path) -> None:
    _write_dem_chips(shared_data, tmp_path / "demo-dem")
    png = quicklook([tmp_path / "demo-dem"], tmp_path / "look.png", max_px=300)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    panel = pixels[8 + LABEL_HEIGHT : 8 + LABEL_HEIGHT + 300, 8 : 8 + 300]
    # 3 × 3 tiles on 300 px: outlines every 100 px, in the grid colour.
    for offset in (0, 100, 200, 299):
        assert (panel[150, offset] == GRID_COLOUR).all()
        assert (panel[offset, 150] == GRID_COLOUR).all()
    # The DEM covers the centre tile: real heights there, stretched to more than a few greys.
    centre = panel[110:190, 110:190].reshape(-1, 3)
    assert len(np.unique(centre[:, 0])) > 20
    # The top-left tile lies outside the mosaic: all nodata grey apart from its outline.
    corner = panel[5:95, 5:95].reshape(-1, 3)
    assert (corner == NODATA_COLOUR).all()
    assert not list(tmp_path.glob(".*.part"))


def test_quicklook_of_folder_without_chips_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no chips"):
        quicklook([tmp_path / "empty"], tmp_path / "look.png")
    assert not (tmp_path / "look.png").exists()
