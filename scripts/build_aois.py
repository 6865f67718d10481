"""Build the built-in AOI files under grids/aois/ from Natural Earth 1:10m admin-0 countries.

Run from the repository root (the files are committed; rerun only to change an AOI):

    .venv/bin/python scripts/build_aois.py [--countries PATH] [--shared-data DIR]

The paper's AOIs were cut by the coverage of ARIA GUNW products and are not published in a
form we can reach, so ours are unions of Natural Earth countries. Choices made here:

- conus: the USA row clipped to the box 125°W-66.5°W, 24°N-49.5°N, which drops Alaska,
  Hawaii and the overseas territories and keeps the Florida Keys and the Northwest Angle.
- europe: every Natural Earth row whose continent is Europe, *except Russia*, clipped to
  25°W-45°E, 34°N-72°N. Russia is left out because it is mostly Asian and would more than
  double the AOI (17 M km²) and push it to 82°N; the paper's Europe (200,489 tiles, about
  4 M km²) is of the size of Europe without Russia. The box drops overseas territories
  (French Guiana, Réunion, the Canaries, the Azores) and Svalbard. Belarus and Ukraine are
  in; Turkey and Cyprus (continent Asia in Natural Earth) are in the Middle East instead.
- middle-east: Western Asia without the Caucasus (Georgia, Armenia, Azerbaijan), plus Iran
  and Egypt: the Arabian Peninsula, the Levant, Iraq, Turkey, Cyprus.
- pakin: Pakistan, India and the Kashmir row (disputed territory claimed by both).
- china: Natural Earth's China rows (mainland, Hainan, Hong Kong, Macau); Taiwan is a
  separate row and is not included.
- south-america: every row of continent South America (including the Falklands) and French
  Guiana (cut out of France's row), clipped to 82°W-28°W, 56.5°S-13.5°N, which drops the
  Galápagos and Easter Island.
- demo: small boxes around the footprints of the sample rasters (Virginia S2, Los Angeles
  DEM, Rome DEM, Camargue S1), so a demo grid of a few dozen tiles has real data under it.

Files are kept small: geometries simplified to 0.01° (about 1 km, well under a tile) with a
0.0001° coordinate grid, one feature per file whose properties carry the figures that
``m3leo-tiles aois`` lists.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import rasterio
import shapely
from pyproj import Geod
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.grid.aois import load_aoi
from m3leo_tiles.grid.lattice import lattice_cells

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "grids" / "aois"
SIMPLIFY_DEG = 0.01
PRECISION_DEG = 0.0001
DEMO_MARGIN_DEG = 0.01


@dataclass(frozen=True)
class AoiSpec:
    name: str
    description: str
    angle: float  # radians, clockwise, west = 0 (the paper's Table A.2)


SPECS = {
    "conus": AoiSpec("conus", "Contiguous United States (no Alaska, Hawaii)", 0.9),
    "europe": AoiSpec("europe", "Europe without Russia and overseas territories", 0.9),
    "middle-east": AoiSpec(
        "middle-east", "Arabian Peninsula, Levant, Iraq, Iran, Turkey, Egypt", 1.5
    ),
    "pakin": AoiSpec("pakin", "Pakistan and India (with Kashmir)", 1.5),
    "china": AoiSpec("china", "China (Natural Earth rows; Taiwan not included)", 1.5),
    "south-america": AoiSpec("south-america", "South America with French Guiana, Falklands", 0.6),
    "demo": AoiSpec(
        "demo", "Boxes around the sample rasters: Virginia, Los Angeles, Rome, Camargue", 0.9
    ),
}

CAUCASUS = {"Georgia", "Armenia", "Azerbaijan"}
DEMO_RASTERS = (
    "s2/s2_B05.jp2",
    "dem/los_angeles_tile_0.tif",
    "dem/los_angeles_tile_1.tif",
    "dem/los_angeles_tile_2.tif",
    "dem/Rome-30m-DEM.tif",
    "s1/S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif",
)


def union(frame: gpd.GeoDataFrame) -> BaseGeometry:
    if frame.empty:
        raise SystemExit("no Natural Earth rows matched; is the countries file the right one?")
    return shapely.union_all(frame.geometry.to_numpy())


def country_geometries(countries: gpd.GeoDataFrame) -> dict[str, BaseGeometry]:
    sov, continent, sub = countries["SOVEREIGNT"], countries["CONTINENT"], countries["SUBREGION"]
    usa = union(countries[sov == "United States of America"])
    europe = union(countries[(continent == "Europe") & (sov != "Russia")])
    middle_east = union(
        countries[((sub == "Western Asia") & ~sov.isin(CAUCASUS)) | sov.isin(["Iran", "Egypt"])]
    )
    french_guiana = shapely.clip_by_rect(union(countries[sov == "France"]), -55.0, 1.5, -51.0, 6.5)
    south_america = shapely.union_all(
        [union(countries[continent == "South America"]), french_guiana]
    )
    return {
        "conus": shapely.clip_by_rect(usa, -125.0, 24.0, -66.5, 49.5),
        "europe": shapely.clip_by_rect(europe, -25.0, 34.0, 45.0, 72.0),
        "middle-east": middle_east,
        "pakin": union(countries[sov.isin(["Pakistan", "India", "Kashmir"])]),
        "china": union(countries[sov == "China"]),
        "south-america": shapely.clip_by_rect(south_america, -82.0, -56.5, -28.0, 13.5),
    }


def demo_geometry(shared_data: Path) -> BaseGeometry:
    """Union of the sample rasters' lon/lat footprints, each grown by about 1 km."""
    boxes = []
    for name in DEMO_RASTERS:
        with rasterio.open(shared_data / name) as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        boxes.append(box(west - DEMO_MARGIN_DEG, south - DEMO_MARGIN_DEG,
                         east + DEMO_MARGIN_DEG, north + DEMO_MARGIN_DEG))  # fmt: skip
    return shapely.union_all(boxes)


def compact(geometry: BaseGeometry, simplify: bool) -> BaseGeometry:
    if simplify:
        geometry = shapely.simplify(geometry, SIMPLIFY_DEG, preserve_topology=True)
    geometry = shapely.set_precision(geometry, PRECISION_DEG)
    return geometry if geometry.is_valid else shapely.make_valid(geometry)


def write_aoi(spec: AoiSpec, geometry: BaseGeometry, out: Path) -> Path:
    """Write one AOI file; its tile count is taken from the file as `grid` will read it."""
    area_m2, _ = Geod(ellps="WGS84").geometry_area_perimeter(geometry)
    props = {
        "name": spec.name,
        "description": spec.description,
        "angle": spec.angle,
        "area_km2": round(abs(area_m2) / 1e6, 1),
        "approx_tiles": 0,
        "bbox": [round(v, 4) for v in geometry.bounds],
        "source": "Natural Earth 1:10m admin-0 (public domain) via scripts/build_aois.py",
    }
    path = out / f"{spec.name}.geojson"
    tmp = out / f".{spec.name}.tmp.geojson"
    for _ in range(2):  # second pass stores the tile count of the written geometry
        feature = {"type": "Feature", "properties": props, "geometry": mapping(geometry)}
        text = json.dumps(
            {"type": "FeatureCollection", "features": [feature]}, separators=(",", ":")
        )
        tmp.write_text(text + "\n")
        props["approx_tiles"] = len(lattice_cells(load_aoi(str(tmp)).geometry))
    tmp.replace(path)
    print(f"{spec.name:14s} {props['area_km2']:>12,.0f} km²  {props['approx_tiles']:>9,} tiles  "
          f"{len(text) / 1e6:.2f} MB")  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = REPO.parent / "shared" / "data"
    parser.add_argument(
        "--countries", type=Path, default=shared / "vector" / "natural_earth_admin0_10m.parquet"
    )
    parser.add_argument("--shared-data", type=Path, default=shared)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    countries = gpd.read_parquet(args.countries).to_crs(4326)
    geometries = country_geometries(countries)
    geometries["demo"] = demo_geometry(args.shared_data)
    for name, geometry in geometries.items():
        write_aoi(SPECS[name], compact(geometry, simplify=name != "demo"), args.out)


if __name__ == "__main__":
    main()
