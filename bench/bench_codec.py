"""Chip codecs per chip kind: encode and decode CPU time and size, all in one run.

Chips of each built-in recipe's shape and dtype, made from the real sample rasters in
``/work/shared/data`` where they exist (``--data``; SOURCES.md there names them) and
synthetic otherwise (GUNW pairs: no real GUNW file is small enough to ship):

* ``s1grd``: float32 16 × 448², the real Sentinel-1 dB crop (268×217 at 20 m) resized to
  448² (bilinear) with fresh speckle per band (gamma, 4.4 looks, as GRD-HD's): mirroring or
  repeating the crop would give zstd's long window copies that no real chip holds;
* ``s2srm``: uint16 40 × 448², crops of the three real 20 m Sentinel-2 bands at 40 offsets;
* ``esawc``: uint8 1 × 448², a crop of the real WorldCover tile over São Tomé's coast
  (land classes and sea);
* ``gunw``: float32 24 × 50² (6 pairs × unwrapped phase, coherence, connected components,
  amplitude), synthetic, NaN outside a swath edge;
* ``srtm``: int16 1 × 50², the real Rome 30 m DEM resampled to 89.6 m;
* ``gssic``: uint16 64 × 50², the Sentinel-2 crops decimated to 50² (coherence DNs are as
  smooth; no real GSSIC tile ships).

Each codec writes each chip with tifffile (GDAL's tags do not change the pixel blocks) and is
decoded with tifffile (one thread, what the Dataset does) and with GDAL (rasterio
``MemoryFile`` read, what rasterio/rioxarray/QGIS do). Times are the *thread CPU time* of the
step (median of ``--repeat``), which a busy machine inflates far less than wall time; ``×``
columns are ratios to today's chips (deflate level 6 + predictor, tiles of 256) of the same
kind. ``blocks``: ``256`` tiles of 256² (today's chips ≥ 256 px), ``strip``: one block per
band (no padding: 448² in 256² tiles decodes 512², 31 % more).

Run: ``.venv/bin/python bench/bench_codec.py [--repeat 5] [--kinds s2srm,esawc]`` (~2 min).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import tifffile
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.windows import Window

DATA = Path("/work/shared/data")
# name, tifffile compression, level, predictor (True: 2 for integers, 3 for floats)
CODECS: list[tuple[str, str | None, int | None, bool]] = [
    ("deflate 6 + predictor", "zlib", 6, True),
    ("deflate 6", "zlib", 6, False),
    ("deflate 1 + predictor", "zlib", 1, True),
    ("zstd 1 + predictor", "zstd", 1, True),
    ("zstd 1", "zstd", 1, False),
    ("zstd 3 + predictor", "zstd", 3, True),
    ("zstd 9 + predictor", "zstd", 9, True),
    ("zstd 9", "zstd", 9, False),
    ("lzw + predictor", "lzw", None, True),
    ("lerc (lossless)", "lerc", None, False),
    ("none", None, None, False),
]
BASELINE = ("deflate 6 + predictor", "256")


def _read(path: Path, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as dataset:
            return dataset.read(**kwargs)


def _mirror(band: np.ndarray, size: int) -> np.ndarray:
    """``band`` tiled with its mirror images up to ``size``² (a real texture, no seam)."""
    reps = (-(-size // band.shape[0]) + 1, -(-size // band.shape[1]) + 1)
    tile = np.block([[band, band[:, ::-1]], [band[::-1], band[::-1, ::-1]]])
    return np.tile(tile, reps)[:size, :size]


def make_kinds(data: Path) -> dict[str, np.ndarray]:
    """Each kind's chip (bands, h, w)."""
    rng = np.random.default_rng(0)
    kinds: dict[str, np.ndarray] = {}
    with rasterio.open(
        data / "s1" / "S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif"
    ) as s1:
        field = s1.read(1, out_shape=(448, 448), resampling=Resampling.bilinear)
    power = 10 ** (np.maximum(field, -30) / 10)  # the real backscatter, smoothed by the resize
    looks = 4.4  # GRD high resolution's equivalent number of looks: speckle as in real chips
    s1 = np.stack([10 * np.log10(power * rng.gamma(looks, 1 / looks, power.shape)) for _ in
                   range(16)])  # fmt: skip
    kinds["s1grd"] = s1.astype(np.float32)
    s2 = [_read(data / "s2" / f"s2_{b}.jp2", window=Window(0, 0, 960, 960))[0]
          for b in ("B05", "B8A", "B11")]  # fmt: skip
    crops = [s2[i % 3][(i * 13) % 500 :][:448, (i * 29) % 500 :][:, :448] for i in range(40)]
    kinds["s2srm"] = np.stack(crops).astype(np.uint16)
    # a coastal window of São Tomé: trees, shrubs, grass, built-up, water, wetland
    window = Window(col_off=8400, row_off=31200, width=448, height=448)
    worldcover = data / "landcover" / "ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"
    kinds["esawc"] = _read(worldcover, window=window).astype(np.uint8)
    yy, xx = np.mgrid[0:50, 0:50] / 50.0
    layers = []
    for pair in range(6):
        phase = 20 * (xx + 0.3 * yy) * (1 + pair / 5) + rng.normal(0, 0.3, xx.shape)
        coherence = np.clip(0.6 - 0.3 * yy + rng.normal(0, 0.1, xx.shape), 0, 1)
        components = (xx > 0.7).astype(float) + 1
        amplitude = rng.gamma(2.0, 1500.0, xx.shape)
        layers += [phase, coherence, components, amplitude]
    gunw = np.stack(layers).astype(np.float32)
    gunw[:, :, :6] = np.nan  # outside the swath
    kinds["gunw"] = gunw
    with rasterio.open(data / "dem" / "Rome-30m-DEM.tif") as dem:
        kinds["srtm"] = dem.read(out_shape=(1, 50, 50), resampling=Resampling.bilinear)
    decimated = [c[::9, ::9][:50, :50] // 4 for c in crops]
    decimated += [c[4::9, 4::9][:50, :50] // 4 for c in crops[:24]]
    kinds["gssic"] = np.stack(decimated).astype(np.uint16)
    return kinds


def encode(chip: np.ndarray, compression: str | None, level: int | None, predictor: bool,
           blocks: str) -> bytes:  # fmt: skip
    count, height = chip.shape[:2]
    options: dict = {"compression": compression}
    if level is not None:
        options["compressionargs"] = {"level": level}
    if predictor:
        options["predictor"] = 3 if chip.dtype.kind == "f" else 2
    layout = {"tile": (256, 256)} if blocks == "256" else {"rowsperstrip": height}
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, chip if count > 1 else chip[0], photometric="minisblack",
        planarconfig="separate" if count > 1 else "contig", metadata=None, **layout, **options,
    )  # fmt: skip
    return buffer.getvalue()


def decode_tifffile(payload: bytes) -> np.ndarray:
    with tifffile.TiffFile(io.BytesIO(payload)) as tiff:
        return tiff.pages.first.asarray(maxworkers=1)


def decode_gdal(payload: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with MemoryFile(payload) as memory, memory.open() as dataset:
            return dataset.read()


def cpu_ms(step: Callable[[], object], repeat: int) -> float:
    """Median thread CPU ms of ``step``."""
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        step()
        times.append(time.thread_time() - started)
    return statistics.median(times) * 1e3


def measure(
    chip: np.ndarray, codec: tuple[str, str | None, int | None, bool], blocks: str, repeat: int
) -> tuple[float, float, str, float]:
    """Encode ms, tifffile decode ms, GDAL decode ms (or why not), MB of one codec."""
    _, compression, level, predictor = codec
    payload = encode(chip, compression, level, predictor, blocks)
    expected = np.nan_to_num(chip)  # lerc in tifffile stores NaN as 0 without a mask
    assert np.array_equal(np.nan_to_num(decode_tifffile(payload)).reshape(chip.shape), expected)
    enc = cpu_ms(lambda: encode(chip, compression, level, predictor, blocks), repeat)
    dec = cpu_ms(lambda: decode_tifffile(payload), repeat)
    try:
        gdal = f"{cpu_ms(lambda: decode_gdal(payload), repeat):.2f}"
    except rasterio.errors.RasterioError:
        gdal = "unreadable"
    return enc, dec, gdal, len(payload) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kinds", default=None, help="comma-separated subset")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    os.environ.setdefault("GDAL_NUM_THREADS", "1")
    kinds = make_kinds(args.data)
    chosen = args.kinds.split(",") if args.kinds else list(kinds)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {os.cpu_count()} cores · load {os.getloadavg()[0]:.1f} · {when} · "
          f"GDAL {rasterio.__gdal_version__} · tifffile {tifffile.__version__}")  # fmt: skip
    for name in chosen:
        chip = kinds[name]
        raw_mb = chip.nbytes / 1e6
        print(f"\n## {name}: {chip.dtype} {chip.shape[0]} × {chip.shape[1]}×{chip.shape[2]}, "
              f"{raw_mb:.2f} MB raw")  # fmt: skip
        print("| codec | blocks | encode ms | decode ms tifffile | decode ms GDAL | MB | "
              "× encode | × decode | × size |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        block_choices = ("256", "strip") if chip.shape[1] >= 256 else ("strip",)
        rows = []
        for codec in CODECS:
            label, compression = codec[:2]
            if compression == "lerc" and chip.dtype.kind != "f":
                continue  # measured for floats, where the issue asks
            for blocks in block_choices:
                rows.append((label, blocks, *measure(chip, codec, blocks, args.repeat)))
        base = {(r[0], r[1]): r for r in rows}
        reference = base.get(BASELINE) or base[(BASELINE[0], "strip")]
        for label, blocks, enc, dec, gdal, size in rows:
            print(f"| {label} | {blocks} | {enc:.2f} | {dec:.2f} | {gdal} | {size:.3f} | "
                  f"{enc / reference[2]:.2f} | {dec / reference[3]:.2f} | "
                  f"{size / reference[5]:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
