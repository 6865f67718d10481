"""The driver's plan (fetch/plan.py): batches that keep shared inputs together and are full
enough, and what a rerun counts as done, makes again (failed, damaged, other inputs) or adopts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from helpers.fake_runs import IDS, ORIGIN, TILES, recipe
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.manifest import ManifestRow
from m3leo_tiles.fetch.plan import batch_size_for, make_plan
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.sources.base import get_source


def test_batches_group_shared_inputs_and_are_bounded(tmp_path: Path) -> None:
    tiles = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(20) for j in range(9)]
    adapter = get_source("fake-synthetic")(recipe(group=50))
    plan = make_plan(adapter, tiles, tmp_path, {}, overwrite=False)
    assert plan.to_render == 180
    size = batch_size_for(180, 2)
    batches = plan.batches(2)
    assert all(len(batch) <= size for batch in batches)
    spans: dict[tuple, set[int]] = {}
    for index, batch in enumerate(batches):
        for _, inputs in batch:
            spans.setdefault(inputs, set()).add(index)
    for inputs, indexes in spans.items():  # a group is cut only where it exceeds a batch
        members = sum(1 for b in batches for _, i in b if i == inputs)
        assert len(indexes) <= -(-members // size) + 1
        assert max(indexes) - min(indexes) == len(indexes) - 1  # and stays contiguous
    assert batch_size_for(20_000, 2) == 256
    assert batch_size_for(5, 2) == 1
    assert batch_size_for(1_000, 4) == 32


def test_tiles_with_inputs_of_their_own_are_packed_into_full_batches(tmp_path: Path) -> None:
    tiles = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(10) for j in range(9)]
    adapter = get_source("fake-synthetic")(recipe(group=1))  # every tile its own input
    plan = make_plan(adapter, tiles, tmp_path, {}, overwrite=False)
    batches = plan.batches(2, min_size=20)
    assert [len(b) for b in batches] == [20] * 4 + [10]


def test_batch_key_keeps_tiles_with_overlapping_inputs_together(tmp_path: Path) -> None:
    """A source whose tiles' input lists differ but share a frame batches them by the frame."""

    class Frames(type(get_source("fake-synthetic")(recipe()))):
        def plan(self, tiles):
            # every tile: its frame (one of two) and a file of its own
            return {t.identifier: (f"frame-{k % 2}", f"own-{k}") for k, t in enumerate(tiles)}

        def batch_key(self, inputs):
            return inputs[0]

    tiles = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(4) for j in range(8)]
    plan = make_plan(Frames(recipe()), tiles, tmp_path, {}, overwrite=False)
    assert len(plan.groups) == 2
    for batch in plan.batches(1, min_size=16):
        assert len({inputs[0] for _, inputs in batch}) == 1  # one frame per task
        assert len(batch) == 16


# --- what a rerun counts as done ------------------------------------------------------------


def _row(index: int, status: TileStatus, the_recipe, **fields) -> ManifestRow:
    return ManifestRow(IDS[index], status, "", (f"fake://{index}",), 0.0,
                       the_recipe.recipe_hash, "2026-01-01T00:00:00Z", **fields)  # fmt: skip


def test_plan_decisions_done_failed_changed_damaged(tmp_path: Path) -> None:
    the_recipe = recipe(uncovered=[IDS[6]])
    adapter = get_source("fake-synthetic")(the_recipe)
    for index in (0, 1):
        (tmp_path / f"{IDS[index]}.tif").write_bytes(b"x" * 10)
    rows = {
        IDS[0]: _row(0, TileStatus.OK, the_recipe, bytes=10),  # whole: done
        IDS[1]: _row(1, TileStatus.OK, the_recipe, bytes=99),  # another size: damaged
        IDS[2]: _row(2, TileStatus.OK, the_recipe, bytes=10),  # its chip is gone: redone
        IDS[3]: _row(3, TileStatus.FAILED, the_recipe),  # failed: redone
        IDS[4]: _row(4, TileStatus.EMPTY, the_recipe),  # empty: done, no chip needed
        IDS[5]: replace(_row(5, TileStatus.EMPTY, the_recipe), inputs=("fake://other",)),
        IDS[7]: replace(_row(7, TileStatus.OK, the_recipe, bytes=10), recipe_hash="other"),
    }
    plan = make_plan(adapter, TILES[:8], tmp_path, rows, overwrite=False)
    todo = {tile.identifier for group in plan.groups for tile, _ in group}
    assert todo == {IDS[1], IDS[2], IDS[3], IDS[5], IDS[7]}
    assert plan.skipped == 2 and not plan.adopted
    assert plan.damaged == ((IDS[1], "10 bytes, recorded 99"),)
    assert plan.inputs_changed == 1
    assert [row.identifier for row in plan.no_source] == [IDS[6]]
    # rows without the inputs' identity get it recorded, nothing else changes
    assert {row.identifier for row in plan.refreshed} == {IDS[0], IDS[4]}
    assert all(row.input_id for row in plan.refreshed)
    everything = make_plan(adapter, TILES[:8], tmp_path, rows, overwrite=True)
    assert everything.skipped == 0 and everything.to_render == 7


def test_a_chip_without_a_row_is_adopted_only_when_it_is_ours(tmp_path: Path) -> None:
    adapter = get_source("fake-synthetic")(recipe())
    (tmp_path / f"{IDS[0]}.tif").write_bytes(b"not a GeoTIFF")  # unreadable: redone
    (tmp_path / f".{IDS[1]}.tif.123.abc.part").write_bytes(b"partial")  # never a chip
    plan = make_plan(adapter, TILES[:2], tmp_path, {}, overwrite=False)
    assert not plan.adopted and plan.to_render == 2
