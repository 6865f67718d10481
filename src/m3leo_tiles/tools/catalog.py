"""A dataset folder as a STAC catalog: ``collection.json`` and ``items.parquet`` beside the chips.

Researchers find, share and load EO data through STAC (pystac, stac-geoparquet, odc-stac,
QGIS); a folder of GeoTIFFs and a CSV manifest is invisible to all of them. ``m3leo-tiles
catalog DATASET`` (and every ``fetch``, at its end) writes the Collection and the Items
(``tools.stac`` builds them); ``--json`` adds one Item JSON per chip under ``items/`` for
small datasets and static hosting.

Where each value comes from, without opening 400k chips:

* the manifest (``dataset.manifest``'s reader): which tiles are finished, their size and
  CRC-32 (``file:size``, ``file:checksum``); the folder scan: the chips present and, for
  chips made elsewhere, their size;
* one chip (the first; rasterio, so any codec): bands, data type, nodata, scale/offset, unit
  and band metadata, the pixel count. Chips whose band list is their own (GUNW pairs:
  ``bands_per_tile``) and chips of foreign (non-lattice) tiles are read one by one, once:
  what they said is kept in ``.catalog-state.parquet`` and read again only when they change;
* the tile id: the lattice tile, so its CRS, transform and lon/lat footprint are computed
  in bulk; the grid file: its split; the recipe (the one the chips name, when its hash
  matches theirs): description, license, provenance, the year's time windows.

Incremental: each Item has a fingerprint (its manifest row, size, split, and everything the
Collection gives all Items). A rerun with the same fingerprints writes nothing; otherwise it
rewrites ``items.parquet`` and ``collection.json`` whole (seconds, even for CONUS) and, with
``--json``, only the Item files of tiles that changed (and removes those of tiles gone).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from m3leo_tiles.core.atomic import replacing, write_text
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError, M3leoError
from m3leo_tiles.core.redact import redact
from m3leo_tiles.dataset.chipfile import crc32_hex
from m3leo_tiles.dataset.chipsets import (
    ChipInfo,
    find_dataset,
    grid_path_for,
    load_splits,
    parse_pair_band,
    read_chip_info,
)
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.manifest import ManifestRow, read_manifest
from m3leo_tiles.grid.tile import (
    SOUTH_FALSE_NORTHING_M,
    TILE_SIZE_M,
    to_lonlat_transformer,
    zone_central_meridian,
)
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.tools import stac
from m3leo_tiles.tools.stac import Band, Period

log = logging.getLogger("m3leo_tiles.catalog")

LATTICE_ID = r"^(\d{2})([NS])_(\d{4})_(\d{3})$"
YEAR_SUFFIX = re.compile(r"-(\d{4})$")
UNKNOWN_LICENSE = "other"  # STAC 1.1: an SPDX id, or "other" (the recipe names none)


@dataclass(frozen=True)
class CatalogReport:
    """What one ``catalog`` run wrote."""

    folder: Path
    items: int
    changed: int
    removed: int
    written: bool  # False: nothing changed since the last catalog, no file was touched
    json_items: int  # Item JSON files written (``--json``)
    seconds: float
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        if not self.written:
            what = "unchanged, nothing written"
        elif self.changed or self.removed:
            what = f"{self.changed:,} new or changed, {self.removed:,} removed"
        else:
            what = "Items unchanged, the Collection updated"
        extra = f", {self.json_items:,} Item JSON files" if self.json_items else ""
        lines = [f"{self.folder}: {self.items:,} Items ({what}{extra}), {self.seconds:.1f} s"]
        return "\n".join([*lines, *(f"  note: {note}" for note in self.notes)])


# --- what the dataset holds ---------------------------------------------------------------


@dataclass(frozen=True)
class _Chips:
    """The finished chips of a folder: ids (sorted) and their manifest rows and sizes."""

    ids: list[str]
    rows: Mapping[str, ManifestRow]
    sizes: Mapping[str, int]


def _finished_chips(layout: DatasetLayout) -> _Chips:
    """Tiles ``ok`` in the manifest whose chip is present (every chip when no manifest)."""
    sizes = layout.chip_sizes()
    if not layout.manifest.exists():
        return _Chips(sorted(sizes), {}, sizes)
    rows = read_manifest(layout.manifest, lean=True)  # no input lists: Items name none
    ids = sorted(i for i, row in rows.items() if row.status is TileStatus.OK and i in sizes)
    return _Chips(ids, rows, sizes)


def _bands_of(info: ChipInfo) -> tuple[Band, ...]:
    count = len(info.bands)
    scales = info.scales or (1.0,) * count
    offsets = info.offsets or (0.0,) * count
    units = info.units or ("",) * count
    return tuple(
        Band(name, info.dtype, info.nodata, unit, scale, offset, dict(metadata) or None)
        for name, metadata, scale, offset, unit in zip(
            info.bands, info.band_metadata, scales, offsets, units, strict=True
        )
    )


def _recipe_of(path: Path, notes: list[str]) -> Recipe | None:
    """The recipe the chips name, when it is found and its hash is theirs (else None)."""
    from m3leo_tiles.dataset.chipfile import read_chip_tags
    from m3leo_tiles.recipes import load_recipe

    tags = read_chip_tags(path)
    name, chip_hash = tags.get("recipe", ""), tags.get("recipe_hash", "")
    if not name:
        notes.append("the chips name no recipe: no description, license or provenance")
        return None
    try:
        recipe = load_recipe(name)
    except M3leoError:
        notes.append(f"recipe {name!r} of the chips not found: no description or license")
        return None
    if recipe.recipe_hash != chip_hash:
        notes.append(
            f"recipe {name!r} ({recipe.path}) has hash {recipe.recipe_hash}, the chips "
            f"{chip_hash}: not used (pass --recipe to name the file that made them)"
        )
        return None
    return recipe


def _check_hash(path: Path, recipe: Recipe, notes: list[str]) -> None:
    """A recipe named by the caller is used, but a hash other than the chips' is said."""
    from m3leo_tiles.dataset.chipfile import read_chip_tags

    chip_hash = read_chip_tags(path).get("recipe_hash", "")
    if chip_hash and chip_hash != recipe.recipe_hash:
        notes.append(
            f"recipe {recipe.name!r} has hash {recipe.recipe_hash}, the chips {chip_hash}: "
            "they were made by another version of it"
        )


def _year_of(folder: Path, recipe: Recipe | None) -> int | None:
    match = YEAR_SUFFIX.search(folder.name)
    if match is None:
        return None
    year = int(match.group(1))
    if recipe is not None and recipe.dataset_name(year) != folder.name:
        return None
    return year


def dataset_period(recipe: Recipe | None, year: int | None) -> Period | None:
    """The time a dataset of ``year`` covers: its windows' span, else the whole year.

    Windows are the recipe's (end inclusive) or its source's ``params.windows`` (Earth
    Engine's: end-exclusive, ``start_year``); None without a year (SRTM, WorldCover v100)."""
    if year is None:
        return None
    if recipe is not None and recipe.windows:
        windows = [asdict(w) for w in recipe.windows]
        return stac.period_of(windows, year, inclusive_end=True)
    params_windows = recipe.params.get("windows") if recipe is not None else None
    if isinstance(params_windows, list) and all(isinstance(w, dict) for w in params_windows):
        return stac.period_of(params_windows, year, inclusive_end=False)
    return stac.period_of((), year, inclusive_end=False)


def _splits(
    grid: str | Path | None, aoi: str, grids_dir: Path, notes: list[str]
) -> tuple[dict[str, str], Path | None]:
    """``tile id -> split`` of the grid (and the grid file), or nothing, with a note."""
    try:
        path = grid_path_for(grid, aoi, grids_dir)
        if not path.exists():
            notes.append(f"no grid {path}: Items carry no ml-aoi:split (pass --grid)")
            return {}, None
        return load_splits(path), path
    except M3leoError as error:
        notes.append(f"no splits ({error}): Items carry no ml-aoi:split")
        return {}, None


# --- per-chip headers (bands per tile, foreign tiles), cached between runs -----------------


def _header(path: Path) -> dict[str, Any]:
    """What a chip says about itself that the catalog needs, as JSON-able data."""
    info = read_chip_info(path)
    return {
        "crs": info.crs,
        "bounds": list(info.bounds),
        "shape": [info.height, info.width],
        "bands": [asdict(b) for b in _bands_of(info)],
    }


def _pairs(bands: Sequence[Band]) -> list[dict[str, Any]]:
    """The interferometric pairs of a chip's bands (GUNW), once each, from band metadata."""
    pairs: dict[tuple[str, ...], dict[str, Any]] = {}
    for band in bands:
        metadata = dict(band.metadata or {})
        pair = parse_pair_band(band.name, metadata)
        if pair is None:
            continue
        key = (pair.reference.isoformat(), pair.secondary.isoformat(),
               metadata.get("direction", ""), metadata.get("track", ""))  # fmt: skip
        entry = pairs.setdefault(key, {
            "reference_date": key[0], "secondary_date": key[1],
            "temporal_baseline_days": pair.baseline_days, "layers": [],
            **{k: metadata[k] for k in ("direction", "track", "frame", "product", "version")
               if k in metadata},
        })  # fmt: skip
        entry["layers"].append(pair.layer)
    return list(pairs.values())


# --- the Items' columns ----------------------------------------------------------------------


def _lattice_columns(ids: Sequence[str], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """CRS, transform and lon/lat corners of lattice tiles, computed per UTM zone in bulk."""
    # Lattice ids are fixed-width ASCII (33N_1187_089): parsed as a byte matrix, no regex.
    chars = np.frombuffer(np.array(ids, dtype="S12").tobytes(), dtype=np.uint8)
    chars = chars.reshape(len(ids), 12).astype(np.int64)
    digits = chars - ord("0")
    zone = digits[:, 0] * 10 + digits[:, 1]
    south = chars[:, 2] == ord("S")
    number = digits[:, 4] * 1000 + digits[:, 5] * 100 + digits[:, 6] * 10 + digits[:, 7]
    col = digits[:, 9] * 100 + digits[:, 10] * 10 + digits[:, 11]
    row = np.where(south, -number - 1, number)
    epsg = np.where(south, 32700, 32600) + zone
    x0 = col * TILE_SIZE_M
    y0 = row * TILE_SIZE_M + np.where(south, SOUTH_FALSE_NORTHING_M, 0)
    height, width = shape
    transforms = np.zeros((len(ids), 6))
    transforms[:, 0] = TILE_SIZE_M / width
    transforms[:, 2] = x0
    transforms[:, 4] = -TILE_SIZE_M / height
    transforms[:, 5] = y0 + TILE_SIZE_M
    corners = np.zeros((len(ids), 4, 2))
    for code in np.unique(epsg):
        chosen = epsg == code
        xs = np.stack([x0, x0 + TILE_SIZE_M, x0 + TILE_SIZE_M, x0], axis=1)[chosen]
        ys = np.stack([y0, y0, y0 + TILE_SIZE_M, y0 + TILE_SIZE_M], axis=1)[chosen]
        lons, lats = to_lonlat_transformer(int(code)).transform(xs, ys)
        meridian = zone_central_meridian(int(code) % 100)
        corners[chosen, :, 0] = meridian + ((np.asarray(lons) - meridian + 180) % 360) - 180
        corners[chosen, :, 1] = lats
    shapes = np.tile(np.array(shape, dtype=np.int64), (len(ids), 1))
    return {"epsg": epsg, "transforms": transforms, "footprints": corners, "shapes": shapes}


def _header_columns(headers: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The same columns for chips of foreign tiles, from their own headers."""
    from pyproj import CRS, Transformer

    n = len(headers)
    epsg = np.zeros(n, dtype=np.int64)
    transforms = np.zeros((n, 6))
    corners = np.zeros((n, 4, 2))
    shapes = np.zeros((n, 2), dtype=np.int64)
    for index, header in enumerate(headers):
        crs = CRS.from_user_input(header["crs"])
        epsg[index] = crs.to_epsg() or 0
        x0, y0, x1, y1 = header["bounds"]
        height, width = header["shape"]
        transforms[index] = ((x1 - x0) / width, 0, x0, 0, -(y1 - y0) / height, y1)
        shapes[index] = (height, width)
        to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
        lons, lats = to_lonlat.transform([x0, x1, x1, x0], [y0, y0, y1, y1])
        corners[index] = np.stack([lons, lats], axis=1)
    return {"epsg": epsg, "transforms": transforms, "footprints": corners, "shapes": shapes}


def _times(ids: Sequence[str], period: Period | None, rows: Mapping[str, ManifestRow],
           headers: Mapping[str, Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Start and end of each Item: its pairs' dates (GUNW), else the dataset's period, else
    (no year) the time the chip was made."""
    n = len(ids)
    if period is not None:
        starts = np.full(n, np.datetime64(period.start.replace(tzinfo=None), "s"))
        ends = np.full(n, np.datetime64(period.end.replace(tzinfo=None), "s"))
    else:
        starts = np.empty(n, dtype="datetime64[s]")
        ends = np.empty(n, dtype="datetime64[s]")
    if period is not None and not headers:
        return starts, ends
    made_now = np.datetime64(datetime.now(UTC).replace(tzinfo=None), "s")
    for index, identifier in enumerate(ids):
        pairs = headers.get(identifier, {}).get("pairs")
        if pairs:
            first = min(p["secondary_date"] for p in pairs)
            last = max(p["reference_date"] for p in pairs)
            starts[index] = np.datetime64(first, "s")
            ends[index] = np.datetime64(last, "s") + np.timedelta64(86399, "s")
        elif period is None:
            row = rows.get(identifier)
            made = _parse_time(row.finished_at) if row is not None else None
            starts[index] = ends[index] = made if made is not None else made_now
    return starts, ends


def _parse_time(text: str) -> np.datetime64 | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(moment, "s")


# --- the state of the last catalog -----------------------------------------------------------


@dataclass(frozen=True)
class _State:
    """What the last catalog was made from: a fingerprint per Item, and the headers read."""

    shared: str  # the fingerprint of what every Item shares (id, bands, shape, period)
    collection: str  # the fingerprint of the Collection's own content (provenance, license)
    fingerprints: Mapping[str, str]
    headers: Mapping[str, str]  # tile id -> JSON of its header ("" none read)


def _read_state(path: Path) -> _State:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError):  # missing or unreadable: everything is new
        return _State("", "", {}, {})
    metadata = table.schema.metadata or {}
    ids = table.column("id").to_pylist()
    return _State(
        metadata.get(b"shared", b"").decode(),
        metadata.get(b"collection", b"").decode(),
        dict(zip(ids, table.column("fingerprint").to_pylist(), strict=True)),
        dict(zip(ids, table.column("header").to_pylist(), strict=True)),
    )


def _write_state(path: Path, state: _State) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = sorted(state.fingerprints)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "fingerprint": pa.array([state.fingerprints[i] for i in ids], pa.string()),
            "header": pa.array([state.headers.get(i, "") for i in ids], pa.string()),
        }
    ).replace_schema_metadata({"shared": state.shared, "collection": state.collection})
    with replacing(path) as temporary:
        pq.write_table(table, temporary)


def _digest(value: Any) -> str:
    return hashlib.sha1(stac.fingerprint_text(value).encode()).hexdigest()


def _row_fingerprints(chips: _Chips, splits: Mapping[str, str]) -> dict[str, str]:
    fingerprints = {}
    for identifier in chips.ids:
        row = chips.rows.get(identifier)
        made = (row.bytes, row.crc32, row.finished_at) if row is not None else ("", "", "")
        fingerprints[identifier] = "|".join(
            map(str, (*made, chips.sizes[identifier], splits.get(identifier, "")))
        )
    return fingerprints


# --- the catalog -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dataset:
    """Everything the Collection says, gathered before any Item is built."""

    info: stac.CollectionInfo
    period: Period | None
    per_tile: bool  # each chip's bands are its own (read every chip)


def _describe(layout: DatasetLayout, recipe: Recipe | None, first: ChipInfo, year: int | None,
              splits: Mapping[str, str], grid: Path | None) -> _Dataset:  # fmt: skip
    bands = _bands_of(first)
    per_tile = (
        recipe.bands_per_tile
        if recipe is not None
        else any(parse_pair_band(b.name, b.metadata) for b in bands)
    )
    provenance: dict[str, Any] = {"software": stac.SOFTWARE}
    if recipe is not None:
        provenance.update(
            recipe=recipe.name,
            recipe_hash=recipe.recipe_hash,
            source=recipe.source,
            params=_redacted(recipe.params),
            resolution_m=recipe.resolution,
            resampling=str(recipe.resampling),
            **({"year": year} if year is not None else {}),
        )
    counts: dict[str, int] = {}
    for split in splits.values():
        counts[split] = counts.get(split, 0) + 1
    grid_info = {
        "aoi": layout.aoi,
        "tile_size_m": TILE_SIZE_M,
        "file": f"{grid.parent.name}/{grid.name}" if grid is not None else None,
        "splits": counts,
    }
    description = (recipe.description if recipe is not None else "") or (
        f"{layout.dataset} chips of {layout.aoi} made by m3leo-tiles"
    )
    info = stac.CollectionInfo(
        id=f"{layout.aoi}-{layout.dataset}",
        title=f"{layout.dataset} ({layout.aoi})",
        description=description,
        license=(recipe.license if recipe is not None else "") or UNKNOWN_LICENSE,
        bands=bands,
        bands_per_tile=per_tile,
        provenance=provenance,
        grid=grid_info,
        shape=(first.height, first.width),
    )
    return _Dataset(info, dataset_period(recipe, year), per_tile)


def _redacted(value: Any) -> Any:
    """Parameters as JSON values, any credential in a URL masked (catalogs are shared)."""
    if isinstance(value, Mapping):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value if isinstance(value, int | float | bool) or value is None else str(value)


def write_catalog(
    folder: Path,
    recipe: Recipe | None = None,
    *,
    grid: str | Path | None = None,
    grids_dir: Path = Path("grids"),
    json_items: bool | None = None,
    year: int | None = None,
) -> CatalogReport:
    """Write (or bring up to date) the STAC catalog of one dataset folder.

    ``recipe``: the recipe that made the chips (default: the one they name, if its hash is
    theirs); ``grid``: the grid file or AOI whose splits the Items carry (default: the
    folder's AOI under ``grids_dir``); ``json_items``: also write ``items/<tile>.json``
    (None: keep doing so where an earlier catalog did); ``year``: the dataset's year
    (default: from the folder name ``<recipe>-<year>``).
    """
    started = time.perf_counter()
    layout = DatasetLayout(Path(folder))
    notes: list[str] = []
    chips = _finished_chips(layout)
    if not chips.ids:
        raise ConfigError(f"{layout.folder} holds no finished chips: nothing to catalog")
    first = read_chip_info(layout.chip(chips.ids[0]))
    if recipe is None:
        recipe = _recipe_of(layout.chip(chips.ids[0]), notes)
    else:
        _check_hash(layout.chip(chips.ids[0]), recipe, notes)
    if year is None:
        year = _year_of(layout.folder, recipe)
    splits, grid_file = _splits(grid, layout.aoi, Path(grids_dir), notes)
    dataset = _describe(layout, recipe, first, year, splits, grid_file)
    if json_items is None:
        json_items = layout.items_dir.is_dir()

    state = _read_state(layout.catalog_state)
    info = dataset.info
    shared = _digest(
        [
            stac.SOFTWARE,
            info.id,
            [asdict(b) for b in info.bands],
            info.bands_per_tile,
            info.shape,
            dataset.period and asdict(dataset.period),
        ]
    )
    whole = _digest([shared, asdict(info)])  # fmt: skip
    fingerprints = _row_fingerprints(chips, splits)
    same_shared = shared == state.shared
    changed = [
        i for i in chips.ids if not same_shared or state.fingerprints.get(i) != fingerprints[i]
    ]
    removed = sorted(set(state.fingerprints) - set(fingerprints))
    json_missing = json_items and not layout.items_dir.is_dir()
    complete = layout.items.exists() and layout.collection.exists()
    if not changed and not removed and complete and not json_missing and whole == state.collection:
        return CatalogReport(layout.folder, len(chips.ids), 0, 0, False, 0,
                             time.perf_counter() - started, tuple(notes))  # fmt: skip

    headers = _headers(layout, chips, changed, dataset.per_tile, state)
    table = _items(layout, chips, dataset, splits, headers)
    _write_items(layout.items, table, dataset, chips.ids, json_items)
    written_json = 0
    if json_items:
        redo = chips.ids if json_missing or not same_shared else changed
        written_json = _write_item_files(layout, table, redo, removed)
    elif layout.items_dir.is_dir():
        for identifier in removed:
            layout.item_json(identifier).unlink(missing_ok=True)
    _write_state(layout.catalog_state, _State(
        shared, whole, fingerprints, {i: stac.fingerprint_text(h) for i, h in headers.items()},
    ))  # fmt: skip
    return CatalogReport(layout.folder, len(chips.ids), len(changed), len(removed), True,
                         written_json, time.perf_counter() - started, tuple(notes))  # fmt: skip


def _headers(layout: DatasetLayout, chips: _Chips, changed: Sequence[str],
             per_tile: bool, state: _State) -> dict[str, dict[str, Any]]:  # fmt: skip
    """What must be read from a chip itself, from the state for unchanged chips and from the
    chip for changed ones: the header of chips with bands of their own or of foreign tiles,
    and the CRC-32 of chips the manifest has none for (made elsewhere, an old manifest)."""
    import json

    lattice = re.compile(LATTICE_ID)
    redo = set(changed)
    headers: dict[str, dict[str, Any]] = {}
    for identifier in chips.ids:
        row = chips.rows.get(identifier)
        needs_header = per_tile or not lattice.match(identifier)
        needs_crc = row is None or len(row.crc32) != 8
        if not (needs_header or needs_crc):
            continue
        cached = state.headers.get(identifier, "")
        if identifier not in redo and cached:
            headers[identifier] = json.loads(cached)
            continue
        header: dict[str, Any] = {}
        if needs_header:
            header = _header(layout.chip(identifier))
            header["pairs"] = _pairs([Band(**b) for b in header["bands"]])
        if needs_crc:
            header["crc32"] = crc32_hex(layout.chip(identifier).read_bytes())
        headers[identifier] = header
    return headers


def _items(layout: DatasetLayout, chips: _Chips, dataset: _Dataset,
           splits: Mapping[str, str], headers: Mapping[str, Mapping[str, Any]]):  # fmt: skip
    ids = chips.ids
    lattice = re.compile(LATTICE_ID)
    on_lattice = np.array([bool(lattice.match(i)) for i in ids])
    geo: dict[str, np.ndarray] = {}
    lattice_ids = [i for i, ok in zip(ids, on_lattice, strict=True) if ok]
    foreign_ids = [i for i, ok in zip(ids, on_lattice, strict=True) if not ok]
    parts = []
    if lattice_ids:
        parts.append((on_lattice, _lattice_columns(lattice_ids, dataset.info.shape)))
    if foreign_ids:
        parts.append((~on_lattice, _header_columns([headers[i] for i in foreign_ids])))
    for key in ("epsg", "transforms", "footprints", "shapes"):
        sample = parts[0][1][key]
        geo[key] = np.zeros((len(ids), *sample.shape[1:]), dtype=sample.dtype)
        for mask, values in parts:
            geo[key][mask] = values[key]
    starts, ends = _times(ids, dataset.period, chips.rows, headers)
    per_tile = dataset.per_tile
    columns = stac.ItemColumns(
        ids=ids,
        epsg=geo["epsg"],
        transforms=geo["transforms"],
        shapes=geo["shapes"],
        footprints=geo["footprints"],
        sizes=np.array([chips.sizes[i] for i in ids], dtype=np.int64),
        checksums=[stac.multihash_crc32(_crc_of(chips, headers, i)) for i in ids],
        splits=[splits.get(i) for i in ids],
        starts=starts,
        ends=ends,
        bands=[[Band(**b) for b in headers[i]["bands"]] for i in ids] if per_tile else None,
        extra=[{"m3leo:pairs": headers[i]["pairs"]} for i in ids] if per_tile else None,
    )
    return stac.items_table(columns, dataset.info.id, dataset.info.bands, stac.geometry_field())


def _crc_of(chips: _Chips, headers: Mapping[str, Mapping[str, Any]], identifier: str) -> str:
    row = chips.rows.get(identifier)
    if row is not None and len(row.crc32) == 8:
        return row.crc32
    return str(headers.get(identifier, {}).get("crc32", ""))


def _write_items(path: Path, table: Any, dataset: _Dataset, ids: Sequence[str],
                 json_items: bool) -> None:  # fmt: skip
    """items.parquet, then collection.json (its extent is the Items')."""
    import pyarrow.compute as pc
    import stac_geoparquet.arrow as sga

    bbox = table.column("bbox")
    extent = [pc.min(bbox.combine_chunks().field(name)).as_py() for name in ("xmin", "ymin")] + [
        pc.max(bbox.combine_chunks().field(name)).as_py() for name in ("xmax", "ymax")
    ]
    start = pc.min(table.column("start_datetime")).as_py()
    end = pc.max(table.column("end_datetime")).as_py()
    period = Period(start, end) if start is not None and end is not None else None
    splits = sorted(
        {s for s in table.column("ml-aoi:split").to_pylist() if s}
        if "ml-aoi:split" in table.column_names
        else set()
    )
    ours = {v: k for k, v in stac.ML_AOI_SPLIT.items()}
    epsg_codes = pc.unique(table.column("proj:code")).to_pylist()
    links = [f"./items/{i}.json" for i in ids] if json_items else []
    collection = stac.collection_dict(
        dataset.info, extent, period, [ours[s] for s in splits], epsg_codes, links
    )
    with replacing(path) as temporary:
        sga.to_parquet(table, temporary, collections={dataset.info.id: collection})
    write_text(DatasetLayout(path.parent).collection, stac.dumps(collection))


def _write_item_files(layout: DatasetLayout, table: Any, ids: Sequence[str],
                      removed: Sequence[str]) -> int:  # fmt: skip
    """``items/<tile>.json`` of ``ids`` (hrefs made relative to that folder); those of
    ``removed`` tiles deleted."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import stac_geoparquet.arrow as sga

    layout.items_dir.mkdir(exist_ok=True)
    for identifier in removed:
        layout.item_json(identifier).unlink(missing_ok=True)
    if not ids:
        return 0
    chosen = table.filter(pc.is_in(table.column("id"), value_set=pa.array(list(ids))))
    count = 0
    for item in sga.stac_table_to_items(chosen):
        item = _without_nulls(item)
        for link in item.get("links", []):
            link["href"] = "../" + link["href"].removeprefix("./")
        for asset in item.get("assets", {}).values():
            asset["href"] = "../" + asset["href"].removeprefix("./")
        write_text(layout.item_json(item["id"]), stac.dumps(item))
        count += 1
    return count


def _without_nulls(value: Any) -> Any:
    """Arrow gives every row every column; an Item JSON leaves out what it does not have
    (``datetime`` stays: STAC wants it, null, beside start and end)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None or k == "datetime"}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


# --- what the CLI and fetch call -------------------------------------------------------------


def catalog_command(
    datasets: Sequence[str],
    root: Path = Path("data"),
    aoi: str | None = None,
    *,
    recipe: str | Path | None = None,
    grid: str | Path | None = None,
    grids_dir: Path = Path("grids"),
    json_items: bool | None = None,
    progress: Callable[[CatalogReport], None] | None = None,
) -> list[CatalogReport]:
    """Catalog each named dataset (a folder path or a name under ``root``)."""
    from m3leo_tiles.recipes import load_recipe

    loaded = load_recipe(recipe) if recipe is not None else None
    folders = [find_dataset(name, root, aoi) for name in datasets]
    reports = []
    for folder in folders:
        report = write_catalog(folder, loaded, grid=grid, grids_dir=grids_dir,
                               json_items=json_items)  # fmt: skip
        if progress is not None:
            progress(report)
        reports.append(report)
    return reports


def update_after_fetch(
    folder: Path, recipe: Recipe, grid: Path | None, year: int | None, *, made_chips: bool = True
) -> None:
    """The catalog brought up to date at the end of a fetch; a dataset without a finished
    chip gets none. Never fails the run: a problem is logged and ``catalog`` can redo it.

    A run that made no chip (``made_chips`` false: a cron job's no-op rerun) leaves an
    existing catalog alone without reading anything: on CONUS the check alone reads the
    manifest and the grid (~9 s), which would triple the rerun."""
    layout = DatasetLayout(folder)
    if not made_chips and layout.collection.exists() and layout.items.exists():
        return
    try:
        if not layout.chip_ids():
            return
        report = write_catalog(folder, recipe, grid=grid, year=year)
    except Exception as error:
        log.warning("STAC catalog not updated (%s); run `m3leo-tiles catalog %s`", error, folder)
        return
    if report.written:
        log.info("STAC catalog: %s", report.summary())
