"""The manifest survives crashes: torn lines, latest-wins, atomic compaction."""

from __future__ import annotations

from pathlib import Path

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.inputsets import InputSets, Refs, set_ref
from m3leo_tiles.dataset.layout import INPUT_SETS_NAME
from m3leo_tiles.dataset.manifest import (
    COLUMNS,
    ManifestRow,
    ManifestWriter,
    compact_manifest,
    is_compact,
    read_manifest,
    read_outcomes,
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
    before = read_manifest(path)
    assert compact_manifest(path) == 2  # the tile count: compaction streams, it keeps no rows
    assert len(path.read_text().splitlines()) == 3
    assert before["33N_0001_001"].status is TileStatus.OK
    assert read_manifest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]


def test_missing_manifest_reads_empty(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "manifest.csv") == {}


OLD_TEXT = (  # as the code before input lists by reference wrote it: paths inline
    "identifier,status,reason,inputs,seconds,recipe_hash,finished_at,bytes,crc32,input_id\n"
    "33N_0001_001,ok,,/m/a.tif;/m/b.tif,0.010,abc123,2026-01-01T00:00:00+00:00,1005,dedac4ea,"
    "db22c256f75bd7da\n"
    "33N_0001_002,empty,only nodata,/m/a.tif;/m/b.tif,0.010,abc123,2026-01-01T00:00:00+00:00,"
    ",,db22c256f75bd7da\n"
    "33N_0001_003,no-source,no input covers this tile,,0.000,abc123,2026-01-01T00:00:00+00:00"
    ",,,\n"
    "33N_0001_004,ok,,/m/c.tif,0.020,abc123,2026-01-01\n"  # older still: 7 columns
)


def test_a_manifest_written_with_inline_inputs_is_read(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text(OLD_TEXT)
    rows = read_manifest(path)
    assert rows["33N_0001_001"].inputs == ("/m/a.tif", "/m/b.tif")
    assert (rows["33N_0001_001"].bytes, rows["33N_0001_004"].bytes) == (1005, None)
    assert rows["33N_0001_003"].inputs == () and rows["33N_0001_004"].inputs == ("/m/c.tif",)
    lean = read_manifest(path, lean=True)
    assert {row.inputs for row in lean.values()} == {()}
    assert lean["33N_0001_001"].input_set == set_ref(("/m/a.tif", "/m/b.tif"))
    assert lean["33N_0001_002"].input_set is lean["33N_0001_001"].input_set  # one string
    assert lean["33N_0001_003"].input_set == ""
    by_ref = {i: r.input_set for i, r in lean.items()}
    assert {i: r.inputs_ref for i, r in rows.items()} == by_ref
    assert read_outcomes(path) == {"33N_0001_001": (TileStatus.OK, 1005),
                                   "33N_0001_002": (TileStatus.EMPTY, None),
                                   "33N_0001_003": (TileStatus.NO_SOURCE, None),
                                   "33N_0001_004": (TileStatus.OK, None)}  # fmt: skip


def test_rows_by_reference_are_resolved_and_a_torn_list_names_nothing(tmp_path: Path) -> None:
    lists = InputSets(tmp_path / INPUT_SETS_NAME)
    many = tuple(f"/mirror/N40W100/N40W100_layer{i}.tif" for i in range(200))
    refs = Refs()
    ref = refs(many)
    assert lists.record(refs.lists) == 1 and lists.record(refs.lists) == 0  # each list once
    with (tmp_path / INPUT_SETS_NAME).open("a") as handle:  # a driver killed mid-write
        handle.write('{"ref": "0123456789abcdef", "inputs": ["/x')
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        writer.write([ManifestRow("33N_0001_001", TileStatus.OK, input_set=ref, bytes=10)])
    assert len(path.read_bytes().splitlines()[1]) < 120  # whatever the list's length
    assert read_manifest(path)["33N_0001_001"].inputs == many
    assert set(InputSets(tmp_path / INPUT_SETS_NAME).read()) == {ref}
    other = Refs()
    second = other(("/y.tif",))
    assert lists.record(other.lists) == 1  # on a line of its own, after the torn one
    assert InputSets(tmp_path / INPUT_SETS_NAME).read() == {ref: many, second: ("/y.tif",)}


def test_compaction_is_needed_only_after_appends(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_002", TileStatus.OK), _row("33N_0001_001", TileStatus.OK)])
    assert not is_compact(path)  # out of order
    compact_manifest(path)
    assert is_compact(path)
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_002", TileStatus.FAILED)])
    assert not is_compact(path)  # a tile twice
    assert compact_manifest(path) == 2 and is_compact(path)
    assert read_manifest(path)["33N_0001_002"].status is TileStatus.FAILED


def test_outcomes_of_a_compacted_manifest_are_those_of_its_log(tmp_path: Path) -> None:
    from m3leo_tiles.dataset.manifest import _compact_table

    def by_arrow(path: Path) -> object:
        return _compact_table(path, ("identifier", "status", "bytes"))

    path = tmp_path / "manifest.csv"
    with ManifestWriter(path) as writer:
        writer.write([_row("33N_0001_001", TileStatus.FAILED, 'boom, "quoted"\nsecond line'),
                      _row("33N_0001_002", TileStatus.EMPTY)])  # fmt: skip
        writer.write([ManifestRow("33N_0001_001", TileStatus.OK, bytes=1234, input_set="ab" * 8),
                      _row("33N_0001_003", TileStatus.NO_SOURCE)])  # fmt: skip
    from_log = read_outcomes(path)  # an append log: the streaming reader
    assert by_arrow(path) is None
    compact_manifest(path)
    assert by_arrow(path) is not None  # compacted: Arrow's reader
    expected = {"33N_0001_001": (TileStatus.OK, 1234), "33N_0001_002": (TileStatus.EMPTY, None),
                "33N_0001_003": (TileStatus.NO_SOURCE, None)}  # fmt: skip
    assert read_outcomes(path) == from_log == expected


def test_lean_rows_of_a_compacted_manifest_are_read_into_columns_as_streamed(
    tmp_path: Path,
) -> None:
    from m3leo_tiles.dataset.manifest import LeanRows, _lean_by_arrow, iter_rows

    path = tmp_path / "manifest.csv"
    by_ref = [
        ManifestRow("33N_0001_001", TileStatus.FAILED, 'boom, "quoted"', (), 2.5, "abc123",
                    "2026-01-01", None, "", "id1", "ab" * 8),
        ManifestRow("33N_0001_002", TileStatus.OK, "", (), 0.5, "abc123", "2026-01-02", 1234,
                    "0a0b0c0d", "id2", "cd" * 8),
        ManifestRow("33N_0001_003", TileStatus.NO_SOURCE, "none", (), 0.0, "abc123",
                    "2026-01-02"),
    ]  # fmt: skip
    with ManifestWriter(path) as writer:
        writer.write(by_ref)
    compact_manifest(path)
    streamed = {row.identifier: row for row in iter_rows(path, lean=True)}
    columns = _lean_by_arrow(path)
    assert isinstance(columns, LeanRows)  # compacted and by reference: Arrow's reader
    lean = read_manifest(path, lean=True)
    assert dict(lean) == dict(columns) == streamed
    assert lean.get("33N_0001_002") == streamed["33N_0001_002"] and "nope" not in lean
    with ManifestWriter(path) as writer:  # inline paths (an old run's rows): streamed
        writer.write([_row("33N_0001_004", TileStatus.EMPTY)])
    compact_manifest(path)
    assert _lean_by_arrow(path) is None
    lean = read_manifest(path, lean=True)
    assert lean["33N_0001_004"].input_set == set_ref(("a.tif", "b.tif"))
    assert dict(lean) == {row.identifier: row for row in iter_rows(path, lean=True)}
