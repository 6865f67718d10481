"""The raster source as a new user drives it: paths given on the command line, recipes that
leave out what the files already say, inputs that do not fit the recipe (issue #8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from m3leo_tiles.errors import ConfigError
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import FetchOptions, get_source

ROME = "dem/Rome-30m-DEM.tif"
ROME_TILE = Tile.from_point(12.5, 42.0)


def _recipe(folder: Path, **fields):
    data = {"name": "t", "source": "raster", "resolution": 448, "bands": ["v"]}
    data.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    return parse_recipe(data, "test", folder / "t.yaml")


def _adapter(recipe, **options):
    return get_source("raster")(recipe, FetchOptions(**options))


def test_relative_source_paths_are_relative_to_the_current_folder(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 4: `--source ./a.tif` as the README shows; recipe paths stay the recipe's."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(shared_data / ROME, work / "a.tif")
    monkeypatch.chdir(work)
    recipe = _recipe(tmp_path / "recipes")  # the recipe lives elsewhere
    adapter = _adapter(recipe, sources=("./a.tif",))
    adapter.check()
    assert adapter.plan([ROME_TILE]) == {ROME_TILE.identifier: (str(work / "a.tif"),)}

    layered = _recipe(tmp_path / "recipes", bands=["v"], params={"layers": {"v": "x.tif"}})
    adapter = _adapter(layered, sources=("v=a.tif",))
    adapter.check()
    assert adapter.plan([ROME_TILE]) == {ROME_TILE.identifier: (f"v={work / 'a.tif'}",)}

    (tmp_path / "recipes" / "b.tif").write_bytes((work / "a.tif").read_bytes())
    own = _recipe(tmp_path / "recipes", params={"inputs": "b.tif"})
    assert _adapter(own).plan([ROME_TILE]) == {
        ROME_TILE.identifier: (str(tmp_path / "recipes" / "b.tif"),)
    }
