"""`m3leo-tiles fetch` / `status` end to end, as a user runs them (subprocess), on real rasters.

Real data: the ESA WorldCover 2021 tile N00E006 (São Tomé and open sea, nodata 0), the
corrupt GeoTIFF from rasterio's tests, and the SRTM tile N10W110 (rewritten as GeoTIFFs in
two adjacent 1° cells for the vanishing-input test). Test-only adapters (``slow-raster``,
the raster source sleeping per tile) come from tests/helpers via PYTHONPATH, so runs last long
enough to interrupt; the code under test is unchanged.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

from helpers.cli import assert_one_error_line, cli_env, run_cli
from helpers.grid_files import write_grid
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.lock import LOCK_NAME
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.grid.tile import Tile

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parents[1]  # tests/: helpers import from there
CLI = Path(sys.executable).parent / "m3leo-tiles"
WORLDCOVER = "landcover/ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"
LAND = Tile.from_point(6.60, 0.25)  # São Tomé island
LAND_2 = Tile.from_point(6.55, 0.30)
SEA = Tile.from_point(8.5, 2.5)  # open sea inside the map: nodata only
FAR = Tile.from_point(-100.0, 40.0)  # nowhere near the map


def _have_raster() -> bool:
    try:
        from m3leo_tiles.sources.base import get_source

        get_source("raster")
        import m3leo_tiles.dataset.chipfile  # noqa: F401
    except Exception:
        return False
    return True


requires_raster = pytest.mark.skipif(not _have_raster(), reason="raster source not built yet")


def write_recipe(path: Path, source: str = "raster", **extra) -> Path:
    recipe = {
        "name": path.stem,
        "description": "test recipe",
        "source": source,
        "resolution": 89.6,
        "bands": ["value"],
        "resampling": "mode",
        "dtype": "uint8",
        "nodata": 0,
        **extra,
    }
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def cli(*args, cwd: Path, timeout: float = 120, sleep: float = 0.0, **popen):
    env = cli_env(M3LEO_TEST_SLEEP=str(sleep))
    return run_cli(
        args, cwd=cwd, timeout=timeout, env=env, background=popen.pop("background", False)
    )


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tif")}


def assert_user_error(result) -> None:
    assert_one_error_line(result.returncode, result.stderr)


@requires_raster
def test_fetch_statuses_rerun_and_status(tmp_path: Path, shared_data: Path) -> None:
    grid = write_grid(tmp_path / "grids" / "testaoi" / "tiles.geojson", [LAND, LAND_2, SEA, FAR])
    recipe = write_recipe(tmp_path / "wc.yaml")
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1"]
    args += ["--source", shared_data / WORLDCOVER]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "data" / "testaoi" / "wc"
    assert sorted(p.stem for p in folder.glob("*.tif")) == sorted(
        [LAND.identifier, LAND_2.identifier]
    )
    rows = read_manifest(folder / MANIFEST_NAME)
    assert rows[LAND.identifier].status is TileStatus.OK
    assert rows[SEA.identifier].status is TileStatus.EMPTY
    assert rows[FAR.identifier].status is TileStatus.NO_SOURCE
    with rasterio.open(folder / f"{LAND.identifier}.tif") as chip:
        assert (chip.width, chip.height) == (50, 50)
        assert chip.transform == LAND.pixel_grid(89.6).transform
        assert chip.read(1).max() > 0  # the island is there
    assert (folder / "fetch.log").exists() and not (folder / LOCK_NAME).exists()

    before = mtimes(folder)
    second = cli(*args, "--quiet", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "" and second.stderr == ""  # cron-quiet
    assert mtimes(folder) == before

    shown = cli("status", tmp_path / "data", "--grids-dir", tmp_path / "grids", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    header, line = shown.stdout.splitlines()
    assert header.split()[:7] == ["aoi", "dataset", "ok", "empty", "no-source", "failed", "missing"]
    assert line.split()[:7] == ["testaoi", "wc", "2", "1", "1", "0", "0"]


@requires_raster
def test_compress_stores_new_chips_and_keeps_finished_ones(tmp_path: Path, shared_data: Path):
    """The codec is how chips are stored: another one neither changes the recipe hash nor
    redoes finished chips; chips of both codecs then read alike."""
    recipe = write_recipe(tmp_path / "wc.yaml", compress="deflate")
    folder = tmp_path / "data" / "testaoi" / "wc"
    grid = tmp_path / "grids" / "testaoi" / "tiles.geojson"
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1",
            "--source", shared_data / WORLDCOVER]  # fmt: skip
    write_grid(grid, [LAND])
    assert cli(*args, cwd=tmp_path).returncode == 0
    old = (folder / f"{LAND.identifier}.tif").read_bytes()
    hashes = {row.recipe_hash for row in read_manifest(folder / MANIFEST_NAME).values()}
    write_grid(grid, [LAND, LAND_2])
    second = cli(*args, "--compress", "zstd", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "1 ok" in second.stdout and "1 already done" in second.stdout
    assert (folder / f"{LAND.identifier}.tif").read_bytes() == old
    rows = read_manifest(folder / MANIFEST_NAME)
    assert {row.recipe_hash for row in rows.values()} == hashes
    codecs = {}
    for tile in (LAND, LAND_2):
        with rasterio.open(folder / f"{tile.identifier}.tif") as chip:
            codecs[tile] = chip.compression.name.lower()
            assert chip.read(1).max() > 0
    assert codecs == {LAND: "deflate", LAND_2: "zstd"}
    verified = cli("status", tmp_path / "data", "--grids-dir", tmp_path / "grids", "--verify",
                   cwd=tmp_path)  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    refused = cli(*args, "--compress", "jpeg", cwd=tmp_path)
    assert_user_error(refused)
    assert "'jpeg' is not one of 'zstd', 'deflate', 'lzw', 'none'" in refused.stderr


@requires_raster
def test_non_ascii_paths_and_band_names_make_whole_chips(tmp_path: Path, shared_data: Path) -> None:
    """Paths and band names end up in each chip's GDAL metadata, which must stay readable."""
    home = tmp_path / "São Tomé & Príncipe"
    source = home / "entrées" / "carte <2021>.tif"
    source.parent.mkdir(parents=True)
    shutil.copy(shared_data / WORLDCOVER, source)
    grid = write_grid(home / "grids" / "testaoi" / "tiles.geojson", [LAND])
    recipe = write_recipe(home / "occupation-du-sol.yaml", bands=["classe d'occupation é"])
    out = home / "données"
    done = cli("fetch", recipe, "--grid", grid, "--out", out, "--workers", "1", "--source",
               source, cwd=home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with rasterio.open(out / "testaoi" / "occupation-du-sol" / f"{LAND.identifier}.tif") as chip:
        assert chip.tags()["inputs"] == str(source)
        assert chip.descriptions == ("classe d'occupation é",)
        assert chip.read(1).max() > 0


@requires_raster
def test_corrupt_input_is_recorded_failed(tmp_path: Path, shared_data: Path) -> None:
    tile = Tile.from_point(128.658, 37.668)  # corrupt.tif's footprint
    grid = write_grid(tmp_path / "g.geojson", [tile])
    recipe = write_recipe(tmp_path / "bad.yaml", params={"band_indexes": [1]})  # 3-band file
    result = cli(
        "fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1",
        "--source", shared_data / "raster" / "corrupt.tif", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    folder = tmp_path / "data" / "testaoi" / "bad"
    row = read_manifest(folder / MANIFEST_NAME)[tile.identifier]
    assert row.status is TileStatus.FAILED and row.reason
    assert not list(folder.glob("*.tif"))
    assert tile.identifier in (folder / "fetch.log").read_text()


def _srtm_cells(folder: Path, shared_data: Path) -> tuple[Path, Path]:
    """The real SRTM tile as two GeoTIFFs: its own cell and a copy shifted 1° east."""
    with rasterio.open(f"zip://{shared_data}/dem/N10W110.hgt.zip!N10W110.hgt") as src:
        data, profile, t = src.read(), src.profile, src.transform
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    paths = []
    for shift in (0, 1):
        path = folder / f"cell{shift}.tif"
        transform = rasterio.Affine(t.a, t.b, t.c + shift, t.d, t.e, t.f)
        with rasterio.open(path, "w", **{**profile, "transform": transform}) as dst:
            dst.write(data)
        paths.append(path)
    return paths[0], paths[1]


def _cell_tiles(lon: float, count: int) -> list[Tile]:
    first = Tile.from_point(lon, 10.3, 12)
    return [Tile(12, first.row, first.col + i) for i in range(count)]


def _srtm_recipe(path: Path, source: str) -> Path:
    return write_recipe(path, source, dtype="int16", nodata=-32768, resampling="bilinear")


def _wait_for_chips(folder: Path, count: int, process, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if len(list(folder.glob("*.tif"))) >= count:
            return
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} chips after {limit_s} s")


def _disturb_run(args, cwd: Path, folder: Path, after_chips: int, disturb, timeout: float):
    """Start a slowed-down fetch, disturb it once ``after_chips`` chips exist, let it end."""
    process = cli(*args, cwd=cwd, sleep=0.3, background=True)
    try:
        _wait_for_chips(folder, after_chips, process)
        disturb(process)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return process, stderr


def _all_readable(folder: Path) -> None:
    for chip in folder.glob("*.tif"):
        with rasterio.open(chip) as dataset:
            assert dataset.read().shape == (1, 50, 50)
    assert not [p for p in folder.iterdir() if p.suffix == ".tif" and p.name.startswith(".")]


@requires_raster
def test_ctrl_c_keeps_finished_chips_and_rerun_resumes(tmp_path: Path, shared_data: Path) -> None:
    cell, _ = _srtm_cells(tmp_path, shared_data)
    tiles = _cell_tiles(-109.8, 16)
    grid = write_grid(tmp_path / "g.geojson", tiles)
    recipe = _srtm_recipe(tmp_path / "dem.yaml", "slow-raster")
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1"]
    args += ["--source", cell]
    folder = tmp_path / "data" / "testaoi" / "dem"
    process, stderr = _disturb_run(
        args, tmp_path, folder, 2, lambda p: p.send_signal(signal.SIGINT), timeout=60
    )
    assert process.returncode == 130, stderr
    assert "rerun" in stderr and "Traceback" not in stderr
    assert not (folder / LOCK_NAME).exists()
    _all_readable(folder)
    done = mtimes(folder)
    assert 2 <= len(done) < len(tiles)
    rows = read_manifest(folder / MANIFEST_NAME)
    assert all(rows[name[:-4]].status is TileStatus.OK for name in done if name[:-4] in rows)

    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in mtimes(folder).items() if k in done} == done
    assert len(read_manifest(folder / MANIFEST_NAME)) == len(tiles)


@requires_raster
def test_input_vanishing_mid_run_fails_its_tiles_then_resumes(
    tmp_path: Path, shared_data: Path
) -> None:
    first_cell, second_cell = _srtm_cells(tmp_path, shared_data)
    spare = tmp_path / "spare.tif"
    shutil.copy(second_cell, spare)
    tiles = _cell_tiles(-109.8, 6) + _cell_tiles(-108.8, 6)
    grid = write_grid(tmp_path / "g.geojson", tiles)
    recipe = _srtm_recipe(tmp_path / "dem.yaml", "slow-raster")
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1"]
    args += ["--source", first_cell, "--source", second_cell]
    folder = tmp_path / "data" / "testaoi" / "dem"
    process, stderr = _disturb_run(
        args, tmp_path, folder, 1, lambda _: second_cell.unlink(), timeout=90
    )
    assert process.returncode == 1, stderr
    rows = read_manifest(folder / MANIFEST_NAME)
    failed = {i for i, row in rows.items() if row.status is TileStatus.FAILED}
    assert failed and failed <= {t.identifier for t in tiles[6:]}
    _all_readable(folder)
    done = mtimes(folder)

    shutil.copy(spare, second_cell)
    again = cli(*args, cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in mtimes(folder).items() if k in done} == done
    rows = read_manifest(folder / MANIFEST_NAME)
    assert {r.status for r in rows.values()} <= {TileStatus.OK, TileStatus.EMPTY}


def test_unknown_recipe_lists_known_ones(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "g.geojson", [LAND])
    result = cli("fetch", "no-such-recipe", "--grid", grid, cwd=tmp_path)
    assert_user_error(result)
    assert "no-such-recipe" in result.stderr


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "g.geojson", [LAND])
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\nsource: raster\n")
    assert_user_error(cli("fetch", bad, "--grid", grid, cwd=tmp_path))


@requires_raster
def test_missing_source_file_is_one_line(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "g.geojson", [LAND])
    recipe = write_recipe(tmp_path / "wc.yaml")
    result = cli("fetch", recipe, "--grid", grid, "--source", tmp_path / "nope.tif", cwd=tmp_path)
    assert_user_error(result)
    assert not (tmp_path / "data").exists()


@requires_raster
def test_unwritable_output_folder_is_one_line(tmp_path: Path, shared_data: Path) -> None:
    grid = write_grid(tmp_path / "g.geojson", [LAND])
    recipe = write_recipe(tmp_path / "wc.yaml")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli(
        "fetch", recipe, "--grid", grid, "--out", blocker / "data",
        "--source", shared_data / WORLDCOVER, cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(result)
    assert "--out" in result.stderr


def test_grid_without_identifiers_is_one_line(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame({"name": ["x"]}, geometry=[LAND.lonlat_polygon()], crs=4326)
    frame.to_file(tmp_path / "g.geojson", driver="GeoJSON")
    recipe = write_recipe(tmp_path / "wc.yaml")
    result = cli("fetch", recipe, "--grid", tmp_path / "g.geojson", cwd=tmp_path)
    assert_user_error(result)
    assert "identifier" in result.stderr


def test_no_grid_at_all_says_what_to_do(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "wc.yaml")
    result = cli("fetch", recipe, cwd=tmp_path)
    assert_user_error(result)
    assert "--grid" in result.stderr


@requires_raster
def test_lock_of_live_run_refuses_and_stale_lock_is_taken_over(
    tmp_path: Path, shared_data: Path
) -> None:
    grid = write_grid(tmp_path / "g.geojson", [LAND])
    recipe = write_recipe(tmp_path / "wc.yaml")
    folder = tmp_path / "data" / "testaoi" / "wc"
    folder.mkdir(parents=True)
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1"]
    args += ["--source", shared_data / WORLDCOVER]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": sleeper.pid, "host": socket.gethostname(), "started": time.time()}
        (folder / LOCK_NAME).write_text(json.dumps(lock))
        result = cli(*args, cwd=tmp_path)
        assert_user_error(result)
        assert str(sleeper.pid) in result.stderr
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    # The owner is gone now: its lock is stale and the next run takes it over.
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "stale lock" in result.stderr
    assert not (folder / LOCK_NAME).exists()
    assert (folder / f"{LAND.identifier}.tif").exists()


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 700 KB filesystem (tmpfs), for a disk that fills up mid-run; root only."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@requires_raster
def test_full_disk_stops_with_one_line_and_rerun_resumes(tiny_disk: Path, tmp_path: Path) -> None:
    from m3leo_tiles.grid import make_grid

    grid = make_grid("demo", out_dir=tmp_path / "grid").path
    args = ["fetch", "demo-s2", "--grid", grid, "--out", tiny_disk / "data", "--workers", "1"]
    folder = tiny_disk / "data" / "demo" / "demo-s2"
    full = cli(*args, "--quiet", cwd=tmp_path)
    assert full.returncode == 2, full.stderr
    assert full.stderr.strip().splitlines() == [
        f"error: no space left on the device holding {folder}; free some space and rerun "
        "(finished chips are kept)"
    ]
    chips = list(folder.glob("*.tif"))
    assert chips, "some chips fit before the disk filled"
    for chip in chips:
        with rasterio.open(chip) as dataset:
            assert dataset.read().shape == (3, 224, 224)
    assert not list(folder.glob(".*.part")) and not (folder / LOCK_NAME).exists()
    done = mtimes(folder)

    subprocess.run(["mount", "-o", "remount,size=20m", str(tiny_disk)], check=True)
    again = cli(*args, "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in mtimes(folder).items() if k in done} == done
    assert len(list(folder.glob("*.tif"))) == 25


YEARS = (2018, 2019, 2020)


def _yearly_dem(tmp_path: Path, shared_data: Path) -> tuple[list[str], list[Tile]]:
    """A slowed raster recipe with ``{year}`` in its input path and the years 2018-2020 (each
    year's input is the real SRTM cell), and the fetch arguments without ``--year``."""
    cell, _ = _srtm_cells(tmp_path, shared_data)
    for year in YEARS:
        (tmp_path / "in" / str(year)).mkdir(parents=True)
        shutil.copy(cell, tmp_path / "in" / str(year) / "dem.tif")
    params = {"inputs": [str(tmp_path / "in" / "{year}" / "dem.tif")], "years": list(YEARS)}
    recipe = write_recipe(tmp_path / "dem.yaml", "slow-raster", dtype="int16", nodata=-32768,
                          resampling="bilinear", params=params)  # fmt: skip
    tiles = _cell_tiles(-109.8, 6)
    grid = write_grid(tmp_path / "g.geojson", tiles)
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1"]
    return args, tiles


@requires_raster
def test_a_range_of_years_makes_a_dataset_each_resumable_one_by_one(
    tmp_path: Path, shared_data: Path
) -> None:
    args, tiles = _yearly_dem(tmp_path, shared_data)
    args += ["--year", "2018-2020"]
    folders = {year: tmp_path / "data" / "testaoi" / f"dem-{year}" for year in YEARS}
    process, stderr = _disturb_run(
        args, tmp_path, folders[2019], 2, lambda p: p.send_signal(signal.SIGINT), timeout=60
    )
    assert process.returncode == 130, stderr  # interrupted while making 2019
    assert "rerun" in stderr and "Traceback" not in stderr
    assert len(read_manifest(folders[2018] / MANIFEST_NAME)) == len(tiles)
    made_2019 = mtimes(folders[2019])
    assert 2 <= len(made_2019) < len(tiles)
    assert not folders[2020].exists()
    done = {**mtimes(folders[2018]), **{f"2019/{k}": v for k, v in made_2019.items()}}

    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summaries = again.stdout.splitlines()
    assert [line.split(":")[0] for line in summaries] == [str(f) for f in folders.values()]
    assert f"{len(tiles) - len(made_2019)} ok" in summaries[1]  # only what was missing
    for year, folder in folders.items():
        rows = read_manifest(folder / MANIFEST_NAME)
        assert len(rows) == len(tiles) and {r.status for r in rows.values()} == {TileStatus.OK}
        assert f"dem-{year}" in (folder / "fetch.log").read_text()
    now = {**mtimes(folders[2018]), **{f"2019/{k}": v for k, v in mtimes(folders[2019]).items()}}
    assert {k: v for k, v in now.items() if k in done} == done  # nothing made twice


@requires_raster
def test_a_year_the_recipe_lacks_refuses_every_year_before_any_work(
    tmp_path: Path, shared_data: Path
) -> None:
    args, _ = _yearly_dem(tmp_path, shared_data)
    result = cli(*args, "--year", "2019,2021", cwd=tmp_path)
    assert_one_error_line(result.returncode, result.stderr, "2021")
    assert not (tmp_path / "data" / "testaoi" / "dem-2019").exists()


@pytest.mark.parametrize(
    ("years", "needle"),
    [
        ("2020-2018", "ends before it starts"),
        ("abc", "not a year"),
        ("1900-2000", "50 years"),
        ("2018,", "not a year"),
    ],
)
def test_bad_years_are_one_error_line(tmp_path: Path, years: str, needle: str) -> None:
    recipe = write_recipe(tmp_path / "wc.yaml")
    grid = write_grid(tmp_path / "g.geojson", [LAND])
    result = cli("fetch", recipe, "--grid", grid, "--year", years, cwd=tmp_path)
    assert_one_error_line(result.returncode, result.stderr, needle)
    assert not (tmp_path / "data").exists()
