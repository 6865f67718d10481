"""Tiles of the global lattice, and the pixel grid a chip of a tile is rendered on.

A lattice tile is an exact 4480 m square of its WGS84/UTM zone: in zone ``z`` tile
``(row, col)`` covers easting ``[col*4480, (col+1)*4480)`` and north-equivalent northing
``[row*4480, (row+1)*4480)`` (the northing of EPSG:326zz, negative south of the equator), so
the lattice runs straight across the equator. Southern tiles are expressed in EPSG:327zz,
whose northing is the north-equivalent one plus 10,000,000 m.

``BoxTile`` is the compatibility case: a tile read from a foreign grid file (geetiles, the
released M3LEO grids) that is only a lon/lat box; its chips are lon/lat-aligned, as geetiles'
were.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol, overload, runtime_checkable

import numpy as np
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from shapely.geometry import Polygon, box

from m3leo_tiles.core.errors import GridError
from m3leo_tiles.core.tilesize import TILE_SIZE_M, pixels_per_side

SOUTH_FALSE_NORTHING_M = 10_000_000
MIN_LAT, MAX_LAT = -80.0, 84.0
_ID_PATTERN = re.compile(r"^(?P<zone>\d{2})(?P<hemi>[NS])_(?P<row>\d{4})_(?P<col>\d{3})$")
_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class PixelGrid:
    """Where a chip's pixels are: CRS, affine transform (top-left origin) and size."""

    crs: str
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        bottom = top + self.transform.e * self.height
        return (left, bottom, right, top)


@runtime_checkable
class GridTile(Protocol):
    """What the chip engine needs from any tile, lattice or foreign."""

    @property
    def identifier(self) -> str: ...

    @property
    def crs(self) -> str: ...

    def pixel_grid(self, resolution_m: float) -> PixelGrid: ...

    def lonlat_polygon(self) -> Polygon: ...


@lru_cache(maxsize=256)
def to_lonlat_transformer(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


@lru_cache(maxsize=256)
def from_lonlat_transformer(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


def utm_zone_of_longitude(lon: float) -> int:
    """The standard 6° zone of a longitude (strict bands: no Norway/Svalbard exceptions)."""
    lon = ((lon + 180.0) % 360.0) - 180.0
    return min(60, math.floor((lon + 180.0) / 6.0) + 1)


def zone_central_meridian(zone: int) -> float:
    return -183.0 + 6.0 * zone


def unwrap_longitude(lon: float, reference: float) -> float:
    """``lon`` shifted by a multiple of 360° to lie within 180° of ``reference``."""
    return reference + ((lon - reference + 180.0) % 360.0) - 180.0


def parse_tile_id(identifier: str) -> Tile | None:
    """The lattice tile an id names, or None when it is not a lattice id (a foreign tile)."""
    match = _ID_PATTERN.match(identifier)
    if not match or not 1 <= int(match["zone"]) <= 60:
        return None
    number = int(match["row"])
    row = number if match["hemi"] == "N" else -number - 1
    return Tile(int(match["zone"]), row, int(match["col"]))


def parse_tile_ids(identifiers: Sequence[str]) -> list[Tile | None]:
    """``parse_tile_id`` of each id, in bulk: a grid of 400k ids is read in a fraction of the
    per-id time (the fields are parsed and checked with Arrow kernels; see ``_make_tile``)."""
    fields = _lattice_fields(identifiers)
    if fields is None:  # some id is foreign: each one on its own
        return [parse_tile_id(value) for value in identifiers]
    zones, rows, cols, valid = fields
    return [_make_tile(ident, zone, row, col) if ok else None
            for ident, zone, row, col, ok in zip(identifiers, zones, rows, cols, valid,
                                                 strict=True)]  # fmt: skip


def lattice_tiles(identifiers: Sequence[str]) -> LatticeTiles | None:
    """The tiles of ``identifiers`` when every one is a lattice id, held as ids and fields
    (``LatticeTiles``); None when any is foreign (the caller reads those as boxes)."""
    fields = _lattice_fields(identifiers)
    if fields is None or not all(fields[3]):
        return None
    zones, rows, cols, _ = fields
    return LatticeTiles(list(identifiers), zones, rows, cols)


def _lattice_fields(
    identifiers: Sequence[str],
) -> tuple[list[int], list[int], list[int], list[bool]] | None:
    """Zone, row (negative south), column and zone validity of each id, parsed with Arrow
    kernels; None when some id does not have a lattice id's shape."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = pc.extract_regex(pa.array(identifiers, pa.string()), _ID_PATTERN.pattern)
    if parts.null_count:
        return None
    zones = pc.cast(parts.field("zone"), pa.int64()).to_numpy()
    numbers = pc.cast(parts.field("row"), pa.int64()).to_numpy()
    north = pc.equal(parts.field("hemi"), "N").to_numpy(zero_copy_only=False)
    cols = pc.cast(parts.field("col"), pa.int64()).to_numpy()
    valid = (zones >= 1) & (zones <= 60)
    rows = np.where(north, numbers, -numbers - 1)
    return zones.tolist(), rows.tolist(), cols.tolist(), valid.tolist()


def _make_tile(identifier: str, zone: int, row: int, col: int) -> Tile:
    """The ``Tile`` its constructor would make from checked fields, with the id it would
    compute: 5x faster than the constructor, for tiles made by the 100k."""
    tile = object.__new__(Tile)
    tile.__dict__.update(zone=zone, row=row, col=col, identifier=identifier)
    return tile


class LatticeTiles(Sequence["Tile"]):
    """Lattice tiles held as their ids and integer fields; a ``Tile`` is made when one is
    asked for (indexing, iteration). A grid read, a rerun's decisions and its plan key need
    only the ids (``tile_ids``): making the 403k tile objects of CONUS up front cost every
    no-op rerun ~1 s."""

    __slots__ = ("_cols", "_rows", "_zones", "identifiers")

    def __init__(self, identifiers: list[str], zones: list[int], rows: list[int],
                 cols: list[int]) -> None:  # fmt: skip
        self.identifiers = identifiers
        self._zones, self._rows, self._cols = zones, rows, cols

    def __len__(self) -> int:
        return len(self.identifiers)

    @overload
    def __getitem__(self, index: int) -> Tile: ...

    @overload
    def __getitem__(self, index: slice) -> LatticeTiles: ...

    def __getitem__(self, index: int | slice) -> Tile | LatticeTiles:
        if isinstance(index, slice):
            return LatticeTiles(self.identifiers[index], self._zones[index], self._rows[index],
                                self._cols[index])  # fmt: skip
        return _make_tile(self.identifiers[index], self._zones[index], self._rows[index],
                          self._cols[index])  # fmt: skip

    def __iter__(self) -> Iterator[Tile]:
        for fields in zip(self.identifiers, self._zones, self._rows, self._cols, strict=True):
            yield _make_tile(*fields)

    def take(self, indices: Sequence[int]) -> LatticeTiles:
        """The tiles at ``indices``, still held as ids and fields."""
        return LatticeTiles([self.identifiers[i] for i in indices],
                            [self._zones[i] for i in indices], [self._rows[i] for i in indices],
                            [self._cols[i] for i in indices])  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LatticeTiles):
            return (self.identifiers, self._zones, self._rows, self._cols) == (
                other.identifiers, other._zones, other._rows, other._cols)  # fmt: skip
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  (mutable lists inside, as a list is)

    def __repr__(self) -> str:
        return f"LatticeTiles({len(self)} tiles)"


def tile_ids(tiles: Sequence[GridTile]) -> Sequence[str]:
    """The ids of ``tiles``, without making a tile object when they are ``LatticeTiles``."""
    held = getattr(tiles, "identifiers", None)
    return held if held is not None else [tile.identifier for tile in tiles]


def take_tiles(tiles: Sequence[GridTile], indices: Sequence[int]) -> Sequence[GridTile]:
    """The tiles at ``indices`` (lazily for ``LatticeTiles``)."""
    if isinstance(tiles, LatticeTiles):
        return tiles.take(indices)
    return [tiles[i] for i in indices]


def check_latitude(lat: float) -> None:
    if not MIN_LAT <= lat <= MAX_LAT:
        raise GridError(
            f"latitude {lat:.4f} is outside UTM's range ({MIN_LAT:g}° to {MAX_LAT:g}°); "
            "the grid covers 80°S to 84°N only"
        )


@dataclass(frozen=True, order=True)
class Tile:
    """One 4480 m square of the global lattice: zone 1..60, row from the equator, column."""

    zone: int
    row: int
    col: int

    def __post_init__(self) -> None:
        if not 1 <= self.zone <= 60:
            raise GridError(f"UTM zone must be 1..60, got {self.zone}")

    @property
    def hemisphere(self) -> str:
        return "N" if self.row >= 0 else "S"

    @property
    def epsg(self) -> int:
        return (32600 if self.row >= 0 else 32700) + self.zone

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @cached_property
    def identifier(self) -> str:
        """Computed once per tile: a run asks it of every tile several times (400k tiles)."""
        row_number = self.row if self.row >= 0 else -self.row - 1
        return f"{self.zone:02d}{self.hemisphere}_{row_number:04d}_{self.col:03d}"

    @property
    def x_min(self) -> float:
        return float(self.col * TILE_SIZE_M)

    @property
    def y_min(self) -> float:
        """Lower northing in the tile's own EPSG (327zz adds the false northing)."""
        offset = 0 if self.row >= 0 else SOUTH_FALSE_NORTHING_M
        return float(self.row * TILE_SIZE_M + offset)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_min + TILE_SIZE_M, self.y_min + TILE_SIZE_M)

    def pixel_grid(self, resolution_m: float) -> PixelGrid:
        count = pixels_per_side(resolution_m)
        size = TILE_SIZE_M / count
        transform = Affine(size, 0.0, self.x_min, 0.0, -size, self.y_min + TILE_SIZE_M)
        return PixelGrid(self.crs, transform, count, count)

    @property
    def central_meridian(self) -> float:
        return zone_central_meridian(self.zone)

    def lonlat_polygon(self) -> Polygon:
        """The square's corners in lon/lat, unwrapped around the zone's central meridian.

        A tile of zone 60 or 1 that reaches over ±180° keeps longitudes like 180.02 rather
        than jumping to -179.98, so its polygon stays small instead of spanning the globe.
        """
        x0, y0, x1, y1 = self.bounds
        lons, lats = to_lonlat_transformer(self.epsg).transform([x0, x1, x1, x0], [y0, y0, y1, y1])
        lons = [unwrap_longitude(lon, self.central_meridian) for lon in lons]
        return Polygon(zip(lons, lats, strict=True))

    @classmethod
    def from_id(cls, identifier: str) -> Tile:
        tile = parse_tile_id(identifier)
        if tile is None:
            raise GridError(
                f"{identifier!r} is not a tile id; ids look like 33N_1187_089 (zone+hemisphere, "
                "row, column)"
            )
        return tile

    @classmethod
    def from_point(cls, lon: float, lat: float, zone: int | None = None) -> Tile:
        """The tile of ``zone`` (default: the point's own zone) that contains the point."""
        check_latitude(lat)
        zone = zone or utm_zone_of_longitude(lon)
        easting, northing = from_lonlat_transformer(32600 + zone).transform(lon, lat)
        return cls(zone, math.floor(northing / TILE_SIZE_M), math.floor(easting / TILE_SIZE_M))


@dataclass(frozen=True)
class BoxTile:
    """A tile from a foreign grid file: an id and a lon/lat box, chipped lon/lat-aligned."""

    identifier: str
    west: float
    south: float
    east: float
    north: float

    @property
    def crs(self) -> str:
        return "EPSG:4326"

    def pixel_grid(self, resolution_m: float) -> PixelGrid:
        """Pixel counts follow the box's ground size at its centre, as geetiles did."""
        mid_lat = (self.south + self.north) / 2
        mid_lon = (self.west + self.east) / 2
        _, _, width_m = _GEOD.inv(self.west, mid_lat, self.east, mid_lat)
        _, _, height_m = _GEOD.inv(mid_lon, self.south, mid_lon, self.north)
        width = max(1, round(width_m / resolution_m))
        height = max(1, round(height_m / resolution_m))
        transform = Affine(
            (self.east - self.west) / width, 0.0, self.west,
            0.0, -(self.north - self.south) / height, self.north,
        )  # fmt: skip
        return PixelGrid(self.crs, transform, width, height)

    def lonlat_polygon(self) -> Polygon:
        return box(self.west, self.south, self.east, self.north)


def lonlat_polygons(tiles: Sequence[GridTile]) -> list[Polygon]:
    """``tile.lonlat_polygon()`` for many tiles, with one pyproj call per UTM zone.

    Planning a source over a million tiles would spend minutes in per-tile pyproj calls; the
    lattice's corners are computed in bulk instead (same values, same longitude unwrapping).
    """
    polygons: list[Polygon | None] = [None] * len(tiles)
    by_epsg: dict[int, list[int]] = {}
    for index, tile in enumerate(tiles):
        if isinstance(tile, Tile):
            by_epsg.setdefault(tile.epsg, []).append(index)
        else:
            polygons[index] = tile.lonlat_polygon()
    for epsg, indexes in by_epsg.items():
        bounds = np.array([tiles[i].bounds for i in indexes])  # x0, y0, x1, y1
        xs = bounds[:, [0, 2, 2, 0]]
        ys = bounds[:, [1, 1, 3, 3]]
        lons, lats = to_lonlat_transformer(epsg).transform(xs, ys)
        meridian = zone_central_meridian(epsg % 100)
        lons = meridian + ((np.asarray(lons) - meridian + 180.0) % 360.0) - 180.0
        rings = np.stack([lons, np.asarray(lats)], axis=-1)
        for index, polygon in zip(indexes, shapely.polygons(rings), strict=True):
            polygons[index] = polygon
    return polygons  # type: ignore[return-value]
