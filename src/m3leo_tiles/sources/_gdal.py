"""GDAL pieces that every source reading rasters shares: open inputs, scratch rasters,
footprints, and which GDAL errors mean "the network" or "no such file".

Private to the sources package: the raster source was their first user; GSSIC cells and GUNW
layers are read the same way.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np
import rasterio
import shapely
import shapely.affinity
from rasterio.errors import RasterioError
from rasterio.warp import transform
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.core.errors import ConfigError, first_line
from m3leo_tiles.dataset.geotiff import cached_crs
from m3leo_tiles.grid.tile import PixelGrid

NETWORK_VSI = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift",
               "/vsiwebhdfs", "/vsihdfs")  # fmt: skip
# Network trouble worth retrying with backoff: DNS, timeouts, throttling, server errors, and
# GDAL's cached "does not exist" after such a failure (it is not a verdict on the file).
TRANSIENT_MESSAGES = (
    "CURL error", "HTTP response code: 429", "HTTP response code: 5", "does not exist",
)  # fmt: skip
OPEN_DATASETS_PER_WORKER = 32


def is_remote(path: str) -> bool:
    """Read over the network, possibly inside an archive (``/vsizip//vsicurl/https://...``)."""
    return any(prefix in path for prefix in NETWORK_VSI)


# --- per-thread GDAL state on a worker -------------------------------------------------------


class _ThreadState(threading.local):
    """Open inputs and scratch rasters of one worker thread.

    Kept per thread because a GDAL dataset must not be used by two threads at once (a
    ``dask worker`` runs several), and kept across tiles because opening an input or creating
    a raster costs more than warping a small chip.
    """

    def __init__(self) -> None:
        self.open: OrderedDict[str, rasterio.DatasetReader] = OrderedDict()
        self.scratch: dict[tuple[int, int, int, str], Scratch] = {}


_STATE = _ThreadState()


def open_dataset(path: str, keep: int = OPEN_DATASETS_PER_WORKER) -> rasterio.DatasetReader:
    """Keep recently used inputs open in this thread: opening costs more than a small warp.

    ``keep`` (at least what one tile reads: GSSIC's 64 layers × up to 4 cells) stops a tile
    with many inputs from closing the files its neighbours are about to reopen.
    """
    datasets = _STATE.open
    dataset = datasets.pop(path, None)
    if dataset is None:
        dataset = rasterio.open(path)
        while len(datasets) >= max(OPEN_DATASETS_PER_WORKER, keep):
            datasets.popitem(last=False)[1].close()
    datasets[path] = dataset
    return dataset


def forget_dataset(path: str) -> None:
    dataset = _STATE.open.pop(path, None)
    if dataset is not None:
        dataset.close()


def forget_datasets_using(path: str) -> None:
    """Close this thread's open datasets that read ``path``: the file itself and the VRTs
    (mosaics of cells) built over it, so that a file replaced on disk is opened anew."""
    for key in [key for key in _STATE.open if path in key]:
        forget_dataset(key)


def read_problem(path: str) -> str | None:
    """Why GDAL cannot read the whole of ``path`` (every band, every block), or None.

    Opening reads only the header: a file cut short opens fine and fails at its first missing
    block, so verifying a suspect file means decoding all of it.
    """
    try:
        with rasterio.open(path) as dataset:
            for _, window in dataset.block_windows(1):
                dataset.read(window=window)
    except (RasterioError, OSError) as error:
        return first_line(error)
    return None


class Scratch:
    """An in-memory GDAL raster that chips are warped into, reused from tile to tile.

    ``reproject`` into a numpy array wraps the array in a new MEM dataset on every call
    (with its own GDAL environment); into the band of a dataset that already exists it does
    not, which saves ~0.15 ms a chip. The warp itself is the same GDAL call onto the same
    grid, so the pixels are too (the tests compare them with ``reproject`` into an array).
    """

    def __init__(self, count: int, grid: PixelGrid, dtype: str) -> None:
        self.dataset = rasterio.open(
            f"scratch-{id(self)}", "w+", driver="MEM", count=count, height=grid.height,
            width=grid.width, dtype=dtype, crs=cached_crs(grid.crs), transform=grid.transform,
        )  # fmt: skip
        self.crs = grid.crs
        self.dtype = dtype
        self.all_bands = list(range(1, count + 1))

    def reset(self, grid: PixelGrid, fill: float) -> None:
        """Point at ``grid`` and fill with ``fill``: the warps then paint their valid pixels."""
        if grid.crs != self.crs:
            self.dataset.crs = cached_crs(grid.crs)
            self.crs = grid.crs
        self.dataset.transform = grid.transform
        self.dataset.write(_filled(self.dataset.shape, len(self.all_bands), self.dtype, fill))

    def fill(self, indexes: list[int], fill: float) -> None:
        """Fill some bands again (a warp into them broke off half-way)."""
        shape = self.dataset.shape
        self.dataset.write(_filled(shape, len(indexes), self.dtype, fill), indexes)

    def band(self, indexes: list[int]) -> Any:
        return rasterio.band(self.dataset, indexes)

    def read(self) -> np.ndarray:
        return self.dataset.read()


def scratch_raster(count: int, grid: PixelGrid, dtype: str) -> Scratch:
    key = (count, grid.height, grid.width, dtype)
    scratch = _STATE.scratch.get(key)
    if scratch is None:
        scratch = _STATE.scratch[key] = Scratch(count, grid, dtype)
    return scratch


@lru_cache(maxsize=64)
def _filled(shape: tuple[int, int], count: int, dtype: str, fill: float) -> np.ndarray:
    array = np.full((count, *shape), fill, dtype=dtype)
    array.flags.writeable = False
    return array


def footprint_lonlat(dataset: rasterio.DatasetReader, points_per_edge: int = 21) -> BaseGeometry:
    """The raster's outline in lon/lat: its edges densified, so a UTM scene is not a bbox."""
    left, bottom, right, top = dataset.bounds
    steps = np.linspace(0.0, 1.0, points_per_edge)
    xs = np.concatenate([left + (right - left) * steps, np.full_like(steps, right),
                         right - (right - left) * steps, np.full_like(steps, left)])  # fmt: skip
    ys = np.concatenate([np.full_like(steps, bottom), bottom + (top - bottom) * steps,
                         np.full_like(steps, top), top - (top - bottom) * steps])  # fmt: skip
    if dataset.crs is None:
        raise ConfigError(f"{dataset.name} has no CRS; give it one (e.g. gdal_edit.py -a_srs)")
    lons, lats = transform(dataset.crs, "EPSG:4326", xs, ys)
    return around_the_world(np.asarray(lons), np.asarray(lats))


def around_the_world(lons: np.ndarray, lats: np.ndarray) -> BaseGeometry:
    """A lon/lat ring as a footprint that also matches tiles written past ±180°.

    PROJ wraps longitudes into [-180, 180], so a scene crossing the antimeridian comes back as
    a ring that jumps from 179.9 to -179.9 and would span the whole globe. Unwrapping makes
    the ring continuous (it may then run past 180, as may a 0..360 raster), and copies shifted
    by ±360° make it meet the lattice's tile polygons, which are unwrapped around their zone's
    central meridian and so may also lie a little past ±180°.
    """
    polygon = Polygon(zip(np.unwrap(lons, period=360.0), lats, strict=True))
    return with_copies_across_the_antimeridian(polygon)


def with_copies_across_the_antimeridian(polygon: BaseGeometry) -> BaseGeometry:
    if not polygon.is_valid:
        polygon = polygon.buffer(0)
    west, _, east, _ = polygon.bounds
    if west >= -180.0 and east <= 180.0 and east - west < 180.0:
        return polygon  # far from the antimeridian: no copies needed
    copies = [shapely.affinity.translate(polygon, xoff=shift) for shift in (-360.0, 360.0)]
    return shapely.union_all([polygon, *copies])


def names_a_missing_file(path: str, message: str) -> bool:
    """Only a definite answer counts: a 404 from a server, ENOENT from a local disk.

    Anything vaguer (no network, a cached failed lookup) must not turn into "no data here",
    or an offline run would record real tiles as empty and never retry them.
    """
    if is_remote(path):
        return "HTTP response code: 404" in message
    return "No such file" in message
