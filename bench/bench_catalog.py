"""Seconds and MB of ``m3leo-tiles catalog`` for a CONUS-sized dataset, against a baseline.

The dataset: the CONUS grid (``make_grid conus``: 403,363 tiles, parquet) and one chip per
tile with its manifest row (size, CRC-32). The catalog reads one chip's header and only
scans the others (names and sizes), so the chips here are one real chip (GUNW-free: a
uniform dataset, 50 x 50 px int16, written by the package's chip writer) hard-linked under
every tile's name: the folder looks like a real one to everything the catalog does, and
takes no disk. Measured, each in its own child process (imports included, as a user runs
it), process CPU seconds (user + system: a busy machine inflates these little) and wall:

1. first catalog: every Item built and written (``items.parquet`` + ``collection.json``);
2. rerun, nothing changed: the fingerprints compared, nothing written;
3. rerun after 1% more chips: the whole parquet rewritten (what changed is new);

Baseline, in the same run: the per-object way, one pystac ``Item`` per chip with the same
fields (projection, file, ml-aoi), converted with ``stac_geoparquet.arrow`` and written, for
a sample of ``--baseline`` chips, extrapolated linearly to all of them.

Run: ``.venv/bin/python bench/bench_catalog.py [--tiles N] [--baseline 10000] [--tmp DIR]``
(``--quick``: 20,000 tiles and a 2,000-Item baseline, a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

CHILD_CATALOG = """
import json, resource, sys, time
from pathlib import Path
started = time.perf_counter()
from m3leo_tiles.tools.catalog import write_catalog
imported = resource.getrusage(resource.RUSAGE_SELF)
report = write_catalog(Path(sys.argv[1]), grid=Path(sys.argv[2]))


def hwm_mb():  # this process's own peak: ru_maxrss also counts the parent's RSS at fork
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
                  "work": usage.ru_utime + usage.ru_stime - imported.ru_utime - imported.ru_stime,
                  "rss_mb": hwm_mb(), "items": report.items,
                  "written": report.written, "changed": report.changed}))
"""

CHILD_BASELINE = """
import json, resource, sys, time
from datetime import datetime, timezone
started = time.perf_counter()
import pystac, pyproj, stac_geoparquet.arrow as sga
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.file import FileExtension
from shapely.geometry import mapping
from m3leo_tiles.grid.tile import Tile
imported = resource.getrusage(resource.RUSAGE_SELF)
folder, count = sys.argv[1], int(sys.argv[2])
ids = json.loads(open(sys.argv[3]).read())[:count]
start = datetime(2020, 1, 1, tzinfo=timezone.utc)
end = datetime(2020, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
items = []
for identifier in ids:
    tile = Tile.from_id(identifier)
    polygon = tile.lonlat_polygon()
    item = pystac.Item(identifier, mapping(polygon), list(polygon.bounds), None, {},
                       start_datetime=start, end_datetime=end, collection="conus-bench")
    grid = tile.pixel_grid(89.6)
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.code, projection.shape = tile.crs, [grid.height, grid.width]
    projection.transform, projection.bbox = list(grid.transform)[:6], list(tile.bounds)
    item.properties["ml-aoi:split"] = "train"
    asset = pystac.Asset(f"./{identifier}.tif", media_type=pystac.MediaType.GEOTIFF,
                         roles=["data"])
    item.add_asset("chip", asset)
    info = FileExtension.ext(asset, add_if_missing=True)
    info.size, info.checksum = 1000, "b2020400000000"
    items.append(item.to_dict())
sga.parse_stac_items_to_parquet(items, output_path=folder + "/baseline.parquet")
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
                  "work": usage.ru_utime + usage.ru_stime - imported.ru_utime - imported.ru_stime,
                  "items": len(items)}))
"""


def child(code: str, *args: object) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_dataset(base: Path, tiles: int) -> tuple[Path, Path, list[str]]:
    """The CONUS grid, and a dataset folder with a chip and manifest row for ``tiles`` of it."""
    from m3leo_tiles.core.enums import TileStatus
    from m3leo_tiles.dataset.chipfile import write_chip
    from m3leo_tiles.dataset.manifest import ManifestRow, write_manifest
    from m3leo_tiles.grid import make_grid, read_grid
    from m3leo_tiles.recipes import Recipe
    from m3leo_tiles.sources.base import Chip

    result = make_grid("conus", base / "grids" / "conus", fmt="parquet")
    grid_tiles = read_grid(result.path).tiles
    chosen = [grid_tiles[i] for i in np.linspace(0, len(grid_tiles) - 1, tiles).astype(int)]
    folder = base / "data" / "conus" / "bench-2020"
    folder.mkdir(parents=True)
    recipe = Recipe(name="bench", source="raster", resolution=89.6, bands=("elevation",),
                    dtype="int16", nodata=-32768, params={"inputs": "/x.tif"})  # fmt: skip
    first = chosen[0]
    grid = first.pixel_grid(89.6)
    data = np.arange(grid.height * grid.width, dtype="int16").reshape(1, grid.height, grid.width)
    written = write_chip(folder / f"{first.identifier}.tif", Chip(data, ("elevation",)), grid,
                         recipe, {})  # fmt: skip
    payload = (folder / f"{first.identifier}.tif").read_bytes()
    crc = f"{zlib.crc32(payload):08x}"
    rows = {}
    for tile in chosen:
        path = folder / f"{tile.identifier}.tif"
        if tile is not first:
            os.link(folder / f"{first.identifier}.tif", path)
        rows[tile.identifier] = ManifestRow(tile.identifier, TileStatus.OK, seconds=0.1,
                                            recipe_hash=recipe.recipe_hash,
                                            bytes=written.size, crc32=crc)  # fmt: skip
    write_manifest(folder / "manifest.csv", rows)
    return folder, result.path, [t.identifier for t in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=None, help="chips (default: all CONUS)")
    parser.add_argument("--baseline", type=int, default=10_000, help="Items of the baseline")
    parser.add_argument("--quick", action="store_true", help="20,000 chips, 2,000 baseline")
    parser.add_argument("--tmp", type=Path, default=None, help="where the dataset is made")
    args = parser.parse_args()
    if args.quick:
        args.tiles, args.baseline = args.tiles or 20_000, 2_000
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        base = Path(tmp)
        tiles = args.tiles or 403_363
        made = time.perf_counter()
        folder, grid, ids = make_dataset(base, tiles)
        print(f"dataset: {len(ids):,} chips in {time.perf_counter() - made:.0f} s", flush=True)
        held_out = ids[::100]  # 1%: catalogued later, as chips a later fetch adds
        aside = base / "aside"
        aside.mkdir()
        for identifier in held_out:
            os.replace(folder / f"{identifier}.tif", aside / f"{identifier}.tif")
        (base / "ids.json").write_text(json.dumps(ids))

        first = child(CHILD_CATALOG, folder, grid)
        again = child(CHILD_CATALOG, folder, grid)
        for identifier in held_out:
            os.replace(aside / f"{identifier}.tif", folder / f"{identifier}.tif")
        grown = child(CHILD_CATALOG, folder, grid)
        baseline = child(CHILD_BASELINE, base, min(args.baseline, len(ids)), base / "ids.json")

        names = ("items.parquet", "collection.json", ".catalog-state.parquet")
        sizes = {name: (folder / name).stat().st_size / 1e6 for name in names}
        per_item = baseline["work"] / baseline["items"]
        projected = per_item * grown["items"]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print("| run | Items | CPU s (all) | CPU s (after imports) | wall s | peak RSS |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, run in (("first catalog", first), ("rerun, nothing changed", again),
                          ("rerun after 1% more chips", grown)):  # fmt: skip
            print(f"| {name} | {run['items']:,} | {run['cpu']:.1f} | {run['work']:.1f} | "
                  f"{run['wall']:.1f} | {run['rss_mb']:.0f} MB |")  # fmt: skip
        print(
            f"| baseline: pystac Items + stac-geoparquet | {baseline['items']:,} | "
            f"{baseline['cpu']:.1f} | {baseline['work']:.1f} | {baseline['wall']:.1f} | — |"
        )
        print(f"baseline extrapolated to {grown['items']:,} Items: {projected:.0f} CPU s after "
              f"imports → catalog {projected / grown['work']:.0f}x less (first catalog: "
              f"{per_item * first['items'] / first['work']:.0f}x)")  # fmt: skip
        print("files: " + ", ".join(f"{name} {mb:.1f} MB" for name, mb in sizes.items()))


if __name__ == "__main__":
    main()
