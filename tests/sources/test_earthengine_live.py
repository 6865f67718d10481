"""One real tile of each Earth Engine recipe from the live service.

Skipped unless Earth Engine credentials (``M3LEO_EE_API_KEY``, ``GOOGLE_APPLICATION_CREDENTIALS``
or ``earthengine authenticate``'s file) and ``EE_PROJECT`` exist, and only with ``-m live``
selected or ``M3LEO_LIVE=1``: the rest of the suite never touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import load_recipe
from m3leo_tiles.sources.base import Chip, FetchOptions, RenderContext
from m3leo_tiles.sources.earthengine import EarthEngineSource


def _have_credentials() -> bool:
    stored = Path.home() / ".config" / "earthengine" / "credentials"
    found = (os.environ.get("M3LEO_EE_API_KEY") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
             or stored.is_file())  # fmt: skip
    return bool(found and os.environ.get("EE_PROJECT") and os.environ.get("M3LEO_LIVE") == "1")


SKIP_REASON = "needs Earth Engine credentials, EE_PROJECT and M3LEO_LIVE=1"
pytestmark = [pytest.mark.live, pytest.mark.skipif(not _have_credentials(), reason=SKIP_REASON)]

ROME = Tile.from_point(12.5, 41.9)


@pytest.mark.parametrize("name", ["s1grd", "s2srm", "esawc", "srtm", "modisveg"])
def test_one_real_tile(name: str) -> None:
    recipe = load_recipe(name)
    source = EarthEngineSource(recipe, FetchOptions(year=2020))
    source.check()
    ((_, chip),) = list(source.render_many([(ROME, ("live",))], RenderContext(threads=1)))
    assert isinstance(chip, Chip), chip
    grid = ROME.pixel_grid(recipe.resolution)
    assert chip.data.shape == (len(recipe.bands), grid.height, grid.width)
    valid = chip.data != recipe.nodata
    assert valid.mean() > 0.5  # Rome has data in every dataset
    if name == "srtm":
        assert 0 < np.median(chip.data[valid]) < 200  # metres above sea level
    if name == "esawc":
        assert set(np.unique(chip.data[valid])) <= {10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100}
