"""The STAC catalog of a dataset (tools/catalog.py, tools/stac.py): what it says, that the
ecosystem reads it (stac-geoparquet, pystac, odc-stac), and that a rerun rewrites only what
changed. Validation against the published JSON schemas is in test_catalog_schemas.py."""

from __future__ import annotations

import json
import shutil
import zlib
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import stac_geoparquet.arrow as sga
from affine import Affine

from helpers.chip_tree import SPLITS, TILES, ChipTree, gunw_pairs, make_chip_tree
from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.recipes import RECIPES_PATH_ENV
from m3leo_tiles.tools.catalog import dataset_period, write_catalog
from m3leo_tiles.tools.stac import odc_stac_config


@pytest.fixture
def tree(tmp_path: Path) -> ChipTree:
    return make_chip_tree(tmp_path)


def read_items(folder: Path) -> list[dict]:
    """The Items of items.parquet, as stac-geoparquet gives them back."""
    return list(sga.stac_table_to_items(pq.read_table(folder / "items.parquet")))


def pystac_items(folder: Path) -> list[pystac.Item]:
    """pystac Items with the chips' relative hrefs resolved against the dataset folder."""
    items = []
    for data in read_items(folder):
        item = pystac.Item.from_dict(data)
        for asset in item.assets.values():
            asset.href = str(folder / asset.href.removeprefix("./"))
        items.append(item)
    return items


def chip_pixels(folder: Path, identifier: str) -> tuple[np.ndarray, Affine]:
    with rasterio.open(folder / f"{identifier}.tif") as chip:
        return chip.read(), chip.transform


def test_items_read_back_with_stac_geoparquet_and_say_what_each_chip_is(tree: ChipTree) -> None:
    folder = tree.folder("s2x")
    report = write_catalog(folder, grids_dir=tree.grids_dir)
    items = read_items(folder)
    chips = sorted(p.stem for p in folder.glob("*.tif"))
    assert [item["id"] for item in items] == chips and report.items == len(chips) == 11
    splits = {t.identifier: s for t, s in zip(TILES, SPLITS, strict=True)}
    expected_split = {"train": "train", "val": "validate", "test": "test"}
    for item in items:
        pystac.Item.from_dict(item)  # a valid pystac Item
        _, transform = chip_pixels(folder, item["id"])
        props = item["properties"]
        assert props["proj:code"] == "EPSG:32633"
        assert props["proj:shape"] == [50, 50]
        assert Affine(*props["proj:transform"]) == transform
        tile = next(t for t in TILES if t.identifier == item["id"])
        assert props["proj:bbox"] == pytest.approx(list(tile.bounds))
        assert props["ml-aoi:split"] == expected_split[splits[item["id"]]]
        footprint = tile.lonlat_polygon()
        assert item["bbox"] == pytest.approx(list(footprint.bounds))
        asset = item["assets"]["chip"]
        assert asset["href"] == f"./{item['id']}.tif"
        assert asset["file:size"] == (folder / f"{item['id']}.tif").stat().st_size
        assert [b["name"] for b in asset["bands"]] == ["B2", "B3", "B4"]
        assert {b["data_type"] for b in asset["bands"]} == {"uint16"}
        assert {b["nodata"] for b in asset["bands"]} == {0}
    collection = json.loads((folder / "collection.json").read_text())
    assert collection["id"] == "tst-s2x"
    assert collection["summaries"]["ml-aoi:split"] == ["test", "train", "validate"]
    west, _south, _east, north = collection["extent"]["spatial"]["bbox"][0]
    assert west == min(i["bbox"][0] for i in items) and north == max(i["bbox"][3] for i in items)
    assert [b["name"] for b in collection["item_assets"]["chip"]["bands"]] == ["B2", "B3", "B4"]


def test_odc_stac_load_of_a_tile_on_its_own_grid_is_the_chip(tree: ChipTree) -> None:
    from odc.geo.geobox import GeoBox
    from odc.stac import load

    folder = tree.folder("s2x")
    write_catalog(folder, grids_dir=tree.grids_dir)
    collection = json.loads((folder / "collection.json").read_text())
    for item in pystac_items(folder)[:3]:
        props = item.properties
        geobox = GeoBox(
            tuple(props["proj:shape"]), Affine(*props["proj:transform"]), props["proj:code"]
        )
        loaded = load([item], geobox=geobox, bands=["B2", "B3", "B4"],
                      stac_cfg=odc_stac_config(collection))  # fmt: skip
        pixels, _ = chip_pixels(folder, item.id)
        for index, band in enumerate(("B2", "B3", "B4")):
            np.testing.assert_array_equal(loaded[band].values[0], pixels[index])


def test_odc_stac_load_of_several_items_of_one_zone_mosaics_them(tree: ChipTree) -> None:
    from odc.geo.geobox import GeoBox
    from odc.stac import load

    folder = tree.folder("s1x")
    write_catalog(folder, grids_dir=tree.grids_dir)
    collection = json.loads((folder / "collection.json").read_text())
    items = pystac_items(folder)
    assert len(items) == 11 and {i.properties["proj:code"] for i in items} == {"EPSG:32633"}
    xs = [i.properties["proj:bbox"][0] for i in items] + [
        i.properties["proj:bbox"][2] for i in items
    ]
    ys = [i.properties["proj:bbox"][1] for i in items] + [
        i.properties["proj:bbox"][3] for i in items
    ]
    size = items[0].properties["proj:transform"][0]
    width, height = round((max(xs) - min(xs)) / size), round((max(ys) - min(ys)) / size)
    geobox = GeoBox((height, width), Affine(size, 0, min(xs), 0, -size, max(ys)), "EPSG:32633")
    mosaic = load(items, geobox=geobox, bands=["vv", "vh"], groupby="collection",
                  stac_cfg=odc_stac_config(collection))  # fmt: skip
    assert mosaic["vv"].shape == (1, 60, 80)  # 3 x 4 tiles of 20 px, in one time slice
    for item in items:
        pixels, transform = chip_pixels(folder, item.id)
        row = round((max(ys) - transform.f) / size)
        col = round((transform.c - min(xs)) / size)
        for index, band in enumerate(("vv", "vh")):
            window = mosaic[band].values[0, row : row + 20, col : col + 20]
            np.testing.assert_array_equal(window, pixels[index])
    missing = TILES[2]  # no chip: the mosaic has nodata there
    row = round((max(ys) - missing.bounds[3]) / size)
    col = round((missing.bounds[0] - min(xs)) / size)
    assert (mosaic["vv"].values[0, row : row + 20, col : col + 20] == -9999).all()


def test_a_rerun_rewrites_only_what_changed(tree: ChipTree, tmp_path: Path) -> None:
    folder = tree.folder("agb-2020")
    first = write_catalog(folder, grids_dir=tree.grids_dir, json_items=True)
    assert (first.items, first.changed, first.json_items) == (11, 11, 11)
    item_files = sorted((folder / "items").glob("*.json"))
    assert len(item_files) == 11

    def stamps() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in (folder / "items").glob("*.json")}

    def catalog_stamps() -> tuple[int, int]:
        return tuple((folder / n).stat().st_mtime_ns for n in ("items.parquet", "collection.json"))

    before, catalog_before = stamps(), catalog_stamps()
    again = write_catalog(folder, grids_dir=tree.grids_dir)  # --json kept: items/ exists
    assert not again.written and (again.changed, again.json_items) == (0, 0)
    assert stamps() == before and catalog_stamps() == catalog_before

    gone = TILES[5].identifier
    shutil.move(folder / f"{gone}.tif", tmp_path / "away.tif")
    removed = write_catalog(folder, grids_dir=tree.grids_dir)
    assert (removed.items, removed.changed, removed.removed) == (10, 0, 1)
    assert not (folder / "items" / f"{gone}.json").exists()
    assert gone not in {i["id"] for i in read_items(folder)}
    assert {k: v for k, v in stamps().items()} == {
        k: v for k, v in before.items() if k != f"{gone}.json"
    }

    shutil.move(tmp_path / "away.tif", folder / f"{gone}.tif")
    back = write_catalog(folder, grids_dir=tree.grids_dir)
    assert (back.items, back.changed, back.removed, back.json_items) == (11, 1, 0, 1)
    after = stamps()
    assert {k: after[k] for k in before if k != f"{gone}.json"} == {
        k: v for k, v in before.items() if k != f"{gone}.json"
    }
    assert f"{gone}.json" in after
    collection = json.loads((folder / "collection.json").read_text())
    assert len([link for link in collection["links"] if link["rel"] == "item"]) == 11


def test_json_items_point_back_to_the_chip_and_the_collection(tree: ChipTree) -> None:
    folder = tree.folder("s2x")
    write_catalog(folder, grids_dir=tree.grids_dir, json_items=True)
    for path in sorted((folder / "items").glob("*.json")):
        item = pystac.Item.from_file(str(path))
        chip = Path(item.assets["chip"].get_absolute_href())
        assert chip == folder / f"{item.id}.tif" and chip.exists()
        collection = item.get_single_link("collection")
        assert Path(collection.get_absolute_href()) == folder / "collection.json"


def test_gunw_items_carry_their_pairs_and_dates(tree: ChipTree) -> None:
    folder = tree.folder("gunw")
    write_catalog(folder, grids_dir=tree.grids_dir)
    items = {item["id"]: item for item in read_items(folder)}
    assert len(items) == len(TILES)
    for index, tile in enumerate(TILES):
        props = items[tile.identifier]["properties"]
        pairs = gunw_pairs(index)
        found = {(p["reference_date"], p["secondary_date"], p["temporal_baseline_days"])
                 for p in props["m3leo:pairs"]}  # fmt: skip
        assert found == {(r.isoformat(), s.isoformat(), (r - s).days) for r, s in pairs}
        assert props["start_datetime"].startswith(min(s for _, s in pairs).isoformat())
        assert props["end_datetime"].startswith(max(r for r, _ in pairs).isoformat())
        bands = items[tile.identifier]["assets"]["chip"]["bands"]
        with rasterio.open(folder / f"{tile.identifier}.tif") as chip:
            assert [b["name"] for b in bands] == list(chip.descriptions)
            assert [b["m3leo:metadata"]["layer"] for b in bands] == [
                chip.tags(i)["layer"] for i in range(1, chip.count + 1)
            ]
    collection = json.loads((folder / "collection.json").read_text())
    assert "bands" not in collection["item_assets"]["chip"]  # they differ from tile to tile


def test_the_recipe_that_made_the_chips_gives_license_and_provenance(
    tree: ChipTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = tmp_path / "my-recipes"
    recipes.mkdir()
    same = {"name": "s2x", "source": "raster", "params": {"inputs": "/nowhere/never.tif"},
            "resolution": 89.6, "bands": ["B2", "B3", "B4"], "dtype": "uint16", "nodata": 0,
            "description": "Test reflectance", "license": "CC-BY-4.0"}  # fmt: skip
    (recipes / "s2x.yaml").write_text(json.dumps(same))
    monkeypatch.setenv(RECIPES_PATH_ENV, str(recipes))
    folder = tree.folder("s2x")
    report = write_catalog(folder, grids_dir=tree.grids_dir)
    collection = json.loads((folder / "collection.json").read_text())
    assert report.notes == ()
    assert collection["license"] == "CC-BY-4.0"
    assert collection["description"] == "Test reflectance"
    provenance = collection["m3leo:provenance"]
    with rasterio.open(next(folder.glob("*.tif"))) as chip:
        assert provenance["recipe_hash"] == chip.tags()["recipe_hash"]
    assert provenance["source"] == "raster" and provenance["params"]["inputs"]

    # Another recipe of that name (other pixels, another hash) is not taken for it.
    (recipes / "s2x.yaml").write_text(json.dumps({**same, "nodata": 7}))
    other = write_catalog(folder, grids_dir=tree.grids_dir)
    collection = json.loads((folder / "collection.json").read_text())
    assert collection["license"] == "other" and "recipe_hash" not in collection["m3leo:provenance"]
    assert any("has hash" in note for note in other.notes)


def test_a_year_and_its_windows_give_the_items_time() -> None:
    from m3leo_tiles.recipes import parse_recipe

    def recipe(**extra):
        data = {"name": "r", "source": "raster", "resolution": 89.6, "bands": ["b"],
                "params": {"inputs": "/x.tif", **extra}}  # fmt: skip
        return parse_recipe(data, "test")

    whole = dataset_period(recipe(), 2020)
    assert (whole.start.isoformat(), whole.end.isoformat()) == (
        "2020-01-01T00:00:00+00:00", "2020-12-31T23:59:59+00:00")  # fmt: skip
    seasons = recipe(windows=[{"name": "winter", "start": "12-01", "start_year": -1,
                               "end": "03-01"}, {"name": "fall", "start": "09-01",
                                                 "end": "12-01"}])  # fmt: skip
    span = dataset_period(seasons, 2020)
    assert span.start.date() == date(2019, 12, 1)
    assert span.end.isoformat() == "2020-11-30T23:59:59+00:00"
    december = recipe(windows=[{"name": "dec", "start": "12-01", "end": "01-01"}])
    assert dataset_period(december, 2020).end.isoformat() == "2020-12-31T23:59:59+00:00"
    assert dataset_period(recipe(), None) is None


def test_a_dataset_without_chips_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "aoi" / "empty"
    folder.mkdir(parents=True)
    with pytest.raises(ConfigError, match="no finished chips"):
        write_catalog(folder)


def test_cli_catalogs_datasets_and_refuses_an_unknown_one(capsys, tree: ChipTree) -> None:
    code, out, err = call_cli(capsys, "catalog", "s2x", "esawc", "--root", tree.root,
                              "--grids-dir", tree.grids_dir, "--json")  # fmt: skip
    assert code == 0, err
    assert "s2x: 11 Items" in out and "esawc: 12 Items" in out
    assert len(list((tree.folder("esawc") / "items").glob("*.json"))) == 12
    code, out, err = call_cli(capsys, "catalog", "nope", "--root", tree.root)
    assert_one_error_line(code, err, "unknown dataset 'nope'")
    code, out, err = call_cli(capsys, "catalog", "s2x", "--root", tree.root, "--recipe", "nope")
    assert_one_error_line(code, err, "unknown recipe 'nope'")


def test_cli_recipe_option_names_the_recipe_of_the_chips(
    capsys, tree: ChipTree, tmp_path: Path
) -> None:
    data = {"name": "s2x", "source": "raster", "params": {"inputs": "/nowhere/never.tif"},
            "resolution": 89.6, "bands": ["B2", "B3", "B4"], "dtype": "uint16", "nodata": 0,
            "license": "CC-BY-4.0"}  # fmt: skip
    path = tmp_path / "mine.yaml"
    path.write_text(json.dumps(data))
    code, out, err = call_cli(capsys, "catalog", "s2x", "--root", tree.root,
                              "--grids-dir", tree.grids_dir, "--recipe", path)  # fmt: skip
    assert code == 0, err
    assert "note" not in out
    assert json.loads((tree.folder("s2x") / "collection.json").read_text())["license"] == (
        "CC-BY-4.0"
    )
    path.write_text(json.dumps({**data, "nodata": 9}))
    code, out, err = call_cli(capsys, "catalog", "s2x", "--root", tree.root,
                              "--grids-dir", tree.grids_dir, "--recipe", path)  # fmt: skip
    assert code == 0 and "made by another version of it" in out


def test_fetch_brings_the_catalog_up_to_date(cluster, tmp_path: Path) -> None:
    from helpers.fake_runs import IDS, recipe, run
    from helpers.fake_runs import TILES as FAKE_TILES

    out = tmp_path / "out"
    run(cluster, recipe(), out, tiles=FAKE_TILES[:4])
    folder = out / "testaoi" / "fake"
    items = read_items(folder)
    assert sorted(i["id"] for i in items) == sorted(IDS[:4])
    for item in items:
        payload = (folder / f"{item['id']}.tif").read_bytes()
        asset = item["assets"]["chip"]
        assert asset["file:size"] == len(payload)
        assert asset["file:checksum"] == f"b20204{zlib.crc32(payload):08x}"
    assert json.loads((folder / "collection.json").read_text())["id"] == "testaoi-fake"

    write_catalog(folder, json_items=True)  # the user asked for JSON once: fetch keeps it
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "items").glob("*.json")}
    run(cluster, recipe(), out, tiles=FAKE_TILES[:6])
    after = {p.name: p.stat().st_mtime_ns for p in (folder / "items").glob("*.json")}
    assert sorted(after) == sorted(f"{i}.json" for i in IDS[:6])
    assert {k: after[k] for k in before} == before
    assert sorted(i["id"] for i in read_items(folder)) == sorted(IDS[:6])


def test_a_fetch_that_made_no_chip_leaves_the_catalog_unread(
    cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A no-op rerun (cron) must not pay for reading the manifest and grid again; a rerun
    that makes a chip still updates the catalog."""
    import m3leo_tiles.tools.catalog as catalog
    from helpers.fake_runs import IDS, recipe, run
    from helpers.fake_runs import TILES as FAKE_TILES

    out = tmp_path / "out"
    run(cluster, recipe(), out, tiles=FAKE_TILES[:4])
    calls: list[Path] = []
    real = catalog.write_catalog
    monkeypatch.setattr(
        catalog, "write_catalog", lambda f, *a, **k: calls.append(f) or real(f, *a, **k)
    )
    run(cluster, recipe(), out, tiles=FAKE_TILES[:4])
    assert calls == []
    run(cluster, recipe(), out, tiles=FAKE_TILES[:5])
    assert calls == [out / "testaoi" / "fake"]
    assert sorted(i["id"] for i in read_items(out / "testaoi" / "fake")) == sorted(IDS[:5])


def test_items_of_any_zone_and_hemisphere_sit_where_their_tiles_are() -> None:
    """The bulk computation from ids equals the tiles' own (south: EPSG:327zz, zone 60's
    tiles over 180° unwrapped as the grid does)."""
    from m3leo_tiles.grid.tile import Tile
    from m3leo_tiles.tools.catalog import _lattice_columns

    tiles = [Tile(1, -5, 10), Tile(60, 3, 150), Tile(33, 1036, 60), Tile(18, -2000, 120),
             Tile(60, 1500, 185)]  # fmt: skip
    columns = _lattice_columns([t.identifier for t in tiles], (10, 10))
    for index, tile in enumerate(tiles):
        grid = tile.pixel_grid(448)
        assert columns["epsg"][index] == tile.epsg
        assert Affine(*columns["transforms"][index]) == grid.transform
        corners = np.asarray(tile.lonlat_polygon().exterior.coords)[:4]
        np.testing.assert_allclose(columns["footprints"][index], corners, atol=1e-9)


def test_a_catalog_written_a_few_items_a_table_is_the_one_written_whole(
    tree: ChipTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    import m3leo_tiles.tools.catalog as catalog

    folder = tree.folder("s2x")
    write_catalog(folder, grids_dir=tree.grids_dir, json_items=True)
    whole = read_items(folder)
    collection = (folder / "collection.json").read_text()
    item_files = {p.name: p.read_text() for p in (folder / "items").glob("*.json")}
    for name in ("items.parquet", "collection.json", ".catalog-state.parquet"):
        (folder / name).unlink()
    shutil.rmtree(folder / "items")
    monkeypatch.setattr(catalog, "ITEMS_A_TABLE", 3)  # 11 chips: tables of 3, 3, 3 and 2
    report = write_catalog(folder, grids_dir=tree.grids_dir, json_items=True)
    assert (report.items, report.json_items) == (11, 11)
    assert pq.ParquetFile(folder / "items.parquet").metadata.num_rows == 11
    assert read_items(folder) == whole
    assert (folder / "collection.json").read_text() == collection
    assert {p.name: p.read_text() for p in (folder / "items").glob("*.json")} == item_files
