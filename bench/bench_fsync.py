"""What crash-safe chip writes cost: ``io.write_bytes_atomically`` with and without fsync.

Each chip is written to a hidden ``.part`` file and renamed; the durable path also fsyncs the
file before the rename and the folder after it (issue #8). Both are timed in interleaved
rounds on the disk of ``--out`` (default: a folder under the current one), with chips of a
typical size, plus the same with four threads (a worker writing while others fsync: fsync
waits on the disk, not the CPU, so concurrent writers overlap). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from m3leo_tiles.dataset.chipfile import write_bytes_atomically


def one_round(folder: Path, payload: bytes, count: int, durable: bool, threads: int) -> float:
    """Milliseconds of wall time per chip."""
    target = Path(tempfile.mkdtemp(dir=folder, prefix="round-"))
    started = time.perf_counter()
    if threads == 1:
        for index in range(count):
            write_bytes_atomically(target / f"{index}.tif", payload, durable=durable)
    else:
        with ThreadPoolExecutor(threads) as pool:

            def write(index: int) -> None:
                write_bytes_atomically(target / f"{index}.tif", payload, durable=durable)

            list(pool.map(write, range(count)))
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed / count * 1e3


def fetch_rounds(out: Path, tiles: int, rounds: int, workers: int) -> None:
    """Whole runs of ``fetch_tiles`` (bench_fetch's SRTM mosaic) with and without the fsyncs
    (``M3LEO_BENCH_NO_FSYNC=1``, inherited by the local workers), interleaved; chips/s."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_fetch import bench_tiles, make_sources
    from m3leo_tiles.fetch.api import fetch_tiles
    from m3leo_tiles.recipes import Recipe

    sources = out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    inputs = [str(path) for path in make_sources(sources)]
    recipe = Recipe(name="bench-srtm", source="raster", resolution=89.6, bands=("elevation",),
                    resampling="bilinear", dtype="int16", nodata=-32768)  # fmt: skip
    chosen = bench_tiles(tiles)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for index in range(rounds):
        for fsync in (False, True):
            target = out / f"run-{index}-{fsync}"
            os.environ["M3LEO_BENCH_NO_FSYNC"] = "" if fsync else "1"
            report = fetch_tiles(recipe, chosen, aoi="bench", out=target, workers=workers,
                                 sources=inputs, progress=False)  # fmt: skip
            rates[fsync].append(report.ok / report.seconds)
            shutil.rmtree(target)
    plain, durable = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"\nfetch_tiles, {tiles:,} SRTM tiles, {workers} workers, {rounds} interleaved rounds")
    print("| | chips/s (median, range) |")
    print("|---|---:|")
    print(f"| without fsync | {plain:.0f} ({min(rates[False]):.0f}–{max(rates[False]):.0f}) |")
    low, high = min(rates[True]), max(rates[True])
    print(f"| with fsync (what fetch does) | {durable:.0f} ({low:.0f}–{high:.0f}) |")
    print(f"| ratio | {durable / plain:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-fsync"))
    parser.add_argument("--chips", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=12_000, help="bytes a chip")
    parser.add_argument("--fetch-tiles", type=int, default=3000, help="0: skip whole runs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(args.size)
    results: dict[tuple[bool, int], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for threads in (1, 4):
                for durable in (False, True):
                    ms = one_round(args.out, payload, args.chips, durable, threads)
                    results.setdefault((durable, threads), []).append(ms)
    finally:
        shutil.rmtree(args.out, ignore_errors=True)
    print(f"{args.chips} chips of {args.size:,} bytes x {args.rounds} interleaved rounds")
    print("| threads | plain ms/chip (median, range) | fsync ms/chip | ratio |")
    print("|---:|---:|---:|---:|")
    for threads in (1, 4):
        plain, durable = results[(False, threads)], results[(True, threads)]
        print(f"| {threads} | {statistics.median(plain):.2f} ({min(plain):.2f}–{max(plain):.2f})"
              f" | {statistics.median(durable):.2f} ({min(durable):.2f}–{max(durable):.2f})"
              f" | {statistics.median(durable) / statistics.median(plain):.1f}× |")  # fmt: skip
    if args.fetch_tiles:
        args.out.mkdir(parents=True, exist_ok=True)
        try:
            fetch_rounds(args.out, args.fetch_tiles, max(2, args.rounds - 1), args.workers)
        finally:
            shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":  # local dask workers re-import this script
    main()
