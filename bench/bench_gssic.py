"""Benchmark of the ``gssic`` recipe: chips/s against the naive loop, memory vs tile count, and
how remote cells are best read (``/vsicurl/`` ranges or whole-file downloads).

Setup (in a temp dir): a mirror laid out like the GSSIC bucket, written by
tests/helpers/gssic_tiles.py (bucket keys, 1200 × 1200 3-arcsec EPSG:4326 cells, uint8
coherence and uint16 amplitude/decay files, LZW, nodata 0; synthetic values) for every file of
the shipped recipe (4 seasons × VV, VH × COH12/24/36/48, AMP, rho, tau, rmse = 64 per cell).

* speed, on the 2 × 2 cells lon −119…−117, lat 33…35 (about 2,000 tiles in UTM 11N), every
  chip the full 64 bands at 89.6 m:
  - naive: for each tile and band, open each cell file it needs, ``reproject`` it onto the
    chip, close it; write the chip (deflate GeoTIFF); one process.
  - runner: ``fetch_tiles`` with the gssic recipe and ``--source MIRROR`` on a LocalCluster.
* memory: peak RSS (driver + workers) of the runner for 1,000 and for 10,000 tiles, on a
  5 × 4-cell mirror (lon −121…−116, lat 32…36), each run in a fresh process.
* remote: the same recipe through a loopback HTTP server with per-request latency (a bucket
  stand-in), ``remote: stream`` (GDAL's ``/vsicurl/`` range reads) against ``remote: download``
  (whole files into ``--cache``): chips/s, requests and bytes served.

Run: ``.venv/bin/python bench/bench_gssic.py`` (about 10 minutes on 2 cores); ``--write``
puts the section "## gssic" into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from rasterio.warp import Resampling, reproject

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]

from bench_fetch import PeakRss, filesystem, write_section  # noqa: E402
from helpers.gssic_tiles import cell_name, write_mirror  # noqa: E402

SPEED_CELLS = (range(-119, -117), range(33, 35))  # lon, lat of the cells' south-west corners
MEMORY_CELLS = (range(-121, -116), range(32, 36))
ZONE = 11
RANGE = re.compile(r"bytes=(\d+)-(\d+)")


def cells(block: tuple[range, range]) -> list[str]:
    return [cell_name(lon + 0.5, lat + 0.5) for lon in block[0] for lat in block[1]]


def block_tiles(block: tuple[range, range], count: int | None = None):
    """Zone-11 tiles wholly inside the block, ``count`` of them spread evenly (all if None)."""
    from m3leo_tiles.grid.tile import Tile

    west, east = block[0][0], block[0][-1] + 1
    south, north = block[1][0], block[1][-1] + 1
    corner_sw = Tile.from_point(west + 0.01, south + 0.01, ZONE)
    corner_ne = Tile.from_point(east - 0.01, north - 0.01, ZONE)
    corner_nw = Tile.from_point(west + 0.01, north - 0.01, ZONE)
    corner_se = Tile.from_point(east - 0.01, south + 0.01, ZONE)
    rows = range(min(corner_sw.row, corner_se.row), max(corner_ne.row, corner_nw.row) + 1)
    cols = range(min(corner_sw.col, corner_nw.col), max(corner_ne.col, corner_se.col) + 1)
    inside = []
    for row in rows:
        for col in cols:
            tile = Tile(ZONE, row, col)
            lon0, lat0, lon1, lat1 = tile.lonlat_polygon().bounds
            if west < lon0 and lon1 < east and south < lat0 and lat1 < north:
                inside.append(tile)
    if count is None:
        return inside
    if count > len(inside):
        raise SystemExit(f"the block holds only {len(inside)} tiles, fewer than {count}")
    step = len(inside) / count
    return [inside[int(i * step)] for i in range(count)]


def naive_loop(tiles, mirror: Path, out: Path) -> float:
    """The loop a user would write first: every file opened for every chip; returns chips/s."""
    from m3leo_tiles.recipes import load_recipe

    recipe = load_recipe("gssic")
    grid = recipe.params["layer_grids"][0]["axes"]
    layers = [(s, p, m) for s in grid["season"] for p in grid["pol"] for m in grid["metric"]]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for tile in tiles:
        pixel_grid = tile.pixel_grid(recipe.resolution)
        west, south, east, north = tile.lonlat_polygon().bounds
        needed = sorted({cell_name(lon, lat) for lon in (west, east) for lat in (south, north)})
        chip = np.zeros((len(layers), pixel_grid.height, pixel_grid.width), "uint16")
        for band, (season, pol, metric) in enumerate(layers):
            for cell in needed:
                path = mirror / f"data/tiles/{cell}/{cell}_{season}_{pol}_{metric}.tif"
                if not path.exists():
                    continue
                with rasterio.open(path) as source:
                    reproject(rasterio.band(source, 1), chip[band],
                              dst_transform=pixel_grid.transform, dst_crs=pixel_grid.crs,
                              src_nodata=0, dst_nodata=0, resampling=Resampling.bilinear,
                              init_dest_nodata=False)  # fmt: skip
        profile = dict(
            driver="GTiff", width=pixel_grid.width, height=pixel_grid.height,
            count=len(layers), dtype="uint16", crs=pixel_grid.crs,
            transform=pixel_grid.transform, nodata=0, compress="deflate",
        )  # fmt: skip
        with rasterio.open(out / f"{tile.identifier}.tif", "w", **profile) as dst:
            dst.write(chip)
    return len(tiles) / (time.perf_counter() - started)


class DriverRss(PeakRss):
    """Peak RSS of this process alone (the driver: plan, manifest, scheduler client)."""

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, me.memory_info().rss)
            time.sleep(interval)


def runner_once(spec: dict) -> dict:
    """One runner run in this (fresh) process: spec = count, block, root, out, mode, cache."""
    import yaml

    from m3leo_tiles.fetch.api import fetch_tiles
    from m3leo_tiles.recipes import parse_recipe

    data = yaml.safe_load((REPO / "recipes" / "gssic.yaml").read_text())
    data["params"]["remote"] = spec["mode"]
    recipe = parse_recipe(data, "bench", REPO / "recipes" / "gssic.yaml")
    tiles = block_tiles(tuple(range(*r) for r in spec["block"]), spec["count"])
    with PeakRss() as memory, DriverRss() as driver:
        report = fetch_tiles(
            recipe, tiles, aoi="bench", out=Path(spec["out"]), workers=spec["workers"],
            sources=(spec["root"],), cache=Path(spec["cache"]), progress=False,
        )  # fmt: skip
    return {"tiles": len(tiles), "seconds": report.seconds, "ok": report.ok,
            "failed": report.failed, "peak_rss_mb": memory.peak / 2**20,
            "driver_rss_mb": driver.peak / 2**20}  # fmt: skip


def runner_child(spec: dict) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if child.returncode != 0:
        raise SystemExit(child.stderr)
    run = json.loads(child.stdout.strip().splitlines()[-1])
    if run["ok"] != run["tiles"]:
        raise SystemExit(f"runner made {run['ok']} of {run['tiles']} chips: {run}")
    run["rate"] = run["tiles"] / run["seconds"]
    return run


def served_bytes(requests: list[tuple[str, str, str]], mirror: Path) -> int:
    total = 0
    for method, path, range_header in requests:
        if method != "GET" or not path.endswith(".tif"):
            continue
        match = RANGE.match(range_header or "")
        size = (mirror / path.lstrip("/")).stat().st_size
        total += min(size, int(match.group(2)) + 1) - int(match.group(1)) if match else size
    return total


def spec_block(block: tuple[range, range]) -> list[list[int]]:
    return [[r.start, r.stop] for r in block]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--naive-tiles", type=int, default=100)
    parser.add_argument("--counts", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--remote-tiles", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--tmp", default=None, help="folder for mirror and chips")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(runner_once(json.loads(args.child))))
        return 0

    from helpers.loopback import serve_files_in_process

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-gssic-", dir=args.tmp) as tmp:
        root = Path(tmp)
        mirror = root / "mirror"
        started = time.perf_counter()
        files = write_mirror(mirror, cells(MEMORY_CELLS))
        results["mirror"] = (len(files), sum(f.stat().st_size for f in files),
                             time.perf_counter() - started)  # fmt: skip
        print(f"mirror: {len(files)} files", file=sys.stderr)
        speed_tiles = block_tiles(SPEED_CELLS)
        results["speed_block_tiles"] = len(speed_tiles)
        naive_tiles = block_tiles(SPEED_CELLS, args.naive_tiles)
        results["naive"] = naive_loop(naive_tiles, mirror, root / "naive")
        print(f"naive: {results['naive']:.1f} chips/s", file=sys.stderr)
        base = {"root": str(mirror), "mode": "download", "workers": args.workers,
                "cache": str(root / "cache")}  # fmt: skip
        results["runs"] = []
        for count in args.counts:
            block = SPEED_CELLS if count <= len(speed_tiles) else MEMORY_CELLS
            spec = {**base, "count": count, "block": spec_block(block),
                    "out": str(root / f"out-{count}")}  # fmt: skip
            results["runs"].append({**runner_child(spec), "cells": len(cells(block))})
            print(f"runner {count}: {results['runs'][-1]}", file=sys.stderr)
        results["remote"] = {}
        for mode in ("stream", "download"):
            with serve_files_in_process(mirror, latency_s=args.latency_ms / 1000) as server:
                spec = {**base, "root": server.url, "mode": mode, "count": args.remote_tiles,
                        "block": spec_block(SPEED_CELLS), "out": str(root / f"remote-{mode}"),
                        "cache": str(root / f"cache-{mode}")}  # fmt: skip
                run = runner_child(spec)
                requests = server.requests()
            run["requests"] = sum(1 for m, p, _ in requests if m == "GET" and p.endswith(".tif"))
            run["bytes"] = served_bytes(requests, mirror)
            cache_bytes = sum(p.stat().st_size for p in (root / f"cache-{mode}").rglob("*.tif"))
            run["cache_bytes"] = cache_bytes
            results["remote"][mode] = run
            print(f"remote {mode}: {run}", file=sys.stderr)
        where = args.tmp or tempfile.gettempdir()
        results["fs"] = f"{where} ({filesystem(where)})"
    text = report(results, args)
    print(text)
    if args.write:
        write_section(REPO / "bench" / "RESULTS.md", "## gssic", text)
    return 0


def report(results: dict, args: argparse.Namespace) -> str:
    files, size, seconds = results["mirror"]
    naive = results["naive"]
    lines = [
        "## gssic",
        "",
        f"`bench/bench_gssic.py` on this machine ({os.cpu_count()} CPU cores, shared), "
        f"{time.strftime('%Y-%m-%d')}, one round; chips and mirror under {results['fs']}. "
        f"Mirror written by tests/helpers/gssic_tiles.py: {files} GSSIC-named cells "
        f"({size / 2**20:,.0f} MiB, {seconds:.0f} s to write). Every chip is the shipped recipe's "
        "64 bands (4 seasons × VV, VH × COH12/24/36/48, AMP, rho, tau, rmse), 50 × 50 px at "
        "89.6 m, bilinear, uint16. Speed: tiles spread evenly over the 2 × 2 cells "
        f"lon −119…−117, lat 33…35 ({results['speed_block_tiles']:,} tiles, UTM 11N).",
        "",
        "| run | tiles | chips/s | vs naive | peak RSS driver+workers |",
        "|---|---:|---:|---:|---:|",
        f"| naive loop (open every file a chip needs, reproject, close; write; 1 process) | "
        f"{args.naive_tiles:,} | {naive:.1f} | 1.0× | — |",
    ]
    for run in results["runs"]:
        lines.append(
            f"| runner, LocalCluster {args.workers} workers, mirror folder ({run['cells']} "
            f"cells; incl. start-up, plan, manifest) | {run['tiles']:,} | {run['rate']:.1f} | "
            f"{run['rate'] / naive:.1f}× | {run['peak_rss_mb']:,.0f} MB (driver "
            f"{run['driver_rss_mb']:,.0f} MB) |"
        )
    if len(results["runs"]) >= 2:
        first, last = results["runs"][0], results["runs"][-1]
        lines += ["", f"Memory: {last['tiles'] / first['tiles']:.0f}× the tiles → "
                  f"{last['peak_rss_mb'] / first['peak_rss_mb']:.2f}× the peak RSS."]  # fmt: skip
    lines += [
        "",
        f"Remote: {args.remote_tiles} tiles spread over the same 2 × 2 cells, read from a "
        f"loopback HTTP server (child process, Range support) answering each request after "
        f"{args.latency_ms:g} ms, through the runner ({args.workers} workers, "
        "`--http-concurrency` 16):",
        "",
        "| remote read | chips/s | GET requests | bytes served | cache on disk |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, run in results["remote"].items():
        label = {"stream": "`remote: stream` (GDAL `/vsicurl/` ranges)",
                 "download": "`remote: download` (whole files, `--cache`)"}[mode]  # fmt: skip
        lines.append(
            f"| {label} | {run['rate']:.1f} | {run['requests']:,} | "
            f"{run['bytes'] / 2**20:,.1f} MiB | {run['cache_bytes'] / 2**20:,.1f} MiB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
