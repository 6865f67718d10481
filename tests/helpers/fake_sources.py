"""Test-only adapters, registered under names no real source uses.

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

from m3leo_tiles.errors import SourceError, TransientSourceError
from m3leo_tiles.sources.base import Chip, SourceAdapter, TileInputs, register


@register
class FakeSynthetic(SourceAdapter):
    name = "fake-synthetic"
    description = "test only: a deterministic chip per tile"

    def plan(self, tiles: Sequence) -> TileInputs:
        uncovered = set(self.recipe.params.get("uncovered", ()))
        group = int(self.recipe.params.get("group", 1))
        return {
            t.identifier: (f"fake://{i // group}",)
            for i, t in enumerate(tiles)
            if t.identifier not in uncovered
        }

    def render(self, tile, inputs: tuple[str, ...]) -> Chip:
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


def _register_slow_raster() -> None:
    """``slow-raster``: the real raster source, sleeping per tile so a run can be interrupted."""
    try:
        from m3leo_tiles.sources.base import get_source

        raster = get_source("raster")
    except Exception:  # the raster source is not there: tests needing it will say so
        return

    @register
    class SlowRaster(raster):  # type: ignore[misc, valid-type]
        name = "slow-raster"
        description = "test only: the raster source, slowed down per tile"

        def render(self, tile, inputs):
            time.sleep(float(os.environ.get("M3LEO_TEST_SLEEP", "0.2")))
            return super().render(tile, inputs)

    SlowRaster.__qualname__ = "SlowRaster"  # pickled by reference on the workers
    globals()["SlowRaster"] = SlowRaster


_register_slow_raster()
