"""GUNW layers read by GDAL's netCDF driver and warped onto tiles, against ``reproject``.

The products are replicas written from ARIA's published packaging specification
(tests/helpers/gunw_netcdf.py; no real GUNW file is small enough to ship): same groups,
variables, dimensions, attributes, fill values and georeferencing, small synthetic arrays.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from helpers.gunw_netcdf import FILL, ProductSpec, reference_warp, write_product
from m3leo_tiles.core.errors import SourceError
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.sources.gunw import _gunw_read as read

SPEC = ProductSpec(
    dt.date(2020, 1, 17), dt.date(2020, 1, 5), 64, "A", -118.15, 33.85, -117.85, 34.15
)


@pytest.fixture(scope="module")
def product_file(tmp_path_factory):
    return write_product(SPEC, tmp_path_factory.mktemp("gunw"))


def test_gdal_reads_each_layer_georeferenced_with_its_fill_as_nodata(product_file):
    lons, lats = SPEC.grid()
    for layer in read.LAYERS:
        with rasterio.open(read.layer_path(str(product_file), layer)) as dataset:
            assert dataset.crs.to_epsg() == 4326
            assert dataset.nodata == FILL[layer.variable]
            assert dataset.shape == (len(lats), len(lons))
            assert dataset.res == pytest.approx((1 / 1200, 1 / 1200))
            assert dataset.bounds.left == pytest.approx(lons[0] - 1 / 2400)
            assert dataset.bounds.top == pytest.approx(lats[0] + 1 / 2400)
            assert dataset.dtypes[0] == "float32"
            np.testing.assert_array_equal(dataset.read(1), SPEC.layers()[layer.variable])


@pytest.mark.parametrize(
    "point",
    [(-118.0, 34.0), (-117.95, 33.95), (-117.87, 34.12)],  # inside; inside; across the edge
)
def test_warps_equal_reproject(product_file, point):
    tile = Tile.from_point(*point)
    grid = tile.pixel_grid(89.6)
    product = read.Product(str(product_file), read.LAYERS)
    try:
        for layer in read.LAYERS:
            band = np.full((grid.height, grid.width), np.nan, "float32")
            product.warp(layer, grid, band, Resampling.bilinear)
            expected = reference_warp([product_file], layer, grid)
            np.testing.assert_array_equal(band, expected)
            if layer.variable == "connectedComponents":
                valid = band[~np.isnan(band)]
                assert set(np.unique(valid)) <= {0.0, 1.0, 2.0, 3.0}  # no -1: fill is nodata
    finally:
        product.close()


def test_component_zero_is_data_and_outside_the_footprint_is_nodata(product_file):
    west_tile = Tile.from_point(-118.1, 34.0)
    assert SPEC.footprint().exterior.intersects(west_tile.lonlat_polygon())  # astride its edge
    grid = west_tile.pixel_grid(89.6)
    product = read.Product(str(product_file), read.LAYERS)
    try:
        band = np.full((grid.height, grid.width), np.nan, "float32")
        product.warp(read.LAYERS_BY_BAND["connected_components"], grid, band, Resampling.bilinear)
    finally:
        product.close()
    assert (band == 0).any()
    assert np.isnan(band).any()  # the tile reaches past the footprint's skewed edge
    assert not (band == -1).any()


def test_a_file_that_is_not_a_product_is_a_source_error(tmp_path):
    bad = tmp_path / "S1-GUNW-bad.nc"
    bad.write_bytes(b"CDF\x01 truncated")
    with pytest.raises(SourceError, match="cannot open GUNW product"):
        read.Product(str(bad), read.LAYERS)
