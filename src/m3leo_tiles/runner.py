"""The chip engine: turn the tiles of a grid into aligned chips of one recipe, resumably.

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
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3leo_tiles.enums import Split, TileStatus
from m3leo_tiles.errors import ConfigError, DiskFullError, SourceError, TransientSourceError
from m3leo_tiles.locking import DatasetLock
from m3leo_tiles.manifest import (
    MANIFEST_NAME,
    ManifestRow,
    ManifestWriter,
    compact_manifest,
    now_iso,
    read_manifest,
)
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.sources.base import FetchOptions, SourceAdapter, get_source

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

    from m3leo_tiles.grid.tile import GridTile

LOG_NAME = "fetch.log"
MIN_BATCH, MAX_BATCH = 1, 256
BATCHES_PER_THREAD = 8  # enough batches for load balancing, few enough to amortise overhead
IN_FLIGHT_PER_THREAD = 3  # keeps every worker busy while results travel, memory bounded
TRANSIENT_ATTEMPTS = 3
TRANSIENT_BACKOFF_S = 0.5
CLIENT_TIMEOUT_S = 20
GDAL_CACHE_MB = 256  # per local worker process

log = logging.getLogger("m3leo_tiles.fetch")


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

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

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


# --- worker side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Tiles that share inputs, rendered by one task: what travels to a worker."""

    adapter: SourceAdapter
    dataset_dir: str
    items: tuple[tuple[GridTile, tuple[str, ...]], ...]


def _render_with_retries(adapter: SourceAdapter, tile: GridTile, inputs: tuple[str, ...]) -> Any:
    """Transient errors (quota, timeouts) are retried here, near the data, with backoff."""
    for attempt in range(TRANSIENT_ATTEMPTS):
        try:
            return adapter.render(tile, inputs)
        except TransientSourceError:
            if attempt == TRANSIENT_ATTEMPTS - 1:
                raise
            time.sleep(TRANSIENT_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def _reason(error: BaseException) -> str:
    text = str(error).strip() or "no message"
    return f"{type(error).__name__}: {text}"


def render_batch(batch: Batch) -> list[ManifestRow]:
    """Runs on a worker: render, test for emptiness, write; returns rows, never arrays.

    The adapter renders the whole batch (``render_many``), so a source can share one read
    or warp between neighbouring tiles; transient errors are retried per tile. A full disk
    is raised, not recorded: every further chip would fail the same way.
    """
    import rasterio

    from m3leo_tiles.io import chip_is_empty, write_chip

    adapter = batch.adapter
    recipe = adapter.recipe
    recipe_hash = recipe.recipe_hash
    folder = Path(batch.dataset_dir)
    inputs_of = {tile.identifier: inputs for tile, inputs in batch.items}
    rows = []
    started = time.perf_counter()
    with rasterio.Env():  # one GDAL environment for the batch, not one per call
        for tile, outcome in adapter.render_many(batch.items):
            inputs = inputs_of[tile.identifier]
            try:
                if isinstance(outcome, TransientSourceError):
                    outcome = _render_with_retries(adapter, tile, inputs)
                if isinstance(outcome, Exception):
                    raise outcome
                if chip_is_empty(outcome, recipe.nodata):
                    status, reason = TileStatus.EMPTY, "only nodata"
                else:
                    grid = tile.pixel_grid(recipe.resolution)
                    tags = {"tile_id": tile.identifier, "inputs": ";".join(inputs)}
                    write_chip(folder / f"{tile.identifier}.tif", outcome, grid, recipe, tags)
                    status, reason = TileStatus.OK, ""
            except DiskFullError:
                raise
            except SourceError as error:
                status, reason = TileStatus.FAILED, _reason(error)
            except Exception as error:  # a bug or an unwrapped library error: still one tile
                status, reason = TileStatus.FAILED, f"unexpected {_reason(error)}"
            finished = time.perf_counter()
            rows.append(
                ManifestRow(
                    identifier=tile.identifier,
                    status=status,
                    reason=reason,
                    inputs=inputs,
                    seconds=finished - started,
                    recipe_hash=recipe_hash,
                    finished_at=now_iso(),
                )
            )
            started = finished
    return rows


# --- driver side: what to do ----------------------------------------------------------------


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

    def batches(self, threads: int) -> list[tuple[Item, ...]]:
        """Chunks of the groups sized for ``threads``; a batch never mixes input sets."""
        size = batch_size_for(self.to_render, threads)
        return [
            group[start : start + size]
            for group in self.groups
            for start in range(0, len(group), size)
        ]


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


def batch_size_for(count: int, threads: int) -> int:
    """Big batches amortise task overhead; enough of them keep every thread busy."""
    wanted = -(-count // max(1, threads * BATCHES_PER_THREAD))
    return max(MIN_BATCH, min(MAX_BATCH, wanted))


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
    groups: dict[tuple[str, ...], list[GridTile]] = {}
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
            groups.setdefault(inputs, []).append(tile)
    grouped = tuple(tuple((tile, inputs) for tile in group) for inputs, group in groups.items())
    return Plan(skipped, tuple(adopted), tuple(no_source), grouped)


# --- driver side: running -------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_dask_logs(level: int = logging.ERROR) -> Iterator[None]:
    """dask logs every worker start, loss and close at INFO; users need only its errors."""
    names = [
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in {"distributed", "dask", "tornado"}
    ] + ["distributed"]
    previous = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, old_level in previous.items():
            logging.getLogger(name).setLevel(old_level)


@contextlib.contextmanager
def _dask_client(workers: int | None, scheduler: str | None) -> Iterator[Client]:
    """A client on an existing cluster (never shut down by us) or on our own LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    cluster: LocalCluster | None = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=CLIENT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise ConfigError(
                f"cannot reach the dask scheduler at {scheduler} ({error}); start one with "
                "`dask scheduler` or leave out --scheduler to run locally"
            ) from None
        try:
            client.wait_for_workers(1, timeout=CLIENT_TIMEOUT_S)
        except TimeoutError:
            client.close()
            raise ConfigError(
                f"the dask scheduler at {scheduler} has no workers; start some with "
                f"`dask worker {scheduler}`"
            ) from None
    else:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1:
            raise ConfigError(f"--workers must be at least 1, got {count}")
        # GDAL's block cache defaults to 5 % of RAM per process and fills up as inputs are
        # read: workers' memory would grow with the tile count. A fixed cache keeps it flat.
        os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
        # dask's statistical profiler samples every worker thread's stack every 10 ms: a
        # quarter of the CPU of small-chip work on a 2-core machine. Nobody reads it here.
        # dask also starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand
        # memory back after nearly every GDAL call: 15 % slower chips, measured; our workers'
        # memory is bounded by GDAL's cache, not by what malloc keeps.
        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        # The scheduler and the nannies share the driver's process, and with the workers'
        # own event loops they take CPU from the chips on a small machine. Our tasks are
        # few, large and bounded in flight, and our workers' memory is bounded by GDAL's
        # cache, so slower monitors and no work stealing cost nothing here: 8 % more chips/s
        # on 2 cores, measured (bench/RESULTS.md). A cluster given with --scheduler keeps
        # its own settings.
        settings = {
            "distributed.worker.profile.enabled": False,
            "distributed.nanny.pre-spawn-environ": environ,
            "distributed.scheduler.work-stealing": False,
            "distributed.admin.tick.interval": "500ms",
            "distributed.worker.memory.monitor-interval": "1s",
            "distributed.admin.system-monitor.interval": "2s",
        }
        _check_main_can_be_respawned()
        # dask logs a worker that fails to start as a traceback; we say it in one line.
        with dask.config.set(settings), _quiet_dask_logs(logging.CRITICAL + 1):
            try:
                cluster = LocalCluster(
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address="127.0.0.1:0",  # never clash with another run's 8787
                    silence_logs=logging.CRITICAL,  # task errors are ours to report
                )
            except RuntimeError as error:  # "Nanny failed to start": the workers died at birth
                raise ConfigError(
                    f"the local dask workers did not start ({error}); if you call fetch from a "
                    'script, put the call under `if __name__ == "__main__":`, or use a running '
                    "cluster (scheduler=ADDRESS, --scheduler on the command line)"
                ) from None
        client = Client(cluster, set_as_default=False)
    try:
        yield client
    except KeyboardInterrupt:
        if cluster is not None:
            _kill_workers(cluster)
        raise
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=10)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def refuse_in_starting_worker() -> None:
    """Stop a script that calls ``fetch`` at import time from running again in each worker.

    dask starts local workers with multiprocessing's *spawn*, which re-imports the script that
    started them; an unguarded ``fetch(...)`` would then plan again and try to start a
    cluster inside every starting worker, which Python refuses with a long traceback. This
    ends such a worker with one line instead; the driver then reports a ConfigError.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(
            "error: fetch() ran again while a dask worker process was starting, because the "
            'script calls it at import time; put the call under `if __name__ == "__main__":`'
        )


def _check_main_can_be_respawned() -> None:
    """Workers re-import the driver's main script; a script read from stdin cannot be."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path and not os.path.isfile(path):
        raise ConfigError(
            f"local dask workers re-import the script that starts them, and {path} cannot be "
            "re-imported; save the script to a file (the call under "
            '`if __name__ == "__main__":`) or use a running cluster (scheduler=ADDRESS)'
        )


def _kill_workers(cluster: LocalCluster) -> None:
    """On Ctrl-C, stop our own workers at once: a task can't be cancelled mid-tile, and a
    graceful close would wait for it and then print the worker's own KeyboardInterrupt.
    Chips they were writing stay hidden ``.part`` files, which the next run removes."""
    for nanny in list(getattr(cluster, "workers", {}).values()):
        pid = getattr(getattr(nanny, "process", None), "pid", None)
        if pid:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


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
            return _failed_rows(batch, f"task lost: {_reason(error)}", recipe_hash)
    if future.status == "error":
        error = future.exception()
        if isinstance(error, DiskFullError):  # fatal: every further chip would fail alike
            raise error
        return _failed_rows(batch, f"task failed: {_reason(error)}", recipe_hash)
    return _failed_rows(batch, f"task {future.status}", recipe_hash)


class _TileFilter(logging.Filter):
    """Per-tile failures go to fetch.log only; the console would drown in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "per_tile", False)


@contextlib.contextmanager
def _run_logging(dataset_dir: Path, console: bool) -> Iterator[None]:
    package = logging.getLogger("m3leo_tiles")
    file_handler = logging.FileHandler(dataset_dir / LOG_NAME, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_handler.setLevel(logging.INFO)
    console_handler = logging.StreamHandler(sys.stderr)
    console_handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console_handler.setLevel(logging.WARNING if console else logging.ERROR)
    console_handler.addFilter(_TileFilter())
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
    dataset_dir = out / aoi / dataset
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
        probe = dataset_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write to output folder {dataset_dir} ({error.strerror or error}); "
            "choose another with --out"
        ) from None
    return dataset_dir


def fetch_tiles(
    recipe: Recipe,
    tiles: Sequence[GridTile],
    *,
    aoi: str,
    year: int | None = None,
    out: Path = Path("data"),
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    sources: Sequence[str] = (),
    progress: bool = True,
) -> FetchReport:
    """Render ``tiles`` (already selected) into ``out/<aoi>/<dataset>``; see ``fetch``."""
    from m3leo_tiles.io import remove_partials

    refuse_in_starting_worker()
    started = time.perf_counter()
    year = year if year is not None else recipe.default_year
    adapter = get_source(recipe.source)(recipe, FetchOptions(year=year, sources=tuple(sources)))
    adapter.check()
    dataset_dir = _make_dataset_dir(Path(out), aoi, recipe.dataset_name(year))
    counts: Counter[TileStatus] = Counter()
    recipe_hash = recipe.recipe_hash

    with _run_logging(dataset_dir, console=progress), DatasetLock(dataset_dir):
        log.info(
            "fetch %s (hash %s) into %s: %d tiles, workers=%s, scheduler=%s, overwrite=%s, "
            "sources=%s",
            recipe.name,
            recipe_hash,
            dataset_dir,
            len(tiles),
            workers,
            scheduler,
            overwrite,
            list(sources),
        )
        removed = remove_partials(dataset_dir)
        if removed:
            log.info("removed %d partial files left by an interrupted run", removed)
        manifest_path = dataset_dir / MANIFEST_NAME
        previous = read_manifest(manifest_path)
        writer = ManifestWriter(manifest_path)
        interrupted = False
        skipped = 0
        try:
            plan = make_plan(adapter, tiles, dataset_dir, previous, overwrite=overwrite)
            skipped = plan.skipped + len(plan.adopted)
            writer.write(plan.adopted + plan.no_source)
            counts[TileStatus.NO_SOURCE] += len(plan.no_source)
            log.info(
                "plan: %d already done (%d adopted), %d no-source, %d to render",
                skipped,
                len(plan.adopted),
                len(plan.no_source),
                plan.to_render,
            )
            if plan.to_render:  # a rerun with nothing left to do starts no cluster
                with _quiet_dask_logs(), _dask_client(workers, scheduler) as client:
                    try:
                        _run_batches(client, adapter, dataset_dir, plan, writer, counts, progress)
                    except KeyboardInterrupt:
                        interrupted = True
                        raise
        except KeyboardInterrupt:
            done = sum(counts.values())
            message = (
                f"interrupted: {done} tiles finished in this run and are kept; "
                "rerun the same command to resume"
            )
            log.warning(message)
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
            )
            log.info("summary: %s", report.summary())
    return report


def _run_batches(
    client: Client,
    adapter: SourceAdapter,
    dataset_dir: Path,
    plan: Plan,
    writer: ManifestWriter,
    counts: Counter[TileStatus],
    progress: bool,
) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    recipe_hash = adapter.recipe.recipe_hash
    threads = max(1, sum(client.nthreads().values()))
    limit = max(2, IN_FLIGHT_PER_THREAD * threads)
    all_batches = plan.batches(threads)
    log.info(
        "rendering %d tiles in %d batches on %d threads", plan.to_render, len(all_batches), threads
    )
    batches = iter(all_batches)
    pending: dict[str, tuple[Future, Batch]] = {}
    bar = tqdm(
        total=plan.to_render + len(plan.no_source),
        initial=len(plan.no_source),
        desc=dataset_dir.name,
        unit="tile",
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )

    def submit() -> Future | None:
        items = next(batches, None)
        if items is None:
            return None
        batch = Batch(adapter, str(dataset_dir), items)
        future = client.submit(render_batch, batch, pure=False, retries=0)
        pending[future.key] = (future, batch)
        return future

    first = [f for f in (submit() for _ in range(limit)) if f is not None]
    if not first:
        bar.close()
        return
    completed = as_completed(first, loop=client.loop)
    try:
        for future in completed:
            _, batch = pending.pop(future.key)
            rows = _rows_of(future, batch, recipe_hash)
            future.release()
            writer.write(rows)
            for row in rows:
                counts[row.status] += 1
                if row.status is TileStatus.FAILED:
                    log.warning(
                        "failed %s: %s", row.identifier, row.reason, extra={"per_tile": True}
                    )
            bar.update(len(rows))
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
    progress: bool = True,
    grids_dir: Path = Path("grids"),
) -> FetchReport:
    """Make the chips of ``recipe`` for the tiles of a grid, resuming where a run stopped.

    The grid is ``grid`` (a grid file), or the grid of ``aoi`` (built if missing), or the only
    grid under ``grids_dir``. ``split``, ``tiles`` (a file of ids) and ``limit`` narrow it.
    Raises ``ConfigError`` for bad input before any work; per-tile problems never raise, they
    are counted in the report and recorded in the dataset's manifest.
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
    selected = the_grid.select(split=chosen_split, identifiers=identifiers, limit=limit)
    if not selected:
        raise ConfigError(
            f"no tiles selected from {grid_path} (split={chosen_split}, tiles file={tiles}); "
            "check the split name and the ids"
        )
    return fetch_tiles(
        loaded,
        selected,
        aoi=the_grid.aoi,
        year=year,
        out=out,
        workers=workers,
        scheduler=scheduler,
        overwrite=overwrite,
        sources=sources,
        progress=progress,
    )


__all__ = [
    "FetchReport",
    "batch_size_for",
    "fetch",
    "fetch_tiles",
    "make_plan",
    "read_tile_ids",
    "render_batch",
]
