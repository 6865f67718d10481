"""Remote raster inputs copied whole into the run's ``--cache`` (``remote: download``): a
batch's files are fetched once, concurrently within the request budget, before its tiles."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from m3leo_tiles.core.errors import (
    RUN_STOPPERS,
    EmptyTileError,
    SourceError,
    TransientSourceError,
)
from m3leo_tiles.grid.tile import GridTile
from m3leo_tiles.sources._gdal import forget_datasets_using, is_remote, read_problem
from m3leo_tiles.sources.base import Chip, Item, Outcome, RenderContext, render_each
from m3leo_tiles.sources.download import fetch_each

log = logging.getLogger("m3leo_tiles.fetch")


class RemoteInputs:
    """Downloads of the raster source (a mixin of ``RasterSource``, which gives ``recipe``,
    ``options``, ``_split`` and ``render_tile``)."""

    def render_many(self, items: Sequence[Item], context: RenderContext) -> Iterator[Outcome]:
        """With ``remote: download``: the batch's files are fetched first, concurrently within
        the request budget, then its chips are made one after the other in this thread, so
        every file is opened once per batch rather than once per thread."""
        if not self._downloads():
            yield from super().render_many(items, context)
            return
        templated = "tile_degrees" in self.recipe.params
        remote = sorted({path for _, inputs in items for item in inputs
                         if is_remote(path := self._split(item)[1])})  # fmt: skip

        def fetch(path: str) -> str | None:
            with context.slot():
                return self._download(path, templated)

        fetched = fetch_each(remote, fetch, context.threads, "m3leo-download")
        # a file that failed fails its tiles without being tried again; a full disk stops all
        failed = {path: value for path, value in fetched.items() if isinstance(value, Exception)}
        stopper = next((e for e in failed.values() if isinstance(e, RUN_STOPPERS)), None)
        if stopper is not None:
            raise stopper
        ready = []
        for tile, inputs in items:
            paths = (self._split(item)[1] for item in inputs)
            error = next((failed[path] for path in paths if path in failed), None)
            if error is None:
                ready.append((tile, inputs))
            else:
                yield tile, error
        sequential = RenderContext(threads=1, slot=context.slot, sleep=context.sleep)
        inputs_of = {tile.identifier: inputs for tile, inputs in ready}
        for tile, outcome in super().render_many(ready, sequential):
            if isinstance(outcome, Exception) and not isinstance(
                outcome, (TransientSourceError, EmptyTileError, *RUN_STOPPERS)
            ):
                outcome = self._heal(tile, inputs_of[tile.identifier], outcome, sequential)
            yield tile, outcome

    def _heal(self, tile: GridTile, inputs: tuple[str, ...], error: Exception,
              context: RenderContext) -> Chip | Exception:  # fmt: skip
        """A tile that failed on files of the download cache: the damaged ones (GDAL cannot
        read them whole) are dropped, downloaded again, and the tile is tried once more; a
        second failure names the file. A tile that failed for another reason keeps it."""
        from m3leo_tiles.sources.download import drop_cached

        damaged = self._damaged_downloads(inputs)
        if not damaged:
            return error
        for local, seen, problem in damaged:
            log.warning("cached %s cannot be read (%s): downloading it again", local.name, problem)
            drop_cached(local, seen)
            forget_datasets_using(str(local))
        [(_, second)] = render_each(self, [(tile, inputs)], context, self.render_tile)
        if isinstance(second, RUN_STOPPERS):
            raise second
        if not isinstance(second, Exception):
            return second
        still = self._damaged_downloads(inputs)
        if not still:
            return second
        local, _, problem = still[0]
        return SourceError(f"cannot read cached {local.name} (downloaded again): {problem}")

    def _damaged_downloads(self, inputs: tuple[str, ...]
                           ) -> list[tuple[Path, os.stat_result, str]]:  # fmt: skip
        """(file, its stat, why) for each of the tile's cached downloads that GDAL cannot
        read whole; only called after a failure, as it decodes every file."""
        damaged = []
        for item in inputs:
            path = self._split(item)[1]
            if not is_remote(path):
                continue
            local = self._cache_path(path)
            try:
                seen = local.stat()
            except FileNotFoundError:
                continue
            problem = read_problem(str(local))
            if problem is not None:
                damaged.append((local, seen, problem))
        return damaged

    def _downloads(self) -> bool:
        return self.recipe.params.get("remote") == "download" and bool(self.options.cache_dir)

    def downloads(self) -> bool:
        return self._downloads() and bool(self.concurrency())

    def all_downloaded(self, planned: Iterable[tuple[str, ...]]) -> bool:
        remote = {path for inputs in planned for item in inputs
                  if is_remote(path := self._split(item)[1])}  # fmt: skip
        return all(self._cache_path(path).is_file() for path in remote)

    def _download(self, path: str, templated: bool) -> str | None:
        """A remote file copied whole into ``<cache>/<host>/<path>`` (atomic, locked per file,
        shared by every worker and run), or None for a missing cell of a tiled product."""
        from m3leo_tiles.sources.download import MissingRemoteFile, cached_download

        url = path.removeprefix("/vsicurl/")
        local = self._cache_path(path)
        try:
            return str(cached_download(url, local.parent, name=local.name))
        except MissingRemoteFile:
            if templated:
                return None
            raise SourceError(f"input {url} does not exist (HTTP 404)") from None

    def _cache_path(self, path: str) -> Path:
        """Where ``remote: download`` keeps a remote input: ``<cache>/raster/<scheme>/<host>/
        <path>`` (the URL's own layout, so that files of one name in two folders differ)."""
        scheme, _, rest = path.removeprefix("/vsicurl/").partition("://")
        folder, _, name = rest.partition("?")[0].rpartition("/")
        return Path(self.options.cache_dir or ".") / "raster" / scheme / folder / name
