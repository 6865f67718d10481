"""The ``raster`` source: its recipe checked against the files, and the plan (see the package
doc); rendering is in ``warp``, downloads in ``remote``."""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import rasterio
import shapely
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioIOError
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.core.enums import ResamplingMethod
from m3leo_tiles.core.errors import (
    ConfigError,
)
from m3leo_tiles.grid.tile import GridTile, lonlat_polygons
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.sources._gdal import (
    footprint_lonlat,
    is_remote,
    with_copies_across_the_antimeridian,
)
from m3leo_tiles.sources.base import (
    PerTileSource,
    SourceOption,
    TileInputs,
    identity_digest,
    whole_number,
)
from m3leo_tiles.sources.raster.defaults import (
    Sample,
    band_indexes_of,
    file_info,
    with_defaults,
)
from m3leo_tiles.sources.raster.params import check_params, spec_lists
from m3leo_tiles.sources.raster.paths import (
    LAYER_SEPARATOR,
    TEMPLATE_FIELDS,
    Layer,
    as_list,
    cell_field,
    expand_vars,
    from_command_line,
    gdal_path,
    grid_layers,
    local_file,
    where_from,
)
from m3leo_tiles.sources.raster.remote import RemoteInputs
from m3leo_tiles.sources.raster.warp import Warping

FILES_CHECKED_PER_LAYER = 16  # opened up front to check bands and types against the recipe
# GDAL 3.6 (OSGeo/gdal#6560) made ``sum`` conserve totals when the target pixel is smaller
# than the source's or the CRS changes; before it a fine target pixel got the whole value of
# the source pixel under it, inflating totals by the area ratio.
SUM_CONSERVING_GDAL = (3, 6)
WORLD = (-180.0, -90.0, 180.0, 90.0)
WORKER_BLOCK_CACHE_MB = 256  # GDAL's block cache per worker process (see setup_worker)

log = logging.getLogger("m3leo_tiles.fetch")


class RasterSource(RemoteInputs, Warping, PerTileSource):
    name = "raster"
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
        check_params(params, where, cls.name)

    def layers(self) -> list[Layer]:
        """The recipe's mosaics after ``--source`` overrides and ``{year}`` substitution."""
        params = self.recipe.params
        if self._layered:
            layers = {name: as_list(value) for name, value in params.get("layers", {}).items()}
            layers.update(grid_layers(params.get("layer_grids") or []))
        else:
            layers = {None: as_list(params.get("inputs", []))}
        overrides = () if "root" in params else self.options.sources  # --source is the root
        if overrides and not self._layered:
            layers = {None: [from_command_line(item) for item in overrides]}
        elif overrides:
            replaced: dict[str, list[str]] = {}
            for item in overrides:
                name, separator, path = item.partition(LAYER_SEPARATOR)
                if not separator or name not in layers:
                    raise ConfigError(
                        f"--source {item!r}: this recipe has layers ({', '.join(layers)}); "
                        "give --source LAYER=PATH"
                    )
                replaced.setdefault(name, []).append(from_command_line(path))
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

    def check(self) -> Recipe:
        """Everything that can be wrong before any work; returns the recipe with what it left
        out (bands, dtype, nodata) filled from its input files."""
        recipe = self.recipe
        if recipe.resampling is ResamplingMethod.SUM and gdal_version() < SUM_CONSERVING_GDAL:
            raise ConfigError(
                f"recipe {recipe.name!r} uses sum resampling, which conserves totals only "
                f"from GDAL 3.6; this rasterio has GDAL {rasterio.__gdal_version__}: upgrade it"
            )
        self._check_year()
        layers = self.layers()
        for layer in layers:
            if not layer.specs:
                raise ConfigError(
                    f"recipe {recipe.name!r} names no input files; give --source PATH"
                )
        root = self.root()
        if root is not None:
            folder = gdal_path(root, recipe.folder)
            if not folder.startswith("/vsi") and not os.path.isdir(folder):
                raise ConfigError(
                    f"the mirror folder {folder} does not exist; give --source a folder laid "
                    "out like the product (or its URL)"
                )
        self._check_some_cell(layers)
        samples = self._samples(layers)
        if recipe.from_source:
            recipe = with_defaults(recipe, layers, samples)
        _check_bands(recipe, samples)
        names = [layer.name for layer in layers]
        if names != [None] and sorted(names) != sorted(recipe.bands):
            raise ConfigError(
                f"recipe {recipe.name!r}: layers ({', '.join(map(str, names))}) must be "
                f"the recipe's bands ({', '.join(recipe.bands)})"
            )
        for layer in layers:
            self._expand(layer)  # missing local files are a configuration error, now
        return recipe

    def input_identity(self, inputs: tuple[str, ...]) -> str:
        """Local files count with size and mtime, also as a layer's ``LAYER=PATH`` and as the
        archive of a ``zip://`` or ``/vsizip/`` member (``paths.local_file``)."""
        return identity_digest(inputs, local_file)

    # --- what can be checked before any work ------------------------------------------------

    def single_epoch(self) -> str | None:
        recipe = self.recipe
        specs = [s for ss in spec_lists(recipe.params, recipe.name) for s in ss]
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
                     if TEMPLATE_FIELDS.search(path := gdal_path(spec, self.recipe.folder))
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

    def _samples(self, layers: list[Layer]) -> list[Sample]:
        """(layer, path, what the file holds) for the first local files of each layer."""
        samples = []
        for layer in layers:
            local = [p for p in self._expand(layer)
                     if not TEMPLATE_FIELDS.search(p) and not is_remote(p)]  # fmt: skip
            for path in local[:FILES_CHECKED_PER_LAYER]:
                samples.append((layer.name, path, file_info(path)))
        return samples

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
        remote = any(is_remote(gdal_path(spec, self.recipe.folder))
                     for layer in self.layers() for spec in layer.specs)  # fmt: skip
        if not remote:
            return None
        value = self.option("http-concurrency")
        return whole_number(value, "--http-concurrency: a whole number of at least 1, not {value}")

    # --- planning (driver) -----------------------------------------------------------------

    def _expand(self, layer: Layer) -> list[str]:
        """Local globs expanded and checked; templates and remote paths kept as they are."""
        paths: list[str] = []
        for spec in layer.specs:
            path = gdal_path(spec, self.recipe.folder)
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
                        f"no source files match {path}{where_from(spec)}; check the path or "
                        "--source"
                    )
                paths.extend(found)
            elif not os.path.exists(path):
                raise ConfigError(
                    f"source file {path} does not exist{where_from(spec)}; check the path or "
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

    def plan_identity(self) -> str | None:
        """What ``plan`` reads besides the tiles and the recipe: the layers' expanded paths
        (a glob's matches) and, for local files, their sizes and times (a replaced file may
        have another footprint). Template cells are named from the tiles' boxes and the
        recipe alone; whether a cell file exists counts in each list's identity instead."""
        if type(self).plan is not RasterSource.plan:  # a subclass's plan may read more
            return None
        items = [(f"{layer.name}{LAYER_SEPARATOR}" if layer.name else "") + path
                 for layer in self.layers() for path in self._expand(layer)]  # fmt: skip
        return identity_digest(items, local_file)

    def plan(self, tiles: Sequence[GridTile]) -> TileInputs:
        # Neighbouring tiles name the same files (GSSIC: up to 256 a tile): one string object
        # per path and one tuple per input set, or the driver's plan grows by kilobytes a tile.
        # A tile's set is decided by which files its polygon touches and which template cells
        # its box covers; sets are built once per distinct (files, cells), not once per tile
        # and template (GSSIC over CONUS: 3k distinct sets instead of 26M substitutions).
        polygons = lonlat_polygons(tiles)
        layers = [(f"{layer.name}{LAYER_SEPARATOR}" if layer.name else "", self._expand(layer))
                  for layer in self.layers()]  # fmt: skip
        local = [(prefix + p, p) for prefix, paths in layers for p in paths
                 if not TEMPLATE_FIELDS.search(p)]  # fmt: skip
        files = [name for name, _ in local]
        templates = [prefix + p for prefix, paths in layers for p in paths
                     if TEMPLATE_FIELDS.search(p)]  # fmt: skip
        touched: list[list[int]] = [[] for _ in tiles]
        if files:
            footprints = [self._footprint(path) for _, path in local]
            tile_index, file_index = shapely.STRtree(footprints).query(
                polygons, predicate="intersects"
            )
            for t, f in zip(tile_index.tolist(), file_index.tolist(), strict=True):
                touched[t].append(f)
        sets: dict[tuple[tuple[int, ...], tuple[tuple[float, float], ...]], tuple[str, ...]] = {}
        strings: dict[str, str] = {}  # one object per cell file name, shared by its sets
        plan = {}
        for tile, polygon, found in zip(tiles, polygons, touched, strict=True):
            cells = self._cell_corners(polygon.bounds) if templates else ()
            key = (tuple(sorted(set(found))), cells)
            inputs = sets.get(key)
            if inputs is None:
                names = {files[f] for f in key[0]}
                for template in templates:
                    for lat, lon in cells:
                        name = self._cell_name(template, lat, lon)
                        names.add(strings.setdefault(name, name))
                inputs = sets[key] = tuple(sorted(names))
            plan[tile.identifier] = inputs
        return plan

    def _cell_corners(self, bounds: tuple[float, float, float, float]
                      ) -> tuple[tuple[float, float], ...]:  # fmt: skip
        """The (lat, lon) that name the template cells a lon/lat box touches."""
        degrees = float(self.recipe.params["tile_degrees"])
        upper = self.recipe.params.get("tile_corner", "upper-left") == "upper-left"
        west, south, east, north = bounds
        corners = []
        for row in range(math.floor(south / degrees), math.floor(north / degrees) + 1):
            for col in range(math.floor(west / degrees), math.floor(east / degrees) + 1):
                lat = (row + 1) * degrees if upper else row * degrees
                lon = ((col * degrees + 180.0) % 360.0) - 180.0
                if not -90 <= row * degrees < 90 or not self._in_footprint(lon, row * degrees):
                    continue
                corners.append((lat, lon))
        return tuple(corners)

    @staticmethod
    def _cell_name(template: str, lat: float, lon: float) -> str:
        return TEMPLATE_FIELDS.sub(lambda m: cell_field(m, lat, lon), template)

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

    def _split(self, item: str) -> tuple[str, str]:
        """``layer=path`` of a layered recipe, or ``("", path)``."""
        if not self._layered:
            return "", item
        name, _, path = item.partition(LAYER_SEPARATOR)
        return name, path


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


def _check_bands(recipe: Recipe, samples: Sequence[Sample]) -> None:
    """Band counts and ``band_indexes`` against the files, before any tile is tried."""
    if recipe.bands_per_tile:
        return
    for layer, path, info in samples:
        if layer is not None:
            continue  # a layer reads band 1 of each of its files
        indexes = band_indexes_of(recipe.params, info)
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
