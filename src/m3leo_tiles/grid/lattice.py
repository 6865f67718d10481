"""Laying the global lattice over a geometry: which cells of which UTM zone it needs.

A cell of zone ``z`` is taken when it touches the part of the geometry inside ``z``'s 6° band
of longitude. Every point of the geometry lies in some band, and that zone's lattice covers
its whole plane, so the cells taken leave no gap anywhere: not at the equator (rows run
straight across it) and not at seams (both zones reach over). Work is per zone and
vectorised: the band's piece is projected to EPSG:326zz, rasterised onto a 4480 m raster
aligned with the lattice (``all_touched`` for candidates, centre test for cells that surely
intersect) and only the boundary cells are decided exactly with shapely.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.core.errors import GridError
from m3leo_tiles.grid.tile import (
    MAX_LAT,
    MIN_LAT,
    TILE_SIZE_M,
    Tile,
    from_lonlat_transformer,
    to_lonlat_transformer,
    zone_central_meridian,
)

# Longest edge (degrees) kept straight before projecting: meridians and parallels are curves
# in UTM; at 0.02° the chord strays from the curve by well under a metre.
DENSIFY_DEG = 0.02
SOUTH_EPSG_BASE, NORTH_EPSG_BASE = 32700, 32600
TILE_AREA_KM2 = TILE_SIZE_M * TILE_SIZE_M / 1e6


def zone_band(zone: int) -> tuple[float, float]:
    """West and east longitude of a zone's 6° band."""
    west = -180.0 + 6.0 * (zone - 1)
    return west, west + 6.0


@dataclass(frozen=True)
class ZoneCells:
    """The cells one zone contributes, with their lon/lat corners (SW, SE, NE, NW).

    Corners are computed once per lattice node and shared by the (up to four) cells that
    meet there, so neighbouring tiles have bit-identical shared vertices. Longitudes are
    unwrapped around the zone's central meridian (a zone-60 tile may reach 180.02°).
    """

    zone: int
    rows: np.ndarray
    cols: np.ndarray
    lons: np.ndarray
    lats: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class LatticeCells:
    """All cells of a geometry, zone by zone (ascending), rows north to south in a zone."""

    zones: tuple[ZoneCells, ...]

    def __len__(self) -> int:
        return sum(len(z) for z in self.zones)

    @property
    def zone(self) -> np.ndarray:
        return _concat([np.full(len(z), z.zone, np.int16) for z in self.zones], np.int16)

    @property
    def row(self) -> np.ndarray:
        return _concat([z.rows for z in self.zones], np.int32)

    @property
    def col(self) -> np.ndarray:
        return _concat([z.cols for z in self.zones], np.int32)

    @property
    def lons(self) -> np.ndarray:
        return _concat([z.lons for z in self.zones], np.float64, (0, 4))

    @property
    def lats(self) -> np.ndarray:
        return _concat([z.lats for z in self.zones], np.float64, (0, 4))

    def tiles(self) -> list[Tile]:
        return [
            Tile(z.zone, int(r), int(c))
            for z in self.zones
            for r, c in zip(z.rows, z.cols, strict=True)
        ]

    def identifiers(self) -> np.ndarray:
        return tile_identifiers(self.zone, self.row, self.col)


def _concat(
    parts: list[np.ndarray], dtype: type, empty_shape: tuple[int, ...] = (0,)
) -> np.ndarray:
    return (
        np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(empty_shape, dtype)
    )


def tile_identifiers(zone: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Vectorised ``Tile.identifier``: ``33N_1187_089`` (south rows count from 0 too)."""
    south = row < 0
    number = np.where(south, -row.astype(np.int64) - 1, row)
    hemi = np.where(south, "S", "N")
    zone_text = np.char.zfill(zone.astype(str), 2)
    return (
        np.char.add(np.char.add(zone_text, hemi), "_")
        + np.char.zfill(number.astype(str), 4)
        + "_"
        + np.char.zfill(col.astype(str), 3)
    ).astype(object)


# --- preparing the geometry ----------------------------------------------------------------


def check_geometry(geometry: BaseGeometry) -> None:
    """Refuse geometries the lattice cannot cover, with the reason and the limit."""
    if geometry is None or geometry.is_empty:
        raise GridError("the AOI geometry is empty; give a polygon with some area")
    if geometry.area == 0:
        raise GridError(
            f"the AOI geometry has no area (only {geometry.geom_type} parts: points or lines); "
            "give a polygon with some area"
        )
    west, south, east, north = geometry.bounds
    if not all(np.isfinite([west, south, east, north])):
        raise GridError("the AOI geometry has non-finite coordinates")
    if south < -90 or north > 90 or west < -540 or east > 540:
        raise GridError(
            f"AOI bounds ({west:g}, {south:g}, {east:g}, {north:g}) are not longitude/latitude "
            "degrees; give the file's CRS (or reproject it to EPSG:4326)"
        )
    if north > MAX_LAT or south < MIN_LAT:
        raise GridError(
            f"the AOI reaches latitude {north if north > MAX_LAT else south:g}, outside UTM's "
            f"range ({MIN_LAT:g}° to {MAX_LAT:g}°); the grid covers 80°S to 84°N only, clip the AOI"
        )


def zone_pieces(geometry: BaseGeometry) -> Iterator[tuple[int, BaseGeometry]]:
    """(zone, the geometry's part in that zone's band) for every zone it reaches.

    Longitudes beyond ±180° (an AOI drawn across the antimeridian) are folded back, so the
    part east of 180° lands in zone 1 and so on.
    """
    west, south, east, north = geometry.bounds
    for zone in range(1, 61):
        band_west, band_east = zone_band(zone)
        parts = []
        for shift in (-360.0, 0.0, 360.0):
            if band_east + shift < west or band_west + shift > east:
                continue
            part = shapely.intersection(
                geometry, shapely.box(band_west + shift, south - 1, band_east + shift, north + 1)
            )
            if part.is_empty:
                continue
            if shift:
                part = shapely.transform(part, lambda xy, s=shift: xy - np.array([s, 0.0]))
            parts.append(part)
        if parts:
            yield zone, parts[0] if len(parts) == 1 else shapely.union_all(parts)


# --- one zone ----------------------------------------------------------------------------


def project_to_zone(piece: BaseGeometry, zone: int) -> BaseGeometry:
    """The lon/lat piece in EPSG:326zz (north-equivalent northings, negative south)."""
    dense = shapely.segmentize(piece, DENSIFY_DEG)
    transformer = from_lonlat_transformer(NORTH_EPSG_BASE + zone)

    def forward(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(dense, forward)


def zone_cells(piece_lonlat: BaseGeometry, zone: int) -> ZoneCells:
    """The cells of ``zone`` touching ``piece_lonlat`` (which lies inside the zone's band)."""
    projected = project_to_zone(piece_lonlat, zone)
    minx, miny, maxx, maxy = projected.bounds
    col0, col1 = int(np.floor(minx / TILE_SIZE_M)), int(np.floor(maxx / TILE_SIZE_M))
    row0, row1 = int(np.floor(miny / TILE_SIZE_M)), int(np.floor(maxy / TILE_SIZE_M))
    # One pixel of margin on every side so the dilation below never runs off the raster.
    col0, row0, col1, row1 = col0 - 1, row0 - 1, col1 + 1, row1 + 1
    shape = (row1 - row0 + 1, col1 - col0 + 1)
    transform = Affine(
        TILE_SIZE_M, 0.0, col0 * TILE_SIZE_M, 0.0, -TILE_SIZE_M, (row1 + 1) * TILE_SIZE_M
    )
    touched = features.rasterize(
        [projected], shape, transform=transform, all_touched=True, dtype=np.uint8
    )
    centred = features.rasterize([projected], shape, transform=transform, dtype=np.uint8)
    sure = centred.astype(bool)
    candidates = _dilate(touched.astype(bool)) & ~sure
    selected = sure.copy()
    ii, jj = np.nonzero(candidates)
    if len(ii):
        x0 = (col0 + jj) * float(TILE_SIZE_M)
        y0 = (row1 - ii) * float(TILE_SIZE_M)
        boxes = shapely.box(x0, y0, x0 + TILE_SIZE_M, y0 + TILE_SIZE_M)
        shapely.prepare(projected)
        hit = shapely.intersects(projected, boxes)
        selected[ii[hit], jj[hit]] = True
    return _with_corners(zone, selected, row1, col0)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3×3 binary dilation (the mask has a false border, so wrap-around never matters)."""
    grown = mask.copy()
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                grown |= np.roll(np.roll(mask, di, 0), dj, 1)
    return grown


def _with_corners(zone: int, selected: np.ndarray, row_top: int, col0: int) -> ZoneCells:
    """Cells of a raster mask with corners from one transform of the lattice nodes they use."""
    ii, jj = np.nonzero(selected)  # row-major: north to south, west to east
    rows = (row_top - ii).astype(np.int32)
    cols = (col0 + jj).astype(np.int32)
    height, width = selected.shape
    # Node (a, b) is the top-left corner of raster cell (a, b); a cell uses nodes
    # (i, j) NW, (i, j+1) NE, (i+1, j+1) SE, (i+1, j) SW.
    used = np.zeros((height + 1, width + 1), dtype=bool)
    for di in (0, 1):
        for dj in (0, 1):
            used[di : di + height, dj : dj + width] |= selected
    node_i, node_j = np.nonzero(used)
    index = np.full(used.shape, -1, dtype=np.int64)
    index[node_i, node_j] = np.arange(len(node_i))
    x = (col0 + node_j) * float(TILE_SIZE_M)
    y = (row_top + 1 - node_i) * float(TILE_SIZE_M)
    node_lon, node_lat = to_lonlat_transformer(NORTH_EPSG_BASE + zone).transform(x, y)
    node_lon = np.asarray(node_lon, dtype=np.float64)
    centre = zone_central_meridian(zone)
    node_lon = centre + np.mod(node_lon - centre + 180.0, 360.0) - 180.0
    corner_nodes = np.stack(
        [index[ii + 1, jj], index[ii + 1, jj + 1], index[ii, jj + 1], index[ii, jj]], axis=1
    )
    return ZoneCells(
        zone=zone,
        rows=rows,
        cols=cols,
        lons=node_lon[corner_nodes],
        lats=np.asarray(node_lat, dtype=np.float64)[corner_nodes],
    )


# --- the whole geometry ----------------------------------------------------------------------


def lattice_cells(geometry_lonlat: BaseGeometry, progress: bool = False) -> LatticeCells:
    """Every lattice cell a lon/lat (EPSG:4326) geometry needs, zone by zone, with corners."""
    check_geometry(geometry_lonlat)
    geometry_lonlat = (
        shapely.make_valid(geometry_lonlat) if not geometry_lonlat.is_valid else geometry_lonlat
    )
    pieces = list(zone_pieces(geometry_lonlat))
    if not pieces:
        raise GridError("the AOI geometry covers no area the lattice can tile")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pieces), desc="zones", unit="zone", leave=False)
    zones = []
    try:
        for zone, piece in pieces:
            if bar is not None:
                bar.set_postfix_str(f"zone {zone}")
            cells = zone_cells(piece, zone)
            if len(cells):
                zones.append(cells)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return LatticeCells(tuple(zones))


def grid_geometry(geometry_lonlat: BaseGeometry) -> list[Tile]:
    """The lattice tiles covering a lon/lat geometry, without gaps (see the module doc)."""
    return lattice_cells(geometry_lonlat).tiles()


def cells_from_tiles(tiles: Iterable[Tile]) -> LatticeCells:
    """``LatticeCells`` (with corners) for any collection of lattice tiles, e.g. a read grid."""
    by_zone: dict[int, list[tuple[int, int]]] = {}
    for tile in tiles:
        by_zone.setdefault(tile.zone, []).append((tile.row, tile.col))
    zones = []
    for zone in sorted(by_zone):
        rc = np.unique(np.asarray(by_zone[zone], dtype=np.int64), axis=0)
        rows, cols = rc[:, 0], rc[:, 1]
        row_top, col0 = int(rows.max()), int(cols.min())
        mask = np.zeros((row_top - int(rows.min()) + 1, int(cols.max()) - col0 + 1), dtype=bool)
        mask[row_top - rows, cols - col0] = True
        zones.append(_with_corners(zone, mask, row_top, col0))
    return LatticeCells(tuple(zones))
