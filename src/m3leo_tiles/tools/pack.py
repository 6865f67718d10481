"""A packed chip store: every chip of a dataset in one uncompressed array, for fast training.

Reading a sample from GeoTIFFs costs a file open, tag parsing and a decode per chip and
dataset; over many epochs that, not the model, was the M3LEO loader's bottleneck (with zstd
chips, the default, the decode costs a third of what deflate's did: bench/RESULTS.md).
``m3leo-tiles pack DATASET`` writes ``OUT/<aoi>/<dataset>/pack/chips.npy`` (N, bands, H, W) in
the chips' own dtype, plus ``index.json`` (tile ids in row order, band names, nodata and a
fingerprint of the chip files: name, size and mtime of each). A sample is then a slice of a
memory map: no decode, no per-sample open.

It is kept in step with the chips by that fingerprint: the Dataset recomputes it from the
files (one ``stat`` each, at start) and reads the chips themselves when it differs, saying
so. Rerun ``pack`` after ``fetch`` changed the folder. The pack is a copy: deleting it loses
nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m3leo_tiles.core import strict_json
from m3leo_tiles.core.atomic import replacing_folder
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import ChipInfo, ChipSet, parse_pair_band, read_chip_info
from m3leo_tiles.dataset.layout import PACK_DIR as PACK_DIR  # where callers looked for it
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.nodata import valid_mask

ARRAY_NAME = "chips.npy"
INDEX_NAME = "index.json"


def files_fingerprint(folder: Path, ids: Iterable[str]) -> str:
    """Hash of each chip's name, size and modification time: changes when any chip does."""
    digest = hashlib.sha1()
    for identifier in sorted(ids):
        info = os.stat(DatasetLayout(Path(folder)).chip(identifier))
        digest.update(f"{identifier}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PackIndex:
    ids: tuple[str, ...]
    bands: tuple[str, ...]
    dtype: str
    nodata: float | None
    height: int
    width: int
    fingerprint: str
    with_nodata: frozenset[str] | None = None  # chips holding nodata/NaN (None: unknown)

    def row_of(self) -> dict[str, int]:
        return {identifier: row for row, identifier in enumerate(self.ids)}


def pack_dir(folder: Path) -> Path:
    return DatasetLayout(Path(folder)).pack


def read_pack_index(folder: Path) -> PackIndex | None:
    """The pack's index, or None when there is no (complete) pack."""
    path = pack_dir(folder) / INDEX_NAME
    if not path.exists() or not (pack_dir(folder) / ARRAY_NAME).exists():
        return None
    try:
        data = strict_json.loads(path.read_text(encoding="utf-8"))
        return PackIndex(
            ids=tuple(data["ids"]),
            bands=tuple(data["bands"]),
            dtype=data["dtype"],
            nodata=data["nodata"],
            height=int(data["height"]),
            width=int(data["width"]),
            fingerprint=data["fingerprint"],
            with_nodata=frozenset(data["with_nodata"]) if "with_nodata" in data else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_pack(chipset: ChipSet) -> PackIndex | None:
    """The pack of ``chipset`` when it holds exactly its current chips, else None."""
    index = read_pack_index(chipset.folder)
    if index is None:
        return None
    if set(index.ids) != set(chipset.ids):
        return None
    try:
        if files_fingerprint(chipset.folder, chipset.ids) != index.fingerprint:
            return None
    except FileNotFoundError:
        return None
    return index


def _copy_chips(chipset: ChipSet, ids: list[str], first: ChipInfo, path: Path,
                progress: Callable[[int, int], None] | None) -> set[str]:  # fmt: skip
    """Copy every chip into the array at ``path``, one row each; the ids of chips holding
    nodata or NaN. Chips of other bands or size than the first cannot be packed."""
    import rasterio

    with_nodata: set[str] = set()
    array = np.lib.format.open_memmap(
        path,
        mode="w+",
        dtype=np.dtype(first.dtype),
        shape=(len(ids), len(first.bands), first.height, first.width),
    )
    for row, identifier in enumerate(ids):
        with rasterio.open(chipset.path(identifier)) as dataset:
            names = tuple(d or f"band_{i + 1}" for i, d in enumerate(dataset.descriptions))
            if names != first.bands or (dataset.height, dataset.width) != (
                first.height,
                first.width,
            ):
                raise ConfigError(
                    f"cannot pack {chipset.name}: chip {identifier} has bands {names} of "
                    f"{dataset.height}x{dataset.width} px, the first has {first.bands} of "
                    f"{first.height}x{first.width} (per-tile band lists are read from the "
                    "chips, not packed)"
                )
            array[row] = data = dataset.read()
            if not valid_mask(data, first.nodata).all():
                with_nodata.add(identifier)
        if progress:
            progress(row + 1, len(ids))
    array.flush()
    del array
    return with_nodata


def _write_index(path: Path, index: PackIndex) -> None:
    strict_json.write(  # a NaN nodata is written null: same mask for float chips
        path,
        {
            "ids": list(index.ids),
            "bands": list(index.bands),
            "dtype": index.dtype,
            "nodata": index.nodata,
            "height": index.height,
            "width": index.width,
            "fingerprint": index.fingerprint,
            # chips without any nodata/NaN pixel need no mask when read
            "with_nodata": sorted(index.with_nodata or ()),
        },
    )


def pack(folder: Path, progress: Callable[[int, int], None] | None = None) -> PackIndex:
    """Write the pack of the dataset in ``folder`` (replacing an older one whole)."""
    chipset = ChipSet.open(Path(folder))
    ids = sorted(chipset.ids)
    if not ids:
        raise ConfigError(f"{chipset.folder} holds no finished chips; run fetch first")
    first = read_chip_info(chipset.path(ids[0]))
    pairs = [parse_pair_band(b, m) for b, m in zip(first.bands, first.band_metadata, strict=True)]
    if all(pairs):
        raise ConfigError(
            f"cannot pack {chipset.name}: its chips have per-tile band lists (pairs); the "
            "Dataset reads them from the chips"
        )
    fingerprint = files_fingerprint(chipset.folder, ids)
    with replacing_folder(pack_dir(chipset.folder)) as staging:
        with_nodata = _copy_chips(chipset, ids, first, staging / ARRAY_NAME, progress)
        index = PackIndex(
            tuple(ids), first.bands, first.dtype, first.nodata, first.height, first.width,
            fingerprint, frozenset(with_nodata),
        )  # fmt: skip
        _write_index(staging / INDEX_NAME, index)
        if files_fingerprint(chipset.folder, ids) != fingerprint:
            raise ConfigError(f"chips of {chipset.name} changed while packing; rerun pack")
    return index


def open_pack(folder: Path) -> np.ndarray:
    """The packed chips as a memory map (open it in each worker process; never written)."""
    # copy-on-write: pages are shared read-only, and torch.from_numpy gets a writable array
    return np.load(pack_dir(folder) / ARRAY_NAME, mmap_mode="c")
