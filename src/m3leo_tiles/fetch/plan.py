"""The driver's plan for a run: what is already done, what has no source, and the batches.

Decided once, before any worker starts, from the manifest and the files on disk (a chip
written just before a driver died is adopted if it is ours), then ``adapter.plan`` for the
tiles left. Tiles whose ``batch_key`` is equal are grouped, so one task reads their shared
inputs once; groups are cut into batches sized to keep every thread busy.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.inputsets import Refs
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.manifest import LeanRows, ManifestRow, now_iso
from m3leo_tiles.fetch.replan import reused_lists
from m3leo_tiles.grid.tile import tile_ids
from m3leo_tiles.sources.base import SourceAdapter, each_file_looked_at_once

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import GridTile

MIN_BATCH, MAX_BATCH = 1, 256
BATCHES_PER_THREAD = 8  # enough batches for load balancing, few enough to amortise overhead

Item = tuple["GridTile", tuple[str, ...]]


@dataclass(frozen=True)
class Plan:
    """The driver's decision for this run: what is done, and tiles grouped by shared inputs.

    ``refreshed`` are rows of finished tiles rewritten with what an older manifest lacked
    (a chip's size and CRC after GDAL read it whole, the inputs' identity); ``damaged`` and
    ``inputs_changed`` are finished tiles planned again, and why (said in fetch.log).
    ``input_refs`` names each tile's input list by its reference; ``input_lists`` holds
    those lists, to be recorded (``InputSets.record``) before any row naming them is written.
    """

    skipped: int
    adopted: tuple[ManifestRow, ...]
    no_source: tuple[ManifestRow, ...]
    groups: tuple[tuple[Item, ...], ...]
    input_ids: Mapping[str, str] = field(default_factory=dict)
    input_refs: Mapping[str, str] = field(default_factory=dict)
    input_lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    refreshed: tuple[ManifestRow, ...] = ()
    damaged: tuple[tuple[str, str], ...] = ()  # (tile id, what is wrong with its chip)
    inputs_changed: int = 0
    reused: bool = False  # the rows' input lists stood for the source's plan (fetch.replan)

    @property
    def to_render(self) -> int:
        return sum(len(g) for g in self.groups)

    def batches(self, threads: int, min_size: int = MIN_BATCH) -> list[tuple[Item, ...]]:
        """Batches sized for ``threads``: a group is cut only where it is bigger than a batch,
        and small groups (tiles with inputs of their own, e.g. one request each) are packed
        together, so that a batch has enough tiles for a source to overlap its requests
        (``min_size``: an I/O-bound source wants several tiles per thread it may use)."""
        size = max(min_size, batch_size_for(self.to_render, threads))
        batches: list[tuple[Item, ...]] = []
        current: list[Item] = []
        for group in self.groups:
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                if current and len(current) + len(chunk) > size:
                    batches.append(tuple(current))
                    current = []
                current.extend(chunk)
        if current:
            batches.append(tuple(current))
        return batches


def batch_size_for(count: int, threads: int) -> int:
    """Big batches amortise task overhead; enough of them keep every thread busy."""
    wanted = -(-count // max(1, threads * BATCHES_PER_THREAD))
    return max(MIN_BATCH, min(MAX_BATCH, wanted))


def _same_inputs(row: ManifestRow, ref: str, input_id: str) -> bool:
    """Whether a finished row was made from the inputs planned now: the same list (its
    reference: the digest of the paths) and, when recorded, the same identity (sizes, times)."""
    if row.inputs_ref != ref:
        return False
    return not row.input_id or row.input_id == input_id


def _adopt(path: Path, identifier: str, recipe_hash: str, ref: str,
           input_id: str) -> ManifestRow | None:  # fmt: skip
    """A chip written by a worker whose driver died before recording it: kept only if it is
    ours (recipe hash and inputs' identity in its tags) and GDAL reads it whole."""
    from m3leo_tiles.dataset.chipfile import Written, chip_problem, read_chip_tags

    try:
        tags = read_chip_tags(path)
    except Exception:  # unreadable: not whole, redo it
        return None
    if tags.get("recipe_hash") != recipe_hash or tags.get("input_id", "") != input_id:
        return None
    if chip_problem(path) is not None:
        return None
    written = Written.of(path.read_bytes())
    return ManifestRow(identifier, TileStatus.OK, "adopted", (), 0.0, recipe_hash, now_iso(),
                       written.size, written.crc32, input_id, ref)  # fmt: skip


def size_problem(recorded: int | None, size: int | None) -> str | None:
    """What a cheap look (no read) finds wrong with the chip of an ``ok`` row that recorded
    ``recorded`` bytes (None: an old manifest) whose file has ``size`` bytes (None: no file):
    the check fetch makes before skipping a tile and status makes before counting it ok.
    None when it looks whole (or no size was recorded)."""
    if size is None:
        return "its chip is missing"
    if recorded is not None and recorded != size:
        return f"{size} bytes, recorded {recorded}"
    return None


@dataclass
class _Decisions:
    """What the plan decided so far, tile by tile (made into a ``Plan`` at the end)."""

    todo: list[Item] = field(default_factory=list)
    adopted: list[ManifestRow] = field(default_factory=list)
    refreshed: list[ManifestRow] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)
    changed: int = 0
    skipped: int = 0


def _input_ids(adapter: SourceAdapter, tiles: Sequence[GridTile],
               inputs_of: Mapping[str, tuple[str, ...]],
               refs: Refs) -> tuple[dict[str, str], dict[str, str]]:  # fmt: skip
    """Each tile's inputs' identity and list reference; tiles sharing a list ask the source
    once (lists are keyed by reference, so equal lists count once whatever their objects)."""
    identity = _identity_by_list(adapter)
    input_ids: dict[str, str] = {}
    input_refs: dict[str, str] = {}
    with each_file_looked_at_once():  # lists share their files: each is looked at once
        for tile in tiles:
            inputs = inputs_of.get(tile.identifier, ())
            ref = refs(inputs)
            input_ids[tile.identifier] = identity(ref, inputs)
            input_refs[tile.identifier] = ref
    return input_ids, input_refs


def _identity_by_list(adapter: SourceAdapter) -> Callable[[str, tuple[str, ...]], str]:
    """The inputs' identity of a list given with its reference, asked of the source once per
    distinct list (tiles share lists; the empty list has none)."""
    known: dict[str, str] = {"": ""}

    def identity(ref: str, inputs: tuple[str, ...]) -> str:
        found = known.get(ref)
        if found is None:
            found = known[ref] = adapter.input_identity(inputs)
        return found

    return identity


def _keep_finished_chip(row: ManifestRow, size: int, layout: DatasetLayout, input_id: str,
                        decided: _Decisions) -> bool:  # fmt: skip
    """Whether the ``ok`` row of a chip present on disk stands: a chip of another size, or
    (an old manifest without a size) one GDAL cannot read whole, is damaged and made again.
    The chip's path is made only when it is read (a path object per tile costs a CONUS
    rerun seconds)."""
    from m3leo_tiles.dataset.chipfile import Written, chip_problem

    problem = size_problem(row.bytes, size)
    if problem is None and row.bytes is None:  # an old manifest: read it once, then record it
        path = layout.chip(row.identifier)
        problem = chip_problem(path)
        if problem is None:
            written = Written.of(path.read_bytes())
            decided.refreshed.append(replace(row, bytes=written.size, crc32=written.crc32,
                                             input_id=input_id))  # fmt: skip
            return True
    if problem is not None:
        decided.damaged.append((row.identifier, problem))
        return False
    if not row.input_id:
        decided.refreshed.append(replace(row, input_id=input_id))
    return True


def _is_done(row: ManifestRow, ref: str, input_id: str, size: int | None,
             layout: DatasetLayout, decided: _Decisions) -> bool:  # fmt: skip
    """Whether a tile with a row of this recipe stays done: same inputs, and a whole chip for
    ``ok`` (``empty`` and ``no-source`` have none); a failed tile, or an ``ok`` one whose chip
    is gone, is made again."""
    if not _same_inputs(row, ref, input_id):
        decided.changed += 1
        return False
    if row.status is TileStatus.OK:
        return size is not None and _keep_finished_chip(row, size, layout, input_id, decided)
    if not row.status.is_done:
        return False
    if not row.input_id and ref:
        decided.refreshed.append(replace(row, input_id=input_id))
    return True


def _plainly_done(lean: LeanRows, recipe_hash: str,
                  sizes: Mapping[str, int]) -> Callable[[int, str, str], bool]:  # fmt: skip
    """Whether the row at a position is done with nothing to check or rewrite, read from
    the manifest's columns without a row object (what nearly every tile of a rerun is):
    this recipe's hash, the same input list and recorded identity, and a finished status;
    for ``ok`` a chip of the recorded size. Any other row goes through ``_is_done``, which
    decides exactly as this does for these."""
    hashes, refs, identities = lean.recipe_hash, lean.input_set, lean.input_id
    statuses, recorded, identifiers = lean.status, lean.bytes, lean.identifier
    ok = TileStatus.OK

    def done(i: int, ref: str, input_id: str) -> bool:
        if hashes[i] != recipe_hash or refs[i] != ref or identities[i] != input_id:
            return False
        if not input_id and ref:  # a row without an identity: _is_done records it
            return False
        status = statuses[i]
        if status is ok:
            size = recorded[i]
            return bool(input_id) and size is not None and sizes.get(identifiers[i]) == size
        return status.is_done

    return done


def _no_source_row(tile: GridTile, recipe_hash: str) -> ManifestRow:
    return ManifestRow(tile.identifier, TileStatus.NO_SOURCE, "no input covers this tile", (),
                       0.0, recipe_hash, now_iso())  # fmt: skip


def make_plan(
    adapter: SourceAdapter,
    tiles: Sequence[GridTile],
    dataset_dir: Path,
    rows: Mapping[str, ManifestRow],
    *,
    overwrite: bool,
    key: str | None = None,
    sizes: Mapping[str, int] | None = None,
) -> Plan:
    """Plan every tile (what decides "done" includes its inputs now), then keep as done only
    tiles whose row has this recipe's hash, the same inputs (paths and identity) and, for a
    chip, a file of the recorded size (or, when an old manifest has no size, that GDAL reads
    whole). A chip without a row is adopted when it is ours (``_adopt``).

    ``key`` (``replan.plan_key``): when it is the one the last finished run recorded, the
    rows' input lists stand for the source's plan, and are used if they leave nothing to do
    (``Plan.reused``); anything else is planned in full. ``sizes``: each chip's size by
    tile id when the caller listed the folder already (``DatasetLayout.chip_sizes``)."""
    layout = DatasetLayout(Path(dataset_dir))
    lean = LeanRows.of(rows)
    sizes = layout.chip_sizes() if sizes is None else sizes
    lists = None if overwrite else reused_lists(layout, key, tiles, lean)
    if lists is not None and _all_plainly_done(adapter, tiles, lean, sizes, lists):
        return Plan(len(tiles), (), (), (), reused=True)
    inputs_of = {ident: tuple(inputs) for ident, inputs in
                 (adapter.plan(tiles) if tiles else {}).items()}  # fmt: skip
    return _decide(adapter, tiles, layout, lean, sizes, inputs_of, overwrite=overwrite)


def _all_plainly_done(adapter: SourceAdapter, tiles: Sequence[GridTile], lean: LeanRows,
                      sizes: Mapping[str, int],
                      lists: Mapping[str, tuple[str, ...]]) -> bool:  # fmt: skip
    """Whether every tile is plainly done (``_plainly_done``) with the list its row names and
    that list's identity now: then the run has nothing to do, and needs no per-tile plan
    (what ``_decide`` would conclude, from the columns alone)."""
    done = _plainly_done(lean, adapter.recipe.recipe_hash, sizes)
    identity = _identity_by_list(adapter)
    position, refs = lean.position, lean.input_set
    with each_file_looked_at_once():  # lists share their files: each is looked at once
        for identifier in tile_ids(tiles):
            i = position[identifier]
            ref = refs[i]
            if not done(i, ref, identity(ref, lists[ref])):
                return False
    return True


def _decide(adapter: SourceAdapter, tiles: Sequence[GridTile], layout: DatasetLayout,
            lean: LeanRows, sizes: Mapping[str, int],
            inputs_of: Mapping[str, tuple[str, ...]], *, overwrite: bool) -> Plan:  # fmt: skip
    """The plan for ``tiles`` given each one's inputs (see ``make_plan``)."""
    recipe_hash = adapter.recipe.recipe_hash
    refs = Refs()
    input_ids, input_refs = _input_ids(adapter, tiles, inputs_of, refs)
    decided = _Decisions()
    plainly_done = _plainly_done(lean, recipe_hash, sizes) if not overwrite else None
    for tile in tiles:
        identifier = tile.identifier
        inputs = inputs_of.get(identifier, ())
        input_id, ref = input_ids[identifier], input_refs[identifier]
        i = lean.position.get(identifier)
        if plainly_done is not None and i is not None and plainly_done(i, ref, input_id):
            decided.skipped += 1
            continue
        row = lean.row(i) if i is not None else None
        if not overwrite and row is not None and row.recipe_hash == recipe_hash:
            size = sizes.get(identifier)
            if _is_done(row, ref, input_id, size, layout, decided):
                decided.skipped += 1
                continue
        elif not overwrite and row is None and identifier in sizes:
            kept = _adopt(layout.chip(identifier), identifier, recipe_hash, ref, input_id)
            if kept is not None:
                decided.adopted.append(kept)
                continue
        decided.todo.append((tile, inputs))

    groups: dict[Hashable, list[Item]] = {}
    no_source: list[ManifestRow] = []
    for tile, inputs in decided.todo:
        if not inputs:
            no_source.append(_no_source_row(tile, recipe_hash))
        else:
            groups.setdefault(adapter.batch_key(inputs), []).append((tile, inputs))
    grouped = tuple(tuple(group) for group in groups.values())
    return Plan(decided.skipped, tuple(decided.adopted), tuple(no_source), grouped, input_ids,
                input_refs, refs.lists, tuple(decided.refreshed), tuple(decided.damaged),
                decided.changed)  # fmt: skip
