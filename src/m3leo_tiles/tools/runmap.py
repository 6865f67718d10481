"""A map of a run: one self-contained HTML page with every tile coloured by its status.

``status`` counts; where the failures, the gaps and the empty tiles lie is what a user of a
400k-tile job wants to see, and a page they can open anywhere (mailed, copied off a
cluster) needs no server and no network: the data, the script and the style are all inline.

The page stays small because the tiles are not GeoJSON polygons: each tile is a centre in
Web Mercator metres (to 10 m, delta-coded) and its id is packed (zone, row, column); each
dataset adds
one status byte per tile and, for the tiles that have one, an index into one table of
distinct reasons. Everything binary is deflated and base64-encoded; the browser inflates it
with its own ``DecompressionStream`` and draws the tiles straight into a canvas's pixels,
which is what makes 400k tiles draw in a fraction of a second. Tiles are drawn as squares
of their 4480 m ground size, axis-aligned (the few degrees a UTM tile is turned against the
meridians are not drawn). Built-in AOIs near the tiles are drawn under them as outlines.
"""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from pathlib import Path

import numpy as np
import shapely
from pyproj import Transformer

from m3leo_tiles.core.atomic import write_text
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.layout import DatasetLayout, datasets_under
from m3leo_tiles.dataset.manifest import read_manifest
from m3leo_tiles.fetch.plan import size_problem
from m3leo_tiles.grid.tile import TILE_SIZE_M, GridTile, Tile, parse_tile_id

TEMPLATE = "runmap.html"
_TOKEN = re.compile(r"__M3LEO_(META|DATA)__")
_MERCATOR_MAX_LAT = 85.0
QUANTUM_M = 10.0  # tile centres are written to the page to 10 m (a tile is 4480 m)


class MapCode(IntEnum):
    """A tile's status on the page (one byte per tile per dataset); 0: not of that dataset's
    AOI (not drawn). The page's legend and colours follow this order."""

    NONE = 0
    OK = 1
    EMPTY = 2
    NO_SOURCE = 3
    FAILED = 4
    MISSING = 5


_CODE_OF = {
    TileStatus.OK: MapCode.OK,
    TileStatus.EMPTY: MapCode.EMPTY,
    TileStatus.NO_SOURCE: MapCode.NO_SOURCE,
    TileStatus.FAILED: MapCode.FAILED,
}
LABELS = ("", "ok", "empty", "no-source", "failed", "missing")


@dataclass(frozen=True)
class Layer:
    """One dataset's statuses over the map's tiles; ``reason_tiles`` (ascending) and
    ``reason_ids`` pair a tile index with its reason's index in ``RunMap.reasons``."""

    aoi: str
    dataset: str
    codes: np.ndarray  # uint8 per map tile (MapCode)
    reason_tiles: np.ndarray  # uint32
    reason_ids: np.ndarray  # uint32

    @property
    def counts(self) -> dict[str, int]:
        found = np.bincount(self.codes, minlength=len(LABELS))
        return {LABELS[code]: int(found[code]) for code in MapCode if code}


@dataclass(frozen=True)
class RunMap:
    """Everything the page draws: tiles, one layer per dataset, reasons, outlines."""

    tiles: tuple[GridTile, ...]
    x: np.ndarray  # float32 Web Mercator metres of each tile's centre
    y: np.ndarray
    layers: tuple[Layer, ...]
    reasons: tuple[str, ...]
    outlines: tuple[np.ndarray, ...]  # lines, (n, 2) float32 Web Mercator metres
    unplaced: int = 0  # manifest rows whose id is no lattice id and is in no grid

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(tile.identifier for tile in self.tiles)


@dataclass(frozen=True)
class MapWritten:
    """What ``write_run_map`` wrote."""

    path: Path
    tiles: int
    datasets: int
    bytes: int
    unplaced: int

    def summary(self) -> str:
        """The line ``status --map`` prints."""
        skipped = (
            f"; {self.unplaced} manifest rows with ids of no known place not drawn"
            if self.unplaced
            else ""
        )
        return (
            f"map of {self.tiles} tiles in {self.datasets} datasets written to {self.path} "
            f"({self.bytes / 1e6:.1f} MB; open it in a browser, no network needed){skipped}"
        )


def map_path_problem(path: Path) -> str | None:
    """Why the map cannot be written to ``path`` (checked before status reads anything)."""
    path = Path(path)
    if path.is_dir():
        return f"--map {path} is a folder; give a file name such as {path / 'map.html'}"
    if not path.parent.is_dir():
        return f"--map {path}: no folder {path.parent}; create it first or give another path"
    return None


def _grid_tiles(
    aoi: str, grids_dir: Path, given: tuple[str, Sequence[GridTile]] | None
) -> Sequence[GridTile] | None:
    """The tiles of the AOI's grid as ``status`` finds it (``--grid`` for its own AOI, else
    ``grids_dir/<aoi>/tiles.*``); None when there is none or it cannot be read, as there."""
    if given is not None and given[0] == aoi:
        return given[1]
    try:
        from m3leo_tiles.grid import default_grid_path, read_grid

        path = default_grid_path(aoi, grids_dir)
        return read_grid(path).tiles if path.exists() else None
    except Exception:  # no grid or an unreadable one: the map shows what the manifests hold
        return None


def _layer_rows(layout: DatasetLayout) -> dict[str, tuple[MapCode, str]]:
    """Each manifest row's code and reason; an ``ok`` row whose chip is missing or not of the
    recorded size is failed, as ``status`` counts it (the same cheap check, no chip read)."""
    rows = read_manifest(layout.manifest, lean=True)  # no input lists: a map needs none
    sizes = layout.chip_sizes() if layout.folder.is_dir() else {}
    found: dict[str, tuple[MapCode, str]] = {}
    for identifier, row in rows.items():
        code, reason = _CODE_OF[row.status], row.reason
        if row.status is TileStatus.OK:
            problem = size_problem(row.bytes, sizes.get(identifier))
            if problem is not None:
                code, reason = MapCode.FAILED, f"damaged chip: {problem}"
        found[identifier] = (code, reason)
    return found


def build_run_map(out: Path, grids_dir: Path = Path("grids"), grid: Path | None = None) -> RunMap:
    """The map of every dataset under ``out/<aoi>/<dataset>`` (the folders ``status`` lists).

    The tiles are those of each AOI's grid (so tiles no run reached show as missing) and any
    manifest row outside it; a tile of another AOI is not drawn for a dataset.
    """
    given = None
    if grid is not None:
        from m3leo_tiles.grid import read_grid

        read = read_grid(grid)  # a bad file is the user's error, as for status
        given = (read.aoi, read.tiles)
    layouts = list(datasets_under(Path(out), locked=True))
    index: dict[str, int] = {}
    tiles: list[GridTile] = []
    aoi_tiles: dict[str, np.ndarray] = {}
    unplaced: set[str] = set()

    def add(identifier: str, tile: GridTile | None) -> int | None:
        at = index.get(identifier)
        if at is None and tile is not None:
            at = index[identifier] = len(tiles)
            tiles.append(tile)
        return at

    for aoi in sorted({layout.aoi for layout in layouts}):
        found = _grid_tiles(aoi, Path(grids_dir), given)
        if found is not None:
            aoi_tiles[aoi] = np.array([add(t.identifier, t) for t in found], dtype=np.int64)
    rows_of = {layout.folder: _layer_rows(layout) for layout in layouts}
    for rows in rows_of.values():
        for identifier in rows:
            if identifier not in index and add(identifier, parse_tile_id(identifier)) is None:
                unplaced.add(identifier)
    reasons: dict[str, int] = {}
    layers = []
    for layout in layouts:
        codes = np.zeros(len(tiles), dtype=np.uint8)
        if layout.aoi in aoi_tiles:
            codes[aoi_tiles[layout.aoi]] = MapCode.MISSING
        with_reason: list[tuple[int, int]] = []
        for identifier, (code, reason) in rows_of[layout.folder].items():
            at = index.get(identifier)
            if at is None:
                continue
            codes[at] = code
            if reason:
                with_reason.append((at, reasons.setdefault(reason, len(reasons))))
        with_reason.sort()
        pairs = np.array(with_reason, dtype=np.uint32).reshape(-1, 2)
        layers.append(Layer(layout.aoi, layout.dataset, codes, pairs[:, 0], pairs[:, 1]))
    x, y = _mercator_centres(tiles)
    return RunMap(
        tiles=tuple(tiles),
        x=x,
        y=y,
        layers=tuple(layers),
        reasons=tuple(reasons),
        outlines=_outlines(x, y),
        unplaced=len(unplaced),
    )


def _to_mercator(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 3857, always_xy=True)


def _mercator_centres(tiles: Sequence[GridTile]) -> tuple[np.ndarray, np.ndarray]:
    """Each tile's centre in Web Mercator metres, with one pyproj call per UTM zone."""
    x = np.zeros(len(tiles), dtype=np.float64)
    y = np.zeros(len(tiles), dtype=np.float64)
    by_epsg: dict[int, list[int]] = {}
    boxes: list[int] = []
    for at, tile in enumerate(tiles):
        if isinstance(tile, Tile):
            by_epsg.setdefault(tile.epsg, []).append(at)
        else:
            boxes.append(at)
    half = TILE_SIZE_M / 2
    for epsg, where in by_epsg.items():
        bounds = np.array([tiles[at].bounds[:2] for at in where])
        x[where], y[where] = _to_mercator(epsg).transform(bounds[:, 0] + half, bounds[:, 1] + half)
    if boxes:
        b = np.array([tiles[at].lonlat_polygon().bounds for at in boxes])
        lat = np.clip((b[:, 1] + b[:, 3]) / 2, -_MERCATOR_MAX_LAT, _MERCATOR_MAX_LAT)
        x[boxes], y[boxes] = _to_mercator(4326).transform((b[:, 0] + b[:, 2]) / 2, lat)
    return x.astype(np.float32), y.astype(np.float32)


def _outlines(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """The borders of the built-in AOIs near the tiles' extent, simplified to about a
    thousandth of it: enough to know where one is, a few kB in the page."""
    if not len(x):
        return ()
    from m3leo_tiles.grid import list_aois, load_aoi

    back = Transformer.from_crs(3857, 4326, always_xy=True)
    (west, east), (south, north) = back.transform(
        [float(x.min()), float(x.max())], [float(y.min()), float(y.max())]
    )
    pad = max(east - west, north - south, 1.0) * 0.25
    view = shapely.box(west - pad, south - pad, east + pad, north + pad)
    tolerance = max(east - west, north - south, 0.05) / 1000
    to_mercator = _to_mercator(4326)
    lines: list[np.ndarray] = []
    for info in list_aois():
        if not view.intersects(shapely.box(*info.bbox)):
            continue
        border = load_aoi(info.name).geometry.boundary.intersection(view).simplify(tolerance)
        for line in _lines(border):
            lon, lat = np.asarray(line.coords)[:, :2].T
            lat = np.clip(lat, -_MERCATOR_MAX_LAT, _MERCATOR_MAX_LAT)
            lines.append(np.column_stack(to_mercator.transform(lon, lat)).astype(np.float32))
    return tuple(lines)


def _lines(shape: shapely.Geometry) -> Iterable[shapely.LineString]:
    for part in getattr(shape, "geoms", [shape]):
        if isinstance(part, shapely.LineString | shapely.LinearRing) and len(part.coords) > 1:
            yield part
        elif hasattr(part, "geoms"):
            yield from _lines(part)


def _packed_ids(tiles: Sequence[GridTile]) -> dict[str, np.ndarray] | str:
    """Lattice ids as (zone, row, column) arrays the page spells back; any other id makes the
    page carry every id as text (foreign grids: rare, and small)."""
    if not all(isinstance(tile, Tile) for tile in tiles):
        return "\n".join(tile.identifier for tile in tiles)
    return {
        "zone": np.array([t.zone for t in tiles], dtype=np.uint8),  # type: ignore[attr-defined]
        "row": np.array([t.row for t in tiles], dtype=np.int16),  # type: ignore[attr-defined]
        "col": np.array([t.col for t in tiles], dtype=np.int16),  # type: ignore[attr-defined]
    }


class _Blob:
    """Typed arrays laid end to end (each 4-byte aligned, as a JS typed array view needs)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> list:
        array = np.ascontiguousarray(array)
        entry = [self.size, int(array.size), array.dtype.name]
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        self.parts.append(data + b"\0" * (-len(data) % 4))
        self.size += len(self.parts[-1])
        return entry


def _deltas(metres: np.ndarray) -> np.ndarray:
    """Coordinates in whole ``QUANTUM_M`` steps, each as its difference from the previous
    one: a grid's neighbours differ by about a tile, so these deflate about ten times better
    than the float32 centres themselves (the page adds them back up)."""
    steps = np.round(metres.astype(np.float64) / QUANTUM_M).astype(np.int64)
    return np.diff(steps, prepend=0).astype(np.int32)


def page_html(run_map: RunMap, title: str) -> str:
    """The page: the template with the run's data inline (JSON header, deflated binary)."""
    blob = _Blob()
    ids = _packed_ids(run_map.tiles)
    meta = {
        "title": title,
        "generated": time.strftime("%Y-%m-%d %H:%M %Z"),
        "tiles": len(run_map.tiles),
        "tileSize": TILE_SIZE_M,
        "labels": LABELS,
        "quantum": QUANTUM_M,
        "x": blob.add(_deltas(run_map.x)),
        "y": blob.add(_deltas(run_map.y)),
        "ids": ids if isinstance(ids, str) else {k: blob.add(v) for k, v in ids.items()},
        "layers": [
            {
                "aoi": layer.aoi,
                "dataset": layer.dataset,
                "counts": layer.counts,
                "codes": blob.add(layer.codes),
                "reasonTiles": blob.add(layer.reason_tiles),
                "reasonIds": blob.add(layer.reason_ids),
            }
            for layer in run_map.layers
        ],
        "reasons": run_map.reasons,
        "outlines": blob.add(
            np.concatenate(run_map.outlines).ravel()
            if run_map.outlines
            else np.zeros(0, np.float32)
        ),
        "outlineLines": blob.add(np.array([len(r) for r in run_map.outlines], dtype=np.uint32)),
        "unplaced": run_map.unplaced,
    }
    data = base64.b64encode(zlib.compress(b"".join(blob.parts), 9)).decode("ascii")
    # "</" cannot end the script element the JSON sits in once written "<\/" (same JSON).
    inline = {"META": json.dumps(meta).replace("</", "<\\/"), "DATA": data}
    template = resources.files("m3leo_tiles.tools").joinpath(TEMPLATE).read_text("utf-8")
    return _TOKEN.sub(lambda match: inline[match.group(1)], template)


def write_run_map(
    out: Path, path: Path, grids_dir: Path = Path("grids"), grid: Path | None = None
) -> MapWritten:
    """Write the map of every dataset under ``out`` to ``path`` (atomically)."""
    run_map = build_run_map(out, grids_dir, grid)
    html = page_html(run_map, f"m3leo-tiles run map: {Path(out).resolve()}")
    write_text(Path(path), html)
    return MapWritten(
        Path(path), len(run_map.tiles), len(run_map.layers), len(html.encode()), run_map.unplaced
    )
