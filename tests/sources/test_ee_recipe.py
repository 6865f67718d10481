"""Earth Engine recipe params: validation, date windows, output names, request splitting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.sources.earthengine._ee_recipe import Window, band_chunks, parse_params

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
EE_RECIPES = ["s1grd", "s2srm", "esawc", "srtm", "modisveg", "examples/landsat8-summer"]


def _recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", EE_RECIPES)
def test_shipped_recipes_make_exactly_their_bands(name: str) -> None:
    data = _recipe(name)
    params = parse_params(data["params"], name)
    made = params.check_bands(data["bands"], name)
    assert sorted(made) == sorted(data["bands"])


def test_paper_recipes_have_the_papers_bands() -> None:
    s1 = _recipe("s1grd")
    assert len(s1["bands"]) == 16 and "winter_vvasc" in s1["bands"]
    assert {b.split("_")[0] for b in s1["bands"]} == {"winter", "spring", "summer", "fall"}
    # the paper's tool's spellings (fall, des), so band lists of the released dataset work here
    assert "fall_vhdes" in s1["bands"] and parse_params(s1["params"], "s1grd").reducer == "mean"
    assert s1["bands"][:4] == ["winter_vvasc", "winter_vvdes", "winter_vhasc", "winter_vhdes"]
    s2 = parse_params(_recipe("s2srm")["params"], "s2srm")
    expected = ["B2", "B3", "B4", "B8", "B5", "B6", "B7", "B8A", "B11", "B12"]
    assert [b for b, _ in s2.bands] == expected
    assert s2.collection == "COPERNICUS/S2_SR_HARMONIZED" and s2.reducer == "mean"
    (mask,) = s2.masks
    assert (mask.linked, mask.band, mask.min) == ("GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED",
                                                  "cs_cdf", 0.6)  # fmt: skip
    assert _recipe("srtm")["resolution"] == 89.6 and _recipe("modisveg")["resolution"] == 224
    assert _recipe("esawc")["resampling"] == "nearest"


def test_windows_are_end_exclusive_and_winter_starts_the_year_before() -> None:
    s1 = parse_params(_recipe("s1grd")["params"], "s1grd")
    dates = {w.name: w.dates(2020) for w in s1.windows}
    assert dates["winter"] == (dt.date(2019, 12, 1), dt.date(2020, 3, 1))  # Feb 29 2020 inside
    assert dates["fall"] == (dt.date(2020, 9, 1), dt.date(2020, 12, 1))
    s2 = parse_params(_recipe("s2srm")["params"], "s2srm")
    months = {w.name: w.dates(2020) for w in s2.windows}
    assert months["mar"] == (dt.date(2020, 3, 1), dt.date(2020, 4, 1))
    assert months["dec"] == (dt.date(2020, 12, 1), dt.date(2021, 1, 1))
    assert [w.label(2020) for w in s2.windows] == ["2020-03", "2020-06", "2020-09", "2020-12"]
    year = Window("year", "01-01", "01-01")
    assert year.dates(2019) == (dt.date(2019, 1, 1), dt.date(2020, 1, 1))
    assert Window("winter", "12-01", "03-01", -1).label(2021) == (
        "winter (2020-12-01 to 2021-03-01)"
    )


def test_output_names_follow_the_template() -> None:
    params = parse_params(_recipe("s1grd")["params"], "s1grd")
    names = [o.name for o in params.outputs()]
    assert names[:4] == ["winter_vvasc", "winter_vhasc", "winter_vvdes", "winter_vhdes"]
    first = params.outputs()[0]
    assert (first.band, first.group, first.window.name) == ("VV", "asc", "winter")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"collection": None}, r"exactly one of collection"),
        ({"image": "CGIAR/SRTM90_V4"}, r"exactly one of collection"),
        ({"bands": []}, r"params.bands"),
        ({"reducer": "average"}, r"'average' is not one of"),
        ({"windows": [{"name": "m", "start": "02-30", "end": "03-01"}]}, r"not a date"),
        ({"windows": [{"name": "m", "start": "3-1", "end": "04-01"}]}, r"not a date"),
        ({"windows": [{"name": "m", "start": "03-01"}]}, r"needs name, start, end"),
        ({"filters": [{"property": "x", "like": 1}]}, r"one OP of"),
        ({"masks": [{"band": "cs"}]}, r"keeps every pixel"),
        ({"masks": [{"band": "QA", "bits_zero": [40]}]}, r"bit numbers"),
        ({"band_scale": {"B99": 2}}, r"band_scale"),
        ({"names": "{band}"}, r"same name"),
        ({"names": "{window}_{colour}"}, r"template"),
        ({"cloud": 1}, r"unknown earthengine parameter"),
    ],
)
def test_bad_params_name_the_key(change: dict, message: str) -> None:
    params = {**_recipe("s2srm")["params"], **change}
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        parse_params(params, "my.yaml")


def test_recipe_bands_must_match_the_params() -> None:
    data = _recipe("s2srm")
    params = parse_params(data["params"], "s2srm")
    with pytest.raises(ConfigError, match=r"not made: mar_B1.*not listed: mar_B2"):
        params.check_bands(["mar_B1", *data["bands"][1:]], "s2srm")


def test_band_chunks_stay_under_the_limits() -> None:
    bytes_per_band = 448 * 448 * 8  # float64 at 10 m
    chunks = band_chunks(40, bytes_per_band, int(48 * 2**20 * 0.95), 1024)
    assert [len(c) for c in chunks] == [20, 20]
    assert [i for c in chunks for i in c] == list(range(40))
    assert band_chunks(40, 448 * 448 * 2, 48 * 2**20, 1024) == [range(0, 40)]
    many = band_chunks(2500, 1, 10**9, 1024)
    assert len(many) == 3 and max(len(c) for c in many) <= 1024
    assert [i for c in many for i in c] == list(range(2500))
