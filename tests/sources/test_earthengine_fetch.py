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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from tests.helpers.ee_emulator import EmulatorServer, expected_pixels, serve_earthengine

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import load_recipe
from m3leo_tiles.sources.earthengine.adapter import grid_json

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


def check_run(server: EmulatorServer, folder: Path, recipe: str) -> None:
    """Chips with the emulator's pixels for every tile, one request per tile on its grid."""
    assert_chips(folder, recipe, ROME)
    pixel_requests = server.pixel_requests()
    resolution = load_recipe(recipe).resolution
    grids = sorted((r["grid"] for r in pixel_requests), key=str)
    assert grids == sorted((grid_json(t.pixel_grid(resolution)) for t in ROME), key=str)
    rows = read_manifest(folder / MANIFEST_NAME)
    assert {row.status for row in rows.values()} == {TileStatus.OK}


def test_s2srm_end_to_end_through_the_cli(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    with serve_earthengine() as server:
        result = cli("fetch", "s2srm", "--year", "2020", "--grid", grid, "--out",
                     tmp_path / "data", "--workers", "2", "--ee-concurrency", "4", "--quiet",
                     cwd=tmp_path, env=environment(server))  # fmt: skip
        assert result.returncode == 0, result.stderr
        check_run(server, tmp_path / "data/rome/s2srm-2020", "s2srm")
        # the driver's check, then once per worker process (not per tile or batch)
        assert 2 <= server.algorithm_requests() <= 3


@pytest.fixture(scope="module")
def cluster_and_emulator() -> Iterator[tuple[EmulatorServer, str]]:
    """One emulator and one LocalCluster for the other recipes (a CLI run each would spend
    most of its time starting processes); the workers get the API key from the environment."""
    from distributed import LocalCluster

    saved = {name: os.environ.get(name) for name in ("M3LEO_EE_API_KEY", "EE_PROJECT")}
    os.environ.update(M3LEO_EE_API_KEY="test-key", EE_PROJECT="m3leo-test")
    try:
        with (
            serve_earthengine() as server,
            LocalCluster(
                n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0", silence_logs=40
            ) as cluster,
        ):
            yield server, cluster.scheduler_address
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.mark.parametrize(
    ("recipe", "year"), [("s1grd", 2020), ("esawc", None), ("srtm", None), ("modisveg", 2019)]
)
def test_other_recipes_end_to_end(cluster_and_emulator, tmp_path, recipe, year) -> None:
    from m3leo_tiles.fetch.api import fetch_tiles

    server, address = cluster_and_emulator
    server.clear()
    report = fetch_tiles(load_recipe(recipe), ROME, aoi="rome", year=year, out=tmp_path,
                         scheduler=address, progress=False,
                         options={"ee-url": server.url, "ee-concurrency": "4"})  # fmt: skip
    assert report.exit_code == 0 and report.ok == len(ROME), report.summary()
    check_run(server, report.dataset_dir, recipe)


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


def test_a_permanent_error_is_recorded_and_the_others_go_on(cluster_and_emulator, tmp_path):
    from m3leo_tiles.fetch.api import fetch_tiles

    server, address = cluster_and_emulator
    bad = ROME[1]
    server.refuse_at.add((bad.x_min, bad.y_min + 4480))
    try:
        report = fetch_tiles(load_recipe("srtm"), ROME, aoi="rome", out=tmp_path,
                             scheduler=address, progress=False,
                             options={"ee-url": server.url})  # fmt: skip
    finally:
        server.refuse_at.clear()
    assert report.exit_code == 1 and report.failed == 1 and report.ok == 2
    rows = read_manifest(report.dataset_dir / MANIFEST_NAME)
    assert rows[bad.identifier].status is TileStatus.FAILED
    assert "did not match any bands" in rows[bad.identifier].reason
    assert [rows[t.identifier].status for t in ROME if t != bad] == [TileStatus.OK] * 2


def test_a_tile_without_images_is_recorded_empty_with_the_reason(cluster_and_emulator, tmp_path):
    from m3leo_tiles.fetch.api import fetch_tiles

    server, address = cluster_and_emulator
    recipe = load_recipe("modisveg")
    server.masked_bands.update(recipe.bands)
    server.empty_windows.add(("MODIS/061/MOD44B", "2012-01-01"))
    try:
        report = fetch_tiles(recipe, ROME[:1], aoi="rome", year=2012, out=tmp_path,
                             scheduler=address, progress=False,
                             options={"ee-url": server.url})  # fmt: skip
    finally:
        server.masked_bands.clear()
        server.empty_windows.clear()
    # the only tile is empty: the run made no chip at all, which is not a normal success
    assert report.exit_code == 1 and report.empty == 1
    assert report.nothing.startswith("nothing fetched: not one of the 1 tiles has data")
    (row,) = read_manifest(report.dataset_dir / MANIFEST_NAME).values()
    assert row.status is TileStatus.EMPTY
    assert row.reason == "no MODIS MOD44B image in year (2012-01-01 to 2013-01-01)"
    assert not list(report.dataset_dir.glob("*.tif"))


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
        [sys.executable, "-c", "import sys, m3leo_tiles.cli.tiles; "
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
