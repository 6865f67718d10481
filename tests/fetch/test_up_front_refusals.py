"""Inputs that cannot work are refused before any work and before the output folder exists:
a year on data without years, a year the product lacks, band counts and indexes."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.rome import ROME, ROME_TILES, dem_recipe, write_grid
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.fetch.api import fetch

pytestmark = pytest.mark.slow


def test_year_on_a_recipe_without_years_is_refused(tmp_path: Path, shared_data: Path) -> None:
    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = dem_recipe(tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}}}"])
    with pytest.raises(ConfigError, match="does not depend on the year"):
        fetch(recipe, grid=grid, out=tmp_path / "data", year=2019, progress=False)
    assert not (tmp_path / "data").exists()


def test_a_year_the_product_lacks_is_refused_up_front(tmp_path: Path) -> None:
    from m3leo_tiles.recipes import builtin_recipes_dir

    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    # The built-in agb recipe, its archive moved to a local folder: no test touches a network.
    text = (builtin_recipes_dir() / "agb.yaml").read_text()
    local = tmp_path / "agb.yaml"
    local.write_text(text.replace("https://dap.ceda.ac.uk", str(tmp_path / "ceda")))
    with pytest.raises(ConfigError, match=r"has the years 2010, 2015-2021; --year 1999"):
        fetch(local, grid=grid, out=tmp_path / "data", year=1999, progress=False)
    assert not (tmp_path / "data").exists()


def test_band_counts_and_indexes_are_checked_up_front(tmp_path: Path, shared_data: Path) -> None:
    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    two = dem_recipe(tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}}}"])
    two.write_text(two.read_text().replace("bands: [elevation]", "bands: [a, b]"))
    with pytest.raises(ConfigError, match=r"names 2 bands \(a, b\) but .* gives 1"):
        fetch(two, grid=grid, out=tmp_path / "data", progress=False)
    index = dem_recipe(
        tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}, band_indexes: [3]}}"]
    )
    with pytest.raises(ConfigError, match=r"band_indexes \[3\] but .* has 1 band"):
        fetch(index, grid=grid, out=tmp_path / "data", progress=False)
