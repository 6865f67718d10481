"""Benchmark of `m3leo-tiles status --map`: the map of a CONUS-sized run (403k tiles).

A synthetic run is laid out the way ``fetch`` leaves one: the AOI's grid (``make_grid``,
GeoJSON, the default format), and two datasets whose manifests give every tile a status in
plausible patches (a region never reached: missing; two outages: failed, with a few dozen
distinct reasons and some tile-specific ones; a strip without scenes: no-source; scattered
empty tiles; the rest ok, each with its (empty) chip file so that status's size check
passes). Then, in the same run:

* writing the map (``write_run_map``): process CPU seconds and wall seconds, the file's size
  in MB, against ``status`` (the table) on the same folder as the baseline, and the grid's
  own GeoJSON file as the size of "every tile as a polygon";
* opening it in headless Chromium (Debian's, driven by playwright): wall seconds from
  navigation to the first full draw (the page sets ``m3leoMap.ready``), the seconds the
  page's main thread was busy meanwhile (DevTools' TaskDuration: parsing, script, drawing;
  waiting for a CPU is not counted), the page's own figure from its script's start, and the
  median time of a full redraw (what a pan or a zoom costs) and of finding the tile under
  the pointer.

    .venv/bin/python bench/bench_runmap.py [--aoi conus] [--repeats 3] [--png docs/x.png]
    .venv/bin/python bench/bench_runmap.py --quick      # the pakin AOI (205k tiles)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 7


def synthetic_run(aoi: str, root: Path) -> dict:
    """Grid ``aoi`` under ``root/grids`` and write two datasets' manifests and chips."""
    from pyproj import Transformer

    from m3leo_tiles.core.enums import TileStatus
    from m3leo_tiles.dataset.manifest import ManifestRow, write_manifest
    from m3leo_tiles.grid import make_grid, read_grid
    from m3leo_tiles.tools.runmap import _mercator_centres

    grid = make_grid(aoi, out_dir=root / "grids" / aoi, max_tiles=None)
    tiles = read_grid(grid.path).tiles
    ids = [t.identifier for t in tiles]
    lon, lat = Transformer.from_crs(3857, 4326, always_xy=True).transform(
        *(a.astype(float) for a in _mercator_centres(tiles))
    )
    lon, lat = np.asarray(lon), np.asarray(lat)
    w, e, s, n = lon.min(), lon.max(), lat.min(), lat.max()
    rng = np.random.default_rng(SEED)
    reasons = [f"cannot read scene S1_{k:03d}: HTTP 503 from the archive" for k in range(40)]
    made = {}
    for name, shift, corner in (("s2", 0.0, (0.75, 0.55)), ("dem", 0.35, (-0.15, 0.5))):
        u = (lon - w) / (e - w)
        v = (lat - s) / (n - s)
        status = np.full(len(ids), "ok", dtype=object)
        status[rng.random(len(ids)) < 0.04] = "empty"
        status[np.abs(u - (0.3 + shift) % 1) < 0.01] = "no-source"
        for cu, cv, r in ((0.2 + shift, 0.7, 0.06), (0.65, 0.3 + shift / 2, 0.04)):
            status[(u - cu % 1) ** 2 + (v - cv) ** 2 < r**2] = "failed"
        cu, cv = corner  # a corner the run has not reached yet (negative: the west side)
        status[((u > cu) if cu > 0 else (u < -cu)) & (v > cv)] = "missing"
        folder = root / "data" / aoi / name
        folder.mkdir(parents=True)
        rows = {}
        for k, (ident, st) in enumerate(zip(ids, status, strict=True)):
            if st == "missing":
                continue
            reason = ""
            if st == "failed":
                reason = reasons[k % len(reasons)] if k % 20 else f"tile {ident}: bad pixels"
            elif st == "empty":
                reason = "every pixel is nodata"
            elif st == "no-source":
                reason = "no scene covers the tile"
            ok = st == "ok"
            rows[ident] = ManifestRow(
                ident, TileStatus(st), reason, bytes=0 if ok else None, finished_at="2026-12-05"
            )
            if ok:
                os.close(os.open(folder / f"{ident}.tif", os.O_CREAT | os.O_WRONLY, 0o644))
        write_manifest(folder / "manifest.csv", rows)
        kinds, counts = np.unique(status, return_counts=True)
        made[name] = {str(k): int(v) for k, v in zip(kinds, counts, strict=True)}
    return {"tiles": len(ids), "grid_mb": grid.path.stat().st_size / 1e6, "datasets": made}


def timed(call) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of ``call()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return time.process_time() - cpu, time.perf_counter() - wall


def open_in_chromium(page_path: Path, repeats: int, png: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    opened, busy, in_page, redraw, hit = [], [], [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for k in range(repeats):
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            devtools = page.context.new_cdp_session(page)
            devtools.send("Performance.enable")
            started = time.perf_counter()
            page.goto(page_path.as_uri())
            page.wait_for_function("window.m3leoMap && window.m3leoMap.ready", timeout=120_000)
            opened.append(time.perf_counter() - started)
            metrics = devtools.send("Performance.getMetrics")["metrics"]
            busy.append(next(m["value"] for m in metrics if m["name"] == "TaskDuration"))
            in_page.append(page.evaluate("m3leoMap.drawMs") / 1000)
            redraw.append(
                page.evaluate(
                    """() => { const t = []; for (let k = 0; k < 9; k++) {
                         const s = performance.now(); m3leoMap.draw();
                         t.push(performance.now() - s);
                       } t.sort((a, b) => a - b); return t[4] / 1000; }"""
                )
            )
            hit.append(
                page.evaluate(
                    """() => { const s = performance.now();
                         for (let k = 0; k < 9; k++) m3leoMap.tileAt(500 + k, 300);
                         return (performance.now() - s) / 9 / 1000; }"""
                )
            )
            if png is not None and k == 0:
                page.screenshot(path=png)
            page.close()
        browser.close()
    return {
        "open_to_drawn_s": statistics.median(opened),
        "open_to_drawn_all_s": opened,
        "main_thread_busy_s": statistics.median(busy),
        "in_page_s": statistics.median(in_page),
        "redraw_s": statistics.median(redraw),
        "tile_under_pointer_s": statistics.median(hit),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aoi", default="conus")
    parser.add_argument("--quick", action="store_true", help="the pakin AOI (205k tiles)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--png", type=Path, help="save the first opening's screenshot here")
    parser.add_argument("--keep", type=Path, help="build the run here and keep it")
    args = parser.parse_args()
    aoi = "pakin" if args.quick else args.aoi

    from m3leo_tiles.tools.runmap import write_run_map
    from m3leo_tiles.tools.status import status

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-runmap-"))
    try:
        if not (root / "data").exists():
            made = synthetic_run(aoi, root)
        else:
            made = {"tiles": None, "datasets": "reused"}
        out, grids, page = root / "data", root / "grids", root / "map.html"
        writes, tables = [], []
        for _ in range(args.repeats):  # interleaved: the map, then the status table
            writes.append(timed(lambda: write_run_map(out, page, grids)))
            tables.append(timed(lambda: status(out, grids)))
        write_cpu = statistics.median(c for c, _ in writes)
        table_cpu = statistics.median(c for c, _ in tables)
        result = {
            "aoi": aoi,
            "run": made,
            "map_mb": page.stat().st_size / 1e6,
            "write_cpu_s": write_cpu,
            "write_wall_s": statistics.median(w for _, w in writes),
            "status_table_cpu_s": table_cpu,
            "write_cpu_over_status": write_cpu / table_cpu,
            "browser": open_in_chromium(page, args.repeats, args.png),
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
