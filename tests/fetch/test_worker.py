"""A batch on a worker (fetch/worker.py): one row per tile whatever the adapter yields or
raises, chips written whole with the tags a rerun checks, and nothing written for empty or
failed tiles."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from helpers.fake_runs import IDS, TILES, recipe
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import DiskFullError
from m3leo_tiles.dataset.chipfile import read_chip_tags
from m3leo_tiles.fetch.worker import Batch, reason_of, render_batch
from m3leo_tiles.sources.base import get_source


def _render(tmp_path: Path, count: int = 6, **params):
    adapter = get_source("fake-synthetic")(recipe(**params))
    items = tuple((tile, (f"fake://{n}",)) for n, tile in enumerate(TILES[:count]))
    ids = {tile.identifier: f"id-{n}" for n, tile in enumerate(TILES[:count])}
    return adapter, render_batch(adapter, Batch(str(tmp_path), items, input_ids=ids))


def test_one_row_per_tile_for_every_outcome(tmp_path: Path) -> None:
    _, rows = _render(tmp_path, empty=[IDS[1]], fail=[IDS[2]], crash=[IDS[3]])
    assert [row.identifier for row in rows] == IDS[:6]  # in the batch's order, once each
    statuses = {row.identifier: row.status for row in rows}
    assert statuses[IDS[1]] is TileStatus.EMPTY and rows[1].reason == "only nodata"
    assert statuses[IDS[2]] is TileStatus.FAILED
    assert rows[2].reason.startswith("SourceError: cannot read fake://2")
    assert rows[3].reason == "unexpected ZeroDivisionError: a bug in an adapter"
    written = sorted(p.stem for p in tmp_path.glob("*.tif"))
    assert written == sorted([IDS[0], *IDS[4:6]])  # no file for empty or failed tiles


def test_a_chip_row_records_its_bytes_and_the_chip_its_tags(tmp_path: Path) -> None:
    adapter, rows = _render(tmp_path, count=2)
    for n, row in enumerate(rows):
        payload = (tmp_path / f"{row.identifier}.tif").read_bytes()
        assert (row.bytes, row.crc32) == (len(payload), f"{zlib.crc32(payload):08x}")
        assert row.recipe_hash == adapter.recipe.recipe_hash and row.inputs == (f"fake://{n}",)
        tags = read_chip_tags(tmp_path / f"{row.identifier}.tif")
        assert (tags["tile_id"], tags["input_id"]) == (row.identifier, f"id-{n}")
        assert tags["recipe_hash"] == adapter.recipe.recipe_hash


def test_errors_that_stop_the_run_are_raised_not_recorded(tmp_path: Path, monkeypatch) -> None:
    import m3leo_tiles.dataset.chipfile as chipfile

    def full(path, payload):
        raise DiskFullError("no space left on the device")

    monkeypatch.setattr(chipfile, "write_bytes_atomically", full)
    with pytest.raises(DiskFullError):
        _render(tmp_path, count=2)


def test_reason_of_is_the_type_and_the_first_line() -> None:
    assert reason_of(ValueError("bad value\nand a page of detail")) == "ValueError: bad value"
    assert reason_of(RuntimeError("")) == "RuntimeError: no message"
