"""A run as a careful batch user expects it (issue #8 items 3, 5, 6, 7, 10): chips follow
their inputs, SIGTERM stops cleanly, errors that hit every tile stop the run early, ids that
are not in the grid are reported, fetch.log names the grid."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import geopandas as gpd
import pytest

from helpers.cli import cli_env
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError, SystematicFailure
from m3leo_tiles.dataset.lock import LOCK_NAME
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch.api import EarlyStop, failure_kind, fetch, fetch_tiles
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe

pytestmark = pytest.mark.slow

ROME = "dem/Rome-30m-DEM.tif"
ROME_TILES = [Tile.from_point(12.5, 42.0), Tile.from_point(12.46, 42.02)]


def _grid(path: Path, tiles: list[Tile], aoi: str = "t") -> Path:
    gpd.GeoDataFrame(
        {"identifier": [t.identifier for t in tiles], "aoi": [aoi] * len(tiles),
         "split": ["train"] * len(tiles)},
        geometry=[t.lonlat_polygon() for t in tiles], crs="EPSG:4326",
    ).to_file(path, driver="GeoJSON")  # fmt: skip
    return path


def _dem_recipe(folder: Path, **extra) -> Path:
    path = folder / "dem.yaml"
    lines = ["source: raster", "resolution: 448", "bands: [elevation]", "dtype: float32",
             "nodata: -9999", "resampling: bilinear", *extra.pop("lines", [])]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _fetch(cluster, recipe, grid: Path, out: Path, **kwargs):
    return fetch(recipe, grid=grid, out=out, scheduler=cluster.scheduler_address,
                 progress=False, **kwargs)  # fmt: skip


# --- item 3: changed inputs redo their chips -------------------------------------------------


def test_other_sources_or_changed_files_redo_the_chips(
    cluster, tmp_path: Path, shared_data: Path
) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    shutil.copy(shared_data / ROME, a)
    shutil.copy(shared_data / ROME, b)
    grid = _grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = _dem_recipe(tmp_path)
    out = tmp_path / "data"
    first = _fetch(cluster, recipe, grid, out, sources=[str(a)])
    assert (first.ok, first.skipped) == (2, 0)
    assert _fetch(cluster, recipe, grid, out, sources=[str(a)]).skipped == 2
    other = _fetch(cluster, recipe, grid, out, sources=[str(b)])  # other --source
    assert (other.ok, other.skipped) == (2, 0)
    rows = read_manifest(first.dataset_dir / MANIFEST_NAME)
    assert {r.inputs for r in rows.values()} == {(str(b),)}
    os.utime(b, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # b rewritten since
    assert _fetch(cluster, recipe, grid, out, sources=[str(b)]).ok == 2
    assert _fetch(cluster, recipe, grid, out, sources=[str(b)]).skipped == 2
    log = (first.dataset_dir / "fetch.log").read_text()
    assert "2 finished tiles were made from other inputs" in log


def test_what_a_glob_expands_to_decides_too(cluster, tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "dems"
    folder.mkdir()
    shutil.copy(shared_data / ROME, folder / "a.tif")
    grid = _grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = _dem_recipe(tmp_path, lines=["params: {inputs: dems/*.tif}"])
    out = tmp_path / "data"
    assert _fetch(cluster, recipe, grid, out).ok == 2
    shutil.copy(shared_data / ROME, folder / "b.tif")  # a new file matches the glob
    again = _fetch(cluster, recipe, grid, out)
    assert (again.ok, again.skipped) == (2, 0)


def test_a_source_may_say_what_its_inputs_are(cluster, tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text("1")
    recipe = Recipe(name="v", source="fake-versioned", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0, params={"version_file": str(version)})  # fmt: skip
    run = lambda: fetch_tiles(recipe, ROME_TILES, aoi="t", out=tmp_path,  # noqa: E731
                              scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    assert run().ok == 2 and run().skipped == 2
    version.write_text("2")
    assert run().ok == 2
    rows = read_manifest(tmp_path / "t" / "v" / MANIFEST_NAME)
    assert {r.input_id for r in rows.values()} == {"remote://product/v@2"}


def test_year_on_a_recipe_without_years_is_refused(tmp_path: Path, shared_data: Path) -> None:
    grid = _grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = _dem_recipe(tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}}}"])
    with pytest.raises(ConfigError, match="does not depend on the year"):
        fetch(recipe, grid=grid, out=tmp_path / "data", year=2019, progress=False)
    assert not (tmp_path / "data").exists()


# --- item 6: fail fast ------------------------------------------------------------------------


def test_a_year_the_product_lacks_is_refused_up_front(tmp_path: Path) -> None:
    from m3leo_tiles.recipes import builtin_recipes_dir

    grid = _grid(tmp_path / "g.geojson", ROME_TILES)
    # The built-in agb recipe, its archive moved to a local folder: no test touches a network.
    text = (builtin_recipes_dir() / "agb.yaml").read_text()
    local = tmp_path / "agb.yaml"
    local.write_text(text.replace("https://dap.ceda.ac.uk", str(tmp_path / "ceda")))
    with pytest.raises(ConfigError, match=r"has the years 2010, 2015-2021; --year 1999"):
        fetch(local, grid=grid, out=tmp_path / "data", year=1999, progress=False)
    assert not (tmp_path / "data").exists()


def test_band_counts_and_indexes_are_checked_up_front(tmp_path: Path, shared_data: Path) -> None:
    grid = _grid(tmp_path / "g.geojson", ROME_TILES)
    two = _dem_recipe(tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}}}"])
    two.write_text(two.read_text().replace("bands: [elevation]", "bands: [a, b]"))
    with pytest.raises(ConfigError, match=r"names 2 bands \(a, b\) but .* gives 1"):
        fetch(two, grid=grid, out=tmp_path / "data", progress=False)
    index = _dem_recipe(
        tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}, band_indexes: [3]}}"]
    )
    with pytest.raises(ConfigError, match=r"band_indexes \[3\] but .* has 1 band"):
        fetch(index, grid=grid, out=tmp_path / "data", progress=False)


def test_the_first_tiles_all_failing_alike_stop_the_run(cluster, tmp_path: Path) -> None:
    origin = Tile.from_point(12.5, 42.0)
    tiles = [Tile(origin.zone, origin.row + r, origin.col + c) for r in range(6) for c in range(8)]
    recipe = Recipe(name="f", source="fake-synthetic", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0,
                    params={"fail": [t.identifier for t in tiles], "group": 48})  # fmt: skip
    with pytest.raises(SystematicFailure, match=r"first 20 tiles all failed the same way"):
        fetch_tiles(recipe, tiles, aoi="t", out=tmp_path,
                    scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    folder = tmp_path / "t" / "f"
    rows = read_manifest(folder / MANIFEST_NAME)
    assert 20 <= len(rows) < len(tiles)  # stopped early; what failed is recorded
    assert not (folder / LOCK_NAME).exists()
    assert "first 20 tiles all failed" in (folder / "fetch.log").read_text()


def test_early_stop_needs_the_same_reason_and_no_success() -> None:
    from m3leo_tiles.core.enums import TileStatus
    from m3leo_tiles.dataset.manifest import ManifestRow

    def rows(reasons):
        return [ManifestRow(f"t{n}", TileStatus.FAILED, r) for n, r in enumerate(reasons)]

    assert failure_kind("cannot open input /a/N40W100.tif: x 12") == failure_kind(
        "cannot open input /b/N30W090.tif: x 7"
    )
    mixed = EarlyStop(3)
    mixed.add(rows(["a", "b", "a"]))  # two kinds: no stop
    ok_first = EarlyStop(3)
    ok_first.add([ManifestRow("x", TileStatus.OK)])
    ok_first.add(rows(["a", "a", "a"]))
    same = EarlyStop(3)
    with pytest.raises(SystematicFailure):
        same.add(rows(["a", "a", "a"]))


def test_network_failures_name_the_host() -> None:
    from m3leo_tiles.sources.raster.warp import _network_reason

    text = _network_reason(
        "/vsicurl/https://dap.ceda.ac.uk/neodc/x.tif",
        OSError("'/vsicurl/https://dap.ceda.ac.uk/neodc/x.tif' does not exist in the file system"),
    )
    assert text.startswith("network: could not reach dap.ceda.ac.uk")
    assert "file system" not in text


# --- items 7 and 10: say what happened --------------------------------------------------------


def test_unknown_tile_ids_are_reported_and_the_grid_is_named(
    cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = _grid(tmp_path / "g.geojson", ROME_TILES)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{ROME_TILES[0].identifier}\n01N_0000_000\nnot-a-tile\n")
    recipe = Recipe(name="f", source="fake-synthetic", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0)  # fmt: skip
    report = fetch(recipe, grid=grid, tiles=ids, out=tmp_path / "data",
                   scheduler=cluster.scheduler_address, progress=True)  # fmt: skip
    assert report.selected == 1
    log = (report.dataset_dir / "fetch.log").read_text()
    assert "2 of the 3 ids in" in log and "01N_0000_000, not-a-tile" in log
    assert f"grid: {grid.resolve()} (2 tiles)" in log
    assert "2 of the 3 ids" in capsys.readouterr().err


def test_a_split_the_grid_lacks_says_what_to_do(tmp_path: Path) -> None:
    grid = _grid(tmp_path / "g.geojson", ROME_TILES)  # every tile is train
    with pytest.raises(ConfigError, match=r"has no val tiles.*--bands 2000"):
        fetch("demo-dem", grid=grid, split="val", out=tmp_path / "data", progress=False)


# --- item 5: SIGTERM --------------------------------------------------------------------------


def test_sigterm_stops_cleanly_keeps_chips_and_releases_the_lock(
    tmp_path: Path, shared_data: Path
) -> None:
    import subprocess
    import sys

    origin = Tile.from_point(12.5, 42.0)
    tiles = [Tile(origin.zone, origin.row, origin.col + c) for c in range(-1, 2)]
    tiles += [Tile(origin.zone, origin.row + 1, origin.col + c) for c in range(-1, 2)]
    grid = _grid(tmp_path / "g.geojson", tiles)
    recipe = _dem_recipe(tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}}}"])
    recipe.write_text(recipe.read_text().replace("source: raster", "source: slow-raster"))
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1", "-q"]
    entry = "import sys; from m3leo_tiles.cli.tiles import main; sys.argv[0]='m3leo-tiles'; main()"
    env = cli_env(M3LEO_TEST_SLEEP="0.5")
    process = subprocess.Popen([sys.executable, "-c", entry, *map(str, args)], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    folder = tmp_path / "data" / "t" / "dem"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(list(folder.glob("*.tif"))) < 1:
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM):"), stderr
    assert "leaked" not in stderr and "Traceback" not in stderr
    assert not (folder / LOCK_NAME).exists()
    kept = {p.stem: p.stat().st_mtime_ns for p in folder.glob("*.tif")}
    assert kept
    # A chip written just before the signal may have no manifest row yet: the rerun adopts it.
    again = subprocess.run([sys.executable, "-c", entry, *map(str, args)], cwd=tmp_path,
                           env=cli_env(M3LEO_TEST_SLEEP="0"), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    rows = read_manifest(folder / MANIFEST_NAME)
    assert set(kept) <= set(rows) and all(rows[t].status is TileStatus.OK for t in kept)
    assert {t: (folder / f"{t}.tif").stat().st_mtime_ns for t in kept} == kept  # not redone


def test_more_workers_than_cores_warns(
    cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = _grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = Recipe(name="f", source="fake-synthetic", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0)  # fmt: skip
    first = fetch(recipe, grid=grid, out=tmp_path / "data",
                  scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    capsys.readouterr()
    too_many = (os.cpu_count() or 1) + 3
    again = fetch(recipe, grid=grid, out=tmp_path / "data", workers=too_many)  # all done:
    assert again.skipped == 2  # no cluster is started
    assert f"--workers {too_many} is more than the" in capsys.readouterr().err
    assert f"--workers {too_many} is more than the" in (first.dataset_dir / "fetch.log").read_text()
