"""Making a grid: AOI → lattice cells → seams → band splits → tiles file + splits CSV.

Both files are written to temporary names and renamed only when both are complete, so a
failed or interrupted run never leaves a file that looks like a grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.core.atomic import replacing
from m3leo_tiles.core.enums import GridFormat, Split
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.grid.aois import aoi_name, checked_aoi_name, load_aoi
from m3leo_tiles.grid.files import (
    SPLITS_NAME,
    GridResult,
    TileTable,
    default_grid_path,
    grid_file_name,
    write_geojson,
    write_parquet,
    write_splits_csv,
)
from m3leo_tiles.grid.lattice import (
    NORTH_EPSG_BASE,
    SOUTH_EPSG_BASE,
    TILE_AREA_KM2,
    check_geometry,
    lattice_cells,
)
from m3leo_tiles.grid.seams import seam_report
from m3leo_tiles.grid.splits import (
    DEFAULT_BANDS,
    DEFAULT_RATIOS,
    assign_bands,
    assign_splits,
    check_angle,
    check_bands,
    parse_ratios,
)
from m3leo_tiles.grid.tile import SOUTH_FALSE_NORTHING_M, TILE_SIZE_M

LARGE_GRID_TILES = 3_000_000  # all six built-in AOIs together hold 2.64 M


def make_grid(
    aoi: str | Path,
    out_dir: Path | None = None,
    fmt: GridFormat | str = GridFormat.GEOJSON,
    bands: int = DEFAULT_BANDS,
    angle: float | None = None,
    ratios: tuple[int, int, int] | str = DEFAULT_RATIOS,
    seed: int = 0,
    progress: bool = False,
    max_tiles: int | None = LARGE_GRID_TILES,
    name: str | None = None,
) -> GridResult:
    """Grid an AOI (built-in name or geometry file) and write ``out_dir/tiles.*`` + splits.

    ``out_dir`` defaults to ``grids/<aoi>`` under the current directory; ``angle`` to the
    AOI's own (the paper's for built-in AOIs, 0.9 rad otherwise). See ``splits`` for the
    meaning of ``bands``, ``angle``, ``ratios`` and ``seed``. An AOI that would make more
    than ``max_tiles`` tiles (about; None: no limit) is refused before any work, since it
    usually is a mistake (a whole hemisphere, a polygon read the long way round).

    ``name`` is the AOI's name in the grid (its ``aoi`` field and default folder): by default
    the built-in name or the file's stem. Either must be a name ``fetch --aoi`` accepts, so a
    file such as ``a b.wkt`` is refused before any work, asking for ``name``.
    """
    started = time.perf_counter()
    try:
        fmt = GridFormat(fmt)
    except ValueError:
        raise ConfigError(f"unknown grid format {fmt!r}; use geojson or parquet") from None
    bands = check_bands(bands)
    ratios = parse_ratios(ratios)
    name = checked_aoi_name(name, "given with --name") if name is not None else aoi_name(aoi)
    loaded = load_aoi(aoi)
    angle = check_angle(loaded.angle if angle is None else angle)
    if max_tiles is not None:
        check_geometry(loaded.geometry)  # degrees, some area: then its size means something
        check_size(name, loaded.geometry, max_tiles)
    if out_dir is None and name == "aois":
        raise ConfigError("an AOI named 'aois' would land among the AOI files; pass --out DIR")
    out_dir = Path(out_dir) if out_dir is not None else Path("grids") / name

    cells = lattice_cells(loaded.geometry, progress=progress)
    seams = seam_report(cells)
    zone, row, col = cells.zone, cells.row, cells.col
    lons, lats = cells.lons, cells.lats
    band = assign_bands(lons.mean(axis=1), lats.mean(axis=1), bands, angle)
    split = assign_splits(band, ratios, seed)
    south = row < 0
    table = TileTable(
        aoi=name,
        identifier=cells.identifiers(),
        utm_epsg=np.where(south, SOUTH_EPSG_BASE, NORTH_EPSG_BASE) + zone.astype(np.int32),
        x_min=col.astype(np.int64) * TILE_SIZE_M,
        y_min=row.astype(np.int64) * TILE_SIZE_M + np.where(south, SOUTH_FALSE_NORTHING_M, 0),
        band=band,
        split=split,
        seam=seams.flags,
        lons=lons,
        lats=lats,
    )
    path = out_dir / grid_file_name(fmt)
    splits_path = out_dir / SPLITS_NAME
    other = out_dir / grid_file_name(
        GridFormat.GEOJSON if fmt is GridFormat.PARQUET else GridFormat.PARQUET
    )
    created = not out_dir.exists()
    try:
        with replacing(splits_path) as tmp_splits, replacing(path) as tmp_tiles:
            # The CSV last: read_grid trusts it only when it is at least as new as the tiles.
            (write_parquet if fmt is GridFormat.PARQUET else write_geojson)(table, tmp_tiles)
            write_splits_csv(table.identifier, split, band, tmp_splits)
        # One grid per folder: a grid of the other format left from an earlier run would
        # have other splits, and fetch could not tell which one is meant.
        other.unlink(missing_ok=True)
    except BaseException as error:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            raise ConfigError(
                f"cannot write the grid to {out_dir}: {reason}; choose --out"
            ) from None
        raise
    counts = {part.value: int(np.count_nonzero(split == part.value)) for part in Split}
    return GridResult(
        aoi=name,
        path=path,
        splits_path=splits_path,
        tiles=len(cells),
        counts=counts,
        area_km2=len(cells) * TILE_AREA_KM2,
        aoi_km2=estimated_tiles(loaded.geometry)[1],
        seam_overlap_km2=seams.overlap_km2,
        seconds=time.perf_counter() - started,
    )


def estimated_tiles(geometry: BaseGeometry) -> tuple[int, float]:
    """(about how many tiles, geodesic km²) of a lon/lat geometry, from its area alone."""
    from pyproj import Geod

    area_m2, _ = Geod(ellps="WGS84").geometry_area_perimeter(shapely.segmentize(geometry, 1.0))
    km2 = abs(area_m2) / 1e6
    return round(km2 / TILE_AREA_KM2), km2


def check_size(name: str, geometry: BaseGeometry, max_tiles: int) -> None:
    """Refuse an AOI of more than ``max_tiles`` tiles before the minutes and GBs it costs."""
    count, km2 = estimated_tiles(geometry)
    if count > max_tiles:
        west, south, east, north = geometry.bounds
        raise ConfigError(
            f"AOI {name!r} ({km2:,.0f} km², bounds {west:.1f}, {south:.1f}, {east:.1f}, "
            f"{north:.1f}) makes about {count:,} tiles, more than {max_tiles:,}; check it is "
            "the area you mean, then pass --yes to grid it anyway"
        )


def ensure_grid(aoi: str | Path, grids_dir: Path = Path("grids")) -> Path:
    """The AOI's grid file under ``grids_dir``, built with the defaults when it is missing."""
    name = aoi_name(aoi)
    path = default_grid_path(name, grids_dir)
    if path.exists():
        return path
    return make_grid(aoi, out_dir=Path(grids_dir) / name).path
