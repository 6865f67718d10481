"""A rerun's shortcut past the source's plan: when nothing the plan depends on changed since
the last finished run, each tile's input list is the one its manifest row names.

Why: cron reruns a finished CONUS dataset every hour, and the source's plan (400k tile
polygons, an STR-tree, the lists) is most of what such a no-op rerun costs. What a plan
depends on is summed up in a key: this recipe's hash, the run's options, the selected tile
ids (a tile's geometry follows from its id) and the source's own ``plan_identity`` (e.g. the
raster source's expanded file list with sizes and times). A source that cannot say that
cheaply returns None and is always planned in full.

The key is written (``plan-key.json``) only at the end of a run that planned in full and
finished (every selected tile then has a row naming its planned list), and removed before a
full plan writes any row, so an interrupted run never leaves a key its rows do not match.
The shortcut is taken only when the key is equal, every selected tile has a row and every
row's list is recorded; and it only ever concludes "nothing to do": if any tile would be
made again (inputs' identity changed, chip missing or damaged, ...), the run plans in full,
exactly as without it. The inputs' identity (sizes, times) is still computed for every list,
so a touched input file still redoes exactly its tiles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from m3leo_tiles.core.atomic import write_text
from m3leo_tiles.dataset.inputsets import InputSets
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.grid.tile import tile_ids
from m3leo_tiles.sources.base import SourceAdapter

if TYPE_CHECKING:
    from m3leo_tiles.dataset.manifest import LeanRows
    from m3leo_tiles.grid.tile import GridTile

PLAN_KEY_NAME = "plan-key.json"
KEY_VERSION = 1


def plan_key(adapter: SourceAdapter, tiles: Sequence[GridTile]) -> str | None:
    """The digest of what ``adapter.plan(tiles)`` depends on, or None when the source cannot
    say (it is then planned in full every run)."""
    source = adapter.plan_identity()
    if source is None:
        return None
    options = adapter.options
    digest = hashlib.sha256()
    head = [
        KEY_VERSION,
        type(adapter).__qualname__,
        adapter.recipe.recipe_hash,
        source,
        options.year,
        list(options.sources),
        sorted(map(repr, options.extra.items())),
    ]
    digest.update(json.dumps(head, default=str).encode())  # fmt: skip
    digest.update("\n".join(tile_ids(tiles)).encode())
    return digest.hexdigest()[:32]


def _key_path(layout: DatasetLayout) -> Path:
    return layout.folder / PLAN_KEY_NAME


def recorded_key(layout: DatasetLayout) -> str | None:
    try:
        return str(json.loads(_key_path(layout).read_text(encoding="utf-8"))["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_key(layout: DatasetLayout) -> None:
    """Before a full plan writes rows: they may name lists the recorded key does not."""
    _key_path(layout).unlink(missing_ok=True)


def record_key(layout: DatasetLayout, key: str | None) -> None:
    """After a run that planned in full and finished: its rows name the key's plan."""
    if key is not None:
        write_text(_key_path(layout), json.dumps({"key": key}) + "\n")


def reused_lists(layout: DatasetLayout, key: str | None, tiles: Sequence[GridTile],
                 rows: LeanRows) -> Mapping[str, tuple[str, ...]] | None:  # fmt: skip
    """The recorded input lists by reference (each tile's is the one its row names), when
    the plan's key is the one recorded and every tile has a row whose list is recorded; else
    None (plan in full)."""
    if key is None or recorded_key(layout) != key:
        return None
    lists = {"": (), **InputSets(layout.input_sets).read()}
    position, refs = rows.position, rows.input_set
    for identifier in tile_ids(tiles):
        i = position.get(identifier)
        if i is None or refs[i] not in lists:
            return None
    return lists
