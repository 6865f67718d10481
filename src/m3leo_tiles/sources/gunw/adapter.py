"""The ``gunw`` source's adapter (the package docstring says what it does and why)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from rasterio.enums import Resampling

from m3leo_tiles.core import strict_json
from m3leo_tiles.core.atomic import write_text
from m3leo_tiles.core.errors import ConfigError, CredentialsError, SourceError, first_line
from m3leo_tiles.grid.tile import GridTile, PixelGrid
from m3leo_tiles.sources.base import (
    Chip,
    FetchOptions,
    RenderContext,
    SourceAdapter,
    SourceOption,
    TileInputs,
    refuse_unknown_params,
)
from m3leo_tiles.sources.download import fetch_each
from m3leo_tiles.sources.gunw import _earthdata, _gunw_catalog, _gunw_read
from m3leo_tiles.sources.gunw._gunw_catalog import GunwProduct

if TYPE_CHECKING:
    from m3leo_tiles.recipes import Recipe

PARAMS = {"max_baseline_days", "layers", "search_chunk_degrees"}
DEFAULT_MAX_BASELINE_DAYS = 72
DEFAULT_CHUNK_DEGREES = 2.0
DATASET = "ARIA S1 GUNW"  # asf_search.DATASET.ARIA_S1_GUNW
SEARCH_FOLDER = "gunw-searches"
CHUNK_BYTES = 256 << 20  # chips held at once while products are warped into them
PRODUCT_SUFFIX = ".nc"
FIRST_YEAR = 2014  # Sentinel-1A's first data (April 2014): no GUNW product is older

log = logging.getLogger("m3leo_tiles.fetch")


@dataclass(frozen=True)
class _Layout:
    """A chip being made: its grid, its bands (filled product by product), names, metadata."""

    grid: PixelGrid
    data: np.ndarray
    names: tuple[str, ...]
    metadata: tuple[dict[str, str], ...]
    first_band: dict[tuple, int]  # pair -> index of its first band


class _WorkerSession:
    """One logged-in asf-search session per worker process, made on the first download.

    A failed login is remembered for ``RETRY_LOGIN_S``: the other products of the batch fail
    at once with the same reason instead of each waiting for the login deadline again.
    """

    RETRY_LOGIN_S: ClassVar[float] = 60.0
    lock: ClassVar[threading.Lock] = threading.Lock()
    sessions: ClassVar[dict[tuple[str, str], Any]] = {}
    failures: ClassVar[dict[tuple[str, str], tuple[float, SourceError]]] = {}

    @classmethod
    def get(cls, hosts: _earthdata.Hosts) -> Any:
        key = (hosts.cmr, hosts.edl)
        with cls.lock:
            session = cls.sessions.get(key)
            if session is not None:
                return session
            failed = cls.failures.get(key)
            if failed is not None and time.monotonic() - failed[0] < cls.RETRY_LOGIN_S:
                raise failed[1]
            try:
                session = cls._login(hosts)
            except SourceError as error:
                cls.failures[key] = (time.monotonic(), error)
                raise
            cls.sessions[key] = session
            return session

    @staticmethod
    def _login(hosts: _earthdata.Hosts) -> Any:
        credentials = _earthdata.find_credentials(hosts.edl)
        if credentials is None:
            raise SourceError(
                "a GUNW product must be downloaded but no Earthdata credentials are set on "
                f"this worker; {_earthdata.HOW_TO}"
            )
        session = _earthdata.new_session(hosts)
        try:
            _earthdata.login(session, credentials)
        except CredentialsError as error:
            raise SourceError(str(error)) from None
        return session


class GunwSource(SourceAdapter):
    name = "gunw"
    cli_options = (
        SourceOption(
            "search-results",
            "gunw: a saved asf-search/Vertex GeoJSON search used instead of searching",
            metavar="FILE",
        ),
        SourceOption(
            "refresh-search",
            "gunw: search again even if this AOI and year were searched",
            flag=True,
        ),
        SourceOption(
            "cmr-host",
            "gunw: the CMR host asf-search queries over https",
            env="M3LEO_CMR_HOST",
            metavar="HOST",
            default=_earthdata.DEFAULT_CMR_HOST,
        ),
        SourceOption(
            "earthdata-host",
            "gunw: the Earthdata login host",
            env="M3LEO_EARTHDATA_HOST",
            metavar="HOST",
            default=_earthdata.DEFAULT_EDL_HOST,
        ),
    )

    def __init__(self, recipe: Recipe, options: FetchOptions | None = None) -> None:
        super().__init__(recipe, options)
        self.catalog: dict[str, GunwProduct] = {}  # file name -> product, filled by plan()
        self.local: dict[str, str] = {}  # file name -> path of a product found on disk
        self.found = ""  # what the search found and each rule excluded, filled by plan()

    # --- configuration ---------------------------------------------------------------------

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        refuse_unknown_params(params, PARAMS, where, cls.name)
        days = params.get("max_baseline_days", DEFAULT_MAX_BASELINE_DAYS)
        if isinstance(days, bool) or not isinstance(days, int | float) or days <= 0:
            raise ConfigError(f"{where}: key 'params.max_baseline_days': a positive number of days")
        layers = params.get("layers", [layer.band for layer in _gunw_read.LAYERS])
        if (
            not isinstance(layers, list)
            or not layers
            or any(name not in _gunw_read.LAYERS_BY_BAND for name in layers)
            or len(set(layers)) != len(layers)
        ):
            raise ConfigError(
                f"{where}: key 'params.layers': a list of distinct layers among "
                f"{', '.join(_gunw_read.LAYERS_BY_BAND)}"
            )
        chunk = params.get("search_chunk_degrees", DEFAULT_CHUNK_DEGREES)
        if isinstance(chunk, bool) or not isinstance(chunk, int | float) or not 0 < chunk <= 90:
            raise ConfigError(f"{where}: key 'params.search_chunk_degrees': degrees in (0, 90]")

    @property
    def year(self) -> int | None:
        return self.options.year or self.recipe.default_year

    @property
    def max_baseline_days(self) -> float:
        return float(self.recipe.params.get("max_baseline_days", DEFAULT_MAX_BASELINE_DAYS))

    @property
    def layers(self) -> tuple[_gunw_read.Layer, ...]:
        names = self.recipe.params.get("layers")
        if not names:
            return _gunw_read.LAYERS
        return tuple(_gunw_read.LAYERS_BY_BAND[name] for name in names)

    @property
    def hosts(self) -> _earthdata.Hosts:
        return _earthdata.Hosts(
            cmr=str(self.option("cmr-host")), edl=str(self.option("earthdata-host"))
        )

    def cache_dir(self) -> Path:
        if not self.options.cache_dir:
            raise ConfigError("the gunw source needs a cache folder for products; give --cache DIR")
        return Path(self.options.cache_dir).expanduser()

    def check(self) -> Recipe:
        recipe = self.recipe
        if self.year is None:
            raise ConfigError(f"recipe {recipe.name!r} makes one dataset per year; give --year")
        this_year = dt.datetime.now(dt.UTC).year
        if not FIRST_YEAR <= self.year <= this_year:
            raise ConfigError(
                f"--year {self.year}: GUNW products exist from {FIRST_YEAR} (Sentinel-1A's first "
                f"data) to {this_year}; choose a year between them"
            )
        if recipe.dtype not in ("float32", "float64") or recipe.scale != 1.0:
            raise ConfigError(f"recipe {recipe.name!r}: gunw chips are float32/float64, scale 1")
        if recipe.nodata is not None and not np.isnan(recipe.nodata):
            raise ConfigError(
                f"recipe {recipe.name!r}: gunw chips use NaN as nodata (nodata: .nan)"
            )
        saved = self.option("search-results")
        if saved and not Path(saved).expanduser().is_file():
            raise ConfigError(f"--search-results {saved}: no such file")
        self._index_sources()
        _earthdata.find_credentials(self.hosts.edl)  # a half-set env or broken .netrc: now
        return recipe

    def _index_sources(self) -> dict[str, str]:
        """Product files in ``--source`` folders (or named directly), by file name."""
        found: dict[str, str] = {}
        for item in self.options.sources:
            path = Path(item).expanduser()
            if path.is_dir():
                products = [e for e in sorted(path.iterdir())
                            if e.name.endswith(PRODUCT_SUFFIX) and e.is_file()]  # fmt: skip
                if not products:
                    raise ConfigError(
                        f"--source {item}: the folder holds no GUNW product (looked for "
                        f"S1-GUNW-*{PRODUCT_SUFFIX} files in it); give the folder the products "
                        "were downloaded to"
                    )
                for entry in products:
                    found.setdefault(entry.name, str(entry.resolve()))
            elif path.is_file():
                found.setdefault(path.name, str(path.resolve()))
            else:
                raise ConfigError(f"--source {item}: no such folder or file")
        return found

    # --- planning (driver) -----------------------------------------------------------------

    def plan(self, tiles: Sequence[GridTile]) -> TileInputs:
        products = self.search(tiles)
        excluded: Counter[str] = Counter()
        selected = _gunw_catalog.select_pairs(products, self.year, self.max_baseline_days,
                                              excluded)  # fmt: skip
        inputs = _gunw_catalog.assign(selected, tiles)
        lists = {id(names): names for names in inputs.values()}  # tiles share their list
        used = {name for names in lists.values() for name in names}
        self.found = _found(len(products), excluded, len(selected), len(used), self.year)
        self.catalog = {p.file_name: p for p in selected if p.file_name in used}
        sources = self._index_sources()
        self.local = {name: sources[name] for name in self.catalog if name in sources}
        missing = [
            p for name, p in self.catalog.items() if name not in self.local and not self._cached(p)
        ]
        if missing:
            self._check_credentials(len(missing))
        return inputs

    def plan_summary(self) -> str:
        return self.found

    def _check_credentials(self, count: int) -> None:
        hosts = self.hosts
        credentials = _earthdata.find_credentials(hosts.edl)
        if credentials is None:
            raise CredentialsError(
                f"{count} GUNW product(s) must be downloaded from ASF, which needs NASA "
                f"Earthdata credentials: {_earthdata.HOW_TO}; or give --source DIR with the "
                "products"
            )
        _earthdata.login(_earthdata.new_session(hosts), credentials)

    def downloads(self) -> bool:
        return True

    def all_downloaded(self, planned: Iterable[tuple[str, ...]]) -> bool:
        names = {name for inputs in planned for name in inputs}
        return all(name in self.local or self._cached(self._product(name)) for name in names)

    def _cached(self, product: GunwProduct) -> bool:
        path = self.cache_dir() / product.file_name
        try:
            size = path.stat().st_size
        except OSError:
            return False
        return product.size is None or size == product.size

    def search(self, tiles: Sequence[GridTile]) -> list[GunwProduct]:
        """The saved search, or the cached answers per cell (asking ASF for missing ones)."""
        saved = self.option("search-results")
        if saved:
            return _gunw_catalog.load_results(Path(saved).expanduser())
        degrees = float(self.recipe.params.get("search_chunk_degrees", DEFAULT_CHUNK_DEGREES))
        folder = self.cache_dir() / SEARCH_FOLDER / self.hosts.cmr
        refresh = bool(self.option("refresh-search"))
        features: dict[str, Any] = {}
        for name, cell in _gunw_catalog.search_cells(tiles, degrees):
            path = folder / f"gunw-{self.year}-{name}.geojson"
            if path.is_file() and not refresh:
                collection = json.loads(path.read_text(encoding="utf-8"))
            else:
                collection = self._asf_search(cell)
                _save_search(path, collection)
            for feature in collection.get("features", []):
                key = str((feature.get("properties") or {}).get("fileID"))
                features.setdefault(key, feature)
        merged = {"type": "FeatureCollection", "features": list(features.values())}
        return _gunw_catalog.parse_results(merged, f"search of {self.hosts.cmr}")

    def _asf_search(self, cell: Any) -> dict[str, Any]:
        """One asf-search query for the year over ``cell``: a FeatureCollection, as saved."""
        import asf_search
        import requests

        asf_search.REPORT_ERRORS = False  # it would post the user's query to ASF on errors
        session = _earthdata.new_session(self.hosts)
        start = f"{self.year}-01-01T00:00:00Z"
        end = f"{self.year}-12-31T23:59:59Z"
        try:
            results = asf_search.search(
                dataset=DATASET,
                intersectsWith=cell.wkt,
                start=start,
                end=end,
                session=session,
                opts=asf_search.ASFSearchOptions(host=self.hosts.cmr),
            )
            results.raise_if_incomplete()
        except (asf_search.exceptions.ASFError, requests.RequestException, ValueError) as error:
            first = first_line(error) if str(error).strip() else ""  # whole: never cut short
            raise ConfigError(
                f"the ASF search at {self.hosts.cmr} failed ({type(error).__name__}"
                f"{': ' + first if first else ''}); try again, or give --search-results FILE"
            ) from None
        features = {
            str((f.get("properties") or {}).get("fileID")): f for f in results.geojson()["features"]
        }
        return {"type": "FeatureCollection", "features": list(features.values())}

    def batch_key(self, inputs: tuple[str, ...]) -> Hashable:
        """The frames a tile lies in: tiles of one frame share a batch even where their pair
        lists differ a little (a product whose footprint stops short), so a batch opens each
        product once for all of them; tiles across two frames form their own batches."""
        if not inputs or any(name not in self.catalog for name in inputs):
            return inputs
        products = [self.catalog[name] for name in inputs]
        return tuple(sorted({(p.direction, p.track, p.frame) for p in products}))

    def concurrency(self) -> int | None:
        return 4  # downloads in flight over the cluster; ASF asks clients to be gentle

    # --- rendering (worker) ----------------------------------------------------------------

    def render_many(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]], context: RenderContext
    ) -> Iterator[tuple[GridTile, Chip | Exception]]:
        """Fetch each product of the batch once, open it once, warp every tile from it.

        The loop runs over products, not tiles: each product is opened and warped into every
        tile of a chunk that needs it, so the number of opens does not grow with the tiles
        or with the pairs a tile has (a year can have 150 pairs per frame, more than can stay
        open). Chunks are as many tiles as fit in ``CHUNK_BYTES`` of chips, which keeps memory
        flat whatever the batch and the pair count.
        """
        paths = self._fetch_all(items, context)
        ready = []
        for tile, inputs in items:
            failed = next((paths[n] for n in inputs if isinstance(paths[n], Exception)), None)
            if failed is not None:
                yield tile, failed
            else:
                ready.append((tile, inputs))
        chunk: list[tuple[GridTile, tuple[str, ...]]] = []
        chunk_bytes = 0
        for tile, inputs in ready:
            grid = tile.pixel_grid(self.recipe.resolution)
            size = len(inputs) * len(self.layers) * grid.width * grid.height * 4
            if chunk and chunk_bytes + size > CHUNK_BYTES:
                yield from self._render_chunk(chunk, paths)  # type: ignore[arg-type]
                chunk, chunk_bytes = [], 0
            chunk.append((tile, inputs))
            chunk_bytes += size
        if chunk:
            yield from self._render_chunk(chunk, paths)  # type: ignore[arg-type]

    def _fetch_all(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]], context: RenderContext
    ) -> dict[str, str | Exception]:
        """Local paths of the batch's products (downloads on ``context.threads`` threads, each
        holding a slot of the run's request budget); a failure is kept for its tiles only."""
        names = list(dict.fromkeys(name for _, inputs in items for name in inputs))

        catalog = self.catalog
        missing = [
            n
            for n in names
            if n in catalog and n not in self.local and not self._cached(catalog[n])
        ]
        threads = min(context.threads, len(missing))  # products already here need no thread
        return fetch_each(names, lambda name: self._product_path(name, context), threads,
                          "m3leo-gunw-download")  # fmt: skip

    def _render_chunk(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]], paths: Mapping[str, str]
    ) -> list[tuple[GridTile, Chip | Exception]]:
        """The chips of ``items``: bands laid out per tile, then every product warped once.

        Products are visited in (pair, name) order, so where adjacent frames of one pair
        overlap, each band is painted in the same order as a per-tile loop would paint it.
        """
        resampling = Resampling[self.recipe.resampling.value]
        layouts: dict[str, _Layout] = {}
        errors: dict[str, Exception] = {}
        users: dict[str, list[GridTile]] = {}
        for tile, inputs in items:
            try:
                layouts[tile.identifier] = self._layout(tile, inputs)
            except SourceError as error:
                errors[tile.identifier] = error
                continue
            for name in inputs:
                users.setdefault(name, []).append(tile)
        order = sorted(users, key=lambda name: (self.catalog[name].pair, name))
        for name in order:
            waiting = [t for t in users[name] if t.identifier not in errors]
            if not waiting:
                continue
            failed = self._paint(name, paths[name], waiting, layouts, resampling)
            if failed and name not in self.local:
                failed = self._heal(name, waiting, layouts, resampling, failed)
            errors.update(failed)
        outcomes: list[tuple[GridTile, Chip | Exception]] = []
        for tile, inputs in items:
            error = errors.get(tile.identifier)
            if error is not None:
                outcomes.append((tile, error))
                continue
            layout = layouts.pop(tile.identifier)
            chip = Chip(
                layout.data.astype(self.recipe.dtype, copy=False),
                layout.names,
                {
                    "inputs": ";".join(sorted(inputs)),
                    "pairs": str(len(layout.first_band)),
                    "max_baseline_days": f"{self.max_baseline_days:g}",
                },
                layout.metadata,
            )
            outcomes.append((tile, chip))
        return outcomes

    def _paint(self, name: str, path: str, tiles: Sequence[GridTile],
               layouts: Mapping[str, _Layout], resampling: Resampling
               ) -> dict[str, Exception]:  # fmt: skip
        """Warp product ``name`` into the chips of ``tiles``; the errors of those it failed."""
        layers = self.layers
        try:
            product = _gunw_read.Product(path, layers)
        except SourceError as error:
            return {tile.identifier: error for tile in tiles}
        errors: dict[str, Exception] = {}
        try:  # opened for this pass only: its cached blocks go when it closes
            for tile in tiles:
                layout = layouts[tile.identifier]
                first = layout.first_band[self.catalog[name].pair]
                try:
                    for k, layer in enumerate(layers):
                        product.warp(layer, layout.grid, layout.data[first + k], resampling)
                except SourceError as error:
                    errors[tile.identifier] = error
        finally:
            product.close()
        return errors

    def _heal(self, name: str, tiles: Sequence[GridTile], layouts: Mapping[str, _Layout],
              resampling: Resampling, failed: dict[str, Exception]
              ) -> dict[str, Exception]:  # fmt: skip
        """A cached product that could not be read: if it is damaged (size or MD5 against the
        search), drop it, download it once more and paint its tiles again (painting a product
        twice gives the same pixels); a second failure names the file."""
        from m3leo_tiles.sources.download import drop_cached

        path = self.cache_dir() / name
        try:
            seen = path.stat()
        except FileNotFoundError:
            return failed
        problem = self._damage(self._product(name), path)
        if problem is None:
            return failed
        log.warning("cached %s is damaged (%s): downloading it again", name, problem)
        drop_cached(path, seen)
        try:
            fresh = self._product_path(name, None)
        except Exception as error:
            return {tile.identifier: error for tile in tiles}
        again = self._paint(name, fresh, tiles, layouts, resampling)
        return {
            ident: SourceError(f"cannot read cached {name} (downloaded again): {first_line(error)}")
            for ident, error in again.items()
        }

    @staticmethod
    def _damage(product: GunwProduct, path: Path) -> str | None:
        """Why a cached product is not the file the search describes, or None."""
        size = path.stat().st_size
        if product.size is not None and size != product.size:
            return f"{size} bytes, the search says {product.size}"
        if product.md5:
            try:
                _gunw_catalog.check_md5(path, expected=product.md5)
            except ValueError as error:
                return str(error)
        return None

    def _layout(self, tile: GridTile, inputs: tuple[str, ...]) -> _Layout:
        """The tile's bands: four per pair in date order, their names and metadata."""
        grid = tile.pixel_grid(self.recipe.resolution)
        products = sorted((self._product(name) for name in inputs), key=lambda p: (p.pair, p.name))
        pairs: dict[tuple, list[GunwProduct]] = {}
        for product in products:
            pairs.setdefault(product.pair, []).append(product)
        prefixes = _band_prefixes(list(pairs))
        layers = self.layers
        names: list[str] = []
        metadata: list[dict[str, str]] = []
        first_band: dict[tuple, int] = {}
        for p, (pair, members) in enumerate(pairs.items()):
            first_band[pair] = p * len(layers)
            for layer in layers:
                names.append(f"{prefixes[pair]}_{layer.band}")
                metadata.append(_band_metadata(members, layer))
        data = np.full((len(names), grid.height, grid.width), np.nan, "float32")
        return _Layout(grid, data, tuple(names), tuple(metadata), first_band)

    def _product(self, name: str) -> GunwProduct:
        product = self.catalog.get(name)
        if product is None:
            raise SourceError(f"{name} is not in this run's search results")
        return product

    def _product_path(self, name: str, context: RenderContext | None) -> str:
        """A local path of the product: a --source file, the cache, or a fresh download."""
        if name in self.local:
            return self.local[name]
        product = self._product(name)
        if self._cached(product):
            return str(self.cache_dir() / name)
        from m3leo_tiles.sources.download import cached_download

        def download() -> Path:
            return cached_download(
                product.url,
                self.cache_dir(),
                name=product.file_name,
                session=_WorkerSession.get(self.hosts),
                expected_size=product.size,
                validate=(
                    functools.partial(_gunw_catalog.check_md5, expected=product.md5)
                    if product.md5
                    else None
                ),
            )

        if not product.url:
            raise SourceError(f"{name}: the search gives no download URL")
        if context is None:
            return str(download())
        with context.slot():
            return str(download())


def _found(count: int, excluded: Counter[str], selected: int, used: int, year: int | None
           ) -> str:  # fmt: skip
    """What the search gave, in words: a run that finds nothing says why (fetch.log)."""
    rules = ", ".join(f"{n} for {why}" for why, n in excluded.most_common())
    return (
        f"the search found {count} GUNW product{'s' if count != 1 else ''} for {year}"
        f"{'; excluded ' + rules if rules else ''}; {selected} kept, {used} over the tiles"
    )


def _save_search(path: Path, collection: Mapping[str, Any]) -> None:
    """Keep one cell's search answer in the cache (atomically, never through a link) for the
    next runs."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, strict_json.dumps(collection))
    except OSError as error:
        raise ConfigError(
            f"cannot write to the download cache {path.parent} ({error.strerror or error}); "
            "choose another with --cache"
        ) from None


def _band_prefixes(pairs: Sequence[tuple[dt.date, dt.date, str, int]]) -> dict[tuple, str]:
    """``REF_SEC``, with ``_A064`` (direction, track) added only where two pairs share dates."""
    by_dates: dict[tuple[dt.date, dt.date], int] = {}
    for reference, secondary, _, _ in pairs:
        by_dates[(reference, secondary)] = by_dates.get((reference, secondary), 0) + 1
    prefixes = {}
    for pair in pairs:
        reference, secondary, direction, track = pair
        prefix = f"{reference:%Y%m%d}_{secondary:%Y%m%d}"
        if by_dates[(reference, secondary)] > 1:
            prefix += f"_{direction[0].upper()}{track:03d}"
        prefixes[pair] = prefix
    return prefixes


def _band_metadata(members: Sequence[GunwProduct], layer: _gunw_read.Layer) -> dict[str, str]:
    first = members[0]
    return {
        "layer": layer.band,
        "reference_date": first.reference.isoformat(),
        "secondary_date": first.secondary.isoformat(),
        "temporal_baseline_days": str(first.baseline_days),
        "direction": first.direction,
        "track": str(first.track),
        "frame": ";".join(p.frame for p in members),
        "product": ";".join(p.name for p in members),
        "version": ";".join(p.version_text for p in members),
    }
