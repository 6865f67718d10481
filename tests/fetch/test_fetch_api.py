"""The run's bookkeeping (fetch/api.py): statuses, manifest, resume, adoption, faults.

These use the test-only ``fake-synthetic`` adapter (tests/helpers/fake_sources.py) so each
outcome can be steered per tile; the real raster source runs end to end in test_fetch_cli.
One LocalCluster is shared through ``scheduler=`` (which is also the existing-cluster path).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest
import rasterio
from distributed import Client, LocalCluster

from helpers.fake_runs import IDS, ORIGIN, TILES, mtimes, recipe, run
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch.api import fetch_tiles
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.sources.base import get_source


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


def test_several_years_share_one_cluster_and_resume_one_by_one(
    cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m3leo_tiles.fetch import api

    clients = []
    real = api.dask_client
    monkeypatch.setattr(api, "dask_client", lambda *a: clients.append(a) or real(*a))
    flag = tmp_path / "failing"
    flag.touch()
    the_recipe = recipe(fail=[IDS[2]], fail_while=str(flag))
    request = api.FetchRequest(aoi="testaoi", out=tmp_path / "out", progress=False,
                               scheduler=cluster.scheduler_address)  # fmt: skip
    first = api.fetch_years(the_recipe, TILES, request, [2018, 2019, 2020])
    assert len(clients) == 1  # one cluster for the three years
    assert [r.dataset_dir.name for r in first.reports] == ["fake-2018", "fake-2019", "fake-2020"]
    assert [(r.ok, r.failed) for r in first.reports] == [(len(TILES) - 1, 1)] * 3
    assert first.exit_code == 1 and len(first.summary().splitlines()) == 3
    for report in first.reports:
        assert len(read_manifest(report.dataset_dir / MANIFEST_NAME)) == len(TILES)
    before = {r.dataset_dir: mtimes(r.dataset_dir) for r in first.reports}

    flag.unlink()
    again = api.fetch_years(the_recipe, TILES, request, [2018, 2019, 2020])
    assert again.exit_code == 0 and len(clients) == 2
    assert [(r.ok, r.skipped) for r in again.reports] == [(1, len(TILES) - 1)] * 3
    for folder, made in before.items():
        assert {k: v for k, v in mtimes(folder).items() if k in made} == made


def test_the_worst_year_gives_the_exit_code(tmp_path: Path) -> None:
    from m3leo_tiles.fetch.api import FetchReport, YearsReport

    def one(**counts: int) -> FetchReport:
        return FetchReport(dataset_dir=tmp_path, recipe="r", selected=1, **counts)

    assert YearsReport((one(ok=1), one(ok=1))).exit_code == 0
    assert YearsReport((one(ok=1), one(failed=1), one(ok=1))).exit_code == 1
    assert YearsReport((one(ok=1), one(empty=1, nothing="no data"))).exit_code == 1
