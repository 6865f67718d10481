"""GUNW products as search results: parsing, pair selection and tile assignment (pure logic).

A search result (asf-search's ``ASFSearchResults.geojson()``, which is also what ASF's
Vertex exports) is a GeoJSON FeatureCollection; each feature is one ARIA S1 GUNW product
with its footprint and properties such as ``fileID``, ``url``, ``bytes``, ``frameNumber``,
``pathNumber``, ``flightDirection`` and ``ariaVersion``. Everything the chips need about a
product is in its name (``S1-GUNW-A-R-064-tops-20200117_20200105-020815-11820W_03380N-PP-
5a3b-v3_0_1``: direction, track, reference and secondary dates, version) and in those
properties, so this module never opens a file and is tested without any service.

Rules (issue #12):

* A pair belongs to the year of its *reference* date, which in ARIA's naming is the later
  acquisition (``20200117_20200105``): a pair of 2019-12-30 and 2020-01-11 is a 2020 pair.
* Pairs whose temporal baseline is not *under* ``max_baseline_days`` are dropped.
* ARIA reprocesses pairs (v2_0_4, then v3_0_1...): of the products with the same dates,
  direction, track and frame only the newest version is kept.
* A tile takes every kept product whose footprint intersects it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.grid.tile import GridTile, lonlat_polygons

NAME = re.compile(
    r"^S1-GUNW-(?P<direction>[AD])-R-(?P<track>\d{3})-tops-(?P<reference>\d{8})_"
    r"(?P<secondary>\d{8})-(?P<time>\d{6})-(?P<place>[0-9]{5}[NSEW]_[0-9]{5}[NSEW])-PP-"
    r"(?P<hash>[0-9a-z]+)-v(?P<version>\d+(?:_\d+)*)$"
)
DIRECTIONS = {"A": "ascending", "D": "descending"}


@dataclass(frozen=True)
class GunwProduct:
    """One GUNW product as the search described it."""

    name: str  # without extension
    url: str
    file_name: str  # the product's own file name (what --source folders and the cache hold)
    size: int | None  # bytes, from the search; None when the search did not say
    reference: dt.date  # later acquisition
    secondary: dt.date  # earlier acquisition
    direction: str  # ascending | descending
    track: int
    frame: str  # ASF frame number, or the name's place code when the search has none
    version: tuple[int, ...]
    footprint_wkt: str
    md5: str | None = None  # checksum of the file, from the search, when it gives one

    @property
    def baseline_days(self) -> int:
        return abs((self.reference - self.secondary).days)

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def pair(self) -> tuple[dt.date, dt.date, str, int]:
        """What makes adjacent frames one interferogram: dates, direction, track."""
        return (self.reference, self.secondary, self.direction, self.track)

    @property
    def identity(self) -> tuple[dt.date, dt.date, str, int, str]:
        """What makes two products versions of each other: the pair and the frame."""
        return (*self.pair, self.frame)

    def footprint(self) -> BaseGeometry:
        return shapely.from_wkt(self.footprint_wkt)


def _date(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()


def parse_feature(feature: Mapping[str, Any], where: str) -> GunwProduct | None:
    """A product from one GeoJSON feature; None for a feature that is not a GUNW product."""
    properties = feature.get("properties") or {}
    name = str(properties.get("fileID") or properties.get("sceneName") or "")
    name = name.removesuffix(".nc")
    match = NAME.match(name)
    if not match:
        return None
    geometry = feature.get("geometry")
    if not geometry:
        raise ConfigError(f"{where}: product {name} has no footprint geometry")
    try:
        footprint = shape(geometry)
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise ConfigError(f"{where}: product {name} has a bad geometry ({error})") from None
    url = str(properties.get("url") or "")
    file_name = _file_name(properties.get("fileName"), url) or f"{name}.nc"
    size = properties.get("bytes")
    frame = properties.get("frameNumber")
    track = properties.get("pathNumber")
    return GunwProduct(
        name=name,
        url=url,
        file_name=file_name,
        size=int(size) if isinstance(size, int | float) or str(size or "").isdigit() else None,
        reference=_date(match["reference"]),
        secondary=_date(match["secondary"]),
        direction=DIRECTIONS[match["direction"]],
        track=int(track) if track is not None else int(match["track"]),
        frame=str(frame) if frame not in (None, "", -1) else match["place"],
        version=tuple(int(v) for v in match["version"].split("_")),
        footprint_wkt=footprint.wkt,
        md5=str(properties["md5sum"]).lower() if properties.get("md5sum") else None,
    )


def _file_name(given: Any, url: str) -> str:
    """The product's file name (what the cache, the manifest and chip tags call it): the
    search's ``fileName``, else the URL's last path part, never with a query. asf-search
    builds ``fileName`` from the URL's text (``fileID + '.' + url.split('.')[-1]``), so a
    signed URL (``...nc?X-Amz-Signature=...``) would carry its signature into all of them."""
    name = str(given or "").partition("?")[0]
    return name or PurePosixPath(urlsplit(url).path).name


def check_md5(path: Path, expected: str) -> None:
    """Raise when the file's MD5 is not the one the search gave (a damaged download)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ValueError(f"MD5 {digest.hexdigest()} differs from the search's {expected}")


def parse_results(data: Any, where: str) -> list[GunwProduct]:
    """Products of a FeatureCollection (non-GUNW features are skipped, duplicates merged)."""
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise ConfigError(
            f"{where}: not a saved search (a GeoJSON FeatureCollection as asf-search's "
            "ASFSearchResults.geojson() or Vertex writes it)"
        )
    features = data.get("features")
    if not isinstance(features, list):
        raise ConfigError(f"{where}: 'features' must be a list")
    products: dict[str, GunwProduct] = {}
    for feature in features:
        if isinstance(feature, dict):
            product = parse_feature(feature, where)
            if product is not None:
                products.setdefault(product.name, product)
    return list(products.values())


def load_results(path: Path) -> list[GunwProduct]:
    """A saved search from disk; a missing or malformed file is a ConfigError (exit 2)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read saved search {path}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not JSON ({error.msg}, line {error.lineno})") from None
    return parse_results(data, str(path))


def select_pairs(
    products: Iterable[GunwProduct],
    year: int | None,
    max_baseline_days: float,
    excluded: Counter[str] | None = None,
) -> list[GunwProduct]:
    """Pairs of ``year`` (by reference date) under the baseline cut, newest version each;
    ``excluded`` counts the products each rule left out (a run that finds nothing says why)."""
    excluded = Counter() if excluded is None else excluded
    newest: dict[tuple, GunwProduct] = {}
    candidates = 0
    for product in products:
        if year is not None and product.reference.year != year:
            excluded[f"reference date not in {year}"] += 1
            continue
        if not product.baseline_days < max_baseline_days:
            excluded[f"temporal baseline of {max_baseline_days:g} days or more"] += 1
            continue
        candidates += 1
        kept = newest.get(product.identity)
        if kept is None or (product.version, product.name) > (kept.version, kept.name):
            newest[product.identity] = product
    if candidates > len(newest):
        excluded["an older version of a kept product"] += candidates - len(newest)
    return sorted(
        newest.values(), key=lambda p: (p.reference, p.secondary, p.direction, p.track, p.frame)
    )


ASSIGN_CHUNK = 20_000  # tiles queried at once: bounds the (tile, product) pairs held


def assign(
    products: Sequence[GunwProduct], tiles: Sequence[GridTile]
) -> dict[str, tuple[str, ...]]:
    """Each tile's products (file names, sorted): those whose footprint intersects it.

    A year over CONUS is 400k tiles x 100-250 products each: tens of millions of pairs.
    Tiles are queried in chunks, and each distinct product list is made once (tiles of one
    frame overlap share it) and shared, so the plan holds thousands of lists, not 400k.
    """
    if not products or not tiles:
        return {tile.identifier: () for tile in tiles}
    ordered = sorted(products, key=lambda p: p.file_name)  # index order is name order
    names = [p.file_name for p in ordered]
    tree = shapely.STRtree([product.footprint() for product in ordered])
    lists: dict[bytes, tuple[str, ...]] = {b"": ()}
    found: dict[str, tuple[str, ...]] = {}
    for start in range(0, len(tiles), ASSIGN_CHUNK):
        chunk = tiles[start : start + ASSIGN_CHUNK]
        tile_index, product_index = tree.query(lonlat_polygons(chunk), predicate="intersects")
        order = np.lexsort((product_index, tile_index))
        tile_index, product_index = tile_index[order], product_index[order]
        bounds = np.searchsorted(tile_index, np.arange(len(chunk) + 1))
        for position, tile in enumerate(chunk):
            key = product_index[bounds[position] : bounds[position + 1]].tobytes()
            names_of = lists.get(key)
            if names_of is None:
                indexes = np.frombuffer(key, dtype=product_index.dtype)
                names_of = lists[key] = tuple(dict.fromkeys(names[i] for i in indexes.tolist()))
            found[tile.identifier] = names_of
    return found


def search_cells(tiles: Sequence[GridTile], degrees: float) -> list[tuple[str, BaseGeometry]]:
    """The lon/lat cells (``degrees`` square, on a global lattice) that the tiles touch.

    The search is made and cached one cell at a time: each request's polygon stays simple
    (CMR and asf-search simplify complex ones) and small, however large the AOI, and a later
    run over any subset of the same tiles (a rerun of failed tiles, another split) finds every
    cell it needs already answered. Names are stable: ``W118.0_N34.0_2`` (west, south, size).
    """
    keys: set[tuple[int, int]] = set()
    for polygon in lonlat_polygons(tiles):
        west, south, east, north = polygon.bounds
        for i in range(
            math.floor((west + 180.0) / degrees), math.floor((east + 180.0) / degrees) + 1
        ):
            for j in range(
                math.floor((south + 90.0) / degrees), math.floor((north + 90.0) / degrees) + 1
            ):
                keys.add((i % round(360.0 / degrees), j))
    cells = []
    for i, j in sorted(keys):
        west, south = -180.0 + i * degrees, -90.0 + j * degrees
        east, north = min(180.0, west + degrees), min(90.0, south + degrees)
        name = (
            f"{'W' if west < 0 else 'E'}{abs(west):g}_{'S' if south < 0 else 'N'}"
            f"{abs(south):g}_{degrees:g}"
        )
        cells.append((name, box(west, max(-90.0, south), east, north)))
    return cells
