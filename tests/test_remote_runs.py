"""Runs over remote sources as a new user meets them (issue 17, items 5-7): wrong inputs
refused up front, a run that finds nothing says so, a network outage stops the run quickly,
and where the run writes is checked before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.gssic_tiles import cell_name, small_recipe, write_mirror
from helpers.loopback import serve_files_in_process
from m3leo_tiles import runner
from m3leo_tiles.enums import TileStatus
from m3leo_tiles.errors import ConfigError
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.runner import fetch_tiles

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
