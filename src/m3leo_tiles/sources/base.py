"""The source adapter contract and the registry that maps a recipe's ``source`` to a class.

A source is a subclass of ``SourceAdapter`` named by an entry point of the group
``m3leo_tiles.sources`` (``raster = "m3leo_tiles.sources.raster:RasterSource"``): the built-in
sources are declared that way in pyproject.toml, and a third party adds one with a package of
its own, without touching this one. Nothing else in the package names a source: the runner only
talks to this contract, so adding a source never touches the runner, the CLI or io.

Life cycle, and why it is split this way:

* ``SourceAdapter(recipe, options)`` is built on the driver; it must be cheap and picklable.
  The runner ships it to each dask worker once (not inside every batch).
* ``check()`` runs once on the driver before any work: missing credentials, unreachable
  configuration and the like become one clear error (exit 2) instead of a million failures.
  It returns the recipe to fetch with: the same one, or (a source that reads its inputs on
  the driver) one with the keys the recipe left out filled in; the runner builds the adapter
  that renders from that recipe, so the hash fetch.log says is the one the chips carry.
* ``plan(tiles)`` runs once on the driver: one search for the whole AOI, one index of a
  mosaic's footprints. It returns the inputs each tile needs; the runner batches tiles whose
  ``batch_key`` is equal, and tiles with no input are recorded as ``no-source`` without a task.
* ``setup_worker()`` runs once per worker process before its first batch: clients that hold
  credentials which do not pickle (Earth Engine) are initialised there, not per tile.
* ``render_many(items, context)`` is the only render hook: it yields one outcome (a ``Chip``
  or the error that stopped it) per tile. A source that makes each chip on its own
  subclasses ``PerTileSource`` and writes ``render_tile(tile, inputs)`` instead: retries under
  ``retry_policy``, the budget slot and the threads (when ``concurrency()`` is set) are done
  for it by ``render_each``. A source overrides ``render_many`` to share work between tiles
  (one read, one warp, one download per batch).

Run-time options that are not part of a recipe (endpoints, concurrency, saved searches) are
declared by each adapter as ``cli_options``; the CLI offers every declared option on
``fetch`` and hands the values over in ``FetchOptions.extra``, so the CLI names no source.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib.metadata
import logging
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from m3leo_tiles.core.errors import ConfigError, TransientSourceError, first_line
from m3leo_tiles.core.retry import RetryPolicy

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import GridTile
    from m3leo_tiles.recipes import Recipe


@dataclass(frozen=True)
class SourceOption:
    """A run-time option a source declares; ``m3leo-tiles fetch`` offers it as ``--<name>``.

    Values reach the adapter through ``FetchOptions.extra`` (CLI or Python API); when not
    given, ``env`` (a conventional or ``M3LEO_<SERVICE>_...`` variable) and then ``default``
    apply. Options never change a recipe's hash: they say how to fetch, not what.
    """

    name: str
    help: str
    env: str | None = None
    flag: bool = False
    metavar: str = "VALUE"
    default: str | None = None


@dataclass(frozen=True)
class FetchOptions:
    """Run-time choices that are not part of a recipe (they do not change its hash)."""

    year: int | None = None
    sources: tuple[str, ...] = ()  # --source overrides of the recipe's inputs
    cache_dir: str | None = None  # shared download cache (--cache); default OUT/.cache
    extra: Mapping[str, Any] = field(default_factory=dict)  # declared SourceOptions, by name


@dataclass(frozen=True)
class Chip:
    """A rendered chip: ``data`` is (bands, height, width) on the tile's pixel grid.

    ``metadata`` becomes the chip's dataset tags (an ``inputs`` key replaces the planned
    inputs there, for sources that learn at render time what they really used);
    ``band_metadata`` (one mapping per band, or empty) becomes each band's tags, where the keys
    ``scale`` and ``offset`` are written as GDAL's band scale and offset so that readers get
    physical values from stored integers.
    """

    data: np.ndarray
    band_names: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    band_metadata: tuple[Mapping[str, str], ...] = ()


class RenderContext:
    """What the runner hands ``render_many`` on a worker: threads and the request budget.

    ``slot()`` holds one unit of the cluster-wide budget (a ``distributed.Semaphore`` shared by
    every worker of the run) for the duration of a request; ``sleep`` is ``time.sleep``, which
    tests replace to check retry timing without waiting.
    """

    def __init__(
        self,
        threads: int = 1,
        slot: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.threads = max(1, threads)
        self._slot = slot or contextlib.nullcontext
        self.sleep = sleep

    def slot(self) -> contextlib.AbstractContextManager[Any]:
        return self._slot()


TileInputs = Mapping[str, tuple[str, ...]]
"""tile identifier -> the inputs (paths, URLs, granule names) its chip is made from."""


Item = tuple["GridTile", tuple[str, ...]]
Outcome = tuple["GridTile", "Chip | Exception"]


class SourceAdapter(ABC):
    """One kind of source. Subclasses set ``name`` and implement ``plan`` and ``render_many``
    (or subclass ``PerTileSource`` and implement ``render_tile``)."""

    name: ClassVar[str]
    retry_policy: ClassVar[RetryPolicy] = RetryPolicy()
    cli_options: ClassVar[tuple[SourceOption, ...]] = ()
    # A recipe for this source may leave out bands, dtype and nodata (``recipe.from_source``
    # lists which): ``check()`` returns the recipe with them filled from the inputs. A source
    # that cannot fill them refuses such a recipe in ``check_recipe``.
    fills_recipe_defaults: ClassVar[bool] = False
    # Whether ``--source`` (FetchOptions.sources: local files, mirrors) means anything here.
    takes_sources: ClassVar[bool] = True

    def __init__(self, recipe: Recipe, options: FetchOptions | None = None) -> None:
        type(self).check_recipe(recipe, recipe_where(recipe))
        self.recipe = recipe
        self.options = options or FetchOptions()

    @classmethod  # noqa: B027
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        """Validate the recipe's ``params`` block; raise ConfigError naming ``where`` and key."""

    @classmethod
    def check_recipe(cls, recipe: Recipe, where: str) -> None:
        """Validate a parsed recipe against this source (when an adapter is built, and by
        ``check_recipe``): its ``params``, and the keys it left out (``from_source``), which
        only a source that fills them from its inputs accepts without bands."""
        if "bands" in recipe.from_source and not (cls.fills_recipe_defaults
                                                  or recipe.bands_per_tile):  # fmt: skip
            raise ConfigError(f"{where}: key 'bands': is required (or set bands_per_tile: "
                                  "true)")  # fmt: skip
        cls.check_params(recipe.params, where)

    def check(self) -> Recipe:
        """Driver-side preflight (credentials, configuration); raise ConfigError to stop.

        Returns the recipe to fetch with (``self.recipe`` unless the source fills what the
        recipe left out); the adapter itself is not changed."""
        return self.recipe

    def single_epoch(self) -> str | None:
        """Why this recipe's data does not depend on the year (None: it does).

        A source says it from its recipe (no ``{year}`` in the inputs, a single image, no date
        window); ``check_run_options`` then refuses ``--year`` with one wording for all."""
        return None

    def option(self, name: str) -> Any:
        """A declared option's value: given at run time, else its environment variable, else
        its default (None when it has none)."""
        declared = {o.name: o for o in self.cli_options}
        if name not in declared:
            raise KeyError(f"{type(self).__name__} declares no option {name!r}")
        given = self.options.extra.get(name)
        if given is not None:
            return given
        option = declared[name]
        if option.env and os.environ.get(option.env):
            return os.environ[option.env]
        return option.default

    def concurrency(self) -> int | None:
        """Requests this source may have in flight across the whole cluster; None: the work
        is CPU-bound and each worker renders one tile at a time (no budget, no threads)."""
        return None

    def plan_summary(self) -> str:
        """What planning found, in words, after ``plan`` (a search's counts): fetch.log says
        it, and a run that finds nothing at all says why. Empty when there is nothing to add."""
        return ""

    def downloads(self) -> bool:
        """Whether this source copies files into the run's ``--cache`` (checked writable
        before any work, unless every file the plan needs is there already)."""
        return False

    def all_downloaded(self, planned: Iterable[tuple[str, ...]]) -> bool:
        """Whether every file the planned input sets need is in the cache already; called
        only when the cache cannot be written, and may stop at the first missing file."""
        return True

    def is_transient(self, error: BaseException) -> bool:
        """Whether ``error`` is worth a retry under ``retry_policy``."""
        return isinstance(error, TransientSourceError)

    def setup_worker(self) -> None:  # noqa: B027
        """Once per worker process, before its first batch (clients with credentials)."""

    def batch_key(self, inputs: tuple[str, ...]) -> Hashable:
        """Tiles with equal keys share batches, so a batch reads its inputs once.

        The default, the whole input list, suits sources whose tiles share exact input sets;
        a source whose neighbouring tiles' lists overlap without being equal returns e.g. the
        most shared input, so the workers of one frame do not race for the same files.
        """
        return inputs

    def input_identity(self, inputs: tuple[str, ...]) -> str:
        """A short digest of what ``inputs`` are now, decided on the driver: a chip made from
        inputs with another identity is redone by the next run.

        The default knows plain local file paths: each one counts with its size and
        modification time, so a replaced or rewritten file redoes its tiles; anything else
        (URLs, granule names) counts by its text alone. A source with path forms of its own
        (the raster source's ``LAYER=PATH`` and archive members) passes ``local_file``; a
        remote source may override this with what it knows cheaply (a version, an ETag already
        fetched while planning); it must not make a request per tile.
        """
        return identity_digest(inputs, plain_local_file)

    def plan_identity(self) -> str | None:
        """A short digest of everything ``plan`` reads besides the tiles, the recipe and the
        run's options (e.g. which files a glob finds, with their sizes and times), or None
        when the source cannot say it cheaply (the default: planned in full every run).

        A rerun whose tiles, recipe, options and this digest are those of the last finished
        run takes each tile's input list from its manifest row instead of planning
        (``fetch.replan``); so a source may return a digest only if ``plan`` gives the same
        lists whenever it is equal.
        """
        return None

    @abstractmethod
    def plan(self, tiles: Sequence[GridTile]) -> TileInputs:
        """Inputs per tile, computed once for the whole grid on the driver."""

    @abstractmethod
    def render_many(self, items: Sequence[Item], context: RenderContext) -> Iterator[Outcome]:
        """Chips of a batch of tiles, each with its chip or the error that stopped it.

        Exactly one outcome per tile, in any order; errors are yielded, not raised, so that
        one bad tile never costs the others (``SourceError``: recorded; a
        ``TransientSourceError`` left after the source's retries: recorded, retried by a
        rerun). Each chip is on ``tile.pixel_grid(recipe.resolution)``.
        """


class PerTileSource(SourceAdapter):
    """A source whose chips are made one tile at a time: implement ``render_tile``."""

    @abstractmethod
    def render_tile(self, tile: GridTile, inputs: tuple[str, ...]) -> Chip:
        """The chip of one tile, on ``tile.pixel_grid(recipe.resolution)``; raise
        ``SourceError`` (recorded, not fatal) or ``TransientSourceError`` (retried)."""

    def render_many(self, items: Sequence[Item], context: RenderContext) -> Iterator[Outcome]:
        return render_each(self, items, context, self.render_tile)


def render_each(
    adapter: SourceAdapter,
    items: Sequence[Item],
    context: RenderContext,
    render: Callable[[GridTile, tuple[str, ...]], Chip],
) -> Iterator[Outcome]:
    """``render`` for each tile under the adapter's ``retry_policy``, each try holding one
    slot of the budget; an error is the tile's outcome, not raised.

    I/O-bound sources (``concurrency()`` set) get their tiles spread over
    ``context.threads`` threads, in order; the budget bounds requests across the cluster.
    """

    def attempt(tile: GridTile, inputs: tuple[str, ...]) -> Chip:
        with context.slot():
            return render(tile, inputs)

    def outcome(item: Item) -> Chip | Exception:
        try:
            return adapter.retry_policy.run(lambda: attempt(*item),
                                            is_transient=adapter.is_transient,
                                            sleep=context.sleep)  # fmt: skip
        except Exception as error:
            return error

    threads = min(context.threads, len(items)) if adapter.concurrency() else 1
    if threads <= 1:
        for item in items:
            yield item[0], outcome(item)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix=f"m3leo-{adapter.name}") as pool:
        for item, result in zip(items, pool.map(outcome, items), strict=True):
            yield item[0], result


_LOOKED_AT: contextvars.ContextVar[dict[tuple[str, int], bytes] | None] = contextvars.ContextVar(
    "m3leo_identity_looks", default=None
)


@contextlib.contextmanager
def each_file_looked_at_once() -> Iterator[None]:
    """Within this block, ``identity_digest`` looks at each input once (a file's size and
    time, or that it is missing): a plan asks for thousands of lists that share their files
    (GSSIC over CONUS: 500k items, 62k files). Only for one plan: a later run looks again."""
    token = _LOOKED_AT.set({})
    try:
        yield
    finally:
        _LOOKED_AT.reset(token)


def identity_digest(inputs: Iterable[str], local_file: Callable[[str], str | None]) -> str:
    """Each input's text and, for one that ``local_file`` maps to a file, that file's size
    and modification time (``\\0missing`` when it has gone): see ``input_identity``. The
    bytes hashed are those of every release since identities were stored in manifests."""
    digest = hashlib.sha256()
    looked_at = _LOOKED_AT.get()
    for item in inputs:
        digest.update(item.encode("utf-8", "surrogateescape"))
        if looked_at is None:
            digest.update(_look_at(item, local_file))
            continue
        key = (item, id(local_file))
        seen = looked_at.get(key)
        if seen is None:
            seen = looked_at[key] = _look_at(item, local_file)
        digest.update(seen)
    return digest.hexdigest()[:16]


def _look_at(item: str, local_file: Callable[[str], str | None]) -> bytes:
    """What ``identity_digest`` hashes after an item's text."""
    local = local_file(item)
    if local is None:
        return b"\n"
    try:
        stat = os.stat(local)
    except OSError:
        return b"\0missing\n"
    return f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()


def plain_local_file(item: str) -> str | None:
    """``item`` itself when it is the path of a local file (not a URL, not a GDAL ``/vsi``
    path), else None."""
    if not item.startswith("/vsi") and "://" not in item and os.path.isfile(item):
        return item
    return None


def whole_number(value: Any, message: str, default: Any = None) -> int:
    """A run-time option that counts something (``--http-concurrency 8``): an integer of at
    least 1, else ConfigError(``message``), formatted with the ``value`` given."""
    try:
        count = int(value if value is not None else default)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ConfigError(message.format(value=value))
    return count


def recipe_where(recipe: Recipe) -> str:
    """How errors about a recipe name it: its file, else its name."""
    return recipe.path or f"recipe {recipe.name}"


def check_recipe(recipe: Recipe) -> Recipe:
    """The recipe checked by its source (``SourceAdapter.check_recipe``), which the recipe
    parser does not import; returned unchanged."""
    get_source(recipe.source).check_recipe(recipe, recipe_where(recipe))
    return recipe


def check_run_options(adapter: SourceAdapter) -> None:
    """Refuse run-time options that the recipe's source would ignore, before any work.

    An ignored option is worse than a refused one: ``--ee-concurrency`` on a raster recipe or
    ``--year`` on a single image does nothing, and the user believes it did (a ``srtm-2020``
    folder holds the same image as ``srtm``). One rule for every source and for the CLI and
    the Python API alike: the source must declare the option (``cli_options``), take
    ``--source``, and depend on the year for ``--year``."""
    recipe, options = adapter.recipe, adapter.options
    where = f"recipe {recipe.name} (source {adapter.name})"
    declared = {o.name for o in adapter.cli_options}
    for name, value in options.extra.items():
        if value is None or name in declared:
            continue
        owners = [n for n, a in available_sources().items() if name in {o.name for o in
                  a.cli_options}]  # fmt: skip
        has = f"an option of source {', '.join(owners)}" if owners else "an option of no source"
        raise ConfigError(f"--{name} does not apply to {where}; it is {has}")
    if options.sources and not adapter.takes_sources:
        raise ConfigError(f"--source does not apply to {where}: it reads no files")
    reason = adapter.single_epoch() if options.year is not None else None
    if reason is not None:
        raise ConfigError(
            f"recipe {recipe.name!r} does not depend on the year ({reason}), so --year "
            f"{options.year} would only make a second copy of the same dataset "
            f"({recipe.dataset_name(options.year)}); leave out --year"
        )


def refuse_unknown_params(params: Mapping[str, Any], allowed: Sequence[str], where: str,
                          source: str) -> None:  # fmt: skip
    """A typo in a recipe's ``params`` must never silently become a default."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: key 'params.{unknown[0]}': unknown {source} parameter; allowed: "
            f"{', '.join(sorted(allowed))}"
        )


ENTRY_POINT_GROUP = "m3leo_tiles.sources"


@functools.lru_cache(maxsize=8)
def _entry_points(path: tuple[str, ...]) -> dict[str, importlib.metadata.EntryPoint]:
    """The group's entry points by name, for one ``sys.path`` (a test adds a plugin's folder);
    the first distribution on the path wins a name, as it wins an import."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return dict(sorted(found.items()))


def source_names() -> tuple[str, ...]:
    """The names of every installed source, from package metadata alone (nothing imported):
    what a recipe's ``source`` may be."""
    return tuple(_entry_points(tuple(sys.path)))


_LOADED: dict[str, type[SourceAdapter]] = {}


def get_source(name: str) -> type[SourceAdapter]:
    """The adapter class of a source name; an unknown name, or an entry point that cannot be
    loaded (a broken third-party package), is one ConfigError naming it."""
    entries = _entry_points(tuple(sys.path))
    entry = entries.get(name)
    if entry is None:
        raise ConfigError(f"unknown source {name!r}; known sources: {', '.join(entries)}")
    cached = _LOADED.get(entry.value)
    if cached is not None:
        return cached
    owner = f" of {entry.dist.name}" if entry.dist is not None else ""
    try:
        loaded = entry.load()
    except Exception as error:
        raise ConfigError(
            f"source {name!r} cannot be loaded (entry point {entry.value}{owner}): "
            f"{type(error).__name__}: {first_line(error)}"
        ) from None
    if not (isinstance(loaded, type) and issubclass(loaded, SourceAdapter)):
        raise ConfigError(f"source {name!r} (entry point {entry.value}{owner}) is not a "
                          "SourceAdapter subclass")  # fmt: skip
    _LOADED[entry.value] = loaded
    return loaded


def available_sources() -> dict[str, type[SourceAdapter]]:
    """Every source that loads, by name; one that does not is left out with a warning (each
    command keeps working; fetching a recipe of that source says why it cannot)."""
    sources = {}
    for name in source_names():
        try:
            sources[name] = get_source(name)
        except ConfigError as error:
            _warn_once(str(error))
    return sources


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logging.getLogger("m3leo_tiles").warning("%s", message)
