"""Input assembly: what the Dataset knows of each input and target dataset, made once in
``M3LEODataset.__init__``, and the per-chip steps a sample is made of (read, mask, resize).

An ``InputSpec`` holds paths and numbers only, so the Dataset pickles to DataLoader workers
without open files.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import ChipInfo, ChipSet, read_chip_info
from m3leo_tiles.ml.classes import RECIPE_CLASSES, ClassMap, class_values, preset_of
from m3leo_tiles.ml.pairs import PairRule, pair_bands, rule_for
from m3leo_tiles.tools.pack import current_pack
from m3leo_tiles.tools.stats import DatasetStats, read_stats


@dataclass(frozen=True)
class InputSpec:
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

    def channel_names(self) -> list[str]:
        """``s1grd:vv``, or ``gunw:pair0:coherence`` for each pair slot of a pair input."""
        if self.pairs is None:
            return [f"{self.name}:{b}" for b in self.bands]
        return [f"{self.name}:pair{k}:{b}" for k in range(self.pairs.count) for b in self.bands]


def make_input(
    name: str,
    chipset: ChipSet,
    wanted: Sequence[str] | None,
    normalize: bool,
    pairs: PairRule | Mapping[str, PairRule] | None,
    use_pack: bool,
) -> InputSpec:
    """An input's spec: its bands (or pair layers), statistics and whether a pack serves it."""
    if not chipset.ids:
        raise ConfigError(f"input {name} ({chipset.folder}) holds no chips; run fetch first")
    info = read_chip_info(chipset.first_chip())
    as_pairs = pair_bands(info)
    is_pairs = all(p is not None for p in as_pairs)
    rule: PairRule | None = None
    if is_pairs:
        rule = rule_for(name, pairs)
        layers = list(dict.fromkeys(p.layer for p in as_pairs if p is not None))
        selected = tuple(wanted or layers)
        index: tuple[int, ...] = ()
    else:
        selected = tuple(wanted or info.bands)
        index = band_positions(info, selected, name)
    mean = std = None
    if normalize:
        mean, std = moments(read_stats(chipset.folder, "train"), selected, chipset)
    packed = use_pack and not is_pairs and current_pack(chipset) is not None
    if use_pack and not is_pairs and not packed and (chipset.folder / "pack").exists():
        warnings.warn(
            f"the pack of {name} does not match its chips (fetch changed them); reading "
            f"the chips. Rerun `m3leo-tiles pack {chipset.folder}`",
            stacklevel=4,
        )
    return InputSpec(
        name, chipset.folder, chipset.ids, selected, index, info.nodata, mean, std, rule, packed
    )


def make_target(
    chipset: ChipSet,
    target_type: str | None,
    target_bands: Sequence[str] | None,
    classes: Sequence[int] | str | None,
    use_pack: bool,
    train_stats: Callable[[], DatasetStats],
    recipe_classes: Mapping[str, str] = RECIPE_CLASSES,
) -> tuple[InputSpec, ClassMap | None]:
    """The target's spec, and its class map when it is categorical (None: continuous).

    Without ``target_type``, a target is categorical when its classes are known: given, or
    the legend of the recipe that made it (``recipe_classes``).
    """
    info = read_chip_info(chipset.first_chip())
    selected = tuple(target_bands or info.bands[:1])
    index = band_positions(info, selected, f"target {chipset.name}")
    if classes is None and target_type in (None, "categorical"):
        classes = preset_of(chipset.name, recipe_classes)
    if target_type is None:
        target_type = "categorical" if classes is not None else "continuous"
    if target_type not in {"categorical", "continuous"}:
        raise ConfigError(f"target type must be categorical or continuous: {target_type!r}")
    class_map = None
    if target_type == "categorical":
        if len(selected) != 1:
            raise ConfigError("a categorical target has one band; choose it with target_bands")
        class_map = ClassMap(class_values(classes, chipset, info, train_stats), info.nodata)
    spec = InputSpec(
        chipset.name, chipset.folder, chipset.ids, selected, index, info.nodata, None, None,
        None, use_pack,
    )  # fmt: skip
    return spec, class_map


def band_positions(info: ChipInfo, selected: Sequence[str], owner: str) -> tuple[int, ...]:
    """Where the selected bands are in the chip; an error naming the ones it lacks."""
    missing = [b for b in selected if b not in info.bands]
    if missing:
        raise ConfigError(
            f"unknown band(s) {', '.join(missing)} of {owner}; it has: {', '.join(info.bands)}"
        )
    return tuple(info.bands.index(b) for b in selected)


def moments(
    stats: DatasetStats, bands: Sequence[str], chipset: ChipSet
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the bands over the train split (a constant band's std is 1)."""
    if stats.chips == 0:
        raise ConfigError(f"statistics of {chipset.name} cover no chips; rerun stats")
    mean = np.array([stats.band(b).mean for b in bands], dtype=np.float32)
    std = np.array([stats.band(b).std for b in bands], dtype=np.float32)
    std[~(std > 0)] = 1.0  # a constant band: centre it, do not divide by zero
    return mean, std


# --- per chip ------------------------------------------------------------------------------


def read_chip_array(path: Path, out: np.ndarray | None = None) -> np.ndarray:
    """(bands, H, W) of a chip file: our chips' blocks decoded straight into the array
    (``dataset.chipread``; into ``out`` when it has the chip's shape and dtype, see
    ``read_blocks``), tifffile for other TIFF layouts, rasterio for anything else."""
    import tifffile

    from m3leo_tiles.dataset.chipread import read_blocks

    try:
        array = read_blocks(path, out)
        if array is not None:
            return array
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


def resize_into(out: torch.Tensor, tensor: torch.Tensor) -> None:
    """``resize(tensor, S)`` (bilinear) written into ``out`` (C, S, S): the same values.

    An upsampled sample is ~10 MB; writing it where it goes (aten's ``out=`` form of the
    very kernel ``F.interpolate`` calls) saves allocating and copying it once per sample.
    Shrinking (antialiased) and same-size inputs take ``resize`` and a copy.
    """
    size = out.shape[-1]
    if tensor.shape[-1] >= size or tensor.dtype != out.dtype or not out.is_contiguous():
        out.copy_(resize(tensor, size))
        return
    torch.ops.aten.upsample_bilinear2d.out(
        tensor[None], [size, size], False, None, None, out=out[None]
    )


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
