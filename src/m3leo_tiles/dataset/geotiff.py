"""Chip GeoTIFF bytes: GDAL decides the georeferencing once, tifffile writes every chip.

Why not let GDAL's GTiff driver write each chip? For a 50×50 chip it spends ~0.55 ms on
creating a dataset, exporting the CRS to GeoTIFF keys and serialising metadata: as much as the
warp itself (bench/RESULTS.md). All chips of one dataset and UTM zone share everything but
their corner, their pixels and two tag values, so:

* the first chip of a *kind* (CRS, pixel size, shape, dtype, nodata, band names, tag names,
  per-band tags) is encoded by GDAL, as before: the **template**;
* its GeoTIFF keys (tags 34735-34737), its nodata (42113) and its GDAL metadata XML (42112,
  band descriptions and tags) are kept verbatim, and every later chip of that kind is written
  by tifffile (the same codec, level, predictor and layout) with those tags, its own
  tiepoint (33922) and its own tag values put into the template's XML.

The codec is a choice (``ChipCodec``, ``CODECS``): zstd by default, deflate as chips were
written before (still read everywhere), lzw, or none (bench/RESULTS.md, "chip codecs").

GDAL reads such a chip back exactly as it reads the chip it would have written itself (CRS,
transform, nodata, band descriptions, tags, compression, predictor, block layout, pixels:
``tests/test_geotiff.py`` checks each against a GDAL-encoded chip), with one addition: TIFF's
baseline resolution tags (1 pixel per unit, no unit), which tifffile always writes and GDAL
lists as ``TIFFTAG_XRESOLUTION``/``TIFFTAG_YRESOLUTION``/``TIFFTAG_RESOLUTIONUNIT``.
A transform GeoTIFF cannot express as pixel scale + tiepoint (a rotated grid) would make GDAL
write a full matrix instead; such kinds simply stay with GDAL.
"""

from __future__ import annotations

import dataclasses
import io
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from xml.sax.saxutils import escape

import numpy as np
import tifffile
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from m3leo_tiles.core.enums import ChipCodec

TILED_FROM_PX = 256  # deflate: smaller chips are one strip: tiling them only adds padding
BLOCK_PX = 256
DEFLATE_LEVEL = 6  # GDAL's default ZLEVEL, so both encoders make the same trade-off
# Kinds remembered per process. A dataset has a handful (one per UTM zone); a source whose
# band list changes per tile (GUNW pairs) would otherwise grow the cache with every tile.
MAX_TEMPLATES = 64
BAND_ROLES = ("scale", "offset")  # band metadata keys written as GDAL's scale and offset
# TIFF tags: GeoTIFF's georeferencing, and GDAL's own nodata and metadata tags.
MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION = 33550, 33922, 34264
GEO_KEYS, GEO_DOUBLES, GEO_ASCII = 34735, 34736, 34737
GDAL_METADATA, GDAL_NODATA = 42112, 42113
SHORT, DOUBLE, ASCII = 3, 12, 2
PLACEHOLDER = "m3leo-per-chip-value-{index}-a1f3"  # unlikely in any real tag value
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")  # GDAL drops these


@dataclass(frozen=True)
class Codec:
    """How a ``ChipCodec`` stores pixels, in GDAL's creation options and tifffile's terms.

    The same settings drive both encoders, so GDAL's template and tifffile's later chips
    agree on compression, level, predictor and block layout.
    """

    gdal: str | None  # GDAL's COMPRESS (None: uncompressed)
    tifffile: str | None  # tifffile's compression name
    level: int | None = None
    level_option: str | None = None  # GDAL's creation option for the level
    # TIFF predictor for 8-bit integers, wider integers and floats: 1 none, 2 horizontal
    # differencing, 3 floating point
    predictors: tuple[int, int, int] = (1, 1, 1)
    tiled_from_px: int = TILED_FROM_PX  # chips this big (both sides) are tiled, others strips
    block_px: int = BLOCK_PX

    def predictor(self, dtype: str) -> int:
        kind = np.dtype(dtype)
        if kind.kind == "f":
            return self.predictors[2]
        return self.predictors[0] if kind.itemsize == 1 else self.predictors[1]


# Codecs GDAL ≥ 2.3 reads (ZSTD came in GDAL 2.3; deflate and lzw are baseline TIFF), chosen
# by bench/bench_codec.py (bench/RESULTS.md, "chip codecs"): for zstd, the predictor only
# where it shrinks chips without slowing their decode (uint16/int16), and chips up to
# 1024 px as one strip per band (a 448 px chip in 256 px tiles decodes 31 % padding).
STRIPS_UP_TO_1024 = {"tiled_from_px": 1025, "block_px": 512}
CODECS: dict[ChipCodec, Codec] = {
    # Chips as written before the choice existed, and still the same bytes.
    ChipCodec.DEFLATE: Codec("deflate", "zlib", DEFLATE_LEVEL, "zlevel", (2, 2, 3)),
    ChipCodec.ZSTD: Codec("zstd", "zstd", 1, "zstd_level", (1, 2, 1), **STRIPS_UP_TO_1024),
    ChipCodec.LZW: Codec("lzw", "lzw", None, None, (2, 2, 3)),
    ChipCodec.NONE: Codec(None, None, **STRIPS_UP_TO_1024),
}
DEFAULT_CODEC = ChipCodec.ZSTD


@lru_cache(maxsize=128)
def cached_crs(text: str) -> CRS:
    """Parsing a CRS costs more than encoding a small chip; tiles of a zone share one."""
    return CRS.from_user_input(text)


@dataclass(frozen=True)
class ChipKind:
    """What all chips of one template share: everything but corner, pixels and tag values."""

    crs: str
    pixel_size: tuple[float, float]  # (transform.a, transform.e)
    count: int
    height: int
    width: int
    dtype: str
    nodata: float | None
    band_names: tuple[str, ...]
    tag_names: tuple[str, ...]
    codec: ChipCodec = DEFAULT_CODEC
    # Per-band tags without GDAL roles, the same for every chip of the kind (Earth Engine's
    # source band and window): in the template's XML verbatim, not per-chip values.
    band_tags: tuple[tuple[tuple[str, str], ...], ...] = ()

    @property
    def floating(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    @property
    def settings(self) -> Codec:
        return CODECS[ChipCodec(self.codec)]

    @property
    def predictor(self) -> int:
        return self.settings.predictor(self.dtype)

    @property
    def tiled(self) -> bool:
        edge = self.settings.tiled_from_px
        return self.width >= edge and self.height >= edge


def gdal_profile(kind: ChipKind, transform: Affine) -> dict:
    """The creation options both encoders follow (the kind's codec, ``CODECS``)."""
    settings = kind.settings
    profile = {
        "driver": "GTiff",
        "width": kind.width,
        "height": kind.height,
        "count": kind.count,
        "dtype": kind.dtype,
        "crs": cached_crs(kind.crs),
        "transform": transform,
        "nodata": kind.nodata,
        "interleave": "band" if kind.count > 1 else "pixel",
    }
    if settings.gdal is not None:
        profile["compress"] = settings.gdal
        if settings.level_option is not None:
            profile[settings.level_option] = settings.level
        if kind.predictor != 1:
            profile["predictor"] = kind.predictor
    if kind.tiled:
        profile.update(tiled=True, blockxsize=settings.block_px, blockysize=settings.block_px)
    else:
        profile.update(tiled=False, blockysize=kind.height)
    return profile


def encode_with_gdal(
    data: np.ndarray,
    kind: ChipKind,
    transform: Affine,
    tags: Mapping[str, str],
    band_tags: Sequence[Mapping[str, str]] = (),
) -> bytes:
    """GDAL's own encoding of a chip: the reference, the template of each kind, and the
    encoder of chips with per-band ``scale``/``offset`` (which become GDAL's own) and of the
    first chip of a kind with other per-band tags (``ChipEncoder._template``)."""
    with MemoryFile() as memory:
        with memory.open(**gdal_profile(kind, transform)) as dataset:
            dataset.write(data.astype(kind.dtype, copy=False))
            for index, name in enumerate(kind.band_names, start=1):
                dataset.set_band_description(index, name)
            dataset.update_tags(**tags)
            if band_tags:
                roles = {role: [1.0 if role == "scale" else 0.0] * kind.count
                         for role in BAND_ROLES}  # fmt: skip
                for index, metadata in enumerate(band_tags, start=1):
                    plain = {k: str(v) for k, v in metadata.items() if k not in BAND_ROLES}
                    if plain:
                        dataset.update_tags(index, **plain)
                    for role in BAND_ROLES:
                        if role in metadata:
                            roles[role][index - 1] = float(metadata[role])
                if any(role in m for m in band_tags for role in BAND_ROLES):
                    dataset.scales = roles["scale"]
                    dataset.offsets = roles["offset"]
        return memory.read()


@dataclass(frozen=True)
class Template:
    """The tags GDAL wrote for a kind, ready to be reused by tifffile."""

    geo_tags: tuple[tuple[int, int, int, object, bool], ...]
    nodata_text: str | None
    metadata_xml: str | None  # with PLACEHOLDER values for the per-chip tags

    @classmethod
    def from_gdal(cls, kind: ChipKind, transform: Affine) -> Template | None:
        """Encode one placeholder chip with GDAL and keep its tags; None: keep using GDAL."""
        placeholders = {
            name: PLACEHOLDER.format(index=index) for index, name in enumerate(kind.tag_names)
        }
        blank = np.zeros((kind.count, kind.height, kind.width), dtype=kind.dtype)
        band_tags = [dict(pairs) for pairs in kind.band_tags]
        encoded = encode_with_gdal(blank, kind, transform, placeholders, band_tags)
        with tifffile.TiffFile(io.BytesIO(encoded)) as tiff:
            tags = tiff.pages[0].tags
            if MODEL_TRANSFORMATION in tags or MODEL_TIEPOINT not in tags:
                return None  # a rotated grid: GDAL wrote a matrix we do not rebuild
            geo_tags = []
            for code, dtype in ((GEO_KEYS, SHORT), (GEO_DOUBLES, DOUBLE), (GEO_ASCII, ASCII)):
                if code in tags:
                    value = tags[code].value
                    if dtype == ASCII:  # tifffile takes only 7-bit str; bytes pass as they are
                        value = value.encode("utf-8")
                    count = 0 if dtype == ASCII else len(value)
                    geo_tags.append((code, dtype, count, value, True))
            nodata = tags[GDAL_NODATA].value if GDAL_NODATA in tags else None
            metadata = tags[GDAL_METADATA].value if GDAL_METADATA in tags else None
        return cls(tuple(geo_tags), nodata, metadata)

    def metadata_for(self, kind: ChipKind, tags: Mapping[str, str]) -> str | None:
        if self.metadata_xml is None:
            return None
        xml = self.metadata_xml
        for index, name in enumerate(kind.tag_names):
            xml = xml.replace(PLACEHOLDER.format(index=index), gdal_xml_text(tags[name]))
        return xml


def gdal_xml_text(value: str) -> str:
    """A tag value as GDAL's GTiff driver puts it in its metadata XML: escaped *twice*.

    GDAL escapes each value (``CPLEscapeString``, ``CPLES_XML``: ``& < > "``; control
    characters other than tab and newlines dropped) and then serialises the XML, which escapes
    the text again; its reader undoes both. A value escaped only once would be cut at its
    first ``&`` when GDAL reads it back.
    """
    once = escape(CONTROL_CHARACTERS.sub("", value), {'"': "&quot;"})
    return escape(once, {'"': "&quot;"})


class ChipEncoder:
    """Encodes chips to GeoTIFF bytes, one GDAL template per kind, then tifffile.

    Thread-safe: templates are built under a lock and never change afterwards.
    """

    def __init__(self, max_templates: int = MAX_TEMPLATES) -> None:
        self._templates: OrderedDict[ChipKind, Template | None] = OrderedDict()
        self._seen: OrderedDict[ChipKind, None] = OrderedDict()  # band-tagged kinds met once
        self._max_templates = max_templates
        self._lock = threading.Lock()

    def _template(self, kind: ChipKind, transform: Affine) -> Template | None:
        with self._lock:
            if kind in self._templates:
                self._templates.move_to_end(kind)
                return self._templates[kind]
            if kind.band_tags and kind not in self._seen:
                # A template costs one more GDAL encode: worth it for a kind that comes
                # again, not for band tags unique to one chip. GDAL writes the first.
                self._seen[kind] = None
                if len(self._seen) > self._max_templates:
                    self._seen.popitem(last=False)
                return None
        template = Template.from_gdal(kind, transform)
        with self._lock:
            self._templates[kind] = template
            while len(self._templates) > self._max_templates:
                self._templates.popitem(last=False)
        return template

    @property
    def template_count(self) -> int:
        return len(self._templates)

    def encode(
        self,
        data: np.ndarray,
        crs: str,
        transform: Affine,
        dtype: str,
        nodata: float | None,
        band_names: Sequence[str],
        tags: Mapping[str, str],
        band_tags: Sequence[Mapping[str, str]] = (),
        codec: ChipCodec = DEFAULT_CODEC,
    ) -> bytes:
        count, height, width = data.shape
        kind = ChipKind(
            crs=crs,
            pixel_size=(transform.a, transform.e),
            count=count,
            height=height,
            width=width,
            dtype=dtype,
            nodata=nodata,
            band_names=tuple(band_names),
            tag_names=tuple(sorted(tags)),
            codec=ChipCodec(codec),
        )
        data = data.astype(dtype, copy=False)
        if any(role in metadata for metadata in band_tags for role in BAND_ROLES):
            return encode_with_gdal(data, kind, transform, tags, band_tags)  # GDAL's scales
        if band_tags:
            pairs = tuple(tuple(sorted((k, str(v)) for k, v in m.items())) for m in band_tags)
            kind = dataclasses.replace(kind, band_tags=pairs)
        north_up = transform.b == 0 and transform.d == 0 and transform.e < 0
        template = self._template(kind, transform) if north_up else None
        if template is None:
            return encode_with_gdal(data, kind, transform, tags, band_tags)
        return _encode_with_tifffile(data, kind, transform, template, tags)


def _encode_with_tifffile(
    data: np.ndarray, kind: ChipKind, transform: Affine, template: Template, tags: Mapping[str, str]
) -> bytes:
    extratags: list[tuple[int, int, int, object, bool]] = [
        (MODEL_PIXEL_SCALE, DOUBLE, 3, (transform.a, -transform.e, 0.0), True),
        (MODEL_TIEPOINT, DOUBLE, 6, (0.0, 0.0, 0.0, transform.c, transform.f, 0.0), True),
        *template.geo_tags,
    ]
    if template.nodata_text is not None:
        extratags.append((GDAL_NODATA, ASCII, 0, template.nodata_text, True))
    metadata = template.metadata_for(kind, tags)
    if metadata is not None:  # UTF-8, as GDAL writes it (band names, paths may be non-ASCII)
        extratags.append((GDAL_METADATA, ASCII, 0, metadata.encode("utf-8"), True))
    settings = kind.settings
    layout: dict[str, object] = (
        {"tile": (settings.block_px,) * 2} if kind.tiled else {"rowsperstrip": kind.height}
    )
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        data if kind.count > 1 else data[0],
        photometric="minisblack",
        planarconfig="separate" if kind.count > 1 else "contig",
        compression=settings.tifffile,  # zlib: TIFF compression 8, what GDAL calls DEFLATE
        compressionargs=None if settings.level is None else {"level": settings.level},
        predictor=kind.predictor if kind.predictor != 1 else None,
        metadata=None,
        software=False,
        extratags=extratags,
        **layout,
    )
    return buffer.getvalue()
