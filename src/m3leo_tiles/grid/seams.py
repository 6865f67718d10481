"""Seams: where the tiles of two neighbouring zones overlap, flagged and measured.

Inside a zone tiles never overlap; at the 6° seam between zones ``z`` and ``z+1`` both zones'
cells reach over the meridian so the AOI has no gap there. The overlap is the price, and it
is measured exactly here: each candidate tile of ``z+1`` is carried into ``z``'s plane and
intersected with ``z``'s squares. Areas are on the UTM plane of ``z`` (within 0.2 % of the
ground area near a seam).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import shapely

from m3leo_tiles.grid.lattice import NORTH_EPSG_BASE, LatticeCells, ZoneCells, zone_band
from m3leo_tiles.grid.tile import TILE_SIZE_M, Tile, from_lonlat_transformer

# Pairs whose overlap is below this (m²) only touch along an edge up to rounding.
_MIN_OVERLAP_M2 = 1.0
# Tiles farther than this many of their own lon widths from the seam cannot reach it.
_REACH = 1.5


@dataclass(frozen=True)
class SeamReport:
    """Per tile (in ``LatticeCells`` order) whether it overlaps another zone's tile; km²."""

    flags: np.ndarray
    overlap_km2: float


def _relative_lon(lons: np.ndarray, seam: float) -> np.ndarray:
    return np.mod(lons - seam + 180.0, 360.0) - 180.0


def seam_report(cells: LatticeCells) -> SeamReport:
    """Flag every tile that overlaps a tile of a neighbouring zone, and sum the overlap."""
    by_zone = {z.zone: z for z in cells.zones}
    offsets, start = {}, 0
    for z in cells.zones:
        offsets[z.zone] = start
        start += len(z)
    flags = np.zeros(start, dtype=bool)
    total_m2 = 0.0
    for zone, west_cells in by_zone.items():
        east_zone = zone % 60 + 1
        east_cells = by_zone.get(east_zone)
        if east_cells is None or east_zone == zone:
            continue
        west_hit, east_hit, area = _seam_overlap(west_cells, east_cells)
        flags[offsets[zone] + west_hit] = True
        flags[offsets[east_zone] + east_hit] = True
        total_m2 += area
    return SeamReport(flags=flags, overlap_km2=total_m2 / 1e6)


def _seam_overlap(west: ZoneCells, east: ZoneCells) -> tuple[np.ndarray, np.ndarray, float]:
    seam = zone_band(west.zone)[1]
    west_rel = _relative_lon(west.lons, seam)
    east_rel = _relative_lon(east.lons, seam)
    west_width = west_rel.max(1) - west_rel.min(1)
    east_width = east_rel.max(1) - east_rel.min(1)
    west_near = np.nonzero(west_rel.max(1) + _REACH * west_width >= 0)[0]
    east_near = np.nonzero(east_rel.min(1) - _REACH * east_width <= 0)[0]
    if not len(west_near) or not len(east_near):
        return np.empty(0, int), np.empty(0, int), 0.0
    x0 = west.cols[west_near] * float(TILE_SIZE_M)
    y0 = west.rows[west_near] * float(TILE_SIZE_M)
    squares = shapely.box(x0, y0, x0 + TILE_SIZE_M, y0 + TILE_SIZE_M)
    to_west = from_lonlat_transformer(NORTH_EPSG_BASE + west.zone)
    ex, ey = to_west.transform(east.lons[east_near].ravel(), east.lats[east_near].ravel())
    ring = np.stack([np.reshape(ex, (-1, 4)), np.reshape(ey, (-1, 4))], axis=2)
    others = shapely.polygons(ring)
    tree = shapely.STRtree(others)
    left, right = tree.query(squares, predicate="intersects")
    if not len(left):
        return np.empty(0, int), np.empty(0, int), 0.0
    areas = shapely.area(shapely.intersection(squares[left], others[right]))
    real = areas > _MIN_OVERLAP_M2
    return west_near[left[real]], east_near[right[real]], float(areas[real].sum())


def seam_overlap_km2(tiles: Iterable[Tile]) -> float:
    """Overlap (km²) between tiles of different zones in any collection of lattice tiles."""
    from m3leo_tiles.grid.lattice import cells_from_tiles

    return seam_report(cells_from_tiles(tiles)).overlap_km2
