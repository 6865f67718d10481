"""Built-in AOIs (country unions from Natural Earth) and user AOI files in any format/CRS."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import shapely
from rasterio.warp import transform_bounds
from shapely.geometry import Point, box

from m3leo_tiles.core.errors import GridError
from m3leo_tiles.grid import aois_dir, lattice_cells, list_aois, load_aoi

BUILTIN = {"conus", "europe", "middle-east", "pakin", "china", "south-america", "demo"}
PAPER_ANGLES = {"conus": 0.9, "europe": 0.9, "china": 1.5, "middle-east": 1.5, "pakin": 1.5,
                "south-america": 0.6, "demo": 0.9}  # fmt: skip


def test_builtin_aois_are_listed_with_figures() -> None:
    found = {info.name: info for info in list_aois()}
    assert set(found) == BUILTIN
    for name, info in found.items():
        assert info.angle == PAPER_ANGLES[name]
        assert info.description and info.area_km2 > 0 and info.approx_tiles > 0
        if name != "demo":  # big AOIs: tiles × 20.07 km² ≈ area plus a boundary ring
            assert 0.99 < info.approx_tiles * 20.0704 / info.area_km2 < 1.1
    assert sum(p.stat().st_size for p in aois_dir().glob("*.geojson")) < 5e6
    assert aois_dir() == Path(__file__).resolve().parents[2] / "grids" / "aois"


def test_conus_has_no_alaska_or_hawaii_and_europe_no_overseas_parts() -> None:
    conus = load_aoi("conus").geometry
    assert conus.bounds[0] > -125.5 and conus.bounds[3] < 50
    assert conus.contains(Point(-98.0, 39.0)) and conus.contains(Point(-81.5, 28.0))  # KS, FL
    europe = load_aoi("europe").geometry
    assert not europe.intersects(box(-55, 2, -51, 6))  # French Guiana
    assert not europe.contains(Point(37.6, 55.75))  # Moscow: Russia is left out
    assert europe.contains(Point(2.35, 48.85)) and europe.contains(Point(30.5, 50.45))
    south_america = load_aoi("south-america").geometry
    assert south_america.contains(Point(-53.0, 4.0))  # French Guiana belongs here
    assert load_aoi("pakin").geometry.contains(Point(77.2, 28.6))  # Delhi
    assert load_aoi("middle-east").geometry.contains(Point(46.7, 24.7))  # Riyadh
    assert load_aoi("china").geometry.contains(Point(116.4, 39.9))  # Beijing


def test_demo_covers_the_sample_rasters(shared_data) -> None:
    demo = load_aoi("demo").geometry
    names = ["s2/s2_B05.jp2", "dem/los_angeles_tile_0.tif", "dem/Rome-30m-DEM.tif",
             "s1/S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif"]  # fmt: skip
    for name in names:
        with rasterio.open(shared_data / name) as src:
            footprint = box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds))
        assert demo.contains(footprint), name
    assert 30 <= len(lattice_cells(demo)) <= 80


def test_user_files_in_any_format_and_crs(tmp_path) -> None:
    area = box(4.4, 43.5, 4.7, 43.7)  # Camargue
    expected = set(lattice_cells(area).identifiers().tolist())
    gpd.GeoDataFrame(geometry=[area], crs=4326).to_crs(2154).to_file(tmp_path / "a.gpkg")
    gpd.GeoDataFrame(geometry=[area], crs=4326).to_crs(32631).to_file(tmp_path / "a.shp")
    gpd.GeoDataFrame(geometry=[area], crs=4326).to_file(tmp_path / "a.geojson")
    (tmp_path / "a.wkt").write_text(area.wkt)
    (tmp_path / "aoi.txt").write_text(area.wkt + "\n")
    for name in ("a.gpkg", "a.shp", "a.geojson", "a.wkt", "aoi.txt"):
        aoi = load_aoi(str(tmp_path / name))
        assert aoi.geometry.bounds == pytest.approx(area.bounds, abs=1e-6), name
        assert set(lattice_cells(aoi.geometry).identifiers().tolist()) == expected, name
    assert load_aoi(str(tmp_path / "a.gpkg")).name == "a" and load_aoi("conus").name == "conus"


def test_bad_aois(tmp_path) -> None:
    with pytest.raises(GridError, match=r"unknown AOI 'atlantis'.*conus.*south-america"):
        load_aoi("atlantis")
    with pytest.raises(GridError, match="not found"):
        load_aoi(str(tmp_path / "missing.geojson"))
    (tmp_path / "bad.wkt").write_text("POLYGON((0 0, 1 1")
    with pytest.raises(GridError, match="cannot read WKT"):
        load_aoi(str(tmp_path / "bad.wkt"))
    (tmp_path / "bad.geojson").write_text("{nope")
    with pytest.raises(GridError, match="cannot read AOI file"):
        load_aoi(str(tmp_path / "bad.geojson"))
    (tmp_path / "empty.wkt").write_text("POLYGON EMPTY")
    with pytest.raises(GridError, match="no geometry"):
        load_aoi(str(tmp_path / "empty.wkt"))
    (tmp_path / "far.wkt").write_text(shapely.box(1000, 1000, 2000, 2000).wkt)
    with pytest.raises(GridError, match="not longitude/latitude"):
        lattice_cells(load_aoi(str(tmp_path / "far.wkt")).geometry)
