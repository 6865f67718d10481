"""The ``raster`` source: any raster GDAL can read, warped straight onto each tile's pixel grid.

Inputs are local files, globs, VRTs, ``zip://`` members, or http(s)/s3/gs URLs (read through
GDAL's ``/vsicurl/``, ``/vsis3/``, ``/vsigs/``), in any CRS. Two shapes of recipe ``params``:

* ``inputs: [paths...]`` — one mosaic; every file gives the same bands (``band_indexes``
  picks some of them). ``--source PATH`` on the command line replaces the list.
* ``layers: {band_name: [paths...]}`` — products stored one band per file (Sentinel-2 band
  files, a value and its uncertainty); each layer is its own mosaic and gives one band.
  ``--source NAME=PATH`` replaces one layer's inputs.

An input may be a *tile template* for global products split into lat/lon cells, e.g.
``.../{NS}{lat:02d}{EW}{lon:03d}_ESACCI-BIOMASS-...-{year}-fv5.0.tif`` with
``tile_degrees: 10`` (``tile_corner: upper-left`` or ``lower-left`` says which corner names a
cell). Planning then needs no request at all: a tile's inputs are the cells it touches, and a
cell the product does not have (open sea) counts as no data rather than as a failure.

Each tile's chip is made by one GDAL warp per input, straight onto the tile's own grid (no
intermediate mosaic): that is what makes chips of every dataset align exactly, and it is the
same call a user would make with ``rasterio.warp.reproject``.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.warp import reproject, transform
from shapely.geometry import Polygon, box

from m3leo_tiles.errors import ConfigError, SourceError, TransientSourceError
from m3leo_tiles.grid.tile import (
    TILE_SIZE_M,
    GridTile,
    PixelGrid,
    Tile,
    lonlat_polygons,
    pixels_per_side,
)
from m3leo_tiles.sources.base import Chip, SourceAdapter, TileInputs, register

PARAMS = {"inputs", "layers", "band_indexes", "src_nodata", "footprint", "tile_degrees",
          "tile_corner"}  # fmt: skip
TEMPLATE_FIELDS = re.compile(r"\{(lat|lon|NS|EW)(:[^}]*)?\}")
URL_PREFIXES = {"http://": "/vsicurl/http://", "https://": "/vsicurl/https://",
                "s3://": "/vsis3/", "gs://": "/vsigs/"}  # fmt: skip
LAYER_SEPARATOR = "="
# Network trouble worth retrying with backoff: DNS, timeouts, throttling, server errors, and
# GDAL's cached "does not exist" after such a failure (it is not a verdict on the file).
TRANSIENT_MESSAGES = (
    "CURL error", "HTTP response code: 429", "HTTP response code: 5", "does not exist",
)  # fmt: skip
OPEN_DATASETS_PER_WORKER = 32
BLOCK_MAX_PX = 2048  # a block warp is at most this many pixels a side
KERNEL_REACH_PX = 4  # source pixels a resampling kernel reaches beyond a pixel (lanczos: 3)
WORLD = (-180.0, -90.0, 180.0, 90.0)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _is_remote(path: str) -> bool:
    return path.startswith("/vsi") and not path.startswith("/vsizip//")


def _gdal_path(text: str, folder: Path) -> str:
    """A recipe's input string as a path GDAL opens; relative local paths are the recipe's."""
    text = os.path.expanduser(os.path.expandvars(text))
    for prefix, replacement in URL_PREFIXES.items():
        if text.startswith(prefix):
            return replacement + text[len(prefix) :]
    if text.startswith(("/vsi", "zip://", "tar://")):
        return text
    path = Path(text)
    return os.path.normpath(path if path.is_absolute() else folder / path)


@dataclass(frozen=True)
class Layer:
    """One mosaic: where its files are and which output bands it fills."""

    name: str | None  # None: the plain ``inputs`` mosaic, all output bands
    specs: tuple[str, ...]


# --- per-worker open datasets ---------------------------------------------------------------

_OPEN: OrderedDict[str, rasterio.DatasetReader] = OrderedDict()


def _open(path: str) -> rasterio.DatasetReader:
    """Keep recently used inputs open in this process: opening costs more than a small warp."""
    dataset = _OPEN.pop(path, None)
    if dataset is None:
        dataset = rasterio.open(path)
        while len(_OPEN) >= OPEN_DATASETS_PER_WORKER:
            _OPEN.popitem(last=False)[1].close()
    _OPEN[path] = dataset
    return dataset


def _forget(path: str) -> None:
    dataset = _OPEN.pop(path, None)
    if dataset is not None:
        dataset.close()


def footprint_lonlat(dataset: rasterio.DatasetReader, points_per_edge: int = 21) -> Polygon:
    """The raster's outline in lon/lat: its edges densified, so a UTM scene is not a bbox."""
    left, bottom, right, top = dataset.bounds
    steps = np.linspace(0.0, 1.0, points_per_edge)
    xs = np.concatenate([left + (right - left) * steps, np.full_like(steps, right),
                         right - (right - left) * steps, np.full_like(steps, left)])  # fmt: skip
    ys = np.concatenate([np.full_like(steps, bottom), bottom + (top - bottom) * steps,
                         np.full_like(steps, top), top - (top - bottom) * steps])  # fmt: skip
    if dataset.crs is None:
        raise ConfigError(f"{dataset.name} has no CRS; give it one (e.g. gdal_edit.py -a_srs)")
    lons, lats = transform(dataset.crs, "EPSG:4326", xs, ys)
    polygon = Polygon(zip(lons, lats, strict=True))
    return polygon if polygon.is_valid else polygon.buffer(0)


# --- the adapter ----------------------------------------------------------------------------


@register
class RasterSource(SourceAdapter):
    name = "raster"
    description = "any raster GDAL reads (files, globs, VRTs, URLs, tiled products)"

    # --- configuration ---------------------------------------------------------------------

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise ConfigError(
                f"{where}: key 'params.{unknown[0]}': unknown raster parameter; allowed: "
                f"{', '.join(sorted(PARAMS))}"
            )
        if "inputs" in params and "layers" in params:
            raise ConfigError(f"{where}: key 'params': give either 'inputs' or 'layers', not both")
        specs = cls._spec_lists(params, where)
        if any(TEMPLATE_FIELDS.search(s) for ss in specs for s in ss):
            degrees = params.get("tile_degrees")
            if not isinstance(degrees, int | float) or degrees <= 0 or 180 % degrees:
                raise ConfigError(
                    f"{where}: key 'params.tile_degrees': templated inputs need the cell size "
                    "in degrees (a divisor of 180, e.g. 1 or 10)"
                )
        if params.get("tile_corner", "upper-left") not in {"upper-left", "lower-left"}:
            raise ConfigError(f"{where}: key 'params.tile_corner': upper-left or lower-left")
        indexes = params.get("band_indexes")
        if indexes is not None and not (
            isinstance(indexes, list) and indexes and all(isinstance(i, int) and i >= 1
                                                          for i in indexes)
        ):  # fmt: skip
            raise ConfigError(f"{where}: key 'params.band_indexes': a list of 1-based integers")
        footprint = params.get("footprint")
        if footprint is not None and not (
            isinstance(footprint, list) and len(footprint) == 4
            and all(isinstance(v, int | float) for v in footprint)
        ):  # fmt: skip
            raise ConfigError(
                f"{where}: key 'params.footprint': [west, south, east, north] in degrees"
            )

    @staticmethod
    def _spec_lists(params: Mapping[str, Any], where: str) -> list[list[str]]:
        raw = [params["inputs"]] if "inputs" in params else None
        if raw is None and "layers" not in params:
            return []  # inputs come from --source at run time
        if raw is None:
            layers = params["layers"]
            if not isinstance(layers, dict) or not layers:
                raise ConfigError(f"{where}: key 'params.layers': a mapping band → input paths")
            raw = list(layers.values())
        lists = []
        for value in raw:
            if not (
                isinstance(value, str)
                or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
            ):
                raise ConfigError(
                    f"{where}: key 'params': inputs must be a path or a list of paths/URLs"
                )  # fmt: skip
            lists.append(_as_list(value))
        return lists

    def layers(self) -> list[Layer]:
        """The recipe's mosaics after ``--source`` overrides and ``{year}`` substitution."""
        params = self.recipe.params
        if "layers" in params:
            layers = {name: _as_list(value) for name, value in params["layers"].items()}
        else:
            layers = {None: _as_list(params.get("inputs", []))}
        overrides = self.options.sources
        if overrides and "layers" not in params:
            layers = {None: list(overrides)}
        elif overrides:
            replaced: dict[str, list[str]] = {}
            for item in overrides:
                name, separator, path = item.partition(LAYER_SEPARATOR)
                if not separator or name not in layers:
                    raise ConfigError(
                        f"--source {item!r}: this recipe has layers ({', '.join(layers)}); "
                        "give --source LAYER=PATH"
                    )
                replaced.setdefault(name, []).append(path)
            layers.update(replaced)
        return [Layer(name, tuple(self._fill_year(s) for s in specs))
                for name, specs in layers.items()]  # fmt: skip

    def _fill_year(self, spec: str) -> str:
        if "{year}" not in spec:
            return spec
        year = self.options.year or self.recipe.default_year
        if year is None:
            raise ConfigError(
                f"recipe {self.recipe.name!r} has inputs per year; give --year (e.g. --year 2020)"
            )
        return spec.replace("{year}", str(year))

    def check(self) -> None:
        layers = self.layers()
        names = [layer.name for layer in layers]
        if names != [None] and sorted(names) != sorted(self.recipe.bands):
            raise ConfigError(
                f"recipe {self.recipe.name!r}: layers ({', '.join(map(str, names))}) must be "
                f"the recipe's bands ({', '.join(self.recipe.bands)})"
            )
        for layer in layers:
            if not layer.specs:
                raise ConfigError(
                    f"recipe {self.recipe.name!r} names no input files; give --source PATH"
                )
            self._expand(layer)  # missing local files are a configuration error, now

    # --- planning (driver) -----------------------------------------------------------------

    def _expand(self, layer: Layer) -> list[str]:
        """Local globs expanded and checked; templates and remote paths kept as they are."""
        paths: list[str] = []
        for spec in layer.specs:
            path = _gdal_path(spec, self.recipe.folder)
            if TEMPLATE_FIELDS.search(path) or _is_remote(path) or path.startswith("zip://"):
                paths.append(path)
            elif glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise ConfigError(f"no source files match {path}; check the path or --source")
                paths.extend(found)
            elif not os.path.exists(path):
                raise ConfigError(f"source file {path} does not exist; check the path or --source")
            else:
                paths.append(path)
        return paths

    def _footprint(self, path: str) -> Polygon:
        if _is_remote(path):
            return box(*self.recipe.params.get("footprint", WORLD))
        try:
            with rasterio.open(path) as dataset:
                return footprint_lonlat(dataset)
        except RasterioIOError as error:
            raise ConfigError(f"cannot open source {path}: {error}") from None

    def plan(self, tiles: Sequence[GridTile]) -> TileInputs:
        polygons = lonlat_polygons(tiles)
        found: list[set[str]] = [set() for _ in tiles]
        for layer in self.layers():
            prefix = f"{layer.name}{LAYER_SEPARATOR}" if layer.name else ""
            paths = self._expand(layer)
            templates = [p for p in paths if TEMPLATE_FIELDS.search(p)]
            files = [p for p in paths if not TEMPLATE_FIELDS.search(p)]
            if files:
                tree = shapely.STRtree([self._footprint(p) for p in files])
                tile_index, file_index = tree.query(polygons, predicate="intersects")
                for t, f in zip(tile_index, file_index, strict=True):
                    found[t].add(prefix + files[f])
            for template in templates:
                for t, polygon in enumerate(polygons):
                    found[t].update(prefix + p for p in self._cells(template, polygon.bounds))
        return {tile.identifier: tuple(sorted(f)) for tile, f in zip(tiles, found, strict=True)}

    def _cells(self, template: str, bounds: tuple[float, float, float, float]) -> list[str]:
        """Names of the template's lat/lon cells that a lon/lat box touches."""
        degrees = float(self.recipe.params["tile_degrees"])
        upper = self.recipe.params.get("tile_corner", "upper-left") == "upper-left"
        west, south, east, north = bounds
        names = []
        for row in range(math.floor(south / degrees), math.floor(north / degrees) + 1):
            for col in range(math.floor(west / degrees), math.floor(east / degrees) + 1):
                lat = (row + 1) * degrees if upper else row * degrees
                lon = ((col * degrees + 180.0) % 360.0) - 180.0
                if not -90 <= row * degrees < 90:
                    continue
                names.append(TEMPLATE_FIELDS.sub(
                    lambda m, lat=lat, lon=lon: _cell_field(m, lat, lon), template))  # fmt: skip
        return names

    # --- rendering (worker) ----------------------------------------------------------------

    def render(self, tile: GridTile, inputs: tuple[str, ...]) -> Chip:
        data, fill, used = self._warp(tile.pixel_grid(self.recipe.resolution), inputs)
        return Chip(self._encode(data, fill), self.recipe.bands, {"inputs": ";".join(used)})

    def _fill(self) -> tuple[str, float]:
        work_dtype = self.recipe.dtype if self.recipe.scale == 1.0 else "float64"
        if self.recipe.nodata is not None:
            return work_dtype, self.recipe.nodata
        return work_dtype, np.nan if np.dtype(work_dtype).kind == "f" else 0

    def _warp(self, grid: PixelGrid, inputs: tuple[str, ...]) -> tuple[np.ndarray, float, list]:
        """Every input warped onto ``grid`` in turn (sorted by path): where inputs overlap, the
        last one's valid pixels win, as in a GDAL VRT mosaic."""
        recipe = self.recipe
        work_dtype, fill = self._fill()
        data = np.full((len(recipe.bands), grid.height, grid.width), fill, dtype=work_dtype)
        resampling = Resampling[recipe.resampling.value]
        templated = "tile_degrees" in recipe.params
        used = []
        for item in inputs:
            name, path = self._split(item)
            target = data[[recipe.bands.index(name)]] if name else data
            try:
                dataset = _open(path)
            except RasterioIOError as error:
                if templated and _names_a_missing_file(path, str(error)):
                    continue  # a cell the tiled product does not have (open sea): no data there
                if _is_remote(path) and any(text in str(error) for text in TRANSIENT_MESSAGES):
                    raise TransientSourceError(f"cannot reach {path}: {_short(error)}") from None
                raise SourceError(f"cannot open input {path}: {_short(error)}") from None
            indexes = [1] if name else self._band_indexes(dataset)
            if len(indexes) != target.shape[0]:
                raise SourceError(
                    f"{path} gives {len(indexes)} bands but the recipe names {target.shape[0]}"
                )
            try:
                reproject(
                    source=rasterio.band(dataset, indexes),
                    destination=target,
                    dst_transform=grid.transform,
                    dst_crs=grid.crs,
                    src_nodata=recipe.params.get("src_nodata", dataset.nodata),
                    dst_nodata=fill,
                    resampling=resampling,
                    init_dest_nodata=False,
                )
            except (RasterioError, OSError) as error:
                _forget(path)
                raise SourceError(f"cannot read input {path}: {_short(error)}") from None
            if name:
                data[recipe.bands.index(name)] = target[0]
            used.append(path)
        return data, fill, used

    def _split(self, item: str) -> tuple[str, str]:
        """``layer=path`` of a layered recipe, or ``("", path)``."""
        if "layers" not in self.recipe.params:
            return "", item
        name, _, path = item.partition(LAYER_SEPARATOR)
        return name, path

    # --- rendering a batch: one warp for a block of neighbouring tiles -----------------------

    def render_many(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]]
    ) -> Iterator[tuple[GridTile, Chip | Exception]]:
        """Neighbouring lattice tiles that lie well inside every input are warped together.

        Per-tile warps spend most of their time setting GDAL up, not moving pixels. Tiles of
        one zone share one pixel lattice, so one warp onto the block's bounding grid followed
        by slicing gives each tile its chip at a fraction of the cost. GDAL's result for a
        destination pixel depends on the pixel alone only away from the inputs' edges (near an
        edge the source window it reads is clipped differently), so a block is warped together
        only when it lies, with a margin of the resampling kernel, inside every input; any
        other tile is rendered on its own. ``test_render_many_equals_render`` checks equality.
        """
        blocks: dict[tuple, list[Tile]] = {}
        for tile, inputs in items:
            if isinstance(tile, Tile) and inputs:
                side = BLOCK_MAX_PX // pixels_per_side(self.recipe.resolution) or 1
                key = (inputs, tile.epsg, tile.row // side, tile.col // side)
                blocks.setdefault(key, []).append(tile)
            else:
                yield from super().render_many([(tile, inputs)])
        for (inputs, _, _, _), tiles in blocks.items():
            grid = _block_grid(tiles, self.recipe.resolution)
            if (
                len(tiles) < 2
                or grid.width * grid.height > 4 * _pixels(tiles, self.recipe)
                or not self._inside_inputs(grid, inputs)
            ):
                yield from super().render_many([(tile, inputs) for tile in tiles])
            else:
                yield from self._render_block(grid, tiles, inputs)

    def _render_block(
        self, grid: PixelGrid, tiles: list[Tile], inputs: tuple[str, ...]
    ) -> Iterator[tuple[GridTile, Chip | Exception]]:
        try:
            data, fill, used = self._warp(grid, inputs)
        except SourceError as error:
            for tile in tiles:
                yield tile, error
            return
        size = pixels_per_side(self.recipe.resolution)
        metadata = {"inputs": ";".join(used)}
        for tile in tiles:
            row = round((grid.transform.f - tile.bounds[3]) / TILE_SIZE_M) * size
            col = round((tile.bounds[0] - grid.transform.c) / TILE_SIZE_M) * size
            window = data[:, row : row + size, col : col + size].copy()
            yield tile, Chip(self._encode(window, fill), self.recipe.bands, metadata)

    def _inside_inputs(self, grid: PixelGrid, inputs: tuple[str, ...]) -> bool:
        """Does ``grid``, widened by the kernel's reach, lie inside every input's extent?"""
        left, bottom, right, top = grid.bounds
        steps = np.linspace(0.0, 1.0, 9)
        xs = np.concatenate([left + (right - left) * steps, np.full(9, right),
                             right - (right - left) * steps, np.full(9, left)])  # fmt: skip
        ys = np.concatenate([np.full(9, bottom), bottom + (top - bottom) * steps,
                             np.full(9, top), top - (top - bottom) * steps])  # fmt: skip
        for item in inputs:
            _, path = self._split(item)
            try:
                dataset = _open(path)
            except RasterioIOError:
                return False
            if dataset.crs is None:
                return False
            src_x, src_y = transform(grid.crs, dataset.crs, xs, ys)
            pixel_x, pixel_y = abs(dataset.transform.a), abs(dataset.transform.e)
            scale = max(1.0, self.recipe.resolution / max(pixel_x, 1e-12) / _metres(dataset))
            margin = (KERNEL_REACH_PX * scale + 2) * max(pixel_x, pixel_y)
            b = dataset.bounds
            inside_x = b.left + margin < min(src_x) and max(src_x) < b.right - margin
            inside_y = b.bottom + margin < min(src_y) and max(src_y) < b.top - margin
            if not (inside_x and inside_y):
                return False
        return True

    def _band_indexes(self, dataset: rasterio.DatasetReader) -> list[int]:
        indexes = self.recipe.params.get("band_indexes")
        return list(indexes) if indexes else list(range(1, dataset.count + 1))

    def _encode(self, data: np.ndarray, fill: float) -> np.ndarray:
        """Apply the recipe's scale and cast to its dtype, keeping nodata as nodata."""
        recipe = self.recipe
        if recipe.scale == 1.0:
            return data
        valid = ~np.isnan(data) if np.isnan(fill) else data != fill
        out_fill = recipe.nodata if recipe.nodata is not None else fill
        return np.where(valid, data * recipe.scale, out_fill).astype(recipe.dtype)


def _names_a_missing_file(path: str, message: str) -> bool:
    """Only a definite answer counts: a 404 from a server, ENOENT from a local disk.

    Anything vaguer (no network, a cached failed lookup) must not turn into "no data here",
    or an offline run would record real tiles as empty and never retry them.
    """
    if _is_remote(path):
        return "HTTP response code: 404" in message
    return "No such file" in message


def _block_grid(tiles: Sequence[Tile], resolution: float) -> PixelGrid:
    """The pixel grid of the tiles' bounding box: the same lattice as each tile's grid."""
    left = min(t.bounds[0] for t in tiles)
    top = max(t.bounds[3] for t in tiles)
    right = max(t.bounds[2] for t in tiles)
    bottom = min(t.bounds[1] for t in tiles)
    size = pixels_per_side(resolution)
    width = round((right - left) / TILE_SIZE_M) * size
    height = round((top - bottom) / TILE_SIZE_M) * size
    step = TILE_SIZE_M / size
    return PixelGrid(tiles[0].crs, Affine(step, 0.0, left, 0.0, -step, top), width, height)


def _pixels(tiles: Sequence[Tile], recipe) -> int:
    return len(tiles) * pixels_per_side(recipe.resolution) ** 2


def _metres(dataset: rasterio.DatasetReader) -> float:
    """Metres per CRS unit, roughly: degrees count as ~111 km (enough for a safety margin)."""
    return 111_000.0 if dataset.crs.is_geographic else 1.0


def _cell_field(match: re.Match[str], lat: float, lon: float) -> str:
    field, spec = match.group(1), match.group(2) or ""
    values = {"lat": abs(round(lat)), "lon": abs(round(lon)),
              "NS": "N" if lat >= 0 else "S", "EW": "E" if lon >= 0 else "W"}  # fmt: skip
    return format(values[field], spec[1:])


def _short(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
