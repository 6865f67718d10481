"""What a raster recipe's ``params`` may hold, checked without opening a file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from m3leo_tiles.core.enums import ResamplingMethod
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.sources.base import refuse_unknown_params
from m3leo_tiles.sources.raster.paths import (
    AXIS_FIELD,
    RESERVED_FIELDS,
    TEMPLATE_FIELDS,
    as_list,
    grid_layers,
)

PARAMS = {"inputs", "layers", "band_indexes", "src_nodata", "footprint", "tile_degrees",
          "tile_corner", "years", "root", "layer_grids", "band_metadata", "band_resampling",
          "remote"}  # fmt: skip
REMOTE_READS = ("stream", "download")


def check_params(params: Mapping[str, Any], where: str, source: str = "raster") -> None:
    """A raster recipe's ``params``: every key named in errors as ``params.<key>``."""
    refuse_unknown_params(params, PARAMS, where, source)
    if "inputs" in params and ("layers" in params or "layer_grids" in params):
        raise ConfigError(f"{where}: key 'params': give either 'inputs' or 'layers', not both")
    _check_layer_params(params, where)
    specs = spec_lists(params, where)
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
        raise ConfigError(f"{where}: key 'params.footprint': [west, south, east, north] in degrees")


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
                raise ConfigError(f"{where}: key 'params.band_metadata': {number} must be a number")
    methods = params.get("band_resampling") or {}
    allowed = {m.value for m in ResamplingMethod}
    if not isinstance(methods, dict) or not set(methods.values()) <= allowed:
        raise ConfigError(
            f"{where}: key 'params.band_resampling': a mapping band glob → one of "
            f"{', '.join(sorted(allowed))}"
        )


def spec_lists(params: Mapping[str, Any], where: str) -> list[list[str]]:
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
        lists.append(as_list(value))
    return lists
