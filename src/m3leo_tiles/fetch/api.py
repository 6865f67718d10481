"""The chip engine's public API: turn the tiles of a grid into aligned chips, resumably.

A run reads as the modules of ``fetch/``: ``select`` (which tiles: grid, split, ids),
``plan`` (the driver decides what is done and batches the rest), ``dispatch`` (batches out to
dask workers, rows back into the manifest, early stop, live progress), ``worker`` (a task
renders a batch and writes its chips), ``cluster`` (our LocalCluster or an existing one, the
request budget) and ``runlog`` (fetch.log and the terminal). This module holds the run itself
(``fetch_tiles``) and what users call (``fetch``).

Nothing a single tile does can stop the run: per-tile errors, and whole batches lost to a
dead worker, are recorded as ``failed`` with a reason and retried by the next run. A crash at
any moment loses nothing a rerun cannot recover: the manifest is flushed after every batch.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3leo_tiles.core.enums import ChipCodec, Split, TileStatus
from m3leo_tiles.core.errors import ConfigError, M3leoError
from m3leo_tiles.core.signals import Terminated, sigterm_as_interrupt
from m3leo_tiles.dataset.inputsets import InputSets
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.lock import DatasetLock
from m3leo_tiles.dataset.manifest import (
    LeanRows,
    ManifestRow,
    ManifestWriter,
    compact_manifest,
    is_compact,
    read_manifest,
)
from m3leo_tiles.fetch.cluster import dask_client, quiet_dask_logs, refuse_in_starting_worker
from m3leo_tiles.fetch.dispatch import EARLY_STOP_TILES, EarlyStop, failure_kind, run_batches
from m3leo_tiles.fetch.plan import Plan, batch_size_for, make_plan
from m3leo_tiles.fetch.replan import forget_key, plan_key, record_key
from m3leo_tiles.fetch.runlog import LOG_NAME, log_plan, log_run_start, log_stop, run_logging
from m3leo_tiles.fetch.select import (
    YearSpec,
    check_choice,
    find_default_grid,
    grid_path_of,
    parse_years,
    read_tile_ids,
    select_tiles,
    workers_warning,
)
from m3leo_tiles.fetch.worker import render_batch
from m3leo_tiles.grid.tile import tile_ids
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.sources.base import (
    FetchOptions,
    SourceAdapter,
    check_run_options,
    get_source,
)
from m3leo_tiles.tools.catalog import update_after_fetch

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import GridTile

CACHE_DIR_NAME = ".cache"

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
    grid: Path | None = None  # the grid file the tiles came from: the catalog's splits
    compress: ChipCodec | None = None  # how new chips are stored; None: the recipe's codec

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


@dataclass(frozen=True)
class YearsReport:
    """What a run of several years did (``--year 2018-2020``): one report per year's dataset."""

    reports: tuple[FetchReport, ...]

    @property
    def exit_code(self) -> int:
        """The worst year's: a failed tile in one year must not hide behind the others."""
        return max(report.exit_code for report in self.reports)

    def summary(self) -> str:
        return "\n".join(report.summary() for report in self.reports)


def _make_dataset_dir(out: Path, aoi: str, dataset: str) -> DatasetLayout:
    from m3leo_tiles.core.names import ALLOWED, name_problem

    for what, value in (("AOI name", aoi), ("dataset name", dataset)):
        problem = name_problem(value)  # grids and recipes check theirs; the API may not
        if problem is not None:
            raise ConfigError(f"{what} {value!r} {problem}; it names a folder ({ALLOWED})")
    layout = DatasetLayout.of(out, aoi, dataset)
    problem = writable_problem(layout.folder)
    if problem is not None:
        raise ConfigError(
            f"cannot write to output folder {layout.folder} ({problem}); choose another with --out"
        )
    return layout


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


def _request_of(request: FetchRequest | None, kwargs: dict[str, Any]) -> FetchRequest:
    """The run's request: ``request``, with keyword arguments for fields replacing its own."""
    if request is None:
        kwargs["sources"] = tuple(kwargs.get("sources", ()))
        return FetchRequest(**kwargs)
    return replace(request, **kwargs) if kwargs else request


def _nothing_found(adapter: SourceAdapter, tiles: Sequence[GridTile],
                   previous: Mapping[str, ManifestRow], plan: Plan,
                   counts: Counter[TileStatus]) -> str:  # fmt: skip
    """Why a run left its dataset without one chip (every tile empty or without a source), or
    "" when it did not: wrong inputs (an empty mirror, a year without products) must not look
    like a finished dataset. Said on the terminal and in fetch.log, with the plan's counts."""
    if not tiles or counts[TileStatus.OK] or counts[TileStatus.FAILED] or plan.adopted:
        return ""
    recipe_hash = adapter.recipe.recipe_hash
    rows = LeanRows.of(previous)  # columns: no row object per tile
    position, statuses, hashes = rows.position, rows.status, rows.recipe_hash
    for identifier in tile_ids(tiles):
        i = position.get(identifier)
        if i is not None and statuses[i] is TileStatus.OK and hashes[i] == recipe_hash:
            return ""
    found = adapter.plan_summary()
    message = (
        f"nothing fetched: not one of the {len(tiles)} tiles has data (all empty or without "
        f"a source){'; ' + found if found else ''}; check --source, --year and the recipe"
    )
    log.warning("%s", message, extra={"per_tile": True})  # fetch.log; the CLI says it once
    return message


def _interrupted(error: KeyboardInterrupt, done: int) -> KeyboardInterrupt:
    """The interruption the caller sees (Ctrl-C or SIGTERM), saying what is kept; logged to
    fetch.log (the CLI says it once)."""
    what = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
    message = (
        f"{what}: {done} tiles finished in this run and are kept; rerun the same command to resume"
    )
    log.warning(message, extra={"per_tile": True})
    return type(error)(message)


ClusterOpener = Callable[[], contextlib.AbstractContextManager[Any]]


@contextlib.contextmanager
def _own_cluster(request: FetchRequest) -> Iterator[Any]:
    """A dask client for one dataset, shut down when it is made."""
    with quiet_dask_logs(), dask_client(request.workers, request.scheduler) as client:
        yield client


class _SharedCluster:
    """One dask client for every year of a run: started when a year first has tiles to
    render (a rerun with nothing left starts none), shut down when the run ends, so the
    years do not each pay a cluster's start."""

    def __init__(self, request: FetchRequest) -> None:
        self._request = request
        self._stack = contextlib.ExitStack()
        self._client: Any = None

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        if self._client is None:
            self._client = self._stack.enter_context(_own_cluster(self._request))
        yield self._client

    def __enter__(self) -> _SharedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


@dataclass
class _Run:
    """One run's state between the lock's acquisition and the report: what it planned, what
    its batches made, and the manifest being written."""

    adapter: SourceAdapter
    tiles: Sequence[GridTile]
    request: FetchRequest
    layout: DatasetLayout
    cache: Path
    previous: Mapping[str, ManifestRow] = field(default_factory=dict)
    counts: Counter[TileStatus] = field(default_factory=Counter)
    skipped: int = 0
    interrupted: bool = False
    nothing: str = ""
    cluster: ClusterOpener | None = None  # the run's shared cluster; else one of its own

    def __post_init__(self) -> None:
        # The folder is listed on a thread while the manifest is read: the listing waits on
        # the kernel, Arrow parses without the GIL (a CONUS rerun ~0.5 s sooner on 2 cores)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3leo-scan") as pool:
            listing = pool.submit(self.layout.scan)
            self.previous = read_manifest(self.layout.manifest, lean=True)  # references only
            found = listing.result()
        self.chip_sizes, self.partials = found.chip_sizes, found.partials
        self.writer = ManifestWriter(self.layout.manifest)

    def execute(self) -> None:
        """Plan, record what is done or has no source, render the rest on a cluster."""
        adapter, request = self.adapter, self.request
        key = plan_key(adapter, self.tiles)
        sizes, self.chip_sizes = self.chip_sizes, {}  # not held while tiles render
        plan = make_plan(adapter, self.tiles, self.layout.folder, self.previous,
                         overwrite=request.overwrite, key=key, sizes=sizes)  # fmt: skip
        del sizes
        _check_cache(adapter, plan, self.cache)
        if not plan.reused:  # rows of this plan may name lists the recorded key's plan does not
            forget_key(self.layout)
        # Every list a row of this run may name is on the disk before the first row is written
        InputSets(self.layout.input_sets).record(plan.input_lists)
        self.skipped = plan.skipped + len(plan.adopted)
        self.writer.write(plan.refreshed + plan.adopted + plan.no_source)
        self.counts[TileStatus.NO_SOURCE] += len(plan.no_source)
        log_plan(plan, self.skipped, adapter.plan_summary())
        if plan.to_render:  # a rerun with nothing left to do starts no cluster
            opened = self.cluster() if self.cluster is not None else _own_cluster(request)
            with opened as client:
                try:
                    run_batches(client, adapter, self.layout.folder, plan, self.writer,
                                self.counts, request.progress)  # fmt: skip
                except KeyboardInterrupt:
                    self.interrupted = True
                    raise
        self.nothing = _nothing_found(adapter, self.tiles, self.previous, plan, self.counts)
        if not plan.reused and self._every_tile_has_its_row(plan):
            record_key(self.layout, key)

    def _every_tile_has_its_row(self, plan: Plan) -> bool:
        """Whether each selected tile now has a row naming the list this plan gave it: those
        skipped (same list), adopted, without a source, and one row per tile rendered."""
        settled = plan.skipped + len(plan.adopted) + sum(self.counts.values())
        return settled == len(self.tiles)

    def close(self, recipe: str, started: float) -> FetchReport:
        """Close and compact the manifest, whatever happened; the report of the run."""
        self.writer.close()
        if self.writer.written or not is_compact(self.layout.manifest):
            compact_manifest(self.layout.manifest)
        counts = self.counts
        report = FetchReport(
            dataset_dir=self.layout.folder,
            recipe=recipe,
            selected=len(self.tiles),
            ok=counts[TileStatus.OK],
            empty=counts[TileStatus.EMPTY],
            no_source=counts[TileStatus.NO_SOURCE],
            failed=counts[TileStatus.FAILED],
            skipped=self.skipped,
            seconds=time.perf_counter() - started,
            interrupted=self.interrupted,
            nothing=self.nothing,
        )
        log.info("summary: %s", report.summary())
        return report


def fetch_tiles(
    recipe: Recipe, tiles: Sequence[GridTile], request: FetchRequest | None = None, **kwargs: Any
) -> FetchReport:
    """Render ``tiles`` (already selected) into ``out/<aoi>/<dataset>``; see ``fetch``.

    ``request`` says how; keyword arguments are its fields, for callers who prefer them
    (``fetch_tiles(recipe, tiles, aoi="demo", workers=2)``).
    """
    refuse_in_starting_worker()
    request = _request_of(request, kwargs)
    started = time.perf_counter()
    return _render(_checked(recipe, request), tiles, request, started)


@dataclass(frozen=True)
class _Checked:
    """A recipe and its adapter for one year, past the source's up-front checks."""

    recipe: Recipe
    adapter: SourceAdapter
    options: FetchOptions


def _checked(recipe: Recipe, request: FetchRequest) -> _Checked:
    """The source's up-front checks for the request's year (a year the product lacks, bad
    options) raise ``ConfigError`` here, before any folder or work."""
    options = request.fetch_options(recipe)
    if request.compress is not None:  # not part of the hash: finished chips stay done
        recipe = replace(recipe, compress=ChipCodec(request.compress))
    adapter = get_source(recipe.source)(recipe, options)
    check_run_options(adapter)
    filled = adapter.check()
    if filled is not recipe:  # the source filled what the recipe left out: fetch with that
        recipe, adapter = filled, type(adapter)(filled, options)
    return _Checked(recipe, adapter, options)


def _render(checked: _Checked, tiles: Sequence[GridTile], request: FetchRequest,
            started: float, cluster: ClusterOpener | None = None) -> FetchReport:  # fmt: skip
    """Make one dataset (one year) of checked recipe: lock, log, plan, render, report."""
    from m3leo_tiles.dataset.chipfile import remove_partials

    recipe, adapter, options = checked.recipe, checked.adapter, checked.options
    layout = _make_dataset_dir(Path(request.out), request.aoi,
                               recipe.dataset_name(options.year))  # fmt: skip
    with (
        run_logging(layout.log, console=request.progress),
        DatasetLock(layout.folder),
        sigterm_as_interrupt(),
    ):
        log_run_start(recipe, layout.folder, len(tiles), request, options)
        run = _Run(adapter, tiles, request, layout, Path(options.cache_dir or "."),
                   cluster=cluster)  # fmt: skip
        removed = remove_partials(layout.folder, run.partials)
        if removed:
            log.info("removed %d partial files left by an interrupted run", removed)
        try:
            run.execute()
        except KeyboardInterrupt as error:
            raise _interrupted(error, sum(run.counts.values())) from None
        except M3leoError as error:
            log_stop(error)
            raise
        finally:
            report = run.close(recipe.name, started)
        update_after_fetch(layout.folder, recipe, request.grid, options.year,
                           made_chips=report.ok > 0)  # fmt: skip
    return report


def fetch_years(recipe: Recipe, tiles: Sequence[GridTile], request: FetchRequest,
                years: Sequence[int]) -> YearsReport:  # fmt: skip
    """Make one dataset per year in turn (``out/<aoi>/<recipe>-<year>``), each with its own
    manifest and resumable on its own, on one dask cluster.

    Every year passes the up-front checks before any is made: a year the product lacks must
    not be found after hours of the others. An interruption or a run-stopping error (exit 2)
    stops the run there; the years already made are kept and a rerun skips their chips.
    """
    refuse_in_starting_worker()
    requests = [replace(request, year=year) for year in years]
    checked = [_checked(recipe, one) for one in requests]
    reports: list[FetchReport] = []
    # SIGTERM between two years too must shut the shared cluster down (exit 143), not kill us
    with sigterm_as_interrupt(), _SharedCluster(request) as cluster:
        for one, year_checked in zip(requests, checked, strict=True):
            started = time.perf_counter()
            reports.append(_render(year_checked, tiles, one, started, cluster.open))
    return YearsReport(tuple(reports))


# --- the public entry point -----------------------------------------------------------------


def _codec(compress: ChipCodec | str | None) -> ChipCodec | None:
    if compress is None or isinstance(compress, ChipCodec):
        return compress
    if compress not in [c.value for c in ChipCodec]:
        raise ConfigError(f"compress {compress!r} is not one of {', '.join(ChipCodec)}")
    return ChipCodec(compress)


def _resolve_recipe(recipe: str | Path | Recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    from m3leo_tiles.recipes import load_recipe

    return load_recipe(recipe)


def fetch(
    recipe: str | Path | Recipe,
    *,
    aoi: str | None = None,
    grid: Path | None = None,
    year: YearSpec = None,
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
    compress: ChipCodec | str | None = None,
) -> FetchReport | YearsReport:
    """Make the chips of ``recipe`` for the tiles of a grid, resuming where a run stopped.

    The grid is ``grid`` (a grid file), or the grid of ``aoi`` (built if missing), or the only
    grid under ``grids_dir``. ``split``, ``tiles`` (a file of ids) and ``limit`` narrow it.
    Raises ``ConfigError`` for bad input before any work; per-tile problems never raise, they
    are counted in the report and recorded in the dataset's manifest. ``cache`` is the shared
    download cache (default ``out/.cache``); ``options`` are the values of options that
    sources declare (``m3leo-tiles fetch --help`` lists them), by name, e.g.
    ``{"ee-url": "http://127.0.0.1:8080"}``. ``compress`` stores new chips with that codec
    instead of the recipe's (``ChipCodec``); finished chips are kept as they are.

    ``year`` is one year (``2020``: a ``FetchReport``) or several (``"2018-2020"``,
    ``"2018,2020"``, ``[2018, 2020]``: a ``YearsReport``, one dataset per year; see
    ``fetch_years``).
    """
    refuse_in_starting_worker()
    years = parse_years(year)
    check_choice(aoi, grid, limit)
    loaded = _resolve_recipe(recipe)
    grid_path = grid_path_of(aoi, grid, grids_dir)
    cores = workers_warning(workers, scheduler)
    chosen = select_tiles(grid_path, split, tiles, limit, warnings=(cores,) if cores else ())
    request = FetchRequest(
        aoi=chosen.aoi,
        year=years[0] if years else None,
        out=Path(out),
        workers=workers,
        scheduler=scheduler,
        overwrite=overwrite,
        sources=tuple(sources),
        cache=Path(cache) if cache is not None else None,
        options=dict(options or {}),
        progress=progress,
        notes=chosen.notes,
        warnings=chosen.warnings,
        grid=grid_path,
        compress=_codec(compress),
    )
    if years is not None and len(years) > 1:
        return fetch_years(loaded, chosen.tiles, request, years)
    return fetch_tiles(loaded, chosen.tiles, request)


__all__ = [
    "EARLY_STOP_TILES",
    "LOG_NAME",
    "EarlyStop",
    "FetchReport",
    "FetchRequest",
    "YearsReport",
    "batch_size_for",
    "failure_kind",
    "fetch",
    "fetch_tiles",
    "fetch_years",
    "find_default_grid",
    "make_plan",
    "read_tile_ids",
    "render_batch",
]
