"""Benchmark of the ``gunw`` source: chips/s against the naive loop, and peak memory.

Setup (in a temp dir): GUNW replicas (tests/helpers/gunw_netcdf.py, the published layout:
four float32 layers at 3 arcsec, gzip) over one 1°×1° frame (lon -117.5…-116.5, lat
34.0…35.0, UTM zone 11), one product per pair, every product the same frame: each covers a
few hundred 4480 m tiles. A saved search describing them (the GeoJSON asf-search writes) and
the product folder are given to the source, so nothing is searched or downloaded.

* naive, measured in the same run: for each tile and each pair, open the product's four
  layers, warp each onto the tile's 50×50 px grid (89.6 m; bilinear, nearest for connected
  components), close, then write the chip as a deflate GeoTIFF with rasterio.
* ours: the adapter as a worker runs it, in one process: ``plan`` (saved search), batches of
  tiles with equal ``batch_key`` (as the runner makes them), ``render_many`` on each, chips
  written by ``m3leo_tiles.dataset.chipfile.write_chip``.
* runner: ``fetch`` with 2 local workers, end to end (absolute figure, cluster start included).
* memory: peak RSS of a fresh process running "ours" for a quarter of the tiles and 2 pairs,
  all tiles and 2 pairs, all tiles and all pairs.

Run: ``.venv/bin/python bench/bench_gunw.py [--pairs 6] [--write]``; ``--write`` puts the
section in bench/RESULTS.md under "## gunw".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.warp import reproject

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

from helpers.gunw_netcdf import ProductSpec, write_product  # noqa: E402
from m3leo_tiles.dataset.chipfile import write_chip  # noqa: E402
from m3leo_tiles.grid.lattice import grid_geometry  # noqa: E402
from m3leo_tiles.recipes import load_recipe  # noqa: E402
from m3leo_tiles.sources.base import FetchOptions, RenderContext  # noqa: E402
from m3leo_tiles.sources.gunw import GunwSource, _gunw_read  # noqa: E402

FRAME = (-117.5, 34.0, -116.5, 35.0)
RESOLUTION = 89.6


def make_products(folder: Path, pairs: int) -> tuple[list[Path], Path]:
    """``pairs`` replicas of one frame (12-day pairs) and their saved search."""
    folder.mkdir(parents=True, exist_ok=True)
    features, paths = [], []
    start = dt.date(2020, 1, 5)
    for index in range(pairs):
        secondary = start + dt.timedelta(days=12 * index)
        spec = ProductSpec(secondary + dt.timedelta(days=12), secondary, 64, "A", *FRAME,
                           frame=24900, seed=index)  # fmt: skip
        path = write_product(spec, folder)
        paths.append(path)
        features.append({
            "type": "Feature",
            "geometry": shapely.geometry.mapping(spec.footprint()),
            "properties": {"fileID": spec.name, "fileName": path.name, "frameNumber": 24900,
                           "pathNumber": 64, "bytes": path.stat().st_size,
                           "url": f"https://grfn.asf.alaska.edu/door/download/{path.name}"},
        })  # fmt: skip
    search = folder / "search.geojson"
    search.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return paths, search


def bench_tiles(limit: int | None = None) -> list:
    tiles = grid_geometry(shapely.box(*FRAME))
    return tiles[:limit] if limit else tiles


def adapter(products: Path, search: Path, cache: Path) -> GunwSource:
    options = FetchOptions(year=2020, sources=(str(products),), cache_dir=str(cache),
                           extra={"search-results": str(search)})  # fmt: skip
    source = GunwSource(load_recipe("gunw"), options)
    source.check()
    return source


def ours(products: Path, search: Path, out: Path, tiles: list) -> tuple[int, float]:
    """Chips made as a worker makes them (one process); returns (chips, seconds)."""
    started = time.perf_counter()
    source = adapter(products, search, out / "cache")
    inputs = source.plan(tiles)
    batches: dict = {}
    for tile in tiles:
        if inputs[tile.identifier]:
            key = source.batch_key(inputs[tile.identifier])
            batches.setdefault(key, []).append((tile, inputs[tile.identifier]))
    count = 0
    recipe = source.recipe
    with rasterio.Env():
        for items in batches.values():
            for start in range(0, len(items), 64):  # the runner's batches are at most this big
                for tile, chip in source.render_many(items[start : start + 64], RenderContext()):
                    if isinstance(chip, Exception):
                        raise chip
                    grid = tile.pixel_grid(RESOLUTION)
                    write_chip(out / f"{tile.identifier}.tif", chip, grid, recipe,
                               {"tile_id": tile.identifier})  # fmt: skip
                    count += 1
    return count, time.perf_counter() - started


def naive(paths: list[Path], search: Path, out: Path, tiles: list) -> tuple[int, float]:
    """For each tile and pair: open the product, warp its layers, close; write the chip.

    Which products a tile needs comes from the same saved search (footprints), as in ours.
    """
    started = time.perf_counter()
    features = json.loads(search.read_text())["features"]
    shapes = {f["properties"]["fileName"]: shapely.geometry.shape(f["geometry"]) for f in features}
    footprints = {path: shapes[path.name] for path in paths}
    count = 0
    for tile in tiles:
        polygon = tile.lonlat_polygon()
        covering = [p for p in paths if footprints[p].intersects(polygon)]
        if not covering:
            continue
        grid = tile.pixel_grid(RESOLUTION)
        bands, names = [], []
        for path in covering:
            for layer in _gunw_read.LAYERS:
                with rasterio.open(_gunw_read.layer_path(str(path), layer)) as dataset:
                    band = np.full((grid.height, grid.width), np.nan, "float32")
                    reproject(rasterio.band(dataset, 1), band, dst_transform=grid.transform,
                              dst_crs=grid.crs, dst_nodata=np.nan,
                              resampling=Resampling.nearest if layer.categorical
                              else Resampling.bilinear)  # fmt: skip
                bands.append(band)
                names.append(f"{path.stem[20:37]}_{layer.band}")
        with rasterio.open(out / f"{tile.identifier}.tif", "w", driver="GTiff", count=len(bands),
                           width=grid.width, height=grid.height, dtype="float32",
                           crs=grid.crs, transform=grid.transform, nodata=np.nan,
                           compress="deflate", tiled=False) as chip:  # fmt: skip
            chip.write(np.stack(bands))
            chip.descriptions = tuple(names)
        count += 1
    return count, time.perf_counter() - started


def peak_rss_mb(products: Path, search: Path, tiles: int, pairs: int) -> tuple[float, float]:
    """RSS of a fresh process once set up, and its peak while running ``ours`` on ``tiles``
    tiles of ``pairs`` pairs (MB)."""
    code = (
        "import sys, json, resource, tempfile, psutil; from pathlib import Path;"
        f"sys.argv=['x']; sys.path.insert(0, {str(REPO / 'bench')!r});"
        "import bench_gunw as b;"
        f"search = Path({str(search)!r}); data = json.loads(search.read_text());"
        f"data['features'] = data['features'][:{pairs}];"
        "sub = Path(tempfile.mkdtemp()); (sub / 's.geojson').write_text(json.dumps(data));"
        "before = psutil.Process().memory_info().rss;"
        f"n, _ = b.ours(Path({str(products)!r}), sub / 's.geojson', sub, b.bench_tiles({tiles}));"
        "print(json.dumps({'chips': n, 'before': before,"
        " 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["before"] / 2**20, result["rss"] / 1024.0


def runner(products: Path, search: Path, out: Path, tiles: list, workers: int) -> float:
    from m3leo_tiles.fetch.api import fetch_tiles

    started = time.perf_counter()
    report = fetch_tiles(
        load_recipe("gunw"),
        tiles,
        aoi="bench",
        year=2020,
        out=out,
        workers=workers,
        sources=(str(products),),
        cache=out / "cache",
        options={"search-results": str(search)},
        progress=False,
    )
    assert report.failed == 0, report.summary()
    return report.ok / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved naive/ours rounds")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-gunw-"))
    try:
        products = root / "products"
        paths, search = make_products(products, args.pairs)
        tiles = bench_tiles()
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        naive_rates, our_rates, ratios = [], [], []
        for round_ in range(args.rounds):  # interleaved: a shared machine's drift hits both
            for name in ("naive", "ours"):
                shutil.rmtree(root / name, ignore_errors=True)
                (root / name).mkdir()
            naive_chips, naive_s = naive(paths, search, root / "naive", tiles)
            our_chips, our_s = ours(products, search, root / "ours", tiles)
            assert naive_chips == our_chips
            naive_rates.append(naive_chips / naive_s)
            our_rates.append(our_chips / our_s)
            ratios.append(naive_s / our_s)
            print(
                f"round {round_ + 1}: naive {naive_rates[-1]:.1f} chips/s, ours "
                f"{our_rates[-1]:.1f} chips/s, {ratios[-1]:.1f}x",
                file=sys.stderr,
            )
        runner_rate = runner(products, search, root / "runner", tiles, workers=2)
        print(f"runner: {runner_rate:.1f} chips/s", file=sys.stderr)
        quarter = len(tiles) // 4
        memory = [(quarter, 2, peak_rss_mb(products, search, quarter, 2)),
                  (len(tiles), 2, peak_rss_mb(products, search, len(tiles), 2)),
                  (len(tiles), args.pairs, peak_rss_mb(products, search, len(tiles),
                                                      args.pairs))]  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        "## gunw",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, `bench/bench_gunw.py --pairs "
        f"{args.pairs}`: {args.pairs} GUNW replicas of one 1°×1° frame ({size_mb:.0f} MB of "
        f"netCDF), {our_chips} tiles with data of {len(tiles)}, {4 * args.pairs} bands a chip; "
        f"medians of {args.rounds} interleaved rounds (range of the ratio in brackets).",
        "",
        "| way | chips/s | vs naive |",
        "|---|---:|---:|",
        f"| naive: per tile and pair open, warp, close; rasterio write | "
        f"{np.median(naive_rates):.1f} | 1.0× |",
        f"| ours, one process: plan, batches by `batch_key`, `render_many`, `write_chip` | "
        f"{np.median(our_rates):.1f} | {np.median(ratios):.1f}× ({min(ratios):.1f}–"
        f"{max(ratios):.1f}) |",
        f"| `fetch_tiles`, 2 local workers (cluster start included) | {runner_rate:.1f} | "
        f"{runner_rate / np.median(naive_rates):.1f}× |",
        "",
        "Peak RSS of a fresh process making the chips (ours):",
        "",
        "| tiles | pairs | RSS set up | peak RSS |",
        "|---:|---:|---:|---:|",
        *[f"| {t} | {p} | {m[0]:.0f} MB | {m[1]:.0f} MB |" for t, p, m in memory],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        results = REPO / "bench" / "RESULTS.md"
        current = results.read_text()
        start = current.find("## gunw")
        if start >= 0:
            end = current.find("\n## ", start + 1)
            current = current[:start] + current[end + 1 if end >= 0 else len(current) :]
        results.write_text(current.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
