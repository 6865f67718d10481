"""Chips follow their inputs: other --source files, files changed since, what a glob expands
to and what a source says its inputs are decide whether a finished tile is made again."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from helpers.rome import ROME, ROME_TILES, dem_recipe, fetch_on, write_grid
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch.api import fetch_tiles
from m3leo_tiles.recipes import Recipe

pytestmark = pytest.mark.slow


def test_other_sources_or_changed_files_redo_the_chips(
    cluster, tmp_path: Path, shared_data: Path
) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    shutil.copy(shared_data / ROME, a)
    shutil.copy(shared_data / ROME, b)
    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = dem_recipe(tmp_path)
    out = tmp_path / "data"
    first = fetch_on(cluster, recipe, grid, out, sources=[str(a)])
    assert (first.ok, first.skipped) == (2, 0)
    assert fetch_on(cluster, recipe, grid, out, sources=[str(a)]).skipped == 2
    other = fetch_on(cluster, recipe, grid, out, sources=[str(b)])  # other --source
    assert (other.ok, other.skipped) == (2, 0)
    rows = read_manifest(first.dataset_dir / MANIFEST_NAME)
    assert {r.inputs for r in rows.values()} == {(str(b),)}
    os.utime(b, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))  # b rewritten since
    assert fetch_on(cluster, recipe, grid, out, sources=[str(b)]).ok == 2
    assert fetch_on(cluster, recipe, grid, out, sources=[str(b)]).skipped == 2
    log = (first.dataset_dir / "fetch.log").read_text()
    assert "2 finished tiles were made from other inputs" in log


def test_what_a_glob_expands_to_decides_too(cluster, tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "dems"
    folder.mkdir()
    shutil.copy(shared_data / ROME, folder / "a.tif")
    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = dem_recipe(tmp_path, lines=["params: {inputs: dems/*.tif}"])
    out = tmp_path / "data"
    assert fetch_on(cluster, recipe, grid, out).ok == 2
    shutil.copy(shared_data / ROME, folder / "b.tif")  # a new file matches the glob
    again = fetch_on(cluster, recipe, grid, out)
    assert (again.ok, again.skipped) == (2, 0)


def test_a_source_may_say_what_its_inputs_are(cluster, tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text("1")
    recipe = Recipe(name="v", source="fake-versioned", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0, params={"version_file": str(version)})  # fmt: skip
    run = lambda: fetch_tiles(recipe, ROME_TILES, aoi="t", out=tmp_path,  # noqa: E731
                              scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    assert run().ok == 2 and run().skipped == 2
    version.write_text("2")
    assert run().ok == 2
    rows = read_manifest(tmp_path / "t" / "v" / MANIFEST_NAME)
    assert {r.input_id for r in rows.values()} == {"remote://product/v@2"}
