"""Grids a new user makes by mistake (issue #8 item 10): two formats in one folder, AOIs with
no area, polygons written across the antimeridian, AOIs of millions of tiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import shapely

from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.enums import GridFormat
from m3leo_tiles.core.errors import ConfigError, GridError
from m3leo_tiles.grid import default_grid_path, make_grid, read_grid
from m3leo_tiles.grid.aois import load_aoi

SMALL = "POLYGON ((12.40 41.85, 12.60 41.85, 12.60 42.00, 12.40 42.00, 12.40 41.85))"


def _wkt(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_one_grid_per_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aoi = _wkt(tmp_path / "rome.wkt", SMALL)
    out = tmp_path / "grids" / "rome"
    make_grid(aoi, out_dir=out)
    parquet = make_grid(aoi, out_dir=out, fmt=GridFormat.PARQUET, bands=7)
    assert sorted(p.name for p in out.iterdir()) == ["splits.csv", "tiles.parquet"]
    assert default_grid_path("rome", tmp_path / "grids") == parquet.path
    make_grid(aoi, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["splits.csv", "tiles.geojson"]

    # A folder holding both (an older version wrote them) is refused, not picked from.
    make_grid(aoi, out_dir=tmp_path / "other", fmt=GridFormat.PARQUET)
    (tmp_path / "other" / "tiles.parquet").rename(out / "tiles.parquet")
    with pytest.raises(GridError, match="holds two grids"):
        default_grid_path("rome", tmp_path / "grids")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("source: raster\nresolution: 448\nbands: [v]\nparams: {inputs: x.tif}\n")
    code, _, err = call_cli(
        capsys, "fetch", recipe, "--aoi", "rome", "--grids-dir", tmp_path / "grids"
    )
    assert_one_error_line(code, err, "holds two grids")


@pytest.mark.parametrize(
    "text", ["MULTIPOINT ((12.4 41.9), (12.5 42.0))", "LINESTRING (12.4 41.9, 12.6 42.0)"]
)
def test_points_or_lines_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(GridError, match="give a polygon with some area"):
        make_grid(_wkt(tmp_path / "a.wkt", text), out_dir=tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_a_polygon_written_across_the_antimeridian_is_split(tmp_path: Path) -> None:
    # Fiji-like: 177°E to 178°W, as people (and many tools) write it.
    crossing = _wkt(
        tmp_path / "fiji.wkt", "POLYGON ((177 -17, -178 -17, -178 -16, 177 -16, 177 -17))"
    )
    geometry = load_aoi(crossing).geometry
    assert geometry.bounds == pytest.approx((-180.0, -17.0, 180.0, -16.0))
    assert geometry.area == pytest.approx(5.0)  # 5° x 1°, not 355° x 1°
    split = _wkt(
        tmp_path / "split.wkt",
        "MULTIPOLYGON (((177 -17, 180 -17, 180 -16, 177 -16, 177 -17)),"
        " ((-180 -17, -178 -17, -178 -16, -180 -16, -180 -17)))",
    )
    a = read_grid(make_grid(crossing, out_dir=tmp_path / "a").path)
    b = read_grid(make_grid(split, out_dir=tmp_path / "b").path)
    assert {t.identifier for t in a.tiles} == {t.identifier for t in b.tiles}
    assert 2500 < len(a.tiles) < 3500  # 5° x 1° near 16°S; 637,640 tiles before the fix
    with_hole = load_aoi(
        _wkt(
            tmp_path / "hole.wkt",
            "POLYGON ((177 -18, -178 -18, -178 -15, 177 -15, 177 -18),"
            " (179 -17, -179.5 -17, -179.5 -16, 179 -16, 179 -17))",
        )
    ).geometry
    assert with_hole.area == pytest.approx(15.0 - 1.5)
    assert not with_hole.contains(shapely.Point(179.5, -16.5))


def test_an_aoi_of_millions_of_tiles_needs_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = _wkt(
        tmp_path / "huge.wkt",
        "POLYGON ((-170 -60, 0 -60, 170 -60, 170 80, 0 80, -170 80, -170 -60))",
    )
    with pytest.raises(ConfigError, match="--yes"):
        make_grid(huge, out_dir=tmp_path / "g")
    code, _, err = call_cli(capsys, "grid", "--aoi", huge, "--out", tmp_path / "g")
    assert_one_error_line(code, err, "about 3,2", "--yes")
    assert not (tmp_path / "g").exists()
