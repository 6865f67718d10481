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
* Chips are read block by block into one array (``dataset.chipread``: tifffile parses the
  header, imagecodecs decodes; no GDAL dataset per sample, about half the CPU of rasterio's
  open + read or tifffile's ``asarray`` on zstd chips), or from a ``m3leo-tiles pack`` store
  when it matches the chips (a memory-map slice).
* Nodata and NaN become 0 after normalisation (the band's mean), so they never reach a model.
* Per-tile band lists (GUNW pairs, ``20200117_20200105_unwrapped_phase``) are selected per
  tile by a ``PairRule`` and padded to a fixed number of pairs, with flags.

The concerns live beside it: ``ml.pairs`` (``PairRule``), ``ml.classes`` (class values to
indices, legends of recipes), ``ml.inputs`` (what is known of each input, per-chip steps);
this module assembles samples and batches from them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from m3leo_tiles.core.enums import Split
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import (
    ChipSet,
    PairBand,
    find_dataset,
    grid_path_for,
    ids_of_split,
    read_chip_info,
)
from m3leo_tiles.dataset.nodata import invalid_mask, valid_mask
from m3leo_tiles.ml.batches import empty_tensor, make_loader
from m3leo_tiles.ml.classes import (
    CLASS_PRESETS,
    ESA_WORLDCOVER_CLASSES,
    IGNORE_INDEX,
    RECIPE_CLASSES,
    ClassMap,
)
from m3leo_tiles.ml.inputs import (
    InputSpec,
    make_input,
    make_target,
    read_chip_array,
    resize,
    resize_into,
)
from m3leo_tiles.ml.pairs import PairRule, dates_of, index_pair_bands
from m3leo_tiles.tools.pack import current_pack, open_pack
from m3leo_tiles.tools.stats import DatasetStats, ensure_train_stats

__all__ = [
    "CLASS_PRESETS",
    "ESA_WORLDCOVER_CLASSES",
    "IGNORE_INDEX",
    "RECIPE_CLASSES",
    "M3LEODataset",
    "NoChipsError",
    "PairRule",
    "invalid_mask",
    "read_chip_array",
    "resize",
]


class NoChipsError(ConfigError):
    """The split has no tile with a chip of the target (or of any input)."""


log = logging.getLogger(__name__)


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
        inputs = list(inputs)
        bands = dict(bands or {})
        _check_arguments(inputs, split)
        self.root = Path(root)
        the_grid = self._open_grid(grid, Path(grids_dir))
        self.split = split
        self.normalize = normalize
        self.transforms = transforms
        self.inputs: tuple[InputSpec, ...] = self._open_inputs(
            inputs, bands, normalize, pairs, use_pack
        )
        self.input_names = tuple(inputs)
        self.target_name = target
        self.target: InputSpec | None = None
        self.categorical = False
        self.classes: tuple[int, ...] = ()
        self._class_map: ClassMap | None = None
        splits = dict(the_grid.splits)
        if split is not None and not splits:
            raise ConfigError(f"the grid {self._grid_file} has no splits; pass split=None")
        target_set = None
        if target is not None:
            target_set = ChipSet.open(find_dataset(target, self.root, self.aoi))
            self._open_target(target_set, target_type, target_bands, classes, use_pack)
        self._choose_tiles(the_grid, splits, target_set)
        finest = max(self._chip_width(i) for i in self.inputs)
        self.chip_size = int(chip_size or finest)
        self.channel_names: tuple[str, ...] = tuple(
            name for spec in self.inputs for name in spec.channel_names()
        )
        self._pair_bands: dict[str, dict[str, list[PairBand]]] = {
            spec.name: index_pair_bands(spec.folder, spec.ids, self.tile_ids)
            for spec in self.inputs
            if spec.pairs is not None
        }
        self._open_packs()

    # --- construction steps --------------------------------------------------------------

    def _open_grid(self, grid: str | Path, grids_dir: Path) -> Any:
        """The grid (a file, or an AOI's under ``grids_dir``); sets the AOI it is of."""
        from m3leo_tiles.grid import read_grid

        grid_file = grid_path_for(grid, "", grids_dir)
        if not grid_file.exists():
            raise ConfigError(f"grid {grid_file} not found; make it with `m3leo-tiles grid`")
        the_grid = read_grid(grid_file)
        self._grid_file, self._grids_dir = grid_file, grids_dir
        self.aoi = the_grid.aoi
        return the_grid

    def _open_inputs(
        self,
        inputs: Sequence[str],
        bands: Mapping[str, Sequence[str]],
        normalize: bool,
        pairs: PairRule | Mapping[str, PairRule] | None,
        use_pack: bool,
    ) -> tuple[InputSpec, ...]:
        unknown = set(bands) - set(inputs)
        if unknown:
            raise ConfigError(f"bands given for datasets that are not inputs: {sorted(unknown)}")
        chipsets = {name: ChipSet.open(find_dataset(name, self.root, self.aoi)) for name in inputs}
        return tuple(
            make_input(name, chipsets[name], bands.get(name), normalize, pairs, use_pack)
            for name in inputs
        )

    def _open_target(
        self,
        chipset: ChipSet,
        target_type: str | None,
        target_bands: Sequence[str] | None,
        classes: Sequence[int] | str | None,
        use_pack: bool,
    ) -> None:
        """The target's spec; its class map (and classes) when it is categorical."""

        def train_stats() -> DatasetStats:
            return ensure_train_stats(chipset.folder, self._grid_file, self._grids_dir, log.info)

        self.target, self._class_map = make_target(
            chipset, target_type, target_bands, classes, use_pack, train_stats
        )
        self.categorical = self._class_map is not None
        if self._class_map is not None:
            self.classes = self._class_map.classes

    def _choose_tiles(
        self, the_grid: Any, splits: dict[str, str], target_set: ChipSet | None
    ) -> None:
        """The split's tiles with a target chip (with a target), else with any input chip."""
        split = self.split
        tiles = {tile.identifier: tile for tile in the_grid.tiles}
        if target_set is not None:
            candidates = ids_of_split(target_set.ids & tiles.keys(), splits, split)
            where = f"target {self.target_name}"
        else:
            every = frozenset().union(*(i.ids for i in self.inputs))
            candidates = ids_of_split(every & tiles.keys(), splits, split)
            where = f"inputs {', '.join(self.input_names)}"
        if not candidates:
            raise NoChipsError(
                f"no chips of split {split!r} for {where} under {self.root}/{self.aoi}; "
                "fetch that split first or choose another split"
            )
        self.tile_ids: tuple[str, ...] = tuple(candidates)
        self._tiles = {i: tiles[i] for i in candidates}

    def _open_packs(self) -> None:
        """Rows of the packs that match their chips; memory maps are opened per process."""
        self._pack_rows: dict[str, dict[str, int]] = {}
        self._with_nodata: dict[str, frozenset[str]] = {}  # packed: chips that need a mask
        for spec in (*self.inputs, self.target):
            if spec is not None and spec.packed:
                index = current_pack(ChipSet.open(spec.folder))
                if index is not None:
                    self._pack_rows[spec.name] = index.row_of()
                    if index.with_nodata is not None:
                        self._with_nodata[spec.name] = index.with_nodata
        self._packs: dict[tuple[int, str], np.ndarray] = {}  # (pid, input): its memory map

    def _chip_width(self, spec: InputSpec) -> int:
        chipset = ChipSet(spec.name, self.aoi, spec.folder, spec.ids)
        return read_chip_info(chipset.first_chip()).width

    # --- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tile_ids)

    def _raw(self, spec: InputSpec, identifier: str, out: np.ndarray | None = None) -> np.ndarray:
        """A chip's pixels (bands, h, w): a row of its pack, or the chip file read (into
        ``out`` when the file's pixels fit it as they are: float32 at the sample's size)."""
        rows = self._pack_rows.get(spec.name)
        if rows is not None:
            key = (os.getpid(), spec.name)  # one memory map per process, opened there
            array = self._packs.get(key)
            if array is None:
                array = self._packs[key] = open_pack(spec.folder)
            return np.asarray(array[rows[identifier]])
        return read_chip_array(spec.folder / f"{identifier}.tif", out)

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
        # before normalising: ``data`` may be ``out`` itself (a chip read straight into it)
        invalid = None if clean else invalid_mask(data, nodata)
        if not (native and _same_memory(data, out)):
            values.copy_(torch.from_numpy(np.ascontiguousarray(data)))
        if mean is not None and std is not None:
            values.sub_(torch.from_numpy(mean)[:, None, None])
            values.div_(torch.from_numpy(std)[:, None, None])
        if invalid is not None:
            values.masked_fill_(torch.from_numpy(invalid), 0.0)
        if not native:
            resize_into(out, values)

    def _fill_input(
        self, spec: InputSpec, identifier: str, out: torch.Tensor, filled: np.ndarray
    ) -> bool:
        """One input's channels of a sample into ``out``; ``filled`` marks channels left 0.

        An unreadable chip (truncated, corrupt) counts as missing, with a warning, so one bad
        file does not stop a training run; False then.
        """
        # bands 0..k-1 in order: a float32 chip file of exactly those bands at the sample's
        # size is read straight into ``out`` (``read_blocks`` checks that it fits)
        leading = spec.pairs is None and spec.band_index == tuple(range(len(spec.band_index)))
        try:
            raw = self._raw(spec, identifier, out.numpy() if leading else None)
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
        chosen_pairs = spec.pairs.choose(dates_of(bands))
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
            spec.name: spec.pairs.choose(dates_of(self._pair_bands[spec.name][identifier]))
            for spec in self.inputs
            if spec.pairs is not None and identifier in spec.ids
        }

    def _target_into(self, identifier: str, slots: dict[str, torch.Tensor]) -> None:
        assert self.target is not None
        raw = self._raw(self.target, identifier)[list(self.target.band_index)]
        size = (self.chip_size, self.chip_size)
        if self.categorical:
            classes = self._class_map
            assert classes is not None
            values = raw[0]
            native = values.shape == size
            out = slots["mask"].numpy()
            if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
                # one gather through a table over every value the dtype can hold
                table = classes.full_table(values.dtype)
                if native:
                    np.take(table, values, out=out)
                    return
                index = table[values]
            else:
                values = values.astype(np.int64)
                inside = (values >= 0) & (values < classes.lookup.size)
                index = np.full(values.shape, IGNORE_INDEX, dtype=np.int64)
                index[inside] = classes.lookup[values[inside]]
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


def _same_memory(data: np.ndarray, tensor: torch.Tensor) -> bool:
    """Whether ``data`` is ``tensor``'s memory (a chip was read straight into it)."""
    return data.ctypes.data == tensor.data_ptr() and data.shape == tuple(tensor.shape)


def _check_arguments(inputs: list[str], split: str | None) -> None:
    """Mistakes the arguments show by themselves, before anything is read."""
    if not inputs:
        raise ConfigError("give at least one input dataset")
    if len(set(inputs)) != len(inputs):
        raise ConfigError(f"inputs repeat a dataset: {inputs}")
    if split is not None and split not in {s.value for s in Split}:
        raise ConfigError(f"unknown split {split!r}; use train, val or test")


def _bounds(tile: Any) -> tuple[float, float, float, float]:
    bounds = getattr(tile, "bounds", None)
    if bounds is not None:
        return tuple(map(float, bounds))
    return (tile.west, tile.south, tile.east, tile.north)
