"""A third-party source from a package of its own (tests/sources/plugin): installed with pip,
offline, into a folder on the path, then listed and fetched with through the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from helpers.cli import cli_env, run_cli
from m3leo_tiles.grid.tile import Tile

pytestmark = pytest.mark.slow

PLUGIN = Path(__file__).resolve().parent / "plugin"
TILES = [Tile.from_point(12.5, 42.0), Tile.from_point(12.56, 42.0)]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed by pip (no index, no build isolation: the venv's setuptools)."""
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "src", work / "site-packages"
    shutil.copytree(PLUGIN, source)  # the build writes beside the sources: not in the checkout
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (target / "m3leo_checkerboard.py").is_file()
    return target


def _env(installed: Path) -> dict[str, str]:
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(installed), env["PYTHONPATH"]])
    return env


def _grid(path: Path, tiles: list[Tile]) -> Path:
    columns = {"identifier": [t.identifier for t in tiles], "aoi": ["rome"] * len(tiles),
               "split": ["train"] * len(tiles)}  # fmt: skip
    polygons = [t.lonlat_polygon() for t in tiles]
    gpd.GeoDataFrame(columns, geometry=polygons, crs="EPSG:4326").to_file(path)
    return path


def test_the_plugins_recipe_is_listed(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    shutil.copy(PLUGIN / "plugin-recipe.yaml", tmp_path / "recipes")
    done = run_cli(["recipes"], cwd=tmp_path, env=_env(installed))
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("plugin-recipe ")]
    assert line.split()[1:4] == ["user", "checkerboard", "a"], line
    assert "INVALID" not in done.stdout


def test_fetch_with_the_plugin_through_the_cli(installed: Path, tmp_path: Path) -> None:
    grid = _grid(tmp_path / "grid.geojson", TILES)
    recipe = PLUGIN / "plugin-recipe.yaml"
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "out", "--workers", "1"]
    done = run_cli(args, cwd=tmp_path, env=_env(installed))
    assert done.returncode == 0, done.stderr
    for tile in TILES:
        with rasterio.open(tmp_path / "out" / "rome" / "plugin-recipe" / f"{tile.identifier}.tif"
                           ) as chip:  # fmt: skip
            data = chip.read(1)
        assert data.shape == (10, 10) and data[0, 0] == 1 and data[0, 2] == 2
        assert set(np.unique(data)) == {1, 2}
    without = run_cli(args, cwd=tmp_path, env=cli_env())  # not installed: one clear error
    assert without.returncode == 2
    assert "'checkerboard' is not one of" in without.stderr


def test_a_broken_plugin_fails_only_its_own_recipes(tmp_path: Path) -> None:
    """A package whose source cannot be imported: every command works, and fetching one of
    its recipes is one error line naming the entry point (exit 2)."""
    info = tmp_path / "site" / "m3leo_broken-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: m3leo-broken\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[m3leo_tiles.sources]\nbroken = m3leo_nowhere:X\n")
    env = _env(tmp_path / "site")
    listed = run_cli(["recipes"], cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "demo-dem" in listed.stdout, listed.stderr
    recipe = tmp_path / "b.yaml"
    recipe.write_text("source: broken\nresolution: 448\nbands: [v]\n")
    grid = _grid(tmp_path / "grid.geojson", TILES[:1])
    done = run_cli(["fetch", recipe, "--grid", grid, "--out", tmp_path / "out"], cwd=tmp_path,
                   env=env)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and "source 'broken' cannot be loaded" in lines[0], done.stderr
    assert "m3leo_nowhere:X of m3leo-broken" in lines[0]
