"""The worker's side of a run: render one batch of tiles, write the chips, return small rows.

Why it is shaped this way:

* The adapter arrives once per worker (the driver scatters it) and is set up once per
  process (``setup_worker``), whatever the number of batches; a client that holds
  credentials is initialised there, not per tile.
* ``render_many`` is the only way chips are made: the adapter retries under its own policy and,
  when it is I/O-bound, spreads the batch over threads, each request holding one slot of the
  run's cluster-wide budget (a ``distributed.Semaphore`` created once per process here).
* Whatever the adapter yields, every tile of the batch gets exactly one row: a tile it skipped
  is failed with a reason, a second outcome for a tile is ignored (and logged).
* Chips are written here (atomically), and only rows travel back: never arrays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3leo_tiles.core import events
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import RUN_STOPPERS, EmptyTileError, SourceError, first_line
from m3leo_tiles.core.redact import redact
from m3leo_tiles.dataset.layout import chip_name
from m3leo_tiles.dataset.manifest import ManifestRow, now_iso
from m3leo_tiles.sources.base import Chip, RenderContext, SourceAdapter

if TYPE_CHECKING:
    from m3leo_tiles.dataset.chipfile import Written
    from m3leo_tiles.grid.tile import GridTile

Item = tuple["GridTile", tuple[str, ...]]
log = logging.getLogger("m3leo_tiles.fetch")


@dataclass(frozen=True)
class Budget:
    """The run's cluster-wide request budget: a semaphore's name and size. A worker may use
    as many threads for one batch as the whole budget: the semaphore bounds the total."""

    name: str
    limit: int


@dataclass(frozen=True)
class Batch:
    """Tiles that share inputs, rendered by one task (the adapter travels separately)."""

    dataset_dir: str
    items: tuple[Item, ...]
    budget: Budget | None = None
    input_ids: Mapping[str, str] = field(default_factory=dict)  # tile id -> inputs' identity
    input_refs: Mapping[str, str] = field(default_factory=dict)  # tile id -> its list's reference
    topic: str = ""  # the run's event topic (see ``events``): warnings, and tiles if ``ticks``
    number: int = 0  # this batch's number in the run, named in its per-tile events
    ticks: bool = False  # say each finished tile (I/O-bound sources: slow batches)


_SETUP_DONE: set[tuple[str, str]] = set()
_SETUP_LOCK = threading.Lock()
_SEMAPHORES: dict[str, Any] = {}


def ensure_setup(adapter: SourceAdapter) -> None:
    """``adapter.setup_worker()`` once per process and adapter kind (and recipe)."""
    key = (type(adapter).__qualname__, adapter.recipe.recipe_hash)
    if key in _SETUP_DONE:
        return
    with _SETUP_LOCK:
        if key not in _SETUP_DONE:
            adapter.setup_worker()
            _SETUP_DONE.add(key)


def _slot_factory(budget: Budget | None) -> Any:
    """A callable giving a context manager that holds one slot of the budget, or None."""
    if budget is None:
        return None
    semaphore = _SEMAPHORES.get(budget.name)
    if semaphore is None:
        from distributed import Semaphore

        semaphore = _SEMAPHORES[budget.name] = Semaphore(max_leases=budget.limit,
                                                         name=budget.name)  # fmt: skip
    return lambda: semaphore


def reason_of(error: BaseException) -> str:
    """``Type: first line of the message``: what a manifest row and a log line show."""
    return f"{type(error).__name__}: {first_line(error) if str(error).strip() else 'no message'}"


def _outcomes(adapter: SourceAdapter, batch: Batch, context: RenderContext
              ) -> Iterator[tuple[GridTile, Chip | Exception]]:  # fmt: skip
    """The adapter's outcomes, then a failure for each tile it did not yield."""
    expected = {tile.identifier for tile, _ in batch.items}
    seen: set[str] = set()
    try:
        for tile, outcome in adapter.render_many(batch.items, context):
            if tile.identifier not in expected or tile.identifier in seen:
                log.warning("source %s yielded an extra outcome for %s; ignored",
                            adapter.name, tile.identifier)  # fmt: skip
                continue
            seen.add(tile.identifier)
            yield tile, outcome
    except RUN_STOPPERS:
        raise
    except Exception as error:  # the adapter's own loop broke: the rest of the batch fails
        failure: Exception = SourceError(f"batch stopped: {reason_of(error)}")
    else:
        failure = SourceError(f"source {adapter.name} gave no chip for this tile")
    for tile, _ in batch.items:
        if tile.identifier not in seen:
            yield tile, failure


FLUSH_THREADS = 4  # chips of one batch being fsynced at once (see render_batch)


def render_batch(adapter: SourceAdapter, batch: Batch) -> list[ManifestRow]:
    """Runs on a worker: render, test for emptiness, write; returns rows, never arrays.

    A full disk or an unreachable host is raised, not recorded: every further chip would
    fail the same way. With ``batch.ticks`` each finished tile is told to the driver at once
    (its progress bar, its early stop), not only when the whole batch is done.

    Chips are encoded here and handed to a few writer threads: a durable write waits ~10 ms on
    the disk for its fsync, and fsyncs in flight together share the file system's journal
    commits, so the writes overlap with rendering the next tiles (measured: 0.85 instead of
    0.78 ms a chip with four writers, against 10.7 with one; bench/bench_fsync.py). Rows are
    returned only once every chip of the batch is on the disk.
    """
    import rasterio

    from m3leo_tiles.dataset.chipfile import chip_is_empty, encode_chip, write_bytes_atomically

    ensure_setup(adapter)
    events.set_topic(batch.topic)
    recipe = adapter.recipe
    recipe_hash = recipe.recipe_hash
    folder = Path(batch.dataset_dir)
    inputs_of = {tile.identifier: inputs for tile, inputs in batch.items}
    threads = batch.budget.limit if batch.budget else 1
    context = RenderContext(threads=threads, slot=_slot_factory(batch.budget))
    rows: list[ManifestRow] = []
    writes: dict[int, Future[Written]] = {}
    started = time.perf_counter()
    with rasterio.Env(), ThreadPoolExecutor(FLUSH_THREADS, "m3leo-write") as writer:
        for tile, outcome in _outcomes(adapter, batch, context):
            inputs = inputs_of[tile.identifier]
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                if chip_is_empty(outcome, recipe.nodata):
                    status, reason = TileStatus.EMPTY, "only nodata"
                else:
                    grid = tile.pixel_grid(recipe.resolution)
                    tags = {"tile_id": tile.identifier, "inputs": ";".join(inputs),
                            **outcome.metadata,
                            "input_id": batch.input_ids.get(tile.identifier, "")}  # fmt: skip
                    payload = encode_chip(outcome, grid, recipe, tags)
                    writes[len(rows)] = writer.submit(
                        write_bytes_atomically, folder / chip_name(tile.identifier), payload
                    )
                    status, reason = TileStatus.OK, ""
            except RUN_STOPPERS:
                raise
            except EmptyTileError as error:
                status, reason = TileStatus.EMPTY, redact(str(error).strip()) or "no data"
            except SourceError as error:
                status, reason = TileStatus.FAILED, reason_of(error)
            except Exception as error:  # a bug or an unwrapped library error: still one tile
                status, reason = TileStatus.FAILED, f"unexpected {reason_of(error)}"
            finished = time.perf_counter()
            ref = batch.input_refs.get(tile.identifier, "")
            rows.append(
                ManifestRow(
                    identifier=tile.identifier,
                    status=status,
                    reason=reason,
                    inputs=() if ref else inputs,  # the list goes back by reference only
                    seconds=finished - started,
                    recipe_hash=recipe_hash,
                    finished_at=now_iso(),
                    input_id=batch.input_ids.get(tile.identifier, ""),
                    input_set=ref,
                )
            )
            started = finished
            if batch.ticks:
                events.publish({"kind": "tile", "batch": batch.number, "id": tile.identifier,
                                "status": status.value, "reason": reason})  # fmt: skip
        for index, future in writes.items():
            rows[index] = _written_row(rows[index], future)
    return rows


def _written_row(row: ManifestRow, future: Future[Written]) -> ManifestRow:
    """The row of a chip once its write finished: its size and CRC, or why it failed."""
    try:
        written = future.result()
    except RUN_STOPPERS:
        raise
    except Exception as error:
        return replace(row, status=TileStatus.FAILED, reason=f"unexpected {reason_of(error)}")
    return replace(row, bytes=written.size, crc32=written.crc32)
