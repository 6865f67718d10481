"""`m3leo-tiles grid` and `aois` as a user runs them: the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import assert_one_error_line
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.grid import Tile, read_grid

SCRIPT = Path(sys.executable).parent / "m3leo-tiles"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "m3leo_tiles.cli.tiles"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_grid_demo_then_read_it_back(tmp_path) -> None:
    done = run("grid", "--aoi", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tiles = tmp_path / "grids" / "demo" / "tiles.geojson"
    assert _files(tmp_path) == [tmp_path / "grids/demo/splits.csv", tiles]
    grid = read_grid(tiles)
    assert grid.aoi == "demo" and 30 <= len(grid) <= 80
    assert all(isinstance(t, Tile) for t in grid.tiles)
    assert f"{len(grid)} tiles" in done.stdout and "seam overlap" in done.stdout
    assert "km²" in done.stdout and str(Path("grids/demo/tiles.geojson")) in done.stdout


def test_grid_options_parquet_angle_ratios_seed(tmp_path) -> None:
    args = ("--aoi", "demo", "--format", "parquet", "--bands", "2000", "--angle", "0",
            "--ratios", "1:1:1", "--seed", "1", "--quiet")  # fmt: skip
    done = run("grid", *args, "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    grid = read_grid(tmp_path / "out" / "tiles.parquet")
    assert set(grid.splits.values()) == {"train", "val", "test"}  # narrow bands: all three
    again = run("grid", *args, "--out", "again", cwd=tmp_path)
    assert again.returncode == 0
    assert read_grid(tmp_path / "again" / "tiles.parquet").splits == grid.splits  # deterministic


def test_aois_lists_the_builtin_ones(tmp_path) -> None:
    done = run("aois", cwd=tmp_path)
    assert done.returncode == 0
    for name in ("conus", "europe", "middle-east", "pakin", "china", "south-america", "demo"):
        assert any(line.startswith(name + " ") for line in done.stdout.splitlines()), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--aoi", "atlantis"), "unknown AOI 'atlantis'; built-in AOIs are: china, conus"),
        (("--aoi", "demo", "--ratios", "3:1"), "--ratios '3:1' is not TRAIN:VAL:TEST"),
        (("--aoi", "demo", "--ratios", "0:0:0"), "not all zero"),
        (("--aoi", "demo", "--bands", "0"), "--bands must be at least 1"),
        (("--aoi", "nofile.geojson"), "not found"),
        (("--aoi", "broken.geojson"), "cannot read AOI file"),
        (("--aoi", "empty.wkt"), "no geometry"),
        (("--aoi", "faraway.wkt"), "not longitude/latitude"),
        (("--aoi", "arctic.wkt"), "outside UTM's range"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, args, message) -> None:
    (tmp_path / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    (tmp_path / "empty.wkt").write_text("MULTIPOLYGON EMPTY")
    (tmp_path / "faraway.wkt").write_text(
        "POLYGON ((500000 4000000, 510000 4000000, 510000 4010000, 500000 4000000))"
    )
    (tmp_path / "arctic.wkt").write_text("POLYGON ((10 80, 20 80, 20 86, 10 80))")
    before = _files(tmp_path)
    done = run("grid", *args, cwd=tmp_path)
    assert_one_error_line(done.returncode, done.stderr, message)
    assert _files(tmp_path) == before and not (tmp_path / "grids").exists()


ROME_FIELD = "POLYGON ((12.47 41.97, 12.52 41.97, 12.52 42.02, 12.47 41.97))"  # inside the Rome DEM


@pytest.mark.parametrize(
    ("file_name", "name", "problem"),
    [
        ("...wkt", None, "AOI name '..' (from the file name '...wkt') contains '..'"),
        ("a b.wkt", None, "AOI name 'a b' (from the file name 'a b.wkt') is not a safe file name"),
        ("field.wkt", "a b", "AOI name 'a b' (given with --name) is not a safe file name"),
        ("field.wkt", "../up", "AOI name '../up' (given with --name) contains a path separator"),
    ],
)
def test_an_aoi_name_fetch_would_refuse_is_refused_by_grid(tmp_path, file_name, name, problem):
    """One name rule for grid and fetch: no ``grids/../tiles.geojson``, no ``grids/a b``."""
    work = tmp_path / "work"
    work.mkdir()
    (work / file_name).write_text(ROME_FIELD)
    before = _files(tmp_path)
    done = run("grid", "--aoi", file_name, *(("--name", name) if name else ()), cwd=work)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {problem}") and "--name NAME" in lines[0], lines[0]
    assert _files(tmp_path) == before and not (work / "grids").exists()


def test_grid_name_is_the_aoi_fetch_uses(tmp_path, shared_data) -> None:
    (tmp_path / "my field.wkt").write_text(ROME_FIELD)
    done = run("grid", "--aoi", "my field.wkt", "--name", "my-field", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    grid = read_grid(tmp_path / "grids" / "my-field" / "tiles.geojson")
    assert grid.aoi == "my-field" and len(grid) > 0
    fetched = run("fetch", "demo-dem", "--aoi", "my-field", "--out", "data", "--workers", "1",
                  "--source", str(shared_data / "dem" / "Rome-30m-DEM.tif"), "--quiet",
                  cwd=tmp_path)  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    rows = read_manifest(tmp_path / "data" / "my-field" / "demo-dem" / MANIFEST_NAME)
    assert sorted(rows) == sorted(tile.identifier for tile in grid.tiles)
