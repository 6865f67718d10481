"""Test-only adapters, registered under names no real source uses.

They are installed the way a third party's sources are: by the entry points of
``site/m3leo_tiles_test_sources-0.dist-info`` (``site/`` is on the path of every test process).

``fake-synthetic`` renders a deterministic chip per tile without reading files, steered by the
recipe's ``params`` (which tiles are uncovered, only-nodata, failing, transient, slow), so the
runner's bookkeeping can be tested without depending on one source's quirks. The real raster
source is exercised end to end in the CLI tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m3leo_tiles.core.errors import SourceError, TransientSourceError
from m3leo_tiles.sources.base import Chip, PerTileSource, SourceOption, TileInputs
from m3leo_tiles.sources.raster import RasterSource


class FakeSynthetic(PerTileSource):
    name = "fake-synthetic"

    def plan(self, tiles: Sequence) -> TileInputs:
        uncovered = set(self.recipe.params.get("uncovered", ()))
        group = int(self.recipe.params.get("group", 1))
        return {
            t.identifier: (f"fake://{i // group}",)
            for i, t in enumerate(tiles)
            if t.identifier not in uncovered
        }

    def render_tile(self, tile, inputs: tuple[str, ...]) -> Chip:
        params = self.recipe.params
        time.sleep(float(params.get("sleep", 0.0)))
        fail_while = params.get("fail_while")
        failing = fail_while is None or Path(fail_while).exists()
        if failing and tile.identifier in params.get("fail", ()):
            raise SourceError(f"cannot read {inputs[0]} for {tile.identifier}")
        if tile.identifier in params.get("crash", ()):
            raise ZeroDivisionError("a bug in an adapter")
        transient_dir = params.get("transient_dir")
        if transient_dir and tile.identifier in params.get("transient", ()):
            # Fail the first time for this tile, succeed on the retry: counted with files
            # because the retry runs in the same worker process but we check from the test.
            marker = Path(transient_dir) / tile.identifier
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                raise TransientSourceError("quota exceeded, try again")
        if tile.identifier in params.get("always_transient", ()):
            raise TransientSourceError("service unavailable")
        grid = tile.pixel_grid(self.recipe.resolution)
        nodata = self.recipe.nodata if self.recipe.nodata is not None else 0
        if tile.identifier in params.get("empty", ()):
            data = np.full((len(self.recipe.bands), grid.height, grid.width), nodata)
        else:
            seed = sum(map(ord, tile.identifier))
            data = np.full((len(self.recipe.bands), grid.height, grid.width), seed % 100 + 1)
        return Chip(data.astype(self.recipe.dtype), tuple(self.recipe.bands))


class SlowRaster(RasterSource):
    """``slow-raster``: the real raster source, sleeping per tile so a run can be interrupted."""

    name = "slow-raster"

    def render_tile(self, tile, inputs):
        time.sleep(float(os.environ.get("M3LEO_TEST_SLEEP", "0.2")))
        return super().render_tile(tile, inputs)


def _synthetic(tile, recipe, count: int) -> np.ndarray:
    grid = tile.pixel_grid(recipe.resolution)
    seed = sum(map(ord, tile.identifier))
    return np.full((count, grid.height, grid.width), seed % 100 + 1).astype(recipe.dtype)


class FakeHttp(PerTileSource):
    """``fake-http``: each chip waits on one GET to ``params.url`` (a loopback server), like a
    remote service; ``params.budget`` is its declared concurrency, ``params.setup_dir`` gets
    one file per ``setup_worker`` call (named by pid and a counter)."""

    name = "fake-http"
    # a run-time option it declares (and ignores): options must never change a recipe's hash
    cli_options = (SourceOption("anything", "test only: a declared run-time option"),)

    def concurrency(self) -> int | None:
        budget = self.recipe.params.get("budget")
        return int(budget) if budget else None

    def setup_worker(self) -> None:
        folder = self.recipe.params.get("setup_dir")
        if folder:
            import uuid

            (Path(folder) / f"{os.getpid()}-{uuid.uuid4().hex[:6]}").write_text("setup")

    def plan(self, tiles: Sequence) -> TileInputs:
        return {t.identifier: (f"{self.recipe.params['url']}/{t.identifier}",) for t in tiles}

    def render_tile(self, tile, inputs: tuple[str, ...]) -> Chip:
        import requests

        response = requests.get(inputs[0], timeout=30)
        if response.status_code != 200:
            raise SourceError(f"HTTP {response.status_code}")
        return Chip(_synthetic(tile, self.recipe, len(self.recipe.bands)), self.recipe.bands)


class FakeOutcomes(PerTileSource):
    """``fake-outcomes``: a ``render_many`` that skips ``params.skip`` tiles, yields
    ``params.twice`` tiles twice, and stops with a bug after ``params.break_after`` tiles."""

    name = "fake-outcomes"

    def plan(self, tiles: Sequence) -> TileInputs:
        return {t.identifier: ("fake://all",) for t in tiles}

    def render_tile(self, tile, inputs: tuple[str, ...]) -> Chip:
        return Chip(_synthetic(tile, self.recipe, len(self.recipe.bands)), self.recipe.bands)

    def render_many(self, items, context):
        params = self.recipe.params
        for count, (tile, inputs) in enumerate(items):
            if count == params.get("break_after", -1):
                raise RuntimeError("adapter loop broke")
            if tile.identifier in params.get("skip", ()):
                continue
            yield tile, self.render_tile(tile, inputs)
            if tile.identifier in params.get("twice", ()):
                yield tile, self.render_tile(tile, inputs)


class FakePerTileBands(PerTileSource):
    """``fake-per-tile-bands``: a different band list per tile (like GUNW pairs), with chip
    and band metadata, including GDAL scale and offset."""

    name = "fake-per-tile-bands"

    def plan(self, tiles: Sequence) -> TileInputs:
        return {t.identifier: ("fake://pairs",) for t in tiles}

    def render_tile(self, tile, inputs: tuple[str, ...]) -> Chip:
        count = 1 + sum(map(ord, tile.identifier)) % 3
        names = tuple(
            f"2020010{i + 1}_2020010{i}_coherence_{tile.identifier}" for i in range(count)
        )
        band_metadata = tuple(
            {"reference": f"2020-01-0{i + 1}", "baseline_days": str(i + 1), "scale": "0.01",
             "offset": "0"}
            for i in range(count)
        )  # fmt: skip
        return Chip(_synthetic(tile, self.recipe, count), names,
                    {"products": f"product-{tile.identifier}", "inputs": "real-input"},
                    band_metadata)  # fmt: skip


class FakeVersioned(PerTileSource):
    """``fake-versioned``: every tile's input is one remote name, whose identity the source
    knows cheaply (the text of ``params.version_file``, as a service's version number would
    be): changing it must redo the chips, while the input names stay the same."""

    name = "fake-versioned"

    def plan(self, tiles: Sequence) -> TileInputs:
        return {t.identifier: ("remote://product/v",) for t in tiles}

    def input_identity(self, inputs: tuple[str, ...]) -> str:
        version = Path(self.recipe.params["version_file"]).read_text().strip()
        return f"{';'.join(inputs)}@{version}"

    def render_tile(self, tile, inputs: tuple[str, ...]) -> Chip:
        grid = tile.pixel_grid(self.recipe.resolution)
        data = np.ones((len(self.recipe.bands), grid.height, grid.width))
        return Chip(data.astype(self.recipe.dtype), tuple(self.recipe.bands))


class FakeListed(PerTileSource):
    """``fake-listed``: each tile reads the local files that ``params.lists`` (a JSON file:
    tile id -> paths) names for it, as GSSIC's tiles read their cells' 64 layers: for the
    tests of input lists recorded by reference. Identity: the default (size, mtime)."""

    name = "fake-listed"

    def plan(self, tiles: Sequence) -> TileInputs:
        import json

        lists = json.loads(Path(self.recipe.params["lists"]).read_text())
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        return {t.identifier: shared.setdefault(key, key) for t in tiles
                if (key := tuple(lists.get(t.identifier, ())))}  # fmt: skip

    def render_tile(self, tile, inputs: tuple[str, ...]) -> Chip:
        time.sleep(float(self.recipe.params.get("sleep", 0.0)))
        grid = tile.pixel_grid(self.recipe.resolution)
        data = np.full((len(self.recipe.bands), grid.height, grid.width), len(inputs))
        return Chip(data.astype(self.recipe.dtype), tuple(self.recipe.bands))
