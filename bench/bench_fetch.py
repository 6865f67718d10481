"""Benchmark of `fetch`: chips/s of the runner vs the naive loop, and peak memory vs tile count.

Setup (all in a temp dir, from real data): the SRTM 3″ tile N10W110 (rasterio's test data, open
Pacific with Clipperton Island) is rewritten as a tiled, deflate GeoTIFF, and copies of it are
placed side by side on a grid of 1°×1° cells (lon −114…−108, lat 10…16, all in UTM zone 12) so
that 20,000 distinct 4480 m tiles are covered. Each copy is the same real pixels with its
georeferencing shifted by whole degrees: a synthetic mosaic, used only to have enough tiles.

* baseline: the naive way, measured in the same run: for each tile, open its source, reproject
  that window onto the tile's 50×50 px grid (89.6 m, bilinear), write a deflate GeoTIFF.
* reference: the same loop with every source opened once (one process): what a careful script
  gets before any parallelism.
* disk: what creating one small new file costs on the folder used (it varies tenfold on the
  shared VM this was written on, and every chip pays it once).
* runner: ``fetch_tiles`` with the ``raster`` source on a LocalCluster of 2 workers.
* memory: peak RSS of the driver plus all its child processes (the workers), sampled every
  50 ms, for 1,000 and for 20,000 tiles (each run in a fresh process, so peaks don't mix).

Run: ``.venv/bin/python bench/bench_fetch.py`` (about a minute a round, 3 rounds, on 2 cores).
It prints a markdown section; ``--write`` also puts it in bench/RESULTS.md under "## fetch".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from rasterio.warp import Resampling, reproject

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("M3LEO_SHARED_DATA", REPO.parent / "shared" / "data"))
HGT = SHARED / "dem" / "N10W110.hgt.zip"
RESOLUTION = 89.6
LONS = range(-114, -108)
LATS = range(10, 16)
NODATA = -32768


def make_sources(folder: Path) -> list[Path]:
    """One deflate GeoTIFF per 1° cell: the real SRTM pixels, shifted to that cell."""
    with rasterio.open(f"zip://{HGT}!N10W110.hgt") as src:
        data = src.read()
        profile = src.profile
        t = src.transform
    profile.update(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    paths = []
    for lon in LONS:
        for lat in LATS:
            shifted = rasterio.Affine(t.a, t.b, t.c + (lon + 110), t.d, t.e, t.f + (lat - 10))
            path = folder / f"srtm_{lat:02d}_{-lon:03d}.tif"
            with rasterio.open(path, "w", **{**profile, "transform": shifted}) as dst:
                dst.write(data)
            paths.append(path)
    return paths


MAX_TILES = 20_000


def bench_tiles(count: int):
    """``count`` zone-12 tiles spread evenly over the same 20,000-tile area of the mosaic.

    Spreading them (rather than taking the first ``count``) makes every run touch the same
    input files, so peak memory compares tile counts, not how much input data was read.
    """
    from m3leo_tiles.grid.tile import Tile

    zone = 12
    south_west = Tile.from_point(LONS[0] + 0.05, LATS[0] + 0.05, zone)
    north_east = Tile.from_point(LONS[-1] + 0.95, LATS[-1] + 0.95, zone)
    west, east = LONS[0] + 0.05, LONS[-1] + 0.95
    south, north = LATS[0] + 0.05, LATS[-1] + 0.95
    area = []
    for row in range(south_west.row, north_east.row):
        for col in range(south_west.col, north_east.col):
            tile = Tile(zone, row, col)
            lon_min, lat_min, lon_max, lat_max = tile.lonlat_polygon().bounds
            if west < lon_min and lon_max < east and south < lat_min and lat_max < north:
                area.append(tile)  # wholly inside the mosaic: every tile has its source
    area = area[:MAX_TILES]
    if count > len(area):
        raise SystemExit(f"the mosaic holds only {len(area)} tiles, fewer than {count}")
    step = len(area) / count
    return [area[int(i * step)] for i in range(count)]


def source_of(tile, folder: Path) -> Path:
    lon, lat = tile.lonlat_polygon().centroid.coords[0]
    return folder / f"srtm_{math.floor(lat):02d}_{-math.floor(lon):03d}.tif"


def plain_loop(tiles, sources: Path, out: Path, *, keep_open: bool = False) -> float:
    """The loop a user would write first, in one process; returns chips/s.

    ``keep_open=False`` is the naive baseline: every chip opens its source and names its CRS
    as a string. ``keep_open=True`` is the careful script: each source opened and each CRS
    parsed once.
    """
    out.mkdir(parents=True, exist_ok=True)
    opened: dict[Path, rasterio.DatasetReader] = {}
    parsed: dict[str, rasterio.crs.CRS] = {}
    started = time.perf_counter()
    for tile in tiles:
        grid = tile.pixel_grid(RESOLUTION)
        path = source_of(tile, sources)
        source = opened.get(path) or rasterio.open(path)
        crs = grid.crs
        if keep_open:
            opened[path] = source
            if crs not in parsed:
                parsed[crs] = rasterio.crs.CRS.from_user_input(crs)
            crs = parsed[crs]
        chip = np.full((1, grid.height, grid.width), NODATA, dtype="int16")
        reproject(
            rasterio.band(source, 1),
            chip,
            dst_transform=grid.transform,
            dst_crs=crs,
            dst_nodata=NODATA,
            resampling=Resampling.bilinear,
        )
        if not keep_open:
            source.close()
        profile = dict(
            driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="int16",
            crs=crs, transform=grid.transform, nodata=NODATA, compress="deflate",
        )  # fmt: skip
        with rasterio.open(out / f"{tile.identifier}.tif", "w", **profile) as dst:
            dst.write(chip)
    rate = len(tiles) / (time.perf_counter() - started)
    for dataset in opened.values():
        dataset.close()
    return rate


def new_file_ms(folder: Path, count: int = 2000) -> float:
    """Milliseconds to write one new 5 kB file in ``folder`` the way chips are written."""
    from m3leo_tiles.dataset.chipfile import write_bytes_atomically  # what every chip goes through

    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(5000)
    started = time.perf_counter()
    for index in range(count):
        write_bytes_atomically(folder / f"{index}.tif", payload)
    return (time.perf_counter() - started) / count * 1e3


class PeakRss:
    """Peak of (this process + all descendants) RSS, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def runner_once(count: int, sources: Path, out: Path, workers: int) -> dict:
    """One runner run in this process (called in a fresh subprocess by ``main``)."""
    from m3leo_tiles.fetch.api import fetch_tiles
    from m3leo_tiles.recipes import Recipe

    recipe = Recipe(
        name="bench-srtm",
        source="raster",
        resolution=RESOLUTION,
        bands=("elevation",),
        resampling="bilinear",
        dtype="int16",
        nodata=NODATA,
    )
    inputs = [str(p) for p in sorted(sources.glob("srtm_*.tif"))]  # --source, as a user would
    tiles = bench_tiles(count)
    with PeakRss() as memory:
        report = fetch_tiles(
            recipe, tiles, aoi="bench", out=out, workers=workers, sources=inputs, progress=False
        )
    return {
        "tiles": count,
        "seconds": report.seconds,
        "ok": report.ok,
        "empty": report.empty,
        "failed": report.failed,
        "no_source": report.no_source,
        "peak_rss_mb": memory.peak / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-tiles", type=int, default=1000)
    parser.add_argument("--counts", type=int, nargs="+", default=[1_000, 20_000])
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="measure everything this many times, interleaved (this VM drifts by ±30 %%)",
    )  # fmt: skip
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument(
        "--tmp", default=None, help="folder for the sources and chips (default: the system's)"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # count sources out
    args = parser.parse_args()
    if args.child:
        count, sources, out = args.child
        print(json.dumps(runner_once(int(count), Path(sources), Path(out), args.workers)))
        return 0

    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-fetch-", dir=args.tmp) as tmp:
        root = Path(tmp)
        sources = root / "sources"
        sources.mkdir()
        make_sources(sources)
        tiles = bench_tiles(args.baseline_tiles)
        for index in range(args.rounds):
            folder = root / f"round-{index}"
            measured = {
                "file_ms": new_file_ms(folder / "files"),
                "naive": plain_loop(tiles, sources, folder / "naive"),
                "open_once": plain_loop(tiles, sources, folder / "once", keep_open=True),
                "runs": [],
            }
            for count in args.counts:
                run = runner_child(args, count, sources, folder / f"out-{count}")
                if run is None:
                    return 1
                measured["runs"].append(run)
            rounds.append(measured)
            print(f"round {index + 1}/{args.rounds} done", file=sys.stderr)
    text = report(rounds, args)
    print(text)
    if args.write:
        write_section(REPO / "bench" / "RESULTS.md", heading(args), text)
    return 0


def runner_child(args: argparse.Namespace, count: int, sources: Path, out: Path) -> dict | None:
    """One runner run in a fresh process, so that peak memory is that run's alone."""
    child = subprocess.run(
        [sys.executable, __file__, "--workers", str(args.workers),
         "--child", str(count), str(sources), str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return None
    run = json.loads(child.stdout.strip().splitlines()[-1])
    if run["ok"] != count:  # a benchmark of failures would measure nothing
        print(f"runner made {run['ok']} of {count} chips: {run}", file=sys.stderr)
        return None
    run["rate"] = count / run["seconds"]
    return run


def spread(values: list[float], digits: int = 0, suffix: str = "") -> str:
    """Median, with the range over the rounds when there are several."""
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    text = f"{median:,.{digits}f}{suffix}"
    if len(ordered) > 1:
        text += f" ({ordered[0]:,.{digits}f}–{ordered[-1]:,.{digits}f})"
    return text


def report(rounds: list[dict], args: argparse.Namespace) -> str:
    cores = os.cpu_count()
    where = args.tmp or tempfile.gettempdir()
    naive_rates = [r["naive"] for r in rounds]
    lines = [
        heading(args),
        "",
        f"`bench/bench_fetch.py{' --tmp ' + args.tmp if args.tmp else ''}` on this machine "
        f"({cores} CPU cores, shared), {time.strftime('%Y-%m-%d')}, {len(rounds)} interleaved "
        "rounds: medians, with the range in brackets; a ratio is taken within each round. "
        f"Chips written under `{where}` ({filesystem(where)}; creating a small new file there "
        f"took {spread([r['file_ms'] for r in rounds], 2, ' ms')}). "
        "50×50 px chips (89.6 m, bilinear, int16, deflate "
        "GeoTIFF) of the real SRTM tile N10W110, copied side by side over 6°×6° (lon −114…−108, "
        "lat 10…16, UTM zone 12) so that 20,000 distinct tiles exist; the copies are the same "
        "pixels with shifted georeferencing. Smaller runs take tiles spread evenly over the same "
        "20,000-tile area, so every run reads the same inputs. All make every chip with its "
        "own `reproject` onto the tile's grid, so the chips are the same.",
        "",
        "| run | tiles | chips/s | vs naive | peak RSS driver+workers |",
        "|---|---:|---:|---:|---:|",
        f"| naive loop (open, reproject, write; 1 process) | {args.baseline_tiles:,} | "
        f"{spread(naive_rates)} | 1.0× | — |",
        f"| same loop, sources opened once (1 process) | {args.baseline_tiles:,} | "
        f"{spread([r['open_once'] for r in rounds])} | "
        f"{spread([r['open_once'] / r['naive'] for r in rounds], 1, '×')} | — |",
    ]
    for position, count in enumerate(args.counts):
        runs = [r["runs"][position] for r in rounds]
        ratios = [r["runs"][position]["rate"] / r["naive"] for r in rounds]
        lines.append(
            f"| runner, LocalCluster {args.workers} workers (incl. start-up, plan, manifest) | "
            f"{count:,} | {spread([run['rate'] for run in runs])} | {spread(ratios, 1, '×')} | "
            f"{spread([run['peak_rss_mb'] for run in runs], 0, ' MB')} |"
        )
    if len(args.counts) >= 2:
        growth = [r["runs"][-1]["peak_rss_mb"] / r["runs"][0]["peak_rss_mb"] for r in rounds]
        lines += [
            "",
            f"Memory: {args.counts[-1] / args.counts[0]:.0f}× the tiles → "
            f"{spread(growth, 2, '×')} the peak RSS.",
        ]
    return "\n".join(lines) + "\n"


def heading(args: argparse.Namespace) -> str:
    return "## fetch" + (f" (chips under {args.tmp})" if args.tmp else "")


def filesystem(folder: str) -> str:
    """The file system type of ``folder`` (ext4, tmpfs, ...), from the mount table."""
    best, kind = "", "unknown file system"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(Path(folder).resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) only our section, leaving the others' sections alone."""
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    lines = existing.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        body = existing.rstrip("\n") + "\n\n" + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        body = "".join(lines[:start]) + text + ("\n" if end < len(lines) else "")
        body += "".join(lines[end:])
    path.write_text(body, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
