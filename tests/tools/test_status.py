"""`status` tells the truth: counts against the grid, a live run apart from a finished one,
chips without a manifest, 'missing' from a grid given as a file, and what it looked for."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from helpers import fake_runs
from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.lock import LOCK_NAME, DatasetLock
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, ManifestRow, write_manifest
from m3leo_tiles.grid import Tile
from m3leo_tiles.tools.status import status

TILES = [Tile(33, 1036, 60 + n) for n in range(4)]


def _dataset(out: Path, name: str, ok: int) -> Path:
    folder = out / "mine" / name
    folder.mkdir(parents=True)
    rows = {t.identifier: ManifestRow(t.identifier, TileStatus.OK) for t in TILES[:ok]}
    write_manifest(folder / MANIFEST_NAME, rows)
    for tile in TILES[:ok]:
        (folder / f"{tile.identifier}.tif").write_bytes(b"x")
    return folder


def test_a_live_run_is_shown_apart_from_a_finished_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    live = _dataset(out, "running", 1)
    _dataset(out, "finished", 2)
    stale = _dataset(out, "crashed", 1)
    (stale / LOCK_NAME).write_text(
        json.dumps({"pid": 2**22 + 7, "host": socket.gethostname(), "started": time.time()})
    )
    with DatasetLock(live):
        rows = {r.dataset: r for r in status(out)}
        code, table, _ = call_cli(capsys, "status", out)
    assert rows["running"].run.startswith(f"running: pid {os.getpid()} on {socket.gethostname()}")
    assert rows["running"].note != "finished"
    assert rows["finished"].run == "" and rows["finished"].note == "finished"
    assert rows["crashed"].run.startswith("stale lock")
    lines = {line.split()[1]: line for line in table.splitlines()[1:]}
    assert code == 0 and f"running: pid {os.getpid()}" in lines["running"]
    assert lines["finished"].endswith("finished") and "stale lock" in lines["crashed"]


def test_chips_without_a_manifest_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data" / "mine" / "copied"
    folder.mkdir(parents=True)
    for tile in TILES[:3]:
        (folder / f"{tile.identifier}.tif").write_bytes(b"x")
    (found,) = status(tmp_path / "data")
    assert not found.manifest and found.chips == 3
    code, out, _ = call_cli(capsys, "status", tmp_path / "data")
    assert code == 0 and "no datasets" not in out
    assert "3 chips but no manifest.csv" in out


def test_missing_is_known_when_the_grid_is_given_as_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import geopandas as gpd

    out = tmp_path / "data"
    _dataset(out, "ds", 1)
    grid = tmp_path / "elsewhere" / "my-grid.geojson"
    grid.parent.mkdir()
    gpd.GeoDataFrame(
        {"identifier": [t.identifier for t in TILES], "aoi": ["mine"] * len(TILES)},
        geometry=[t.lonlat_polygon() for t in TILES],
        crs="EPSG:4326",
    ).to_file(grid, driver="GeoJSON")
    assert status(out)[0].missing is None
    (found,) = status(out, grid=grid)
    assert found.missing == 3 and found.grid_tiles == 4
    code, table, _ = call_cli(capsys, "status", out, "--grid", grid)
    assert code == 0 and table.splitlines()[1].split()[6] == "3"


def test_no_output_folder_says_what_it_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = call_cli(capsys, "status")
    assert_one_error_line(code, err, f"data (in {tmp_path})", "manifest.csv")


def test_a_chip_of_another_size_than_recorded_is_not_counted_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data" / "mine" / "sized"
    folder.mkdir(parents=True)
    rows = {t.identifier: ManifestRow(t.identifier, TileStatus.OK, bytes=4) for t in TILES[:3]}
    write_manifest(folder / MANIFEST_NAME, rows)
    for tile in TILES[:3]:
        (folder / f"{tile.identifier}.tif").write_bytes(b"abcd")
    (folder / f"{TILES[1].identifier}.tif").write_bytes(b"ab")  # truncated after the run
    (found,) = status(tmp_path / "data")  # the size check fetch makes, no chip read
    assert (found.ok, found.failed, found.damaged) == (2, 1, 1)
    code, table, _ = call_cli(capsys, "status", tmp_path / "data")
    assert code == 0
    line = table.splitlines()[1]
    assert line.split()[2:6] == ["2", "0", "0", "1"] and "1 damaged chips" in line


def test_status_counts_against_the_grid(cluster, tmp_path: Path) -> None:
    import geopandas as gpd

    from m3leo_tiles.tools.status import format_status_table, status

    out = tmp_path / "data"
    fake_runs.run(
        cluster,
        fake_runs.recipe(empty=[fake_runs.IDS[1]], uncovered=[fake_runs.IDS[2]]),
        out,
        tiles=fake_runs.TILES[:5],
    )
    grids = tmp_path / "grids"
    (grids / "testaoi").mkdir(parents=True)
    gpd.GeoDataFrame(
        {"identifier": fake_runs.IDS, "aoi": ["testaoi"] * len(fake_runs.IDS)},
        geometry=[t.lonlat_polygon() for t in fake_runs.TILES],
        crs="EPSG:4326",
    ).to_file(grids / "testaoi" / "tiles.geojson", driver="GeoJSON")
    (found,) = status(out, grids)
    assert (found.aoi, found.dataset) == ("testaoi", "fake")
    assert (found.ok, found.empty, found.no_source, found.failed) == (3, 1, 1, 0)
    assert found.missing == len(fake_runs.IDS) - 5 and found.size_bytes > 0
    table = format_status_table([found]).splitlines()
    assert table[1].split()[:7] == [
        "testaoi",
        "fake",
        "3",
        "1",
        "1",
        "0",
        str(len(fake_runs.IDS) - 5),
    ]
    (unknown,) = status(out, tmp_path / "no-grids")
    assert unknown.missing is None and "?" in format_status_table([unknown])


def test_damaged_count_is_size_problem_over_the_manifest_columns(tmp_path: Path) -> None:
    import pyarrow as pa

    from m3leo_tiles.dataset.manifest import outcome_table
    from m3leo_tiles.fetch.plan import size_problem
    from m3leo_tiles.tools.status import damaged_count

    ids = [f"33N_1036_{n:03d}" for n in range(7)]
    recorded: list[tuple[TileStatus, int | None]] = [
        (TileStatus.OK, 4),  # whole
        (TileStatus.OK, 4),  # truncated
        (TileStatus.OK, None),  # an old manifest's row, chip present
        (TileStatus.OK, 4),  # chip gone
        (TileStatus.OK, None),  # an old row, chip gone
        (TileStatus.EMPTY, None),  # no chip, and none wanted
        (TileStatus.FAILED, None),
    ]
    on_disk = {ids[0]: 4, ids[1]: 2, ids[2]: 9, ids[5]: 4}  # a stray chip of an empty tile
    path = tmp_path / MANIFEST_NAME
    write_manifest(path, {i: ManifestRow(i, status, bytes=size)
                          for i, (status, size) in zip(ids, recorded, strict=True)})  # fmt: skip
    by_rows = sum(size_problem(size, on_disk.get(i)) is not None
                  for i, (status, size) in zip(ids, recorded, strict=True)
                  if status is TileStatus.OK)  # fmt: skip
    assert by_rows == 3
    chips = pa.table({"id": list(on_disk), "size": pa.array(list(on_disk.values()), pa.int64())})
    assert damaged_count(outcome_table(path), chips) == by_rows
    assert damaged_count(outcome_table(tmp_path / "none.csv"), chips) == 0


def test_a_folder_scan_sizes_every_file_and_skips_one_gone_since_the_listing(
    tmp_path: Path,
) -> None:
    from m3leo_tiles.dataset.layout import DatasetLayout, _sizes_of

    folder = _dataset(tmp_path, "scanned", 2)
    (folder / ".33N_1036_062.1.abc.part").write_bytes(b"partial")
    scan = DatasetLayout(folder).scan()
    assert scan.chip_sizes == {t.identifier: 1 for t in TILES[:2]}
    table = scan.chip_table().to_pydict()
    assert dict(zip(table["id"], table["size"], strict=True)) == scan.chip_sizes
    assert scan.total_bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert scan.partials == (".33N_1036_062.1.abc.part",)
    assert _sizes_of(folder, ["33N_1036_060.tif", "renamed.part"]) == [1, None]
