"""Samples per second of ``M3LEODataset`` against the naive per-sample loader, same run.

The M3LEO paper's loader opened every chip file with xarray/rioxarray for every sample, and
that was its bottleneck. Two baselines, both measured in the same run:

* the paper's loader: for each sample, ``rioxarray.open_rasterio`` of each dataset's chip,
  ``.values``, then exactly what our Dataset does with the pixels (normalise, nodata to 0,
  bilinear resize to the finest chip size, stack; WorldCover values to class indices);
* a stricter one: the same with a plain ``rasterio.open`` + ``read`` (no xarray objects), the
  fastest per-sample-open loader one could write.

rioxarray and xarray are benchmark-only dependencies (the ``bench`` extra).

Chips of three datasets per configuration, written by the package's chip writer
(``write_chip``) on the same tiles, with smooth random fields (the SAR ones in dB with fresh
4.4-look speckle, as real Sentinel-1 chips and ``bench_codec.py``'s: smooth floats would
compress unlike SAR), twice: with ``--codec`` (default ``recipe``: each dataset's built-in
recipe's codec, ``RECIPES``, as a fetch stores them: s1grd uncompressed, the others zstd) and
in deflate (chips as written before the codec was a choice):

* ``paper`` — the paper's ESAWC task, everything at 10 m (448 px) as in M3LEO: ``s1`` float32
  4 bands and ``s2`` uint16 4 bands in, ``esawc`` uint8 classes as the target (``mask``);
* ``mixed`` — three inputs at three resolutions, so every sample is also resampled:
  ``s1`` float32 8 bands at 20 m, ``s2`` uint16 4 bands at 10 m, ``dem`` float32 at 89.6 m.

Every loader is timed in wall time (samples/s) and in samples per CPU second of the
benchmark process and its DataLoader workers (``psutil``), which a busy machine inflates far
less; ratios are to the paper's loader on the same chips and on the deflate chips.

Loaders, each held for every epoch as a training run holds it (``persistent_workers`` with
workers), each over every tile per epoch with batches of 8, at ``num_workers`` 0 and 2. The
first epoch (workers start, pages first touched) is shown apart; then rounds, each running
the loaders in a new random order (median and range):

* paper (rioxarray): ``open_rasterio`` per chip per sample (the target's baseline), on the
  same chips as ours and on the deflate chips;
* with ``--codec recipe``, both again on the same tiles with every chip in zstd (the default
  codec): what storing s1grd uncompressed changes, for either loader;
* naive (rasterio): rasterio open + read per chip per sample;
* dataset (chips): ``M3LEODataset.loader()`` reading the GeoTIFFs (``dataset.chipread``: no
  GDAL open, each block decoded into the array), in ``--codec`` and in deflate; with workers
  also ``.loader(threads=N)``;
* dataset (pack), ``DataLoader(dataset)``: over ``m3leo-tiles pack`` stores (a memory-map
  slice), samples stacked by torch's default collate;
* dataset (pack), ``.loader()``: whole batches written in place (``read_batch``); with
  workers, into a ring of shared slots made once, copied out by the training process;
* dataset (pack), ``.loader(threads=N)``: the same, read ahead by N threads of the training
  process instead of N worker processes (shown in the workers' section, N = 2);
* fresh batches, nothing read: batches of the same shapes filled with a constant, each in
  new memory (shared memory in workers, as torch's collate makes them): what allocating
  batches and sending them the DataLoader's way costs here, a bound for every loader that
  does so (the paper's, ``DataLoader(dataset)``), not for the ring.

torch runs one CPU thread per process (``torch.set_num_threads(1)``; DataLoader workers do
that themselves): on a shared 2-core VM torch's default of 2 spinning threads is 20x slower.
Peak RSS is the benchmark process's (workers' own peak is reported separately).

Run: ``.venv/bin/python bench/bench_loader.py [--tiles 48] [--rounds 5] [--codec recipe|zstd|...]
[--config paper|mixed|all] [--tmp DIR]`` (``--tiles 16 --rounds 3`` for a quick look).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import numpy as np
import psutil
import rasterio
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler, get_worker_info

from m3leo_tiles.core.enums import ChipCodec
from m3leo_tiles.dataset.chipfile import write_chip
from m3leo_tiles.dataset.chipsets import valid_mask
from m3leo_tiles.dataset.geotiff import DEFAULT_CODEC
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.ml import M3LEODataset
from m3leo_tiles.ml.batches import empty_tensor
from m3leo_tiles.ml.dataset import IGNORE_INDEX, resize
from m3leo_tiles.recipes import load_recipe, parse_recipe
from m3leo_tiles.sources.base import Chip
from m3leo_tiles.tools.pack import pack
from m3leo_tiles.tools.stats import compute_stats, read_stats, write_stats

CONFIGS = {  # name: {dataset: (bands, resolution m, dtype, nodata, low, high)}, target
    "paper": (
        {
            "s1": ([f"b{i}" for i in range(4)], 10, "float32", -9999, -25.0, 0.0),
            "s2": (["B2", "B3", "B4", "B8"], 10, "uint16", 0, 100.0, 4000.0),
            "esawc": (["map"], 10, "uint8", 0, 0, 0),
        },
        "esawc",
    ),
    "mixed": (
        {
            "s1": ([f"b{i}" for i in range(8)], 20, "float32", -9999, -25.0, 0.0),
            "s2": (["B2", "B3", "B4", "B8"], 10, "uint16", 0, 100.0, 4000.0),
            "dem": (["elevation"], 89.6, "float32", -9999, 0.0, 3000.0),
        },
        None,
    ),
}
WORLDCOVER = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100])
# The built-in recipe each bench dataset stands for: its chips are stored with that recipe's
# codec (``--codec recipe``, the default), as a real fetch would store them.
RECIPES = {"s1": "s1grd", "s2": "s2srm", "esawc": "esawc", "dem": "srtm"}
SPECKLED = {"s1"}  # SAR in dB: speckle as in real chips (bench_codec.py), not smooth floats
LOOKS = 4.4  # GRD high resolution's equivalent number of looks


def smooth(rng: np.random.Generator, bands: int, size: int, low: float, high: float):
    coarse = rng.uniform(low, high, (bands, 8, 8))
    rows = np.minimum((np.arange(size) * 8) // size, 7)
    field = coarse[:, rows][:, :, rows]
    return field + rng.normal(0, (high - low) * 0.01, field.shape)


def speckled(rng: np.random.Generator, db: np.ndarray) -> np.ndarray:
    """``db`` (backscatter in dB) with fresh multiplicative speckle: what a real seasonal
    chip holds, and what makes SAR floats compress so little (bench/RESULTS.md)."""
    power = 10 ** (db / 10) * rng.gamma(LOOKS, 1 / LOOKS, db.shape)
    return 10 * np.log10(power)


def codec_of(name: str, codec: ChipCodec | None) -> ChipCodec:
    """``codec``, or (None) the codec the built-in recipe ``name`` stands for stores."""
    return codec or load_recipe(RECIPES[name]).compress or DEFAULT_CODEC


def make_chips(
    root: Path, count: int, datasets: dict, codec: ChipCodec | None = None
) -> tuple[Path, Path]:
    tiles = [Tile(33, 1036 + i // 16, 60 + i % 16) for i in range(count)]
    grid = root / "grids" / "bench" / "tiles.geojson"
    grid.parent.mkdir(parents=True)
    gpd.GeoDataFrame(
        {"identifier": [t.identifier for t in tiles], "aoi": "bench", "split": "train"},
        geometry=[t.lonlat_polygon() for t in tiles],
        crs="EPSG:4326",
    ).to_file(grid, driver="GeoJSON")
    for name, (bands, resolution, dtype, nodata, low, high) in datasets.items():
        recipe = parse_recipe(
            {"name": name, "source": "raster", "params": {"inputs": "/none.tif"},
             "resolution": resolution, "bands": bands, "dtype": dtype, "nodata": nodata,
             "compress": str(codec_of(name, codec))},
            "bench",
        )  # fmt: skip
        folder = root / "data" / "bench" / name
        folder.mkdir(parents=True)
        for index, tile in enumerate(tiles):
            pixels = tile.pixel_grid(resolution)
            rng = np.random.default_rng(index)
            if dtype == "uint8":  # classes in patches, like a land-cover map
                data = WORLDCOVER[smooth(rng, 1, pixels.height, 0, 10.99).astype(int) % 11]
            else:
                data = smooth(rng, len(bands), pixels.height, low, high)
                if name in SPECKLED:
                    data = speckled(rng, data)
            chip = Chip(data.astype(dtype), tuple(bands))
            write_chip(folder / f"{tile.identifier}.tif", chip, pixels, recipe, {})
        write_stats(compute_stats(folder, "train", grids_dir=root / "grids"), folder)
    return root / "data", grid


class NaiveLoader(Dataset):
    """The paper's pattern: every sample opens every chip file (rasterio here), reads, stacks."""

    def __init__(
        self, data: Path, ids: list[str], size: int, inputs: list[str], target: str | None
    ) -> None:
        self.data, self.ids, self.size = data, ids, size
        self.inputs, self.target = inputs, target
        self.moments = {}
        for name in inputs:
            stats = read_stats(data / "bench" / name)
            mean = np.array([b.mean for b in stats.bands], np.float32)[:, None, None]
            std = np.array([b.std for b in stats.bands], np.float32)[:, None, None]
            self.moments[name] = (mean, std)
        self.lookup = np.full(256, IGNORE_INDEX, np.int64)
        self.lookup[WORLDCOVER] = np.arange(len(WORLDCOVER))

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, name: str, index: int) -> tuple[np.ndarray, float | None]:
        with rasterio.open(self.data / "bench" / name / f"{self.ids[index]}.tif") as chip:
            return chip.read(), chip.nodata

    def __getitem__(self, index: int) -> dict:
        parts = []
        for name in self.inputs:
            raw, nodata = self.read(name, index)
            mean, std = self.moments[name]
            values = (raw.astype(np.float32) - mean) / std
            values[~valid_mask(raw, nodata)] = 0.0
            parts.append(resize(torch.from_numpy(values), self.size))
        sample = {"image": torch.cat(parts), "tile_id": self.ids[index]}
        if self.target is not None:
            raw, _ = self.read(self.target, index)
            sample["mask"] = torch.from_numpy(self.lookup[raw[0]])
        return sample


class PaperLoader(NaiveLoader):
    """The M3LEO paper's own pattern: ``rioxarray.open_rasterio`` per chip per sample."""

    def read(self, name: str, index: int) -> tuple[np.ndarray, float | None]:
        import rioxarray

        path = self.data / "bench" / name / f"{self.ids[index]}.tif"
        with rioxarray.open_rasterio(path) as chip:
            return chip.values, chip.rio.nodata


class EmptyBatches(Dataset):
    """Whole batches of ``like``'s shapes filled with a constant in new memory, nothing read.

    Its samples/s is what making fresh batches and sending them the DataLoader's way (new
    shared memory per batch in workers) costs on this machine: no loader that does so, the
    paper's or ``DataLoader(M3LEODataset)``, can go faster.
    """

    def __init__(self, like: M3LEODataset) -> None:
        self.like = like

    def __len__(self) -> int:
        return len(self.like)

    def __getitem__(self, indices: list[int]) -> dict:
        shared = get_worker_info() is not None
        sample = self.like[0]
        batch = {}
        for key in ("image", "mask"):
            if key in sample:
                shape = (len(indices), *sample[key].shape)
                batch[key] = empty_tensor(shape, sample[key].dtype, shared).fill_(1)
        return batch


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live children, the DataLoader
    workers: what a busy machine inflates far less than wall time."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(child.cpu_times()[:2])
    return total


def one_pass(loader: Iterable[dict]) -> tuple[float, float]:
    """Samples/s and samples per CPU second of one epoch over ``loader``."""
    cpu = cpu_seconds()
    started = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - started), seen / max(cpu_seconds() - cpu, 1e-9)


def make_loader(dataset: Dataset, workers: int, how: str) -> Iterable[dict]:
    """What a training run holds: one loader for every epoch, workers kept between them.

    ``how``: ``plain`` is a ``DataLoader`` with torch's default collate; ``batched`` is
    ``M3LEODataset.loader`` (whole batches written in place) with ``workers`` processes;
    ``threads`` is ``M3LEODataset.loader(threads=workers)``, no worker process.
    """
    if how == "fresh":
        sampler = BatchSampler(SequentialSampler(dataset), 8, drop_last=False)
        return DataLoader(
            dataset, batch_size=None, sampler=sampler, num_workers=workers,
            persistent_workers=workers > 0,
        )  # fmt: skip
    if how == "plain":
        return DataLoader(dataset, 8, num_workers=workers, persistent_workers=workers > 0)
    assert isinstance(dataset, M3LEODataset)
    if how == "threads":
        return dataset.loader(8, threads=workers)
    return dataset.loader(8, num_workers=workers, persistent_workers=workers > 0)


def bench(root: Path, config: str, tiles: int, rounds: int, codec: ChipCodec | None) -> None:
    datasets, target = CONFIGS[config]
    inputs = [name for name in datasets if name != target]
    started = time.perf_counter()
    data, grid = make_chips(root / "chips", tiles, datasets, codec)
    old, _ = make_chips(root / "deflate", tiles, datasets, ChipCodec.DEFLATE)
    zstd = None  # with the recipes' codecs: also every chip in zstd, the default codec
    if codec is None:
        zstd, _ = make_chips(root / "zstd", tiles, datasets, ChipCodec.ZSTD)
    chips_s = time.perf_counter() - started
    options = {"target": target, "normalize": True}
    files = M3LEODataset(data, grid, inputs, use_pack=False, **options)
    old_files = M3LEODataset(old, grid, inputs, use_pack=False, **options)
    for name in datasets:
        pack(data / "bench" / name)
    packed = M3LEODataset(data, grid, inputs, **options)
    assert all(spec.packed for spec in packed.inputs)
    ids = list(files.tile_ids)
    naive = NaiveLoader(data, ids, files.chip_size, inputs, target)
    paper = PaperLoader(data, ids, files.chip_size, inputs, target)
    paper_old = PaperLoader(old, ids, files.chip_size, inputs, target)
    batch = next(iter(packed.loader(8)))  # the batched path gives default_collate's batches
    for key, value in next(iter(DataLoader(packed, batch_size=8))).items():
        assert torch.equal(batch[key], value) if torch.is_tensor(value) else batch[key] == value
    for index in (0, len(files) - 1):  # the loaders give the same samples
        expected = naive[index]
        assert torch.equal(paper[index]["image"], expected["image"])
        assert torch.equal(paper_old[index]["image"], expected["image"])
        assert torch.allclose(files[index]["image"], expected["image"], atol=1e-5)
        assert torch.equal(files[index]["image"], packed[index]["image"])
        assert torch.equal(files[index]["image"], old_files[index]["image"])
        if target:
            assert torch.equal(files[index]["mask"], expected["mask"])
            assert torch.equal(packed[index]["mask"], expected["mask"])
    size_mb = sum(p.stat().st_size for p in data.rglob("*.tif")) / 2**20
    old_mb = sum(p.stat().st_size for p in old.rglob("*.tif")) / 2**20
    shape = tuple(files[0]["image"].shape)
    described = ", ".join(
        f"{n} {d[2]} {len(d[0])} band(s) at {d[1]} m" for n, d in datasets.items()
    )
    print(f"\n## {config}: {described}" + (f"; target {target}" if target else ""))
    codecs = ", ".join(f"{n} {codec_of(n, codec)}" for n in datasets)
    print(f"{len(files)} tiles · image {shape} · chips ({codecs}) {size_mb:.0f} MB, deflate chips "
          f"{old_mb:.0f} MB (made in {chips_s:.0f} s)")  # fmt: skip
    loaders = {  # name: (dataset, how it is loaded)
        "paper (rioxarray per sample)": (paper, "plain"),
        "paper (rioxarray), deflate chips": (paper_old, "plain"),
        **(
            {
                "paper (rioxarray), all-zstd chips": (
                    PaperLoader(zstd, ids, files.chip_size, inputs, target),
                    "plain",
                ),
                "dataset (all-zstd chips), .loader()": (
                    M3LEODataset(zstd, grid, inputs, use_pack=False, **options),
                    "batched",
                ),
            }
            if zstd is not None
            else {}
        ),
        "naive (rasterio open per sample)": (naive, "plain"),
        "dataset (chips), .loader()": (files, "batched"),
        "dataset (chips), .loader(threads=N)": (files, "threads"),
        "dataset (deflate chips), .loader()": (old_files, "batched"),
        "dataset (pack), DataLoader(dataset)": (packed, "plain"),
        "dataset (pack), .loader()": (packed, "batched"),
        "dataset (pack), .loader(threads=N)": (packed, "threads"),
        "fresh batches, nothing read": (EmptyBatches(packed), "fresh"),
    }
    for workers in (0, 2):
        held = {
            name: make_loader(d, workers, how)
            for name, (d, how) in loaders.items()
            if how != "threads" or workers
        }
        first = {name: one_pass(loader)[0] for name, loader in held.items()}  # workers start
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in held}
        shuffler = random.Random(workers)  # each round in another order: no loader always
        for _ in range(rounds):  # runs just after the one whose memory the kernel reclaims
            for name in shuffler.sample(list(held), len(held)):
                rates[name].append(one_pass(held[name]))
        del held

        medians = {name: (statistics.median(r[0] for r in values),
                          statistics.median(r[1] for r in values))
                   for name, values in rates.items()}  # fmt: skip
        base, base_cpu = medians["paper (rioxarray per sample)"]
        old_base, old_cpu = medians["paper (rioxarray), deflate chips"]
        print(f"\nnum_workers={workers}; × paper: its loader on the same chips; × deflate: on "
              f"deflate chips; per CPU s: samples per CPU second of all processes")  # fmt: skip
        print(f"{'loader':38s} {'samples/s':>9s} {'range':>13s} {'× paper':>7s} "
              f"{'× deflate':>9s} {'per CPU s':>9s} {'× paper':>7s} {'× deflate':>9s} "
              f"{'1st epoch':>9s}")  # fmt: skip
        for name, values in rates.items():
            wall, cpu = medians[name]
            low, high = min(v[0] for v in values), max(v[0] for v in values)
            print(
                f"{name:38s} {wall:9.1f} {low:6.1f}–{high:<6.1f} {wall / base:7.2f} "
                f"{wall / old_base:9.2f} {cpu:9.1f} {cpu / base_cpu:7.2f} {cpu / old_cpu:9.2f} "
                f"{first[name]:9.1f}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--tmp", default=None, help="folder for the chips")
    parser.add_argument("--codec", choices=["recipe", *map(str, ChipCodec)], default="recipe",
                        help="codec of every chip (recipe: each built-in recipe's)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {platform.node()} · {os.cpu_count()} cores · load {load:.1f} · {when}")
    print(f"# torch {torch.__version__}, 1 thread per process")
    for config in CONFIGS if args.config == "all" else [args.config]:
        with tempfile.TemporaryDirectory(prefix="bench-loader-", dir=args.tmp) as tmp:
            codec = None if args.codec == "recipe" else ChipCodec(args.codec)
            bench(Path(tmp), config, args.tiles, args.rounds, codec)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak RSS: benchmark process {own:.0f} MB, largest worker {children:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
