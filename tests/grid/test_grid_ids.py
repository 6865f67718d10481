"""Tile ids and AOI names from foreign grid files become file names: unsafe ones are refused.

Issue #8 item 1: ``../../evil`` wrote ``evil.tif`` outside the dataset folder, ``a/b`` failed
with FileNotFoundError and a null id wrote ``None.tif``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.errors import GridError
from m3leo_tiles.core.names import is_safe_name
from m3leo_tiles.grid import read_grid


def _grid(path: Path, ids: list[object], aoi: str | None = None) -> Path:
    features = []
    for n, ident in enumerate(ids):
        west = 10.0 + n * 0.05
        props = {"identifier": ident}
        if aoi is not None:
            props["aoi"] = aoi
        features.append(
            {
                "type": "Feature",
                "properties": props,
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [
                        [[west, 45.0], [west + 0.04, 45.0], [west + 0.04, 45.04], [west, 45.0]]
                    ],
                },
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("../../evil", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        (None, "null"),
        ("", "empty"),
        (".hidden", "safe file name"),
        ("tile 7", "safe file name"),
        ("x" * 200, "longer than"),
    ],
)
def test_unsafe_ids_are_refused_naming_id_and_row(tmp_path: Path, bad: object, why: str) -> None:
    path = _grid(tmp_path / "foreign.geojson", ["ok-1", "ok_2", bad])
    with pytest.raises(GridError, match="row 3") as caught:
        read_grid(path)
    assert why in str(caught.value) and repr(bad)[:30] in str(caught.value)


def test_duplicate_ids_name_both_rows_even_when_only_case_differs(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="row 3 repeats the id in row 1"):
        read_grid(_grid(tmp_path / "g.geojson", ["Tile-A", "b", "tile-a"]))


def test_safe_foreign_ids_and_lattice_ids_are_read(tmp_path: Path) -> None:
    grid = read_grid(_grid(tmp_path / "g.geojson", ["a1b2c3", "33N_1187_089", "tile-7.v2", 42]))
    assert [t.identifier for t in grid.tiles] == ["a1b2c3", "33N_1187_089", "tile-7.v2", "42"]


def test_unsafe_aoi_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GridError, match=r"AOI name '\.\./\.\./x'"):
        read_grid(_grid(tmp_path / "g.geojson", ["a"], aoi="../../x"))


def test_names() -> None:
    assert is_safe_name("33N_1187_089") and is_safe_name("demo-dem-2020")
    assert not any(map(is_safe_name, ["..", "../x", "a/b", "", " ", None, ".x", "é"]))


def test_fetch_with_an_unsafe_id_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "source: fake-synthetic\nresolution: 448\nbands: [v]\ndtype: uint8\nnodata: 0\n"
    )

    grid = _grid(tmp_path / "evil.geojson", ["fine", "../../evil"])
    code, _, err = call_cli(capsys, "fetch", recipe, "--grid", grid, "--out", tmp_path / "data")
    assert_one_error_line(code, err, "'../../evil'", "row 2")
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.rglob("*.tif"))


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".hidden"])
def test_a_recipe_name_cannot_be_a_path(tmp_path: Path, name: str) -> None:
    from m3leo_tiles.core.errors import ConfigError
    from m3leo_tiles.recipes import load_recipe_file

    path = tmp_path / "r.yaml"
    path.write_text(
        json.dumps({"name": name, "source": "raster", "resolution": 448, "bands": ["v"]})
    )
    with pytest.raises(ConfigError, match="key 'name'"):
        load_recipe_file(path)


def test_band_names_never_become_paths(tmp_path: Path) -> None:
    """Band and layer names are written as band descriptions only, never joined to a path."""
    from m3leo_tiles.fetch.worker import Batch, render_batch
    from m3leo_tiles.grid.tile import Tile
    from m3leo_tiles.recipes import Recipe
    from m3leo_tiles.sources.base import get_source

    recipe = Recipe(name="r", source="fake-synthetic", resolution=448,
                    bands=("../../evil", "/etc/x"), dtype="uint8", nodata=0)  # fmt: skip
    folder = tmp_path / "out" / "aoi" / "r"
    folder.mkdir(parents=True)
    tile = Tile.from_point(12.5, 42.0)
    adapter = get_source("fake-synthetic")(recipe)
    (row,) = render_batch(adapter, Batch(str(folder), ((tile, ("fake://0",)),)))
    assert row.status == "ok"
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()] == [
        Path("out/aoi/r") / f"{tile.identifier}.tif"
    ]
