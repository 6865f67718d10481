"""What 403k chips in one folder cost, against the same chips sharded into sub-folders.

Issue #19 asks whether a dataset folder of a whole AOI's chips (CONUS: 403,363 files) should be
split into sub-folders. This lays the same files out three ways and times what users and the
tool do with them:

- ``flat``: ``<dataset>/<tile>.tif`` (today's layout);
- ``zone``: ``<dataset>/<zone>/<tile>.tif`` (one folder per UTM zone: CONUS has 10 of ~40k);
- ``zone-row``: ``<dataset>/<zone>/<row // 10>/<tile>.tif`` (folders of ~1,500).

Operations: writing the chips (new file beside, renamed into place, as fetch does), the scan
that fetch's plan, ``status`` and the Dataset's index make (``os.scandir`` names + sizes), ``ls``
as a user types it, stat of every chip, ``du -s``, a first ``rsync -a`` copy and a no-op
``rsync -a`` rerun (what a cron job syncing to a cluster or a bucket mirror does), each once
with the page cache warm and the listing once cold (``drop_caches``, root only). Figures are
printed as ratios to ``flat``, measured in the same run.

Run: ``python bench/bench_folders.py [--tiles N] [--where DIR]`` (defaults: all CONUS tiles, a
temporary folder beside the repo). Builds the CONUS grid
first (3 s). Needs ``rsync`` (``apt-get install rsync``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

LAYOUTS = ("flat", "zone", "zone-row")


def conus_ids(limit: int | None) -> list[str]:
    """The CONUS tile ids, from the grid the CLI builds (the real id strings and their spread
    over zones); ``limit`` takes every n-th, so a sample keeps the spread."""
    import pandas as pd

    from m3leo_tiles.grid.build import make_grid

    with tempfile.TemporaryDirectory() as out:
        grid = make_grid("conus", Path(out), fmt="parquet")
        ids = sorted(pd.read_csv(grid.splits_path)["identifier"].tolist())
    return ids[:: max(1, len(ids) // limit)][:limit] if limit else ids


def relative_path(layout: str, tile_id: str) -> str:
    zone, row, _ = tile_id.split("_")
    if layout == "flat":
        return f"{tile_id}.tif"
    if layout == "zone":
        return f"{zone}/{tile_id}.tif"
    return f"{zone}/{int(row) // 10:04d}/{tile_id}.tif"


def sample_chip(path: Path) -> bytes:
    """A real 10x10 px float32 chip (the scale run's raster chips), as GDAL writes it."""
    profile = dict(
        driver="GTiff",
        width=10,
        height=10,
        count=1,
        dtype="float32",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 448, 448),
        compress="deflate",
        predictor=3,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.random.default_rng(0).random((1, 10, 10), dtype=np.float32))
    return path.read_bytes()


def write_all(root: Path, layout: str, ids: Iterable[str], data: bytes) -> None:
    """As fetch writes chips: a hidden part file beside the chip, renamed over it."""
    made: set[Path] = set()
    for tile_id in ids:
        target = root / relative_path(layout, tile_id)
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        part = target.parent / f".{target.name}.part"
        with open(part, "wb") as f:
            f.write(data)
        os.replace(part, target)


def scan(root: Path) -> dict[str, int]:
    """Chip names and sizes, recursing into sub-folders (what status/plan/the Dataset need)."""
    sizes: dict[str, int] = {}
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.name.endswith(".tif"):
                    sizes[entry.name[:-4]] = entry.stat().st_size
    return sizes


def stat_each(root: Path, layout: str, ids: list[str]) -> None:
    for tile_id in ids:
        os.stat(root / relative_path(layout, tile_id))


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def measure_layout(
    where: Path, lay: str, ids: list[str], data: bytes, s3: str | None = None
) -> dict[str, float]:
    """Seconds of each operation on one layout, from an empty folder; with ``s3`` (an S3
    endpoint on this machine, e.g. ``moto_server`` on 127.0.0.1, holding a bucket ``bench``) also
    ``aws s3 sync`` of the folder, first and with nothing new."""
    root, copy = where / lay / "dataset", where / lay / "copy"
    shutil.rmtree(where / lay, ignore_errors=True)
    seconds = {"write chips": timed(lambda: write_all(root, lay, ids, data))}
    if drop_caches():
        seconds["scan, cold cache"] = timed(lambda: scan(root))
    seconds["scan (names+sizes)"] = timed(lambda: scan(root))
    seconds["ls -R (sorted)"] = timed(lambda: run(["ls", "-R", str(root)]))
    seconds["stat every chip"] = timed(lambda: stat_each(root, lay, ids))
    seconds["du -s"] = timed(lambda: run(["du", "-s", str(root)]))
    rsync = ["rsync", "-a", f"{root}/", f"{copy}/"]
    seconds["rsync -a, first copy"] = timed(lambda: run(rsync))
    seconds["rsync -a, nothing new"] = timed(lambda: run(rsync))
    if s3:
        sync = [
            "aws",
            "--endpoint-url",
            s3,
            "s3",
            "sync",
            "--only-show-errors",
            str(root),
            f"s3://bench/{where.name}/{lay}",
        ]
        seconds["aws s3 sync, first"] = timed(lambda: run(sync))
        seconds["aws s3 sync, nothing new"] = timed(lambda: run(sync))
    shutil.rmtree(where / lay, ignore_errors=True)
    return seconds


def measure(
    where: Path, ids: list[str], data: bytes, repeats: int, s3: str | None
) -> dict[str, dict[str, float]]:
    """Every layout, interleaved per repeat so a busy machine weighs on each alike; the median
    of the repeats."""
    samples: dict[str, dict[str, list[float]]] = {lay: {} for lay in LAYOUTS}
    for _ in range(repeats):
        for lay in LAYOUTS:
            for what, secs in measure_layout(where, lay, ids, data, s3).items():
                samples[lay].setdefault(what, []).append(secs)
    return {lay: {k: statistics.median(v) for k, v in ops.items()} for lay, ops in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiles", type=int, default=None, help="N of the CONUS tiles, evenly spread (all)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--where", type=Path, default=None, help="scratch folder (on the disk chips would live on)"
    )
    parser.add_argument(
        "--s3",
        default=None,
        help="also time `aws s3 sync` to this S3 endpoint "
        "on this machine (a loopback moto_server with a bucket `bench`)",
    )
    args = parser.parse_args()

    ids = conus_ids(args.tiles)
    where = Path(tempfile.mkdtemp(prefix="bench-folders-", dir=args.where))
    try:
        data = sample_chip(where / "sample.tif")
        folders = {lay: len({Path(relative_path(lay, i)).parent for i in ids}) for lay in LAYOUTS}
        print(
            f"{len(ids):,} chips of {len(data)} B; folders: "
            + ", ".join(f"{lay} {n:,}" for lay, n in folders.items())
        )
        results = measure(where, ids, data, args.repeats, args.s3)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    header = f"{'operation':<24}" + "".join(f"{lay:>20}" for lay in LAYOUTS)
    print(header)
    for what in results["flat"]:
        base = results["flat"][what]
        cells = "".join(
            f"{results[lay][what]:>9.2f} s ({results[lay][what] / base:4.2f}x)" for lay in LAYOUTS
        )
        print(f"{what:<24}{cells}")


if __name__ == "__main__":
    main()
