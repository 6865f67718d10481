"""Input lists named by reference (dataset/inputsets.py): rows stay small whatever a tile's
number of inputs, a changed input still redoes exactly its tiles, manifests written with the
paths inline (before references) are still read and honoured, and a cluster run that loses a
worker leaves a complete manifest whose every reference is recorded."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import assert_one_error_line, call_cli
from helpers.fake_runs import IDS, TILES, mtimes
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.inputsets import InputSets
from m3leo_tiles.dataset.layout import INPUT_SETS_NAME, DatasetLayout
from m3leo_tiles.dataset.manifest import COLUMNS, MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch.api import FetchReport, fetch_tiles
from m3leo_tiles.recipes import Recipe

HERE = Path(__file__).resolve().parents[1]
LAYERS = 48  # files a tile reads (GSSIC: 64 a cell)


def cells(root: Path, count: int) -> list[list[str]]:
    """``count`` cells of LAYERS files each, with long names like a mirror's."""
    lists = []
    for cell in range(count):
        folder = root / "mirror" / "data" / "tiles" / f"N4{cell}W100"
        folder.mkdir(parents=True)
        names = []
        for layer in range(LAYERS):
            name = f"N4{cell}W100_season{layer // 8}_pol{layer % 2}_metric{layer}.tif"
            path = folder / name
            path.write_bytes(b"x" * (layer + 1))
            names.append(str(path))
        lists.append(names)
    return lists


def listed_recipe(lists_file: Path, **params) -> Recipe:
    params = {"lists": str(lists_file), **params}
    return Recipe(name="listed", source="fake-listed", resolution=224.0, bands=("n",),
                  dtype="int16", nodata=-1, params=params)  # fmt: skip


def write_lists(path: Path, by_tile: dict[str, list[str]]) -> Path:
    path.write_text(json.dumps(by_tile))
    return path


def refs_are_recorded(folder: Path) -> set[str]:
    """Every reference the manifest names is in input-sets.jsonl; returns them."""
    text = (folder / MANIFEST_NAME).read_text().splitlines()[1:]
    named = {line.split(",")[3][1:] for line in text if line.split(",")[3].startswith("@")}
    assert named <= set(InputSets(folder / INPUT_SETS_NAME).read())
    return named


@pytest.fixture
def world(tmp_path: Path):
    lists = cells(tmp_path, 3)
    # tiles 0-3 read cell 0, 4-7 cell 1, 8-11 cells 1 and 2 (a tile across a cell line)
    by_tile = {ident: lists[0] if i < 4 else lists[1] if i < 8 else lists[1] + lists[2]
               for i, ident in enumerate(IDS)}  # fmt: skip
    return lists, by_tile, write_lists(tmp_path / "lists.json", by_tile)


def run_listed(cluster, lists_file: Path, out: Path) -> FetchReport:
    """A run of the listed test source over all test tiles on the test cluster."""
    return fetch_tiles(listed_recipe(lists_file), TILES, aoi="t", out=out,
                       scheduler=cluster.scheduler_address, progress=False)  # fmt: skip


def test_rows_name_lists_by_reference_and_a_changed_input_redoes_exactly_its_tiles(
    cluster, tmp_path: Path, world
) -> None:
    lists, by_tile, lists_file = world
    run = functools.partial(run_listed, cluster, lists_file, tmp_path / "out")
    first = run()
    folder = first.dataset_dir
    assert first.ok == len(TILES)
    manifest = (folder / MANIFEST_NAME).read_bytes()
    assert len(manifest) / len(TILES) < 300  # 48-96 inputs a tile, ~130 bytes a row
    assert len(refs_are_recorded(folder)) == 3
    rows = read_manifest(folder / MANIFEST_NAME)
    assert {ident: list(row.inputs) for ident, row in rows.items()} == by_tile
    assert len((folder / INPUT_SETS_NAME).read_text().splitlines()) == 3

    again = run()
    assert (again.ok, again.skipped) == (0, len(TILES))
    before = mtimes(folder)
    time.sleep(0.01)
    changed = Path(lists[2][5])
    changed.write_bytes(b"rewritten")  # one layer of cell 2: tiles 8-11 only
    third = run()
    assert (third.ok, third.skipped) == (4, 8)
    after = mtimes(folder)
    redone = {name for name in after if after[name] != before[name]}
    assert redone == {f"{ident}.tif" for ident in IDS[8:]}

    by_tile[IDS[0]] = lists[0][:-1]  # one tile's list loses a file
    write_lists(lists_file, by_tile)
    fourth = run()
    assert (fourth.ok, fourth.skipped) == (1, 11)
    assert read_manifest(folder / MANIFEST_NAME)[IDS[0]].inputs == tuple(lists[0][:-1])
    assert len(refs_are_recorded(folder)) == 4
    assert len((folder / INPUT_SETS_NAME).read_text().splitlines()) == 4  # each list once


def test_inputs_command_says_which_files_made_a_chip(cluster, capsys, tmp_path: Path,
                                                      world) -> None:  # fmt: skip
    lists, _, lists_file = world
    report = fetch_tiles(listed_recipe(lists_file), TILES[7:9], aoi="t", out=tmp_path / "out",
                         scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    code, out, _ = call_cli(capsys, "inputs", report.dataset_dir, IDS[8], IDS[7])
    assert code == 0
    assert out.splitlines() == [f"# {IDS[8]}", *lists[1], *lists[2], f"# {IDS[7]}", *lists[1]]
    code, out, _ = call_cli(capsys, "inputs", report.dataset_dir, IDS[0])
    assert (code, out.splitlines()) == (1, [f"# {IDS[0]}: no row in manifest.csv"])
    code, _, err = call_cli(capsys, "inputs", tmp_path, IDS[0])
    assert_one_error_line(code, err, "has no manifest.csv")


def write_old_manifest(folder: Path) -> None:
    """The manifest as the code before references wrote it: every row with its paths inline
    (joined by ``;``), and no input-sets.jsonl."""
    rows = read_manifest(folder / MANIFEST_NAME)
    with (folder / MANIFEST_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for ident in sorted(rows):
            row = rows[ident]
            writer.writerow([ident, str(row.status), row.reason, ";".join(row.inputs),
                             f"{row.seconds:.3f}", row.recipe_hash, row.finished_at,
                             str(row.bytes), row.crc32, row.input_id])  # fmt: skip
    (folder / INPUT_SETS_NAME).unlink()


def test_a_manifest_with_inline_inputs_is_read_and_its_tiles_stay_done(
    cluster, tmp_path: Path, world
) -> None:
    lists, by_tile, lists_file = world
    run = functools.partial(run_listed, cluster, lists_file, tmp_path / "out")
    folder = run().dataset_dir
    write_old_manifest(folder)
    assert "@" not in (folder / MANIFEST_NAME).read_text()
    old = read_manifest(folder / MANIFEST_NAME)
    assert {ident: list(row.inputs) for ident, row in old.items()} == by_tile
    lean = read_manifest(folder / MANIFEST_NAME, lean=True)
    assert {row.inputs for row in lean.values()} == {()}
    assert len({row.input_set for row in lean.values()}) == 3

    before = mtimes(folder)
    again = run()
    assert (again.ok, again.skipped) == (0, len(TILES))  # same inputs: nothing redone
    assert mtimes(folder) == before
    Path(lists[0][0]).write_bytes(b"rewritten")  # tiles 0-3
    third = run()
    assert (third.ok, third.skipped) == (4, 8)
    rows = read_manifest(folder / MANIFEST_NAME)
    assert {ident: list(row.inputs) for ident, row in rows.items()} == by_tile
    text = (folder / MANIFEST_NAME).read_text()
    assert text.count(",@") == 4  # the redone rows by reference, the others still inline
    refs_are_recorded(folder)


def test_a_worker_killed_mid_run_leaves_a_complete_manifest_with_recorded_lists(
    tmp_path: Path, world
) -> None:
    from distributed import Client

    from helpers.dask_cluster import dask_processes

    _, by_tile, lists_file = world
    recipe = listed_recipe(lists_file, sleep=0.3)
    out = tmp_path / "out"
    folder = DatasetLayout.of(out, "t", "listed").folder
    with dask_processes(tmp_path, workers=2) as (address, processes):
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            victim = processes[1].pid
        run = subprocess.Popen(
            [sys.executable, "-c", _RUN, address, str(lists_file), str(out)],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(HERE), str(HERE / "helpers" / "site"), os.environ.get("PYTHONPATH", "")])),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(folder.glob("*.tif"))) < 2:
            time.sleep(0.05)
        os.kill(victim, 9)
        _, stderr = run.communicate(timeout=120)
        assert run.returncode in (0, 1), stderr
        lines = (folder / MANIFEST_NAME).read_text().splitlines()[1:]
        assert sorted(line.split(",")[0] for line in lines) == sorted(IDS)  # each tile once
        assert refs_are_recorded(folder)
        rows = read_manifest(folder / MANIFEST_NAME)
        assert {ident: list(row.inputs) for ident, row in rows.items()} == by_tile
        for ident, row in rows.items():
            assert (row.status is TileStatus.OK) == (folder / f"{ident}.tif").exists()
        again = fetch_tiles(recipe, TILES, aoi="t", out=out, scheduler=address, progress=False)
        assert again.ok + again.skipped == len(TILES) and again.failed == 0
        assert len(read_manifest(folder / MANIFEST_NAME)) == len(TILES)


_RUN = """
import sys
from pathlib import Path
from helpers.fake_runs import TILES
from m3leo_tiles.fetch.api import fetch_tiles
from m3leo_tiles.recipes import Recipe

address, lists, out = sys.argv[1:]
recipe = Recipe(name="listed", source="fake-listed", resolution=224.0, bands=("n",),
                dtype="int16", nodata=-1, params={"lists": lists, "sleep": 0.3})
report = fetch_tiles(recipe, TILES, aoi="t", out=Path(out), scheduler=address, progress=False)
print(report.ok, report.failed)
sys.exit(report.exit_code)
"""
