"""``params`` of an ``earthengine`` recipe, validated, and the Earth Engine expression they make.

A recipe describes a composite as data, so that a user can add Dynamic World or Landsat as a
YAML file:

* ``collection: ID`` (an ImageCollection) or ``image: ID`` (one Image, e.g. a DEM);
  ``label`` names it in messages ("no Sentinel-2 image in 2020-03").
* ``bands``: the collection's bands to keep, a list, or a mapping ``{VV: vv}`` from the
  collection's band name to the short name used in output names.
* ``filters``: property filters every image must pass, e.g. ``{property: instrumentMode,
  eq: IW}``; operators ``eq neq lt lte gt gte contains`` (a list property contains the value)
  ``in`` (the property is one of a list).
* ``groups``: optional named subsets composited apart (Sentinel-1 ascending and descending
  orbits): ``{asc: [filters...], desc: [filters...]}``.
* ``windows``: optional named date windows, **end-exclusive** (a month ends on the first day
  of the next); ``start``/``end`` are ``MM-DD`` of the fetched year, ``start_year: -1`` moves
  the start into the year before (a December-February winter), and an ``end`` that is not
  after ``start`` falls in the following year (``{start: 12-01, end: 01-01}`` is December).
* ``reducer``: ``mean median min max mode sum mosaic first`` (default ``median``, or
  ``mosaic`` for a collection without windows).
* ``masks``: pixels to drop before reducing, all of which must hold: ``{band: B, min: x,
  max: y}`` (keep ``x <= B < y``), ``{band: QA, bits_zero: [1, 3]}`` (QA bits that must be 0),
  and ``linked: COLLECTION`` on either to take ``band`` from the image of that collection with
  the same ``system:index`` (Cloud Score+ for Sentinel-2).
* ``band_scale`` / ``band_offset``: per collection band ``value * scale + offset``, applied
  to the composite (Landsat Collection 2 surface reflectance).
* ``names``: the output band names, a template over ``{window}``, ``{band}`` and ``{group}``
  (default ``{window}_{band}{group}``, or ``{band}`` without windows and groups). The
  recipe's ``bands`` must list exactly these names; their order there is the chip's order.

The composite of each (window, group) is computed server-side; an empty window becomes a fully
masked image (``If`` on the collection's size) instead of an error, so the other windows of
the tile still come back; the recipe's ``nodata`` then fills it.
"""

from __future__ import annotations

import datetime as dt
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.sources.base import refuse_unknown_params

REDUCERS = ("mean", "median", "min", "max", "mode", "sum", "mosaic", "first")
FILTER_OPS = ("eq", "neq", "lt", "lte", "gt", "gte", "contains", "in")
KEYS = (
    "collection",
    "image",
    "label",
    "bands",
    "filters",
    "groups",
    "windows",
    "reducer",
    "masks",
    "band_scale",
    "band_offset",
    "names",
    "first_year",
)
CASTS = {
    "uint8": "toUint8",
    "int8": "toInt8",
    "uint16": "toUint16",
    "int16": "toInt16",
    "uint32": "toUint32",
    "int32": "toInt32",
    "float32": "toFloat",
    "float64": "toDouble",
}
_NAME_FIELDS = {"window", "band", "group"}


def _fail(where: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: key 'params.{key}': {message}")


@dataclass(frozen=True)
class PropertyFilter:
    property: str
    op: str
    value: Any

    def apply(self, ee: Any, collection: Any) -> Any:
        name = self.property
        make = {
            "eq": lambda: ee.Filter.eq(name, self.value),
            "neq": lambda: ee.Filter.neq(name, self.value),
            "lt": lambda: ee.Filter.lt(name, self.value),
            "lte": lambda: ee.Filter.lte(name, self.value),
            "gt": lambda: ee.Filter.gt(name, self.value),
            "gte": lambda: ee.Filter.gte(name, self.value),
            "contains": lambda: ee.Filter.listContains(name, self.value),
            "in": lambda: ee.Filter.inList(name, list(self.value)),
        }[self.op]
        return collection.filter(make())


@dataclass(frozen=True)
class Mask:
    band: str
    linked: str | None = None
    min: float | None = None
    max: float | None = None
    bits_zero: tuple[int, ...] = ()

    def keep(self, image: Any) -> Any:
        """The 0/1 image of pixels this mask keeps."""
        values = image.select(self.band)
        kept = None
        if self.min is not None:
            kept = values.gte(self.min)
        if self.max is not None:
            below = values.lt(self.max)
            kept = below if kept is None else kept.And(below)
        if self.bits_zero:
            bits = values.bitwiseAnd(sum(1 << bit for bit in self.bits_zero)).eq(0)
            kept = bits if kept is None else kept.And(bits)
        return kept


@dataclass(frozen=True)
class Window:
    """A date window, end-exclusive, placed in a year by ``dates``."""

    name: str
    start: str  # MM-DD
    end: str  # MM-DD
    start_year: int = 0

    def dates(self, year: int) -> tuple[dt.date, dt.date]:
        start = _date(year + self.start_year, self.start)
        end = _date(year + self.start_year, self.end)
        if end <= start:
            end = _date(year + self.start_year + 1, self.end)
        return start, end

    def label(self, year: int) -> str:
        """``2020-03`` for a calendar month, else ``winter (2019-12-01 to 2020-03-01)``."""
        start, end = self.dates(year)
        next_month = _date(start.year + start.month // 12, f"{start.month % 12 + 1:02d}-01")
        if start.day == 1 and end == next_month:
            return f"{start:%Y-%m}"
        return f"{self.name} ({start} to {end})"


def _date(year: int, month_day: str) -> dt.date:
    month, day = (int(part) for part in month_day.split("-"))
    return dt.date(year, month, day)


@dataclass(frozen=True)
class Output:
    """One output band: which collection band of which window and group it is."""

    name: str
    band: str
    window: Window | None
    group: str  # "" when the recipe has no groups

    @property
    def part(self) -> tuple[str, str]:
        """The (window, group) composite the band comes from."""
        return (self.window.name if self.window else "", self.group)


@dataclass(frozen=True)
class EEParams:
    collection: str | None
    image: str | None
    label: str
    bands: tuple[tuple[str, str], ...]  # (collection band, short name)
    filters: tuple[PropertyFilter, ...]
    groups: tuple[tuple[str, tuple[PropertyFilter, ...]], ...]
    windows: tuple[Window, ...]
    reducer: str
    masks: tuple[Mask, ...]
    band_scale: tuple[float, ...] | None  # per entry of ``bands``
    band_offset: tuple[float, ...] | None
    names: str
    first_year: int | None = None  # the collection's first images: earlier years have none

    @property
    def asset(self) -> str:
        return self.collection or self.image or ""

    def outputs(self) -> list[Output]:
        """Every output band the params define, windows outermost, then groups, then bands."""
        windows: Sequence[Window | None] = self.windows or (None,)
        groups = [name for name, _ in self.groups] or [""]
        return [
            Output(
                self.names.format(window=window.name if window else "", band=short, group=group),
                band,
                window,
                group,
            )
            for window in windows
            for group in groups
            for band, short in self.bands
        ]

    def check_bands(self, recipe_bands: Sequence[str], where: str) -> dict[str, Output]:
        """The recipe's ``bands`` must be exactly the names these params make."""
        made = {output.name: output for output in self.outputs()}
        if len(made) != len(self.outputs()):
            raise _fail(where, "names", f"{self.names!r} gives the same name to several bands")
        missing = [name for name in recipe_bands if name not in made]
        extra = [name for name in made if name not in recipe_bands]
        if missing or extra:
            raise ConfigError(
                f"{where}: key 'bands': must list the {len(made)} bands the params make "
                f"(names {self.names!r}): {', '.join(made)}"
                + (f"; not made: {', '.join(missing)}" if missing else "")
                + (f"; not listed: {', '.join(extra)}" if extra else "")
            )
        return made


# --- parsing ------------------------------------------------------------------------------


def _filters(where: str, key: str, value: Any) -> tuple[PropertyFilter, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(where, key, "must be a list of {property: NAME, OP: VALUE}")
    filters = []
    for item in value:
        ops = [op for op in FILTER_OPS if isinstance(item, dict) and op in item]
        if not isinstance(item, dict) or set(item) != {"property", *ops} or len(ops) != 1:
            raise _fail(
                where, key, f"{item!r} must be {{property: NAME, OP: VALUE}} with one OP of "
                f"{', '.join(FILTER_OPS)}"
            )  # fmt: skip
        op = ops[0]
        if op == "in" and not isinstance(item[op], list):
            raise _fail(where, key, f"'in' takes a list, got {item[op]!r}")
        filters.append(PropertyFilter(str(item["property"]), op, item[op]))
    return tuple(filters)


def _month_day(where: str, key: str, text: Any) -> str:
    text = str(text)
    try:
        _date(2000, text)  # a leap year: 02-29 is a valid window edge
    except ValueError:
        raise _fail(where, key, f"{text!r} is not a date MM-DD") from None
    if len(text) != 5:
        raise _fail(where, key, f"{text!r} is not a date MM-DD")
    return text


def _windows(where: str, value: Any) -> tuple[Window, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise _fail(where, "windows", "must be a non-empty list of {name, start, end}")
    windows = []
    for item in value:
        allowed = {"name", "start", "end", "start_year"}
        if not isinstance(item, dict) or not {"name", "start", "end"} <= set(item) <= allowed:
            raise _fail(where, "windows", f"{item!r} needs name, start, end (MM-DD), start_year")
        offset = item.get("start_year", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > 1:
            raise _fail(where, "windows", f"start_year of {item['name']!r} must be -1, 0 or 1")
        start = _month_day(where, "windows", item["start"])
        end = _month_day(where, "windows", item["end"])
        windows.append(Window(str(item["name"]), start, end, offset))
    names = [w.name for w in windows]
    if len(set(names)) != len(names):
        raise _fail(where, "windows", "window names must be unique")
    return tuple(windows)


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, key, f"{value!r} is not a number")
    return float(value)


def _masks(where: str, value: Any) -> tuple[Mask, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(where, "masks", "must be a list of {band, min/max/bits_zero, linked}")
    masks = []
    for item in value:
        allowed = {"band", "linked", "min", "max", "bits_zero"}
        if not isinstance(item, dict) or "band" not in item or not set(item) <= allowed:
            raise _fail(where, "masks", f"{item!r} needs band and some of min, max, bits_zero")
        if not {"min", "max", "bits_zero"} & set(item):
            raise _fail(where, "masks", f"{item!r} keeps every pixel: give min, max or bits_zero")
        bits = item.get("bits_zero", [])
        if not isinstance(bits, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 32 for b in bits
        ):
            raise _fail(where, "masks", f"bits_zero must list bit numbers 0..31, got {bits!r}")
        masks.append(
            Mask(
                band=str(item["band"]),
                linked=str(item["linked"]) if item.get("linked") else None,
                min=_number(where, "masks", item["min"]) if "min" in item else None,
                max=_number(where, "masks", item["max"]) if "max" in item else None,
                bits_zero=tuple(bits),
            )
        )
    return tuple(masks)


def _per_band(where: str, key: str, value: Any, bands: Sequence[str], default: float
              ) -> tuple[float, ...] | None:  # fmt: skip
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(bands):
        raise _fail(where, key, f"must map some of the bands {', '.join(bands)} to numbers")
    return tuple(_number(where, key, value.get(band, default)) for band in bands)


def _band_pairs(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    """``bands``: the collection's band names, or a mapping of each to a short name."""
    if isinstance(value, list) and value and all(isinstance(b, str) for b in value):
        bands = tuple((b, b) for b in value)
    elif (
        isinstance(value, dict)
        and value
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        bands = tuple(value.items())
    else:
        raise _fail(where, "bands", "must list the collection's bands, or map each to a short "
                    "name (e.g. {VV: vv})")  # fmt: skip
    if len({b for b, _ in bands}) != len(bands):
        raise _fail(where, "bands", "bands must be unique")
    return bands


def _groups(where: str, value: Any) -> tuple[tuple[str, tuple[PropertyFilter, ...]], ...]:
    """``groups``: named lists of property filters, one composite per group."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not value:
        raise _fail(where, "groups", "must map group names to lists of filters")
    return tuple((str(name), _filters(where, f"groups.{name}", v)) for name, v in value.items())


def parse_params(params: Mapping[str, Any], where: str) -> EEParams:
    """Validated params; every mistake is a ConfigError naming the file and key."""
    refuse_unknown_params(params, KEYS, where, "earthengine")
    collection, image = params.get("collection"), params.get("image")
    if bool(collection) == bool(image):
        raise _fail(where, "collection", "give exactly one of collection (an ImageCollection "
                    "id) or image (an Image id)")  # fmt: skip
    for key, asset in (("collection", collection), ("image", image)):
        if asset is not None and (not isinstance(asset, str) or " " in asset):
            raise _fail(where, key, f"{asset!r} is not an Earth Engine asset id")
    bands = _band_pairs(where, params.get("bands"))
    filters = _filters(where, "filters", params.get("filters"))
    groups = _groups(where, params.get("groups"))
    windows = _windows(where, params.get("windows"))
    if image and (windows or groups or filters):
        raise _fail(where, "image", "an image has no dates or properties to filter: use "
                    "collection for windows, groups and filters")  # fmt: skip
    default_reducer = "median" if windows else "mosaic"
    reducer = params.get("reducer", default_reducer)
    if reducer not in REDUCERS:
        raise _fail(where, "reducer", f"{reducer!r} is not one of {', '.join(REDUCERS)}")
    masks = _masks(where, params.get("masks"))
    if image and any(mask.linked for mask in masks):
        raise _fail(where, "masks", "linked masks need a collection")
    source_bands = [b for b, _ in bands]
    default_names = "{band}"
    if windows:
        default_names = "{window}_" + default_names
    if groups:
        default_names += "{group}"
    names = params.get("names", default_names)
    fields = {f for _, f, _, _ in string.Formatter().parse(str(names)) if f is not None}
    if not isinstance(names, str) or not fields <= _NAME_FIELDS or "band" not in fields:
        raise _fail(where, "names", f"{names!r} must be a template with {{band}} and maybe "
                    "{window} and {group}")  # fmt: skip
    first_year = params.get("first_year")
    if first_year is not None and (not isinstance(first_year, int) or isinstance(first_year, bool)
                                   or not windows):  # fmt: skip
        raise _fail(where, "first_year", "must be a whole year, for a collection with windows")
    parsed = EEParams(
        collection=collection,
        image=image,
        label=str(params.get("label") or collection or image),
        bands=bands,
        filters=filters,
        groups=groups,
        windows=windows,
        reducer=reducer,
        masks=masks,
        band_scale=_per_band(where, "band_scale", params.get("band_scale"), source_bands, 1.0),
        band_offset=_per_band(where, "band_offset", params.get("band_offset"), source_bands, 0.0),
        names=names,
        first_year=first_year,
    )
    made = [output.name for output in parsed.outputs()]
    if len(set(made)) != len(made):
        raise _fail(where, "names", f"{names!r} gives several bands the same name; use "
                    "{window} and {group} when there are several windows or groups")  # fmt: skip
    return parsed


# --- expressions (``ee`` is passed in: the package is imported only where it is used) --------


def _collection(ee: Any, params: EEParams, year: int | None, window: Window | None,
                group: str, region: Any, resample: str | None = None) -> Any:  # fmt: skip
    """The filtered, masked collection of one (window, group): what a composite reduces."""
    collection = ee.ImageCollection(params.collection)
    if window is not None:
        assert year is not None
        start, end = window.dates(year)
        collection = collection.filterDate(start.isoformat(), end.isoformat())
    if region is not None:
        collection = collection.filterBounds(region)
    for item in params.filters + dict(params.groups).get(group, ()):
        collection = item.apply(ee, collection)
    for linked in sorted({m.linked for m in params.masks if m.linked}):
        bands = sorted({m.band for m in params.masks if m.linked == linked})
        collection = collection.linkCollection(ee.ImageCollection(linked), bands)
    if params.masks:
        masks = params.masks

        def apply_masks(image: Any) -> Any:
            kept = None
            for mask in masks:
                keep = mask.keep(image)
                kept = keep if kept is None else kept.And(keep)
            return image.updateMask(kept)

        collection = collection.map(apply_masks)
    if resample:
        collection = collection.map(lambda image: image.resample(resample))
    return collection


def _reduce(ee: Any, collection: Any, reducer: str, bands: list[str]) -> Any:
    collection = collection.select(bands)
    if reducer == "first":
        return ee.Image(collection.sort("system:time_start").first())
    return getattr(collection, reducer)()


def _part_image(ee: Any, params: EEParams, year: int | None, outputs: Sequence[Output],
                region: Any, resample: str | None) -> Any:  # fmt: skip
    """The composite of one (window, group), its bands renamed to the output names."""
    first = outputs[0]
    bands = [o.band for o in outputs]
    names = [o.name for o in outputs]
    if params.image:
        image = ee.Image(params.image)
        for mask in params.masks:
            image = image.updateMask(mask.keep(image))
        composite = image.select(bands)
        if resample:
            composite = composite.resample(resample)
    else:
        collection = _collection(ee, params, year, first.window, first.group, region, resample)
        # An empty window must not make the whole request fail ("did not match any bands"):
        # it becomes a masked image with the same bands, which the recipe's nodata fills.
        empty = ee.Image.constant([0] * len(bands)).rename(bands).updateMask(0)
        composite = ee.Image(
            ee.Algorithms.If(
                collection.size().gt(0), _reduce(ee, collection, params.reducer, bands), empty
            )
        ).select(bands)
    index = [b for b, _ in params.bands]
    if params.band_scale is not None:
        composite = composite.multiply(ee.Image.constant(
            [params.band_scale[index.index(b)] for b in bands]))  # fmt: skip
    if params.band_offset is not None:
        composite = composite.add(ee.Image.constant(
            [params.band_offset[index.index(b)] for b in bands]))  # fmt: skip
    return composite.rename(names)


def build_image(ee: Any, params: EEParams, outputs: Sequence[Output], *, year: int | None,
                dtype: str, nodata: float, scale: float, region: Any,
                resample: str | None = None) -> Any:  # fmt: skip
    """The image whose bands are ``outputs`` (in that order), encoded as the recipe says.

    ``resample`` (``bilinear`` / ``bicubic``; None = nearest, Earth Engine's default) is set
    on the input images, where it acts when the service reprojects them onto the request's
    grid. The cast happens on the server: means and medians are float64 there, twice the bytes
    of float32, and a request is limited to 48 MiB. Masked pixels (no image, clouds, outside
    the data) become the recipe's nodata.
    """
    parts: dict[tuple[str, str], list[Output]] = {}
    for output in outputs:
        parts.setdefault(output.part, []).append(output)
    images = [_part_image(ee, params, year, part, region, resample) for part in parts.values()]
    image = images[0] if len(images) == 1 else ee.Image.cat(images)
    image = image.select([o.name for o in outputs])
    if scale != 1.0:
        image = image.multiply(scale)
    integer = not dtype.startswith("float")
    if integer and (scale != 1.0 or params.reducer in ("mean", "median", "sum") or resample
                    or params.band_scale or params.band_offset):  # fmt: skip
        image = image.round()
    image = image.unmask(nodata, False)
    return getattr(image, CASTS[dtype])()


def count_images(ee: Any, params: EEParams, parts: Sequence[tuple[Window | None, str]],
                 year: int | None, region: Any) -> Any:  # fmt: skip
    """A dictionary ``{"0": n, ...}``: how many images each (window, group) has over ``region``."""
    return ee.Dictionary(
        {
            str(index): _collection(ee, params, year, window, group, region).size()
            for index, (window, group) in enumerate(parts)
        }
    )


def band_chunks(count: int, bytes_per_band: int, max_bytes: int, max_bands: int
                ) -> list[range]:  # fmt: skip
    """Split ``count`` bands into as few even requests as fit the service's limits."""
    per_request = max(1, min(max_bands, max_bytes // max(1, bytes_per_band)))
    requests = -(-count // per_request)
    size = -(-count // requests)
    return [range(start, min(count, start + size)) for start in range(0, count, size)]
