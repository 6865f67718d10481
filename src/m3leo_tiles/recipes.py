"""Recipes: what a dataset is, as data (YAML), validated on load.

A recipe names a source adapter and its parameters, the output grid (resolution, resampling),
the pixel encoding (dtype, scale, nodata) and the band names. It is data so that users add
datasets without writing code, and so that its content hash can tell a rerun whether the chips
on disk were made by the same recipe. Validation happens on load, with messages that name the
file, the key and what is allowed: a typo must never silently become a default.

Loading imports no source: the ``source`` must be an installed source's name (entry points),
and the source checks its own ``params`` and the keys the recipe left out when it is used
(``sources.base.check_recipe``; ``list_recipes`` does it for ``m3leo-tiles recipes``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from m3leo_tiles.core.enums import ChipCodec, ResamplingMethod
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.core.names import ALLOWED, name_problem
from m3leo_tiles.core.tilesize import pixels_per_side

RECIPE_SUFFIXES = (".yaml", ".yml")
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
RECIPES_PATH_ENV = "M3LEO_RECIPES_PATH"
FILLABLE = ("bands", "dtype", "nodata")


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
    bands_per_tile: bool = False  # the source names each chip's bands (GUNW: one per pair)
    path: str | None = field(default=None, compare=False)
    # Keys the recipe left out (bands, dtype, nodata): a source that reads its inputs on the
    # driver fills them (``fills_recipe_defaults``; empty once filled), another uses the
    # defaults and refuses a recipe without bands (``SourceAdapter.check_recipe``).
    from_source: tuple[str, ...] = ()
    # Descriptive only, never in the hash (adding it must not redo chips): the data's licence
    # as an SPDX id (CC-BY-4.0), which the STAC catalog states ("" unknown).
    license: str = ""
    # How chips are stored (None: the default codec). Not what they hold: no part of the
    # hash or of equality, so a rerun with another codec keeps the finished chips.
    compress: ChipCodec | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Recipes built in Python (notebooks, benchmarks) may pass plain strings and lists.
        object.__setattr__(self, "resampling", ResamplingMethod(self.resampling))
        object.__setattr__(self, "bands", tuple(self.bands))
        if self.compress is not None:
            object.__setattr__(self, "compress", ChipCodec(self.compress))

    def content(self) -> dict[str, Any]:
        """Everything that decides the pixels (not where the file was loaded from, nor
        descriptive keys such as ``description`` and ``license``): the hash is of this."""
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
            **({"bands_per_tile": True} if self.bands_per_tile else {}),
        }

    @cached_property
    def recipe_hash(self) -> str:
        """Short content hash: chips made by a changed recipe are not mistaken for done."""
        canonical = json.dumps(self.content(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def folder(self) -> Path:
        """Where relative input paths in ``params`` are resolved from."""
        return Path(self.path).parent if self.path else Path.cwd()

    def dataset_name(self, year: int | None) -> str:
        """Folder name of this recipe's dataset: ``<recipe>`` or ``<recipe>-<year>``."""
        return f"{self.name}-{year}" if year is not None else self.name


@dataclass(frozen=True)
class RecipeInfo:
    """One line of ``m3leo-tiles recipes``."""

    name: str
    description: str
    source: str
    path: Path
    origin: str  # built-in, example, or user
    shadows: tuple[Path, ...] = ()  # files further down the search order with the same name

    @property
    def builtin(self) -> bool:
        """Shipped with the package (built-in or example), not one of the user's files."""
        return self.origin != "user"


# --- where recipes live ---------------------------------------------------------------------


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def builtin_recipes_dir() -> Path:
    """``_data/recipes`` in an installed wheel, else ``recipes/`` of the source checkout."""
    installed = _package_dir() / "_data" / "recipes"
    return installed if installed.is_dir() else _package_dir().parents[1] / "recipes"


def recipe_dirs(extra_dirs: Sequence[Path] = ()) -> list[tuple[str, Path]]:
    """Search order, first wins: extras, ``./recipes``, ``$M3LEO_RECIPES_PATH``, built-in, examples.

    A user's own recipe comes before the shipped ones of the same name, so copying
    ``agb.yaml`` into ``./recipes/`` and editing it is how a user changes a built-in recipe
    (``m3leo-tiles recipes`` shows which file each name comes from).
    """
    builtin = builtin_recipes_dir()
    dirs = [("user", Path(item)) for item in extra_dirs]
    local = Path.cwd() / "recipes"
    if local.resolve() != builtin.resolve():
        dirs.append(("user", local))
    env = os.environ.get(RECIPES_PATH_ENV, "")
    dirs += [("user", Path(item)) for item in env.split(os.pathsep) if item]
    dirs += [("built-in", builtin), ("example", builtin / "examples")]
    return [(origin, folder) for origin, folder in dirs if folder.is_dir()]


def _recipe_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in RECIPE_SUFFIXES and p.is_file())


def list_recipes(extra_dirs: Sequence[Path] = ()) -> list[RecipeInfo]:
    """Every recipe that can be fetched by name, the first in search order winning a name;
    broken files are listed with their error (under their file name), checked by their
    source too (its ``params``): this imports the sources, which parsing alone never does."""
    from m3leo_tiles.sources.base import check_recipe

    return _recipe_infos(extra_dirs, check_recipe)


def _recipe_infos(
    extra_dirs: Sequence[Path], check: Callable[[Recipe], object] | None = None
) -> list[RecipeInfo]:
    infos: dict[str, RecipeInfo] = {}
    seen: set[Path] = set()
    for origin, folder in recipe_dirs(extra_dirs):
        for path in _recipe_files(folder):
            if path.resolve() in seen:  # the same folder reached twice (./recipes and the env)
                continue
            seen.add(path.resolve())
            try:
                recipe = load_recipe_file(path)
                if check is not None:
                    check(recipe)
                info = RecipeInfo(recipe.name, recipe.description, recipe.source, path, origin)
            except ConfigError as error:
                info = RecipeInfo(path.stem, f"INVALID: {error}", "?", path, origin)
            first = infos.get(info.name)
            if first is None:
                infos[info.name] = info
            else:
                infos[info.name] = replace(first, shadows=(*first.shadows, path))
    return list(infos.values())


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by name (``agb``: the one ``m3leo-tiles recipes`` lists) or by YAML path.

    Its source is not imported: the source checks its own ``params`` when an adapter is built
    (``sources.base.check_recipe``), so a reader of datasets never loads rasterio for it."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.suffix in RECIPE_SUFFIXES or os.sep in text:
        if not candidate.is_file():
            raise ConfigError(f"recipe file {candidate} does not exist")
        return load_recipe_file(candidate)
    infos = _recipe_infos(())
    for info in infos:
        if info.name == text:
            return load_recipe_file(info.path)
    known = ", ".join(info.name for info in infos) or "none"
    raise ConfigError(
        f"unknown recipe {text!r}; known recipes: {known} (or give a path to a .yaml file)"
    )


# --- parsing and validation -----------------------------------------------------------------

_REQUIRED = ("source", "resolution")
_OPTIONAL = (
    "bands",
    "bands_per_tile",
    "name",
    "description",
    "params",
    "resampling",
    "dtype",
    "nodata",
    "scale",
    "windows",
    "reducer",
    "default_year",
    "license",
    "compress",
)


def _fail(where: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: key {key!r}: {message}")


def _number(where: str, key: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _raise(_fail(where, key, f"{value!r} is not a number"))
    return float(value)


def _raise(error: ConfigError) -> Any:
    raise error


def _windows(where: str, value: Any) -> tuple[TimeWindow, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(where, "windows", "must be a list of {name, start: MM-DD, end: MM-DD}")
    windows = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"name", "start", "end"}:
            raise _fail(where, "windows", f"{item!r} must have exactly name, start and end")
        for part in ("start", "end"):
            text = str(item[part])
            month, _, day = text.partition("-")
            if not (month.isdigit() and day.isdigit() and 1 <= int(month) <= 12
                    and 1 <= int(day) <= 31):  # fmt: skip
                raise _fail(where, "windows", f"{part} {text!r} of {item['name']!r} is not MM-DD")
        windows.append(TimeWindow(str(item["name"]), str(item["start"]), str(item["end"])))
    return tuple(windows)


def _bands(where: str, bands: Any, may_be_empty: bool) -> list[str]:
    """The recipe's band names: unique strings (none when its chips or its source name them)."""
    if not (isinstance(bands, list) and (bands or may_be_empty)
            and all(isinstance(b, str) for b in bands)):  # fmt: skip
        raise _fail(where, "bands", "must be a non-empty list of band names")
    if len(set(bands)) != len(bands):
        raise _fail(where, "bands", "band names must be unique")
    return bands


def parse_recipe(data: Any, where: str, path: Path | None = None) -> Recipe:
    """Build and validate a Recipe from parsed YAML; ``where`` names it in errors.

    The source is known by name only (installed entry points, nothing imported); what its
    ``params`` may hold, and whether it fills the keys left out, the source checks after
    (``sources.base.check_recipe``)."""
    from m3leo_tiles.sources.base import source_names

    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        allowed = ", ".join((*_REQUIRED, *_OPTIONAL))
        raise _fail(where, unknown[0], f"unknown key; allowed keys: {allowed}")
    for key in _REQUIRED:
        if key not in data:
            raise _fail(where, key, "is required")

    sources = source_names()
    source = data["source"]
    if source not in sources:
        raise _fail(where, "source", f"{source!r} is not one of {', '.join(sources)}")
    resolution = _number(where, "resolution", data["resolution"])
    try:
        pixels_per_side(resolution)
    except ConfigError as error:
        raise _fail(where, "resolution", str(error)) from None
    bands_per_tile = data.get("bands_per_tile", False)
    if not isinstance(bands_per_tile, bool):
        raise _fail(where, "bands_per_tile", "must be true or false")
    # What the recipe leaves out: a source that reads its inputs on the driver (raster) fills
    # it from the files themselves; another source refuses a recipe without bands.
    from_source = tuple(k for k in FILLABLE if k not in data)
    bands = _bands(where, data.get("bands", []), bands_per_tile or "bands" in from_source)
    resampling = data.get("resampling", "nearest")
    if resampling not in {m.value for m in ResamplingMethod}:
        allowed = ", ".join(m.value for m in ResamplingMethod)
        raise _fail(where, "resampling", f"{resampling!r} is not one of {allowed}")
    dtype = data.get("dtype", "float32")
    if dtype not in DTYPES:
        raise _fail(where, "dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    nodata = _number(where, "nodata", data.get("nodata"), optional=True)
    if nodata is not None and np.dtype(dtype).kind in "iu":
        limits = np.iinfo(dtype)
        if not (nodata.is_integer() and limits.min <= nodata <= limits.max):
            raise _fail(where, "nodata", f"{nodata:g} does not fit dtype {dtype}")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise _fail(where, "params", "must be a mapping of source parameters")
    default_year = data.get("default_year")
    if default_year is not None and (not isinstance(default_year, int) or default_year < 1950):
        raise _fail(where, "default_year", f"{default_year!r} is not a year")
    compress = data.get("compress")
    if compress is not None and compress not in [c.value for c in ChipCodec]:
        allowed = ", ".join(c.value for c in ChipCodec)
        raise _fail(where, "compress", f"{compress!r} is not one of {allowed}")
    name = data.get("name", path.stem if path else None)
    if not isinstance(name, str) or not name:
        raise _fail(where, "name", "must be a non-empty string")
    problem = name_problem(name)
    if problem is not None:  # it names the dataset folder: never a path out of --out
        raise _fail(where, "name", f"{name!r} {problem}; it names the dataset folder ({ALLOWED})")
    licence = data.get("license", "")
    if not isinstance(licence, str) or (licence and not re.fullmatch(r"[A-Za-z0-9.+-]+", licence)):
        raise _fail(where, "license", f"{licence!r} is not an SPDX licence id, e.g. CC-BY-4.0")
    return Recipe(
        name=name,
        source=source,
        resolution=resolution,
        bands=tuple(bands),
        resampling=ResamplingMethod(resampling),
        dtype=dtype,
        nodata=nodata,
        scale=_number(where, "scale", data.get("scale", 1.0)),
        description=str(data.get("description", "")).strip(),
        params=params,
        windows=_windows(where, data.get("windows")),
        reducer=data.get("reducer"),
        default_year=default_year,
        bands_per_tile=bands_per_tile,
        path=str(path.resolve()) if path else None,
        from_source=from_source,
        license=licence,
        compress=ChipCodec(compress) if compress is not None else None,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping.

    PyYAML keeps the last of two equal keys without a word, so a recipe that sets ``nodata``
    twice (a copy-paste slip) would silently use the second value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports an unhashable key itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_recipe_file(path: Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read recipe {path}: {error.strerror or error}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}:{line}: invalid YAML ({problem}); fix the file") from None
    return parse_recipe(data, str(path), path)
