"""The manifest of a dataset folder: what happened to each tile, crash-safe.

Why an append-only CSV written only by the driver: a run can die at any moment (Ctrl-C, OOM,
a power cut), and the manifest must still say which chips are finished. Appending one line per
tile and flushing after every batch means a crash loses at most the rows of the batch being
written, and a torn last line (no trailing newline) is simply ignored on reading. A tile may
appear many times across runs; the latest row wins. At the end of a run the file is compacted
to one row per tile, written to a temporary name and renamed over the old one, so readers never
see a half-written file.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from m3leo_tiles.core.atomic import PARTIAL_SUFFIX, open_append, write_text
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.redact import redact
from m3leo_tiles.dataset.layout import MANIFEST_NAME as MANIFEST_NAME  # its old home: re-exported

COLUMNS = (
    "identifier", "status", "reason", "inputs", "seconds", "recipe_hash", "finished_at",
    "bytes", "crc32", "input_id",
)  # fmt: skip
# Manifests written before chips' sizes and input identities were recorded: still read, with
# those values unknown (a rerun then checks such a chip by reading it whole with GDAL).
OLD_COLUMNS = COLUMNS[:7]
INPUT_SEPARATOR = ";"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def one_line(text: str) -> str:
    """Reasons come from exceptions and may hold newlines; a row must stay one line. Reasons
    and inputs may quote a URL with a credential: a manifest travels with its dataset."""
    return redact(" ".join(text.split()))


@dataclass(frozen=True)
class ManifestRow:
    """One tile's outcome in one run."""

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

    def as_record(self) -> list[str]:
        return [
            self.identifier,
            str(self.status),
            one_line(self.reason),
            INPUT_SEPARATOR.join(one_line(i) for i in self.inputs),
            f"{self.seconds:.3f}",
            self.recipe_hash,
            self.finished_at or now_iso(),
            "" if self.bytes is None else str(self.bytes),
            self.crc32,
            self.input_id,
        ]

    @classmethod
    def from_record(cls, record: list[str]) -> ManifestRow:
        names = COLUMNS if len(record) == len(COLUMNS) else OLD_COLUMNS
        values = dict(zip(names, record, strict=True))
        size = values.get("bytes", "")
        return cls(
            identifier=values["identifier"],
            status=TileStatus(values["status"]),
            reason=values["reason"],
            inputs=tuple(i for i in values["inputs"].split(INPUT_SEPARATOR) if i),
            seconds=float(values["seconds"] or 0.0),
            recipe_hash=values["recipe_hash"],
            finished_at=values["finished_at"],
            bytes=int(size) if size else None,
            crc32=values.get("crc32", ""),
            input_id=values.get("input_id", ""),
        )


assert tuple(f.name for f in fields(ManifestRow)) == COLUMNS


def read_manifest(path: Path) -> dict[str, ManifestRow]:
    """Latest row per tile; a torn last line and unreadable rows are skipped, not fatal."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    lines = text.split("\n")
    complete = lines[:-1]  # the piece after the last newline is empty or a torn write
    rows: dict[str, ManifestRow] = {}
    for record in csv.reader(complete):
        if len(record) not in (len(COLUMNS), len(OLD_COLUMNS)) or record[0] == COLUMNS[0]:
            continue
        try:
            row = ManifestRow.from_record(record)
        except ValueError:
            continue
        rows[row.identifier] = row
    return rows


class ManifestWriter:
    """Appends rows for one run; only the driver holds one, so lines never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._file: TextIO = open_append(path, newline="")  # never through a planted link
        if not new and not _ends_with_newline(path):
            # A previous run died mid-line: end the torn line so our first row stays whole.
            self._file.write("\n")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if new:
            self._writer.writerow(COLUMNS)
        self._file.flush()

    def write(self, rows: Iterable[ManifestRow]) -> None:
        """Append and flush: after this returns, a crash of this process loses nothing."""
        for row in rows:
            self._writer.writerow(row.as_record())
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


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, io.SEEK_END)
        return handle.read(1) == b"\n"


def write_manifest(path: Path, rows: Mapping[str, ManifestRow]) -> None:
    """Replace the manifest with exactly ``rows`` (one per tile, sorted), atomically (a
    link planted at its name is replaced, never written through)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for identifier in sorted(rows):
        writer.writerow(rows[identifier].as_record())
    write_text(path, buffer.getvalue(), durable=True, suffix=PARTIAL_SUFFIX)


def compact_manifest(path: Path) -> dict[str, ManifestRow]:
    """Rewrite the append log as one row per tile (latest wins); returns those rows."""
    rows = read_manifest(path)
    if path.exists():
        write_manifest(path, rows)
    return rows
