"""The source adapter contract and the registry that maps a recipe's ``source`` to a module.

A source is one module in ``m3leo_tiles.sources`` that defines a subclass of ``SourceAdapter``
decorated with ``@register``. Nothing else in the package names a source: the runner only
talks to this contract, so adding a source never touches the runner, the CLI or io.

Life cycle, and why it is split this way:

* ``SourceAdapter(recipe, options)`` is built on the driver; it must be cheap and picklable.
  The runner ships it to each dask worker once (not inside every batch).
* ``check()`` runs once on the driver before any work: missing credentials, unreachable
  configuration and the like become one clear error (exit 2) instead of a million failures.
* ``plan(tiles)`` runs once on the driver: one search for the whole AOI, one index of a
  mosaic's footprints. It returns the inputs each tile needs; the runner batches tiles whose
  ``batch_key`` is equal, and tiles with no input are recorded as ``no-source`` without a task.
* ``setup_worker()`` runs once per worker process before its first batch: clients that hold
  credentials which do not pickle (Earth Engine) are initialised there, not per tile.
* ``render_many(items, context)`` is the only way a worker renders. The default renders each
  tile with ``render`` under the adapter's ``retry_policy``; when the adapter declares a
  ``concurrency`` (requests it may have in flight across the whole cluster), tiles are spread
  over threads and every render holds one slot of the cluster-wide budget. A source overrides
  it to share work between tiles (one read, one warp), yielding exactly one outcome per tile.
* ``render(tile, inputs)`` returns the chip on the tile's pixel grid, or raises
  ``SourceError`` (recorded, not fatal) or ``TransientSourceError`` (retried).

Run-time options that are not part of a recipe (endpoints, concurrency, saved searches) are
declared by each adapter as ``cli_options``; the CLI offers every declared option on
``fetch`` and hands the values over in ``FetchOptions.extra``, so the CLI names no source.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pkgutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from m3leo_tiles.core.errors import ConfigError, TransientSourceError
from m3leo_tiles.core.retry import RetryPolicy

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import GridTile
    from m3leo_tiles.recipes import Recipe


T = TypeVar("T")


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


class SourceAdapter(ABC):
    """One kind of source. Subclasses set ``name`` and implement ``plan`` and ``render``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    retry_policy: ClassVar[RetryPolicy] = RetryPolicy()
    cli_options: ClassVar[tuple[SourceOption, ...]] = ()
    # A recipe for this source may leave out bands, dtype and nodata: ``check()`` fills them
    # from the inputs (``recipe.from_source`` lists which) and replaces ``self.recipe``.
    fills_recipe_defaults: ClassVar[bool] = False
    # Whether ``--source`` (FetchOptions.sources: local files, mirrors) means anything here.
    takes_sources: ClassVar[bool] = True

    def __init__(self, recipe: Recipe, options: FetchOptions | None = None) -> None:
        self.recipe = recipe
        self.options = options or FetchOptions()

    @classmethod  # noqa: B027
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        """Validate the recipe's ``params`` block; raise ConfigError naming ``where`` and key."""

    def check(self) -> None:  # noqa: B027
        """Driver-side preflight (credentials, configuration); raise ConfigError to stop."""

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

        The default knows local files: each input that names one (also as ``LAYER=PATH``, or
        the archive of ``zip://ARCHIVE!MEMBER`` and ``/vsizip/ARCHIVE/MEMBER``) counts with
        its size and modification time, so a replaced or rewritten file redoes its tiles;
        anything else (URLs, granule names) counts by its text alone. A remote source may
        override this with what it knows cheaply (a version, an ETag already fetched while
        planning); it must not make a request per tile.
        """
        digest = hashlib.sha256()
        for item in inputs:
            digest.update(item.encode("utf-8", "surrogateescape"))
            local = _local_file(item)
            if local is not None:
                try:
                    stat = os.stat(local)
                except OSError:
                    digest.update(b"\0missing")
                else:
                    digest.update(f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
            digest.update(b"\n")
        return digest.hexdigest()[:16]

    @abstractmethod
    def plan(self, tiles: Sequence[GridTile]) -> TileInputs:
        """Inputs per tile, computed once for the whole grid on the driver."""

    @abstractmethod
    def render(self, tile: GridTile, inputs: tuple[str, ...]) -> Chip:
        """The chip of one tile, on ``tile.pixel_grid(recipe.resolution)``."""

    def render_one(self, tile: GridTile, inputs: tuple[str, ...], context: RenderContext) -> Chip:
        """``render`` under the retry policy, each try holding one slot of the budget."""

        def attempt() -> Chip:
            with context.slot():
                return self.render(tile, inputs)

        return self.retry_policy.run(attempt, is_transient=self.is_transient,
                                     sleep=context.sleep)  # fmt: skip

    def render_many(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]], context: RenderContext
    ) -> Iterator[tuple[GridTile, Chip | Exception]]:
        """Chips of a batch of tiles, each with its chip or the error that stopped it.

        I/O-bound sources (``concurrency()`` set) get their tiles spread over
        ``context.threads`` threads, in order; the budget bounds requests across the cluster.
        A source may override this to share work across neighbouring tiles (one read, one
        warp); the chips must be the same as ``render`` would give. Errors are yielded, not
        raised, so that one bad tile never costs the others.
        """

        def outcome(item: tuple[GridTile, tuple[str, ...]]) -> Chip | Exception:
            try:
                return self.render_one(item[0], item[1], context)
            except Exception as error:
                return error

        threads = min(context.threads, len(items)) if self.concurrency() else 1
        if threads <= 1:
            for item in items:
                yield item[0], outcome(item)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix=f"m3leo-{self.name}") as pool:
            for item, result in zip(items, pool.map(outcome, items), strict=True):
                yield item[0], result


def _local_file(item: str) -> str | None:
    """The local file an input string names, if any (see ``input_identity``)."""
    candidates = [item]
    name, separator, rest = item.partition("=")
    if separator and name and os.sep not in name:
        candidates.append(rest)
    for text in candidates:
        if text.startswith(("zip://", "tar://")):
            text = text.partition("://")[2].partition("!")[0]
        elif text.startswith(("/vsizip/", "/vsitar/", "/vsigzip/")):
            inner = text.split("/", 2)[2]
            for suffix in (".zip", ".tar", ".tgz", ".tar.gz", ".gz"):
                at = inner.find(suffix)
                if at >= 0:
                    text = "/" + inner[: at + len(suffix)].lstrip("/")
                    break
        if not text.startswith("/vsi") and "://" not in text and os.path.isfile(text):
            return text
    return None


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


_REGISTRY: dict[str, type[SourceAdapter]] = {}


def register(cls: type[SourceAdapter]) -> type[SourceAdapter]:
    """Class decorator: make an adapter available under its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _import_all_sources() -> None:
    import m3leo_tiles.sources as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def available_sources() -> dict[str, type[SourceAdapter]]:
    _import_all_sources()
    return dict(sorted(_REGISTRY.items()))


def get_source(name: str) -> type[SourceAdapter]:
    sources = available_sources()
    if name not in sources:
        raise ConfigError(f"unknown source {name!r}; known sources: {', '.join(sources)}")
    return sources[name]
