"""The driver's plan for a run: what is already done, what has no source, and the batches.

Decided once, before any worker starts, from the manifest and the files on disk (a chip
written just before a driver died is adopted if it is ours), then ``adapter.plan`` for the
tiles left. Tiles whose ``batch_key`` is equal are grouped, so one task reads their shared
inputs once; groups are cut into batches sized to keep every thread busy.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from m3leo_tiles.enums import TileStatus
from m3leo_tiles.manifest import ManifestRow, now_iso
from m3leo_tiles.sources.base import SourceAdapter

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import GridTile

MIN_BATCH, MAX_BATCH = 1, 256
BATCHES_PER_THREAD = 8  # enough batches for load balancing, few enough to amortise overhead

Item = tuple["GridTile", tuple[str, ...]]


@dataclass(frozen=True)
class Plan:
    """The driver's decision for this run: what is done, and tiles grouped by shared inputs."""

    skipped: int
    adopted: tuple[ManifestRow, ...]
    no_source: tuple[ManifestRow, ...]
    groups: tuple[tuple[Item, ...], ...]

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


def _is_done(row: ManifestRow | None, has_file: bool, recipe_hash: str) -> bool:
    if row is None or row.recipe_hash != recipe_hash:
        return False
    if row.status is TileStatus.OK:
        return has_file
    return row.status.is_done


def _adopt(path: Path, identifier: str, recipe_hash: str) -> ManifestRow | None:
    """A chip written by a worker whose driver died before recording it: keep it if it is ours."""
    from m3leo_tiles.io import read_chip_tags

    try:
        tags = read_chip_tags(path)
    except Exception:  # unreadable: not whole, redo it
        return None
    if tags.get("recipe_hash") != recipe_hash:
        return None
    inputs = tuple(i for i in str(tags.get("inputs", "")).split(";") if i)
    return ManifestRow(identifier, TileStatus.OK, "adopted", inputs, 0.0, recipe_hash, now_iso())


def make_plan(
    adapter: SourceAdapter,
    tiles: Sequence[GridTile],
    dataset_dir: Path,
    rows: Mapping[str, ManifestRow],
    *,
    overwrite: bool,
) -> Plan:
    recipe_hash = adapter.recipe.recipe_hash
    present = {entry.name for entry in os.scandir(dataset_dir) if entry.name.endswith(".tif")}
    todo: list[GridTile] = []
    adopted: list[ManifestRow] = []
    skipped = 0
    for tile in tiles:
        identifier = tile.identifier
        has_file = f"{identifier}.tif" in present
        row = rows.get(identifier)
        if not overwrite:
            if _is_done(row, has_file, recipe_hash):
                skipped += 1
                continue
            if row is None and has_file:
                kept = _adopt(dataset_dir / f"{identifier}.tif", identifier, recipe_hash)
                if kept is not None:
                    adopted.append(kept)
                    continue
        todo.append(tile)

    inputs_of = adapter.plan(todo) if todo else {}
    groups: dict[Hashable, list[Item]] = {}
    no_source: list[ManifestRow] = []
    for tile in todo:
        inputs = tuple(inputs_of.get(tile.identifier, ()))
        if not inputs:
            no_source.append(
                ManifestRow(
                    tile.identifier,
                    TileStatus.NO_SOURCE,
                    "no input covers this tile",
                    (),
                    0.0,
                    recipe_hash,
                    now_iso(),
                )
            )
        else:
            groups.setdefault(adapter.batch_key(inputs), []).append((tile, inputs))
    grouped = tuple(tuple(group) for group in groups.values())
    return Plan(skipped, tuple(adopted), tuple(no_source), grouped)
