"""Unit tests of the lattice tile: ids, bounds, pixel grids."""

from __future__ import annotations

import pytest

from m3leo_tiles.core.errors import ConfigError, GridError
from m3leo_tiles.grid.tile import TILE_SIZE_M, Tile, parse_tile_id, pixels_per_side


@pytest.mark.parametrize(
    ("lon", "lat"), [(15.0, 48.0), (-58.4, -34.6), (178.4, -18.1), (-177.0, 64.0), (9.0, 0.0001)]
)
def test_from_point_round_trips_through_id(lon: float, lat: float) -> None:
    tile = Tile.from_point(lon, lat)
    assert Tile.from_id(tile.identifier) == tile
    assert tile.lonlat_polygon().contains_properly  # a real polygon
    x0, y0, x1, y1 = tile.bounds
    assert (x1 - x0, y1 - y0) == (TILE_SIZE_M, TILE_SIZE_M)


def test_equator_rows_meet_without_gap() -> None:
    north = Tile.from_point(9.0, 0.0001)
    south = Tile.from_point(9.0, -0.0001)
    assert (north.row, south.row) == (0, -1)
    assert north.identifier.startswith("32N_0000_")
    assert south.identifier.startswith("32S_0000_")
    assert south.crs == "EPSG:32732" and south.bounds[3] == 10_000_000


@pytest.mark.parametrize(("res", "pixels"), [(10, 448), (20, 224), (89.6, 50), (224, 20)])
def test_pixel_grid_divides_the_tile(res: float, pixels: int) -> None:
    grid = Tile(33, 1186, 111).pixel_grid(res)
    assert (grid.width, grid.height) == (pixels, pixels)
    assert grid.bounds == Tile(33, 1186, 111).bounds


@pytest.mark.parametrize("res", [30, 0, -10, 15])
def test_resolution_that_does_not_divide_is_refused(res: float) -> None:
    with pytest.raises(ConfigError, match=r"does not divide|positive"):
        pixels_per_side(res)


def test_bad_ids_and_latitudes() -> None:
    with pytest.raises(GridError, match="not a tile id"):
        Tile.from_id("nonsense")
    with pytest.raises(GridError, match="84"):
        Tile.from_point(10.0, 85.0)


def test_ids_parsed_in_bulk_are_the_tiles_parsed_one_by_one() -> None:
    from m3leo_tiles.grid.tile import parse_tile_ids

    ids = ["33N_1187_089", "33S_0000_001", "01N_0001_000", "60S_2000_150"]
    bulk = parse_tile_ids(ids)
    assert bulk == [parse_tile_id(i) for i in ids]
    assert [t.identifier for t in bulk] == ids and [t.epsg for t in bulk][:2] == [32633, 32733]
    assert hash(bulk[0]) == hash(Tile.from_id(ids[0]))
    assert parse_tile_ids(["61N_0001_001", "33N_0001_001"]) == [None, Tile(33, 1, 1)]
    assert parse_tile_ids(["my-field-3", "33N_0001_001"]) == [None, Tile(33, 1, 1)]


def test_lattice_tiles_are_the_parsed_tiles_made_when_asked_for() -> None:
    import pickle

    from m3leo_tiles.grid.tile import (
        LatticeTiles,
        lattice_tiles,
        parse_tile_ids,
        take_tiles,
        tile_ids,
    )

    ids = ["33N_1187_089", "33S_0000_001", "01N_0001_000", "60S_2000_150", "10N_0838_169"]
    tiles = lattice_tiles(ids)
    assert isinstance(tiles, LatticeTiles) and len(tiles) == 5
    parsed = parse_tile_ids(ids)
    assert list(tiles) == parsed and tiles == parsed and tiles == tuple(parsed)
    assert tiles[1] == Tile(33, -1, 1) and tiles[-1].identifier == "10N_0838_169"
    assert isinstance(tiles[1:3], LatticeTiles) and list(tiles[1:3]) == parsed[1:3]
    assert list(take_tiles(tiles, [4, 0])) == [parsed[4], parsed[0]]
    assert take_tiles(tuple(parsed), [4, 0]) == [parsed[4], parsed[0]]
    assert tile_ids(tiles) is tiles.identifiers and tile_ids(parsed) == ids
    assert tiles != parsed[:4] and tiles != lattice_tiles(ids[:4])
    assert pickle.loads(pickle.dumps(tiles[0])) == parsed[0]  # a made tile travels to workers
    assert lattice_tiles(["my-field-3", "33N_0001_001"]) is None
    assert lattice_tiles(["61N_0001_001"]) is None  # no zone 61: not a lattice tile
