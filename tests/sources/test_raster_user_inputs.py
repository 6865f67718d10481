"""The raster source as a new user drives it: paths given on the command line, recipes that
leave out what the files already say, inputs that do not fit the recipe (issue #8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import FetchOptions, check_recipe, get_source

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


# --- item 12: what the files say, the recipe need not ------------------------------------


def _multiband(path: Path, descriptions: tuple[str | None, ...], dtype: str = "uint8") -> Path:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    count = len(descriptions)
    with rasterio.open(
        path, "w", driver="GTiff", width=40, height=40, count=count, dtype=dtype,
        crs="EPSG:4326", transform=from_origin(12.4, 42.1, 0.005, 0.005), nodata=7,
    ) as out:  # fmt: skip
        out.write(np.arange(count * 1600, dtype="int64").reshape(count, 40, 40).astype(dtype))
        for index, text in enumerate(descriptions, start=1):
            if text:
                out.set_band_description(index, text)
    return path


def _bare(folder: Path, **fields):
    """A recipe that gives neither bands, dtype nor nodata."""
    data = {"name": "t", "source": "raster", "resolution": 448}
    data.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    return parse_recipe(data, "test", folder / "t.yaml")


def test_bands_dtype_nodata_default_from_the_files(tmp_path: Path, shared_data: Path) -> None:
    layered = _bare(
        tmp_path,
        params={"layers": {n: str(shared_data / f"s2/s2_{n}.jp2") for n in ("B05", "B8A", "B11")}},
    )
    assert layered.from_source == ("bands", "dtype", "nodata")
    adapter = _adapter(layered)
    filled = adapter.check()
    assert adapter.recipe is layered  # check() returns the filled recipe, changes nothing
    assert (filled.bands, filled.dtype, filled.nodata) == (("B05", "B8A", "B11"), "uint16", None)
    assert filled.from_source == ()

    dem = _adapter(_bare(tmp_path, params={"inputs": str(shared_data / ROME)}))
    dem = _adapter(dem.check())
    assert (dem.recipe.bands, dem.recipe.dtype, dem.recipe.nodata) == (("b1",), "int16", -32768)
    chip = dem.render_tile(ROME_TILE, (str(shared_data / ROME),))
    assert chip.band_names == ("b1",) and chip.data.dtype == "int16"

    described = _multiband(tmp_path / "rgb.tif", ("red", "green", "blue"))
    rgb = _adapter(_adapter(_bare(tmp_path, params={"inputs": str(described)})).check())
    assert (rgb.recipe.bands, rgb.recipe.dtype, rgb.recipe.nodata) == (
        ("red", "green", "blue"), "uint8", 7.0,
    )  # fmt: skip
    picked = _adapter(_bare(tmp_path, params={"inputs": str(described), "band_indexes": [3, 1]}))
    assert picked.check().bands == ("blue", "red")
    plain = _multiband(tmp_path / "plain.tif", (None, None))
    anonymous = _adapter(_bare(tmp_path, params={"inputs": str(plain)}))
    assert anonymous.check().bands == ("b1", "b2")


def test_defaults_that_cannot_be_decided_are_asked_for(tmp_path: Path, shared_data: Path) -> None:
    mixed = _bare(
        tmp_path,
        params={"inputs": [str(shared_data / ROME), str(shared_data / "s2/s2_B05.jp2")]},
    )
    with pytest.raises(ConfigError, match=r"hold int16, uint16 values; set dtype"):
        _adapter(mixed).check()
    remote = _bare(tmp_path, params={"inputs": "https://example.invalid/a.tif"})
    with pytest.raises(ConfigError, match=r"leaves out bands, dtype, nodata.*remote"):
        _adapter(remote).check()
    # sum adds pixels up: the float32 of before, not the files' int16
    summed = _adapter(_bare(tmp_path, resampling="sum", params={"inputs": str(shared_data / ROME)}))
    assert summed.check().dtype == "float32"
    # the recipe's own nodata outside the files' type: float32 too
    own = _adapter(_bare(tmp_path, nodata=-99999, params={"inputs": str(shared_data / ROME)}))
    filled = own.check()
    assert (filled.dtype, filled.nodata) == ("float32", -99999)


def test_sources_that_cannot_read_their_inputs_up_front_still_need_bands(tmp_path: Path) -> None:
    recipe = parse_recipe({"source": "fake-synthetic", "resolution": 448}, "t", tmp_path / "f.yaml")
    with pytest.raises(ConfigError, match="key 'bands': is required"):
        check_recipe(recipe)  # the parser imports no source: the source refuses it


def test_missing_sample_data_says_which_variable_moves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package has no ../shared/data beside it: the error says where it looked
    and which variable points elsewhere."""
    monkeypatch.delenv("M3LEO_SHARED_DATA", raising=False)
    recipe = _recipe(tmp_path, params={"inputs": "${M3LEO_SHARED_DATA:-../nowhere}/dem/x.tif"})
    with pytest.raises(ConfigError, match=r"because \$M3LEO_SHARED_DATA is not set; set "):
        _adapter(recipe).check()
    monkeypatch.setenv("M3LEO_SHARED_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError) as caught:
        _adapter(recipe).check()
    assert "is not set" not in str(caught.value)
