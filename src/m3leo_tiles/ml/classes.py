"""Class maps of categorical targets: class values (10, 20, ... in the chips) to the class
indices a loss takes (0, 1, ...), and which legend a dataset's chips hold.

Which recipes hold a known legend is data (``RECIPE_CLASSES``), not code: a dataset folder
``esawc-2021`` was made by the recipe ``esawc``, whose chips hold ESA WorldCover values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import ChipInfo, ChipSet
from m3leo_tiles.tools.stats import DatasetStats

IGNORE_INDEX = -100
"""Class index of target pixels without a class (nodata): torch's CrossEntropyLoss default."""

ESA_WORLDCOVER_CLASSES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
CLASS_PRESETS: Mapping[str, tuple[int, ...]] = {"esa-worldcover": ESA_WORLDCOVER_CLASSES}
RECIPE_CLASSES: Mapping[str, str] = {"esawc": "esa-worldcover"}
"""Recipes whose chips hold class values of a known legend (the paper's ESA WorldCover)."""


def recipe_of(dataset: str) -> str:
    """``agb-2020`` → ``agb``: the recipe a dataset folder was made from."""
    head, _, tail = dataset.rpartition("-")
    return head if head and tail.isdigit() and len(tail) == 4 else dataset


def preset_of(dataset: str, recipe_classes: Mapping[str, str] = RECIPE_CLASSES) -> str | None:
    """The class preset of a dataset made by a recipe of a known legend, else None."""
    return recipe_classes.get(recipe_of(dataset))


def class_values(
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


class ClassMap:
    """Class values to indices: a table up to the largest value, and for 8/16-bit chips a
    table over every value the dtype can hold (one gather per chip; made once per dtype)."""

    def __init__(self, classes: Sequence[int], nodata: float | None) -> None:
        self.classes = tuple(classes)
        self.nodata = nodata
        self.lookup = np.full(max(self.classes) + 1, IGNORE_INDEX, dtype=np.int64)
        for position, value in enumerate(self.classes):
            self.lookup[value] = position
        self._full: dict[str, np.ndarray] = {}

    def full_table(self, dtype: np.dtype) -> np.ndarray:
        """Class index of every value of an unsigned 8/16-bit dtype (nodata: ignored)."""
        table = self._full.get(dtype.str)
        if table is None:
            table = np.full(1 << (8 * dtype.itemsize), IGNORE_INDEX, dtype=np.int64)
            known = min(table.size, self.lookup.size)
            table[:known] = self.lookup[:known]
            nodata = self.nodata
            if nodata is not None and float(nodata).is_integer() and 0 <= nodata < table.size:
                table[int(nodata)] = IGNORE_INDEX
            self._full[dtype.str] = table
        return table
