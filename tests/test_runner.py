"""The runner's bookkeeping: statuses, manifest, resume, adoption, faults (API level).

These use the test-only ``fake-synthetic`` adapter (tests/helpers/fake_sources.py) so each
outcome can be steered per tile; the real raster source runs end to end in test_cli_fetch.
One LocalCluster is shared through ``scheduler=`` (which is also the existing-cluster path).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import rasterio
from distributed import Client, LocalCluster

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch import cluster as cluster_module
from m3leo_tiles.fetch.api import batch_size_for, fetch_tiles, make_plan
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.sources.base import get_source

HERE = Path(__file__).resolve().parent
ORIGIN = Tile.from_point(-118.0, 34.0)
TILES = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(3) for j in range(4)]
IDS = [t.identifier for t in TILES]


def recipe(**params) -> Recipe:
    return Recipe(
        name="fake",
        source="fake-synthetic",
        resolution=224.0,
        bands=("value",),
        dtype="int16",
        nodata=-1,
        params=params,
    )


def run_on(address: str, the_recipe: Recipe, out: Path, tiles=TILES, **kwargs):
    return fetch_tiles(
        the_recipe, tiles, aoi="testaoi", out=out, scheduler=address, progress=False, **kwargs
    )


def run(cluster, the_recipe: Recipe, out: Path, tiles=TILES, **kwargs):
    return run_on(cluster.scheduler_address, the_recipe, out, tiles, **kwargs)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tif")}


def test_statuses_files_and_manifest(cluster, tmp_path: Path) -> None:
    flag = tmp_path / "failing"
    flag.touch()
    the_recipe = recipe(
        uncovered=[IDS[0]], empty=[IDS[1]], fail=[IDS[2]], crash=[IDS[3]], fail_while=str(flag)
    )
    report = run(cluster, the_recipe, tmp_path / "out")
    folder = tmp_path / "out" / "testaoi" / "fake"
    assert report.dataset_dir == folder
    assert (report.ok, report.empty, report.no_source, report.failed) == (8, 1, 1, 2)
    assert report.exit_code == 1
    assert sorted(p.stem for p in folder.glob("*.tif")) == sorted(IDS[4:])
    rows = read_manifest(folder / MANIFEST_NAME)
    assert set(rows) == set(IDS)
    assert rows[IDS[0]].status is TileStatus.NO_SOURCE
    assert rows[IDS[1]].status is TileStatus.EMPTY
    assert rows[IDS[2]].status is TileStatus.FAILED
    assert "cannot read fake://" in rows[IDS[2]].reason
    assert "ZeroDivisionError" in rows[IDS[3]].reason
    assert all(rows[i].recipe_hash == the_recipe.recipe_hash for i in IDS)
    assert rows[IDS[5]].inputs and rows[IDS[5]].inputs[0].startswith("fake://")
    with rasterio.open(folder / f"{IDS[5]}.tif") as chip:
        grid = TILES[5].pixel_grid(224.0)
        assert (chip.width, chip.height) == (20, 20)
        assert chip.transform == grid.transform
        assert chip.crs.to_epsg() == TILES[5].epsg
    log = (folder / "fetch.log").read_text()
    assert f"failed {IDS[2]}" in log and "summary:" in log
    assert not (folder / ".m3leo.lock").exists()

    # Rerun once the fault is gone: only the failed tiles are redone, finished chips untouched.
    before = mtimes(folder)
    flag.unlink()
    second = run(cluster, recipe(**dict(the_recipe.params)), tmp_path / "out")
    assert (second.ok, second.failed, second.skipped) == (1, 1, 10)  # the crash stays a bug
    after = mtimes(folder)
    assert {k: after[k] for k in before} == before
    assert f"{IDS[2]}.tif" in after
    assert read_manifest(folder / MANIFEST_NAME)[IDS[2]].status is TileStatus.OK
    # The manifest was compacted to one row per tile.
    assert len((folder / MANIFEST_NAME).read_text().splitlines()) == len(IDS) + 1


def test_overwrite_redoes_and_changed_recipe_is_not_done(cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run(cluster, recipe(), out, tiles=TILES[:4])
    assert first.ok == 4
    assert run(cluster, recipe(), out, tiles=TILES[:4]).skipped == 4
    assert run(cluster, recipe(), out, tiles=TILES[:4], overwrite=True).ok == 4
    changed = recipe(group=2)  # other params: another hash, so nothing counts as done
    assert run(cluster, changed, out, tiles=TILES[:4]).ok == 4


def test_chip_without_manifest_row_is_adopted(cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(cluster, recipe(), out, tiles=TILES[:3])
    folder = out / "testaoi" / "fake"
    (folder / MANIFEST_NAME).unlink()  # as if the driver died before recording them
    before = mtimes(folder)
    report = run(cluster, recipe(), out, tiles=TILES[:3])
    assert (report.ok, report.skipped) == (0, 3)
    assert mtimes(folder) == before
    rows = read_manifest(folder / MANIFEST_NAME)
    assert {r.status for r in rows.values()} == {TileStatus.OK}
    # A chip from another recipe is not adopted: it is redone.
    (folder / MANIFEST_NAME).unlink()
    assert run(cluster, recipe(group=3), out, tiles=TILES[:3]).ok == 3


def test_transient_errors_are_retried_then_recorded(cluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    the_recipe = recipe(transient=[IDS[0]], transient_dir=str(markers), always_transient=[IDS[1]])
    report = run(cluster, the_recipe, tmp_path / "out", tiles=TILES[:3])
    assert (report.ok, report.failed) == (2, 1)
    rows = read_manifest(report.dataset_dir / MANIFEST_NAME)
    assert rows[IDS[0]].status is TileStatus.OK and (markers / IDS[0]).exists()
    assert "TransientSourceError: service unavailable" in rows[IDS[1]].reason


def test_batches_group_shared_inputs_and_are_bounded(tmp_path: Path) -> None:
    tiles = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(20) for j in range(9)]
    adapter = get_source("fake-synthetic")(recipe(group=50))
    plan = make_plan(adapter, tiles, tmp_path, {}, overwrite=False)
    assert plan.to_render == 180
    size = batch_size_for(180, 2)
    batches = plan.batches(2)
    assert all(len(batch) <= size for batch in batches)
    spans: dict[tuple, set[int]] = {}
    for index, batch in enumerate(batches):
        for _, inputs in batch:
            spans.setdefault(inputs, set()).add(index)
    for inputs, indexes in spans.items():  # a group is cut only where it exceeds a batch
        members = sum(1 for b in batches for _, i in b if i == inputs)
        assert len(indexes) <= -(-members // size) + 1
        assert max(indexes) - min(indexes) == len(indexes) - 1  # and stays contiguous
    assert batch_size_for(20_000, 2) == 256
    assert batch_size_for(5, 2) == 1
    assert batch_size_for(1_000, 4) == 32


def test_tiles_with_inputs_of_their_own_are_packed_into_full_batches(tmp_path: Path) -> None:
    tiles = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(10) for j in range(9)]
    adapter = get_source("fake-synthetic")(recipe(group=1))  # every tile its own input
    plan = make_plan(adapter, tiles, tmp_path, {}, overwrite=False)
    batches = plan.batches(2, min_size=20)
    assert [len(b) for b in batches] == [20] * 4 + [10]


def test_batch_key_keeps_tiles_with_overlapping_inputs_together(tmp_path: Path) -> None:
    """A source whose tiles' input lists differ but share a frame batches them by the frame."""

    class Frames(type(get_source("fake-synthetic")(recipe()))):
        def plan(self, tiles):
            # every tile: its frame (one of two) and a file of its own
            return {t.identifier: (f"frame-{k % 2}", f"own-{k}") for k, t in enumerate(tiles)}

        def batch_key(self, inputs):
            return inputs[0]

    tiles = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(4) for j in range(8)]
    plan = make_plan(Frames(recipe()), tiles, tmp_path, {}, overwrite=False)
    assert len(plan.groups) == 2
    for batch in plan.batches(1, min_size=16):
        assert len({inputs[0] for _, inputs in batch}) == 1  # one frame per task
        assert len(batch) == 16


def test_worker_killed_mid_run_is_survived_and_resumed(tmp_path: Path) -> None:
    tiles = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(6) for j in range(5)]
    the_recipe = recipe(sleep=0.15)
    out = tmp_path / "out"
    folder = out / "testaoi" / "fake"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0", silence_logs=40
        ) as local,
        Client(local) as client,
    ):
        pids = list(client.run(os.getpid).values())
        result = {}
        runner = threading.Thread(
            target=lambda: result.update(report=run(local, the_recipe, out, tiles=tiles))
        )
        runner.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(folder.glob("*.tif"))) < 3:
            time.sleep(0.05)
        psutil.Process(pids[0]).kill()
        runner.join(timeout=90)
        assert not runner.is_alive()
    report = result["report"]
    assert report.ok + report.failed == len(tiles)
    rows = read_manifest(folder / MANIFEST_NAME)
    assert len(rows) == len(tiles)
    for identifier, row in rows.items():
        if row.status is TileStatus.OK:
            with rasterio.open(folder / f"{identifier}.tif") as chip:
                assert chip.read().shape == (1, 20, 20)
        else:
            assert "KilledWorker" in row.reason or "task" in row.reason
    before = {k: v for k, v in mtimes(folder).items() if rows[k[:-4]].status is TileStatus.OK}
    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0", silence_logs=40
    ) as fresh:
        again = run(fresh, recipe(sleep=0.15), out, tiles=tiles)
    assert again.exit_code == 0 and again.skipped == report.ok
    assert {k: mtimes(folder)[k] for k in before} == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_existing_cluster_via_scheduler_address(external_cluster, tmp_path: Path) -> None:
    address, scheduler = external_cluster
    report = run_on(address, recipe(empty=[IDS[0]]), tmp_path / "out", tiles=TILES[:5])
    assert (report.ok, report.empty, report.exit_code) == (4, 1, 0)
    assert len(list(report.dataset_dir.glob("*.tif"))) == 4
    assert scheduler.poll() is None  # a cluster we did not start is left running
    with Client(address, timeout=20) as client:
        assert len(client.nthreads()) == 1


def test_unreachable_scheduler_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cluster_module, "CLIENT_TIMEOUT_S", 2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot reach the dask scheduler"):
        run_on(f"tcp://127.0.0.1:{port}", recipe(), tmp_path / "out", tiles=TILES[:1])


def test_status_counts_against_the_grid(cluster, tmp_path: Path) -> None:
    import geopandas as gpd

    from m3leo_tiles.tools.status import format_status_table, status

    out = tmp_path / "data"
    run(cluster, recipe(empty=[IDS[1]], uncovered=[IDS[2]]), out, tiles=TILES[:5])
    grids = tmp_path / "grids"
    (grids / "testaoi").mkdir(parents=True)
    gpd.GeoDataFrame(
        {"identifier": IDS, "aoi": ["testaoi"] * len(IDS)},
        geometry=[t.lonlat_polygon() for t in TILES],
        crs="EPSG:4326",
    ).to_file(grids / "testaoi" / "tiles.geojson", driver="GeoJSON")
    (found,) = status(out, grids)
    assert (found.aoi, found.dataset) == ("testaoi", "fake")
    assert (found.ok, found.empty, found.no_source, found.failed) == (3, 1, 1, 0)
    assert found.missing == len(IDS) - 5 and found.size_bytes > 0
    table = format_status_table([found]).splitlines()
    assert table[1].split()[:7] == ["testaoi", "fake", "3", "1", "1", "0", str(len(IDS) - 5)]
    (unknown,) = status(out, tmp_path / "no-grids")
    assert unknown.missing is None and "?" in format_status_table([unknown])


SCRIPT = """
import distributed  # a user who has dask loaded already: its loggers exist
import helpers.fake_sources
from pathlib import Path
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.fetch.api import fetch_tiles

def main():
    recipe = Recipe(name="fake", source="fake-synthetic", resolution=224.0, bands=("value",),
                    dtype="int16", nodata=-1)
    tiles = [Tile.from_id(i) for i in {ids!r}]
    report = fetch_tiles(recipe, tiles, aoi="testaoi", out=Path("out"), workers=1,
                         progress=False)
    print("ok", report.ok)
"""


def run_script(tmp_path: Path, body: str, *, stdin: bool = False) -> subprocess.CompletedProcess:
    """A user's Python script that calls the API with its own local cluster."""
    source = SCRIPT.format(ids=IDS[:2]) + body
    paths = [str(HERE), str(HERE / "helpers" / "site"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))  # site: the fake sources' dist-info
    script = tmp_path / "user_script.py"
    script.write_text(source)
    command = [sys.executable, "-"] if stdin else [sys.executable, str(script)]
    return subprocess.run(
        command, input=source if stdin else None, capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=180, check=False,
    )  # fmt: skip


def test_script_with_main_guard_starts_its_own_cluster(tmp_path: Path) -> None:
    done = run_script(tmp_path, 'if __name__ == "__main__":\n    main()\n')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "2"]


def test_script_without_main_guard_gets_one_line_per_worker_not_a_traceback_storm(
    tmp_path: Path,
) -> None:
    done = run_script(tmp_path, "main()\n")
    assert done.returncode != 0
    worker_says = "error: fetch() ran again while a dask worker process was starting"
    assert worker_says in done.stderr
    assert done.stderr.count("Traceback") == 1  # the script's own ConfigError, no other
    assert "Nanny failed to start" in done.stderr.splitlines()[-1]  # our ConfigError, last
    assert done.stderr.splitlines()[-1].startswith("m3leo_tiles.core.errors.ConfigError")


def test_script_from_stdin_is_a_config_error(tmp_path: Path) -> None:
    done = run_script(tmp_path, "main()\n", stdin=True)
    assert done.returncode != 0
    last = done.stderr.splitlines()[-1]
    assert last.startswith("m3leo_tiles.core.errors.ConfigError") and "<stdin>" in last


def test_a_run_stopped_by_a_configuration_error_writes_the_reason_to_fetch_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = get_source("fake-synthetic")

    def refused(self, tiles):  # e.g. a search service refusing the query, after the log opened
        raise ConfigError("the search service refused the query: bad polygon")

    monkeypatch.setattr(adapter, "plan", refused)
    with pytest.raises(ConfigError, match="bad polygon"):
        fetch_tiles(recipe(), TILES[:2], aoi="testaoi", out=tmp_path / "out", progress=False)
    log = (tmp_path / "out" / "testaoi" / "fake" / "fetch.log").read_text()
    assert "ERROR stopped: the search service refused the query: bad polygon" in log
    assert log.index("stopped:") < log.index("summary: ")
