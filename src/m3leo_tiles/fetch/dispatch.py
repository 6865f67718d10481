"""The driver's loop: batches out to dask workers, result rows back into the manifest.

* At most a few batches per worker thread are in flight; new ones are submitted as results
  come back, so the driver's and the scheduler's memory stay flat whatever the tile count.
* Workers write the chips and return small rows; the driver alone appends them to the
  manifest, flushed after every batch, so a crash loses nothing a rerun cannot recover.
* A whole batch lost to a dead worker or a bug becomes ``failed`` rows, never a crash; the
  first tiles of a run all failing alike stop it (``EarlyStop``): the cause is the run's.
* What workers say while their batches run (warnings, and, for I/O-bound sources, each tile
  finished) arrives as events (``_LiveTiles``), so a slow batch still moves the progress bar.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import RUN_STOPPERS, SystematicFailure
from m3leo_tiles.dataset.manifest import ManifestRow, ManifestWriter, now_iso
from m3leo_tiles.fetch.cluster import request_budget
from m3leo_tiles.fetch.plan import Item, Plan
from m3leo_tiles.fetch.worker import Batch, Budget, reason_of, render_batch
from m3leo_tiles.sources.base import SourceAdapter

if TYPE_CHECKING:
    from distributed import Client, Future

IN_FLIGHT_PER_THREAD = 3  # keeps every worker busy while results travel, memory bounded
TILES_PER_REQUEST_THREAD = 4  # per batch, so that a batch's last round of requests is short
EARLY_STOP_TILES = 20  # the first this many rendered tiles all failing alike stop the run
_PATHLIKE = re.compile(r"\S*[/\\]\S*")
_NUMBERS = re.compile(r"\d+")

log = logging.getLogger("m3leo_tiles.fetch")


def failure_kind(reason: str) -> str:
    """A failure reason without what differs from tile to tile (paths, URLs, numbers)."""
    return _NUMBERS.sub("#", _PATHLIKE.sub("<path>", reason))


class EarlyStop:
    """Watches the first tiles a run renders: when all of the first ``limit`` failed for the
    same kind of reason, the cause is the run's (a year the product lacks, a recipe that does
    not fit its files, no network), and going on would only fail the whole grid slowly."""

    def __init__(self, limit: int = EARLY_STOP_TILES) -> None:
        self.limit = limit
        self.seen = 0
        self.kinds: set[str] = set()
        self.first = ""
        self.armed = limit > 0

    def add(self, rows: Sequence[ManifestRow]) -> None:
        for row in rows:
            if not self.armed:
                return
            if row.status is not TileStatus.FAILED:
                self.armed = False
                return
            self.seen += 1
            self.kinds.add(failure_kind(row.reason))
            self.first = self.first or row.reason
            if len(self.kinds) > 1:
                self.armed = False
                return
            if self.seen >= self.limit:
                raise SystematicFailure(
                    f"stopped: the first {self.seen} tiles all failed the same way "
                    f"({self.first}); fix that and rerun (details in fetch.log)"
                )


def _failed_rows(batch: Batch, reason: str, recipe_hash: str) -> list[ManifestRow]:
    finished = now_iso()
    rows = []
    for tile, inputs in batch.items:
        ref = batch.input_refs.get(tile.identifier, "")
        rows.append(ManifestRow(tile.identifier, TileStatus.FAILED, reason, () if ref else inputs,
                                0.0, recipe_hash, finished, input_set=ref))  # fmt: skip
    return rows


def _rows_of(future: Future, batch: Batch, recipe_hash: str) -> list[ManifestRow]:
    """A batch's rows; a whole batch lost (dead worker, bug) becomes failed rows, not a crash."""
    if future.status == "finished":
        try:
            return list(future.result())
        except Exception as error:
            return _failed_rows(batch, f"task lost: {reason_of(error)}", recipe_hash)
    if future.status == "error":
        error = future.exception()
        if isinstance(error, RUN_STOPPERS):  # fatal: every further chip would fail alike
            raise error
        return _failed_rows(batch, f"task failed: {reason_of(error)}", recipe_hash)
    return _failed_rows(batch, f"task {future.status}", recipe_hash)


def _budget(client: Client, adapter: SourceAdapter) -> Budget | None:
    """The run's request budget, when the source is I/O-bound: one semaphore for the cluster.

    Each worker may use as many threads as the whole budget: the semaphore, not a static
    share, bounds the total, so a worker finishing a batch leaves its slots to the others.
    """
    limit = adapter.concurrency()
    if not limit:
        return None
    name = request_budget(client, limit, f"m3leo-{adapter.name}-{uuid.uuid4().hex[:8]}")
    log.info("request budget: %d in flight across %d workers", limit, len(client.nthreads()))
    return Budget(name=str(name), limit=int(limit))


class _LiveTiles:
    """What workers say while their batches run (``events``): warnings are logged at once
    (terminal and fetch.log, each text once), and, for I/O-bound sources whose batches are
    slow, each finished tile moves the progress bar and feeds the early stop, so that a run
    of one batch neither sits at 0 % nor fails its every tile before stopping.

    The handler runs on the client's event loop, the batches' rows arrive on the driver's
    thread: the bar is moved under a lock, and a batch's late tile events are ignored.
    """

    def __init__(self, client: Client, bar: Any, watch: EarlyStop | None) -> None:
        self.client = client
        self.bar = bar
        self.watch = watch
        self.lock = threading.Lock()
        self.ticked: Counter[int] = Counter()
        self.done: set[int] = set()
        self.said: set[str] = set()
        self.pending: dict[str, tuple[Future, Batch]] = {}
        self.stopped: SystematicFailure | None = None
        self.failed: list[ManifestRow] = []  # failures told by events, kept for the early stop
        self.recipe_hash = ""

    def on_event(self, event: tuple[float, Any]) -> Any:
        message = event[1] if isinstance(event, tuple | list) and len(event) == 2 else event
        if not isinstance(message, dict):
            return None
        if message.get("kind") == "warning":
            text = str(message.get("text", ""))
            if text not in self.said:
                self.said.add(text)
                with self.lock:  # on a line of its own, not after the bar
                    self.bar.clear()
                    log.warning("%s", text)
                    self.bar.refresh()
            return None
        if message.get("kind") != "tile":
            return None
        with self.lock:
            number = int(message.get("batch", -1))
            if number in self.done:
                return None
            self.ticked[number] += 1
            self.bar.update(1)
        return self._watch(message)

    def _watch(self, message: dict[str, Any]) -> Any:
        """Feed the early stop; when it trips, cancel the batches (the driver's loop wakes
        on the cancelled futures and raises)."""
        if self.watch is None or self.stopped is not None:
            return None
        row = ManifestRow(str(message.get("id", "")), TileStatus(message.get("status", "ok")),
                          str(message.get("reason", "")))  # fmt: skip
        if row.status is TileStatus.FAILED and self.watch.armed:
            self.failed.append(row)
        try:
            self.watch.add([row])
        except SystematicFailure as error:
            self.stopped = error
            with self.lock:
                futures = [future for future, _ in self.pending.values()]
            return self.client._cancel(futures, force=True)  # a coroutine: the loop awaits it
        return None

    def batch_done(self, number: int, count: int) -> None:
        with self.lock:
            self.done.add(number)
            self.bar.update(max(0, count - self.ticked.pop(number, 0)))

    def check(self, writer: ManifestWriter) -> None:
        """Stop the run if the tiles' events tripped the early stop: their failures are
        recorded (their batches, cancelled, send no rows)."""
        if self.stopped is None:
            return
        writer.write([replace(row, recipe_hash=self.recipe_hash, finished_at=now_iso())
                      for row in self.failed])  # fmt: skip
        raise self.stopped

    def cancel_pending(self) -> None:
        """Cancel every batch still in flight (the run stops); errors are beside the point."""
        with contextlib.suppress(Exception):
            self.client.cancel([future for future, _ in self.pending.values()], force=True)


@dataclass
class _Feed:
    """Hands the next batch to the cluster: the adapter, scattered once, and each batch's
    tiles with their inputs' identity, budget and event topic."""

    client: Client
    adapter: Any  # the scattered adapter's future: batches refer to it
    dataset_dir: Path
    plan: Plan
    budget: Budget | None
    live: _LiveTiles
    topic: str
    batches: Iterator[tuple[Item, ...]]
    numbers: Iterator[int] = field(default_factory=itertools.count)

    def submit(self) -> Future | None:
        items = next(self.batches, None)
        if items is None:
            return None
        plan = self.plan
        ids = {tile.identifier: plan.input_ids.get(tile.identifier, "") for tile, _ in items}
        refs = {tile.identifier: plan.input_refs.get(tile.identifier, "") for tile, _ in items}
        batch = Batch(str(self.dataset_dir), items, self.budget, ids, refs, topic=self.topic,
                      number=next(self.numbers), ticks=self.budget is not None)  # fmt: skip
        future = self.client.submit(render_batch, self.adapter, batch, pure=False, retries=0)
        with self.live.lock:
            self.live.pending[future.key] = (future, batch)
        return future


def _progress_bar(plan: Plan, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=plan.to_render + len(plan.no_source),
        initial=len(plan.no_source),
        desc=desc,
        unit="tile",
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )


def _count(rows: Sequence[ManifestRow], counts: Counter[TileStatus], say: bool) -> None:
    for row in rows:
        counts[row.status] += 1
        if say and row.status is TileStatus.FAILED:
            log.warning("failed %s: %s", row.identifier, row.reason, extra={"per_tile": True})


def _collect(completed: Any, feed: _Feed, writer: ManifestWriter, counts: Counter[TileStatus],
             watch: EarlyStop) -> None:  # fmt: skip
    """Record each batch as it finishes and submit the next one in its place."""
    live = feed.live
    for future in completed:
        live.check(writer)
        with live.lock:
            _, batch = live.pending.pop(future.key)
        rows = _rows_of(future, batch, live.recipe_hash)
        future.release()
        writer.write(rows)
        try:
            watch.add(rows)
        except SystematicFailure:
            _count(rows, counts, say=False)
            live.cancel_pending()
            raise
        _count(rows, counts, say=True)
        live.batch_done(batch.number, len(rows))
        live.bar.set_postfix(
            ok=counts[TileStatus.OK],
            empty=counts[TileStatus.EMPTY],
            no_source=counts[TileStatus.NO_SOURCE],
            failed=counts[TileStatus.FAILED],
            refresh=False,
        )
        following = feed.submit()
        if following is not None:
            completed.add(following)


def run_batches(
    client: Client,
    adapter: SourceAdapter,
    dataset_dir: Path,
    plan: Plan,
    writer: ManifestWriter,
    counts: Counter[TileStatus],
    progress: bool,
) -> None:
    """Render the plan's tiles on ``client``, appending their rows to ``writer`` and counting
    them in ``counts``; raises ``SystematicFailure`` (early stop) or ``KeyboardInterrupt``
    after cancelling what is in flight."""
    from distributed import as_completed

    threads = max(1, sum(client.nthreads().values()))
    limit = max(2, IN_FLIGHT_PER_THREAD * threads)
    budget = _budget(client, adapter)
    # An I/O-bound source overlaps the requests of one batch: give each worker's share of
    # the budget a few tiles per request thread.
    workers = max(1, len(client.nthreads()))
    min_size = -(-budget.limit // workers) * TILES_PER_REQUEST_THREAD if budget else 1
    all_batches = plan.batches(threads, min_size=min_size)
    log.info(
        "rendering %d tiles in %d batches on %d threads", plan.to_render, len(all_batches), threads
    )
    # The adapter goes to every worker once; batches refer to it. A worker that joins later
    # fetches it from a peer.
    [shared_adapter] = client.scatter([adapter], broadcast=True, hash=False)
    bar = _progress_bar(plan, dataset_dir.name, progress)
    early = EARLY_STOP_TILES if plan.to_render > EARLY_STOP_TILES else 0
    live = _LiveTiles(client, bar, EarlyStop(early) if budget is not None else None)
    live.recipe_hash = adapter.recipe.recipe_hash
    topic = f"m3leo-run-{uuid.uuid4().hex[:12]}"
    client.subscribe_topic(topic, live.on_event)
    feed = _Feed(client, shared_adapter, dataset_dir, plan, budget, live, topic,
                 iter(all_batches))  # fmt: skip
    first = [f for f in (feed.submit() for _ in range(limit)) if f is not None]
    if not first:
        bar.close()
        return
    try:
        _collect(as_completed(first, loop=client.loop), feed, writer, counts, EarlyStop(early))
    except KeyboardInterrupt:
        live.cancel_pending()
        raise
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
        if budget is not None:
            with contextlib.suppress(Exception):
                client.sync(_close_semaphore, client, budget.name)


async def _close_semaphore(client: Client, name: str) -> None:
    """Forget the run's semaphore on the scheduler (an existing cluster outlives the run)."""
    await client.scheduler.semaphore_close(name=name)
