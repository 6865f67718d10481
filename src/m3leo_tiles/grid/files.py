"""Grid files: reading ours and foreign ones, where they live, writing them atomically.

A grid file is one feature per tile. Ours carry ``identifier, aoi, utm_epsg, x_min, y_min,
band, split, seam``; a foreign file (geetiles, the released M3LEO grids) only needs
``identifier`` and a geometry. Because a lattice id *is* the tile, reading our files never
needs their geometry, which is what makes a 400k-tile grid load in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m3leo_tiles.core.arrow import single_threaded_csv
from m3leo_tiles.core.atomic import replacing
from m3leo_tiles.core.enums import GridFormat, Split
from m3leo_tiles.core.errors import GridError
from m3leo_tiles.core.names import ALLOWED, MAX_NAME, SAFE_NAME, name_problem
from m3leo_tiles.grid.tile import (
    BoxTile,
    GridTile,
    lattice_tiles,
    parse_tile_id,
    parse_tile_ids,
    take_tiles,
    tile_ids,
)

TILES_STEM = "tiles"
SPLITS_NAME = "splits.csv"
_SUFFIX = {GridFormat.GEOJSON: ".geojson", GridFormat.PARQUET: ".parquet"}
_READABLE = (".geojson", ".json", ".parquet", ".gpkg", ".fgb", ".shp", ".geojsonl")


@dataclass(frozen=True)
class Grid:
    """The tiles of one grid file and their splits (empty for foreign files without one)."""

    aoi: str
    tiles: Sequence[GridTile]  # LatticeTiles for a grid of lattice ids, else a tuple
    splits: Mapping[str, str] = field(default_factory=dict)

    def select(
        self,
        split: str | None = None,
        identifiers: Collection[str] | None = None,
        limit: int | None = None,
    ) -> Sequence[GridTile]:
        """Tiles in file order, narrowed by split, by a set of ids and to the first ``limit``
        (decided on the ids: lattice tiles stay ``LatticeTiles``).

        Asking for a split of a grid that has none is an error rather than an empty answer,
        so a foreign file without splits cannot silently select nothing.
        """
        if split is not None:
            split = str(Split(split))
            if not self.splits:
                raise GridError(
                    f"the grid of {self.aoi!r} has no splits; drop --split or make a grid "
                    "with `m3leo-tiles grid`"
                )
        if split is None and identifiers is None:
            return self.tiles if limit is None else self.tiles[:limit]
        wanted = set(identifiers) if identifiers is not None else None
        chosen: list[int] = []
        for index, identifier in enumerate(tile_ids(self.tiles)):
            if split is not None and self.splits.get(identifier) != split:
                continue
            if wanted is not None and identifier not in wanted:
                continue
            chosen.append(index)
            if limit is not None and len(chosen) >= limit:
                break
        return take_tiles(self.tiles, chosen)

    def __len__(self) -> int:
        return len(self.tiles)


@dataclass(frozen=True)
class GridResult:
    """What ``make_grid`` wrote and measured; ``tiles`` is the tile count."""

    aoi: str
    path: Path
    splits_path: Path
    tiles: int
    counts: Mapping[str, int]
    area_km2: float
    seam_overlap_km2: float
    seconds: float
    aoi_km2: float | None = None  # the AOI's own geodesic area (``aois`` shows this one)

    def summary(self) -> str:
        """One line; the tiles' area (tiles x 20.07 km²) is named apart from the AOI's own,
        which is smaller: tiles along the edge reach past it."""
        per_split = ", ".join(f"{name} {count:,}" for name, count in self.counts.items())
        rate = self.tiles / self.seconds if self.seconds > 0 else float("inf")
        aoi = f" (the AOI itself: {self.aoi_km2:,.0f} km²)" if self.aoi_km2 is not None else ""
        return (
            f"{self.aoi}: {self.tiles:,} tiles ({per_split}), {self.area_km2:,.0f} km² of "
            f"tiles{aoi}, "
            f"seam overlap {self.seam_overlap_km2:,.1f} km², {self.seconds:.1f} s "
            f"({rate:,.0f} tiles/s)\n  tiles:  {self.path}\n  splits: {self.splits_path}"
        )


def default_grid_path(aoi: str, grids_dir: Path = Path("grids")) -> Path:
    """``grids_dir/<aoi>/tiles.parquet`` when that exists, else ``.../tiles.geojson``.

    ``make_grid`` keeps one grid per folder; a folder holding both (an older version, or a
    copy by hand) is refused rather than one of them picked silently: they may differ.
    """
    folder = Path(grids_dir) / aoi
    parquet = folder / f"{TILES_STEM}{_SUFFIX[GridFormat.PARQUET]}"
    geojson = folder / f"{TILES_STEM}{_SUFFIX[GridFormat.GEOJSON]}"
    if parquet.exists() and geojson.exists():
        raise GridError(
            f"{folder} holds two grids ({geojson.name} and {parquet.name}) that may differ; "
            "delete the one you do not want, or regrid with `m3leo-tiles grid`"
        )
    return parquet if parquet.exists() else geojson


def grid_file_name(fmt: GridFormat) -> str:
    return f"{TILES_STEM}{_SUFFIX[GridFormat(fmt)]}"


def list_grids(grids_dir: Path = Path("grids")) -> list[Path]:
    """Every grid file ``grids_dir/<aoi>/tiles.*``, sorted (the AOI files are not grids)."""
    grids_dir = Path(grids_dir)
    if not grids_dir.is_dir():
        return []
    found: list[Path] = []
    for folder in sorted(p for p in grids_dir.iterdir() if p.is_dir() and p.name != "aois"):
        path = default_grid_path(folder.name, grids_dir)  # two grids in one folder: refused
        if path.exists():
            found.append(path)
    return found


# --- reading -----------------------------------------------------------------------------


def read_grid(path: str | Path, *, splits: bool = True) -> Grid:
    """Read a grid file, ours or foreign, into tiles (lattice ``Tile`` or ``BoxTile``).

    Ids that parse as lattice ids become ``Tile``s (their geometry is implied), held as
    ``LatticeTiles`` when every id is one (a tile object is made when asked for); any other
    id becomes a ``BoxTile`` of its geometry's bounds in EPSG:4326. The AOI is the file's
    ``aoi`` column, else the folder name for ``.../<aoi>/tiles.*``, else the file stem.
    ``splits=False`` leaves ``Grid.splits`` empty: a run of every split does not need a
    dict of 400k entries.
    """
    path = Path(path)
    table, ids = _table_and_ids(path)
    tiles: Sequence[GridTile] | None = lattice_tiles(ids)  # ids and fields: tiles made lazily
    if tiles is None:
        parsed = parse_tile_ids(ids)
        boxes = _read_bounds(path)
        tiles = tuple(
            tile if tile is not None else BoxTile(ident, *bounds)
            for ident, tile, bounds in zip(ids, parsed, boxes, strict=True)
        )
    by_tile: dict[str, str] = {}
    if splits and "split" in table.column_names:
        values = table.column("split").to_pylist()
        by_tile = {ident: str(s) for ident, s in zip(ids, values, strict=True) if s}
    aoi = _aoi_name(path, table)
    del table
    pa.default_memory_pool().release_unused()  # the file's columns: a run's peak memory
    return Grid(aoi=aoi, tiles=tiles, splits=by_tile)


def read_grid_ids(path: str | Path) -> pa.ChunkedArray:
    """The tile ids of a grid file as an Arrow text column, checked as ``read_grid`` checks
    them, without making a tile of each: what ``status`` needs to count the tiles without a
    row (CONUS in 0.1 s instead of a whole read)."""
    path = Path(path)
    return _checked_id_column(path, _attribute_table(path).column("identifier"))


def read_grid_splits(path: str | Path) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """The checked tile ids of a grid file and each tile's split (null: none), as Arrow text
    columns, without making a tile of each: what the catalog and ``stats`` need (a CONUS
    ``read_grid`` peaks ~280 MB above this)."""
    path = Path(path)
    table = _attribute_table(path)
    ids = _checked_id_column(path, table.column("identifier"))
    if "split" not in table.column_names:
        return ids, pa.chunked_array([pa.nulls(len(ids), pa.string())])
    split = pc.cast(table.column("split"), pa.string())
    return ids, pc.if_else(pc.equal(split, ""), pa.scalar(None, pa.string()), split)


def _table_and_ids(path: Path) -> tuple[pa.Table, list[str]]:
    """A grid file's attribute table and its checked tile ids."""
    table = _attribute_table(path)
    return table, checked_identifiers(path, table.column("identifier"))


def _attribute_table(path: Path) -> pa.Table:
    """A grid file's attribute table (from ``splits.csv`` beside it when there is one: no
    geometry read); a missing, id-less or empty file is refused."""
    if not path.is_file():
        raise GridError(f"grid file {path} not found; make one with `m3leo-tiles grid --aoi NAME`")
    table = _read_splits_beside(path)
    if table is None:
        table = _read_attributes(path)
    if "identifier" not in table.column_names:
        raise GridError(
            f"{path} has no 'identifier' column (found: {', '.join(table.column_names)}); "
            "a grid file needs identifier and geometry"
        )
    if table.num_rows == 0:
        raise GridError(f"{path} holds no tiles; regenerate it with `m3leo-tiles grid`")
    return table


def checked_identifiers(path: Path, values: Sequence[object] | pa.ChunkedArray) -> list[str]:
    """The ids of a grid file as text, refusing any that could not be a chip's file name.

    A chip is written to ``<tile id>.tif``, so an id is a file name: one that holds a path
    separator or ``..``, is empty or null, or repeats another (also when only the case
    differs, which is the same file on macOS and Windows) is refused, naming the id and its
    row (1 = the first tile), before anything is written.
    """
    return _checked_id_column(path, values).to_pylist()


def _checked_id_column(path: Path, values: Sequence[object] | pa.ChunkedArray) -> pa.ChunkedArray:
    """``checked_identifiers`` as an Arrow text column. The whole column is checked with
    Arrow kernels first (0.1 s for CONUS's 403k ids); only a grid with a bad id is walked
    row by row to name it."""
    column = (
        values
        if isinstance(values, pa.ChunkedArray)
        else pa.chunked_array(
            [
                pa.array(
                    [v if isinstance(v, str) or v is None else str(v) for v in values], pa.string()
                )
            ]
        )
    )
    kind = column.type
    if column.null_count == 0 and (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                                   or pa.types.is_integer(kind)):  # fmt: skip
        text = pc.cast(column, pa.string())
        safe = pc.and_(
            pc.match_substring_regex(text, f"^{SAFE_NAME.pattern}$"),
            pc.invert(pc.match_substring(text, "..")),
        )
        short = pc.less_equal(pc.utf8_length(text), MAX_NAME)
        if pc.all(pc.and_(safe, short)).as_py() and (
            pc.count_distinct(pc.utf8_lower(text)).as_py() == len(text)
        ):
            return text
    ids = _checked_row_by_row(path, column.to_pylist())
    return pa.chunked_array([pa.array(ids, pa.string())])


def _checked_row_by_row(path: Path, values: Sequence[object]) -> list[str]:
    ids: list[str] = []
    first_row: dict[str, int] = {}
    for row, value in enumerate(values, start=1):
        problem = None if isinstance(value, str) and parse_tile_id(value) else name_problem(value)
        if problem is not None:
            raise GridError(
                f"{path}: tile id {value!r} in row {row} {problem}; tile ids become file "
                f"names, so they must be {ALLOWED}"
            )
        text = str(value)
        folded = text.casefold()
        if folded in first_row:
            raise GridError(
                f"{path}: tile id {text!r} in row {row} repeats the id in row "
                f"{first_row[folded]} (ids must be unique, ignoring case); each tile must "
                "appear once"
            )
        first_row[folded] = row
        ids.append(text)
    return ids


def _aoi_name(path: Path, table: pa.Table) -> str:
    """The AOI a grid belongs to; it names the output folder, so it must be a safe name."""
    name = path.parent.name if path.stem == TILES_STEM else path.stem
    if "aoi" in table.column_names and table.num_rows:
        value = table.column("aoi")[0].as_py()
        if value:
            name = str(value)
    problem = name_problem(name)
    if problem is not None:
        raise GridError(
            f"{path}: AOI name {name!r} {problem}; it names the output folder, so it must be "
            f"{ALLOWED} (rename the file or fix its 'aoi' column)"
        )
    return name


_OUR_FEATURE_START = '{"type":"Feature","properties":{"identifier":'


def _read_splits_beside(path: Path) -> pa.Table | None:
    """Our GeoJSON's attributes from the splits CSV written with it, when that is current.

    GDAL parses GeoJSON at about 50k features/s; the CSV holds the same ids and splits and
    loads in milliseconds. It is used only for files this module wrote (recognised by their
    first feature) when the CSV is at least as new as the tiles file.
    """
    splits = path.parent / SPLITS_NAME
    if path.suffix.lower() != ".geojson" or not splits.is_file():
        return None
    if splits.stat().st_mtime < path.stat().st_mtime:
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(65536).decode("utf-8", errors="ignore").split("\n")
        if len(head) < 3 or not head[1].startswith(_OUR_FEATURE_START):
            return None
        aoi = json.loads(head[1].rstrip(","))["properties"]["aoi"]
        import pyarrow.csv as pacsv

        convert = pacsv.ConvertOptions(
            column_types={"identifier": pa.string(), "split": pa.string()}
        )
        table = pacsv.read_csv(splits, read_options=single_threaded_csv(), convert_options=convert)
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None
    if "identifier" not in table.column_names or "split" not in table.column_names:
        return None
    return table.append_column("aoi", pa.array([aoi] * table.num_rows, pa.string()))


_ATTRIBUTES = ("identifier", "split", "aoi")


def _require_identifier(path: Path, names: list[str]) -> None:
    if "identifier" not in names:
        raise GridError(
            f"{path} has no 'identifier' column (found: {', '.join(names) or 'none'}); "
            "a grid file needs identifier and geometry"
        )


def _read_attributes(path: Path) -> pa.Table:
    """The attribute columns only: our ids carry the geometry, so it is not parsed here."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            names = list(pq.read_schema(path).names)
            _require_identifier(path, names)
            return pq.read_table(path, columns=[n for n in names if n in _ATTRIBUTES])
        import pyogrio

        info = pyogrio.read_info(path)
        if info.get("features") == 0:
            raise GridError(f"{path} holds no tiles; regenerate it with `m3leo-tiles grid`")
        names = [str(name) for name in info["fields"]]
        _require_identifier(path, names)
        columns = [name for name in names if name in _ATTRIBUTES]
        _, table = pyogrio.read_arrow(path, columns=columns, read_geometry=False)
        return table
    except GridError:
        raise
    except Exception as error:  # any reader failure is a file the user must fix
        raise GridError(f"cannot read grid file {path}: {_one_line(error)}") from None


def _read_bounds(path: Path) -> list[tuple[float, float, float, float]]:
    """Lon/lat bounds of each feature, reprojected to EPSG:4326 when the file is not."""
    import geopandas as gpd

    try:
        if path.suffix.lower() == ".parquet":
            frame = gpd.read_parquet(path)
        else:
            frame = gpd.read_file(path, engine="pyogrio", use_arrow=True)
    except Exception as error:
        raise GridError(f"cannot read geometries of {path}: {_one_line(error)}") from None
    if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        frame = frame.to_crs(4326)
    if frame.geometry.isna().any() or frame.geometry.is_empty.any():
        raise GridError(f"{path} has tiles without geometry; every foreign tile needs one")
    return [tuple(map(float, row)) for row in frame.geometry.bounds.to_numpy()]


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TileTable:
    """Columns of a grid to write: one row per tile, corners as (N, 4) lon/lat arrays."""

    aoi: str
    identifier: np.ndarray
    utm_epsg: np.ndarray
    x_min: np.ndarray
    y_min: np.ndarray
    band: np.ndarray
    split: np.ndarray
    seam: np.ndarray
    lons: np.ndarray
    lats: np.ndarray


def write_geojson(table: TileTable, path: Path, chunk: int = 200_000) -> None:
    """Write an RFC 7946 FeatureCollection (lon/lat, 6 decimals ≈ 0.1 m), atomically.

    GDAL's GeoJSON writer manages about 70k features/s here; a tile is always a 5-point
    ring with fixed properties, so the text is assembled column-wise with Arrow compute
    kernels instead (several times faster). The tests read every file back with GDAL.
    """
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(b'{"type":"FeatureCollection","features":[\n')
        total = len(table.identifier)
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            text = _feature_text(table, slice(start, stop))
            if start:
                handle.write(b",\n")
            handle.write(text.encode())
        handle.write(b"\n]}\n")


def _feature_text(table: TileTable, part: slice) -> str:
    def as_text(values: np.ndarray, decimals: int | None = None) -> pa.Array:
        array = pa.array(values)
        if decimals is not None:
            array = pc.round(array, decimals)
        return pc.cast(array, pa.string())

    aoi = json.dumps(table.aoi)
    seam = np.where(table.seam[part], "true", "false")
    lons = [as_text(table.lons[part, i], 6) for i in range(4)]
    lats = [as_text(table.lats[part, i], 6) for i in range(4)]
    pieces: list[object] = [
        '{"type":"Feature","properties":{"identifier":"',
        pa.array(table.identifier[part]),
        f'","aoi":{aoi},"utm_epsg":',
        as_text(table.utm_epsg[part]),
        ',"x_min":',
        as_text(table.x_min[part]),
        ',"y_min":',
        as_text(table.y_min[part]),
        ',"band":',
        as_text(table.band[part]),
        ',"split":"',
        pa.array(table.split[part]),
        '","seam":',
        pa.array(seam),
        '},"geometry":{"type":"Polygon","coordinates":[[',
    ]
    for position, corner in enumerate((0, 1, 2, 3, 0)):
        pieces += ["[" if position == 0 else ",[", lons[corner], ",", lats[corner], "]"]
    pieces.append("]]}}")
    features = pc.binary_join_element_wise(*pieces, "")
    as_list = pa.ListArray.from_arrays(pa.array([0, len(features)], pa.int32()), features)
    return pc.binary_join(as_list, ",\n")[0].as_py()


def write_parquet(table: TileTable, path: Path) -> None:
    """GeoParquet (EPSG:4326) through geopandas, atomically."""
    import geopandas as gpd
    import shapely

    ring = np.concatenate(
        [table.lons[:, [0, 1, 2, 3, 0], None], table.lats[:, [0, 1, 2, 3, 0], None]], 2
    )
    frame = gpd.GeoDataFrame(
        {
            "identifier": table.identifier,
            "aoi": np.full(len(table.identifier), table.aoi, dtype=object),
            "utm_epsg": table.utm_epsg,
            "x_min": table.x_min,
            "y_min": table.y_min,
            "band": table.band,
            "split": table.split,
            "seam": table.seam,
        },
        geometry=shapely.polygons(ring),
        crs="EPSG:4326",
    )
    with replacing(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_splits_csv(
    identifiers: Sequence[str], splits: Sequence[str], bands: np.ndarray, path: Path
) -> None:
    """``identifier,split,band`` rows: the fast way to load a grid's splits without GIS."""
    import pyarrow.csv as pacsv

    table = pa.table(
        {"identifier": pa.array(identifiers), "split": pa.array(splits), "band": pa.array(bands)}
    )
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(b"identifier,split,band\n")
        pacsv.write_csv(table, handle, options)
