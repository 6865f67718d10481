"""Options the recipe's source would ignore are refused before any work, for every source.

``--ee-concurrency`` on a raster recipe, ``--search-results`` outside gunw, ``--source`` on an
Earth Engine recipe and ``--year`` on data that has no year did nothing and said nothing: the
user believed the option applied (``srtm-2020`` was a copy of ``srtm``). Now: one line, exit 2,
naming the source that has the option; the same from Python (ConfigError).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.fetch.api import fetch
from m3leo_tiles.recipes import load_recipe
from m3leo_tiles.sources.base import FetchOptions, check_run_options, get_source


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the demo grid is made under ./grids
    return tmp_path


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["demo-dem", "--ee-concurrency", "5"],
         ["--ee-concurrency does not apply to recipe demo-dem (source raster)",
          "an option of source earthengine"]),
        (["demo-dem", "--search-results", "saved.geojson"],
         ["--search-results does not apply to recipe demo-dem", "an option of source gunw"]),
        (["srtm", "--ee-url", "http://127.0.0.1:9", "--search-results=s.geojson"],
         ["--search-results does not apply to recipe srtm (source earthengine)"]),
        (["esawc", "--source", "/tmp"], ["--source does not apply to recipe esawc"]),
    ],
)  # fmt: skip
def test_an_option_of_another_source_is_refused(capsys, in_tmp, args, needles) -> None:
    code, _, err = call_cli(capsys, "fetch", *args, "--aoi", "demo", "--out", "data")
    assert_one_error_line(code, err, *needles)
    assert not (in_tmp / "data").exists()  # before any work


@pytest.mark.parametrize(
    ("recipe", "why"),
    [("demo-dem", "no {year} in its inputs"), ("srtm", "the single image CGIAR/SRTM90_V4"),
     ("esawc", "of all of ESA/WorldCover/v100")],
)  # fmt: skip
def test_year_on_data_without_a_year_is_refused_alike_for_every_source(
    capsys, in_tmp, recipe, why
) -> None:
    code, _, err = call_cli(capsys, "fetch", recipe, "--year", "2020", "--aoi", "demo")
    line = assert_one_error_line(code, err, f"recipe {recipe!r} does not depend on the year")
    assert why in line and f"a second copy of the same dataset ({recipe}-2020)" in line
    assert not (in_tmp / "data").exists()


def test_the_python_api_refuses_the_same(in_tmp) -> None:
    with pytest.raises(ConfigError, match="it is an option of source earthengine"):
        fetch("demo-dem", aoi="demo", options={"ee-concurrency": 5}, progress=False)
    with pytest.raises(ConfigError, match=r"--no-such-thing .* an option of no source"):
        fetch("demo-dem", aoi="demo", options={"no-such-thing": 1}, progress=False)
    assert not (in_tmp / "data").exists()


@pytest.mark.parametrize(
    ("recipe", "options"),
    [("s2srm", FetchOptions(year=2020, extra={"ee-concurrency": "5", "high-volume": True})),
     ("modisveg", FetchOptions(year=2019)),
     ("gunw", FetchOptions(year=2020, sources=("/x",), extra={"search-results": "s.json"}))],
)  # fmt: skip
def test_options_a_source_declares_pass(recipe: str, options: FetchOptions) -> None:
    loaded = load_recipe(recipe)
    check_run_options(get_source(loaded.source)(loaded, options))  # no error
