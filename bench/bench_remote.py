"""Benchmark of the request budget: remote sources at the speed their latency allows.

A source that waits on the network is limited by how many requests it has in flight, not by
CPU: with a budget of K requests and a latency of L seconds, the ceiling is K / L tiles/s.
Two measurements, each against its baseline in the same run, on a LocalCluster of 2 workers:

* ``fake-http`` (tests/helpers/fake_sources.py): every chip is one GET to a loopback server
  that answers after ``--latency`` s (0.2). Budget 16 against the same source declared
  CPU-bound (no budget: one request at a time per worker, i.e. 2 in flight).
* ``raster`` reading a tiled product over HTTP (GDAL ``/vsicurl/``, Range requests) from a
  loopback file server that answers each request after ``--file-latency`` s (0.2): 2 × 2 cells
  named like SRTM's (``N11W110.tif``), each the real SRTM 3″ cell N10W110 (rasterio's test
  data) as a tiled deflate GeoTIFF, its georeferencing shifted by whole degrees; 89.6 m chips of
  tiles around the corner the four cells share. ``--http-concurrency 16`` against 1.

Both run on a LocalCluster of 2 single-threaded workers started before the clock starts
(``--scheduler``), so the figures are throughput, not cluster start-up.

Servers run in their own process (GDAL holds the GIL while it opens a file). Run:
``.venv/bin/python bench/bench_remote.py``; ``--write`` puts the section in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SITE = TESTS / "helpers" / "site"  # the test sources' dist-info: fake-http's entry point
sys.path[:0] = [str(TESTS), str(SITE), str(Path(__file__).resolve().parent)]
os.environ["PYTHONPATH"] = os.pathsep.join(  # and the workers'
    p for p in (str(TESTS), str(SITE), os.environ.get("PYTHONPATH")) if p
)

from bench_fetch import HGT, write_section  # noqa: E402
from helpers.loopback import QuietHandler, serve_files_in_process, serve_in_process  # noqa: E402
from m3leo_tiles.fetch.api import FetchRequest, fetch_tiles  # noqa: E402
from m3leo_tiles.grid.tile import Tile  # noqa: E402
from m3leo_tiles.recipes import Recipe  # noqa: E402

SCHEDULER: list[str] = []  # the bench's own LocalCluster


class Delayed(QuietHandler):
    """Answers every GET with a few bytes after the server's latency."""

    def do_GET(self) -> None:
        self._accounted("GET", lambda: self.send_bytes(200, b"ok"))


def tiles_in(west: float, south: float, count: int) -> list[Tile]:
    origin = Tile.from_point(west, south)
    side = int(count**0.5) + 1
    tiles = [Tile(origin.zone, origin.row + i, origin.col + j) for i in range(side)
             for j in range(side)]  # fmt: skip
    return tiles[:count]


def timed_fetch(recipe: Recipe, tiles: list[Tile], out: Path, **options: str) -> float:
    request = FetchRequest(aoi="bench", out=out, scheduler=SCHEDULER[0], progress=False,
                           options=options)  # fmt: skip
    started = time.perf_counter()
    report = fetch_tiles(recipe, tiles, request)
    seconds = time.perf_counter() - started
    assert report.ok == len(tiles), report.summary()
    return len(tiles) / seconds


def bench_fake_http(args: argparse.Namespace, tmp: Path) -> list[str]:
    with serve_in_process(Delayed, latency_s=args.latency) as server:

        def recipe(budget: int | None) -> Recipe:
            params = {"url": server.url, **({"budget": budget} if budget else {})}
            return Recipe(name=f"http-{budget}", source="fake-http", resolution=224.0,
                          bands=("value",), dtype="int16", nodata=-1, params=params)  # fmt: skip

        serial = timed_fetch(recipe(None), tiles_in(4.5, 43.6, args.serial_tiles), tmp / "a")
        budgeted = timed_fetch(recipe(args.budget), tiles_in(4.5, 43.6, args.tiles), tmp / "b")
        peak = server.peak_in_flight()
    ceiling = args.budget / args.latency
    return [
        f"fake-http, {args.latency:g} s a request, 2 workers:",
        "",
        "| run | tiles | tiles/s | of the ceiling | vs one at a time per worker |",
        "|---|---:|---:|---:|---:|",
        f"| no budget (CPU-bound path) | {args.serial_tiles} | {serial:.1f} | "
        f"{serial / ceiling:.0%} | 1.0× |",
        f"| budget {args.budget} | {args.tiles} | {budgeted:.1f} | {budgeted / ceiling:.0%} | "
        f"{budgeted / serial:.1f}× |",
        "",
        f"Ceiling = budget / latency = {ceiling:.0f} tiles/s; the server saw at most {peak} "
        "requests in flight.",
    ]


def bench_remote_raster(args: argparse.Namespace, tmp: Path) -> list[str]:
    served = tmp / "served"
    served.mkdir()
    with rasterio.open(f"zip://{HGT}!N10W110.hgt") as src:
        data, profile, origin = src.read(), src.profile, src.transform
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    for lon in (-110, -109):
        for lat in (10, 11):  # upper-left corner names a cell, as SRTM's and GSSIC's do
            transform = Affine(origin.a, 0, origin.c + (lon + 110), 0, origin.e,
                               origin.f + (lat - 10))  # fmt: skip
            name = f"N{lat + 1:02d}W{abs(lon):03d}.tif"
            with rasterio.open(served / name, "w", **{**profile, "transform": transform}) as dst:
                dst.write(data)
    center = Tile.from_point(-109.0, 11.0)
    side = int(args.raster_tiles**0.5)
    tiles = [Tile(center.zone, center.row - side // 2 + i, center.col - side // 2 + j)
             for i in range(side) for j in range(side)]  # fmt: skip
    with serve_files_in_process(served, latency_s=args.file_latency) as server:
        recipe = Recipe(name="remote-srtm", source="raster", resolution=89.6, bands=("elevation",),
                        resampling="bilinear", dtype="int16", nodata=-32768,
                        params={"inputs": server.url + "/{NS}{lat:02d}{EW}{lon:03d}.tif",
                                "tile_degrees": 1})  # fmt: skip
        one = timed_fetch(recipe, tiles, tmp / "r1", **{"http-concurrency": "1"})
        after_one = len(server.requests())
        many = timed_fetch(recipe, tiles, tmp / "r16", **{"http-concurrency": "16"})
        requests = len(server.requests()) - after_one
    return [
        f"raster over HTTP (/vsicurl/), {args.file_latency:g} s a request, 2 × 2 real SRTM "
        f"cells, {len(tiles)} tiles of 50×50 px, 2 workers ({after_one} and {requests} "
        "requests):",
        "",
        "| --http-concurrency | chips/s | vs 1 |",
        "|---:|---:|---:|",
        f"| 1 | {one:.1f} | 1.0× |",
        f"| 16 | {many:.1f} | {many / one:.1f}× |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--tiles", type=int, default=960)
    parser.add_argument("--serial-tiles", type=int, default=60)
    parser.add_argument("--file-latency", type=float, default=0.2)
    parser.add_argument("--raster-tiles", type=int, default=400)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    from distributed import LocalCluster

    with (
        tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp,
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0", silence_logs=40
        ) as cluster,  # fmt: skip
    ):
        SCHEDULER.append(cluster.scheduler_address)
        lines = [*bench_fake_http(args, Path(tmp)), "", *bench_remote_raster(args, Path(tmp))]
    heading = "## remote sources: the request budget"
    when = time.strftime("%Y-%m-%d", time.gmtime())
    text = "\n".join([heading, "", f"`bench/bench_remote.py`, {when}, 2 cores:", "", *lines, ""])
    print(text)
    if args.write:
        write_section(REPO / "bench" / "RESULTS.md", heading, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
