"""The lattice over real geometries: exact squares, no overlap in a zone, no gaps anywhere."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import box

from m3leo_tiles.core.errors import GridError
from m3leo_tiles.grid import Tile, grid_geometry, lattice_cells, load_aoi
from m3leo_tiles.grid.lattice import zone_band
from m3leo_tiles.grid.tile import TILE_SIZE_M


def _ids(cells) -> set[str]:
    return set(cells.identifiers().tolist())


def test_every_tile_is_an_exact_square_of_its_zone() -> None:
    cells = lattice_cells(box(-75.0, -2.0, -71.0, 2.0))  # zones 18/19, across the equator
    tiles = cells.tiles()
    assert len(tiles) == len(set(tiles)) > 300
    zone, row, col, lons, lats = cells.zone, cells.row, cells.col, cells.lons, cells.lats
    for index in np.random.default_rng(1).choice(len(tiles), 60, replace=False):
        tile = Tile(int(zone[index]), int(row[index]), int(col[index]))
        assert tiles[index] == tile
        to_utm = Transformer.from_crs(4326, tile.epsg, always_xy=True)
        x, y = to_utm.transform(lons[index], lats[index])
        x0, y0, x1, y1 = tile.bounds
        np.testing.assert_allclose(x, [x0, x1, x1, x0], atol=1e-4)
        np.testing.assert_allclose(y, [y0, y0, y1, y1], atol=1e-4)
        assert (x1 - x0, y1 - y0) == (TILE_SIZE_M, TILE_SIZE_M)
        assert tile.x_min % 20 == 0 and tile.y_min % 20 == 0  # S2 pixels land on chip pixels


def test_no_two_tiles_of_a_zone_overlap(country) -> None:
    cells = lattice_cells(country("Portugal"))
    keys = list(zip(cells.zone.tolist(), cells.row.tolist(), cells.col.tolist(), strict=True))
    assert len(keys) == len(set(keys))
    for zone in set(cells.zone.tolist()):
        pick = cells.zone == zone
        x0 = cells.col[pick] * float(TILE_SIZE_M)
        y0 = cells.row[pick] * float(TILE_SIZE_M)
        squares = shapely.box(x0, y0, x0 + TILE_SIZE_M, y0 + TILE_SIZE_M)
        left, right = shapely.STRtree(squares).query(squares, predicate="intersects")
        pairs = left != right
        overlap = shapely.area(shapely.intersection(squares[left[pairs]], squares[right[pairs]]))
        assert overlap.max(initial=0.0) == 0.0  # neighbours share edges, nothing more


def test_no_gaps_in_a_real_aoi_including_seams_and_coast(points_in, gaps) -> None:
    aoi = load_aoi("pakin").geometry  # zones 41-47, a long coast, islands
    ids = _ids(lattice_cells(aoi))
    assert gaps(points_in(aoi, 3000, seed=2), ids) == []
    # Points hugging each seam from both sides, and points right on the coast.
    seam_points = []
    for zone in range(41, 47):
        seam = zone_band(zone)[1]
        for lat in np.linspace(aoi.bounds[1], aoi.bounds[3], 400):
            for lon in (seam - 1e-7, seam + 1e-7, seam - 0.02, seam + 0.02):
                if aoi.contains(shapely.Point(lon, lat)):
                    seam_points.append((lon, lat))
    assert len(seam_points) > 500
    assert gaps(np.array(seam_points), ids) == []
    coast = shapely.get_coordinates(aoi.boundary)[::25]
    assert gaps(coast, ids) == []


def test_no_strip_lost_at_the_equator(points_in, gaps) -> None:
    aoi = box(-50.5, -1.0, -49.0, 1.0)  # Amazon mouth: zones 22 (and 23's edge)
    cells = lattice_cells(aoi)
    ids = _ids(cells)
    equator = np.array(
        [(lon, lat) for lon in np.linspace(-50.5, -49.0, 300) for lat in (1e-9, -1e-9, 0.0)]
    )
    assert gaps(equator, ids) == []
    assert gaps(points_in(aoi, 2000), ids) == []
    assert {"N", "S"} == {i[2] for i in ids}
    rows = set(cells.row.tolist())
    assert rows == set(range(min(rows), max(rows) + 1)) and {-1, 0} <= rows  # no row skipped


def test_grid_geometry_returns_tiles_in_a_stable_order() -> None:
    first = grid_geometry(box(12.3, 41.8, 12.7, 42.1))
    again = grid_geometry(box(12.3, 41.8, 12.7, 42.1))
    assert first == again and all(isinstance(t, Tile) for t in first)
    assert {t.zone for t in first} == {33}


def test_southern_hemisphere_ids_and_crs(country, points_in, gaps) -> None:
    aoi = country("Uruguay")
    cells = lattice_cells(aoi)
    tiles = cells.tiles()
    assert all(t.hemisphere == "S" and t.crs.startswith("EPSG:327") for t in tiles)
    assert all(Tile.from_id(t.identifier) == t for t in tiles[::50])
    south_tile = tiles[0]
    assert south_tile.bounds[1] == south_tile.row * TILE_SIZE_M + 10_000_000
    assert gaps(points_in(aoi, 1500), _ids(cells)) == []


def test_antimeridian_fiji_zones_1_and_60(country, points_in, gaps) -> None:
    fiji = country("Fiji")  # Natural Earth splits it at ±180°
    assert fiji.bounds[0] == pytest.approx(-180.0) and fiji.bounds[2] == pytest.approx(180.0)
    cells = lattice_cells(fiji)
    zones = set(cells.zone.tolist())
    assert {1, 60} <= zones and max(zones) - min(zones) == 59  # only the zones at the seam
    assert gaps(points_in(fiji, 2000), _ids(cells)) == []
    # Polygons stay small: tiles reaching over 180° keep unwrapped longitudes.
    width = cells.lons.max(axis=1) - cells.lons.min(axis=1)
    assert width.max() < 0.1
    assert cells.lons[cells.zone == 60].max() > 180.0 > cells.lons[cells.zone == 60].min()
    tile = next(t for t in cells.tiles() if t.zone == 1 and t.lonlat_polygon().bounds[0] < -180)
    assert tile.lonlat_polygon().bounds[2] - tile.lonlat_polygon().bounds[0] < 0.1


def test_aoi_drawn_across_the_antimeridian_folds_back(points_in, gaps) -> None:
    aoi = box(178.5, -17.5, 181.5, -16.0)  # one polygon running past 180°
    cells = lattice_cells(aoi)
    assert set(cells.zone.tolist()) == {60, 1}
    folded = np.array([(lon - 360 if lon > 180 else lon, lat) for lon, lat in points_in(aoi, 1000)])
    assert gaps(folded, _ids(cells)) == []
    same_place = lattice_cells(
        shapely.union_all([box(178.5, -17.5, 180, -16), box(-180, -17.5, -178.5, -16)])
    )
    assert _ids(same_place) == _ids(cells)


@pytest.mark.parametrize(
    ("geometry", "limit"),
    [(box(10, 80, 20, 85), "84"), (box(-60, -82, -50, -75), "80"), (box(0, 83.9, 1, 84.5), "84")],
)
def test_latitudes_beyond_utm_are_refused_naming_the_limit(geometry, limit) -> None:
    with pytest.raises(GridError, match=rf"latitude .*{limit}°"):
        lattice_cells(geometry)


def test_empty_and_non_degree_geometries_are_refused() -> None:
    with pytest.raises(GridError, match="empty"):
        lattice_cells(shapely.Polygon())
    with pytest.raises(GridError, match="not longitude/latitude"):
        lattice_cells(box(500000, 4000000, 510000, 4010000))
