"""Recipes: what a dataset is, as data (YAML), validated on load.

OWNER NOTE (remove when done): the dataclass below is the agreed shape that the runner, io and
the sources use. Loading/validation (``load_recipe``, ``list_recipes``) is to be written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3leo_tiles.enums import ResamplingMethod


@dataclass(frozen=True)
class TimeWindow:
    """A named period inside a year (e.g. ``winter`` = Dec..Feb) that a reducer composites."""

    name: str
    start: str  # MM-DD
    end: str  # MM-DD, inclusive


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    resolution: float
    bands: tuple[str, ...]
    resampling: ResamplingMethod = ResamplingMethod.NEAREST
    dtype: str = "float32"
    nodata: float | None = None
    scale: float = 1.0
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    windows: tuple[TimeWindow, ...] = ()
    reducer: str | None = None
    default_year: int | None = None
    path: str | None = field(default=None, compare=False)

    def content(self) -> dict[str, Any]:
        """Everything that decides the pixels (not where the file was loaded from)."""
        return {
            "name": self.name,
            "source": self.source,
            "resolution": self.resolution,
            "bands": list(self.bands),
            "resampling": str(self.resampling),
            "dtype": self.dtype,
            "nodata": self.nodata,
            "scale": self.scale,
            "params": dict(self.params),
            "windows": [vars(w) for w in self.windows],
            "reducer": self.reducer,
        }

    @property
    def recipe_hash(self) -> str:
        """Short content hash: chips made by a changed recipe are not mistaken for done."""
        canonical = json.dumps(self.content(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def dataset_name(self, year: int | None) -> str:
        """Folder name of this recipe's dataset: ``<recipe>`` or ``<recipe>-<year>``."""
        return f"{self.name}-{year}" if year is not None else self.name


BUILTIN_RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
