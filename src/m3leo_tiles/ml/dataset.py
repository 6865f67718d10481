"""``M3LEODataset``: a map-style torch Dataset over the chips of several datasets per tile.

One sample is one tile of one split, in TorchGeo's conventions: ``image`` (the inputs'
bands stacked on channels, each resampled to one chip size), ``mask`` (a categorical target
as class indices, long) or ``target`` (a continuous target, float, NaN where it has no value),
``tile_id``, ``crs``, ``bounds``, and which inputs were missing for that tile (``missing``, one
flag per input; ``filled``, one per channel, also set for padded pairs). A tile without a
chip of some input gets zeros there, flagged, never an exception: the M3LEO datasets do not
cover the same tiles.

Why it is built this way:

* Nothing is opened in ``__init__`` except to read band names once, and every read opens its
  own file (or, for a pack, its own memory map per process), so ``num_workers > 0`` never
  shares a file handle across processes.
* Chips are read with tifffile (no GDAL dataset per sample: half the cost of rasterio's open),
  or from a ``m3leo-tiles pack`` store when it matches the chips (a memory-map slice).
* Nodata and NaN become 0 after normalisation (the band's mean), so they never reach a model.
* Per-tile band lists (GUNW pairs, ``20200117_20200105_unwrapped_phase``) are selected per
  tile by a ``PairRule`` and padded to a fixed number of pairs, with flags.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from m3leo_tiles.core.enums import Split
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import (
    ChipInfo,
    ChipSet,
    PairBand,
    find_dataset,
    grid_path_for,
    ids_of_split,
    parse_pair_band,
    read_chip_info,
)
from m3leo_tiles.dataset.nodata import invalid_mask, valid_mask
from m3leo_tiles.ml.batches import empty_tensor, make_loader
from m3leo_tiles.tools.pack import current_pack, open_pack
from m3leo_tiles.tools.stats import DatasetStats, ensure_train_stats, read_stats


class NoChipsError(ConfigError):
    """The split has no tile with a chip of the target (or of any input)."""


log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Class index of target pixels without a class (nodata): torch's CrossEntropyLoss default."""

ESA_WORLDCOVER_CLASSES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
CLASS_PRESETS: Mapping[str, tuple[int, ...]] = {"esa-worldcover": ESA_WORLDCOVER_CLASSES}
RECIPE_CLASSES: Mapping[str, str] = {"esawc": "esa-worldcover"}
"""Recipes whose chips hold class values of a known legend (the paper's ESA WorldCover)."""


@dataclass(frozen=True)
class PairRule:
    """Which pairs of a per-tile pair input make up a sample, and how many.

    ``count`` pairs are kept (padded with zero channels and flags when a tile has fewer),
    chosen among those within ``start``..``end`` (both dates of the pair inside) and at most
    ``max_baseline_days`` apart, ordered by ``order``: ``shortest`` baseline first (ties:
    latest first), ``longest`` first, or ``latest`` reference date first.
    """

    count: int = 4
    order: str = "shortest"
    start: date | None = None
    end: date | None = None
    max_baseline_days: int | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"PairRule.count must be at least 1, got {self.count}")
        if self.order not in {"shortest", "longest", "latest"}:
            raise ConfigError(f"PairRule.order must be shortest, longest or latest: {self.order}")

    def choose(self, pairs: Sequence[tuple[date, date]]) -> list[tuple[date, date]]:
        kept = []
        for reference, secondary in set(pairs):
            first, last = min(reference, secondary), max(reference, secondary)
            if self.start is not None and first < self.start:
                continue
            if self.end is not None and last > self.end:
                continue
            if self.max_baseline_days is not None and (last - first).days > self.max_baseline_days:
                continue
            kept.append((reference, secondary))

        def baseline(pair: tuple[date, date]) -> int:
            return abs((pair[0] - pair[1]).days)

        if self.order == "shortest":
            kept.sort(key=lambda p: (baseline(p), -p[0].toordinal(), -p[1].toordinal()))
        elif self.order == "longest":
            kept.sort(key=lambda p: (-baseline(p), -p[0].toordinal(), -p[1].toordinal()))
        else:
            kept.sort(key=lambda p: (-p[0].toordinal(), -p[1].toordinal()))
        return kept[: self.count]


@dataclass(frozen=True)
class _Input:
    """One input dataset as the sampler sees it (picklable: paths and numbers only)."""

    name: str
    folder: Path
    ids: frozenset[str]
    bands: tuple[str, ...]  # selected band names, or the layers of a pair input
    band_index: tuple[int, ...]  # positions in the chip (fixed band lists)
    nodata: float | None
    mean: np.ndarray | None  # per selected band (normalize=True)
    std: np.ndarray | None
    pairs: PairRule | None  # set for per-tile pair inputs
    packed: bool

    @property
    def channels(self) -> int:
        return len(self.bands) * (self.pairs.count if self.pairs else 1)


def _date_number(day: date) -> int:
    return day.year * 10000 + day.month * 100 + day.day


def read_chip_array(path: Path) -> np.ndarray:
    """(bands, H, W) of a chip file; tifffile for our chips, rasterio for anything else."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            array = page.asarray()
            if array.ndim == 2:
                return array[None]
            if page.planarconfig == tifffile.PLANARCONFIG.CONTIG:
                return np.moveaxis(array, -1, 0)
            return array
    except (ValueError, TypeError, NotImplementedError, tifffile.TiffFileError):
        import rasterio

        with rasterio.open(path) as dataset:
            return dataset.read()


def resize(tensor: torch.Tensor, size: int, categorical: bool = False) -> torch.Tensor:
    """(C, H, W) to (C, size, size): bilinear (antialiased when shrinking) or nearest."""
    if tensor.shape[-2:] == (size, size):
        return tensor
    if categorical:
        return F.interpolate(tensor[None].float(), size=(size, size), mode="nearest")[0]
    shrinking = tensor.shape[-1] > size
    return F.interpolate(
        tensor[None], size=(size, size), mode="bilinear", align_corners=False,
        antialias=shrinking,
    )[0]  # fmt: skip


class M3LEODataset(Dataset):
    """Samples of one split's tiles: several inputs stacked, an optional target.

    ``root`` is the ``--out`` folder of fetch; ``grid`` a grid file or an AOI name (its grid
    under ``grids_dir``); ``inputs`` and ``target`` are dataset names (``s1grd``, ``agb`` finds
    ``agb-2020``) or folders. ``bands`` selects bands per input by name (for a pair input: its
    layers, e.g. ``["unwrapped_phase", "coherence"]``); ``target_bands`` the target's (default:
    its first band). ``chip_size`` defaults to the finest input's. ``normalize`` uses each
    dataset's train statistics (``m3leo-tiles stats``). ``target_type`` is ``categorical`` or
    ``continuous`` (default: categorical when class values are known); ``classes`` lists the
    class values in index order, or names a preset (``"esa-worldcover"``: 10…100 → 0…10).
    ``pairs`` is the ``PairRule`` of pair inputs (one for all, or per input name). Tiles are
    those of the split with a target chip (with a target) or with any input chip.
    """

    def __init__(
        self,
        root: str | Path,
        grid: str | Path,
        inputs: Sequence[str] = (),
        target: str | None = None,
        split: str | None = "train",
        bands: Mapping[str, Sequence[str]] | None = None,
        chip_size: int | None = None,
        normalize: bool = False,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        target_type: str | None = None,
        target_bands: Sequence[str] | None = None,
        classes: Sequence[int] | str | None = None,
        pairs: PairRule | Mapping[str, PairRule] | None = None,
        grids_dir: str | Path = "grids",
        use_pack: bool = True,
    ) -> None:
        from m3leo_tiles.grid import read_grid

        inputs = list(inputs)
        if not inputs:
            raise ConfigError("give at least one input dataset")
        if len(set(inputs)) != len(inputs):
            raise ConfigError(f"inputs repeat a dataset: {inputs}")
        if split is not None and split not in {s.value for s in Split}:
            raise ConfigError(f"unknown split {split!r}; use train, val or test")
        self.root = Path(root)
        grid_file = grid_path_for(grid, "", Path(grids_dir))
        if not grid_file.exists():
            raise ConfigError(f"grid {grid_file} not found; make it with `m3leo-tiles grid`")
        the_grid = read_grid(grid_file)
        self._grid_file, self._grids_dir = grid_file, Path(grids_dir)
        self.aoi = the_grid.aoi
        self.split = split
        self.normalize = normalize
        self.transforms = transforms
        bands = dict(bands or {})
        unknown = set(bands) - set(inputs)
        if unknown:
            raise ConfigError(f"bands given for datasets that are not inputs: {sorted(unknown)}")

        chipsets = {name: ChipSet.open(find_dataset(name, self.root, self.aoi)) for name in inputs}
        self.inputs: tuple[_Input, ...] = tuple(
            self._make_input(name, chipsets[name], bands.get(name), normalize, pairs, use_pack)
            for name in inputs
        )
        self.input_names = tuple(inputs)

        splits = dict(the_grid.splits)
        if split is not None and not splits:
            raise ConfigError(f"the grid {grid_file} has no splits; pass split=None")
        tiles = {tile.identifier: tile for tile in the_grid.tiles}

        self.target_name = target
        self.target: _Input | None = None
        self.categorical = False
        self.classes: tuple[int, ...] = ()
        self._lookup: np.ndarray | None = None
        if target is not None:
            target_set = ChipSet.open(find_dataset(target, self.root, self.aoi))
            candidates = ids_of_split(target_set.ids & tiles.keys(), splits, split)
            self.target = self._make_target(
                target_set, target_type, target_bands, classes, use_pack
            )
            where = f"target {target}"
        else:
            every = frozenset().union(*(i.ids for i in self.inputs))
            candidates = ids_of_split(every & tiles.keys(), splits, split)
            where = f"inputs {', '.join(inputs)}"
        if not candidates:
            raise NoChipsError(
                f"no chips of split {split!r} for {where} under {self.root}/{self.aoi}; "
                "fetch that split first or choose another split"
            )
        self.tile_ids: tuple[str, ...] = tuple(candidates)
        self._tiles = {i: tiles[i] for i in candidates}

        finest = max(self._chip_width(i) for i in self.inputs)
        self.chip_size = int(chip_size or finest)
        self.channel_names: tuple[str, ...] = tuple(
            name for spec in self.inputs for name in self._channel_names(spec)
        )
        self._pair_bands = self._index_pair_bands()
        self._pack_rows: dict[str, dict[str, int]] = {}
        self._with_nodata: dict[str, frozenset[str]] = {}  # packed: chips that need a mask
        for spec in (*self.inputs, self.target):
            if spec is not None and spec.packed:
                index = current_pack(ChipSet.open(spec.folder))
                if index is not None:
                    self._pack_rows[spec.name] = index.row_of()
                    if index.with_nodata is not None:
                        self._with_nodata[spec.name] = index.with_nodata
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    # --- construction helpers ------------------------------------------------------------

    def _make_input(
        self,
        name: str,
        chipset: ChipSet,
        wanted: Sequence[str] | None,
        normalize: bool,
        pairs: PairRule | Mapping[str, PairRule] | None,
        use_pack: bool,
    ) -> _Input:
        if not chipset.ids:
            raise ConfigError(f"input {name} ({chipset.folder}) holds no chips; run fetch first")
        info = read_chip_info(chipset.first_chip())
        pair_bands = [
            parse_pair_band(b, m) for b, m in zip(info.bands, info.band_metadata, strict=True)
        ]
        is_pairs = all(p is not None for p in pair_bands)
        rule: PairRule | None = None
        if is_pairs:
            rule = pairs.get(name, PairRule()) if isinstance(pairs, Mapping) else pairs
            rule = rule or PairRule()
            layers = list(dict.fromkeys(p.layer for p in pair_bands if p is not None))
            selected = tuple(wanted or layers)
            index: tuple[int, ...] = ()
        else:
            selected = tuple(wanted or info.bands)
            missing = [b for b in selected if b not in info.bands]
            if missing:
                raise ConfigError(
                    f"unknown band(s) {', '.join(missing)} of {name}; it has: "
                    f"{', '.join(info.bands)}"
                )
            index = tuple(info.bands.index(b) for b in selected)
        mean = std = None
        if normalize:
            mean, std = _moments(read_stats(chipset.folder, "train"), selected, chipset)
        packed = use_pack and not is_pairs and current_pack(chipset) is not None
        if use_pack and not is_pairs and not packed and (chipset.folder / "pack").exists():
            warnings.warn(
                f"the pack of {name} does not match its chips (fetch changed them); reading "
                f"the chips. Rerun `m3leo-tiles pack {chipset.folder}`",
                stacklevel=3,
            )
        return _Input(
            name, chipset.folder, chipset.ids, selected, index, info.nodata, mean, std, rule,
            packed,
        )  # fmt: skip

    def _make_target(
        self,
        chipset: ChipSet,
        target_type: str | None,
        target_bands: Sequence[str] | None,
        classes: Sequence[int] | str | None,
        use_pack: bool,
    ) -> _Input:
        info = read_chip_info(chipset.first_chip())
        selected = tuple(target_bands or info.bands[:1])
        missing = [b for b in selected if b not in info.bands]
        if missing:
            raise ConfigError(
                f"unknown band(s) {', '.join(missing)} of target {chipset.name}; it has: "
                f"{', '.join(info.bands)}"
            )
        recipe = _recipe_of(chipset.name)
        if classes is None and target_type in (None, "categorical") and recipe in RECIPE_CLASSES:
            classes = RECIPE_CLASSES[recipe]
        if target_type is None:
            target_type = "categorical" if classes is not None else "continuous"
        if target_type not in {"categorical", "continuous"}:
            raise ConfigError(f"target type must be categorical or continuous: {target_type!r}")
        self.categorical = target_type == "categorical"

        def train_stats() -> DatasetStats:
            return ensure_train_stats(chipset.folder, self._grid_file, self._grids_dir, log.info)

        if self.categorical:
            if len(selected) != 1:
                raise ConfigError("a categorical target has one band; choose it with target_bands")
            self.classes = _class_values(classes, chipset, info, train_stats)
            self._lookup = _lookup_table(self.classes)
        return _Input(
            chipset.name, chipset.folder, chipset.ids, selected,
            tuple(info.bands.index(b) for b in selected), info.nodata, None, None, None,
            use_pack,
        )  # fmt: skip

    def _chip_width(self, spec: _Input) -> int:
        chipset = ChipSet(spec.name, self.aoi, spec.folder, spec.ids)
        return read_chip_info(chipset.first_chip()).width

    def _channel_names(self, spec: _Input) -> list[str]:
        if spec.pairs is None:
            return [f"{spec.name}:{b}" for b in spec.bands]
        return [f"{spec.name}:pair{k}:{b}" for k in range(spec.pairs.count) for b in spec.bands]

    def _index_pair_bands(self) -> dict[str, dict[str, list[PairBand]]]:
        """Band lists of every chip of pair inputs in this split (read once, here)."""
        found: dict[str, dict[str, list[PairBand]]] = {}
        for spec in self.inputs:
            if spec.pairs is None:
                continue
            per_tile: dict[str, list[PairBand]] = {}
            for identifier in self.tile_ids:
                if identifier in spec.ids:
                    info: ChipInfo = read_chip_info(spec.folder / f"{identifier}.tif")
                    per_tile[identifier] = [
                        p
                        for b, m in zip(info.bands, info.band_metadata, strict=True)
                        if (p := parse_pair_band(b, m)) is not None
                    ]
            found[spec.name] = per_tile
        return found

    # --- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tile_ids)

    def _raw(self, spec: _Input, identifier: str) -> np.ndarray:
        rows = self._pack_rows.get(spec.name)
        if rows is not None:
            key = (os.getpid(), spec.name)  # one memory map per process, opened there
            array = self._maps.get(key)
            if array is None:
                array = self._maps[key] = open_pack(spec.folder)
            return np.asarray(array[rows[identifier]])
        return read_chip_array(spec.folder / f"{identifier}.tif")

    def _scaled_into(
        self,
        out: torch.Tensor,
        data: np.ndarray,
        nodata: float | None,
        mean: np.ndarray | None,
        std: np.ndarray | None,
        clean: bool = False,
    ) -> None:
        """Write ``data`` (bands, h, w), normalised and resized, into ``out`` (bands, S, S).

        In place on one float32 buffer (the output itself when no resize is needed): a
        sample is ~10 MB, and every extra pass over it shows in samples/s.
        """
        size = self.chip_size
        native = data.shape[-2:] == (size, size)
        values = out if native else torch.empty(data.shape, dtype=torch.float32)
        values.copy_(torch.from_numpy(np.ascontiguousarray(data)))
        if mean is not None and std is not None:
            values.sub_(torch.from_numpy(mean)[:, None, None])
            values.div_(torch.from_numpy(std)[:, None, None])
        invalid = None if clean else invalid_mask(data, nodata)
        if invalid is not None:
            values.masked_fill_(torch.from_numpy(invalid), 0.0)
        if not native:
            out.copy_(resize(values, size))

    def _fill_input(
        self, spec: _Input, identifier: str, out: torch.Tensor, filled: np.ndarray
    ) -> bool:
        """One input's channels of a sample into ``out``; ``filled`` marks channels left 0.

        An unreadable chip (truncated, corrupt) counts as missing, with a warning, so one bad
        file does not stop a training run; False then.
        """
        try:
            raw = self._raw(spec, identifier)
        except Exception as error:
            warnings.warn(
                f"cannot read the {spec.name} chip of {identifier} ({error}); it is treated as "
                "missing (zeros, flagged)",
                stacklevel=3,
            )
            return False
        if spec.pairs is None:
            every = spec.band_index == tuple(range(raw.shape[0]))
            chosen = raw if every else raw[list(spec.band_index)]
            packed = self._with_nodata.get(spec.name)
            clean = packed is not None and identifier not in packed  # the pack checked it
            self._scaled_into(out, chosen, spec.nodata, spec.mean, spec.std, clean)
            filled[:] = False
            return True
        out.zero_()  # pairs a tile lacks stay zero (padding)
        bands = self._pair_bands[spec.name][identifier]
        position: dict[tuple[date, date, str], int] = {}
        for i, p in enumerate(bands):  # pairs of equal dates (two tracks): the first
            position.setdefault((p.reference, p.secondary, p.layer), i)
        chosen_pairs = spec.pairs.choose([(p.reference, p.secondary) for p in bands])
        layer_count = len(spec.bands)
        for k, (reference, secondary) in enumerate(chosen_pairs):
            for j, layer in enumerate(spec.bands):
                band = position.get((reference, secondary, layer))
                if band is None:
                    continue
                channel = k * layer_count + j
                mean = spec.mean[j : j + 1] if spec.mean is not None else None
                std = spec.std[j : j + 1] if spec.std is not None else None
                self._scaled_into(
                    out[channel : channel + 1], raw[band : band + 1], spec.nodata, mean, std
                )
                filled[channel] = False
        return True

    def pairs_of(self, index: int) -> dict[str, list[tuple[date, date]]]:
        """The pairs each pair input used for sample ``index`` (for inspection)."""
        identifier = self.tile_ids[index]
        return {
            spec.name: spec.pairs.choose(
                [(p.reference, p.secondary) for p in self._pair_bands[spec.name][identifier]]
            )
            for spec in self.inputs
            if spec.pairs is not None and identifier in spec.ids
        }

    def _target_into(self, identifier: str, slots: dict[str, torch.Tensor]) -> None:
        assert self.target is not None
        raw = self._raw(self.target, identifier)[list(self.target.band_index)]
        size = (self.chip_size, self.chip_size)
        if self.categorical:
            assert self._lookup is not None
            values = raw[0]
            native = values.shape == size
            out = slots["mask"].numpy()
            if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
                # one gather through a table over every value the dtype can hold
                table = self._full_lookup(values.dtype)
                if native:
                    np.take(table, values, out=out)
                    return
                index = table[values]
            else:
                values = values.astype(np.int64)
                inside = (values >= 0) & (values < self._lookup.size)
                index = np.full(values.shape, IGNORE_INDEX, dtype=np.int64)
                index[inside] = self._lookup[values[inside]]
                invalid = invalid_mask(values, self.target.nodata)
                if invalid is not None:
                    index[invalid] = IGNORE_INDEX
            mask = torch.from_numpy(index)
            if not native:
                mask = resize(mask[None], self.chip_size, categorical=True)[0].long()
            slots["mask"].copy_(mask)
            return
        valid = valid_mask(raw, self.target.nodata)
        values = raw.astype(np.float32)
        values[~valid] = np.nan
        slots["target"].copy_(resize(torch.from_numpy(values), self.chip_size, categorical=True))

    def _full_lookup(self, dtype: np.dtype) -> np.ndarray:
        """Class index of every value of an unsigned 8/16-bit dtype (nodata: ignored)."""
        key = (os.getpid(), f"lookup-{dtype}")
        table = self._maps.get(key)
        if table is None:
            assert self._lookup is not None and self.target is not None
            table = np.full(1 << (8 * dtype.itemsize), IGNORE_INDEX, dtype=np.int64)
            known = min(table.size, self._lookup.size)
            table[:known] = self._lookup[:known]
            nodata = self.target.nodata
            if nodata is not None and float(nodata).is_integer() and 0 <= nodata < table.size:
                table[int(nodata)] = IGNORE_INDEX
            self._maps[key] = table
        return table

    def batch_buffers(self, count: int, shared: bool) -> dict[str, torch.Tensor]:
        """Empty tensors for ``count`` samples (the tensor keys of a batch, in its order)."""
        size, channels = self.chip_size, len(self.channel_names)
        buffers = {
            "image": empty_tensor((count, channels, size, size), torch.float32, shared),
            "bounds": empty_tensor((count, 4), torch.float64, shared),
            "missing": empty_tensor((count, len(self.inputs)), torch.bool, shared),
            "filled": empty_tensor((count, channels), torch.bool, shared),
        }
        if self.target is not None and self.categorical:
            buffers["mask"] = empty_tensor((count, size, size), torch.int64, shared)
        elif self.target is not None:
            shape = (count, len(self.target.bands), size, size)
            buffers["target"] = empty_tensor(shape, torch.float32, shared)
        return buffers

    def _read_into(self, identifier: str, slots: dict[str, torch.Tensor]) -> None:
        """Every tensor of one sample, written into ``slots`` (views of one batch row)."""
        image = slots["image"]
        filled = slots["filled"].numpy()
        filled[:] = True
        missing = slots["missing"].numpy()
        offset = 0
        for position, spec in enumerate(self.inputs):
            channels = slice(offset, offset + spec.channels)
            offset += spec.channels
            present = identifier in spec.ids
            if present:
                present = self._fill_input(spec, identifier, image[channels], filled[channels])
            if not present:
                image[channels] = 0.0
            missing[position] = not present
        slots["bounds"].numpy()[:] = _bounds(self._tiles[identifier])
        if self.target is not None:
            self._target_into(identifier, slots)

    def __getitem__(self, index: int) -> dict[str, Any]:
        identifier = self.tile_ids[index]
        slots = {key: batch[0] for key, batch in self.batch_buffers(1, shared=False).items()}
        self._read_into(identifier, slots)
        sample: dict[str, Any] = {
            "image": slots.pop("image"),
            "tile_id": identifier,
            "crs": self._tiles[identifier].crs,
            **slots,
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def read_batch(
        self, indices: Sequence[int], into: dict[str, torch.Tensor] | None = None
    ) -> dict[str, Any]:
        """Samples ``indices`` as one batch: what ``default_collate`` makes of them.

        Each sample is written straight into its row of one tensor per key (``into``, as
        ``batch_buffers`` makes them, or new ones), so a batch is never stacked from copies.
        With ``transforms`` the samples are made one by one and stacked, since a transform
        may change their shapes (``into`` cannot be used then).
        """
        if self.transforms is not None:
            if into is not None:
                raise ValueError("read_batch(into=...) cannot apply transforms")
            return default_collate([self[i] for i in indices])
        ids = [self.tile_ids[i] for i in indices]
        buffers = dict(into) if into is not None else self.batch_buffers(len(ids), shared=False)
        for row, identifier in enumerate(ids):
            self._read_into(identifier, {key: batch[row] for key, batch in buffers.items()})
        return {
            "image": buffers.pop("image"),
            "tile_id": ids,
            "crs": [self._tiles[i].crs for i in ids],
            **buffers,
        }

    loader = make_loader  # batches whole, by worker processes or reader threads

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"M3LEODataset({self.aoi}, split={self.split}, {len(self)} tiles, "
            f"{len(self.channel_names)} channels at {self.chip_size} px, "
            f"target={self.target_name})"
        )


# --- helpers -------------------------------------------------------------------------------


def _recipe_of(dataset: str) -> str:
    """``agb-2020`` → ``agb``: the recipe a dataset folder was made from."""
    head, _, tail = dataset.rpartition("-")
    return head if head and tail.isdigit() and len(tail) == 4 else dataset


def _bounds(tile: Any) -> tuple[float, float, float, float]:
    bounds = getattr(tile, "bounds", None)
    if bounds is not None:
        return tuple(map(float, bounds))
    return (tile.west, tile.south, tile.east, tile.north)


def _moments(
    stats: DatasetStats, bands: Sequence[str], chipset: ChipSet
) -> tuple[np.ndarray, np.ndarray]:
    if stats.chips == 0:
        raise ConfigError(f"statistics of {chipset.name} cover no chips; rerun stats")
    mean = np.array([stats.band(b).mean for b in bands], dtype=np.float32)
    std = np.array([stats.band(b).std for b in bands], dtype=np.float32)
    std[~(std > 0)] = 1.0  # a constant band: centre it, do not divide by zero
    return mean, std


def _class_values(
    classes: Sequence[int] | str | None,
    chipset: ChipSet,
    info: ChipInfo,
    train_stats: Callable[[], DatasetStats],
) -> tuple[int, ...]:
    """Class values in index order: given, a preset, or those the train statistics recorded
    (``train_stats`` computes them when missing, as m3leo-train does)."""
    if isinstance(classes, str):
        if classes not in CLASS_PRESETS:
            raise ConfigError(
                f"unknown class preset {classes!r}; known: {', '.join(CLASS_PRESETS)}"
            )
        return CLASS_PRESETS[classes]
    if classes is not None:
        values = tuple(int(c) for c in classes)
    else:
        band = train_stats().band(info.bands[0])
        if band.values is None:
            raise ConfigError(
                f"target {chipset.name} has more than 256 values; it is not categorical"
            )
        nodata = info.nodata
        values = tuple(
            int(v) for v in sorted(band.values, key=int) if nodata is None or int(v) != nodata
        )
    if len(set(values)) != len(values) or any(v < 0 for v in values):
        raise ConfigError(f"class values must be distinct and >= 0: {values}")
    return values


def _lookup_table(classes: Sequence[int]) -> np.ndarray:
    table = np.full(max(classes) + 1, IGNORE_INDEX, dtype=np.int64)
    for position, value in enumerate(classes):
        table[value] = position
    return table
