"""Where a chip's time goes: each step of ``render_batch`` timed alone, in one process.

Same inputs as ``bench_fetch.py`` (the real SRTM tile N10W110 copied over 6°×6°, 50×50 px
chips at 89.6 m, bilinear, int16). Every step runs over the same tiles ``--repeat`` times and
prints the fastest and the median pass in ms per chip, each next to the plain way of doing
the same step (the baseline) measured in the same run:

* warp: ``reproject`` of a kept-open dataset into our reused MEM raster, vs into a new array;
* encode: tifffile with the kind's GDAL tags (``m3leo_tiles.dataset.geotiff``), vs GDAL's own
  writer;
* new file: write + rename a finished chip's bytes, vs overwriting an existing file;
* whole chip: ``render_batch`` (warp, empty test, encode, atomic write, manifest row).

Run: ``.venv/bin/python bench/bench_chip_steps.py [--tmp /dev/shm]`` (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fetch import NODATA, RESOLUTION, bench_tiles, make_sources, source_of
from m3leo_tiles.dataset.chipfile import write_bytes_atomically
from m3leo_tiles.dataset.geotiff import ChipEncoder, ChipKind, encode_with_gdal
from m3leo_tiles.fetch.worker import Batch, render_batch
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.sources._gdal import scratch_raster
from m3leo_tiles.sources.base import FetchOptions, get_source

TAGS = {"inputs": "srtm.tif", "recipe": "bench", "recipe_hash": "0" * 12, "tile_id": "x"}


def timed(step: Callable[[], None], count: int, repeat: int) -> tuple[float, float]:
    """(fastest, median) ms per chip over ``repeat`` passes of ``step``."""
    passes = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        passes.append((time.perf_counter() - started) / count * 1e3)
    return min(passes), statistics.median(passes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="folder for sources and chips")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-steps-", dir=args.tmp) as tmp:
        root = Path(tmp)
        (root / "sources").mkdir()
        make_sources(root / "sources")
        tiles = bench_tiles(args.tiles)
        grids = [tile.pixel_grid(RESOLUTION) for tile in tiles]
        paths = [source_of(tile, root / "sources") for tile in tiles]
        datasets = {path: rasterio.open(path) for path in set(paths)}
        chips: list[np.ndarray] = []

        def warp_scratch() -> None:
            chips.clear()
            for path, grid in zip(paths, grids, strict=True):
                scratch = scratch_raster(1, grid, "int16")
                scratch.reset(grid, NODATA)
                reproject(rasterio.band(datasets[path], 1), scratch.band([1]),
                          src_nodata=NODATA, dst_nodata=NODATA,
                          resampling=Resampling.bilinear, init_dest_nodata=False)  # fmt: skip
                chips.append(scratch.read())

        def warp_array() -> None:
            for path, grid in zip(paths, grids, strict=True):
                chip = np.full((1, grid.height, grid.width), NODATA, dtype="int16")
                reproject(rasterio.band(datasets[path], 1), chip,
                          dst_transform=grid.transform, dst_crs=grid.crs,
                          dst_nodata=NODATA, resampling=Resampling.bilinear)  # fmt: skip

        encoder = ChipEncoder()
        payloads: list[bytes] = []

        def encode_tifffile() -> None:
            payloads.clear()
            for chip, grid in zip(chips, grids, strict=True):
                payloads.append(encoder.encode(chip, grid.crs, grid.transform, "int16", NODATA,
                                               ("elevation",), TAGS))  # fmt: skip

        def encode_gdal() -> None:
            for chip, grid in zip(chips, grids, strict=True):
                pixel = (grid.transform.a, grid.transform.e)
                kind = ChipKind(grid.crs, pixel, 1, grid.height, grid.width, "int16", NODATA,
                                ("elevation",), tuple(sorted(TAGS)))  # fmt: skip
                encode_with_gdal(chip, kind, grid.transform, TAGS)

        files = root / "files"
        files.mkdir()
        passes = iter(range(1_000_000))

        def new_files() -> None:
            folder = files / str(next(passes))
            folder.mkdir()
            for index, payload in enumerate(payloads):
                write_bytes_atomically(folder / f"{index}.tif", payload)

        def overwrite_files() -> None:
            for index, payload in enumerate(payloads):
                (files / f"{index}.tif").write_bytes(payload)

        recipe = Recipe(name="bench-steps", source="raster", resolution=RESOLUTION,
                        bands=("elevation",), resampling="bilinear", dtype="int16",
                        nodata=NODATA)  # fmt: skip
        adapter = get_source("raster")(recipe, FetchOptions(sources=tuple(map(str, datasets))))
        plan = adapter.plan(tiles)
        items = tuple((tile, plan[tile.identifier]) for tile in tiles)
        chips_dir = root / "chips"
        chips_dir.mkdir()

        def whole_chip() -> None:
            render_batch(adapter, Batch(str(chips_dir), items))

        warp_scratch()  # warm: GDAL block cache, open datasets, encoder templates
        encode_tifffile()
        rows = [
            ("warp", timed(warp_scratch, len(tiles), args.repeat),
             timed(warp_array, len(tiles), args.repeat), "into a new array"),
            ("encode GeoTIFF", timed(encode_tifffile, len(tiles), args.repeat),
             timed(encode_gdal, len(tiles), args.repeat), "GDAL's writer"),
            ("new file (write + rename)", timed(new_files, len(tiles), args.repeat),
             timed(overwrite_files, len(tiles), args.repeat), "overwrite a file"),
            ("whole chip (`render_batch`)", timed(whole_chip, len(tiles), args.repeat),
             None, ""),
        ]  # fmt: skip
        for dataset in datasets.values():
            dataset.close()

    print(f"{len(tiles)} chips of 50×50 px, {args.repeat} passes; ms per chip, fastest / median")
    print("| step | ours | baseline | baseline is |")
    print("|---|---:|---:|---|")
    for name, ours, base, what in rows:
        base_text = f"{base[0]:.3f} / {base[1]:.3f}" if base else "—"
        print(f"| {name} | {ours[0]:.3f} / {ours[1]:.3f} | {base_text} | {what} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
