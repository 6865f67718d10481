"""Runs over remote sources as a new user meets them (issue 17, items 5-7): wrong inputs
refused up front, a run that finds nothing says so, a network outage stops the run quickly,
and where the run writes is checked before any work."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import ClassVar

import pytest

from helpers.cli import cli_env, run_cli
from helpers.grid_files import write_grid
from helpers.gssic_tiles import cell_name, small_recipe, write_mirror
from helpers.loopback import serve_files_in_process
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch import api as runner
from m3leo_tiles.fetch.api import fetch_tiles
from m3leo_tiles.grid.tile import Tile

pytestmark = pytest.mark.slow

TILES = [Tile.from_point(-117.5, 33.5), Tile.from_point(-117.45, 33.55)]  # inside N34W118


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    write_mirror(root, [cell_name(-117.5, 33.5)], ["winter"], ["vv"], ["COH12", "AMP"])
    return root


def _run(cluster, folder: Path, root: str, cache: Path, **kwargs):
    return fetch_tiles(small_recipe(folder), TILES, aoi="t", out=folder / "out",
                       scheduler=cluster.scheduler_address, progress=False,
                       sources=(root,), cache=cache, **kwargs)  # fmt: skip


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only: chmod for a user; root writes anyway, so for root the probe
    is told what a read-only file system answers."""

    def lock(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            return
        real = runner.writable_problem
        monkeypatch.setattr(runner, "writable_problem",
                            lambda path: "Read-only file system" if Path(path) == folder
                            else real(path))  # fmt: skip

    yield lock


# --- item 7: where the run writes ----------------------------------------------------------


def test_a_read_only_cache_is_refused_before_any_download(cluster, tmp_path, mirror, read_only):
    cache = tmp_path / "cache"
    read_only(cache)
    with serve_files_in_process(mirror) as server:
        with pytest.raises(ConfigError, match=r"cannot write to the download cache .*--cache"):
            _run(cluster, tmp_path, server.url, cache)
        gets = [p for p in server.paths() if p.endswith(".tif")]
    assert gets == []
    os.chmod(cache, 0o755)


def test_a_read_only_cache_holding_every_file_still_works(cluster, tmp_path, mirror, read_only):
    cache = tmp_path / "cache"
    with serve_files_in_process(mirror) as server:
        first = _run(cluster, tmp_path, server.url, cache)
        assert first.ok == len(TILES)
        fetched = len(server.paths())
        read_only(cache)
        again = _run(cluster, tmp_path, server.url, cache, overwrite=True)
        assert len(server.paths()) == fetched  # nothing asked again
    os.chmod(cache, 0o755)
    assert again.ok == len(TILES) and again.exit_code == 0
    rows = read_manifest(tmp_path / "out" / "t" / "gssic-small" / MANIFEST_NAME)
    assert {row.status for row in rows.values()} == {TileStatus.OK}


# --- item 5: wrong inputs are not a finished, empty dataset ----------------------------------


def test_an_empty_mirror_folder_is_refused_naming_the_layout(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as refused:
        fetch_tiles(small_recipe(tmp_path), TILES, aoi="t", out=tmp_path / "out",
                    sources=(str(empty),), progress=False)  # fmt: skip
    message = str(refused.value)
    assert f"not one file of the product is in {empty}" in message
    assert f"{empty}/data/tiles/{{NS}}{{lat:02d}}{{EW}}{{lon:03d}}/" in message
    assert not (tmp_path / "out" / "t" / "gssic-small" / MANIFEST_NAME).exists()


def _gunw_run(tmp_path: Path, specs, year: int = 2020, **extra):
    """A gunw run from a saved search of ``specs`` (no product needs reading: none is kept)."""
    from helpers.gunw_world import write_saved_search
    from m3leo_tiles.recipes import load_recipe

    paths = []
    for spec in specs:
        path = tmp_path / "products" / spec.file_name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"never read")
        paths.append(path)
    search = write_saved_search(specs, paths, tmp_path / "search.geojson")
    return fetch_tiles(load_recipe("gunw"), TILES, aoi="t", out=tmp_path / "out", year=year,
                       options={"search-results": str(search)}, progress=False,
                       cache=tmp_path / "cache", **extra)  # fmt: skip


def _said(report, *needles: str) -> None:
    """The run is not a normal success, and the terminal's line and fetch.log say why."""
    assert report.exit_code == 1 and report.ok == 0
    assert report.nothing.startswith("nothing fetched: not one of the 2 tiles has data")
    logged = (report.dataset_dir / "fetch.log").read_text()
    assert report.nothing in logged
    for needle in needles:
        assert needle in report.nothing, report.nothing


def test_a_saved_search_without_products_says_nothing_was_fetched(tmp_path: Path) -> None:
    _said(_gunw_run(tmp_path, []), "the search found 0 GUNW products for 2020")


def test_a_year_without_products_says_what_the_search_found(tmp_path: Path) -> None:
    from helpers.gunw_world import demo_specs

    specs = demo_specs()
    _said(_gunw_run(tmp_path, specs, year=2019),
          f"the search found {len(specs)} GUNW products for 2019",
          f"excluded {len(specs)} for reference date not in 2019")  # fmt: skip


def test_a_search_whose_only_product_is_excluded_by_the_baseline_says_so(tmp_path) -> None:
    import datetime as dt

    from helpers.gunw_world import _spec

    long_pair = _spec(dt.date(2020, 12, 30), dt.date(2019, 12, 30))  # 366 days
    _said(_gunw_run(tmp_path, [long_pair]), "the search found 1 GUNW product for 2020",
          "excluded 1 for temporal baseline of 72 days or more", "0 kept")  # fmt: skip


@pytest.mark.parametrize("year", [1999, 2013, 3000])
def test_years_gunw_cannot_have_are_refused_up_front(tmp_path: Path, year: int) -> None:
    with pytest.raises(ConfigError, match=rf"--year {year}: GUNW products exist from 2014"):
        _gunw_run(tmp_path, [], year=year)
    assert not (tmp_path / "out").exists()


def test_a_gunw_product_folder_without_products_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=rf"--source {empty}: the folder holds no GUNW product"):
        _gunw_run(tmp_path, [], sources=(str(empty),))


# --- item 6: network outages are quick and said ------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_host_is_said_at_once_and_stops_the_run(tmp_path: Path) -> None:
    """A closed loopback port stands for a host that cannot be reached: the warning comes at
    once, and after the (lowered) wait the run stops: exit 2, one error line, fetch.log."""
    port = _closed_port()
    grid = write_grid(tmp_path / "tiles.geojson", TILES, aoi="t")
    started = time.monotonic()
    done = run_cli(["fetch", "gssic", "--grid", grid, "--source", f"http://127.0.0.1:{port}",
                    "--out", "out", "--cache", "cache", "--workers", "1"], cwd=tmp_path,
                   env=cli_env(M3LEO_UNREACHABLE_S="3"), timeout=120)  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: network: could not reach 127.0.0.1:{port}"), lines
    warning = f"WARNING: network: cannot reach 127.0.0.1:{port} (ConnectionError)"
    assert warning in done.stderr, lines
    assert took < 45  # a cluster's start, then about the 3 s allowed, not minutes of retries
    log = (tmp_path / "out" / "t" / "gssic" / "fetch.log").read_text()
    assert f"WARNING network: cannot reach 127.0.0.1:{port}" in log
    assert f"ERROR stopped: network: could not reach 127.0.0.1:{port}" in log


class _Recorder:
    """A tqdm that remembers every step of the bar."""

    steps: ClassVar[list[int]] = []

    def __init__(self, *args, **kwargs) -> None:
        self.n = kwargs.get("initial", 0)

    def update(self, n: int = 1) -> None:
        self.steps.append(n)

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def refresh(self) -> None:
        pass


def test_progress_of_a_remote_source_moves_per_tile(cluster, tmp_path, monkeypatch) -> None:
    import tqdm

    from helpers.loopback import serve_files
    from m3leo_tiles.recipes import Recipe

    monkeypatch.setattr(tqdm, "tqdm", _Recorder)
    monkeypatch.setattr(_Recorder, "steps", [])
    origin = Tile.from_point(12.5, 42.0)
    tiles = [Tile(origin.zone, origin.row, origin.col + c) for c in range(6)]
    with serve_files(tmp_path, latency_s=0.2) as server:
        for tile in tiles:
            (tmp_path / tile.identifier).write_bytes(b"x")
        # budget 4 on 2 workers: batches of at least 2 x 4 tiles, so these 6 are ONE batch
        params = {"url": server.url, "budget": 4}
        recipe = Recipe(name="h", source="fake-http", resolution=448, bands=("v",),
                        dtype="uint8", nodata=0, params=params)  # fmt: skip
        report = fetch_tiles(recipe, tiles, aoi="t", out=tmp_path / "out",
                             scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    logged = (tmp_path / "out" / "t" / "h" / "fetch.log").read_text()
    assert "in 1 batches" in logged
    assert report.ok == len(tiles)
    assert sum(_Recorder.steps) == len(tiles)
    assert len([step for step in _Recorder.steps if step]) > 1  # not one jump at the end


def test_the_early_stop_of_a_remote_source_follows_its_tiles(cluster, tmp_path) -> None:
    """40 tiles in ONE batch, each failing alike (a 404): the early stop trips on the 20th
    tile's event and the run stops with those 20 recorded, not after the whole batch."""
    from helpers.loopback import serve_files
    from m3leo_tiles.core.errors import SystematicFailure
    from m3leo_tiles.recipes import Recipe

    origin = Tile.from_point(12.5, 42.0)
    tiles = [Tile(origin.zone, origin.row + r, origin.col + c) for r in range(5) for c in range(8)]
    with serve_files(tmp_path / "nothing-here", latency_s=0.5) as server:
        params = {"url": server.url, "budget": 20}  # 2 workers: batches of at least 40 tiles
        recipe = Recipe(name="h", source="fake-http", resolution=448, bands=("v",),
                        dtype="uint8", nodata=0, params=params)  # fmt: skip
        with pytest.raises(SystematicFailure, match=r"first 20 tiles all failed the same way"):
            fetch_tiles(recipe, tiles, aoi="t", out=tmp_path / "out",
                        scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    folder = tmp_path / "out" / "t" / "h"
    assert "in 1 batches" in (folder / "fetch.log").read_text()
    rows = read_manifest(folder / MANIFEST_NAME)
    assert len(rows) == 20 and {row.status for row in rows.values()} == {TileStatus.FAILED}


def test_the_command_says_nothing_was_fetched_in_one_line_and_exits_1(tmp_path, capsys) -> None:
    from helpers.cli import call_cli

    grid = write_grid(tmp_path / "tiles.geojson", TILES, aoi="t")
    search = tmp_path / "search.geojson"
    search.write_text('{"type": "FeatureCollection", "features": []}')
    code, out, err = call_cli(capsys, "fetch", "gunw", "--grid", grid, "--year", "2020",
                              "--search-results", search, "--out", tmp_path / "out",
                              "--cache", tmp_path / "cache", "--quiet")  # fmt: skip
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "warning: nothing fetched: not one of the 2 tiles has data (all empty or without a "
        "source); the search found 0 GUNW products for 2020; 0 kept, 0 over the tiles; check "
        "--source, --year and the recipe"
    ]
