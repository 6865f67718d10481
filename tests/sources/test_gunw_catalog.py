"""GUNW search results and pair selection: baseline cut, year, version dedupe, footprints.

Search results come from the real asf-search client: the real ARIA S1 GUNW record that
asf-search's own tests replay (../shared/data/asf/ARIAS1-GUNW_response.yml) turned into an
``ARIAS1GUNWProduct`` and written by ``ASFSearchResults.geojson()``, and records derived from
it for pairs formed from the real acquisition dates of ARIA frame 5289 (the 342-scene stack in
../shared/data/asf). Expected selections are computed from the dates by the rule itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import asf_search
import pytest
import shapely
from asf_search.search.search_generator import as_ASFProduct

from helpers.asf_loopback import derived_gunw_item, item_polygon, real_gunw_item, stack_dates
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.sources.gunw import _gunw_catalog as catalog

REAL_NAME = "S1-GUNW-A-R-035-tops-20240816_20230717-020815-00124W_00037N-PP-cf9c-v3_0_1"


@pytest.fixture(scope="module")
def real_item(shared_data):
    return real_gunw_item(shared_data)


@pytest.fixture(scope="module")
def frame_dates(shared_data):
    return stack_dates(shared_data)


def _name(
    reference: dt.date,
    secondary: dt.date,
    version: str = "3_0_1",
    track: int = 35,
    direction: str = "A",
    place: str = "00124W_00037N",
) -> str:
    return (
        f"S1-GUNW-{direction}-R-{track:03d}-tops-{reference:%Y%m%d}_{secondary:%Y%m%d}-"
        f"020815-{place}-PP-{abs(hash((reference, secondary, version))) % 9999:04x}-"
        f"v{version}"
    )


def _geojson(items: list[dict]) -> dict:
    """What ``ASFSearchResults.geojson()`` writes for these CMR items (the real client)."""
    session = asf_search.ASFSession()
    products = asf_search.ASFSearchResults([as_ASFProduct(i, session=session) for i in items])
    return json.loads(json.dumps(products.geojson()))


def test_the_real_record_parses_as_asf_search_writes_it(real_item):
    [product] = catalog.parse_results(_geojson([real_item]), "test")
    assert product.name == REAL_NAME
    assert product.file_name == REAL_NAME + ".nc"
    assert product.url.endswith(REAL_NAME + ".nc")
    assert product.size == 136887876  # the record's netCDF-4 SizeInBytes
    assert (product.reference, product.secondary) == (dt.date(2024, 8, 16), dt.date(2023, 7, 17))
    assert product.baseline_days == 396
    assert (product.direction, product.track, product.frame) == ("ascending", 35, "5289")
    assert product.version == (3, 0, 1)
    assert product.footprint().equals_exact(item_polygon(real_item), 1e-9)


def test_a_signed_url_leaves_its_query_out_of_the_file_name(real_item):
    """asf-search makes ``fileName`` from the URL's text, query and all; a saved search may
    have only the URL: either way the product's file name (cache, manifest, tags) is the
    URL path's last part, without the signature."""
    import copy

    item = copy.deepcopy(real_item)
    for url in item["umm"]["RelatedUrls"]:
        if url["Type"] == "GET DATA":
            url["URL"] += "?X-Amz-Signature=ff00aa&X-Amz-Credential=AKIA%2F2020"
    saved = _geojson([item])
    [product] = catalog.parse_results(saved, "test")
    assert product.file_name == REAL_NAME + ".nc" and "X-Amz-Signature=ff00aa" in product.url
    del saved["features"][0]["properties"]["fileName"]
    [product] = catalog.parse_results(saved, "test")
    assert product.file_name == REAL_NAME + ".nc"


def test_pairs_from_the_real_stack_dates(real_item, frame_dates):
    """Nearest 1-4 neighbours (as ARIA pairs them) of the frame's real acquisitions."""
    dates = [d for d in frame_dates if dt.date(2019, 10, 1) <= d <= dt.date(2021, 1, 31)]
    footprint = item_polygon(real_item)
    items, pairs = [real_item], []
    for i, reference in enumerate(dates):
        for secondary in dates[max(0, i - 4) : i]:
            pairs.append((reference, secondary))
            name = _name(reference, secondary)
            items.append(derived_gunw_item(real_item, name, footprint, 1000, "0" * 32, 5289))
    products = catalog.parse_results(_geojson(items), "test")
    selected = catalog.select_pairs(products, 2020, 72)
    expected = sorted((r, s) for r, s in pairs if r.year == 2020 and (r - s).days < 72)
    assert sorted((p.reference, p.secondary) for p in selected) == expected
    assert len(expected) > 100  # the real 6/12-day cadence of 2020 gives many pairs
    assert any(s.year == 2019 for _, s in expected)  # a pair belongs to its reference's year
    assert all(p.name != REAL_NAME for p in selected)  # 396 days, and 2024


def test_baseline_cut_is_strictly_under(real_item):
    footprint = item_polygon(real_item)
    reference = dt.date(2020, 6, 1)
    items = [
        derived_gunw_item(
            real_item,
            _name(reference, reference - dt.timedelta(days=d)),
            footprint,
            10,
            "0" * 32,
            5289,
        )
        for d in (6, 71, 72, 73)
    ]
    products = catalog.parse_results(_geojson(items), "test")
    assert sorted(p.baseline_days for p in catalog.select_pairs(products, 2020, 72)) == [6, 71]
    assert sorted(p.baseline_days for p in catalog.select_pairs(products, 2020, 73)) == [6, 71, 72]


def test_newest_version_of_each_pair_and_frame(real_item):
    footprint = item_polygon(real_item)
    reference, secondary = dt.date(2020, 3, 4), dt.date(2020, 2, 27)
    versions = ["2_0_4", "3_0_1", "2_0_5"]
    items = [
        derived_gunw_item(real_item, _name(reference, secondary, v), footprint, 10, "0" * 32, 5289)
        for v in versions
    ]
    # the same dates on another frame and on a descending track are other products
    other_frame = _name(reference, secondary, "2_0_4", place="00123W_00039N")
    items.append(derived_gunw_item(real_item, other_frame, footprint, 10, "0" * 32, 5290))
    items.append(
        derived_gunw_item(
            real_item, _name(reference, secondary, "2_0_4", 71, "D"), footprint, 10, "0" * 32, 5289
        )
    )
    selected = catalog.select_pairs(catalog.parse_results(_geojson(items), "t"), 2020, 72)
    assert sorted((p.direction, p.track, p.frame, p.version_text) for p in selected) == [
        ("ascending", 35, "5289", "3.0.1"),
        ("ascending", 35, "5290", "2.0.4"),
        ("descending", 71, "5289", "2.0.4"),
    ]


def test_tiles_get_the_products_whose_footprint_intersects_them(real_item):
    footprint = item_polygon(real_item)  # the real frame 5289 outline (northern California)
    inside = Tile.from_point(-122.0, 38.0)
    outside = Tile.from_point(-118.0, 34.0)  # Los Angeles: another frame
    notch = Tile.from_point(-121.3, 37.22)  # in the frame's bounding box, not in its outline
    assert footprint.envelope.contains(shapely.Point(-121.3, 37.22))
    assert not footprint.intersects(notch.lonlat_polygon())
    items = [
        derived_gunw_item(
            real_item,
            _name(dt.date(2020, 1, 28), dt.date(2020, 1, 16)),
            footprint,
            10,
            "0" * 32,
            5289,
        )
    ]
    products = catalog.select_pairs(catalog.parse_results(_geojson(items), "t"), 2020, 72)
    assigned = catalog.assign(products, [inside, outside, notch])
    assert assigned[inside.identifier] == (products[0].file_name,)
    assert assigned[outside.identifier] == ()
    assert assigned[notch.identifier] == ()


def test_search_boxes_cover_every_tile_in_few_requests():
    tiles = [
        Tile.from_point(lon, lat) for lon in (-117.5, -117.4, -75.6, 12.5) for lat in (35.0, 35.05)
    ]
    cells = catalog.search_cells(tiles, 2.0)
    assert [name for name, _ in cells] == ["W118_N34_2", "W76_N34_2", "E12_N34_2"]
    union = shapely.union_all([cell for _, cell in cells])
    assert all(union.covers(t.lonlat_polygon()) for t in tiles)
    straddling = Tile.from_point(-118.0, 34.0)  # on a cell corner: all four cells
    assert len(catalog.search_cells([straddling], 2.0)) == 4


def test_saved_search_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read saved search"):
        catalog.load_results(tmp_path / "missing.geojson")
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        catalog.load_results(tmp_path / "bad.geojson")
    (tmp_path / "list.geojson").write_text("[]")
    with pytest.raises(ConfigError, match="not a saved search"):
        catalog.load_results(tmp_path / "list.geojson")


def test_non_gunw_features_are_skipped(shared_data, real_item):
    from helpers.asf_loopback import load_recording

    s1 = load_recording(shared_data / "asf" / "S1_response.yml")
    data = _geojson([real_item, {"meta": s1["meta"], "umm": s1["umm"]}])
    assert len(data["features"]) == 2
    assert [p.name for p in catalog.parse_results(data, "t")] == [REAL_NAME]


def test_raiders_real_v2_product_is_parsed_and_superseded_by_v3(shared_data, real_item):
    """RAiDER's real metadata of a v2_0_4 product (track 64, over Los Angeles) as a record."""
    meta = json.loads(next((shared_data / "asf").glob("S1-GUNW-*-v2_0_4.json")).read_text())
    footprint = shapely.geometry.shape(meta["location"])
    v2 = meta["label"]
    v3 = v2.replace("-PP-6267-v2_0_4", "-PP-7a1f-v3_0_1")
    items = [
        derived_gunw_item(real_item, name, footprint, 10, "0" * 32, 24900) for name in (v2, v3)
    ]
    products = catalog.parse_results(_geojson(items), "t")
    old = next(p for p in products if p.name == v2)
    assert (old.reference, old.secondary) == (dt.date(2021, 7, 23), dt.date(2021, 7, 11))
    assert old.baseline_days == meta["metadata"]["temporal_baseline_days"] == 12
    assert (old.direction, old.track) == (meta["metadata"]["orbit_direction"], 64)
    [kept] = catalog.select_pairs(products, 2021, 72)
    assert kept.name == v3
    la = Tile.from_point(-118.0, 34.0)  # the demo AOI's Los Angeles box lies in this track
    assert catalog.assign([kept], [la])[la.identifier] == (kept.file_name,)


def test_a_damaged_file_fails_the_checksum_of_the_search(real_item, tmp_path):
    [product] = catalog.parse_results(_geojson([real_item]), "t")
    assert product.md5 == "1da292d57037f6a3aabcbe2f0e513a5b"  # the record's netCDF-4 checksum
    path = tmp_path / product.file_name
    path.write_bytes(b"not the product")
    with pytest.raises(ValueError, match="MD5"):
        catalog.check_md5(path, product.md5)
    catalog.check_md5(path, hashlib.md5(b"not the product").hexdigest())
