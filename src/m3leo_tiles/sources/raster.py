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

Products stored as one file per (season, polarisation, metric...) in every cell (GSSIC) need
not list each layer: ``layer_grids`` generates them from ``axes`` (``{season}`` × ``{pol}`` ×
``{metric}`` substituted into ``path``; the band is ``band`` filled the same way, in lower
case). ``root: ...`` names the product's top folder or URL as ``{root}`` in paths, so that
``--source ROOT`` swaps a whole mirror in at once. ``band_metadata: {glob: {scale, offset,
units...}}`` gives bands their physical meaning without changing the stored values (``scale``
and ``offset`` become GDAL band scale/offset in the chip), ``band_resampling: {glob: method}``
overrides the recipe's resampling for some bands (nearest for a class mask beside bilinear
coherence), and ``remote: download`` copies remote files whole into the run's ``--cache``
(atomic, locked per file) instead of reading ranges through ``/vsicurl/``.

The cells one layer of a templated product needs are mosaicked first (an in-memory VRT over
the cells, which share one 3-arcsec or 1/N-degree grid) and warped once: a bilinear kernel
across a 1° line then sees both sides, exactly as ``reproject`` of the merged cells does,
where one warp per cell would leave a seam.

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

import fnmatch
import glob
import itertools
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import shapely
import shapely.affinity
from rasterio.enums import Resampling
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.core.enums import ResamplingMethod
from m3leo_tiles.core.errors import (
    RUN_STOPPERS,
    ConfigError,
    EmptyTileError,
    SourceError,
    TransientSourceError,
    first_line,
)
from m3leo_tiles.grid.tile import (
    GridTile,
    PixelGrid,
    lonlat_polygons,
)
from m3leo_tiles.recipes import DTYPES, Recipe
from m3leo_tiles.sources._gdal import (
    OPEN_DATASETS_PER_WORKER,
    TRANSIENT_MESSAGES,
    footprint_lonlat,
    forget_dataset,
    forget_datasets_using,
    is_remote,
    names_a_missing_file,
    open_dataset,
    read_problem,
    scratch_raster,
    with_copies_across_the_antimeridian,
)
from m3leo_tiles.sources.base import (
    Chip,
    RenderContext,
    SourceAdapter,
    SourceOption,
    TileInputs,
    refuse_unknown_params,
    register,
)

PARAMS = {"inputs", "layers", "band_indexes", "src_nodata", "footprint", "tile_degrees",
          "tile_corner", "years", "root", "layer_grids", "band_metadata", "band_resampling",
          "remote"}  # fmt: skip
RESERVED_FIELDS = {"lat", "lon", "NS", "EW", "year", "root"}
AXIS_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
REMOTE_READS = ("stream", "download")
GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
              "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
              "float64": "Float64"}  # fmt: skip
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
WORKER_BLOCK_CACHE_MB = 256  # GDAL's block cache per worker process (see setup_worker)

log = logging.getLogger("m3leo_tiles.fetch")


def grid_layers(grids: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Band name → [path] for every combination of each ``layer_grids`` entry's axes.

    ``{axis}`` fields are filled in ``path`` and ``band`` (the band in lower case, so GSSIC's
    ``COH12`` file is band ``winter_vv_coh12``); cell fields (``{lat:02d}``...), ``{year}``
    and ``{root}`` are left for later.
    """
    layers: dict[str, list[str]] = {}
    for grid in grids:
        names = list(grid["axes"])
        for combo in itertools.product(*(grid["axes"][name] for name in names)):
            values = dict(zip(names, map(str, combo), strict=True))
            band = _fill_axes(grid["band"], values).lower()
            layers[band] = [_fill_axes(grid["path"], values)]
    return layers


def _fill_axes(text: str, values: Mapping[str, str]) -> str:
    return AXIS_FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)


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
        refuse_unknown_params(params, PARAMS, where, cls.name)
        if "inputs" in params and ("layers" in params or "layer_grids" in params):
            raise ConfigError(f"{where}: key 'params': give either 'inputs' or 'layers', not both")
        cls._check_layer_params(params, where)
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
    def _check_layer_params(params: Mapping[str, Any], where: str) -> None:
        """``layer_grids``, ``root``, ``band_metadata``, ``band_resampling`` and ``remote``."""
        grids = params.get("layer_grids")
        if grids is not None:
            key = f"{where}: key 'params.layer_grids'"
            if not (isinstance(grids, list) and grids):
                raise ConfigError(f"{key}: a list of {{path, band, axes}} mappings")
            for grid in grids:
                if not (isinstance(grid, dict) and set(grid) == {"path", "band", "axes"}
                        and isinstance(grid["path"], str) and isinstance(grid["band"], str)
                        and isinstance(grid["axes"], dict) and grid["axes"]):  # fmt: skip
                    raise ConfigError(f"{key}: each entry needs exactly path, band and axes")
                for axis, values in grid["axes"].items():
                    if axis in RESERVED_FIELDS or not AXIS_FIELD.fullmatch(f"{{{axis}}}"):
                        raise ConfigError(f"{key}: {axis!r} cannot be an axis name")
                    if not (isinstance(values, list) and values
                            and all(isinstance(v, str | int) for v in values)):  # fmt: skip
                        raise ConfigError(f"{key}: axis {axis!r} needs a list of values")
                    if f"{{{axis}}}" not in grid["band"]:
                        raise ConfigError(f"{key}: band {grid['band']!r} must use {{{axis}}}")
            bands = [b for g in grids for b in grid_layers([g])]
            if len(set(bands)) != len(bands) or set(bands) & set(params.get("layers") or {}):
                raise ConfigError(f"{key}: the generated band names are not unique")
        if "root" in params and not isinstance(params["root"], str):
            raise ConfigError(f"{where}: key 'params.root': a folder or URL")
        if params.get("remote", "stream") not in REMOTE_READS:
            raise ConfigError(f"{where}: key 'params.remote': one of {', '.join(REMOTE_READS)}")
        metadata = params.get("band_metadata") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(tags, dict) and all(isinstance(v, str | int | float) for v in tags.values())
            for tags in metadata.values()
        ):
            raise ConfigError(
                f"{where}: key 'params.band_metadata': a mapping band glob → {{tag: value}}"
            )
        for tags in metadata.values():
            for number in ("scale", "offset"):
                value = tags.get(number, 0)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(
                        f"{where}: key 'params.band_metadata': {number} must be a number"
                    )
        methods = params.get("band_resampling") or {}
        allowed = {m.value for m in ResamplingMethod}
        if not isinstance(methods, dict) or not set(methods.values()) <= allowed:
            raise ConfigError(
                f"{where}: key 'params.band_resampling': a mapping band glob → one of "
                f"{', '.join(sorted(allowed))}"
            )

    @staticmethod
    def _spec_lists(params: Mapping[str, Any], where: str) -> list[list[str]]:
        raw = [params["inputs"]] if "inputs" in params else None
        if raw is None and "layers" not in params and "layer_grids" not in params:
            return []  # inputs come from --source at run time
        if raw is None:
            layers = params.get("layers", {})
            if not isinstance(layers, dict) or not (layers or "layer_grids" in params):
                raise ConfigError(f"{where}: key 'params.layers': a mapping band → input paths")
            raw = [*layers.values(), *grid_layers(params.get("layer_grids") or []).values()]
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
        if self._layered:
            layers = {name: _as_list(value) for name, value in params.get("layers", {}).items()}
            layers.update(grid_layers(params.get("layer_grids") or []))
        else:
            layers = {None: _as_list(params.get("inputs", []))}
        overrides = () if "root" in params else self.options.sources  # --source is the root
        if overrides and not self._layered:
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
        return [Layer(name, tuple(self._fill_year(self._fill_root(s)) for s in specs))
                for name, specs in layers.items()]  # fmt: skip

    @property
    def _layered(self) -> bool:
        return "layers" in self.recipe.params or "layer_grids" in self.recipe.params

    def root(self) -> str | None:
        """The product's top folder or URL: ``--source ROOT`` if given, else the recipe's.

        A relative ``--source`` folder, or one from an environment variable
        (``${M3LEO_GSSIC_ROOT:-...}``), is the user's (the current directory); a relative
        ``root:`` written in the recipe is the recipe file's, as for every other recipe path.
        """
        if "root" not in self.recipe.params:
            return None
        given = self.options.sources
        if len(given) > 1:
            raise ConfigError(
                f"recipe {self.recipe.name!r} takes one --source: the folder or URL of a "
                f"mirror laid out like the product (got {len(given)})"
            )
        if not given:
            root = str(self.recipe.params["root"])
            if "$" not in root:
                return root.rstrip("/")  # the recipe's own: relative to the recipe file
        root = os.path.expanduser(expand_vars(given[0] if given else root)).rstrip("/")
        if "://" in root or root.startswith("/vsi"):
            return root
        return os.path.abspath(root)

    def _fill_root(self, spec: str) -> str:
        root = self.root()
        return spec if root is None else spec.replace("{root}", root)

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
        root = self.root()
        if root is not None:
            folder = _gdal_path(root, self.recipe.folder)
            if not folder.startswith("/vsi") and not os.path.isdir(folder):
                raise ConfigError(
                    f"the mirror folder {folder} does not exist; give --source a folder laid "
                    "out like the product (or its URL)"
                )
        self._check_some_cell(layers)
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

    def single_epoch(self) -> str | None:
        recipe = self.recipe
        specs = [s for ss in self._spec_lists(recipe.params, recipe.name) for s in ss]
        if recipe.default_year is None and not any("{year}" in s for s in specs):
            return "no {year} in its inputs, no default_year"
        return None

    def _check_year(self) -> None:
        """A year the recipe cannot have is refused now, not after every tile failed."""
        year, recipe = self.options.year, self.recipe
        if year is None:
            return
        years = recipe.params.get("years")
        if years and year not in years:
            raise ConfigError(
                f"recipe {recipe.name!r} has the years {_year_list(years)}; "
                f"--year {year} is not one of them"
            )

    def _check_some_cell(self, layers: list[Layer]) -> None:
        """A local folder of a tiled product in which not one cell file exists is a wrong
        ``--source`` (an empty folder, one level off), not a dataset of empty tiles: refused
        now. One lazy glob per layer, stopped at the first file found."""
        templates = [path for layer in layers for spec in layer.specs
                     if TEMPLATE_FIELDS.search(path := _gdal_path(spec, self.recipe.folder))
                     and not path.startswith(("/vsi", "zip://", "tar://"))]  # fmt: skip
        for template in templates:
            if next(glob.iglob(TEMPLATE_FIELDS.sub("*", glob.escape(template))), None):
                return
        if templates:
            where = self.root() or os.path.dirname(templates[0].split("{")[0])
            raise ConfigError(
                f"not one file of the product is in {where} (looked for files laid out as "
                f"{templates[0]}); give --source a folder laid out like the product"
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

    def setup_worker(self) -> None:
        """Bound GDAL's block cache in each worker process (unless GDAL_CACHEMAX is set).

        GDAL keeps decoded blocks up to 5 % of the machine's memory per process; a run over
        many cells (GSSIC: 64 files a cell) fills that in every worker, so peak memory grew
        with the tile count (2.2× from 1,000 to 10,000 tiles). A chip needs a few MB of
        blocks and its neighbours reuse them, so a fixed cache keeps memory flat.
        """
        if "GDAL_CACHEMAX" in os.environ:
            return
        current = get_gdal_config("GDAL_CACHEMAX")
        if not isinstance(current, int) or current > WORKER_BLOCK_CACHE_MB * 2**20:
            set_gdal_config("GDAL_CACHEMAX", WORKER_BLOCK_CACHE_MB)

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
        # Neighbouring tiles name the same files (GSSIC: up to 256 a tile): one string object
        # per path and one tuple per input set, or the driver's plan grows by kilobytes a tile.
        strings: dict[str, str] = {}
        input_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
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
                    found[t].add(strings.setdefault(prefix + files[f], prefix + files[f]))
            for template in templates:
                for t, polygon in enumerate(polygons):
                    found[t].update(strings.setdefault(prefix + p, prefix + p)
                                    for p in self._cells(template, polygon.bounds))  # fmt: skip
        plan = {}
        for tile, inputs in zip(tiles, found, strict=True):
            key = tuple(sorted(inputs))
            plan[tile.identifier] = input_sets.setdefault(key, key)
        return plan

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
                if not -90 <= row * degrees < 90 or not self._in_footprint(lon, row * degrees):
                    continue
                names.append(TEMPLATE_FIELDS.sub(
                    lambda m, lat=lat, lon=lon: _cell_field(m, lat, lon), template))  # fmt: skip
        return names

    def _in_footprint(self, west: float, south: float) -> bool:
        """Whether a template cell can hold data: cells outside the declared ``footprint``
        (GSSIC: 79°S–82°N) are not asked for at all, so their tiles are ``no-source``."""
        footprint = self.recipe.params.get("footprint")
        if footprint is None:
            return True
        degrees = float(self.recipe.params["tile_degrees"])
        f_west, f_south, f_east, f_north = footprint
        if not (south < f_north and south + degrees > f_south):
            return False
        if f_east < f_west:  # across the antimeridian
            return west + degrees > f_west or west < f_east
        return west < f_east and west + degrees > f_west

    # --- rendering (worker) ----------------------------------------------------------------

    def render(self, tile: GridTile, inputs: tuple[str, ...]) -> Chip:
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
                mosaic = _mosaic(opened, recipe.params.get("src_nodata"), keep)
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
            stack = _stack(group, self.recipe.params.get("src_nodata"), keep)
            if stack is None or not _readable_and_clean(stack, grid):
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

    def render_many(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]], context: RenderContext
    ) -> Iterator[tuple[GridTile, Chip | Exception]]:
        """With ``remote: download``: the batch's files are fetched first, concurrently within
        the request budget, then its chips are made one after the other in this thread, so
        every file is opened once per batch rather than once per thread."""
        if not self._downloads():
            yield from super().render_many(items, context)
            return
        templated = "tile_degrees" in self.recipe.params
        remote = sorted({path for _, inputs in items for item in inputs
                         if is_remote(path := self._split(item)[1])})  # fmt: skip

        failed: dict[str, Exception] = {}

        def fetch(path: str) -> None:
            try:
                with context.slot():
                    self._download(path, templated)
            except RUN_STOPPERS:
                raise
            except Exception as error:  # its tiles fail with it, without trying it again
                failed[path] = error

        if remote:
            with ThreadPoolExecutor(min(context.threads, len(remote)),
                                    thread_name_prefix="m3leo-download") as pool:  # fmt: skip
                list(pool.map(fetch, remote))
        ready = []
        for tile, inputs in items:
            paths = (self._split(item)[1] for item in inputs)
            error = next((failed[path] for path in paths if path in failed), None)
            if error is None:
                ready.append((tile, inputs))
            else:
                yield tile, error
        sequential = RenderContext(threads=1, slot=context.slot, sleep=context.sleep)
        inputs_of = {tile.identifier: inputs for tile, inputs in ready}
        for tile, outcome in super().render_many(ready, sequential):
            if isinstance(outcome, Exception) and not isinstance(
                outcome, (TransientSourceError, EmptyTileError, *RUN_STOPPERS)
            ):
                outcome = self._heal(tile, inputs_of[tile.identifier], outcome, sequential)
            yield tile, outcome

    def _heal(self, tile: GridTile, inputs: tuple[str, ...], error: Exception,
              context: RenderContext) -> Chip | Exception:  # fmt: skip
        """A tile that failed on files of the download cache: the damaged ones (GDAL cannot
        read them whole) are dropped, downloaded again, and the tile is tried once more; a
        second failure names the file. A tile that failed for another reason keeps it."""
        from m3leo_tiles.sources.download import drop_cached

        damaged = self._damaged_downloads(inputs)
        if not damaged:
            return error
        for local, seen, problem in damaged:
            log.warning("cached %s cannot be read (%s): downloading it again", local.name, problem)
            drop_cached(local, seen)
            forget_datasets_using(str(local))
        try:
            return self.render_one(tile, inputs, context)
        except RUN_STOPPERS:
            raise
        except Exception as second:
            still = self._damaged_downloads(inputs)
            if not still:
                return second
            local, _, problem = still[0]
            return SourceError(f"cannot read cached {local.name} (downloaded again): {problem}")

    def _damaged_downloads(self, inputs: tuple[str, ...]
                           ) -> list[tuple[Path, os.stat_result, str]]:  # fmt: skip
        """(file, its stat, why) for each of the tile's cached downloads that GDAL cannot
        read whole; only called after a failure, as it decodes every file."""
        damaged = []
        for item in inputs:
            path = self._split(item)[1]
            if not is_remote(path):
                continue
            local = self._cache_path(path)
            try:
                seen = local.stat()
            except FileNotFoundError:
                continue
            problem = read_problem(str(local))
            if problem is not None:
                damaged.append((local, seen, problem))
        return damaged

    def _downloads(self) -> bool:
        return self.recipe.params.get("remote") == "download" and bool(self.options.cache_dir)

    def downloads(self) -> bool:
        return self._downloads() and bool(self.concurrency())

    def all_downloaded(self, planned: Iterable[tuple[str, ...]]) -> bool:
        remote = {path for inputs in planned for item in inputs
                  if is_remote(path := self._split(item)[1])}  # fmt: skip
        return all(self._cache_path(path).is_file() for path in remote)

    def _download(self, path: str, templated: bool) -> str | None:
        """A remote file copied whole into ``<cache>/<host>/<path>`` (atomic, locked per file,
        shared by every worker and run), or None for a missing cell of a tiled product."""
        from m3leo_tiles.sources.download import MissingRemoteFile, cached_download

        url = path.removeprefix("/vsicurl/")
        local = self._cache_path(path)
        try:
            return str(cached_download(url, local.parent, name=local.name))
        except MissingRemoteFile:
            if templated:
                return None
            raise SourceError(f"input {url} does not exist (HTTP 404)") from None

    def _cache_path(self, path: str) -> Path:
        """Where ``remote: download`` keeps a remote input: ``<cache>/raster/<scheme>/<host>/
        <path>`` (the URL's own layout, so that files of one name in two folders differ)."""
        scheme, _, rest = path.removeprefix("/vsicurl/").partition("://")
        folder, _, name = rest.partition("?")[0].rpartition("/")
        return Path(self.options.cache_dir or ".") / "raster" / scheme / folder / name

    def _split(self, item: str) -> tuple[str, str]:
        """``layer=path`` of a layered recipe, or ``("", path)``."""
        if not self._layered:
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
        raise ConfigError(f"cannot open source {path}: {first_line(error, path)}") from None


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


def _tag(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _label(path: str) -> str:
    return "mosaic of cells" if path.startswith("<") else path


def _mosaic(
    opened: Sequence[tuple[str, rasterio.DatasetReader]],
    src_nodata: float | None,
    keep: int = OPEN_DATASETS_PER_WORKER,
) -> rasterio.DatasetReader | None:
    """One VRT over cells that share a grid (same CRS, pixel size, bands and dtype, offsets
    a whole number of pixels), later cells over earlier ones; None when they do not, or when
    there is no nodata to leave the gaps between cells empty (then each cell is warped alone).
    """
    first = opened[0][1]
    nodata = src_nodata if src_nodata is not None else first.nodata
    xres, yres = first.transform.a, first.transform.e
    if nodata is None or first.transform.b or first.transform.d:
        return None
    for _, dataset in opened:
        same = (dataset.crs == first.crs and dataset.count == first.count
                and dataset.dtypes == first.dtypes and dataset.transform.a == xres
                and dataset.transform.e == yres and not dataset.transform.b
                and not dataset.transform.d)  # fmt: skip
        if not same:
            return None
    left = min(d.transform.c for _, d in opened)
    top = max(d.transform.f for _, d in opened)
    placed = []
    for _, dataset in opened:
        x = (dataset.transform.c - left) / xres
        y = (dataset.transform.f - top) / yres
        if abs(x - round(x)) > 1e-6 or abs(y - round(y)) > 1e-6:
            return None
        placed.append((dataset.name, dataset, round(x), round(y)))
    width = max(x + d.width for _, d, x, _ in placed)
    height = max(y + d.height for _, d, _, y in placed)
    gdal_type = GDAL_TYPES.get(first.dtypes[0])
    if gdal_type is None:
        return None
    bands = []
    for band in range(1, first.count + 1):
        sources = "".join(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{d.width}" ySize="{d.height}"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{d.width}" ySize="{d.height}"/>'
            f"<NODATA>{nodata!r}</NODATA></ComplexSource>"
            for path, d, x, y in placed
        )
        bands.append(f'<VRTRasterBand dataType="{gdal_type}" band="{band}">'
                     f"<NoDataValue>{nodata!r}</NoDataValue>{sources}</VRTRasterBand>")  # fmt: skip
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{escape(first.crs.to_wkt())}</SRS>"
        f"<GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {yres!r}</GeoTransform>"
        f"{''.join(bands)}</VRTDataset>"
    )
    return open_dataset(xml, keep)


def _layout(opened: Sequence[tuple[str, rasterio.DatasetReader]]) -> tuple | None:
    """Where a layer's cells lie: (crs, resolution, placements) when they share one grid
    (no rotation, one band, a nodata value), else None."""
    first = opened[0][1]
    xres, yres = first.transform.a, first.transform.e
    cells = []
    for _, dataset in opened:
        t = dataset.transform
        if (t.b or t.d or dataset.count != 1 or dataset.crs != first.crs or t.a != xres
                or t.e != yres or dataset.nodata is None):  # fmt: skip
            return None
        cells.append((t.c, t.f, dataset.width, dataset.height))
    return first.crs.to_wkt(), xres, yres, tuple(cells)


def _stack(
    group: Sequence[tuple[str, Sequence[tuple[str, rasterio.DatasetReader]]]],
    src_nodata: float | None,
    keep: int,
) -> rasterio.DatasetReader | None:
    """One VRT band per layer, each the mosaic of that layer's cells, when every layer has
    the same cells (GSSIC: one file per layer and cell) and one nodata; else None."""
    if len(group) < 2:
        return None
    layouts = {_layout(opened) for _, opened in group}
    nodatas = {src_nodata if src_nodata is not None else d.nodata
               for _, opened in group for _, d in opened}  # fmt: skip
    if len(layouts) != 1 or None in layouts or len(nodatas) != 1:
        return None
    (layout,), (nodata,) = layouts, nodatas
    wkt, xres, yres, cells = layout
    left, top = min(c[0] for c in cells), max(c[1] for c in cells)
    offsets = []
    for c_left, c_top, width, height in cells:
        x, y = (c_left - left) / xres, (c_top - top) / yres
        if abs(x - round(x)) > 1e-6 or abs(y - round(y)) > 1e-6:
            return None
        offsets.append((round(x), round(y), width, height))
    dtype = np.result_type(*[d.dtypes[0] for _, opened in group for _, d in opened]).name
    gdal_type = GDAL_TYPES.get(dtype)
    if gdal_type is None:
        return None
    bands = []
    for band, (_, opened) in enumerate(group, start=1):
        sources = "".join(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(d.name)}</SourceFilename>'
            f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/>'
            f"<NODATA>{nodata!r}</NODATA></ComplexSource>"
            for (_, d), (x, y, w, h) in zip(opened, offsets, strict=True)
        )
        bands.append(f'<VRTRasterBand dataType="{gdal_type}" band="{band}">'
                     f"<NoDataValue>{nodata!r}</NoDataValue>{sources}</VRTRasterBand>")  # fmt: skip
    width = max(x + w for x, _, w, _ in offsets)
    height = max(y + h for _, y, _, h in offsets)
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(wkt)}</SRS>'
        f"<GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {yres!r}</GeoTransform>"
        f"{''.join(bands)}</VRTDataset>"
    )
    return open_dataset(xml, keep)


def _readable_and_clean(stack: rasterio.DatasetReader, grid: PixelGrid) -> bool:
    """``_clean_window``, where a read that fails counts as not clean: GDAL's "Read failed" of
    a stack names no file, and the per-layer warps that follow name the one at fault."""
    try:
        return _clean_window(stack, grid)
    except (RasterioError, OSError):
        return False


def _clean_window(stack: rasterio.DatasetReader, grid: PixelGrid, margin: int = 2) -> bool:
    """Whether every band of ``stack`` is valid wherever a kernel for ``grid`` can reach: the
    grid's bounds in the stack's CRS, widened by ``margin`` pixels, inside the raster and
    free of nodata."""
    west, south, east, north = transform_bounds(grid.crs, stack.crs, *grid.bounds,
                                                densify_pts=21)  # fmt: skip
    inverse = ~stack.transform
    cols, rows = zip(*(inverse * (x, y) for x in (west, east) for y in (south, north)),
                     strict=True)  # fmt: skip
    col0, row0 = math.floor(min(cols)) - margin, math.floor(min(rows)) - margin
    col1, row1 = math.ceil(max(cols)) + margin, math.ceil(max(rows)) + margin
    if col0 < 0 or row0 < 0 or col1 > stack.width or row1 > stack.height:
        return False
    data = stack.read(window=Window(col0, row0, col1 - col0, row1 - row0))
    nodata = stack.nodata
    invalid = np.isnan(data) if nodata is not None and np.isnan(nodata) else data == nodata
    return not invalid.any()
