"""What a raster recipe may leave out (bands, dtype, nodata), read from its input files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from m3leo_tiles.core.enums import ResamplingMethod
from m3leo_tiles.core.errors import ConfigError, first_line
from m3leo_tiles.recipes import DTYPES, Recipe
from m3leo_tiles.sources.raster.paths import Layer


@dataclass(frozen=True)
class FileInfo:
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]


def file_info(path: str) -> FileInfo:
    try:
        with rasterio.open(path) as dataset:
            return FileInfo(dataset.count, dataset.dtypes[0], dataset.nodata,
                             tuple(dataset.descriptions))  # fmt: skip
    except RasterioIOError as error:
        raise ConfigError(f"cannot open source {path}: {first_line(error, path)}") from None


def fits(nodata: float | None, dtype: str) -> bool:
    kind = np.dtype(dtype)
    if nodata is None or kind.kind not in "iu":
        return True
    limits = np.iinfo(kind)
    return float(nodata).is_integer() and limits.min <= nodata <= limits.max


Sample = tuple["str | None", str, FileInfo]  # (layer, path, what the file holds)


def band_indexes_of(params: Mapping[str, Any], info: FileInfo) -> list[int]:
    """The file's bands a recipe reads: ``band_indexes``, else all of them."""
    indexes = params.get("band_indexes")
    return list(indexes) if indexes else list(range(1, info.count + 1))


def with_defaults(recipe: Recipe, layers: Sequence[Layer], samples: Sequence[Sample]) -> Recipe:
    """The recipe with the keys it left out filled from its input files.

    Band names: the layers' names, else the files' band descriptions (when every band
    has a distinct one), else ``b1``..``bn``. dtype and nodata: the files' own, when all
    the files checked agree (one file type); otherwise the recipe must say.
    """
    wanted = recipe.from_source
    if not samples:
        raise ConfigError(
            f"recipe {recipe.name!r} leaves out {', '.join(wanted)}, which are read from "
            "local input files, but its inputs are remote or tile templates; give "
            f"{', '.join(wanted)} in the recipe"
        )
    changes: dict[str, Any] = {"from_source": ()}
    first_layer, _, first = samples[0]
    indexes = band_indexes_of(recipe.params, first)
    if "bands" in wanted:
        if first_layer is not None:
            changes["bands"] = tuple(str(layer.name) for layer in layers)
        else:
            names = [first.descriptions[i - 1] if i <= first.count else None
                     for i in indexes]  # fmt: skip
            if all(names) and len(set(names)) == len(names):
                changes["bands"] = tuple(str(n) for n in names)
            else:
                changes["bands"] = tuple(f"b{i}" for i in indexes)
    if "dtype" in wanted and (
        recipe.resampling is ResamplingMethod.SUM or recipe.scale != 1.0
    ):  # sums and scaled values leave the files' range: the float32 of before
        wanted = tuple(k for k in wanted if k != "dtype")
    if "dtype" in wanted:
        found = sorted({info.dtype for _, _, info in samples})
        if len(found) != 1 or found[0] not in DTYPES:
            raise ConfigError(
                f"recipe {recipe.name!r}: its input files hold {', '.join(found)} values; "
                f"set dtype (one of {', '.join(DTYPES)})"
            )
        changes["dtype"] = found[0]
    if "nodata" in wanted:
        source_nodata = recipe.params.get("src_nodata")
        found_nodata = {source_nodata if source_nodata is not None else info.nodata
                        for _, _, info in samples}  # fmt: skip
        if len(found_nodata) > 1:
            raise ConfigError(
                f"recipe {recipe.name!r}: its input files have different nodata values "
                f"({', '.join(map(str, sorted(found_nodata, key=str)))}); set nodata"
            )
        (value,) = found_nodata
        changes["nodata"] = None if value is None else float(value)
    filled = replace(recipe, **changes)
    if not fits(filled.nodata, filled.dtype):
        if "dtype" in changes and "nodata" not in changes:
            # The recipe's own nodata is outside the files' type: keep float32, as before.
            return replace(filled, dtype=recipe.dtype)
        raise ConfigError(
            f"recipe {recipe.name!r}: nodata {filled.nodata:g} does not fit dtype "
            f"{filled.dtype}; set nodata and dtype in the recipe"
        )
    return filled
