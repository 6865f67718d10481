"""Choosing a run's tiles (fetch/select.py): ids not in the grid are reported, a split the
grid lacks says what to do, more workers than cores warn; the grid is named in fetch.log."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.rome import ROME_TILES, write_grid
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.fetch.api import fetch
from m3leo_tiles.recipes import Recipe

pytestmark = pytest.mark.slow


def test_unknown_tile_ids_are_reported_and_the_grid_is_named(
    cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{ROME_TILES[0].identifier}\n01N_0000_000\nnot-a-tile\n")
    recipe = Recipe(name="f", source="fake-synthetic", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0)  # fmt: skip
    report = fetch(recipe, grid=grid, tiles=ids, out=tmp_path / "data",
                   scheduler=cluster.scheduler_address, progress=True)  # fmt: skip
    assert report.selected == 1
    log = (report.dataset_dir / "fetch.log").read_text()
    assert "2 of the 3 ids in" in log and "01N_0000_000, not-a-tile" in log
    assert f"grid: {grid.resolve()} (2 tiles)" in log
    assert "2 of the 3 ids" in capsys.readouterr().err


def test_a_split_the_grid_lacks_says_what_to_do(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)  # every tile is train
    with pytest.raises(ConfigError, match=r"has no val tiles.*--bands 2000"):
        fetch("demo-dem", grid=grid, split="val", out=tmp_path / "data", progress=False)


def test_more_workers_than_cores_warns(
    cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = Recipe(name="f", source="fake-synthetic", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0)  # fmt: skip
    first = fetch(recipe, grid=grid, out=tmp_path / "data",
                  scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    capsys.readouterr()
    too_many = (os.cpu_count() or 1) + 3
    again = fetch(recipe, grid=grid, out=tmp_path / "data", workers=too_many)  # all done:
    assert again.skipped == 2  # no cluster is started
    assert f"--workers {too_many} is more than the" in capsys.readouterr().err
    assert f"--workers {too_many} is more than the" in (first.dataset_dir / "fetch.log").read_text()


# --- the selection itself, without a run ------------------------------------------------------


def test_a_tiles_file_ignores_comments_and_blank_lines(tmp_path: Path) -> None:
    from m3leo_tiles.fetch.select import read_tile_ids

    ids = tmp_path / "ids.txt"
    ids.write_text("# mine\n\nA  # first\nB\n")
    assert read_tile_ids(ids) == ["A", "B"]
    ids.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="lists no tile ids"):
        read_tile_ids(ids)
    with pytest.raises(ConfigError, match="cannot read tiles file"):
        read_tile_ids(tmp_path / "missing.txt")


def test_the_default_grid_is_the_only_one(tmp_path: Path) -> None:
    from m3leo_tiles.fetch.select import find_default_grid

    grids = tmp_path / "grids"
    with pytest.raises(ConfigError, match="no grid found under"):
        find_default_grid(grids)
    only = write_grid(grids / "a" / "tiles.geojson", ROME_TILES, aoi="a")
    assert find_default_grid(grids) == only
    write_grid(grids / "b" / "tiles.geojson", ROME_TILES, aoi="b")
    with pytest.raises(ConfigError, match="several grids under"):
        find_default_grid(grids)


def test_select_narrows_and_says_what_it_left_out(tmp_path: Path) -> None:
    from m3leo_tiles.fetch.select import check_choice, select_tiles

    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{ROME_TILES[1].identifier}\nnot-a-tile\n")
    chosen = select_tiles(grid, "train", ids, warnings=("first",))
    assert [t.identifier for t in chosen.tiles] == [ROME_TILES[1].identifier]
    assert chosen.aoi == "t" and chosen.notes == (f"grid: {grid.resolve()} (2 tiles)",)
    assert chosen.warnings[0] == "first" and "not-a-tile" in chosen.warnings[1]
    assert len(select_tiles(grid, limit=1).tiles) == 1
    with pytest.raises(ConfigError, match="give either --aoi or --grid, not both"):
        check_choice("a", grid, None)
    with pytest.raises(ConfigError, match="--limit must be at least 1, got 0"):
        check_choice(None, None, 0)


def test_years_are_a_year_a_range_or_a_list() -> None:
    from m3leo_tiles.fetch.select import MAX_YEARS, parse_years

    assert parse_years(None) is None
    assert parse_years(2020) == parse_years("2020") == (2020,)
    assert parse_years("2018-2020") == (2018, 2019, 2020)
    assert parse_years("2018,2020") == parse_years([2018, 2020]) == (2018, 2020)
    assert parse_years("2016-2017, 2020,2016") == (2016, 2017, 2020)  # each year once
    for bad, message in [("2020-2018", "ends before it starts"), ("abc", "not a year"),
                         ("2018-", "not a year"), ([], "no year given"), (True, "not a year"),
                         (f"2000-{2000 + MAX_YEARS}", f"more than {MAX_YEARS} years")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_years(bad)


def test_fetch_takes_several_years_as_text_or_a_list(cluster, tmp_path: Path) -> None:
    from m3leo_tiles.fetch.api import FetchReport, YearsReport

    grid = write_grid(tmp_path / "g.geojson", ROME_TILES)
    recipe = Recipe(name="f", source="fake-synthetic", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0)  # fmt: skip
    common = {"grid": grid, "out": tmp_path / "data", "progress": False,
              "scheduler": cluster.scheduler_address}  # fmt: skip
    several = fetch(recipe, year="2019,2020", **common)
    assert isinstance(several, YearsReport)
    assert [r.dataset_dir.name for r in several.reports] == ["f-2019", "f-2020"]
    assert [r.ok for r in fetch(recipe, year=[2019, 2021], **common).reports] == [0, 2]
    one = fetch(recipe, year="2021", **common)  # one year: the report of one dataset, as before
    assert isinstance(one, FetchReport) and one.dataset_dir.name == "f-2021" and one.skipped == 2
