"""Recipes load from YAML with errors that name the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.recipes import list_recipes, load_recipe, parse_recipe
from m3leo_tiles.sources.base import FetchOptions, check_recipe, get_source

GOOD = {
    "name": "mine",
    "source": "raster",
    "resolution": 89.6,
    "bands": ["elevation"],
    "params": {"inputs": "dem.tif"},
}


def write(tmp_path: Path, data, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_every_shipped_recipe_loads_and_is_listed() -> None:
    infos = {info.name: info for info in list_recipes()}
    assert {"agb", "ghsbuilts", "demo-dem", "demo-s1", "demo-s2", "demo-landcover"} <= set(infos)
    for info in infos.values():
        assert not info.description.startswith("INVALID"), info
        recipe = load_recipe(info.name)
        assert recipe.description and (recipe.bands or recipe.bands_per_tile)
    assert infos["agb"].origin == "built-in" and infos["demo-s2"].origin == "example"
    assert infos["agb"].builtin and infos["demo-s2"].builtin
    ghs = load_recipe("ghsbuilts")
    assert ghs.resampling == "sum" and ghs.resolution == 89.6


def test_load_by_path_and_user_dir(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, GOOD)
    assert load_recipe(path).name == "mine"
    monkeypatch.setenv("M3LEO_RECIPES_PATH", str(tmp_path))
    assert load_recipe("mine").path == str(path.resolve())
    assert any(i.name == "mine" and i.origin == "user" and not i.builtin for i in list_recipes())
    write(tmp_path, {**GOOD, "name": "renamed"}, "file-name.yaml")
    assert load_recipe("renamed").path == str((tmp_path / "file-name.yaml").resolve())


def test_example_recipes_plan_the_sample_data_and_follow_the_env_var(
    shared_data: Path, monkeypatch, tmp_path: Path
) -> None:
    """Examples find ../shared/data by default, or wherever M3LEO_SHARED_DATA points."""
    from m3leo_tiles.grid.tile import Tile

    tile = Tile.from_point(6.6, 0.25)
    monkeypatch.delenv("M3LEO_SHARED_DATA", raising=False)
    recipe = load_recipe("demo-landcover")
    assert recipe.resampling == "mode" and recipe.dtype == "uint8" and recipe.nodata == 0
    (planned,) = get_source("raster")(recipe).plan([tile])[tile.identifier]
    assert Path(planned).samefile(shared_data / "landcover" / Path(planned).name)
    elsewhere = tmp_path / "landcover"
    elsewhere.mkdir()
    (elsewhere / Path(planned).name).symlink_to(planned)
    monkeypatch.setenv("M3LEO_SHARED_DATA", str(tmp_path))
    assert get_source("raster")(recipe).plan([tile])[tile.identifier] == (
        str(elsewhere / Path(planned).name),
    )


def test_builtin_recipes_plan_the_public_products_without_network() -> None:
    from m3leo_tiles.grid.tile import Tile

    tile = Tile.from_point(-95.0, 35.0)
    agb = get_source("raster")(load_recipe("agb"), FetchOptions(year=2019))
    ceda = "/vsicurl/https://dap.ceda.ac.uk/neodc/esacci/biomass/data/agb/maps/v5.01/geotiff/2019"
    assert agb.plan([tile])[tile.identifier] == (
        f"agb={ceda}/N40W100_ESACCI-BIOMASS-L4-AGB-MERGED-100m-2019-fv5.0.tif",
        f"agb_sd={ceda}/N40W100_ESACCI-BIOMASS-L4-AGB_SD-MERGED-100m-2019-fv5.0.tif",
    )
    ghs = get_source("raster")(load_recipe("ghsbuilts"), FetchOptions(year=1990))
    (zipped,) = ghs.plan([tile])[tile.identifier]
    assert zipped.startswith("/vsizip//vsicurl/https://jeodpp.jrc.ec.europa.eu/ftp/jrc-opendata/")
    assert zipped.endswith(
        "GHS_BUILT_S_E1990_GLOBE_R2023A_54009_100_V1_0.zip/"
        "GHS_BUILT_S_E1990_GLOBE_R2023A_54009_100_V1_0.tif"
    )


def test_unknown_recipe_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*agb.*ghsbuilts"):
        load_recipe("nope")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resolutoin": 10}, r"key 'resolutoin': unknown key; allowed keys"),
        ({"resolution": None}, r"key 'resolution': None is not a number"),
        ({"resolution": 30}, r"key 'resolution'.*does not divide the 4480 m"),
        ({"resampling": "cubicx"}, r"key 'resampling': 'cubicx' is not one of nearest, mode"),
        ({"dtype": "float16"}, r"key 'dtype': 'float16' is not one of"),
        ({"dtype": "uint8", "nodata": -9999}, r"key 'nodata': -9999 does not fit dtype uint8"),
        ({"bands": []}, r"key 'bands': must be a non-empty list"),
        ({"bands": ["a", "a"]}, r"key 'bands': band names must be unique"),
        ({"source": "gee-nope"}, r"key 'source': 'gee-nope' is not one of .*raster"),
        ({"params": {"inputs": "a.tif", "colour": 1}}, r"key 'params.colour': unknown raster"),
        ({"params": {"inputs": "a.tif", "layers": {}}}, r"either 'inputs' or 'layers'"),
        ({"windows": [{"name": "w", "start": "13-01", "end": "02-28"}]}, r"is not MM-DD"),
        ({"default_year": "2020"}, r"key 'default_year': '2020' is not a year"),
        ({"license": "CC BY 4.0"}, r"key 'license': 'CC BY 4.0' is not an SPDX licence id"),
        ({"compress": "jpeg"}, r"key 'compress': 'jpeg' is not one of zstd, deflate, lzw, none"),
    ],
)
def test_invalid_recipes_name_file_key_and_what_is_allowed(
    tmp_path: Path, change: dict, message: str
) -> None:
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError, match=message) as caught:
        check_recipe(load_recipe(path))  # params: checked by the source, after parsing
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_required_key(tmp_path: Path) -> None:
    data = dict(GOOD)
    del data["resolution"]  # (bands may be left out for the raster source: read from the files)
    with pytest.raises(ConfigError, match=r"key 'resolution': is required"):
        load_recipe(write(tmp_path, data))


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "source: raster\nbands: [unclosed\nresolution: 10\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: line \d+: invalid YAML"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "absent.yaml")


def test_year_placeholder_needs_a_year(tmp_path: Path) -> None:
    agb = load_recipe("agb")
    filled = get_source("raster")(agb, FetchOptions(year=2019)).layers()
    assert all("2019" in spec and "{year}" not in spec for layer in filled for spec in layer.specs)
    no_default = parse_recipe(
        {**GOOD, "params": {"inputs": "x_{year}.tif"}}, "test", tmp_path / "r.yaml"
    )
    with pytest.raises(ConfigError, match="--year"):
        get_source("raster")(no_default, FetchOptions()).layers()


def test_recipe_hash_follows_content_not_location(tmp_path: Path) -> None:
    here = parse_recipe(GOOD, "a", tmp_path / "a" / "mine.yaml")
    there = parse_recipe(GOOD, "b", tmp_path / "b" / "mine.yaml")
    changed = parse_recipe({**GOOD, "params": {"inputs": "other.tif"}}, "c", tmp_path / "c.yaml")
    assert here.recipe_hash == there.recipe_hash != changed.recipe_hash
    assert here.dataset_name(2020) == "mine-2020" and here.dataset_name(None) == "mine"


@pytest.mark.parametrize(("name", "licence"), [("gssic", "CC-BY-4.0"), ("esawc", "CC-BY-4.0")])
def test_license_is_descriptive_and_never_changes_the_hash(name: str, licence: str) -> None:
    """Adding ``license:`` to a built-in recipe must not make every chip it made stale."""
    builtin = load_recipe(name)
    assert builtin.license == licence
    data = yaml.safe_load(Path(builtin.path).read_text(encoding="utf-8"))
    del data["license"]
    without = parse_recipe(data, "the same recipe without its licence", Path(builtin.path))
    assert without.license == ""
    assert without.recipe_hash == builtin.recipe_hash
    other = parse_recipe({**data, "license": "CC0-1.0"}, "another", Path(builtin.path))
    assert other.recipe_hash == builtin.recipe_hash


def test_the_codec_is_how_chips_are_stored_not_part_of_the_hash(tmp_path: Path) -> None:
    plain = parse_recipe(GOOD, "a", tmp_path / "mine.yaml")
    stored = {c: parse_recipe({**GOOD, "compress": c}, "b", tmp_path / "mine.yaml") for c in
              ("zstd", "deflate", "lzw", "none")}  # fmt: skip
    assert plain.compress is None
    assert [str(r.compress) for r in stored.values()] == list(stored)
    assert {r.recipe_hash for r in stored.values()} == {plain.recipe_hash}
    assert all(r == plain for r in stored.values())  # a rerun sees the same recipe


def test_builtin_codecs_by_measured_gain() -> None:
    """Speckled SAR floats gain too little from lossless compression (zstd keeps 87 % of the
    bytes, bench/RESULTS.md "chip codecs") for the ~10x slower decode: s1grd is stored
    uncompressed; kinds that compress well keep the default (zstd). The key is how chips are
    stored, so it leaves the hash of chips already made as it was."""
    assert load_recipe("s1grd").compress == "none"
    for name in ("s2srm", "esawc", "gssic", "gunw", "srtm"):
        assert load_recipe(name).compress is None, name
    builtin = load_recipe("s1grd")
    data = yaml.safe_load(Path(builtin.path).read_text(encoding="utf-8"))
    del data["compress"]
    without = parse_recipe(data, "s1grd without its codec", Path(builtin.path))
    assert without.compress is None
    assert without.recipe_hash == builtin.recipe_hash
