"""The manifest of a dataset folder: what happened to each tile, crash-safe.

Why an append-only CSV written only by the driver: a run can die at any moment (Ctrl-C, OOM,
a power cut), and the manifest must still say which chips are finished. Appending one line per
tile and flushing after every batch means a crash loses at most the rows of the batch being
written, and a torn last line (no trailing newline) is simply ignored on reading. A tile may
appear many times across runs; the latest row wins. At the end of a run the file is compacted
to one row per tile, written to a temporary name and renamed over the old one, so readers never
see a half-written file.

A row names its tile's inputs by a reference to a list recorded once in ``input-sets.jsonl``
(``@`` and 16 hex digits, see ``dataset.inputsets``), so a row stays ~130 bytes whether a
tile has one input or 256. Manifests written before that hold the paths inline, joined by
``;``: still read, and such rows stay valid until their tile is made again.

Reading at scale: ``iter_rows`` streams the file; ``read_manifest(path, lean=True)`` is what
the driver and ``status`` use (references only, no path list in memory);
``read_manifest(path)`` also gives each row its ``inputs`` paths, as it always did.
Compaction streams too: it holds one offset per tile, never the rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from m3leo_tiles.core.arrow import single_threaded_csv
from m3leo_tiles.core.atomic import PARTIAL_SUFFIX, ends_torn, open_append, replacing
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.redact import redact
from m3leo_tiles.dataset.inputsets import REF_PREFIX, InputSets, is_ref, set_ref
from m3leo_tiles.dataset.layout import INPUT_SETS_NAME
from m3leo_tiles.dataset.layout import MANIFEST_NAME as MANIFEST_NAME  # its old home: re-exported

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = (
    "identifier", "status", "reason", "inputs", "seconds", "recipe_hash", "finished_at",
    "bytes", "crc32", "input_id",
)  # fmt: skip
# Manifests written before chips' sizes and input identities were recorded: still read, with
# those values unknown (a rerun then checks such a chip by reading it whole with GDAL).
OLD_COLUMNS = COLUMNS[:7]
INPUT_SEPARATOR = ";"
_STATUSES = {str(status): status for status in TileStatus}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def one_line(text: str) -> str:
    """Reasons come from exceptions and may hold newlines; a row must stay one line. Reasons
    and inputs may quote a URL with a credential: a manifest travels with its dataset."""
    return redact(" ".join(text.split()))


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One tile's outcome in one run.

    ``input_set`` is the reference of the tile's input list (``dataset.inputsets``); when it
    is set the manifest stores it instead of ``inputs``, which may then be empty (a lean
    read) or the list it names (a full read).
    """

    identifier: str
    status: TileStatus
    reason: str = ""
    inputs: tuple[str, ...] = ()
    seconds: float = 0.0
    recipe_hash: str = ""
    finished_at: str = ""
    bytes: int | None = None  # the chip's size (ok rows); None: unknown (an old manifest)
    crc32: str = ""  # CRC-32 of the chip's bytes, 8 hex digits; "" unknown
    input_id: str = ""  # the source's identity of the inputs (paths, sizes, times); "" unknown
    input_set: str = ""  # the reference of the inputs' list; "" for inline inputs or none

    @property
    def inputs_ref(self) -> str:
        """The reference of this row's input list, whichever way it was stored ("" for a row
        without inputs): what decides whether two rows name the same inputs."""
        if self.input_set:
            return self.input_set
        return set_ref(self.inputs) if self.inputs else ""

    def as_record(self) -> list[str]:
        if self.input_set:
            inputs = REF_PREFIX + self.input_set
        else:
            inputs = INPUT_SEPARATOR.join(one_line(i) for i in self.inputs)
        return [
            self.identifier,
            str(self.status),
            one_line(self.reason) if self.reason else "",
            inputs,
            f"{self.seconds:.3f}",
            self.recipe_hash,
            self.finished_at or now_iso(),
            "" if self.bytes is None else str(self.bytes),
            self.crc32,
            self.input_id,
        ]

    @classmethod
    def from_record(cls, record: list[str]) -> ManifestRow:
        """A row from its CSV cells (either column set); ``ValueError`` if it is not one."""
        status = _STATUSES.get(record[1])
        if status is None:
            raise ValueError(f"not a tile status: {record[1]!r}")
        cell = record[3]
        ref = cell[len(REF_PREFIX) :] if is_ref(cell) else ""
        inputs = () if ref else tuple(i for i in cell.split(INPUT_SEPARATOR) if i)
        whole = len(record) == len(COLUMNS)
        size = record[7] if whole else ""
        return cls(
            record[0], status, record[2], inputs, float(record[4] or 0.0), record[5],
            record[6], int(size) if size else None, record[8] if whole else "",
            record[9] if whole else "", ref,
        )  # fmt: skip


assert tuple(f.name for f in fields(ManifestRow))[: len(COLUMNS)] == COLUMNS


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(offset, cells) of each complete, well-formed line, streamed; the header, a torn last
    line and lines of another shape are skipped."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    where = [0, 0]  # where the current line starts, where the next one does

    def lines() -> Iterator[str]:
        for raw in handle:
            if not raw.endswith(b"\n"):
                return  # a torn write: the piece after the last newline
            where[0] = where[1]
            where[1] += len(raw)
            yield raw.decode("utf-8", errors="replace")

    widths = (len(COLUMNS), len(OLD_COLUMNS))
    with handle:
        for record in csv.reader(lines()):
            if len(record) in widths and record[0] != COLUMNS[0]:
                yield where[0], record


def iter_rows(path: Path, *, lean: bool = False) -> Iterator[ManifestRow]:
    """Every readable row in file order (a tile may come several times; the last wins);
    ``lean``: see ``read_manifest``."""
    make = _Lean() if lean else ManifestRow.from_record
    for _, record in _records(Path(path)):
        try:
            yield make(record)
        except (ValueError, IndexError):
            continue


def read_manifest(path: Path, *, lean: bool = False) -> Mapping[str, ManifestRow]:
    """Latest row per tile; a torn last line and unreadable rows are skipped, not fatal.

    Rows give their ``inputs`` paths (a reference resolved through ``input-sets.jsonl``; each
    list is one tuple shared by its rows). ``lean`` keeps only references: inline paths of an
    old manifest become their reference, ``inputs`` stay empty, and repeated strings are
    shared, which is what a driver of 400k tiles holds.
    """
    path = Path(path)
    if lean:  # columns: a compacted manifest's by Arrow, else the streamed rows'
        fast = _lean_by_arrow(path)
        return fast if fast is not None else LeanRows.of(_latest(iter_rows(path, lean=True)))
    rows = _latest(iter_rows(path))
    if not any(row.input_set for row in rows.values()):
        return rows
    lists = InputSets(path.parent / INPUT_SETS_NAME)
    for identifier, row in rows.items():
        if row.input_set:
            rows[identifier] = replace(row, inputs=lists.inputs(row.input_set) or ())
    return rows


def _latest(rows: Iterable[ManifestRow]) -> dict[str, ManifestRow]:
    return {row.identifier: row for row in rows}


class _Lean:
    """Makes lean rows from CSV cells: inline inputs become their reference (each distinct
    list digested once) and repeated strings (hashes, times, references) are shared."""

    def __init__(self) -> None:
        self.refs: dict[str, str] = {}  # an inline inputs cell -> its reference
        self.strings: dict[str, str] = {}

    def __call__(self, record: list[str]) -> ManifestRow:
        status = _STATUSES.get(record[1])
        if status is None:
            raise ValueError(f"not a tile status: {record[1]!r}")
        cell, share = record[3], self.strings.setdefault
        if is_ref(cell):
            ref = cell[len(REF_PREFIX) :]
        elif cell:
            ref = self.refs.get(cell) or self.refs.setdefault(
                cell, set_ref(i for i in cell.split(INPUT_SEPARATOR) if i)
            )
        else:
            ref = ""
        whole = len(record) == len(COLUMNS)
        size = record[7] if whole else ""
        input_id = record[9] if whole else ""
        return ManifestRow(
            record[0], status, record[2], (), float(record[4] or 0.0),
            share(record[5], record[5]), share(record[6], record[6]),
            int(size) if size else None, record[8] if whole else "",
            share(input_id, input_id), share(ref, ref),
        )  # fmt: skip


def read_outcomes(path: Path) -> dict[str, tuple[TileStatus, int | None]]:
    """The latest status and recorded chip size of each tile, and nothing else: what
    the Dataset's index needs, without a row object per line."""
    table = outcome_table(path)
    by_name = _STATUSES
    return {ident: (by_name[status], size) for ident, status, size in zip(
        table.column("identifier").to_pylist(), table.column("status").to_pylist(),
        table.column("bytes").to_pylist(), strict=True)}  # fmt: skip


def outcome_table(path: Path, columns: Sequence[str] = ("bytes",)) -> pa.Table:
    """Each tile's latest row as Arrow columns: ``identifier``, ``status`` and ``columns``
    (``bytes`` int64, ``seconds`` float64, null where empty; any other as text, "" where a
    row has none, as an old manifest's rows): one entry per tile, so ``status`` and the
    catalog handle a CONUS dataset with Arrow kernels instead of 400k Python objects per
    column.

    A compacted manifest (one row per tile, every line whole and of the current shape:
    what every finished run leaves) is parsed by Arrow's CSV reader in a fraction of the
    time; anything else (an append log, a torn line, an old shape, a bad row) by the
    streaming reader, latest row winning.
    """
    import pyarrow as pa

    path = Path(path)
    names = ["identifier", "status", *columns]
    fast = _compact_table(path, tuple(names))
    if fast is not None and fast.num_rows:
        return fast.select(names)
    at = [COLUMNS.index(name) for name in columns]
    latest: dict[str, list[Any]] = {}
    if fast is None:
        for _, record in _records(path):
            if record[1] not in _STATUSES:
                continue
            try:
                latest[record[0]] = [
                    record[1],
                    *(
                        _typed(name, record[i] if i < len(record) else "")
                        for name, i in zip(columns, at, strict=True)
                    ),
                ]
            except ValueError:
                continue
    values = list(latest.values())
    return pa.table({
        "identifier": pa.array(list(latest), pa.string()),
        "status": pa.array([v[0] for v in values], pa.string()),
        **{name: pa.array([v[k] for v in values], _ARROW_TYPES.get(name, "string"))
           for k, name in enumerate(columns, start=1)},
    })  # fmt: skip


def _typed(name: str, text: str) -> int | float | str | None:
    """One cell as Arrow's reader of a compacted manifest types it: a number, null for an
    empty number, text as written (a bad number: ValueError, the row is skipped)."""
    kind = _ARROW_TYPES.get(name)
    if kind is None:
        return text
    if not text:
        return None
    return int(text) if kind == "int64" else float(text)


_ARROW_TYPES = {"bytes": "int64", "seconds": "float64"}  # every other column: text as written


def _compact_table(path: Path, columns: tuple[str, ...]) -> pa.Table | None:
    """``columns`` of a compacted manifest parsed by Arrow's CSV reader (an empty table when
    the file is missing), or None when the file is not one: another header, a torn last
    line, a row of another shape, a tile twice, a status we do not know. The caller then
    reads it with the streaming reader, which handles all of those."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return pa.table({name: pa.array([], pa.string()) for name in columns})
    header = (",".join(COLUMNS) + "\n").encode()
    if not data.startswith(header) or not data.endswith(b"\n"):
        return None
    bad: list[object] = []

    def skip(row: object) -> str:
        bad.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=single_threaded_csv(),
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(dict.fromkeys(("identifier", "status", *columns))),
                column_types={name: _ARROW_TYPES.get(name, pa.string()) for name in COLUMNS},
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    del data
    ids, statuses = table.column("identifier"), table.column("status")
    if bad or ids.null_count or pc.count_distinct(ids).as_py() != len(ids):
        return None
    if not pc.all(pc.is_in(statuses, value_set=pa.array(list(_STATUSES)))).as_py():
        return None
    return table


def _shared(column: pa.ChunkedArray) -> list[str]:
    """A text column as Python strings, one object per distinct value (hashes, times and
    references repeat across a manifest's rows)."""
    encoded = column.dictionary_encode().combine_chunks()
    words = encoded.dictionary.to_pylist()
    return [words[i] for i in encoded.indices.to_numpy(zero_copy_only=False).tolist()]


def _lean_by_arrow(path: Path) -> LeanRows | None:
    """``read_manifest(path, lean=True)`` of a compacted manifest whose rows all name their
    inputs by reference (what every run since input sets leaves), from Arrow's columns: a
    few times faster than the streaming reader on 400k rows. None: use that reader."""
    table = _compact_table(path, COLUMNS)
    if table is None:
        return None
    if not table.num_rows:
        return LeanRows.empty()
    import pyarrow as pa
    import pyarrow.compute as pc

    cells = table.column("inputs")
    if not pc.all(pc.or_(pc.equal(cells, ""), pc.starts_with(cells, REF_PREFIX))).as_py():
        return None  # inline paths (an old run's rows): their references are computed there
    refs = _shared(pc.utf8_slice_codeunits(cells, len(REF_PREFIX)))
    hot = {
        "identifier": table.column("identifier").to_pylist(),
        "status": [_STATUSES[s] for s in _shared(table.column("status"))],
        "recipe_hash": _shared(table.column("recipe_hash")),
        "bytes": table.column("bytes").to_pylist(),
        "input_id": _shared(table.column("input_id")),
        "input_set": refs,
    }
    cold_table = table.select(list(LeanRows.COLD))
    del table, cells
    pa.default_memory_pool().release_unused()  # the parse's buffers: a driver's peak memory

    def cold() -> dict[str, list[Any]]:
        column = cold_table.column
        return {"reason": _shared(column("reason")), "finished_at": _shared(column("finished_at")),
                "seconds": column("seconds").fill_null(0.0).to_pylist(),
                "crc32": column("crc32").to_pylist()}  # fmt: skip

    return LeanRows(hot, cold)


class LeanRows(Mapping[str, ManifestRow]):
    """The latest lean row of each tile, held as columns (one list a field) rather than one
    object a row: a CONUS driver holds 400k of them, and a rerun's decisions read a few
    fields of each (``position`` and the columns, see ``fetch.plan``). The columns no
    decision reads (``COLD``: reason, seconds, time, CRC) are made only when a row object
    is first asked for, by ``get`` or iteration; rows compare as a dict of them."""

    HOT = ("identifier", "status", "recipe_hash", "bytes", "input_id", "input_set")
    COLD = ("reason", "seconds", "finished_at", "crc32")

    def __init__(self, hot: Mapping[str, list[Any]],
                 cold: Callable[[], Mapping[str, list[Any]]]) -> None:  # fmt: skip
        self.identifier: list[str] = hot["identifier"]
        self.status: list[TileStatus] = hot["status"]
        self.recipe_hash: list[str] = hot["recipe_hash"]
        self.bytes: list[int | None] = hot["bytes"]
        self.input_id: list[str] = hot["input_id"]
        self.input_set: list[str] = hot["input_set"]  # the list's reference, "" for none
        self.position = {ident: i for i, ident in enumerate(self.identifier)}
        self._make_cold: Callable[[], Mapping[str, list[Any]]] | None = cold
        self._cold: Mapping[str, list[Any]] = {}

    @classmethod
    def empty(cls) -> LeanRows:
        return cls({name: [] for name in cls.HOT}, lambda: {name: [] for name in cls.COLD})

    @classmethod
    def of(cls, rows: Mapping[str, ManifestRow]) -> LeanRows:
        """Columns of rows (references, not paths: see ``read_manifest``'s ``lean``)."""
        if isinstance(rows, LeanRows):
            return rows
        listed = list(rows.values())
        hot = {name: [getattr(row, name) for row in listed] for name in cls.HOT[:-1]}
        hot["input_set"] = [row.inputs_ref for row in listed]
        cold = {name: [getattr(row, name) for row in listed] for name in cls.COLD}
        return cls(hot, lambda: cold)

    def row(self, i: int) -> ManifestRow:
        if self._make_cold is not None:
            self._cold, self._make_cold = self._make_cold(), None
        cold = self._cold
        return ManifestRow(self.identifier[i], self.status[i], cold["reason"][i], (),
                           cold["seconds"][i], self.recipe_hash[i], cold["finished_at"][i],
                           self.bytes[i], cold["crc32"][i], self.input_id[i],
                           self.input_set[i])  # fmt: skip

    def __getitem__(self, identifier: str) -> ManifestRow:
        return self.row(self.position[identifier])

    def __iter__(self) -> Iterator[str]:
        return iter(self.identifier)

    def __len__(self) -> int:
        return len(self.identifier)


class ManifestWriter:
    """Appends rows for one run; only the driver holds one, so lines never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._file: TextIO = open_append(path, newline="")  # never through a planted link
        if ends_torn(path):
            # A previous run died mid-line: end the torn line so our first row stays whole.
            self._file.write("\n")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if new:
            self._writer.writerow(COLUMNS)
        self._file.flush()
        self.written = 0  # rows appended by this writer

    def write(self, rows: Iterable[ManifestRow]) -> None:
        """Append and flush: after this returns, a crash of this process loses nothing."""
        for row in rows:
            self._writer.writerow(row.as_record())
            self.written += 1
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_manifest(path: Path, rows: Mapping[str, ManifestRow]) -> None:
    """Replace the manifest with exactly ``rows`` (one per tile, sorted), atomically (a
    link planted at its name is replaced, never written through)."""
    with (
        replacing(path, durable=True, suffix=PARTIAL_SUFFIX) as temporary,
        open(temporary, "w", encoding="utf-8", newline="") as handle,
    ):
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for identifier in sorted(rows):
            writer.writerow(rows[identifier].as_record())


def is_compact(path: Path) -> bool:
    """Whether the manifest holds one line per tile, sorted, nothing else (what a compaction
    leaves): then a run that appended nothing need not rewrite it."""
    previous = None
    try:
        with Path(path).open("rb") as handle:
            header = handle.readline()
            if header != (",".join(COLUMNS) + "\n").encode():
                return False
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return False
                identifier = raw.split(b",", 1)[0]
                if previous is not None and identifier <= previous:
                    return False
                previous = identifier
    except FileNotFoundError:
        return True
    return True


def compact_manifest(path: Path) -> int:
    """Rewrite the append log as one row per tile (latest wins), sorted, atomically; returns
    the number of tiles. Streams: it holds each tile's latest line offset, not its row, so a
    manifest of a million tiles compacts in tens of megabytes."""
    path = Path(path)
    latest: dict[str, int] = {}
    for offset, record in _records(path):
        if record[1] in _STATUSES:
            latest[record[0]] = offset
    if not path.exists():
        return 0
    with (
        replacing(path, durable=True, suffix=PARTIAL_SUFFIX) as temporary,
        open(temporary, "wb") as out,
        path.open("rb") as source,
    ):
        out.write((",".join(COLUMNS) + "\n").encode())
        for identifier in sorted(latest):
            source.seek(latest[identifier])
            out.write(source.readline())
    return len(latest)
