"""The source adapter contract and the registry that maps a recipe's ``source`` to a module.

A source is one module in ``m3leo_tiles.sources`` that defines a subclass of ``SourceAdapter``
decorated with ``@register``. Nothing else in the package names a source: the runner only
talks to this contract, so adding a source never touches the runner, the CLI or io.

Life cycle, and why it is split this way:

* ``SourceAdapter(recipe, options)`` is built on the driver; it must be cheap and picklable,
  because the same instance is shipped to every dask worker.
* ``check()`` runs once on the driver before any work: missing credentials, unreachable
  configuration and the like become one clear error (exit 2) instead of a million failures.
* ``plan(tiles)`` runs once on the driver: one search for the whole AOI, one index of a
  mosaic's footprints. It returns the inputs each tile needs; the runner batches tiles that
  share inputs, and tiles with no input are recorded as ``no-source`` without a task.
* ``render(tile, inputs)`` runs on a worker per tile and returns the chip on the tile's pixel
  grid (or raises ``SourceError`` for a per-tile failure that is recorded, not fatal).
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from m3leo_tiles.errors import ConfigError

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import GridTile
    from m3leo_tiles.recipes import Recipe


@dataclass(frozen=True)
class FetchOptions:
    """Run-time choices that are not part of a recipe (they do not change its hash)."""

    year: int | None = None
    sources: tuple[str, ...] = ()  # --source overrides of the recipe's inputs
    cache_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chip:
    """A rendered chip: ``data`` is (bands, height, width) on the tile's pixel grid."""

    data: np.ndarray
    band_names: tuple[str, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)


TileInputs = Mapping[str, tuple[str, ...]]
"""tile identifier -> the inputs (paths, URLs, granule names) its chip is made from."""


class SourceAdapter(ABC):
    """One kind of source. Subclasses set ``name`` and implement ``plan`` and ``render``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, recipe: Recipe, options: FetchOptions | None = None) -> None:
        self.recipe = recipe
        self.options = options or FetchOptions()

    @classmethod  # noqa: B027
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        """Validate the recipe's ``params`` block; raise ConfigError naming ``where`` and key."""

    def check(self) -> None:  # noqa: B027
        """Driver-side preflight (credentials, configuration); raise ConfigError to stop."""

    @abstractmethod
    def plan(self, tiles: Sequence[GridTile]) -> TileInputs:
        """Inputs per tile, computed once for the whole grid on the driver."""

    @abstractmethod
    def render(self, tile: GridTile, inputs: tuple[str, ...]) -> Chip:
        """The chip of one tile, on ``tile.pixel_grid(recipe.resolution)``."""

    def render_many(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]]
    ) -> Iterator[tuple[GridTile, Chip | Exception]]:
        """Chips of a batch of tiles, each with its chip or the error that stopped it.

        A source may override this to share work across neighbouring tiles (one read, one
        warp); the chips must be the same as ``render`` would give. Errors are yielded, not
        raised, so that one bad tile never costs the others.
        """
        for tile, inputs in items:
            try:
                yield tile, self.render(tile, inputs)
            except Exception as error:
                yield tile, error


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
