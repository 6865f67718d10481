"""Grid files: what make_grid writes, reading it back with GDAL, foreign files, select."""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from pyproj import Transformer
from shapely.geometry import box

from m3leo_tiles.core.enums import GridFormat
from m3leo_tiles.core.errors import GridError
from m3leo_tiles.grid import (
    BoxTile,
    Tile,
    default_grid_path,
    ensure_grid,
    list_grids,
    make_grid,
    read_grid,
)


def _write_aoi(path: Path, geometry, crs: str = "EPSG:4326") -> Path:
    gpd.GeoDataFrame(geometry=[geometry], crs="EPSG:4326").to_crs(crs).to_file(path)
    return path


@pytest.fixture(scope="module")
def demo_grid(tmp_path_factory) -> Path:
    return make_grid("demo", out_dir=tmp_path_factory.mktemp("g") / "demo").path


def test_geojson_reads_back_with_gdal_as_exact_squares(demo_grid) -> None:
    frame = gpd.read_file(demo_grid, engine="pyogrio")
    assert frame.crs.equals("EPSG:4326")
    assert list(frame.columns) == [
        "identifier", "aoi", "utm_epsg", "x_min", "y_min", "band", "split", "seam", "geometry"
    ]  # fmt: skip
    assert 30 <= len(frame) <= 80 and (frame["aoi"] == "demo").all()
    for row in frame.itertuples():
        tile = Tile.from_id(row.identifier)
        assert (row.utm_epsg, row.x_min, row.y_min) == (tile.epsg, tile.x_min, tile.y_min)
        ring = np.asarray(row.geometry.exterior.coords)
        x, y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(
            ring[:, 0], ring[:, 1]
        )
        x0, y0, x1, y1 = tile.bounds
        np.testing.assert_allclose(x, [x0, x1, x1, x0, x0], atol=0.2)  # 6 decimals ≈ 0.1 m
        np.testing.assert_allclose(y, [y0, y0, y1, y1, y0], atol=0.2)
    splits = pd.read_csv(demo_grid.parent / "splits.csv")
    assert list(splits.columns) == ["identifier", "split", "band"]
    assert splits["identifier"].tolist() == frame["identifier"].tolist()
    assert splits["split"].tolist() == frame["split"].tolist()


def test_read_grid_gives_tiles_and_splits(demo_grid) -> None:
    grid = read_grid(demo_grid)
    assert grid.aoi == "demo" and all(isinstance(t, Tile) for t in grid.tiles)
    assert set(grid.splits.values()) <= {"train", "val", "test"}
    assert len(grid.splits) == len(grid.tiles)
    train = grid.select(split="train")
    assert train and all(grid.splits[t.identifier] == "train" for t in train)
    some = [t.identifier for t in grid.tiles[5:9]]
    assert [t.identifier for t in grid.select(identifiers=some)] == some
    assert len(grid.select(limit=3)) == 3 and grid.select(limit=3) == list(grid.tiles[:3])


def test_read_grid_without_the_csv_gives_the_same(demo_grid, tmp_path) -> None:
    alone = tmp_path / "tiles.geojson"
    alone.write_bytes(demo_grid.read_bytes())
    assert read_grid(alone).tiles == read_grid(demo_grid).tiles
    assert read_grid(alone).splits == read_grid(demo_grid).splits
    # A CSV older than the tiles file is not trusted.
    stale = tmp_path / "splits.csv"
    stale.write_text("identifier,split,band\n01N_0000_000,train,0\n")
    old = alone.stat().st_mtime - 100
    os.utime(stale, (old, old))
    assert len(read_grid(alone)) == len(read_grid(demo_grid))


def test_parquet_format(tmp_path) -> None:
    result = make_grid("demo", out_dir=tmp_path / "p", fmt=GridFormat.PARQUET)
    assert result.path.name == "tiles.parquet" and result.splits_path.exists()
    frame = gpd.read_parquet(result.path)
    assert frame.crs.equals("EPSG:4326") and len(frame) == result.tiles
    assert (
        read_grid(result.path).splits
        == read_grid(make_grid("demo", out_dir=tmp_path / "g").path).splits
    )
    assert default_grid_path("p", tmp_path) == result.path


def test_ids_and_geometry_are_the_same_whatever_the_aoi(tmp_path) -> None:
    west = _write_aoi(tmp_path / "west.geojson", box(11.0, 41.5, 12.8, 42.5))
    east = _write_aoi(tmp_path / "east.gpkg", box(12.2, 41.8, 13.5, 42.9), crs="EPSG:3857")
    a = gpd.read_file(make_grid(str(west), out_dir=tmp_path / "a").path).set_index("identifier")
    b = gpd.read_file(make_grid(str(east), out_dir=tmp_path / "b").path).set_index("identifier")
    shared = a.index.intersection(b.index)
    assert len(shared) > 50
    assert all(a.geometry[i].equals_exact(b.geometry[i], 0) for i in shared)
    assert (
        (
            a.loc[shared, ["utm_epsg", "x_min", "y_min"]]
            == b.loc[shared, ["utm_epsg", "x_min", "y_min"]]
        )
        .all()
        .all()
    )
    assert all(Tile.from_id(i).identifier == i for i in shared)


def test_foreign_file_gives_box_tiles(tmp_path) -> None:
    path = tmp_path / "geetiles_grid.geojson"
    gpd.GeoDataFrame(
        {"identifier": ["a1b2c3", "33N_1187_089", "tile-7"]},
        geometry=[
            box(10.0, 45.0, 10.05, 45.04),
            box(0, 0, 1, 1),
            box(-70.1, -33.5, -70.05, -33.45),
        ],
        crs="EPSG:4326",
    ).to_file(path)
    grid = read_grid(path)
    assert grid.aoi == "geetiles_grid" and grid.splits == {}
    first, second, third = grid.tiles
    assert first == BoxTile("a1b2c3", 10.0, 45.0, 10.05, 45.04)
    assert second == Tile.from_id("33N_1187_089")  # lattice ids are lattice tiles
    assert isinstance(third, BoxTile) and third.west == pytest.approx(-70.1)
    with pytest.raises(GridError, match="no splits"):
        grid.select(split="train")


def test_foreign_file_in_another_crs_is_reprojected(tmp_path) -> None:
    path = tmp_path / "grid3857.gpkg"
    gpd.GeoDataFrame(
        {"identifier": ["x"]}, geometry=[box(10.0, 45.0, 10.05, 45.04)], crs="EPSG:4326"
    ).to_crs(3857).to_file(path)
    (tile,) = read_grid(path).tiles
    assert (tile.west, tile.south, tile.east, tile.north) == pytest.approx(
        (10.0, 45.0, 10.05, 45.04)
    )


def test_bad_grid_files(tmp_path) -> None:
    no_id = tmp_path / "noid.geojson"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[box(0, 0, 1, 1)], crs=4326).to_file(no_id)
    with pytest.raises(GridError, match="no 'identifier' column"):
        read_grid(no_id)
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(GridError):
        read_grid(empty)
    junk = tmp_path / "junk.geojson"
    junk.write_text("this is not json")
    with pytest.raises(GridError, match="cannot read"):
        read_grid(junk)
    with pytest.raises(GridError, match="not found"):
        read_grid(tmp_path / "missing.geojson")


def test_default_paths_list_and_ensure(tmp_path, monkeypatch) -> None:
    assert default_grid_path("conus") == Path("grids/conus/tiles.geojson")
    assert list_grids(tmp_path) == []
    path = ensure_grid("demo", tmp_path)
    assert path == tmp_path / "demo" / "tiles.geojson" and path.exists()
    mtime = path.stat().st_mtime_ns
    assert ensure_grid("demo", tmp_path) == path and path.stat().st_mtime_ns == mtime  # reused
    (tmp_path / "aois").mkdir()
    assert list_grids(tmp_path) == [path]
    monkeypatch.chdir(tmp_path)
    result = make_grid("demo")
    assert result.path == Path("grids/demo/tiles.geojson") and result.path.exists()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    import m3leo_tiles.grid.build as build

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(build, "write_splits_csv", explode)
    out = tmp_path / "never"
    with pytest.raises(RuntimeError):
        make_grid("demo", out_dir=out)
    assert not out.exists()


def test_a_grid_of_lattice_ids_holds_its_tiles_as_ids_and_selects_on_them(demo_grid) -> None:
    from m3leo_tiles.grid.tile import LatticeTiles, parse_tile_ids

    grid = read_grid(demo_grid)
    assert isinstance(grid.tiles, LatticeTiles)
    ids = list(grid.tiles.identifiers)
    assert list(grid.tiles) == parse_tile_ids(ids)
    train = grid.select(split="train")
    assert isinstance(train, LatticeTiles)
    assert list(train) == [t for t in parse_tile_ids(ids) if grid.splits[t.identifier] == "train"]
    assert grid.select() is grid.tiles
