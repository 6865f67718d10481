"""`m3leo-tiles fetch gunw --year 2020 --aoi demo` end to end, as a user runs it (subprocess).

The CLI and its dask workers route asf-search's sessions to a loopback ASF (CMR replaying
records derived from the real GUNW record, Earthdata login, downloads) through
tests/helpers/site/sitecustomize.py and ``M3LEO_TEST_ASF_LOOPBACK``; the code under test is
unchanged. Products are replicas written from the published GUNW specification over the demo
AOI's Los Angeles box (tests/helpers/gunw_world.py).
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

import m3leo_tiles
from helpers.asf_loopback import (
    CMR_PATH,
    ENV,
    AsfHandler,
    asf_state,
    download_requests,
    real_gunw_item,
)
from helpers.gunw_world import kept_2020, make_world, merge_saved_searches
from helpers.loopback import serve
from m3leo_tiles.dataset.manifest import read_manifest
from m3leo_tiles.grid.tile import Tile

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "m3leo-tiles"
USER, PASSWORD = "alice", "hunter2-but-longer"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EARTHDATA_", "M3LEO_"))}
    source = Path(m3leo_tiles.__file__).resolve().parents[1]  # the code under test
    env.update(
        PYTHONPATH=os.pathsep.join([str(HERE / "helpers" / "site"), str(source)]),
        HOME=str(home),
        NETRC=str(home / ".netrc"),
        M3LEO_SHARED_DATA=str(os.environ.get("M3LEO_SHARED_DATA", "")),
    )
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _manifest(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as stream:
        return {row["identifier"]: row for row in csv.DictReader(stream)}


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_fetch_gunw_demo_end_to_end(shared_data, tmp_path):
    world = make_world(tmp_path / "products", real_gunw_item(shared_data))
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    args = [
        "fetch",
        "gunw",
        "--year",
        "2020",
        "--aoi",
        "demo",
        "--out",
        "data",
        "--workers",
        "2",
        "--quiet",
    ]
    state = asf_state(world.items, world.products, {USER: PASSWORD})
    with serve(AsfHandler, **state) as server:
        env = _env(home, EARTHDATA_USERNAME=USER, EARTHDATA_PASSWORD=PASSWORD, **{ENV: server.url})
        done = _run(args, work, env)
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        dataset = work / "data" / "demo" / "gunw-2020"
        rows = _manifest(dataset / "manifest.csv")
        logged = (dataset / "fetch.log").read_text()
        assert "gunw" in logged and PASSWORD not in logged and USER not in logged
        ok = {i for i, r in rows.items() if r["status"] == "ok"}
        assert ok and {r["status"] for r in rows.values()} == {"ok", "no-source"}
        kept = kept_2020(world)
        inputs = {i: r.inputs for i, r in read_manifest(dataset / "manifest.csv").items()}
        assert all(rows[i]["inputs"].startswith("@") for i in ok)  # lists named by reference
        used = {name for i in ok for name in inputs[i]}
        assert used <= kept and len(used) >= 4
        downloads = download_requests(server)
        assert sorted(downloads) == sorted(
            f"/grfn.asf.alaska.edu/door/download/{n}" for n in used
        )  # one download each
        searches = len([p for p in server.log.paths("POST") if p == CMR_PATH])

        tracks = set()
        for identifier in ok:
            tile = Tile.from_id(identifier)
            names = list(inputs[identifier])
            with rasterio.open(dataset / f"{identifier}.tif") as chip:
                grid = tile.pixel_grid(89.6)
                assert chip.crs.to_epsg() == tile.epsg
                assert chip.transform.almost_equals(grid.transform)
                assert chip.shape == (50, 50)
                pairs = sorted({n.split("-tops-")[1][:17] for n in names})
                assert chip.count == 4 * len(pairs)
                assert chip.descriptions[:4] == tuple(
                    f"{pairs[0]}_{layer}"
                    for layer in (
                        "unwrapped_phase",
                        "coherence",
                        "connected_components",
                        "amplitude",
                    )
                )
                tags = chip.tags(1)
                assert tags["reference_date"].replace("-", "") == pairs[0][:8]
                assert tags["secondary_date"].replace("-", "") == pairs[0][9:]
                assert {
                    "temporal_baseline_days",
                    "direction",
                    "track",
                    "frame",
                    "product",
                    "version",
                } <= set(tags)
                assert np.isnan(chip.nodata)
                tracks.add((tags["direction"], tags["track"]))
        assert tracks == {("ascending", "64"), ("descending", "4")}  # Los Angeles, Virginia
        no_source = {i for i, r in rows.items() if r["status"] == "no-source"}
        assert {Tile.from_id(i).zone for i in no_source} >= {31, 33}  # Camargue, Rome

        again = _run(args, work, env)  # a rerun: nothing searched, nothing downloaded
        assert again.returncode == 0, again.stderr
        assert len([p for p in server.log.paths("POST") if p == CMR_PATH]) == searches
        assert download_requests(server) == downloads

        # refused credentials: one line, exit 2, in seconds, before any work
        refused = _env(
            home,
            EARTHDATA_USERNAME=USER,
            EARTHDATA_PASSWORD="not-the-password",
            **{ENV: server.url},
        )
        started = time.perf_counter()
        denied = _run(
            [*args[:6], "--out", "other", "--cache", str(tmp_path / "empty-cache")], work, refused
        )
        assert time.perf_counter() - started < 60
        assert denied.returncode == 2
        assert denied.stderr.startswith("error: ") and denied.stderr.count("\n") == 1
        assert "refused" in denied.stderr and "not-the-password" not in denied.stderr
        assert "Traceback" not in denied.stderr
        assert not list((work / "other").rglob("*.tif"))

    # offline: a saved search and a product folder, no service, no credentials
    saved = merge_saved_searches(work / "data" / ".cache", tmp_path / "saved.geojson")
    offline = _run(
        [
            *args[:6],
            "--out",
            "offline",
            "--search-results",
            str(saved),
            "--source",
            str(tmp_path / "products"),
            "--cache",
            str(tmp_path / "c2"),
        ],
        work,
        _env(home, **{ENV: _closed_port_url()}),
    )
    assert offline.returncode == 0, offline.stderr
    offline_rows = _manifest(work / "offline" / "demo" / "gunw-2020" / "manifest.csv")
    assert {i for i, r in offline_rows.items() if r["status"] == "ok"} == ok
    for identifier in ok:
        with (
            rasterio.open(dataset / f"{identifier}.tif") as a,
            rasterio.open(work / "offline" / "demo" / "gunw-2020" / f"{identifier}.tif") as b,
        ):
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.descriptions == b.descriptions

    # chips align with another source's chips of the same tiles (the demo DEM at 89.6 m)
    dem = _run(
        ["fetch", "demo-dem", "--aoi", "demo", "--out", "data", "--quiet", "--workers", "1"],
        work,
        _env(home),
    )
    assert dem.returncode == 0, dem.stderr
    shared = [i for i in ok if (work / "data" / "demo" / "demo-dem" / f"{i}.tif").exists()]
    assert shared
    for identifier in shared:
        with (
            rasterio.open(dataset / f"{identifier}.tif") as a,
            rasterio.open(work / "data" / "demo" / "demo-dem" / f"{identifier}.tif") as b,
        ):
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
