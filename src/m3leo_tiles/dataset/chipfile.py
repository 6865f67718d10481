"""Writing chips: compressed GeoTIFFs that appear whole or not at all.

A chip is encoded in memory (``m3leo_tiles.dataset.geotiff``: GDAL's tags, tifffile's
writer), written to a hidden ``.<name>.<pid>.<random>.part`` file in the destination folder
and renamed onto ``<tile>.tif``. A run killed at any moment therefore leaves either a whole
chip or a hidden partial file that never ends in ``.tif`` and that the next run removes.
Encoding in memory first is also the fast path: one ``write`` system call instead of GDAL's
many small ones.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import rasterio
from imagecodecs import deflate_crc32

from m3leo_tiles import __version__
from m3leo_tiles.core.atomic import PARTIAL_SUFFIX, write_bytes
from m3leo_tiles.core.errors import disk_full_as, first_line
from m3leo_tiles.core.redact import redact
from m3leo_tiles.dataset.geotiff import DEFAULT_CODEC, ChipEncoder
from m3leo_tiles.dataset.nodata import missing_mask

if TYPE_CHECKING:
    from m3leo_tiles.grid.tile import PixelGrid
    from m3leo_tiles.recipes import Recipe
    from m3leo_tiles.sources.base import Chip

# Only for bench/bench_fsync.py, which measures what the fsyncs cost a whole run (nothing
# measurable: the workers overlap them); not a user option.
_DURABLE = os.environ.get("M3LEO_BENCH_NO_FSYNC", "") != "1"
_ENCODER = ChipEncoder()  # one per process: its GDAL templates serve every later chip


def chip_tags(recipe: Recipe, tags: Mapping[str, str]) -> dict[str, str]:
    """What a chip records about how it was made; ``recipe_hash`` lets a rerun adopt it.
    Values are redacted: an input may be a URL with a credential, and chips are shared."""
    return {
        "recipe": recipe.name,
        "recipe_hash": recipe.recipe_hash,
        "software": f"m3leo-tiles {__version__}",
        **{key: redact(str(value)) for key, value in tags.items()},
    }


def encode_chip(chip: Chip, grid: PixelGrid, recipe: Recipe, tags: Mapping[str, str]) -> bytes:
    """The GeoTIFF bytes of a chip: band descriptions, nodata, tags, the recipe's codec (or
    the default; see geotiff)."""
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
        recipe.compress or DEFAULT_CODEC,
    )


@dataclass(frozen=True)
class Written:
    """What a rerun checks a chip against: its size and the CRC-32 of its bytes."""

    size: int
    crc32: str  # 8 hex digits

    @classmethod
    def of(cls, payload: bytes) -> Written:
        return cls(len(payload), crc32_hex(payload))


def crc32_hex(payload: bytes) -> str:
    """CRC-32 (zlib's) of ``payload`` as 8 hex digits, by libdeflate (imagecodecs): the same
    value as ``zlib.crc32`` at ~10x its speed (0.3 instead of 2.7 ms for an 11 MB chip)."""
    return f"{deflate_crc32(payload):08x}"


def write_bytes_atomically(path: Path, payload: bytes, *, durable: bool = _DURABLE) -> Written:
    """Write to a hidden partial name, fsync, rename, fsync the folder: whole or absent, and
    never through a symbolic link planted at the chip's name (``atomic.replacing``).

    Without the two fsyncs a rename can reach the disk before the file's data does, so a
    power cut (not a killed process) may leave an empty or short file under the final name;
    ext4, XFS and btrfs all allow it. ``durable=False`` is for benchmarks only: the runner
    writes several chips at once, which hides the fsyncs' wait (``bench/bench_fsync.py``).
    """
    full = (f"no space left on the device holding {path.parent}; free some space and rerun "
            "(finished chips are kept)")  # fmt: skip
    with disk_full_as(full):
        write_bytes(path, payload, durable=durable, suffix=PARTIAL_SUFFIX)
    return Written.of(payload)


def write_chip(
    path: Path,
    chip: Chip,
    grid: PixelGrid,
    recipe: Recipe,
    tags: Mapping[str, str],
    *,
    durable: bool = _DURABLE,
) -> Written:
    """Encode ``chip`` on ``grid`` and write it to ``path`` atomically; its size and CRC."""
    payload = encode_chip(chip, grid, recipe, tags)
    return write_bytes_atomically(Path(path), payload, durable=durable)


def chip_problem(path: Path, expected: Written | None = None) -> str | None:
    """Why the chip at ``path`` is not whole, or None: size and CRC-32 when ``expected`` is
    known, then a read of every pixel by GDAL (a damaged block fails there)."""
    try:
        payload = Path(path).read_bytes()
    except OSError as error:
        return f"cannot read: {error.strerror or error}"
    if expected is not None:
        if len(payload) != expected.size:
            return f"{len(payload)} bytes, the manifest says {expected.size}"
        if expected.crc32 and crc32_hex(payload) != expected.crc32:
            return "its bytes changed (CRC-32 differs from the manifest)"
    try:
        with warnings.catch_warnings():  # a cut-off header reads as "not georeferenced"
            warnings.simplefilter("ignore")
            with rasterio.MemoryFile(payload) as memory, memory.open() as dataset:
                dataset.read()
    except Exception as error:  # any GDAL complaint: not a whole chip
        return f"GDAL cannot read it whole ({first_line(error)})"
    return None


def chip_is_empty(chip: Chip, nodata: float | None) -> bool:
    """True when every pixel is nodata (or NaN): such a tile is recorded ``empty``, no file.

    A chip whose first pixel holds a value is not empty: one pixel decides most chips instead
    of a mask as big as the chip (3 ms for a 16 MB s2srm chip, bench/bench_ee_cpu.py)."""
    corner = chip.data[(slice(0, 1),) * chip.data.ndim]
    if corner.size and not missing_mask(corner, nodata, finite=False).all():
        return False
    return bool(missing_mask(chip.data, nodata, finite=False).all())


def read_chip_tags(path: Path) -> dict[str, str]:
    with rasterio.open(path) as dataset:
        return dict(dataset.tags())


def remove_partials(folder: Path, partials: Iterable[str]) -> int:
    """Delete the partial files an interrupted run left behind (their names, as the
    folder's listing found them: ``DatasetLayout.scan().partials``); returns how many."""
    removed = 0
    for name in partials:
        if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):  # never a chip
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed
