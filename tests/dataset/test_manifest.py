"""The manifest survives crashes: torn lines, latest-wins, atomic compaction."""

from __future__ import annotations

from pathlib import Path

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.manifest import (
    COLUMNS,
    ManifestRow,
    ManifestWriter,
    compact_manifest,
    read_manifest,
)


def _row(identifier: str, status: TileStatus, reason: str = "") -> ManifestRow:
    return ManifestRow(identifier, status, reason, ("a.tif", "b.tif"), 1.25, "abc123", "2026-01-01")


def test_round_trip_and_latest_row_wins(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_001", TileStatus.FAILED, "boom,\nwith newline")])
        writer.write([_row("33N_0001_002", TileStatus.EMPTY)])
        writer.write([_row("33N_0001_001", TileStatus.OK)])
    rows = read_manifest(path)
    assert set(rows) == {"33N_0001_001", "33N_0001_002"}
    assert rows["33N_0001_001"].status is TileStatus.OK
    assert rows["33N_0001_002"].inputs == ("a.tif", "b.tif")
    assert rows["33N_0001_002"].seconds == 1.25
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_reason_with_newlines_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_001", TileStatus.FAILED, "line one\nline, two")])
    assert len(path.read_text().splitlines()) == 2
    assert read_manifest(path)["33N_0001_001"].reason == "line one line, two"


def test_torn_last_line_is_ignored_and_next_writer_starts_clean(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_001", TileStatus.OK)])
    whole = _row("33N_0001_002", TileStatus.OK).as_record()
    with path.open("a") as handle:  # a driver killed in the middle of a write
        handle.write(",".join(whole)[:20])
    assert set(read_manifest(path)) == {"33N_0001_001"}
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_003", TileStatus.EMPTY)])
    assert set(read_manifest(path)) == {"33N_0001_001", "33N_0001_003"}


def test_garbage_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_001", TileStatus.OK)])
    with path.open("a") as handle:
        handle.write("x,not-a-status,,,,,\nonly,three,fields\n")
    assert set(read_manifest(path)) == {"33N_0001_001"}


def test_compaction_keeps_one_row_per_tile_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        for status in (TileStatus.FAILED, TileStatus.FAILED, TileStatus.OK):
            writer.write([_row("33N_0001_001", status), _row("33N_0001_002", TileStatus.EMPTY)])
    rows = compact_manifest(path)
    assert len(path.read_text().splitlines()) == 3
    assert rows["33N_0001_001"].status is TileStatus.OK
    assert read_manifest(path) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]


def test_missing_manifest_reads_empty(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "manifest.csv") == {}
