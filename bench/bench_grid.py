"""Benchmark of `m3leo-tiles grid`: all six built-in AOIs gridded and written, vs a baseline.

Each AOI runs in its own child process (so its peak RSS is its own) and writes a GeoJSON
grid plus splits CSV into a temporary folder. The baseline is the simple per-tile way:
for every lattice cell in the bounding box of the AOI's part in each zone, transform the
cell's corners to lon/lat with pyproj and test the box against the AOI with shapely, one
cell at a time. It is timed on a sample of cells of one AOI and extrapolated to all its
candidate cells (clearly marked as an extrapolation), measured in the same run.

    .venv/bin/python bench/bench_grid.py [--aois conus,europe] [--baseline-aoi pakin]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILTIN = ("conus", "europe", "middle-east", "pakin", "china", "south-america")


def run_one(name: str, out: Path) -> dict:
    """Child process: grid one AOI, report figures as JSON on stdout."""
    from m3leo_tiles.grid import make_grid

    started = time.perf_counter()
    result = make_grid(name, out_dir=out / name)
    seconds = time.perf_counter() - started
    size = result.path.stat().st_size + result.splits_path.stat().st_size
    return {
        "aoi": name,
        "tiles": result.tiles,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "megabytes": size / 1e6,
        "seam_km2": result.seam_overlap_km2,
        "counts": dict(result.counts),
    }


def baseline(name: str, sample: int) -> dict:
    """Per-cell shapely test of the AOI's candidate cells: timed on a sample, extrapolated."""
    import numpy as np
    from shapely.geometry import Polygon

    from m3leo_tiles.grid import load_aoi
    from m3leo_tiles.grid.lattice import project_to_zone, zone_pieces
    from m3leo_tiles.grid.tile import TILE_SIZE_M, to_lonlat_transformer

    aoi = load_aoi(name).geometry
    candidates = []  # (zone, row, col) of every cell in each zone piece's projected bbox
    for zone, piece in zone_pieces(aoi):
        minx, miny, maxx, maxy = project_to_zone(piece, zone).bounds
        cols = np.arange(int(minx // TILE_SIZE_M), int(maxx // TILE_SIZE_M) + 1)
        rows = np.arange(int(miny // TILE_SIZE_M), int(maxy // TILE_SIZE_M) + 1)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        candidates.append(np.column_stack([np.full(rr.size, zone), rr.ravel(), cc.ravel()]))
    cells = np.concatenate(candidates)
    pick = np.random.default_rng(0).choice(len(cells), size=min(sample, len(cells)), replace=False)
    hits = 0
    started = time.perf_counter()
    for zone, row, col in cells[pick]:
        x0, y0 = col * TILE_SIZE_M, row * TILE_SIZE_M
        xs = [x0, x0 + TILE_SIZE_M, x0 + TILE_SIZE_M, x0]
        ys = [y0, y0, y0 + TILE_SIZE_M, y0 + TILE_SIZE_M]
        lons, lats = to_lonlat_transformer(32600 + int(zone)).transform(xs, ys)
        if aoi.intersects(Polygon(zip(lons, lats, strict=True))):
            hits += 1
    seconds = time.perf_counter() - started
    per_cell = seconds / len(pick)
    return {
        "aoi": name,
        "sampled_cells": len(pick),
        "sample_seconds": seconds,
        "candidate_cells": len(cells),
        "hit_fraction": hits / len(pick),
        "extrapolated_seconds": per_cell * len(cells),
        "tiles_per_s": hits / seconds if seconds else float("inf"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aois", default=",".join(BUILTIN))
    parser.add_argument("--baseline-aoi", default="pakin")
    parser.add_argument("--sample", type=int, default=4000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.out)))
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        for name in args.aois.split(","):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--one", name, "--out", tmp],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["wall_seconds"] = time.perf_counter() - started
            rows.append(row)
            print(
                f"{name:14s} {row['tiles']:>9,} tiles  {row['seconds']:6.2f} s  "
                f"{row['tiles'] / row['seconds']:>9,.0f} tiles/s  "
                f"peak RSS {row['peak_rss_mb']:6.0f} MB  "
                f"files {row['megabytes']:6.0f} MB  (process wall {row['wall_seconds']:.1f} s)",
                flush=True,
            )
    tiles = sum(r["tiles"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    peak = max(r["peak_rss_mb"] for r in rows)
    print(f"{'total':14s} {tiles:>9,} tiles  {seconds:6.2f} s  {tiles / seconds:>9,.0f} tiles/s  "
          f"max peak RSS {peak:.0f} MB")  # fmt: skip

    base = baseline(args.baseline_aoi, args.sample)
    ours = next((r for r in rows if r["aoi"] == args.baseline_aoi), None)
    print(
        f"\nbaseline (per-cell pyproj + shapely.intersects, {base['sampled_cells']:,} of "
        f"{base['candidate_cells']:,} candidate cells of {base['aoi']} timed in "
        f"{base['sample_seconds']:.2f} s): {base['tiles_per_s']:,.0f} tiles/s; "
        f"EXTRAPOLATED to all candidates: {base['extrapolated_seconds']:.0f} s, gridding only"
    )
    if ours:
        print(
            f"speed-up on {base['aoi']}: {base['extrapolated_seconds'] / ours['seconds']:.0f}x "
            "(ours includes seams, splits and writing GeoJSON + CSV; the baseline writes nothing)"
        )
    from m3leo_tiles.grid import lattice_cells, load_aoi

    geometry = load_aoi(base["aoi"]).geometry
    started = time.perf_counter()
    cells = lattice_cells(geometry)
    gridding = time.perf_counter() - started
    print(
        f"gridding only, like for like: ours {len(cells):,} tiles with corners in {gridding:.2f} s "
        f"vs baseline {base['extrapolated_seconds']:.0f} s (extrapolated): "
        f"{base['extrapolated_seconds'] / gridding:.0f}x"
    )


if __name__ == "__main__":
    main()
