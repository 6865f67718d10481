"""Recipes a user writes (issue #8): their own files win over shipped ones of the same name,
`recipes` says where each name comes from, and a key given twice is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.recipes import builtin_recipes_dir, list_recipes, load_recipe, load_recipe_file


def _own_agb(folder: Path) -> Path:
    (folder / "recipes").mkdir(parents=True)
    mine = folder / "recipes" / "agb.yaml"
    shutil.copy(builtin_recipes_dir() / "agb.yaml", mine)
    text = mine.read_text().replace("default_year: 2020", "default_year: 2019")
    mine.write_text(text)
    return mine


def test_a_users_recipe_shadows_the_builtin_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = _own_agb(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert load_recipe("agb").default_year == 2019
    (info,) = [i for i in list_recipes() if i.name == "agb"]
    assert info.path == mine and info.origin == "user"
    assert info.shadows == (builtin_recipes_dir() / "agb.yaml",)
    code, out, _ = call_cli(capsys, "recipes")
    assert code == 0
    lines = out.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("agb "))
    assert lines[at + 1].split() == ["from", "recipes/agb.yaml"]
    assert "hides" in lines[at + 2] and str(builtin_recipes_dir() / "agb.yaml") in lines[at + 2]


def test_a_user_recipe_named_like_a_builtin_by_its_name_key_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "my-biomass.yaml").write_text(
        "name: agb\nsource: raster\nresolution: 448\nbands: [v]\nparams: {inputs: x.tif}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert load_recipe("agb").path == str(tmp_path / "recipes" / "my-biomass.yaml")


def test_a_key_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("source: raster\nresolution: 448\nnodata: 1\nbands: [v]\nnodata: 2\n")
    with pytest.raises(ConfigError, match=r"line 5.*'nodata' is given twice"):
        load_recipe_file(path)
    nested = tmp_path / "n.yaml"
    nested.write_text(
        "source: raster\nresolution: 448\nbands: [v]\nparams:\n  inputs: a.tif\n  inputs: b.tif\n"
    )
    with pytest.raises(ConfigError, match="'inputs' is given twice"):
        load_recipe_file(nested)
    code, _, err = call_cli(capsys, "fetch", path, "--grid", tmp_path / "none.geojson")
    assert_one_error_line(code, err, "given twice")
