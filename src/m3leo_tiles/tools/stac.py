"""STAC vocabulary of a dataset: its Collection (a dict) and its Items (an Arrow table).

Why Arrow columns rather than ``pystac.Item`` objects: a CONUS dataset has 403k chips, and
403k Python objects (and their JSON) take minutes, while every Item of a dataset differs only
in its tile (id, footprint, transform), its file (size, checksum) and its split. So the Items
are built as columns, in the layout ``stac_geoparquet`` writes and reads (properties at the
top level, WKB geometry, ``bbox`` as a struct), and written with ``stac_geoparquet.arrow``;
the per-Item JSON of ``--json`` is read back from that table with its own reader.

What goes in (see ``catalog`` for where each value comes from):

* Collection: id ``<aoi>-<dataset>``, description, license and provenance (recipe name, hash,
  source, parameters) from the recipe; spatial and temporal extent; the bands (name, data
  type, nodata, unit, ``raster:scale``/``raster:offset``, the source's band metadata) in
  ``item_assets``; the grid and the splits in ``summaries`` and ``m3leo:grid``.
* Item: id = tile id; lon/lat footprint and bbox; ``proj:code``, ``proj:shape``,
  ``proj:transform``, ``proj:bbox``; ``start_datetime``/``end_datetime`` of the year (and its
  windows) or of a GUNW tile's pairs; the chip as asset ``chip`` (relative href,
  ``file:size``, ``file:checksum``, ``bands``); ``ml-aoi:split`` (train, validate, test).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from m3leo_tiles import __version__
from m3leo_tiles.core.enums import Split
from m3leo_tiles.core.redact import redact

STAC_VERSION = "1.1.0"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
ML_AOI = "https://stac-extensions.github.io/ml-aoi/v0.2.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v2.0.0/schema.json"
GEOTIFF = "image/tiff; application=geotiff"
ASSET = "chip"
# ML-AOI names the validation split "validate"; ours is "val".
ML_AOI_SPLIT = {str(Split.TRAIN): "train", str(Split.VAL): "validate", str(Split.TEST): "test"}
CRC32_MULTIHASH = "b20204"  # multicodec crc32 (0x0132) as a varint, then the digest length 4
SOFTWARE = f"m3leo-tiles {__version__}"


def multihash_crc32(crc32: str) -> str:
    """The manifest's CRC-32 (8 hex digits) as the multihash ``file:checksum`` expects."""
    return f"{CRC32_MULTIHASH}{crc32.lower()}" if len(crc32) == 8 else ""


def stac_nodata(value: float | None) -> float | int | str | None:
    """STAC writes a NaN or infinite nodata as the strings ``nan``, ``inf``, ``-inf``."""
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class Band:
    """One band as STAC describes it (a band object of the STAC 1.1 ``bands`` list)."""

    name: str
    data_type: str
    nodata: float | None
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    metadata: Mapping[str, str] | None = None  # the band tags the source wrote

    def as_stac(self, *, with_scaling: bool, with_metadata: bool = True) -> dict[str, Any]:
        band: dict[str, Any] = {"name": self.name, "data_type": self.data_type}
        nodata = stac_nodata(self.nodata)
        if nodata is not None:
            band["nodata"] = nodata
        if self.unit:
            band["unit"] = self.unit
        if with_scaling:
            band["raster:scale"] = self.scale
            band["raster:offset"] = self.offset
        if with_metadata and self.metadata:
            band["m3leo:metadata"] = {k: redact(str(v)) for k, v in self.metadata.items()}
        return band


def has_scaling(bands: Sequence[Band]) -> bool:
    return any(b.scale != 1.0 or b.offset != 0.0 for b in bands)


def bands_as_stac(bands: Sequence[Band], *, with_metadata: bool = True) -> list[dict[str, Any]]:
    scaling = has_scaling(bands)
    return [b.as_stac(with_scaling=scaling, with_metadata=with_metadata) for b in bands]


# --- time --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A closed time range, what ``start_datetime``/``end_datetime`` say."""

    start: datetime
    end: datetime

    @classmethod
    def of_days(cls, first: date, after_last: date) -> Period:
        """From the first day to the end of the day before ``after_last`` (end-exclusive)."""
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        stop = datetime(after_last.year, after_last.month, after_last.day, tzinfo=UTC)
        return cls(start, stop - timedelta(seconds=1))

    def union(self, other: Period) -> Period:
        return Period(min(self.start, other.start), max(self.end, other.end))


def _month_day(year: int, text: str) -> date:
    month, day = (int(part) for part in str(text).split("-"))
    return date(year, month, day)


def period_of(windows: Sequence[Mapping[str, Any]], year: int, *, inclusive_end: bool) -> Period:
    """The span of a year's windows (``start``/``end`` ``MM-DD``, ``start_year`` -1/0/1);
    the whole year without windows. An end on or before its start is in the next year."""
    if not windows:
        return Period.of_days(date(year, 1, 1), date(year + 1, 1, 1))
    spans = []
    for window in windows:
        shift = int(window.get("start_year", 0))
        start = _month_day(year + shift, window["start"])
        end = _month_day(year + shift, window["end"])
        if end <= start and not (inclusive_end and end == start):
            end = _month_day(year + shift + 1, window["end"])
        spans.append(Period.of_days(start, end + timedelta(days=1) if inclusive_end else end))
    total = spans[0]
    for span in spans[1:]:
        total = total.union(span)
    return total


# --- the Collection ----------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionInfo:
    """What the Collection says beyond its Items' extent: from the recipe and the chips."""

    id: str
    title: str
    description: str
    license: str
    bands: tuple[Band, ...]
    bands_per_tile: bool
    provenance: Mapping[str, Any]
    grid: Mapping[str, Any]
    shape: tuple[int, int]


def collection_dict(
    info: CollectionInfo,
    bbox: Sequence[float],
    period: Period | None,
    splits: Sequence[str],
    epsg_codes: Sequence[str],
    item_links: Sequence[str] = (),
) -> dict[str, Any]:
    """The STAC Collection of a dataset; ``item_links``: relative hrefs of Item JSON files."""
    extensions = [PROJECTION, FILE]
    if splits:
        extensions.append(ML_AOI)
    if has_scaling(info.bands):
        extensions.append(RASTER)
    interval = [[_iso(period.start), _iso(period.end)]] if period else [[None, None]]
    summaries: dict[str, Any] = {"proj:code": sorted(epsg_codes), "proj:shape": [list(info.shape)]}
    if splits:
        summaries["ml-aoi:split"] = sorted(ML_AOI_SPLIT[s] for s in splits)
    chip_asset: dict[str, Any] = {"type": GEOTIFF, "roles": ["data"], "title": "chip"}
    if not info.bands_per_tile:
        chip_asset["bands"] = bands_as_stac(info.bands)
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": "./collection.json", "type": "application/json"},
    ]
    links += [{"rel": "item", "href": href, "type": "application/geo+json"} for href in item_links]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions,
        "id": info.id,
        "title": info.title,
        "description": info.description,
        "license": info.license,
        "providers": [{"name": SOFTWARE, "roles": ["processor"]}],
        "extent": {"spatial": {"bbox": [list(bbox)]}, "temporal": {"interval": interval}},
        "summaries": summaries,
        "item_assets": {ASSET: chip_asset},
        "assets": {
            "geoparquet-items": {
                "href": "./items.parquet",
                "type": "application/vnd.apache.parquet",
                "title": "the Items (stac-geoparquet)",
                "roles": ["stac-items"],
            }
        },
        "links": links,
        "m3leo:provenance": dict(info.provenance),
        "m3leo:grid": dict(info.grid),
    }


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the Items as columns ----------------------------------------------------------------


@dataclass(frozen=True)
class ItemColumns:
    """One row per chip: what differs from Item to Item, as arrays (all of length n)."""

    ids: Sequence[str]
    epsg: np.ndarray  # int
    transforms: np.ndarray  # n x 6 (a, b, c, d, e, f)
    shapes: np.ndarray  # n x 2 (height, width)
    footprints: np.ndarray  # n x 4 x 2 lon/lat corners (ring without the closing point)
    sizes: np.ndarray  # int, bytes
    checksums: Sequence[str]  # multihash or ""
    splits: Sequence[str | None]  # ours (train/val/test) or None
    starts: np.ndarray  # datetime64[s]
    ends: np.ndarray  # datetime64[s]
    bands: Sequence[Sequence[Band]] | None = None  # per Item (bands_per_tile), else None
    extra: Sequence[Mapping[str, Any]] | None = None  # per-Item properties (GUNW pairs)


def _lists(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """An n x k array as an Arrow list column (no Python objects per row)."""
    n, k = values.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.ravel(), type=value_type))


def _repeat(value: Any, n: int, value_type: pa.DataType | None = None) -> pa.Array:
    one = pa.array([value], type=value_type)
    return one.take(pa.array(np.zeros(n, dtype=np.int64)))


def _wkb_polygons(corners: np.ndarray) -> pa.Array:
    """WKB of one closed 4-corner polygon per row, written with numpy (little-endian)."""
    n = corners.shape[0]
    ring = np.concatenate([corners, corners[:, :1]], axis=1).astype("<f8")  # n x 5 x 2
    header = np.zeros(n, dtype=[("order", "u1"), ("kind", "<u4"), ("rings", "<u4"),
                                ("points", "<u4")])  # fmt: skip
    header["order"], header["kind"], header["rings"], header["points"] = 1, 3, 1, 5
    record = np.empty(n, dtype=[("header", header.dtype), ("xy", "<f8", (10,))])
    record["header"] = header
    record["xy"] = ring.reshape(n, 10)
    width = record.dtype.itemsize
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    buffers = [None, offsets.buffers()[1], pa.py_buffer(record.tobytes())]
    return pa.BinaryArray.from_buffers(pa.binary(), n, buffers)


def items_table(
    columns: ItemColumns,
    collection_id: str,
    shared_bands: Sequence[Band],
    geometry_field: pa.Field,
    *,
    has_split: bool,
) -> pa.Table:
    """The Items in stac-geoparquet's Arrow layout; ``geometry_field`` is the field its own
    converter declares (the geoarrow WKB extension), so readers see exactly its format.
    ``has_split``: whether the dataset's Items carry ``ml-aoi:split`` (decided for all its
    tables, which must share one schema; an Item without one has it null)."""
    n = len(columns.ids)
    corners = columns.footprints
    lon, lat = corners[:, :, 0], corners[:, :, 1]
    transforms = columns.transforms
    heights = columns.shapes[:, 0].astype(np.float64)
    widths = columns.shapes[:, 1].astype(np.float64)
    x0 = transforms[:, 2]
    y1 = transforms[:, 5]
    x1 = x0 + transforms[:, 0] * widths
    y0 = y1 + transforms[:, 4] * heights
    extensions = [PROJECTION, FILE] + ([ML_AOI] if has_split else [])
    per_item_bands = columns.bands is not None
    scaling = has_scaling(
        [b for bands in columns.bands for b in bands] if per_item_bands else shared_bands
    )
    if scaling:
        extensions.append(RASTER)
    if per_item_bands:
        bands = pa.array(
            [[b.as_stac(with_scaling=scaling) for b in item] for item in columns.bands]
        )
    else:
        shared = [b.as_stac(with_scaling=scaling, with_metadata=False) for b in shared_bands]
        bands = _repeat(shared, n)
    ids = list(columns.ids)
    asset = pa.StructArray.from_arrays(
        [
            pa.array([f"./{i}.tif" for i in ids]),
            _repeat(GEOTIFF, n),
            _repeat(["data"], n),
            pa.array(np.asarray(columns.sizes, dtype=np.int64)),
            pa.array([c or None for c in columns.checksums], type=pa.string()),
            bands,
        ],
        names=["href", "type", "roles", "file:size", "file:checksum", "bands"],
    )
    arrays: dict[str, pa.Array] = {
        "type": _repeat("Feature", n),
        "stac_version": _repeat(STAC_VERSION, n),
        "stac_extensions": _repeat(extensions, n),
        "id": pa.array(ids, type=pa.string()),
        "collection": _repeat(collection_id, n),
        "geometry": _wkb_polygons(corners),
        "bbox": pa.StructArray.from_arrays(
            [
                pa.array(lon.min(axis=1)),
                pa.array(lat.min(axis=1)),
                pa.array(lon.max(axis=1)),
                pa.array(lat.max(axis=1)),
            ],
            names=["xmin", "ymin", "xmax", "ymax"],
        ),
        "links": _repeat(
            [{"rel": "collection", "href": "./collection.json", "type": "application/json"}], n
        ),
        "assets": pa.StructArray.from_arrays([asset], names=[ASSET]),
        "datetime": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        "start_datetime": pa.array(
            columns.starts.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC")
        ),
        "end_datetime": pa.array(
            columns.ends.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC")
        ),
        "proj:code": pa.array([f"EPSG:{int(e)}" for e in columns.epsg], type=pa.string()),
        "proj:shape": _lists(np.asarray(columns.shapes, dtype=np.int64), pa.int64()),
        "proj:transform": _lists(np.asarray(transforms, dtype=np.float64), pa.float64()),
        "proj:bbox": _lists(np.stack([x0, y0, x1, y1], axis=1), pa.float64()),
    }
    if has_split:
        arrays["ml-aoi:split"] = pa.array(
            [ML_AOI_SPLIT[s] if s is not None else None for s in columns.splits], pa.string()
        )
    if columns.extra is not None:
        keys = sorted({key for extra in columns.extra for key in extra})
        for key in keys:
            arrays[key] = pa.array([extra.get(key) for extra in columns.extra])
    fields = [geometry_field if name == "geometry" else pa.field(name, array.type)
              for name, array in arrays.items()]  # fmt: skip
    return pa.Table.from_arrays(list(arrays.values()), schema=pa.schema(fields))


def geometry_field() -> pa.Field:
    """The geometry field stac-geoparquet's own converter declares (WKB, WGS84)."""
    import stac_geoparquet.arrow as sga

    sample = {
        "type": "Feature", "stac_version": STAC_VERSION, "id": "x", "links": [], "assets": {},
        "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}, "bbox": [0, 0, 0, 0],
        "properties": {"datetime": "2020-01-01T00:00:00Z"},
    }  # fmt: skip
    reader = sga.parse_stac_items_to_arrow([sample])
    return reader.schema.field("geometry")


def dumps(value: Any) -> str:
    """Collection and Item JSON: strict (no NaN literal), stable key order for diffs."""
    from m3leo_tiles.core import strict_json

    return strict_json.dumps(value, indent=1, default=str) + "\n"


def fingerprint_text(value: Any) -> str:
    """A canonical text of a value, for fingerprints (what decides an Item's content)."""
    return json.dumps(value, sort_keys=True, default=str)


def odc_stac_config(collection: Mapping[str, Any]) -> dict[str, Any]:
    """``stac_cfg`` for ``odc.stac.load``: each band's name as an alias of its place in the
    chip asset.

    odc-stac names the bands of a multi-band asset ``chip.1``, ``chip.2``... (it takes names
    only from the EO extension, whose bands need a wavelength or common name we do not
    have); with this, ``odc.stac.load(items, bands=["B2"], stac_cfg=odc_stac_config(c))``.
    Datasets whose bands differ per tile (GUNW) get no aliases: their names are per Item.
    """
    bands = collection.get("item_assets", {}).get(ASSET, {}).get("bands", [])
    aliases = {band["name"]: (ASSET, index) for index, band in enumerate(bands, start=1)}
    return {collection["id"]: {"aliases": aliases}}
