"""Seam overlap: only between zones, flagged, and about one tile wide along each seam."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import box

from m3leo_tiles.grid import Tile, lattice_cells, load_aoi, seam_overlap_km2, seam_report
from m3leo_tiles.grid.lattice import zone_band
from m3leo_tiles.grid.tile import TILE_SIZE_M

TILE_KM = TILE_SIZE_M / 1000


def _seam_length_km(aoi, zones: set[int]) -> float:
    """Length of the AOI's cut by every seam between two zones present (km, ~111 km/°)."""
    total = 0.0
    for zone in zones:
        if zone % 60 + 1 in zones:
            seam = zone_band(zone)[1]
            for shift in (-360.0, 0.0, 360.0):
                cut = aoi.intersection(
                    shapely.LineString([(seam + shift, -80), (seam + shift, 84)])
                )
                total += cut.length * 111.0
    return total


def test_box_overlap_is_about_one_tile_wide_along_each_seam() -> None:
    aoi = box(-103.0, 35.0, -89.0, 40.0)  # zones 13..16: three seams, 5° of latitude each
    cells = lattice_cells(aoi)
    report = seam_report(cells)
    length = _seam_length_km(aoi, set(cells.zone.tolist()))
    assert length == np.float64(3 * 5 * 111.0)
    assert 0.5 * TILE_KM * length < report.overlap_km2 < 1.5 * TILE_KM * length
    flagged = report.flags
    # Flags only near seams: every flagged tile reaches within one tile width of a seam.
    lons = cells.lons[flagged]
    near = np.zeros(flagged.sum(), dtype=bool)
    for seam in (-96.0, -90.0, -102.0):
        near |= (lons.min(axis=1) - 0.06 < seam) & (lons.max(axis=1) + 0.06 > seam)
    assert near.all() and flagged.sum() > 3 * 2 * 120


def test_overlap_only_between_tiles_of_different_zones() -> None:
    cells = lattice_cells(box(-97.0, 36.0, -95.0, 37.0))  # the 14|15 seam at 96°W
    report = seam_report(cells)
    polygons = shapely.polygons(np.stack([cells.lons, cells.lats], axis=2))
    left, right = shapely.STRtree(polygons).query(polygons, predicate="intersects")
    keep = left < right
    left, right = left[keep], right[keep]
    area = shapely.area(shapely.intersection(polygons[left], polygons[right]))
    overlapping = area > 1e-9  # deg², about 10 m²
    zone = cells.zone
    assert (zone[left[overlapping]] != zone[right[overlapping]]).all()
    touched = np.zeros(len(polygons), dtype=bool)
    touched[left[overlapping]] = touched[right[overlapping]] = True
    assert touched.sum() > 20
    assert (report.flags >= touched).all()  # every overlapping tile carries the flag


def test_real_aoi_overlap_is_bounded_by_its_seams() -> None:
    aoi = load_aoi("pakin").geometry
    cells = lattice_cells(aoi)
    km2 = seam_report(cells).overlap_km2
    length = _seam_length_km(aoi, set(cells.zone.tolist()))
    assert 0 < km2 < 1.5 * TILE_KM * length
    assert km2 < 0.01 * len(cells) * TILE_KM**2  # a thin price: under 1 % of the area


def test_overlap_across_the_antimeridian(country) -> None:
    aoi = country("Fiji")
    cells = lattice_cells(aoi)
    report = seam_report(cells)
    assert set(cells.zone.tolist()) == {1, 60}
    length = _seam_length_km(aoi, {1, 60})  # the 60|1 seam at 180° is measured too
    assert length > 0
    assert 0.5 * TILE_KM * length < report.overlap_km2 < 1.5 * TILE_KM * length
    flagged = cells.lons[report.flags]  # only tiles that reach the seam are flagged
    assert len(flagged) and (np.abs(flagged).max(axis=1) > 180.0 - 0.06).all()


def test_seam_overlap_km2_of_plain_tiles() -> None:
    west = Tile.from_point(-96.0001, 36.5)  # zone 14, reaches over 96°W
    east = Tile.from_point(-95.9999, 36.5)  # zone 15
    assert (west.zone, east.zone) == (14, 15)
    east_of_seam_in_14 = Tile.from_point(-95.99, 36.5, zone=14)
    assert seam_overlap_km2([west, east]) > 0
    assert seam_overlap_km2([west, Tile(14, west.row, west.col - 1)]) == 0.0
    assert seam_overlap_km2([east_of_seam_in_14, east]) > 0
