"""Benchmark of paper-scale bookkeeping (issue #19): a whole AOI (CONUS: 403,363 tiles).

Cases, each through the ``m3leo-tiles`` command in a child process, as a user runs it:

* raster: a synthetic global DEM (0.25°, 1440 x 720 px) and a recipe at 448 m, so chips are
  10 x 10 px: a whole run (``--workers 2``), then no-op reruns and ``status``.
* gssic: the shipped recipe (64 layers a cell) from a local mirror holding one cell far from
  the AOI (placeholder files), so every tile of the AOI is planned with 64-256 inputs and
  is ``empty``. Rendering 403k empty tiles says nothing about bookkeeping, so the dataset is
  written as the driver writes such a run (the run's plan, its rows through the manifest
  writer, compaction) in one child process (``gssic plan+write``), then no-op reruns and
  ``status`` go through the command.
* gssic-run (not by default: ~25 min on 2 cores): the same recipe and mirror through the
  whole command, every tile rendered (each ``empty``), into its own folder: the driver's and
  workers' peak memory of a real gssic run.
* gunw: a synthetic saved search of a year over the AOI (frames shaped like the real record
  in ../shared/data/asf, 12-day pairs and longer, ascending and descending), planned through
  the source (``gunw plan``): seconds and peak memory.

Figures: wall seconds as a ratio to ``m3leo-tiles grid --aoi AOI`` (build and write the whole
grid) measured in the same round, interleaved, median of ``--repeats`` rounds; peak RSS of the
driver and of its biggest worker (VmHWM of each process, sampled every 50 ms); manifest bytes
a row. ``--before SRC`` runs every case with the code at SRC as well (e.g. a worktree of the
commit before the change: ``git worktree add --detach /tmp/old 239bf98``), interleaved.

Run: ``python bench/bench_scale.py [--aoi conus] [--repeats 3] [--cases raster,gssic,gunw]
[--before /tmp/old/src]``; ``--aoi demo`` runs in a minute. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
ASF_RECORD = HERE.parent.parent / "shared" / "data" / "asf"
CLI = "import sys; from m3leo_tiles.cli.tiles import main; sys.argv[0] = 'm3leo-tiles'; main()"


@dataclass
class Measured:
    seconds: float
    driver_mb: float
    worker_mb: float
    code: int
    tail: str = ""


def _hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(code: Path, args: list[str], cwd: Path, *, python: str | None = None) -> Measured:
    """One child process (the command, or ``python`` code), its wall time and peak RSS."""
    command = [sys.executable, "-c", python or CLI, *args]
    env = dict(os.environ, PYTHONPATH=str(code))
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    driver, workers = 0.0, {}
    process = psutil.Process(child.pid)
    while child.poll() is None:
        driver = max(driver, _hwm_mb(child.pid))
        try:
            for sub in process.children(recursive=True):
                workers[sub.pid] = max(workers.get(sub.pid, 0.0), _hwm_mb(sub.pid))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    output = child.stdout.read() if child.stdout else ""
    return Measured(seconds, driver, max(workers.values(), default=0.0), child.returncode,
                    output[-2000:])  # fmt: skip


# --- setup ------------------------------------------------------------------------------------


def write_dem(path: Path) -> None:
    import rasterio
    from affine import Affine

    width, height = 1440, 720
    data = (np.arange(width * height).reshape(height, width) % 1000 + 1).astype("float32")
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="float32",
                   crs="EPSG:4326", transform=Affine(0.25, 0, -180, 0, -0.25, 90),
                   nodata=-9999, tiled=True, compress="deflate")  # fmt: skip
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data, 1)


DEM_RECIPE = """description: bench_scale DEM (synthetic, global 0.25 deg)
source: raster
params:
  inputs: [{dem}]
resolution: 448
resampling: bilinear
dtype: float32
nodata: -9999
bands: [elevation]
"""


def write_mirror(root: Path) -> None:
    """One GSSIC cell far from the AOIs (placeholder files): the mirror passes the source's
    check, and every tile's 64-256 cells files are simply not there (no data)."""
    cell = "N01E001"
    folder = root / "data" / "tiles" / cell
    folder.mkdir(parents=True, exist_ok=True)
    for season in ("winter", "spring", "summer", "fall"):
        for pol in ("vv", "vh"):
            for metric in ("COH12", "COH24", "COH36", "COH48", "AMP", "rho", "tau", "rmse"):
                (folder / f"{cell}_{season}_{pol}_{metric}.tif").write_bytes(b"")


def write_saved_search(path: Path, aoi_bounds: tuple[float, float, float, float],
                       year: int = 2020) -> int:  # fmt: skip
    """A year of GUNW products over a box: frames ~250 x 220 km tilted like the real record's
    (../shared/data/asf), on ascending and descending tracks every 3° of longitude, each
    with 12- and 24-day pairs (ARIA's nearest connections), names in the real pattern: over
    CONUS ~30k products, 100-250 a tile."""
    import datetime as dt

    west, south, east, north = aoi_bounds
    features = []
    number = 0
    start = dt.date(year, 1, 3)
    for direction, skew in (("A", -0.25), ("D", 0.25)):
        track = 1
        lon = west - 1.0
        while lon < east + 1.0:
            lat = south - 0.5
            while lat < north + 0.5:
                ring = [(lon, lat), (lon + 2.9, lat - skew), (lon + 2.9 + skew, lat + 2.05),
                        (lon + skew, lat + 2.05 + skew), (lon, lat)]  # fmt: skip
                frame = 6000 + number % 3000
                for pair in range(31 * 2):
                    reference = start + dt.timedelta(days=12 * (pair // 2) + (track % 12))
                    if reference.year != year:
                        continue
                    secondary = reference - dt.timedelta(days=12 * (pair % 2 + 1))
                    place = f"{int(abs(lat + 2) * 1000):05d}N_{int(abs(lat) * 1000):05d}N"
                    name = (f"S1-GUNW-{direction}-R-{track:03d}-tops-{reference:%Y%m%d}_"
                            f"{secondary:%Y%m%d}-015001-{place}-PP-{frame}-v2_0_4")  # fmt: skip
                    features.append({
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [ring]},
                        "properties": {"fileID": name, "fileName": f"{name}.nc",
                                       "frameNumber": frame, "pathNumber": track,
                                       "bytes": 60_000_000,
                                       "url": f"https://grfn.asf.alaska.edu/door/download/"
                                              f"{name}.nc"},
                    })  # fmt: skip
                number += 1
                lat += 2.2
            lon += 3.0
            track += 1
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)


GSSIC_WRITE = """
import sys
from pathlib import Path
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset import manifest as m
from m3leo_tiles.fetch.plan import make_plan
from m3leo_tiles.grid import read_grid
from m3leo_tiles.recipes import load_recipe
from m3leo_tiles.sources.base import FetchOptions, get_source

grid, mirror, out = sys.argv[1:]
recipe = load_recipe("gssic")
options = FetchOptions(year=recipe.default_year, sources=(mirror,), cache_dir=out + "/.cache")
adapter = get_source(recipe.source)(recipe, options)
recipe = adapter.check()
adapter = type(adapter)(recipe, options)
the_grid = read_grid(grid)
folder = Path(out) / the_grid.aoi / recipe.dataset_name(options.year)
folder.mkdir(parents=True, exist_ok=True)
plan = make_plan(adapter, the_grid.tiles, folder, {}, overwrite=False)
refs = getattr(plan, "input_refs", None)
if refs is not None:  # the driver records the lists before any row names them
    from m3leo_tiles.dataset.inputsets import InputSets
    InputSets(folder / "input-sets.jsonl").record(plan.input_lists)
with m.ManifestWriter(folder / "manifest.csv") as writer:
    batch = []
    for group in plan.groups:
        for tile, inputs in group:
            ident = tile.identifier
            extra = {"inputs": inputs}
            if refs is not None:
                extra = {"input_set": refs[ident], "inputs": ()}
            batch.append(m.ManifestRow(ident, TileStatus.EMPTY, "only nodata", seconds=0.01,
                         recipe_hash=recipe.recipe_hash, finished_at=m.now_iso(),
                         input_id=plan.input_ids[ident], **extra))
            if len(batch) == 256:
                writer.write(batch)
                batch = []
    writer.write(batch)
m.compact_manifest(folder / "manifest.csv")
try:  # what a finished run records: its next rerun may skip the source's plan
    from m3leo_tiles.dataset.layout import DatasetLayout
    from m3leo_tiles.fetch.replan import plan_key, record_key
except ImportError:
    pass
else:
    record_key(DatasetLayout(folder), plan_key(adapter, the_grid.tiles))
print(folder)
"""

GUNW_PLAN = """
import sys
from m3leo_tiles.grid import read_grid
from m3leo_tiles.recipes import load_recipe
from m3leo_tiles.sources.base import FetchOptions, get_source

grid, saved, source = sys.argv[1:]
recipe = load_recipe("gunw")
options = FetchOptions(year=2020, sources=(source,), cache_dir=source,
                       extra={"search-results": saved})
adapter = get_source(recipe.source)(recipe, options)
tiles = read_grid(grid).tiles
try:
    inputs = adapter.plan(tiles)
except Exception as error:  # credentials: the plan's work is done by then
    print("stopped after planning:", str(error)[:100])
    raise SystemExit(0)
sizes = [len(v) for v in inputs.values()]
print(len(inputs), "tiles,", len(set(map(id, inputs.values()))), "distinct lists,",
      max(sizes), "inputs at most")
"""


# --- the rounds -------------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    code: Path
    out: Path
    figures: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.figures.setdefault(key, []).append(value)

    def median(self, key: str) -> float | None:
        values = self.figures.get(key)
        return statistics.median(values) if values else None


def manifest_bytes_a_row(folder: Path) -> float:
    path = folder / "manifest.csv"
    lines = sum(1 for _ in path.open("rb")) - 1
    return path.stat().st_size / max(1, lines)


def first_runs(side: Side, work: Path, aoi: str, cases: list[str], workers: int,
               reuse: bool = False) -> None:  # fmt: skip
    grids = ["--grids-dir", str(work / "grids")]
    if "raster" in cases and reuse and (side.out / aoi / "scale-dem" / "manifest.csv").exists():
        side.add("raster B/row", manifest_bytes_a_row(side.out / aoi / "scale-dem"))
    elif "raster" in cases:
        fetch = ["fetch", str(work / "scale-dem.yaml"), "--aoi", aoi, "--out", str(side.out)]
        done = run(side.code, [*fetch, "--workers", str(workers), "-q", *grids], work)
        print(f"[{side.name}] raster run: {done.seconds:.0f} s, exit {done.code}, driver "
              f"{done.driver_mb:.0f} MB, worker {done.worker_mb:.0f} MB", flush=True)  # fmt: skip
        side.add("raster run s", done.seconds)
        side.add("raster run driver MB", done.driver_mb)
        side.add("raster run worker MB", done.worker_mb)
        side.add("raster B/row", manifest_bytes_a_row(side.out / aoi / "scale-dem"))
    if "gssic" in cases:
        grid = str(work / "grids" / aoi / "tiles.geojson")
        done = run(side.code, [grid, str(work / "mirror"), str(side.out)], work,
                   python=GSSIC_WRITE)  # fmt: skip
        folder = Path(done.tail.strip().splitlines()[-1]) if done.code == 0 else None
        print(f"[{side.name}] gssic plan+write: {done.seconds:.0f} s, exit {done.code}, "
              f"driver {done.driver_mb:.0f} MB", flush=True)  # fmt: skip
        if folder is None:
            print(done.tail)
            return
        side.add("gssic plan+write s", done.seconds)
        side.add("gssic plan+write driver MB", done.driver_mb)
        side.add("gssic B/row", manifest_bytes_a_row(folder))
        side.add("gssic manifest MB", (folder / "manifest.csv").stat().st_size / 2**20)
    if "gssic-run" in cases:  # the whole command, every tile rendered (empty): ~25 min
        whole = side.out.with_name(side.out.name + "-gssic-run")
        done = run(side.code, ["fetch", "gssic", "--source", str(work / "mirror"), "--aoi", aoi,
                               "--out", str(whole), "--workers", str(workers), "-q", *grids],
                   work)  # fmt: skip
        print(f"[{side.name}] gssic whole run: {done.seconds:.0f} s, exit {done.code}, driver "
              f"{done.driver_mb:.0f} MB, worker {done.worker_mb:.0f} MB", flush=True)  # fmt: skip
        side.add("gssic run s", done.seconds)
        side.add("gssic run driver MB", done.driver_mb)
        side.add("gssic run worker MB", done.worker_mb)
    if "gunw" in cases:
        grid = str(work / "grids" / aoi / "tiles.geojson")
        done = run(side.code, [grid, str(work / "saved.geojson"), str(work / "gunw-products")],
                   work, python=GUNW_PLAN)  # fmt: skip
        print(f"[{side.name}] gunw plan: {done.seconds:.0f} s, exit {done.code}, driver "
              f"{done.driver_mb:.0f} MB: {done.tail.strip()[-200:]}", flush=True)  # fmt: skip
        side.add("gunw plan s", done.seconds)
        side.add("gunw plan driver MB", done.driver_mb)


def one_round(sides: list[Side], work: Path, aoi: str, cases: list[str]) -> None:
    grids = ["--grids-dir", str(work / "grids")]
    for side in sides:
        grid = run(side.code, ["grid", "--aoi", aoi, "--out", str(work / "grid-timing"), "-q"],
                   work)  # fmt: skip
        side.add("grid s", grid.seconds)
        commands = []
        if "raster" in cases:
            commands.append(("raster", ["fetch", str(work / "scale-dem.yaml")]))
        if "gssic" in cases:
            commands.append(("gssic", ["fetch", "gssic", "--source", str(work / "mirror")]))
        for name, fetch in commands:
            again = run(side.code, [*fetch, "--aoi", aoi, "--out", str(side.out), "--workers",
                                    "2", "-q", *grids], work)  # fmt: skip
            if again.code not in (0, 1):  # 1: an all-empty dataset says "nothing fetched"
                print(f"[{side.name}] {name} rerun exit {again.code}: {again.tail[-500:]}")
            side.add(f"{name} rerun x grid", again.seconds / grid.seconds)
            side.add(f"{name} rerun s", again.seconds)
            side.add(f"{name} rerun driver MB", again.driver_mb)
        status = run(side.code, ["status", str(side.out), *grids], work)
        side.add("status x grid", status.seconds / grid.seconds)
        side.add("status s", status.seconds)
        print(f"[{side.name}] grid {grid.seconds:.1f} s, status {status.seconds:.1f} s, "
              + ", ".join(f"{k} {v[-1]:.2f}" for k, v in side.figures.items()
                          if "rerun" in k and "x grid" in k), flush=True)  # fmt: skip


def table(sides: list[Side]) -> str:
    keys = list(dict.fromkeys(k for side in sides for k in side.figures))
    head = "| figure | " + " | ".join(side.name for side in sides) + " |"
    lines = [head, "|---|" + "---:|" * len(sides)]
    for key in keys:
        cells = []
        for side in sides:
            value = side.median(key)
            text = "—" if value is None else f"{value:.2f}" if value < 10 else f"{value:.0f}"
            cells.append(text)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aoi", default="conus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", default="raster,gssic,gunw")
    parser.add_argument("--before", type=Path, help="src folder of the code to compare with")
    parser.add_argument("--after", type=Path, default=SRC, help="src folder of the code measured")
    parser.add_argument("--before-cases", help="cases for --before (default: --cases)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp one)")
    reuse = "with --keep: reuse the raster datasets of an earlier run"
    parser.add_argument("--reuse", action="store_true", help=reuse)
    args = parser.parse_args()
    cases = args.cases.split(",")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    grid_out = str(work / "grids" / args.aoi)
    built = run(args.after, ["grid", "--aoi", args.aoi, "--out", grid_out, "-q"], work)
    print(f"grid: {built.seconds:.1f} s, driver {built.driver_mb:.0f} MB", flush=True)
    if not (work / "dem.tif").exists():  # rewriting it would change every tile's inputs
        write_dem(work / "dem.tif")
    (work / "scale-dem.yaml").write_text(DEM_RECIPE.format(dem=work / "dem.tif"))
    write_mirror(work / "mirror")
    (work / "gunw-products").mkdir(exist_ok=True)
    if "gunw" in cases:
        sys.path.insert(0, str(SRC))
        from m3leo_tiles.grid.files import read_grid

        tiles = read_grid(work / "grids" / args.aoi / "tiles.geojson").tiles
        from m3leo_tiles.grid.tile import lonlat_polygons

        bounds = np.array([p.bounds for p in lonlat_polygons(tiles)])
        box = (bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max())
        count = write_saved_search(work / "saved.geojson", box)
        print(f"saved search: {count} products over {box}", flush=True)
    sides = [Side("after", args.after, work / "out-after")]
    if args.before is not None:
        sides.insert(0, Side("before", args.before, work / "out-before"))
    for side in sides:
        side_cases = cases if side.name == "after" or not args.before_cases else (
            args.before_cases.split(",")
        )  # fmt: skip
        first_runs(side, work, args.aoi, side_cases, args.workers, args.reuse)
    for _ in range(args.repeats):
        for side in sides:
            side_cases = cases if side.name == "after" or not args.before_cases else (
                args.before_cases.split(",")
            )  # fmt: skip
            one_round([side], work, args.aoi, [c for c in side_cases if c in ("raster", "gssic")])
    print(f"\n{args.aoi}, {os.cpu_count()} cores, {args.repeats} rounds, {time.strftime('%F')}\n")
    print(table(sides))


if __name__ == "__main__":
    main()
