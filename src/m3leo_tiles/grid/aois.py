"""Areas of interest: the built-in ones (country unions) and the user's own files.

Built-in AOIs are small GeoJSON files made by ``scripts/build_aois.py`` from Natural Earth;
they ship inside the wheel (``m3leo_tiles/_data/aois``) and sit in ``grids/aois`` of a
checkout. Their split angles are the paper's (Table A.2). A user AOI is any GeoJSON,
GeoPackage, shapefile or WKT file, in any CRS; it is reprojected to EPSG:4326.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.core.errors import ConfigError, GridError, first_line
from m3leo_tiles.core.names import ALLOWED, name_problem

DEFAULT_ANGLE = 0.9


@dataclass(frozen=True)
class Aoi:
    """A named lon/lat (EPSG:4326) geometry and the split angle that suits it."""

    name: str
    geometry: BaseGeometry
    angle: float = DEFAULT_ANGLE
    source: str = ""


@dataclass(frozen=True)
class AoiInfo:
    """One built-in AOI as listed by ``m3leo-tiles aois``."""

    name: str
    description: str
    area_km2: float
    approx_tiles: int
    bbox: tuple[float, float, float, float]
    angle: float
    path: Path


def aois_dir() -> Path:
    """Where built-in AOI files are: inside the installed package, else in the checkout."""
    packaged = Path(__file__).resolve().parents[1] / "_data" / "aois"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "grids" / "aois"


def _builtin_paths() -> dict[str, Path]:
    folder = aois_dir()
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.geojson"))}


def list_aois() -> list[AoiInfo]:
    """The built-in AOIs with the figures stored in their files by the build script."""
    found = []
    for name, path in _builtin_paths().items():
        props = _properties(path)
        found.append(
            AoiInfo(
                name=name,
                description=str(props.get("description", "")),
                area_km2=float(props.get("area_km2", 0.0)),
                approx_tiles=int(props.get("approx_tiles", 0)),
                bbox=tuple(props.get("bbox", (0.0, 0.0, 0.0, 0.0))),
                angle=float(props.get("angle", DEFAULT_ANGLE)),
                path=path,
            )
        )
    return found


def _properties(path: Path) -> dict:
    data = json.loads(path.read_text())
    features = data.get("features") or [{}]
    return dict(features[0].get("properties") or {})


def aoi_name(name_or_path: str | Path) -> str:
    """The name a grid of this AOI is filed under: the built-in name, else the file stem,
    refused when ``fetch`` could not use it (it names the grid's and the chips' folders)."""
    text = str(name_or_path)
    if text in _builtin_paths():
        return text
    return checked_aoi_name(Path(text).stem, f"from the file name {Path(text).name!r}")


def checked_aoi_name(name: str, origin: str = "") -> str:
    """``name`` when it is a safe folder name (``names.name_problem``, the rule ``fetch``
    applies to ``--aoi``), else one line saying how to choose another with ``--name``."""
    problem = name_problem(name)
    if problem is not None:
        where = f" ({origin})" if origin else ""
        rule = "" if ALLOWED in problem else f" ({ALLOWED})"
        raise ConfigError(
            f"AOI name {name!r}{where} {problem}; it names the grid's and the chips' folders: "
            f"give one with `m3leo-tiles grid --aoi FILE --name NAME`{rule}"
        )
    return name


def load_aoi(name_or_path: str | Path) -> Aoi:
    """A built-in AOI by name, or a geometry file (GeoJSON, GPKG, shapefile, WKT, any CRS)."""
    text = str(name_or_path)
    builtins = _builtin_paths()
    if text in builtins:
        path = builtins[text]
        props = _properties(path)
        geometry = _read_vector(path)
        return Aoi(text, geometry, float(props.get("angle", DEFAULT_ANGLE)), str(path))
    path = Path(text).expanduser()
    if not path.exists():
        if path.suffix or "/" in text or "\\" in text:
            raise GridError(f"AOI file {path} not found; give a built-in name or an existing file")
        known = ", ".join(builtins) or "none installed"
        raise GridError(f"unknown AOI {text!r}; built-in AOIs are: {known} (or give a file path)")
    if path.is_dir():
        raise GridError(f"{path} is a folder; give a GeoJSON, GeoPackage, shapefile or WKT file")
    geometry = _read_wkt(path) if _looks_like_wkt(path) else _read_vector(path)
    if geometry.is_empty:
        raise GridError(f"AOI file {path} holds no geometry; it needs at least one polygon")
    return Aoi(path.stem, geometry, DEFAULT_ANGLE, str(path))


def split_at_antimeridian(geometry: BaseGeometry) -> BaseGeometry:
    """Polygons written across the antimeridian (177 → -178) as what they mean: the short way.

    A ring whose longitude jumps by more than 180° between two vertices cannot mean the long
    way round (no one draws a 355°-wide polygon with one edge); read literally it would make
    a band around the globe of hundreds of thousands of tiles. Such a ring is unwrapped into
    continuous longitudes (past ±180°) and cut at the antimeridian, the part beyond it moved
    back by 360°: the two halves GeoJSON (RFC 7946 §3.1.9) asks for.
    """
    polygons = list(getattr(geometry, "geoms", [geometry]))
    if not any(
        isinstance(p, Polygon) and _jumps(p.exterior.coords) for p in polygons
    ) and not any(isinstance(p, Polygon) and any(_jumps(r.coords) for r in p.interiors)
                  for p in polygons):  # fmt: skip
        return geometry
    fixed = []
    for polygon in polygons:
        if not isinstance(polygon, Polygon):
            fixed.append(polygon)
            continue
        shell = _unwrapped(np.asarray(polygon.exterior.coords))
        centre = shell[:, 0].mean()
        holes = []
        for ring in polygon.interiors:
            hole = _unwrapped(np.asarray(ring.coords))
            hole[:, 0] += 360.0 * round((centre - hole[:, 0].mean()) / 360.0)
            holes.append(hole)
        whole = _valid(Polygon(shell, holes))
        for shift in (-360.0, 0.0, 360.0):
            part = whole.intersection(shapely.box(-180.0 - shift, -90.0, 180.0 - shift, 90.0))
            if not part.is_empty:
                fixed.append(shapely.affinity.translate(part, xoff=shift))
    return _valid(shapely.union_all(fixed))


def _jumps(coords: object) -> bool:
    """A ring of lon/lat degrees with a jump of more than 180° between two vertices
    (coordinates that are not degrees are left alone: ``check_geometry`` refuses them)."""
    xy = np.asarray(coords)
    if len(xy) < 2 or np.abs(xy[:, 0]).max() > 180.0 or np.abs(xy[:, 1]).max() > 90.0:
        return False
    return bool(np.abs(np.diff(xy[:, 0])).max() > 180.0)


def _unwrapped(coords: np.ndarray) -> np.ndarray:
    out = np.array(coords[:, :2], dtype=float)
    out[:, 0] = np.unwrap(out[:, 0], period=360.0)
    return out


def _looks_like_wkt(path: Path) -> bool:
    if path.suffix.lower() == ".wkt":
        return True
    if path.suffix.lower() in (".geojson", ".json", ".gpkg", ".shp", ".parquet", ".fgb", ".zip"):
        return False
    try:
        head = path.read_bytes()[:64].decode("ascii", errors="ignore").lstrip().upper()
    except OSError:
        return False
    return head.startswith(("POLYGON", "MULTIPOLYGON", "GEOMETRYCOLLECTION", "SRID="))


def _read_wkt(path: Path) -> BaseGeometry:
    """WKT has no CRS: it is taken as lon/lat degrees (EPSG:4326)."""
    try:
        text = path.read_text().strip()
        if text.upper().startswith("SRID="):
            raise GridError(f"{path}: EWKT with SRID is not supported; give lon/lat WKT")
        geometry = shapely.from_wkt(text)
    except GridError:
        raise
    except Exception as error:
        raise GridError(f"cannot read WKT from {path}: {first_line(error)}") from None
    return _valid(split_at_antimeridian(geometry))


def _read_vector(path: Path) -> BaseGeometry:
    import geopandas as gpd

    try:
        if path.suffix.lower() == ".parquet":
            frame = gpd.read_parquet(path)
        else:
            frame = gpd.read_file(path, engine="pyogrio")
    except Exception as error:
        raise GridError(f"cannot read AOI file {path}: {first_line(error)}") from None
    if frame.empty or frame.geometry.isna().all():
        raise GridError(f"AOI file {path} holds no geometry; it needs at least one polygon")
    if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        try:
            frame = frame.to_crs(4326)
        except Exception as error:
            raise GridError(f"cannot reproject {path} to EPSG:4326: {first_line(error)}") from None
    parts = [split_at_antimeridian(g) for g in frame.geometry.dropna().to_numpy()]
    return _valid(shapely.union_all(parts))


def _valid(geometry: BaseGeometry) -> BaseGeometry:
    return geometry if geometry.is_valid else shapely.make_valid(geometry)
