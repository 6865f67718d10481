"""Writing chips: compressed GeoTIFFs that appear whole or not at all.

A chip is encoded in memory (GDAL's GTiff driver through a rasterio ``MemoryFile``), written
to a hidden ``.<name>.<pid>.<random>.part`` file in the destination folder and renamed onto
``<tile>.tif``. A run killed at any moment therefore leaves either a whole chip or a hidden
partial file that never ends in ``.tif`` and that the next run removes. Encoding in memory
first is also the fast path: one ``write`` system call instead of GDAL's many small ones.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from m3leo_tiles import __version__
from m3leo_tiles.errors import DiskFullError

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import PixelGrid
    from m3leo_tiles.recipes import Recipe
    from m3leo_tiles.sources.base import Chip

PARTIAL_SUFFIX = ".part"
TILED_FROM_PX = 256  # smaller chips are one strip: tiling them only adds padding
BLOCK_PX = 256


@lru_cache(maxsize=128)
def _crs(text: str) -> CRS:
    """Parsing a CRS costs more than encoding a small chip; tiles of a zone share one."""
    return CRS.from_user_input(text)


def _profile(chip: Chip, grid: PixelGrid, recipe: Recipe) -> dict:
    count, height, width = chip.data.shape
    floating = np.dtype(recipe.dtype).kind == "f"
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": recipe.dtype,
        "crs": _crs(grid.crs),
        "transform": grid.transform,
        "nodata": recipe.nodata,
        "compress": "deflate",  # read everywhere; zstd measured slower for small chips here
        "predictor": 3 if floating else 2,
        "interleave": "band" if count > 1 else "pixel",
    }
    if width >= TILED_FROM_PX and height >= TILED_FROM_PX:
        profile.update(tiled=True, blockxsize=BLOCK_PX, blockysize=BLOCK_PX)
    else:
        profile.update(tiled=False, blockysize=height)
    return profile


def chip_tags(recipe: Recipe, tags: Mapping[str, str]) -> dict[str, str]:
    """What a chip records about how it was made; ``recipe_hash`` lets a rerun adopt it."""
    return {
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash,
        "software": f"m3leo-tiles {__version__}",
        **{key: str(value) for key, value in tags.items()},
    }


def encode_chip(chip: Chip, grid: PixelGrid, recipe: Recipe, tags: Mapping[str, str]) -> bytes:
    """The GeoTIFF bytes of a chip: band descriptions, nodata, tags, compression."""
    if chip.data.shape[1:] != (grid.height, grid.width):
        raise ValueError(
            f"chip is {chip.data.shape[1:]} pixels but its grid is {(grid.height, grid.width)}"
        )
    with MemoryFile() as memory:
        with memory.open(**_profile(chip, grid, recipe)) as dataset:
            dataset.write(chip.data.astype(recipe.dtype, copy=False))
            for index, name in enumerate(chip.band_names, start=1):
                dataset.set_band_description(index, name)
            dataset.update_tags(**chip_tags(recipe, tags))
        return memory.read()


def write_bytes_atomically(path: Path, payload: bytes) -> None:
    """Write to a hidden partial name, fsync-free rename: the file is whole or absent."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        with open(partial, "wb") as handle:
            handle.write(payload)
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        if error.errno == errno.ENOSPC:
            raise DiskFullError(
                f"no space left on the device holding {path.parent}; free some space and rerun "
                "(finished chips are kept)"
            ) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def write_chip(
    path: Path, chip: Chip, grid: PixelGrid, recipe: Recipe, tags: Mapping[str, str]
) -> None:
    """Encode ``chip`` on ``grid`` and write it to ``path`` atomically."""
    write_bytes_atomically(Path(path), encode_chip(chip, grid, recipe, tags))


def chip_is_empty(chip: Chip, nodata: float | None) -> bool:
    """True when every pixel is nodata (or NaN): such a tile is recorded ``empty``, no file."""
    data = chip.data
    missing = np.isnan(data) if data.dtype.kind == "f" else np.zeros(data.shape, dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        missing |= data == nodata
    return bool(missing.all())


def read_chip_tags(path: Path) -> dict[str, str]:
    with rasterio.open(path) as dataset:
        return dict(dataset.tags())


def remove_partials(folder: Path) -> int:
    """Delete partial files an interrupted run left behind; returns how many."""
    removed = 0
    for partial in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            removed += 1
    return removed
