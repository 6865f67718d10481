"""A dataset's input sets: each distinct list of a tile's input files, recorded once.

Why: a GSSIC tile reads 64-256 files and a GUNW tile dozens to hundreds of products, and most
of a grid's tiles share their list with their neighbours (those of one 1° cell, of one frame).
Writing every list into every manifest row made a CONUS manifest 2.6 GB and its reader 10 GB;
instead a row names its list by a short reference (``@`` and 16 hex digits of a SHA-256 of
the list), and each list is written once to ``input-sets.jsonl`` beside the manifest, one JSON
line ``{"ref": ..., "inputs": [...]}`` per list.

A reference is the digest of the list's text, so the same list gets the same reference in
every run and on every machine, and "same reference" means "same paths" (what decides
"done" compares references, then the inputs' identity). The file is append-only and only
the driver, holding the dataset's lock, writes it; a list is appended and fsynced before any
manifest row naming it is written, so a row never names a list that a crash lost. A torn last
line (a crash mid-write) is ignored on reading, like the manifest's.

To see which files made a chip: ``m3leo-tiles inputs FOLDER TILE`` (``tile_inputs``), or
look up the reference of the tile's manifest row in this file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from m3leo_tiles.core.atomic import ends_torn, fsync_folder, open_append
from m3leo_tiles.core.redact import redact

REF_PREFIX = "@"  # a manifest's inputs cell that starts with this holds a reference
REF_DIGITS = 16


def clean_input(text: str) -> str:
    """An input as a manifest shows it: one line, without credentials (a dataset travels)."""
    return redact(" ".join(text.split()))


def _digest(cleaned: Iterable[str]) -> str:
    text = "\n".join(cleaned)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:REF_DIGITS]


def set_ref(inputs: Iterable[str]) -> str:
    """The reference of an input list: the digest of its cleaned text, in order ("" for no
    inputs: a no-source row names nothing)."""
    return Refs()(tuple(inputs))


def is_ref(cell: str) -> bool:
    """Whether a manifest's inputs cell holds a reference (else inline paths, or nothing)."""
    return cell.startswith(REF_PREFIX)


class Refs:
    """References of a run's input lists, computed once per list and each path cleaned once:
    neighbouring tiles share their list (the same tuple object, from the source's plan) and
    lists share paths, so a grid of 400k tiles costs a few thousand digests.

    ``lists`` keeps each reference's cleaned list: what ``InputSets.record`` writes.
    """

    def __init__(self) -> None:
        self._clean: dict[str, str] = {}
        self._by_id: dict[int, tuple[tuple[str, ...], str]] = {}  # keeps its tuples alive
        self._by_value: dict[tuple[str, ...], str] = {}
        self.lists: dict[str, tuple[str, ...]] = {}

    def __call__(self, inputs: tuple[str, ...]) -> str:
        if not inputs:
            return ""
        known = self._by_id.get(id(inputs))
        if known is not None:
            return known[1]
        ref = self._by_value.get(inputs)
        if ref is None:
            clean = self._clean
            cleaned = tuple(clean.get(i) or clean.setdefault(i, clean_input(i)) for i in inputs)
            ref = self._by_value[inputs] = _digest(cleaned)
            self.lists[ref] = cleaned
        self._by_id[id(inputs)] = (inputs, ref)
        return ref


class InputSets:
    """The input lists of one dataset (``input-sets.jsonl``): read lazily, appended by the
    driver. ``record`` is what makes a reference safe to write into the manifest."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lists: dict[str, tuple[str, ...]] | None = None

    def read(self) -> dict[str, tuple[str, ...]]:
        """Every recorded list by reference; a torn last line and bad lines are skipped."""
        if self._lists is None:
            self._lists = _read(self.path)
        return self._lists

    def inputs(self, ref: str) -> tuple[str, ...] | None:
        """The list of a reference (with or without its ``@``), or None if it is unknown."""
        return self.read().get(ref.removeprefix(REF_PREFIX))

    def record(self, lists: Mapping[str, tuple[str, ...]]) -> int:
        """Append the lists (reference -> cleaned list, see ``Refs.lists``) not yet recorded,
        durably (flushed and fsynced); returns how many were new. Call it before writing
        rows that name them."""
        known = _recorded_refs(self.path)
        new = {ref: inputs for ref, inputs in lists.items() if ref and ref not in known}
        if new:
            _append(self.path, new)
            self._lists = None
        return len(new)


_LINE_START = '{"ref": "'


def _line(ref: str, inputs: tuple[str, ...]) -> str:
    return json.dumps({"ref": ref, "inputs": list(inputs)}, ensure_ascii=False)


def _recorded_refs(path: Path) -> set[str]:
    """The references of the file's complete lines, from each line's start: a complete line
    was appended whole and fsynced, so it need not be parsed to be trusted."""
    found: set[str] = set()
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return found
    start = _LINE_START.encode()
    with handle:
        for raw in handle:
            if raw.endswith(b"\n") and raw.startswith(start):
                found.add(raw[len(start) : len(start) + REF_DIGITS].decode("ascii", "replace"))
    return found


def _read(path: Path) -> dict[str, tuple[str, ...]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    found: dict[str, tuple[str, ...]] = {}
    strings: dict[str, str] = {}  # lists share paths (GSSIC: 508k items, 62k files): one
    share = strings.setdefault  # object per path, or a rerun holds 60 MB more
    for line in text.split("\n")[:-1]:  # the piece after the last newline is empty or torn
        try:
            record = json.loads(line)
            ref, inputs = record["ref"], tuple(share(str(i), str(i)) for i in record["inputs"])
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(ref, str) and _digest(inputs) == ref:  # a damaged line names nothing
            found[ref] = inputs
    return found


def _append(path: Path, new: Mapping[str, tuple[str, ...]]) -> None:
    """Append lines (after ending a torn one), then flush and fsync: after this returns, a
    row naming any of them may be written."""
    torn, made = ends_torn(path), not path.exists()
    with open_append(path, newline="") as handle:
        if torn:
            handle.write("\n")
        for ref, inputs in new.items():
            handle.write(_line(ref, inputs) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if made:  # the new file's name must survive a power cut too
        fsync_folder(path.parent)
