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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    parse_pair_band,
    read_chip_info,
)
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.manifest import outcome_table
from m3leo_tiles.grid.tile import (
    SOUTH_FALSE_NORTHING_M,
    TILE_SIZE_M,
    to_lonlat_transformer,
    zone_central_meridian,
)
from m3leo_tiles.recipes import Recipe
from m3leo_tiles.tools import stac
from m3leo_tiles.tools.stac import Band, Period

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("m3leo_tiles.catalog")

Headers = Mapping[str, Mapping[str, Any]]  # what chips said of themselves, by tile id

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
    """The finished chips of a folder, sorted by id, as Arrow columns: ``id``, ``size`` (the
    file's) and, from the chip's manifest row (null or "" for a chip without one), ``bytes``,
    ``crc32`` and ``finished_at``. Columns, not row objects: a CONUS catalog held ~280 MB of
    rows and dicts."""

    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    def ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The ids ``start:stop`` as text (a table of Items at a time, not all 403k)."""
        stop = self.table.num_rows if stop is None else stop
        return self.table.column("id").slice(start, stop - start).to_pylist()


def _finished_chips(layout: DatasetLayout) -> _Chips:
    """Tiles ``ok`` in the manifest whose chip is present (every chip when no manifest)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present_chips = layout.scan().chip_table()
    names, found = present_chips.column("id"), present_chips.column("size")
    if layout.manifest.exists():
        rows = outcome_table(layout.manifest, ("bytes", "crc32", "finished_at"))
        rows = rows.filter(pc.equal(rows.column("status"), str(TileStatus.OK)))
        where = pc.index_in(rows.column("identifier"), value_set=names)
        present = pc.is_valid(where)
        rows = rows.filter(present)
        table = pa.table({
            "id": rows.column("identifier"), "size": pc.take(found, where.filter(present)),
            "bytes": rows.column("bytes"), "crc32": rows.column("crc32"),
            "finished_at": rows.column("finished_at"),
        })  # fmt: skip
    else:
        nothing = pc.fill_null(pa.nulls(len(names), pa.string()), "")
        table = pa.table({"id": names, "size": found, "bytes": pa.nulls(len(names), pa.int64()),
                          "crc32": nothing, "finished_at": nothing})  # fmt: skip
    return _Chips(table.sort_by("id").combine_chunks())


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


@dataclass(frozen=True)
class _Splits:
    """The grid's split of each chip (null: none), and how many tiles of the grid each
    split holds (the Collection says it)."""

    of_chips: pa.ChunkedArray
    counts: dict[str, int]


def _splits(grid: str | Path | None, aoi: str, grids_dir: Path, chip_ids: pa.Array,
            notes: list[str]) -> tuple[_Splits, Path | None]:  # fmt: skip
    """The splits of the grid (and the grid file), or none, with a note. Read as Arrow
    columns (``read_grid_splits``): a CONUS grid read into tiles peaked ~280 MB higher."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from m3leo_tiles.grid.files import read_grid_splits

    nothing = _Splits(pa.chunked_array([pa.nulls(len(chip_ids), pa.string())]), {})
    try:
        path = grid_path_for(grid, aoi, grids_dir)
        if not path.exists():
            notes.append(f"no grid {path}: Items carry no ml-aoi:split (pass --grid)")
            return nothing, None
        ids, split = read_grid_splits(path)
    except M3leoError as error:
        notes.append(f"no splits ({error}): Items carry no ml-aoi:split")
        return nothing, None
    if split.null_count == len(split):
        notes.append(f"no splits (the grid {path} has none; make one with `m3leo-tiles grid`): "
                     "Items carry no ml-aoi:split")  # fmt: skip
        return nothing, None
    counts = {e["values"]: e["counts"] for e in pc.value_counts(split.drop_null()).to_pylist()}
    return _Splits(pc.take(split, pc.index_in(chip_ids, value_set=ids)), counts), path


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


def _times(ids: Sequence[str], period: Period | None, finished_at: Sequence[str],
           headers: Headers) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Start and end of each Item: its pairs' dates (GUNW), else the dataset's period, else
    (no year) the time the chip was made (``finished_at``, "" when unknown)."""
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
            made = _parse_time(finished_at[index]) if finished_at[index] else None
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
    """What the last catalog was made from: a fingerprint per Item, and the headers read
    (columns ``id``, ``fingerprint``, ``header``: the JSON of a chip's header, "" none)."""

    shared: str  # the fingerprint of what every Item shares (id, bands, shape, period)
    collection: str  # the fingerprint of the Collection's own content (provenance, license)
    table: pa.Table | None  # None: no earlier catalog

    def headers(self) -> dict[str, str]:
        """The headers read before, by tile id (only chips that had one)."""
        import pyarrow.compute as pc

        if self.table is None:
            return {}
        kept = self.table.filter(pc.not_equal(self.table.column("header"), ""))
        return dict(zip(kept.column("id").to_pylist(), kept.column("header").to_pylist(),
                        strict=True))  # fmt: skip


def _read_state(path: Path) -> _State:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError):  # missing or unreadable: everything is new
        return _State("", "", None)
    metadata = table.schema.metadata or {}
    return _State(metadata.get(b"shared", b"").decode(),
                  metadata.get(b"collection", b"").decode(), table)  # fmt: skip


def _write_state(path: Path, chips: _Chips, fingerprints: pa.ChunkedArray, headers: Headers,
                 shared: str, whole: str) -> None:  # fmt: skip
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = {i: stac.fingerprint_text(h) for i, h in headers.items()}
    header = (pa.array([texts.get(i, "") for i in chips.ids()], pa.string()) if texts
              else _empty_strings(len(chips)))  # fmt: skip
    table = pa.table(
        {"id": chips.table.column("id"), "fingerprint": fingerprints, "header": header}
    ).replace_schema_metadata({"shared": shared, "collection": whole})
    with replacing(path) as temporary:
        pq.write_table(table, temporary)


def _empty_strings(n: int) -> pa.Array:
    """``n`` empty strings as an Arrow column, without a Python list."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pa.nulls(n, pa.string()), "")


def _digest(value: Any) -> str:
    return hashlib.sha1(stac.fingerprint_text(value).encode()).hexdigest()


def _fingerprints(chips: _Chips, splits: _Splits) -> pa.ChunkedArray:
    """Each Item's fingerprint: its manifest row's size, CRC-32 and time, its chip's size,
    its split, joined as text (one Arrow kernel, no string per tile built in Python)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
        return pc.fill_null(pc.cast(column, pa.string()), "")

    table = chips.table
    return pc.binary_join_element_wise(
        *(text(table.column(name)) for name in ("bytes", "crc32", "finished_at", "size")),
        text(splits.of_chips), "|",
    )  # fmt: skip


def _changes(chips: _Chips, fingerprints: pa.ChunkedArray, state: _State,
             same_shared: bool) -> tuple[pa.ChunkedArray, list[str]]:  # fmt: skip
    """(ids of Items new or changed since the last catalog, ids of Items gone since)."""
    import pyarrow.compute as pc

    ids = chips.table.column("id")
    if state.table is None:
        return ids, []
    before = state.table.column("id")
    removed = sorted(pc.filter(before, pc.invert(pc.is_in(before, value_set=ids))).to_pylist())
    if not same_shared:
        return ids, removed
    was = pc.take(state.table.column("fingerprint"), pc.index_in(ids, value_set=before))
    differs = pc.fill_null(pc.not_equal(fingerprints, was), True)
    return pc.filter(ids, differs), removed


# --- the catalog -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dataset:
    """Everything the Collection says, gathered before any Item is built."""

    info: stac.CollectionInfo
    period: Period | None
    per_tile: bool  # each chip's bands are its own (read every chip)


def _describe(layout: DatasetLayout, recipe: Recipe | None, first: ChipInfo, year: int | None,
              split_counts: Mapping[str, int], grid: Path | None) -> _Dataset:  # fmt: skip
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
    grid_info = {
        "aoi": layout.aoi,
        "tile_size_m": TILE_SIZE_M,
        "file": f"{grid.parent.name}/{grid.name}" if grid is not None else None,
        "splits": dict(split_counts),
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
    if not len(chips):
        raise ConfigError(f"{layout.folder} holds no finished chips: nothing to catalog")
    sample = layout.chip(chips.ids(0, 1)[0])
    first = read_chip_info(sample)
    if recipe is None:
        recipe = _recipe_of(sample, notes)
    else:
        _check_hash(sample, recipe, notes)
    if year is None:
        year = _year_of(layout.folder, recipe)
    splits, grid_file = _splits(grid, layout.aoi, Path(grids_dir),
                                chips.table.column("id").chunk(0), notes)  # fmt: skip
    dataset = _describe(layout, recipe, first, year, splits.counts, grid_file)
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
    fingerprints = _fingerprints(chips, splits)
    same_shared = shared == state.shared
    changed, removed = _changes(chips, fingerprints, state, same_shared)
    json_missing = json_items and not layout.items_dir.is_dir()
    complete = layout.items.exists() and layout.collection.exists()
    if (not len(changed) and not removed and complete and not json_missing
            and whole == state.collection):  # fmt: skip
        return CatalogReport(layout.folder, len(chips), 0, 0, False, 0,
                             time.perf_counter() - started, tuple(notes))  # fmt: skip

    headers = _headers(layout, chips, changed, dataset.per_tile, state.headers())
    del state
    redo = (chips.table.column("id") if json_missing or not same_shared else changed
            ) if json_items else None  # fmt: skip
    written_json = _write_items(layout, chips, dataset, splits, headers, json_items, redo)
    if layout.items_dir.is_dir():
        for identifier in removed:
            layout.item_json(identifier).unlink(missing_ok=True)
    _write_state(layout.catalog_state, chips, fingerprints, headers, shared, whole)
    return CatalogReport(layout.folder, len(chips), len(changed), len(removed), True,
                         written_json, time.perf_counter() - started, tuple(notes))  # fmt: skip


def _headers(layout: DatasetLayout, chips: _Chips, changed: pa.ChunkedArray,
             per_tile: bool, cached: Mapping[str, str]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """What must be read from a chip itself, from the last catalog's state for unchanged
    chips and from the chip for changed ones: the header of chips with bands of their own or
    of foreign tiles, and the CRC-32 of chips the manifest has none for (made elsewhere, an
    old manifest). Which chips need one is found with Arrow kernels: none, for a CONUS
    dataset of lattice tiles made by fetch."""
    import json

    import pyarrow.compute as pc

    ids = chips.table.column("id")
    needs_crc = pc.not_equal(pc.utf8_length(chips.table.column("crc32")), 8)
    lattice = pc.match_substring_regex(ids, LATTICE_ID)
    needs_header = pc.is_valid(ids) if per_tile else pc.invert(lattice)  # is_valid: every chip
    wanted = pc.or_(needs_crc, needs_header)
    if not pc.any(wanted).as_py():
        return {}
    redo = set(changed.to_pylist())
    headers: dict[str, dict[str, Any]] = {}
    for identifier, header_too, crc_too in zip(
        pc.filter(ids, wanted).to_pylist(), pc.filter(needs_header, wanted).to_pylist(),
        pc.filter(needs_crc, wanted).to_pylist(), strict=True,
    ):  # fmt: skip
        known = cached.get(identifier, "")
        if identifier not in redo and known:
            headers[identifier] = json.loads(known)
            continue
        header: dict[str, Any] = {}
        if header_too:
            header = _header(layout.chip(identifier))
            header["pairs"] = _pairs([Band(**b) for b in header["bands"]])
        if crc_too:
            header["crc32"] = crc32_hex(layout.chip(identifier).read_bytes())
        headers[identifier] = header
    return headers


ITEMS_A_TABLE = 65_536  # Items built and written a table at a time: CONUS's 403k in one
# table held ~350 MB at its peak


def _geometry(ids: Sequence[str], dataset: _Dataset,
              headers: Headers) -> dict[str, np.ndarray]:  # fmt: skip
    """EPSG code, transform, lon/lat footprint and shape of each Item: lattice tiles in bulk
    from their ids, foreign ones from their chips' headers."""
    lattice = re.compile(LATTICE_ID)
    on_lattice = np.array([bool(lattice.match(i)) for i in ids])
    lattice_ids = [i for i, ok in zip(ids, on_lattice, strict=True) if ok]
    foreign_ids = [i for i, ok in zip(ids, on_lattice, strict=True) if not ok]
    parts = []
    if lattice_ids:
        parts.append((on_lattice, _lattice_columns(lattice_ids, dataset.info.shape)))
    if foreign_ids:
        parts.append((~on_lattice, _header_columns([headers[i] for i in foreign_ids])))
    geo: dict[str, np.ndarray] = {}
    for key in ("epsg", "transforms", "footprints", "shapes"):
        sample = parts[0][1][key]
        geo[key] = np.zeros((len(ids), *sample.shape[1:]), dtype=sample.dtype)
        for mask, values in parts:
            geo[key][mask] = values[key]
    return geo


def _times_of(chips: _Chips, start: int, stop: int, dataset: _Dataset,
              headers: Headers) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    finished_at = (chips.table.column("finished_at").slice(start, stop - start).to_pylist()
                   if dataset.period is None else ())  # fmt: skip
    return _times(chips.ids(start, stop), dataset.period, finished_at, headers)


def _chunks(chips: _Chips, dataset: _Dataset) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each table of Items. Chips with bands of their own (GUNW) come
    in one table: their per-Item bands and pairs are typed by Arrow's inference over the
    table, which tables of other Items need not agree with."""
    n = len(chips)
    step = n if dataset.per_tile else ITEMS_A_TABLE
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _utc(moment: np.datetime64) -> datetime:
    return moment.astype("datetime64[us]").item().replace(tzinfo=UTC)


def _item_columns(chips: _Chips, start: int, stop: int, dataset: _Dataset, splits: _Splits,
                  headers: Headers) -> stac.ItemColumns:  # fmt: skip
    """The Items ``start:stop`` (in id order) as columns."""
    ids = chips.ids(start, stop)
    part = chips.table.slice(start, stop - start)
    geo = _geometry(ids, dataset, headers)
    starts, ends = _times_of(chips, start, stop, dataset, headers)
    per_tile = dataset.per_tile
    crc32 = part.column("crc32").to_pylist()
    return stac.ItemColumns(
        ids=ids,
        epsg=geo["epsg"],
        transforms=geo["transforms"],
        shapes=geo["shapes"],
        footprints=geo["footprints"],
        sizes=part.column("size").to_numpy(),
        checksums=[
            stac.multihash_crc32(crc if len(crc) == 8 else str(headers.get(i, {}).get("crc32", "")))
            for i, crc in zip(ids, crc32, strict=True)
        ],
        splits=splits.of_chips.slice(start, stop - start).to_pylist(),
        starts=starts,
        ends=ends,
        bands=[[Band(**b) for b in headers[i]["bands"]] for i in ids] if per_tile else None,
        extra=[{"m3leo:pairs": headers[i]["pairs"]} for i in ids] if per_tile else None,
    )


def _write_items(layout: DatasetLayout, chips: _Chips, dataset: _Dataset, splits: _Splits,
                 headers: Headers, json_items: bool,
                 json_ids: pa.ChunkedArray | None) -> int:  # fmt: skip
    """items.parquet (streamed, a table at a time), then collection.json (its extent is the
    Items'), and ``items/<tile>.json`` of ``json_ids``; returns how many of those."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import stac_geoparquet.arrow as sga

    info = dataset.info
    low, high = np.full(2, np.inf), np.full(2, -np.inf)
    starts, ends, codes = [], [], []
    for start, stop in _chunks(chips, dataset):  # the Collection first: the file's metadata
        geo = _geometry(chips.ids(start, stop), dataset, headers)
        corners = geo["footprints"].reshape(-1, 2)
        low, high = np.minimum(low, corners.min(axis=0)), np.maximum(high, corners.max(axis=0))
        first, last = _times_of(chips, start, stop, dataset, headers)
        starts.append(first.min())
        ends.append(last.max())
        _, at = np.unique(geo["epsg"], return_index=True)
        codes.extend(int(e) for e in geo["epsg"][np.sort(at)])
    period = Period(_utc(min(starts)), _utc(max(ends)))
    used = pc.unique(splits.of_chips.drop_null()).to_pylist()
    present = sorted(stac.ML_AOI_SPLIT[s] for s in used)
    ours = {v: k for k, v in stac.ML_AOI_SPLIT.items()}
    links = [f"./items/{i}.json" for i in chips.ids()] if json_items else []
    epsg_codes = list(dict.fromkeys(f"EPSG:{code}" for code in codes))
    collection = stac.collection_dict(info, [*low.tolist(), *high.tolist()], period,
                                      [ours[s] for s in present], epsg_codes, links)  # fmt: skip
    has_split = bool(present)
    geometry = stac.geometry_field()
    written = 0

    def tables() -> Iterator[pa.Table]:
        nonlocal written
        for start, stop in _chunks(chips, dataset):
            columns = _item_columns(chips, start, stop, dataset, splits, headers)
            table = stac.items_table(columns, info.id, info.bands, geometry, has_split=has_split)
            if json_ids is not None and len(json_ids):
                written += _write_item_files(layout, table, json_ids)
            yield table

    made = tables()
    first = next(made)  # its schema is every table's: has_split and the bands are shared

    def batches() -> Iterator[pa.RecordBatch]:
        yield from first.to_batches()
        for table in made:
            yield from table.to_batches()

    reader = pa.RecordBatchReader.from_batches(first.schema, batches())
    with replacing(layout.items) as temporary:
        sga.to_parquet(reader, temporary, collections={info.id: collection})
    write_text(layout.collection, stac.dumps(collection))
    return written


def _write_item_files(layout: DatasetLayout, table: Any, ids: pa.ChunkedArray) -> int:
    """``items/<tile>.json`` of the Items of ``table`` among ``ids`` (hrefs made relative to
    that folder)."""
    import pyarrow.compute as pc
    import stac_geoparquet.arrow as sga

    chosen = table.filter(pc.is_in(table.column("id"), value_set=ids))
    if not chosen.num_rows:
        return 0
    layout.items_dir.mkdir(exist_ok=True)
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
