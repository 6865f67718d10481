"""`m3leo-tiles fetch` with Earth Engine recipes end to end, as a user runs it (subprocess).

The emulator runs in this test process on 127.0.0.1; the CLI, its LocalCluster workers (or a
real `dask scheduler` + `dask worker`) reach it over TCP with the real earthengine-api client.
The subprocesses get this checkout's ``src`` first on their path, so the code under test is
this one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from tests.helpers.ee_emulator import EmulatorServer, expected_pixels, serve_earthengine

from m3leo_tiles.enums import TileStatus
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.recipes import load_recipe

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "m3leo-tiles"
DASK = Path(sys.executable).parent / "dask"
ROME = [Tile(33, 1038, 65), Tile(33, 1037, 65), Tile(33, 1039, 65)]  # on Rome-30m-DEM.tif


def write_grid(path: Path, tiles: list[Tile]) -> Path:
    import geopandas as gpd

    frame = gpd.GeoDataFrame(
        {"identifier": [t.identifier for t in tiles], "aoi": ["rome"] * len(tiles),
         "split": ["train"] * len(tiles)},
        geometry=[t.lonlat_polygon() for t in tiles],
        crs="EPSG:4326",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_file(path, driver="GeoJSON")
    return path


def environment(server: EmulatorServer | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("M3LEO_EE_API_KEY", "M3LEO_EE_URL", "EE_PROJECT",
                 "GOOGLE_APPLICATION_CREDENTIALS"):  # fmt: skip
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests/helpers/site")])
    if server is not None:
        env.update(M3LEO_EE_API_KEY="test-key", M3LEO_EE_URL=server.url, EE_PROJECT="m3leo-test")
    env.update(extra)
    return env


def cli(*args: object, cwd: Path, env: dict[str, str], timeout: float = 180):
    return subprocess.run([str(CLI), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def assert_chips(folder: Path, recipe_name: str, tiles: list[Tile]) -> None:
    recipe = load_recipe(recipe_name)
    for tile in tiles:
        grid = tile.pixel_grid(recipe.resolution)
        with rasterio.open(folder / f"{tile.identifier}.tif") as chip:
            assert chip.crs.to_epsg() == 32633
            assert chip.transform == grid.transform
            assert (chip.height, chip.width) == (grid.height, grid.width)
            assert chip.descriptions == recipe.bands
            assert chip.dtypes[0] == recipe.dtype
            data = chip.read()
        for index, band in enumerate(recipe.bands):
            np.testing.assert_array_equal(data[index], expected_pixels(band, grid, recipe.dtype))


@pytest.mark.parametrize(
    ("recipe", "year"),
    [("s2srm", 2020), ("s1grd", 2020), ("esawc", None), ("srtm", None), ("modisveg", 2019)],
)
def test_every_recipe_end_to_end(tmp_path: Path, recipe: str, year: int | None) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    with serve_earthengine() as server:
        args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "2",
                "--ee-concurrency", "4", "--quiet"]  # fmt: skip
        if year:
            args += ["--year", year]
        result = cli(*args, cwd=tmp_path, env=environment(server))
        assert result.returncode == 0, result.stderr
        pixel_requests = server.pixel_requests()
        initialisations = server.algorithm_requests()
    dataset = f"{recipe}-{year}" if year else recipe
    folder = tmp_path / "data" / "rome" / dataset
    assert_chips(folder, recipe, ROME)
    assert len(pixel_requests) == len(ROME)
    assert 2 <= initialisations <= 3  # the driver's check, then once per worker process
    rows = read_manifest(folder / MANIFEST_NAME)
    assert {row.status for row in rows.values()} == {TileStatus.OK}


def test_chips_align_with_the_raster_sources_chips(tmp_path: Path, shared_data: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    env = environment(None, M3LEO_SHARED_DATA=str(shared_data))
    with serve_earthengine() as server:
        ee_run = cli("fetch", "srtm", "--grid", grid, "--out", tmp_path / "data", "--workers",
                     "1", "--quiet", cwd=tmp_path, env=environment(server))  # fmt: skip
    raster_run = cli("fetch", "demo-dem", "--grid", grid, "--out", tmp_path / "data",
                     "--workers", "1", "--quiet", cwd=tmp_path, env=env)  # fmt: skip
    assert ee_run.returncode == 0, ee_run.stderr
    assert raster_run.returncode == 0, raster_run.stderr
    for tile in ROME:
        name = f"{tile.identifier}.tif"
        with rasterio.open(tmp_path / "data/rome/srtm" / name) as ee_chip, \
             rasterio.open(tmp_path / "data/rome/demo-dem" / name) as dem:  # fmt: skip
            assert ee_chip.crs == dem.crs
            assert ee_chip.transform == dem.transform
            assert ee_chip.shape == dem.shape == (50, 50)
            assert dem.read(1).std() > 0  # a real DEM chip, not an empty one


def test_a_permanent_error_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    bad = ROME[1]
    with serve_earthengine() as server:
        server.refuse_at.add((bad.x_min, bad.y_min + 4480))
        result = cli("fetch", "srtm", "--grid", grid, "--out", tmp_path / "data", "--workers",
                     "1", "--quiet", cwd=tmp_path, env=environment(server))  # fmt: skip
    assert result.returncode == 1, result.stderr
    rows = read_manifest(tmp_path / "data/rome/srtm" / MANIFEST_NAME)
    assert rows[bad.identifier].status is TileStatus.FAILED
    assert "did not match any bands" in rows[bad.identifier].reason
    assert [rows[t.identifier].status for t in ROME if t != bad] == [TileStatus.OK] * 2


def test_a_tile_without_images_is_recorded_empty_with_the_reason(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME[:1])
    recipe = load_recipe("modisveg")
    with serve_earthengine() as server:
        server.masked_bands.update(recipe.bands)
        server.empty_windows.add(("MODIS/061/MOD44B", "2030-01-01"))
        result = cli("fetch", "modisveg", "--year", "2030", "--grid", grid, "--out",
                     tmp_path / "data", "--workers", "1", "--quiet", cwd=tmp_path,
                     env=environment(server))  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = read_manifest(tmp_path / "data/rome/modisveg-2030" / MANIFEST_NAME).values()
    assert row.status is TileStatus.EMPTY
    assert row.reason == "no MODIS MOD44B image in year (2030-01-01 to 2031-01-01)"


def test_no_credentials_is_one_line_and_exit_2_within_seconds(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    env = environment(None, HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    started = time.perf_counter()
    result = cli("fetch", "srtm", "--grid", grid, "--out", tmp_path / "data", cwd=tmp_path,
                 env=env)  # fmt: skip
    assert time.perf_counter() - started < 30
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "earthengine authenticate" in lines[0]
    assert not list((tmp_path / "data").rglob("*.tif"))


def test_help_lists_the_options_and_does_not_import_ee(tmp_path: Path) -> None:
    env = environment(None)
    result = cli("fetch", "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0
    for option in ("--ee-url", "--ee-concurrency", "--project", "--high-volume"):
        assert option in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, m3leo_tiles.cli; "
         "from m3leo_tiles.sources.base import available_sources; available_sources(); "
         "print('ee' in sys.modules)"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "False"


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"))  # fmt: skip


def _address(log: Path, process: subprocess.Popen, limit_s: float = 60) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = re.search(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError(f"no scheduler address in {log.read_text()}")


def test_scheduler_path_with_a_real_dask_cluster(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    with serve_earthengine() as server:
        env = environment(server)
        scheduler = _start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                            "--no-dashboard"], env, tmp_path / "scheduler.log")  # fmt: skip
        workers: list[subprocess.Popen] = []
        try:
            address = _address(tmp_path / "scheduler.log", scheduler)
            for index in range(2):
                workers.append(_start(
                    [str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard",
                     "--host", "127.0.0.1"], env, tmp_path / f"worker{index}.log"))  # fmt: skip
            result = cli("fetch", "s2srm", "--year", "2020", "--grid", grid, "--out",
                         tmp_path / "data", "--scheduler", address, "--ee-concurrency", "2",
                         "--quiet", cwd=tmp_path, env=env)  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert server.log.peak_in_flight >= 1
            peak = _peak_pixel_requests(server)
            assert peak <= 2  # the budget holds across separate worker processes
        finally:
            for process in [*workers, scheduler]:
                process.terminate()
            for process in [*workers, scheduler]:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    assert_chips(tmp_path / "data/rome/s2srm-2020", "s2srm", ROME)


def _peak_pixel_requests(server: EmulatorServer) -> int:
    """Most computePixels requests the emulator had open at once (from its own counters)."""
    return server.peak_pixels
