"""The source contract (issue #18): one render hook, a per-tile helper, ``check()`` returning
the recipe, and a registry of entry points that imports nothing to know the names."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio

from m3leo_tiles.core.errors import ConfigError, SourceError, TransientSourceError
from m3leo_tiles.core.retry import RetryPolicy
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import load_recipe, parse_recipe
from m3leo_tiles.sources import base
from m3leo_tiles.sources.base import (
    Chip,
    PerTileSource,
    RenderContext,
    SourceAdapter,
    available_sources,
    get_source,
    source_names,
)

TILES = [Tile(33, 1030, 50 + i) for i in range(4)]
REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, source: str = "fake-synthetic", **fields):
    data = {"name": "t", "source": source, "resolution": 448, "bands": ["v"], **fields}
    return parse_recipe(data, "test", tmp_path / "t.yaml")


class Constant(PerTileSource):
    """A whole source in a few lines: a plan and one chip per tile."""

    name = "constant-inline"
    retry_policy = RetryPolicy(attempts=2, base_delay_s=1.0, jitter=0.0)

    def plan(self, tiles):
        return {t.identifier: ("const://1",) for t in tiles}

    def render_tile(self, tile, inputs):
        if tile.identifier == TILES[1].identifier:
            raise SourceError("no data here")
        if tile.identifier == TILES[2].identifier:
            raise TransientSourceError("busy")
        grid = tile.pixel_grid(self.recipe.resolution)
        return Chip(np.ones((1, grid.height, grid.width), "float32"), self.recipe.bands)


def test_a_per_tile_source_gets_retries_and_one_outcome_per_tile(tmp_path: Path) -> None:
    slept: list[float] = []
    source = Constant(_recipe(tmp_path))
    items = [(t, ("const://1",)) for t in TILES]
    outcomes = dict(source.render_many(items, RenderContext(sleep=slept.append)))
    assert list(outcomes) == TILES  # in order, each once
    assert isinstance(outcomes[TILES[0]], Chip) and isinstance(outcomes[TILES[3]], Chip)
    assert isinstance(outcomes[TILES[1]], SourceError)  # yielded, not raised
    assert isinstance(outcomes[TILES[2]], TransientSourceError) and slept == [1.0]


def test_the_contract_has_one_render_hook() -> None:
    assert SourceAdapter.__abstractmethods__ == {"plan", "render_many"}
    assert PerTileSource.__abstractmethods__ == {"plan", "render_tile"}
    for gone in ("render", "render_one", "description"):
        assert not hasattr(SourceAdapter, gone), gone
        for name, cls in available_sources().items():
            assert gone not in vars(cls), f"{name} still has {gone}"


def test_check_returns_the_recipe_and_leaves_the_adapter_alone(
    tmp_path: Path, shared_data: Path
) -> None:
    bare = parse_recipe(
        {"name": "t", "source": "raster", "resolution": 448,
         "params": {"inputs": str(shared_data / "dem/Rome-30m-DEM.tif")}}, "t", tmp_path / "t.yaml",
    )  # fmt: skip
    adapter = get_source("raster")(bare)
    filled = adapter.check()
    assert adapter.recipe is bare and bare.from_source == ("bands", "dtype", "nodata")
    assert (filled.bands, filled.dtype, filled.from_source) == (("b1",), "int16", ())
    plain = Constant(_recipe(tmp_path))
    assert plain.check() is plain.recipe


def test_whole_number_options_share_one_rule() -> None:
    assert base.whole_number("8", "--x: {value}") == 8
    assert base.whole_number(None, "--x: {value}", default=4) == 4
    for bad in ("0", "many", -2):
        with pytest.raises(ConfigError, match=re.escape(f"--x: {bad}")):
            base.whole_number(bad, "--x: {value}")


def test_a_batch_fetches_each_file_once_and_keeps_failures_apart() -> None:
    from m3leo_tiles.sources.download import fetch_each

    def fetch(key: str) -> str:
        if key == "bad":
            raise SourceError("HTTP 404")
        return key.upper()

    for threads in (1, 3):
        got = fetch_each(["a", "bad", "c"], fetch, threads, "test")
        assert list(got) == ["a", "bad", "c"] and got["a"] == "A" and got["c"] == "C"
        assert isinstance(got["bad"], SourceError)


# --- the registry ----------------------------------------------------------------------------


def test_names_come_from_entry_points() -> None:
    names = source_names()
    assert {"raster", "earthengine", "gunw"} <= set(names)
    assert {"fake-synthetic", "slow-raster"} <= set(names)  # tests/helpers/site's dist-info
    assert get_source("raster").__module__ == "m3leo_tiles.sources.raster.adapter"
    with pytest.raises(ConfigError, match=r"unknown source 'nope'; known sources: .*raster"):
        get_source("nope")


def _dist_info(folder: Path, name: str, entry_points: str) -> Path:
    info = folder / f"{name}-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[m3leo_tiles.sources]\n{entry_points}\n")
    return folder


def test_a_broken_plugin_is_one_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = _dist_info(tmp_path / "site", "broken_plugin", "broken = no_such_module_xyz:Source")
    monkeypatch.syspath_prepend(str(site))
    assert "broken" in source_names()
    with pytest.raises(ConfigError) as caught:
        get_source("broken")
    message = str(caught.value)
    assert "source 'broken' cannot be loaded" in message
    assert "no_such_module_xyz:Source of broken_plugin" in message and "\n" not in message
    assert "raster" in available_sources() and "broken" not in available_sources()
    assert "no_such_module_xyz" in caplog.text  # said once, not a crash
    recipe = _recipe(tmp_path, source="broken")  # a name is enough to parse a recipe
    assert recipe.source == "broken"


def test_recipes_load_without_importing_any_source() -> None:
    code = textwrap.dedent("""
        import sys
        import m3leo_tiles.recipes as r
        for name in ("demo-dem", "gunw", "srtm", "gssic"):
            r.load_recipe(name)
        loaded = [m for m in sys.modules if m.startswith("m3leo_tiles.sources.")
                  and m != "m3leo_tiles.sources.base"]
        heavy = [m for m in ("rasterio", "shapely", "pyproj", "ee") if m in sys.modules]
        assert not loaded and not heavy, (loaded, heavy)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_an_unknown_source_is_refused_by_name_on_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'source': 'nope' is not one of .*raster"):
        _recipe(tmp_path, source="nope")
    loaded = load_recipe("demo-dem")
    assert loaded.source == "raster"


# --- what fetch.log says is what the chips carry ----------------------------------------------


def test_fetch_log_hash_is_the_chips_hash_for_a_recipe_filled_from_its_files(
    tmp_path: Path, shared_data: Path
) -> None:
    import geopandas as gpd

    from helpers.cli import run_cli

    tile = Tile.from_point(12.5, 42.0)
    grid = tmp_path / "grid.geojson"
    gpd.GeoDataFrame({"identifier": [tile.identifier], "aoi": ["rome"], "split": ["train"]},
                     geometry=[tile.lonlat_polygon()], crs="EPSG:4326").to_file(grid)  # fmt: skip
    recipe = tmp_path / "bare.yaml"  # no bands, dtype or nodata: read from the file
    dem = shared_data / "dem/Rome-30m-DEM.tif"
    recipe.write_text(f"source: raster\nresolution: 448\nparams:\n  inputs: {dem}\n")
    done = run_cli(["fetch", recipe, "--grid", grid, "--out", tmp_path / "out", "--workers", "1"],
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (dataset,) = (tmp_path / "out").glob("*/bare")
    logged = re.search(r"fetch bare \(hash (\w+)\)", (dataset / "fetch.log").read_text())
    assert logged is not None
    with rasterio.open(dataset / f"{tile.identifier}.tif") as chip:
        assert chip.tags()["recipe_hash"] == logged.group(1)
    unfilled = load_recipe(recipe)
    assert unfilled.recipe_hash != logged.group(1)  # (the hash of before the files were read)
