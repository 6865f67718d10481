"""The chip engine's public API: turn the tiles of a grid into aligned chips, resumably.

The pieces of a run live in their own modules: ``planning`` (the driver decides what is done
and batches the rest), ``worker`` (a task renders a batch and writes its chips), ``cluster``
(our LocalCluster or an existing one, and the request budget); this module holds the run
itself and what users call.

Why it is shaped this way:

* The driver plans once (``adapter.plan``), decides what is already done from the manifest,
  and ships *batches* of tiles that share inputs to dask workers: one future per tile would
  make the scheduler the bottleneck and its memory grow with the grid.
* At most a few batches per worker thread are in flight; new ones are submitted as results
  come back, so the driver's and the scheduler's memory stay flat whatever the tile count.
* Workers write the chips themselves (atomically, via ``io.write_chip``) and return only small
  result rows; the driver alone appends them to the manifest, flushed after every batch, so
  a crash at any moment loses nothing that a rerun cannot recover.
* Nothing a single tile does can stop the run: per-tile errors, and whole batches lost to a
  dead worker, are recorded as ``failed`` with a reason and retried by the next run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3leo_tiles.core.atomic import NoFollowFileHandler
from m3leo_tiles.core.enums import Split, TileStatus
from m3leo_tiles.core.errors import RUN_STOPPERS, ConfigError, M3leoError, SystematicFailure
from m3leo_tiles.core.redact import RedactingFilter
from m3leo_tiles.core.signals import Terminated, sigterm_as_interrupt
from m3leo_tiles.dataset.lock import DatasetLock
from m3leo_tiles.dataset.manifest import (
    MANIFEST_NAME,
    ManifestRow,
    ManifestWriter,
    compact_manifest,
    now_iso,
    read_manifest,
)
from m3leo_tiles.fetch.cluster import (
    dask_client,
    quiet_dask_logs,
    refuse_in_starting_worker,
    request_budget,
)
from m3leo_tiles.fetch.plan import Plan, batch_size_for, make_plan
from m3leo_tiles.fetch.worker import Batch, Budget, reason_of, render_batch
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.sources.base import (
    FetchOptions,
    SourceAdapter,
    check_run_options,
    get_source,
)

if TYPE_CHECKING:
    from distributed import Client, Future

    from m3leo_tiles.grid.tile import GridTile

LOG_NAME = "fetch.log"
CACHE_DIR_NAME = ".cache"
IN_FLIGHT_PER_THREAD = 3  # keeps every worker busy while results travel, memory bounded
TILES_PER_REQUEST_THREAD = 4  # per batch, so that a batch's last round of requests is short

log = logging.getLogger("m3leo_tiles.fetch")


@dataclass(frozen=True)
class FetchRequest:
    """Everything one run needs besides the recipe and tiles: how and where to fetch.

    One object instead of a dozen keyword arguments handed through every layer; the CLI and
    the Python API both build it. Nothing here changes the recipe's hash.
    """

    aoi: str
    year: int | None = None
    out: Path = Path("data")
    workers: int | None = None
    scheduler: str | None = None
    overwrite: bool = False
    sources: tuple[str, ...] = ()
    cache: Path | None = None  # shared download cache; default OUT/.cache
    options: Mapping[str, Any] = field(default_factory=dict)  # the sources' declared options
    progress: bool = True
    notes: tuple[str, ...] = ()  # lines for fetch.log from choosing the tiles (grid file)
    warnings: tuple[str, ...] = ()  # and for the terminal too (ids not in the grid)

    def fetch_options(self, recipe: Recipe) -> FetchOptions:
        year = self.year if self.year is not None else recipe.default_year
        cache = self.cache if self.cache is not None else Path(self.out) / CACHE_DIR_NAME
        return FetchOptions(year=year, sources=tuple(self.sources), cache_dir=str(cache),
                            extra=dict(self.options))  # fmt: skip


@dataclass(frozen=True)
class FetchReport:
    """What one run did; ``exit_code`` is what the CLI returns."""

    dataset_dir: Path
    recipe: str
    selected: int
    ok: int = 0
    empty: int = 0
    no_source: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    nothing: str = ""  # why the run made no chip at all: not a normal success (exit 1)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.nothing else 0

    @property
    def processed(self) -> int:
        return self.ok + self.empty + self.no_source + self.failed

    def summary(self) -> str:
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.dataset_dir}: {self.ok} ok, {self.empty} empty, {self.no_source} no-source, "
            f"{self.failed} failed, {self.skipped} already done, of {self.selected} tiles "
            f"in {self.seconds:.1f} s ({rate:.0f} tiles/s)"
        )


def _failed_rows(batch: Batch, reason: str, recipe_hash: str) -> list[ManifestRow]:
    finished = now_iso()
    return [
        ManifestRow(tile.identifier, TileStatus.FAILED, reason, inputs, 0.0, recipe_hash, finished)
        for tile, inputs in batch.items
    ]


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


class _TileFilter(logging.Filter):
    """Per-tile failures go to fetch.log only; the console would drown in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "per_tile", False)


@contextlib.contextmanager
def _run_logging(dataset_dir: Path, console: bool) -> Iterator[None]:
    package = logging.getLogger("m3leo_tiles")
    file_handler = NoFollowFileHandler(dataset_dir / LOG_NAME, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_handler.setLevel(logging.INFO)
    console_handler = logging.StreamHandler(sys.stderr)
    console_handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console_handler.setLevel(logging.WARNING if console else logging.ERROR)
    console_handler.addFilter(_TileFilter())
    for handler in (file_handler, console_handler):  # no record carries a credential
        handler.addFilter(RedactingFilter())
    previous = package.level
    package.setLevel(logging.INFO)
    package.addHandler(file_handler)
    package.addHandler(console_handler)
    try:
        yield
    finally:
        package.removeHandler(file_handler)
        package.removeHandler(console_handler)
        package.setLevel(previous)
        file_handler.close()


def _make_dataset_dir(out: Path, aoi: str, dataset: str) -> Path:
    from m3leo_tiles.core.names import ALLOWED, name_problem

    for what, value in (("AOI name", aoi), ("dataset name", dataset)):
        problem = name_problem(value)  # grids and recipes check theirs; the API may not
        if problem is not None:
            raise ConfigError(f"{what} {value!r} {problem}; it names a folder ({ALLOWED})")
    dataset_dir = out / aoi / dataset
    problem = writable_problem(dataset_dir)
    if problem is not None:
        raise ConfigError(
            f"cannot write to output folder {dataset_dir} ({problem}); choose another with --out"
        )
    return dataset_dir


def writable_problem(folder: Path) -> str | None:
    """Why files cannot be made in ``folder`` (made if missing), or None: a probe file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # a fresh name, never a planted link
            pass
    except OSError as error:
        return str(error.strerror or error)
    return None


def _check_cache(adapter: SourceAdapter, plan: Plan, cache: Path) -> None:
    """Refuse, before any work, a download cache that cannot be written when the plan needs a
    file that is not in it yet; a read-only cache holding every needed file is fine."""
    if not plan.to_render or not adapter.downloads():
        return
    problem = writable_problem(cache)
    if problem is None:
        return
    if adapter.all_downloaded(inputs for group in plan.groups for _, inputs in group):
        log.info("download cache %s is read-only (%s); every file needed is in it", cache,
                 problem)  # fmt: skip
        return
    raise ConfigError(
        f"cannot write to the download cache {cache} ({problem}) and files must be downloaded "
        "into it; choose another with --cache"
    )


def fetch_tiles(
    recipe: Recipe, tiles: Sequence[GridTile], request: FetchRequest | None = None, **kwargs: Any
) -> FetchReport:
    """Render ``tiles`` (already selected) into ``out/<aoi>/<dataset>``; see ``fetch``.

    ``request`` says how; keyword arguments are its fields, for callers who prefer them
    (``fetch_tiles(recipe, tiles, aoi="demo", workers=2)``).
    """
    from m3leo_tiles.dataset.chipfile import remove_partials

    refuse_in_starting_worker()
    if request is None:
        kwargs["sources"] = tuple(kwargs.get("sources", ()))
        request = FetchRequest(**kwargs)
    elif kwargs:
        request = replace(request, **kwargs)
    started = time.perf_counter()
    options = request.fetch_options(recipe)
    adapter = get_source(recipe.source)(recipe, options)
    check_run_options(adapter)
    filled = adapter.check()
    if filled is not recipe:  # the source filled what the recipe left out: fetch with that
        recipe, adapter = filled, type(adapter)(filled, options)
    dataset_dir = _make_dataset_dir(Path(request.out), request.aoi,
                                    recipe.dataset_name(options.year))  # fmt: skip
    counts: Counter[TileStatus] = Counter()

    with (
        _run_logging(dataset_dir, console=request.progress),
        DatasetLock(dataset_dir),
        sigterm_as_interrupt(),
    ):
        log.info(
            "fetch %s (hash %s) into %s: %d tiles, workers=%s, scheduler=%s, overwrite=%s, "
            "sources=%s, cache=%s, options=%s",
            recipe.name,
            recipe.recipe_hash,
            dataset_dir,
            len(tiles),
            request.workers,
            request.scheduler,
            request.overwrite,
            list(request.sources),
            options.cache_dir,
            sorted(request.options),  # names only: values may hold endpoints with keys
        )
        for note in request.notes:
            log.info("%s", note)
        for warning in request.warnings:
            log.warning("%s", warning)
        removed = remove_partials(dataset_dir)
        if removed:
            log.info("removed %d partial files left by an interrupted run", removed)
        manifest_path = dataset_dir / MANIFEST_NAME
        previous = read_manifest(manifest_path)
        writer = ManifestWriter(manifest_path)
        interrupted = False
        skipped = 0
        nothing = ""
        try:
            plan = make_plan(adapter, tiles, dataset_dir, previous, overwrite=request.overwrite)
            _check_cache(adapter, plan, Path(options.cache_dir or "."))
            skipped = plan.skipped + len(plan.adopted)
            writer.write(plan.refreshed + plan.adopted + plan.no_source)
            _report_redone(plan)
            counts[TileStatus.NO_SOURCE] += len(plan.no_source)
            log.info(
                "plan: %d already done (%d adopted), %d no-source, %d to render",
                skipped,
                len(plan.adopted),
                len(plan.no_source),
                plan.to_render,
            )
            if adapter.plan_summary():
                log.info("plan: %s", adapter.plan_summary())
            if plan.to_render:  # a rerun with nothing left to do starts no cluster
                with quiet_dask_logs(), dask_client(request.workers, request.scheduler) as client:
                    try:
                        _run_batches(client, adapter, dataset_dir, plan, writer, counts,
                                     request)  # fmt: skip
                    except KeyboardInterrupt:
                        interrupted = True
                        raise
            nothing = _nothing_found(adapter, tiles, previous, plan, counts)
        except KeyboardInterrupt as error:
            done = sum(counts.values())
            what = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
            message = (
                f"{what}: {done} tiles finished in this run and are kept; "
                "rerun the same command to resume"
            )
            log.warning(message, extra={"per_tile": True})  # fetch.log; the CLI says it once
            raise type(error)(message) from None
        except M3leoError as error:  # a configuration error, early stop, full disk: the
            # reason goes to fetch.log too (the CLI prints it once), not only "0 ok"
            text = str(error)
            log.error("%s", text if text.startswith("stopped") else f"stopped: {text}",
                      extra={"per_tile": True})  # fmt: skip
            raise
        finally:
            writer.close()
            compact_manifest(manifest_path)
            report = FetchReport(
                dataset_dir=dataset_dir,
                recipe=recipe.name,
                selected=len(tiles),
                ok=counts[TileStatus.OK],
                empty=counts[TileStatus.EMPTY],
                no_source=counts[TileStatus.NO_SOURCE],
                failed=counts[TileStatus.FAILED],
                skipped=skipped,
                seconds=time.perf_counter() - started,
                interrupted=interrupted,
                nothing=nothing,
            )
            log.info("summary: %s", report.summary())
    return report


def _nothing_found(adapter: SourceAdapter, tiles: Sequence[GridTile],
                   previous: Mapping[str, ManifestRow], plan: Plan,
                   counts: Counter[TileStatus]) -> str:  # fmt: skip
    """Why a run left its dataset without one chip (every tile empty or without a source), or
    "" when it did not: wrong inputs (an empty mirror, a year without products) must not look
    like a finished dataset. Said on the terminal and in fetch.log, with the plan's counts."""
    if not tiles or counts[TileStatus.OK] or counts[TileStatus.FAILED] or plan.adopted:
        return ""
    recipe_hash = adapter.recipe.recipe_hash
    for tile in tiles:
        row = previous.get(tile.identifier)
        if row is not None and row.status is TileStatus.OK and row.recipe_hash == recipe_hash:
            return ""
    found = adapter.plan_summary()
    message = (
        f"nothing fetched: not one of the {len(tiles)} tiles has data (all empty or without "
        f"a source){'; ' + found if found else ''}; check --source, --year and the recipe"
    )
    log.warning("%s", message, extra={"per_tile": True})  # fetch.log; the CLI says it once
    return message


EARLY_STOP_TILES = 20  # the first this many rendered tiles all failing alike stop the run
_PATHLIKE = re.compile(r"\S*[/\\]\S*")
_NUMBERS = re.compile(r"\d+")


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


def _report_redone(plan: Plan) -> None:
    """Say why finished tiles are made again: a damaged chip, or inputs that changed."""
    if plan.damaged:
        first = ", ".join(f"{ident} ({why})" for ident, why in plan.damaged[:3])
        log.warning("%d finished chips are damaged and are made again: %s%s",
                    len(plan.damaged), first, ", ..." if len(plan.damaged) > 3 else "")  # fmt: skip
    if plan.inputs_changed:
        log.warning("%d finished tiles were made from other inputs (--source, files changed "
                    "since); they are made again", plan.inputs_changed)  # fmt: skip


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


def _run_batches(
    client: Client,
    adapter: SourceAdapter,
    dataset_dir: Path,
    plan: Plan,
    writer: ManifestWriter,
    counts: Counter[TileStatus],
    request: FetchRequest,
) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    recipe_hash = adapter.recipe.recipe_hash
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
    batches = iter(all_batches)
    bar = tqdm(
        total=plan.to_render + len(plan.no_source),
        initial=len(plan.no_source),
        desc=dataset_dir.name,
        unit="tile",
        file=sys.stderr,
        disable=not request.progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )

    early = EARLY_STOP_TILES if plan.to_render > EARLY_STOP_TILES else 0
    live = _LiveTiles(client, bar, EarlyStop(early) if budget is not None else None)
    live.recipe_hash = recipe_hash
    pending = live.pending
    topic = f"m3leo-run-{uuid.uuid4().hex[:12]}"
    client.subscribe_topic(topic, live.on_event)
    numbers = itertools.count()

    def submit() -> Future | None:
        items = next(batches, None)
        if items is None:
            return None
        ids = {tile.identifier: plan.input_ids.get(tile.identifier, "") for tile, _ in items}
        batch = Batch(str(dataset_dir), items, budget, ids, topic=topic, number=next(numbers),
                      ticks=budget is not None)  # fmt: skip
        future = client.submit(render_batch, shared_adapter, batch, pure=False, retries=0)
        with live.lock:
            pending[future.key] = (future, batch)
        return future

    first = [f for f in (submit() for _ in range(limit)) if f is not None]
    if not first:
        bar.close()
        return
    completed = as_completed(first, loop=client.loop)
    watch = EarlyStop(early)
    try:
        for future in completed:
            live.check(writer)
            with live.lock:
                _, batch = pending.pop(future.key)
            rows = _rows_of(future, batch, recipe_hash)
            future.release()
            writer.write(rows)
            try:
                watch.add(rows)
            except SystematicFailure:
                for row in rows:
                    counts[row.status] += 1
                with contextlib.suppress(Exception):
                    client.cancel([future for future, _ in pending.values()], force=True)
                raise
            for row in rows:
                counts[row.status] += 1
                if row.status is TileStatus.FAILED:
                    log.warning(
                        "failed %s: %s", row.identifier, row.reason, extra={"per_tile": True}
                    )
            live.batch_done(batch.number, len(rows))
            bar.set_postfix(
                ok=counts[TileStatus.OK],
                empty=counts[TileStatus.EMPTY],
                no_source=counts[TileStatus.NO_SOURCE],
                failed=counts[TileStatus.FAILED],
                refresh=False,
            )
            following = submit()
            if following is not None:
                completed.add(following)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            client.cancel([future for future, _ in pending.values()], force=True)
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


# --- the public entry point -----------------------------------------------------------------


def read_tile_ids(path: Path) -> list[str]:
    """A tiles file: one id per line; blank lines and ``#`` comments are ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read tiles file {path}: {error.strerror or error}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ConfigError(f"tiles file {path} lists no tile ids; put one id per line")
    return ids


def _resolve_recipe(recipe: str | Path | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    from m3leo_tiles.recipes import load_recipe

    return load_recipe(recipe)


def find_default_grid(grids_dir: Path) -> Path:
    """The only grid under ``grids_dir``; anything else is a question for the user."""
    from m3leo_tiles.grid import list_grids

    found = list_grids(grids_dir)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(
            f"no grid found under {grids_dir}/; make one with `m3leo-tiles grid --aoi NAME` "
            "or pass --aoi NAME or --grid FILE"
        )
    names = ", ".join(str(p) for p in found)
    raise ConfigError(f"several grids under {grids_dir}/ ({names}); choose one with --grid FILE")


def fetch(
    recipe: str | Path | Recipe,
    *,
    aoi: str | None = None,
    grid: Path | None = None,
    year: int | None = None,
    out: Path = Path("data"),
    workers: int | None = None,
    scheduler: str | None = None,
    split: Split | str | None = None,
    tiles: Path | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    sources: Sequence[str] = (),
    cache: Path | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
    grids_dir: Path = Path("grids"),
) -> FetchReport:
    """Make the chips of ``recipe`` for the tiles of a grid, resuming where a run stopped.

    The grid is ``grid`` (a grid file), or the grid of ``aoi`` (built if missing), or the only
    grid under ``grids_dir``. ``split``, ``tiles`` (a file of ids) and ``limit`` narrow it.
    Raises ``ConfigError`` for bad input before any work; per-tile problems never raise, they
    are counted in the report and recorded in the dataset's manifest. ``cache`` is the shared
    download cache (default ``out/.cache``); ``options`` are the values of options that
    sources declare (``m3leo-tiles fetch --help`` lists them), by name, e.g.
    ``{"ee-url": "http://127.0.0.1:8080"}``.
    """
    from m3leo_tiles.grid import ensure_grid, read_grid

    refuse_in_starting_worker()
    if aoi is not None and grid is not None:
        raise ConfigError("give either --aoi or --grid, not both")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    loaded = _resolve_recipe(recipe)
    if grid is not None:
        grid_path = Path(grid)
    elif aoi is not None:
        grid_path = ensure_grid(aoi, grids_dir)
    else:
        grid_path = find_default_grid(Path(grids_dir))
    the_grid = read_grid(grid_path)
    identifiers = read_tile_ids(tiles) if tiles is not None else None
    chosen_split = Split(split) if split is not None else None
    notes = [f"grid: {Path(grid_path).resolve()} ({len(the_grid)} tiles)"]
    warnings: list[str] = []
    cores = os.cpu_count() or 1
    if workers is not None and scheduler is None and workers > cores:
        warnings.append(
            f"--workers {workers} is more than the {cores} CPU cores here: chips are made "
            "no faster, and each worker takes memory; use at most --workers " + str(cores)
        )
    if identifiers is not None:
        known = {tile.identifier for tile in the_grid.tiles}
        unknown = [i for i in dict.fromkeys(identifiers) if i not in known]
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            warnings.append(
                f"{len(unknown)} of the {len(set(identifiers))} ids in {tiles} are not "
                f"in the grid {grid_path} and are left out: {shown}"
            )
    selected = the_grid.select(split=chosen_split, identifiers=identifiers, limit=limit)
    if not selected:
        if chosen_split is not None and not any(
            s == chosen_split for s in the_grid.splits.values()
        ):
            raise ConfigError(
                f"the grid {grid_path} has no {chosen_split} tiles (a small AOI cut into "
                "wide bands can get none); regrid with more bands, e.g. "
                f"`m3leo-tiles grid --aoi {the_grid.aoi} --bands 2000`, or choose another split"
            )
        raise ConfigError(
            f"no tiles selected from {grid_path} (split={chosen_split}, tiles file={tiles}); "
            "check the split name and the ids"
        )
    request = FetchRequest(
        aoi=the_grid.aoi,
        year=year,
        out=Path(out),
        workers=workers,
        scheduler=scheduler,
        overwrite=overwrite,
        sources=tuple(sources),
        cache=Path(cache) if cache is not None else None,
        options=dict(options or {}),
        progress=progress,
        notes=tuple(notes),
        warnings=tuple(warnings),
    )
    return fetch_tiles(loaded, selected, request)


__all__ = [
    "FetchReport",
    "FetchRequest",
    "batch_size_for",
    "fetch",
    "fetch_tiles",
    "make_plan",
    "read_tile_ids",
    "render_batch",
]
