"""Warping a raster tile: every input of the tile straight onto its pixel grid (the package
docstring says why one ``reproject`` per chip), templated cells mosaicked first."""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.warp import reproject

from m3leo_tiles.core.errors import SourceError, TransientSourceError, first_line
from m3leo_tiles.grid.tile import GridTile, PixelGrid
from m3leo_tiles.sources._gdal import (
    OPEN_DATASETS_PER_WORKER,
    TRANSIENT_MESSAGES,
    forget_dataset,
    is_remote,
    names_a_missing_file,
    open_dataset,
    scratch_raster,
)
from m3leo_tiles.sources.base import Chip
from m3leo_tiles.sources.raster import vrt


class Warping:
    """The raster source's rendering (a mixin of ``RasterSource``, which gives ``recipe``,
    ``_split`` and, for ``remote: download``, ``_downloads`` and ``_download``)."""

    def render_tile(self, tile: GridTile, inputs: tuple[str, ...]) -> Chip:
        data, fill, used = self._warp(tile.pixel_grid(self.recipe.resolution), inputs)
        chip = Chip(self._encode(data, fill), self.recipe.bands, {"inputs": ";".join(used)})
        tags = self.band_metadata()
        return replace(chip, band_metadata=tags) if tags else chip

    def band_metadata(self) -> tuple[Mapping[str, str], ...]:
        """Per band tags from ``band_metadata`` globs (later globs override earlier keys)."""
        globs = self.recipe.params.get("band_metadata") or {}
        tags: list[dict[str, str]] = []
        for band in self.recipe.bands:
            merged: dict[str, str] = {}
            for pattern, values in globs.items():
                if fnmatch.fnmatchcase(band, pattern):
                    merged.update({key: _tag(value) for key, value in values.items()})
            tags.append(merged)
        return tuple(tags) if any(tags) else ()

    def _resampling(self, band: str) -> Resampling:
        method = self.recipe.resampling.value
        for pattern, value in (self.recipe.params.get("band_resampling") or {}).items():
            if band and fnmatch.fnmatchcase(band, pattern):
                method = value
        return Resampling[method]

    def _fill(self) -> tuple[str, float]:
        work_dtype = self.recipe.dtype if self.recipe.scale == 1.0 else "float64"
        if self.recipe.nodata is not None:
            return work_dtype, self.recipe.nodata
        return work_dtype, np.nan if np.dtype(work_dtype).kind == "f" else 0

    def _warp(self, grid: PixelGrid, inputs: tuple[str, ...]) -> tuple[np.ndarray, float, list]:
        """Every layer's inputs warped onto ``grid`` in turn (sorted by path): where inputs
        overlap, the last one's valid pixels win, as in a GDAL VRT mosaic. The cells of a
        templated product are mosaicked first and warped once (see the module docstring)."""
        recipe = self.recipe
        work_dtype, fill = self._fill()
        scratch = scratch_raster(len(recipe.bands), grid, work_dtype)
        scratch.reset(grid, fill)
        templated = "tile_degrees" in recipe.params
        keep = 2 * len(inputs) + 2  # this tile's files and mosaics stay open for the next
        used: list[str] = []
        layers = []
        for name, items in itertools.groupby(map(self._split, inputs), key=lambda x: x[0]):
            found = (self._open_input(path, templated, keep) for _, path in items)
            layers.append((name, [item for item in found if item is not None]))
        if templated and self._layered:
            layers = self._warp_stacked(layers, grid, scratch, fill, keep, used)
        for name, opened in layers:
            targets = [recipe.bands.index(name) + 1] if name else scratch.all_bands
            if templated and len(opened) > 1:
                mosaic = vrt.mosaic(opened, recipe.params.get("src_nodata"), keep)
                if mosaic is not None:
                    used.extend(path for path, _ in opened)
                    opened = [(mosaic.name, mosaic)]
            for path, dataset in opened:
                indexes = [1] if name else self._band_indexes(dataset)
                if len(indexes) != len(targets):
                    raise SourceError(
                        f"{path} gives {len(indexes)} bands but the recipe names {len(targets)}"
                    )
                self._reproject(dataset, indexes, scratch, targets, fill, self._resampling(name),
                                path)  # fmt: skip
                if not path.startswith("<"):
                    used.append(path)
        return scratch.read(), fill, used

    def _reproject(
        self,
        dataset: rasterio.DatasetReader,
        indexes: list[int],
        scratch: Any,
        targets: list[int],
        fill: float,
        resampling: Resampling,
        label: str,
    ) -> None:
        try:
            reproject(
                source=rasterio.band(dataset, indexes),
                destination=scratch.band(targets),
                src_nodata=self.recipe.params.get("src_nodata", dataset.nodata),
                dst_nodata=fill,
                resampling=resampling,
                init_dest_nodata=False,
            )
        except (RasterioError, OSError) as error:
            forget_dataset(dataset.name)
            raise SourceError(f"cannot read input {_label(label)}: {first_line(error)}"
                              ) from None  # fmt: skip

    def _warp_stacked(self, layers: list, grid: PixelGrid, scratch: Any, fill: float,
                      keep: int, used: list[str]) -> list:  # fmt: skip
        """Layers on one cell layout warped in ONE multi-band ``reproject`` where that equals
        warping each alone; returns the layers still to be warped one by one.

        GDAL computes the coordinates and kernel weights once for all bands of a warp, so 64
        GSSIC layers cost about a fifth of 64 warps. The pixels are the same as per-layer
        warps only where no kernel meets nodata or the raster's edge (GDAL's multi-band warp
        treats validity differently there: measured, a few values per thousand differ), so
        the tile's source window is read first and, if any layer has nodata in it or the
        window leaves the cells, the tile falls back to one warp per layer; so does a stack
        whose read fails, so that the error names the file.
        """
        groups: dict[Resampling, list] = {}
        for name, opened in layers:
            if opened:
                groups.setdefault(self._resampling(name), []).append((name, opened))
        remaining = []
        for resampling, group in groups.items():
            stack = vrt.stack(group, self.recipe.params.get("src_nodata"), keep)
            if stack is None or not vrt.readable_and_clean(stack, grid):
                remaining.extend(group)
                continue
            targets = [self.recipe.bands.index(name) + 1 for name, _ in group]
            indexes = list(range(1, len(group) + 1))
            try:
                self._reproject(stack, indexes, scratch, targets, fill, resampling, stack.name)
            except SourceError:  # GDAL's "Read failed" names no file: the layers warped one
                scratch.fill(targets, fill)  # by one name the one that cannot be read
                remaining.extend(group)
                continue
            used.extend(label for _, opened in group for label, _ in opened)
        return remaining

    def _open_input(
        self, path: str, templated: bool, keep: int = OPEN_DATASETS_PER_WORKER
    ) -> tuple[str, rasterio.DatasetReader] | None:
        """The input opened (downloaded first with ``remote: download``), or None when it is a
        cell the tiled product does not have (open sea): no data there, not a failure."""
        if is_remote(path) and self._downloads():
            local = self._download(path, templated)
            if local is None:
                return None
            try:  # named by its URL in the chip's inputs; the VRT reads the dataset's file
                return path.removeprefix("/vsicurl/"), open_dataset(local, keep)
            except RasterioIOError as error:
                raise SourceError(f"cannot open {local}: {first_line(error, str(local))}") from None
        try:
            return path, open_dataset(path, keep)
        except RasterioIOError as error:
            if templated and names_a_missing_file(path, str(error)):
                return None
            if is_remote(path) and any(text in str(error) for text in TRANSIENT_MESSAGES):
                raise TransientSourceError(_network_reason(path, error)) from None
            raise SourceError(f"cannot open input {path}: {first_line(error, path)}") from None

    def _band_indexes(self, dataset: rasterio.DatasetReader) -> list[int]:
        indexes = self.recipe.params.get("band_indexes")
        return list(indexes) if indexes else list(range(1, dataset.count + 1))

    def _encode(self, data: np.ndarray, fill: float) -> np.ndarray:
        """Apply the recipe's scale and cast to its dtype, keeping nodata as nodata.

        Scaled values are rounded (not truncated) and clipped into an integer dtype's range,
        so that 0.9999 × 10000 stays 9999 and a negative value never wraps to 65535.
        """
        recipe = self.recipe
        if recipe.scale == 1.0:
            return data
        valid = ~np.isnan(data) if np.isnan(fill) else data != fill
        scaled = data * recipe.scale
        if np.dtype(recipe.dtype).kind in "iu":
            limits = np.iinfo(recipe.dtype)
            scaled = np.clip(np.rint(np.nan_to_num(scaled)), limits.min, limits.max)
        out_fill = recipe.nodata if recipe.nodata is not None else fill
        return np.where(valid, scaled, out_fill).astype(recipe.dtype)


def _network_reason(path: str, error: BaseException) -> str:
    """What a user reads when a remote input cannot be reached: the host and the network,
    not GDAL's "does not exist in the file system" (which it says for any failed request)."""
    from urllib.parse import urlsplit

    at = path.find("://")
    start = path.rfind("/", 0, at) + 1 if at > 0 else 0
    url = path[start:] if at > 0 else path
    host = urlsplit(url).hostname or url
    text = first_line(error)
    detail = "" if "does not exist in the file system" in text else f" ({text})"
    return f"network: could not reach {host}{detail}; check the connection and rerun"


def _tag(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _label(path: str) -> str:
    return "mosaic of cells" if path.startswith("<") else path
