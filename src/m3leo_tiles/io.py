"""Writing chips: compressed GeoTIFFs that appear whole or not at all.

A chip is encoded in memory (``m3leo_tiles.geotiff``: GDAL's tags, tifffile's writer), written
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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio

from m3leo_tiles import __version__
from m3leo_tiles.errors import DiskFullError
from m3leo_tiles.geotiff import ChipEncoder

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import PixelGrid
    from m3leo_tiles.recipes import Recipe
    from m3leo_tiles.sources.base import Chip

PARTIAL_SUFFIX = ".part"
_ENCODER = ChipEncoder()  # one per process: its GDAL templates serve every later chip


def chip_tags(recipe: Recipe, tags: Mapping[str, str]) -> dict[str, str]:
    """What a chip records about how it was made; ``recipe_hash`` lets a rerun adopt it."""
    return {
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash,
        "software": f"m3leo-tiles {__version__}",
        **{key: str(value) for key, value in tags.items()},
    }


def encode_chip(chip: Chip, grid: PixelGrid, recipe: Recipe, tags: Mapping[str, str]) -> bytes:
    """The GeoTIFF bytes of a chip: band descriptions, nodata, tags, deflate (see geotiff)."""
    if chip.data.shape[1:] != (grid.height, grid.width):
        raise ValueError(
            f"chip is {chip.data.shape[1:]} pixels but its grid is {(grid.height, grid.width)}"
        )
    if len(chip.band_names) != chip.data.shape[0]:
        raise ValueError(f"chip has {chip.data.shape[0]} bands but {len(chip.band_names)} names")
    if chip.band_metadata and len(chip.band_metadata) != chip.data.shape[0]:
        raise ValueError(
            f"chip has {chip.data.shape[0]} bands but metadata for {len(chip.band_metadata)}"
        )
    return _ENCODER.encode(
        chip.data,
        grid.crs,
        grid.transform,
        recipe.dtype,
        recipe.nodata,
        chip.band_names,
        chip_tags(recipe, tags),
        chip.band_metadata,
    )


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
