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

Paths: relative ones are the recipe file's; ``~``, ``$VAR`` and ``${VAR:-default}`` are
expanded (the example recipes use ``${M3LEO_SHARED_DATA:-../../../shared/data}``). Remote
inputs are not touched while planning: ``footprint: [west, south, east, north]`` says where
they have data (default: the world). ``src_nodata`` overrides the files' own nodata.

Each tile's chip is made by one GDAL warp per input, straight onto the tile's own grid (no
intermediate mosaic): that is what makes chips of every dataset align exactly, and it is the
same call a user would make with ``rasterio.warp.reproject``.

Why not warp a block of neighbouring tiles once and slice it (measured: ~0.3 ms a chip instead
of ~0.7)? Because the slices are not the per-tile warps. ``reproject`` always uses GDAL's
approximate transformer (0.125 px; rasterio 1.4 ignores ``tolerance`` there), which
interpolates coordinates linearly along each destination row of the region it warps, and GDAL
sizes resampling kernels per region: on the real SRTM tile around Clipperton Island a 16×16
tile block differed from the per-tile warps for nearest, bilinear, cubic, average, mode and sum
(values off by up to 5 m for nearest). An exact transformer (``WarpedVRT(tolerance=1e-9)``)
makes blocks equal to tiles but costs ~0.5 ms a chip in PROJ calls, more than it saves, and a
per-tile ``WarpedVRT`` is not ``reproject`` either (it differs for bilinear downsampling and
near edges). So every chip is its own ``reproject``, and the speed comes from elsewhere
(datasets kept open, a cheap encoder, batching in the runner).

``sum`` resampling is for extensive quantities (m² built, people per pixel): a tile's total
must not depend on the chip's pixel size. GDAL's ``sum`` weights each source pixel by the
fraction of it inside the target pixel, which conserves totals both when target pixels are
larger (89.6 m from 20 m: measured exact) and, since GDAL 3.6 (OSGeo/gdal#6560), when they are
smaller or the CRS changes (10 m from 20 m; 89.6 m UTM from 100 m Mollweide). Older GDALs gave
a small target pixel the whole value of the source pixel under it, inflating totals by the
pixel-area ratio; rather than correct for an old library's per-pixel area ratio, ``check``
refuses ``sum`` there (the pinned rasterio wheels carry GDAL 3.10). The tests check
conservation in both directions on real and on Mollweide data.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
import shapely
import shapely.affinity
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.warp import reproject
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.enums import ResamplingMethod
from m3leo_tiles.errors import ConfigError, SourceError, TransientSourceError, first_line
from m3leo_tiles.grid.tile import (
    GridTile,
    PixelGrid,
    lonlat_polygons,
)
from m3leo_tiles.recipes import DTYPES, Recipe
from m3leo_tiles.sources._gdal import (
    TRANSIENT_MESSAGES,
    footprint_lonlat,
    forget_dataset,
    is_remote,
    names_a_missing_file,
    open_dataset,
    scratch_raster,
    with_copies_across_the_antimeridian,
)
from m3leo_tiles.sources.base import Chip, SourceAdapter, SourceOption, TileInputs, register

PARAMS = {"inputs", "layers", "band_indexes", "src_nodata", "footprint", "tile_degrees",
          "tile_corner", "years"}  # fmt: skip
FILES_CHECKED_PER_LAYER = 16  # opened up front to check bands and types against the recipe
TEMPLATE_FIELDS = re.compile(r"\{(lat|lon|NS|EW)(:[^}]*)?\}")
URL_PREFIXES = {"http://": "/vsicurl/http://", "https://": "/vsicurl/https://",
                "s3://": "/vsis3/", "gs://": "/vsigs/"}  # fmt: skip
LAYER_SEPARATOR = "="
DEFAULT_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")
# GDAL 3.6 (OSGeo/gdal#6560) made ``sum`` conserve totals when the target pixel is smaller
# than the source's or the CRS changes; before it a fine target pixel got the whole value of
# the source pixel under it, inflating totals by the area ratio.
SUM_CONSERVING_GDAL = (3, 6)
WORLD = (-180.0, -90.0, 180.0, 90.0)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def expand_vars(text: str) -> str:
    """``$VAR``/``${VAR}`` from the environment, and ``${VAR:-default}`` when VAR is unset.

    The default form lets a shared recipe point at a conventional place (the sample data
    beside the checkout) while any user redirects it with one environment variable.
    """
    text = DEFAULT_VAR.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), text)
    return os.path.expandvars(text)


def _gdal_path(text: str, folder: Path) -> str:
    """A recipe's input string as a path GDAL opens; relative local paths are the recipe's."""
    text = os.path.expanduser(expand_vars(text))
    for prefix, replacement in URL_PREFIXES.items():
        if text.startswith(prefix):
            return replacement + text[len(prefix) :]
    if text.startswith("/vsi"):
        return text
    if text.startswith(("zip://", "tar://")):  # rasterio's archive form: scheme://archive!member
        scheme, _, rest = text.partition("://")
        archive, separator, member = rest.partition("!")
        return f"{scheme}://{_gdal_path(archive, folder)}{separator}{member}"
    path = Path(text)
    return os.path.normpath(path if path.is_absolute() else folder / path)


def _from_command_line(path: str) -> str:
    """A ``--source`` path with a relative local path made absolute against the current folder.

    Paths typed on the command line are relative to where the command runs (as in every other
    tool); only paths written inside a recipe file are relative to that file. URLs and
    ``/vsi`` paths are kept; an archive member's archive (``zip://a.zip!b.tif``) is made
    absolute too.
    """
    return _gdal_path(path, Path.cwd())


@dataclass(frozen=True)
class Layer:
    """One mosaic: where its files are and which output bands it fills."""

    name: str | None  # None: the plain ``inputs`` mosaic, all output bands
    specs: tuple[str, ...]


# --- the adapter ----------------------------------------------------------------------------


@register
class RasterSource(SourceAdapter):
    name = "raster"
    description = "any raster GDAL reads (files, globs, VRTs, URLs, tiled products)"
    # A recipe may leave out bands, dtype and nodata: check() reads them from the input files.
    fills_recipe_defaults: ClassVar[bool] = True
    cli_options = (
        SourceOption(
            "http-concurrency",
            "raster: reads in flight across the cluster when inputs are URLs (http, s3, gs); "
            "each worker spreads its tiles over threads within this budget",
            env="M3LEO_HTTP_CONCURRENCY",
            metavar="N",
            default="16",
        ),
    )

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
        src_nodata = params.get("src_nodata")
        if src_nodata is not None and (
            isinstance(src_nodata, bool) or not isinstance(src_nodata, int | float)
        ):
            raise ConfigError(f"{where}: key 'params.src_nodata': a number (the inputs' nodata)")
        years = params.get("years")
        if years is not None and not (
            isinstance(years, list) and years
            and all(isinstance(y, int) and not isinstance(y, bool) for y in years)
        ):  # fmt: skip
            raise ConfigError(f"{where}: key 'params.years': the list of years the inputs have")
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
            layers = {None: [_from_command_line(item) for item in overrides]}
        elif overrides:
            replaced: dict[str, list[str]] = {}
            for item in overrides:
                name, separator, path = item.partition(LAYER_SEPARATOR)
                if not separator or name not in layers:
                    raise ConfigError(
                        f"--source {item!r}: this recipe has layers ({', '.join(layers)}); "
                        "give --source LAYER=PATH"
                    )
                replaced.setdefault(name, []).append(_from_command_line(path))
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
        if self.recipe.resampling is ResamplingMethod.SUM and gdal_version() < SUM_CONSERVING_GDAL:
            raise ConfigError(
                f"recipe {self.recipe.name!r} uses sum resampling, which conserves totals only "
                f"from GDAL 3.6; this rasterio has GDAL {rasterio.__gdal_version__}: upgrade it"
            )
        self._check_year()
        layers = self.layers()
        for layer in layers:
            if not layer.specs:
                raise ConfigError(
                    f"recipe {self.recipe.name!r} names no input files; give --source PATH"
                )
        samples = self._samples(layers)
        if self.recipe.from_source:
            self.recipe = self._with_defaults(layers, samples)
        self._check_bands(samples)
        names = [layer.name for layer in layers]
        if names != [None] and sorted(names) != sorted(self.recipe.bands):
            raise ConfigError(
                f"recipe {self.recipe.name!r}: layers ({', '.join(map(str, names))}) must be "
                f"the recipe's bands ({', '.join(self.recipe.bands)})"
            )
        for layer in layers:
            self._expand(layer)  # missing local files are a configuration error, now

    # --- what can be checked before any work ------------------------------------------------

    def _check_year(self) -> None:
        """A year the recipe cannot have is refused now, not after every tile failed."""
        year, recipe = self.options.year, self.recipe
        if year is None:
            return
        specs = [s for ss in self._spec_lists(recipe.params, recipe.name) for s in ss]
        if recipe.default_year is None and not any("{year}" in s for s in specs):
            raise ConfigError(
                f"recipe {recipe.name!r} does not depend on the year (no {{year}} in its inputs, "
                f"no default_year), so --year {year} would only make a second copy of the same "
                f"dataset ({recipe.dataset_name(year)}); leave out --year"
            )
        years = recipe.params.get("years")
        if years and year not in years:
            raise ConfigError(
                f"recipe {recipe.name!r} has the years {_year_list(years)}; "
                f"--year {year} is not one of them"
            )

    def _samples(self, layers: list[Layer]) -> list[tuple[str | None, str, _FileInfo]]:
        """(layer, path, what the file holds) for the first local files of each layer."""
        samples = []
        for layer in layers:
            local = [p for p in self._expand(layer)
                     if not TEMPLATE_FIELDS.search(p) and not is_remote(p)]  # fmt: skip
            for path in local[:FILES_CHECKED_PER_LAYER]:
                samples.append((layer.name, path, _file_info(path)))
        return samples

    def _with_defaults(self, layers: list[Layer], samples: list) -> Recipe:
        """The recipe with the keys it left out filled from its input files.

        Band names: the layers' names, else the files' band descriptions (when every band
        has a distinct one), else ``b1``..``bn``. dtype and nodata: the files' own, when all
        the files checked agree (one file type); otherwise the recipe must say.
        """
        recipe = self.recipe
        wanted = recipe.from_source
        if not samples:
            raise ConfigError(
                f"recipe {recipe.name!r} leaves out {', '.join(wanted)}, which are read from "
                "local input files, but its inputs are remote or tile templates; give "
                f"{', '.join(wanted)} in the recipe"
            )
        changes: dict[str, Any] = {"from_source": ()}
        first_layer, _, first = samples[0]
        indexes = self._band_indexes_of(first)
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
        if not _fits(filled.nodata, filled.dtype):
            if "dtype" in changes and "nodata" not in changes:
                # The recipe's own nodata is outside the files' type: keep float32, as before.
                return replace(filled, dtype=recipe.dtype)
            raise ConfigError(
                f"recipe {recipe.name!r}: nodata {filled.nodata:g} does not fit dtype "
                f"{filled.dtype}; set nodata and dtype in the recipe"
            )
        return filled

    def _band_indexes_of(self, info: _FileInfo) -> list[int]:
        indexes = self.recipe.params.get("band_indexes")
        return list(indexes) if indexes else list(range(1, info.count + 1))

    def _check_bands(self, samples: list) -> None:
        """Band counts and ``band_indexes`` against the files, before any tile is tried."""
        recipe = self.recipe
        if recipe.bands_per_tile:
            return
        for layer, path, info in samples:
            if layer is not None:
                continue  # a layer reads band 1 of each of its files
            indexes = self._band_indexes_of(info)
            beyond = [i for i in indexes if i > info.count]
            if beyond:
                raise ConfigError(
                    f"recipe {recipe.name!r}: band_indexes {indexes} but {path} has "
                    f"{info.count} band{'s' if info.count != 1 else ''}; fix band_indexes"
                )
            if len(indexes) != len(recipe.bands):
                raise ConfigError(
                    f"recipe {recipe.name!r} names {len(recipe.bands)} bands "
                    f"({', '.join(recipe.bands)}) but {path} gives {len(indexes)}; list "
                    f"{len(indexes)} names in bands, or pick bands with band_indexes"
                )

    def concurrency(self) -> int | None:
        """Remote inputs wait on the network, not the CPU: read them concurrently, within a
        budget; local files are CPU-bound and read one tile at a time per worker."""
        remote = any(is_remote(_gdal_path(spec, self.recipe.folder))
                     for layer in self.layers() for spec in layer.specs)  # fmt: skip
        if not remote:
            return None
        value = self.option("http-concurrency")
        try:
            count = int(value)
        except (TypeError, ValueError):
            count = 0
        if count < 1:
            raise ConfigError(f"--http-concurrency: a whole number of at least 1, not {value}")
        return count

    # --- planning (driver) -----------------------------------------------------------------

    def _expand(self, layer: Layer) -> list[str]:
        """Local globs expanded and checked; templates and remote paths kept as they are."""
        paths: list[str] = []
        for spec in layer.specs:
            path = _gdal_path(spec, self.recipe.folder)
            if path.startswith(("zip://", "tar://")) and not TEMPLATE_FIELDS.search(path):
                archive = path.partition("://")[2].partition("!")[0]
                if not os.path.exists(archive):
                    raise ConfigError(f"archive {archive} does not exist; check the path")
                paths.append(path)
            elif TEMPLATE_FIELDS.search(path) or path.startswith("/vsi"):
                paths.append(path)  # remote, or an archive member: opened at plan time if local
            elif glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise ConfigError(
                        f"no source files match {path}{_where_from(spec)}; check the path or "
                        "--source"
                    )
                paths.extend(found)
            elif not os.path.exists(path):
                raise ConfigError(
                    f"source file {path} does not exist{_where_from(spec)}; check the path or "
                    "--source"
                )
            else:
                paths.append(path)
        return paths

    def _footprint(self, path: str) -> BaseGeometry:
        if is_remote(path):
            west, south, east, north = self.recipe.params.get("footprint", WORLD)
            if east < west:  # declared across the antimeridian, e.g. [170, -20, -170, 0]
                east += 360.0
            declared = box(west, south, east, north)
            return with_copies_across_the_antimeridian(declared)
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
        scratch = scratch_raster(len(recipe.bands), grid, work_dtype)
        scratch.reset(grid, fill)
        resampling = Resampling[recipe.resampling.value]
        templated = "tile_degrees" in recipe.params
        used = []
        for item in inputs:
            name, path = self._split(item)
            targets = [recipe.bands.index(name) + 1] if name else scratch.all_bands
            try:
                dataset = open_dataset(path)
            except RasterioIOError as error:
                if templated and names_a_missing_file(path, str(error)):
                    continue  # a cell the tiled product does not have (open sea): no data there
                if is_remote(path) and any(text in str(error) for text in TRANSIENT_MESSAGES):
                    raise TransientSourceError(_network_reason(path, error)) from None
                raise SourceError(f"cannot open input {path}: {first_line(error)}") from None
            indexes = [1] if name else self._band_indexes(dataset)
            if len(indexes) != len(targets):
                raise SourceError(
                    f"{path} gives {len(indexes)} bands but the recipe names {len(targets)}"
                )
            try:
                reproject(
                    source=rasterio.band(dataset, indexes),
                    destination=scratch.band(targets),
                    src_nodata=recipe.params.get("src_nodata", dataset.nodata),
                    dst_nodata=fill,
                    resampling=resampling,
                    init_dest_nodata=False,
                )
            except (RasterioError, OSError) as error:
                forget_dataset(path)
                raise SourceError(f"cannot read input {path}: {first_line(error)}") from None
            used.append(path)
        return scratch.read(), fill, used

    def _split(self, item: str) -> tuple[str, str]:
        """``layer=path`` of a layered recipe, or ``("", path)``."""
        if "layers" not in self.recipe.params:
            return "", item
        name, _, path = item.partition(LAYER_SEPARATOR)
        return name, path

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


@dataclass(frozen=True)
class _FileInfo:
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]


def _file_info(path: str) -> _FileInfo:
    try:
        with rasterio.open(path) as dataset:
            return _FileInfo(dataset.count, dataset.dtypes[0], dataset.nodata,
                             tuple(dataset.descriptions))  # fmt: skip
    except RasterioIOError as error:
        raise ConfigError(f"cannot open source {path}: {first_line(error)}") from None


def _fits(nodata: float | None, dtype: str) -> bool:
    kind = np.dtype(dtype)
    if nodata is None or kind.kind not in "iu":
        return True
    limits = np.iinfo(kind)
    return float(nodata).is_integer() and limits.min <= nodata <= limits.max


def _year_list(years: Sequence[int]) -> str:
    """[2010, 2015, 2016, 2017] -> '2010, 2015-2017'."""
    ordered = sorted(set(years))
    runs: list[list[int]] = []
    for year in ordered:
        if runs and year == runs[-1][-1] + 1:
            runs[-1].append(year)
        else:
            runs.append([year])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def gdal_version() -> tuple[int, int]:
    major, minor = rasterio.__gdal_version__.split(".")[:2]
    return int(major), int(minor)


def _cell_field(match: re.Match[str], lat: float, lon: float) -> str:
    field, spec = match.group(1), match.group(2) or ""
    values = {"lat": abs(round(lat)), "lon": abs(round(lon)),
              "NS": "N" if lat >= 0 else "S", "EW": "E" if lon >= 0 else "W"}  # fmt: skip
    return format(values[field], spec[1:])


def _where_from(spec: str) -> str:
    """Why a path that uses ``${VAR:-default}`` was looked for where it was: the example
    recipes find the sample data beside a checkout; an installed package needs the variable."""
    unset = [m.group(1) for m in DEFAULT_VAR.finditer(spec) if not os.environ.get(m.group(1))]
    if not unset:
        return ""
    name = unset[0]
    return (
        f" (looked there because ${name} is not set; set {name} to the folder that holds "
        f"this data, e.g. `export {name}=/path/to/shared/data`)"
    )


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
