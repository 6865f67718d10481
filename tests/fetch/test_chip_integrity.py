"""Damaged chips never pass as done (issue #8 item 2): sizes and CRC-32 in the manifest,
checked on resume; adoption only of chips GDAL reads whole; `status --verify` reads them all."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import pytest

from helpers.cli import call_cli
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.chipfile import chip_problem, write_bytes_atomically
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, OLD_COLUMNS, read_manifest
from m3leo_tiles.fetch.api import fetch_tiles
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe

pytestmark = pytest.mark.slow

ORIGIN = Tile.from_point(12.5, 42.0)
TILES = [Tile(ORIGIN.zone, ORIGIN.row, ORIGIN.col + n) for n in range(5)]
IDS = [t.identifier for t in TILES]
RECIPE = Recipe(name="fake", source="fake-synthetic", resolution=89.6, bands=("value",),
                dtype="int16", nodata=-1, params={})  # fmt: skip


def run(cluster, out: Path, **kwargs):
    return fetch_tiles(RECIPE, TILES, aoi="t", out=out, scheduler=cluster.scheduler_address,
                       progress=False, **kwargs)  # fmt: skip


def _damage(folder: Path) -> tuple[Path, Path]:
    emptied, halved = folder / f"{IDS[0]}.tif", folder / f"{IDS[1]}.tif"
    emptied.write_bytes(b"")  # truncate -s 0
    with open(halved, "r+b") as handle:
        handle.truncate(halved.stat().st_size // 2)  # a partial truncation
    return emptied, halved


def test_manifest_records_size_and_crc_of_each_chip(cluster, tmp_path: Path) -> None:
    report = run(cluster, tmp_path)
    rows = read_manifest(report.dataset_dir / MANIFEST_NAME)
    for identifier in IDS:
        payload = (report.dataset_dir / f"{identifier}.tif").read_bytes()
        assert rows[identifier].bytes == len(payload)
        assert rows[identifier].crc32 == f"{zlib.crc32(payload):08x}"
        assert rows[identifier].input_id  # the inputs' identity, from the source


def test_a_damaged_chip_is_redone_not_skipped(cluster, tmp_path: Path) -> None:
    first = run(cluster, tmp_path)
    emptied, halved = _damage(first.dataset_dir)
    again = run(cluster, tmp_path)
    assert (again.ok, again.skipped) == (2, 3)
    assert chip_problem(emptied) is None and chip_problem(halved) is None
    log = (first.dataset_dir / "fetch.log").read_text()
    assert "2 finished chips are damaged and are made again" in log


def test_without_a_manifest_only_whole_chips_are_adopted(cluster, tmp_path: Path) -> None:
    first = run(cluster, tmp_path)
    _damage(first.dataset_dir)
    (first.dataset_dir / MANIFEST_NAME).unlink()
    again = run(cluster, tmp_path)
    rows = read_manifest(first.dataset_dir / MANIFEST_NAME)
    assert (again.ok, again.skipped) == (2, 3)
    assert {i for i, r in rows.items() if r.reason == "adopted"} == set(IDS[2:])
    assert all(chip_problem(first.dataset_dir / f"{i}.tif") is None for i in IDS)


def test_an_old_manifest_is_read_and_its_chips_checked_by_reading_them(
    cluster, tmp_path: Path
) -> None:
    first = run(cluster, tmp_path)
    path = first.dataset_dir / MANIFEST_NAME
    with path.open(newline="") as handle:
        records = list(csv.reader(handle))
    with path.open("w", newline="") as handle:  # the 7 columns of manifests before sizes
        csv.writer(handle, lineterminator="\n").writerows(r[: len(OLD_COLUMNS)] for r in records)
    with open(first.dataset_dir / f"{IDS[1]}.tif", "r+b") as handle:
        handle.truncate(300)
    again = run(cluster, tmp_path)
    assert (again.ok, again.skipped) == (1, 4)
    rows = read_manifest(path)
    assert all(rows[i].bytes and rows[i].crc32 for i in IDS)  # recorded now


def test_status_verify_reads_every_chip(
    cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run(cluster, tmp_path)
    chip = first.dataset_dir / f"{IDS[2]}.tif"
    data = bytearray(chip.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte flipped: only the checksum sees it
    chip.write_bytes(bytes(data))
    _damage(first.dataset_dir)
    code, out, _ = call_cli(capsys, "status", tmp_path, "--verify")
    assert code == 1
    assert "5 chips verified, 3 damaged" in out and "CRC-32" in out
    rows = read_manifest(first.dataset_dir / MANIFEST_NAME)
    assert sorted(i for i, r in rows.items() if r.status is TileStatus.FAILED) == sorted(IDS[:3])
    again = run(cluster, tmp_path)
    assert (again.ok, again.skipped) == (3, 2)
    code, out, _ = call_cli(capsys, "status", tmp_path, "--verify")
    assert code == 0 and "5 chips verified, all whole" in out


def test_chips_are_flushed_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    import os

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("rename"), real_replace(a, b))[1])
    write_bytes_atomically(tmp_path / "a.tif", b"abc")
    assert calls == ["fsync", "rename", "fsync"]  # the file, the rename, the folder
    calls.clear()
    write_bytes_atomically(tmp_path / "b.tif", b"abc", durable=False)
    assert calls == ["rename"]
