"""The ``earthengine`` source's adapter (the package docstring says what it does and why)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from m3leo_tiles.core.enums import ResamplingMethod
from m3leo_tiles.core.errors import (
    ConfigError,
    CredentialsError,
    EmptyTileError,
    SourceError,
    TransientSourceError,
)
from m3leo_tiles.grid.tile import GridTile, PixelGrid
from m3leo_tiles.sources.base import (
    Chip,
    RenderContext,
    RetryPolicy,
    SourceAdapter,
    SourceOption,
    TileInputs,
    whole_number,
)
from m3leo_tiles.sources.earthengine._answer import copy_bands, npy_view
from m3leo_tiles.sources.earthengine._ee_recipe import (
    EEParams,
    Output,
    band_chunks,
    build_image,
    count_images,
    parse_params,
)

if TYPE_CHECKING:
    from m3leo_tiles.recipes import Recipe

T = TypeVar("T")

URL_ENV = "M3LEO_EE_URL"
DEFAULT_HOST = "earthengine.googleapis.com"  # the client's endpoint when no --ee-url is given
API_KEY_ENV = "M3LEO_EE_API_KEY"
PROJECT_ENV = "EE_PROJECT"
CONCURRENCY_ENV = "M3LEO_EE_CONCURRENCY"
SERVICE_ACCOUNT_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
# Earth Engine's default quota is 40 concurrent requests per project (standard and
# high-volume endpoints alike; developers.google.com/earth-engine/guides/usage): half of it
# leaves room for the project's other users and for a retry storm's stragglers.
DEFAULT_CONCURRENCY = 20
# The first year with images of the collections the built-in recipes use (Earth Engine's
# catalog): a --year before it has none. Facts about collections, not recipe content, so they
# change no recipe's hash; a recipe over another collection may say ``first_year``.
FIRST_YEARS = {
    "COPERNICUS/S1_GRD": 2014,  # Sentinel-1A, from October 2014
    "COPERNICUS/S2_SR_HARMONIZED": 2017,  # Level-2A, from March 2017
    "COPERNICUS/S2_HARMONIZED": 2015,  # Level-1C, from June 2015
    "MODIS/061/MOD44B": 2000,
    "ESA/WorldCover/v100": 2020,
    "ESA/WorldCover/v200": 2021,
}
MAX_REQUEST_BYTES = 48 * 2**20  # the service refuses bigger computePixels responses
REQUEST_BYTES = int(MAX_REQUEST_BYTES * 0.95)  # what we ask for at most (headers, rounding)
MAX_BANDS = 1024
DEADLINE_S = 300.0  # one request; the service gives up on interactive computations before
INIT_TIMEOUT_S = 30.0  # discovery document and algorithm list, on the driver and each worker
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_WORDS = (
    "RESOURCE_EXHAUSTED",
    "Too many concurrent",
    "Too Many Requests",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "Computation timed out",
    "Service Unavailable",
    "rate limit",
)
RESAMPLE = {
    ResamplingMethod.NEAREST: None,
    ResamplingMethod.BILINEAR: "bilinear",
    ResamplingMethod.CUBIC: "bicubic",
}
AUTH_HINT = (
    "run `earthengine authenticate` (or set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
    f"key file, or {API_KEY_ENV} to an API key) and give the Cloud project with --project or "
    f"{PROJECT_ENV}"
)

_INIT_LOCK = threading.Lock()
_INITIALISED: dict[str, tuple[str | None, ...]] = {}  # per process: the set-up initialised


def _bounded(call: Callable[[], None], timeout_s: float) -> BaseException | type | None:
    """Run ``call`` on a daemon thread: its error, ``TimeoutError`` (the class) if it did not
    finish in time, or None. A hung connection then costs seconds, not the run."""
    outcome: dict[str, BaseException | None] = {}

    def target() -> None:
        try:
            call()
            outcome["error"] = None
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, name="ee-initialize", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome.get("error", TimeoutError)


def _check(url_given: bool) -> str:
    """What to check when Earth Engine cannot be reached: the endpoint the user gave, or (on
    the default one) the network, with the way to name a mirror."""
    if url_given:
        return f"check --ee-url ({URL_ENV})"
    return f"check your network, or set --ee-url/{URL_ENV} for a mirror"


def _no_answer(where: str, url_given: bool, last: BaseException | None) -> ConfigError:
    """No successful answer within the preflight's time: said as what happened, a service
    failing every request (HTTP 500...) or one that never answered."""
    status = http_status(last) if last is not None else None
    if status is None:  # nothing, or only timeouts and dropped connections
        return ConfigError(
            f"Earth Engine at {where} did not answer within {INIT_TIMEOUT_S:.0f} s; "
            f"{_check(url_given)}"
        )
    return ConfigError(
        f"Earth Engine at {where} answered HTTP {status} to every request for "
        f"{INIT_TIMEOUT_S:.0f} s (retried): the service is failing; try again later"
    )


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind an ``ee.EEException`` (kept on the googleapiclient error)."""
    for cause in (error, error.__context__, error.__cause__):
        response = getattr(cause, "resp", None)
        status = getattr(response, "status", None)
        if status is not None:
            with contextlib.suppress(TypeError, ValueError):
                return int(status)
    return None


def grid_json(grid: PixelGrid) -> dict[str, Any]:
    """The ``grid`` of a computePixels request: the chip's own CRS, transform and size."""
    t = grid.transform
    return {
        "dimensions": {"width": grid.width, "height": grid.height},
        "affineTransform": {
            "scaleX": t.a,
            "shearX": t.b,
            "translateX": t.c,
            "shearY": t.d,
            "scaleY": t.e,
            "translateY": t.f,
        },
        "crsCode": grid.crs,
    }


class EarthEngineSource(SourceAdapter):
    name = "earthengine"
    takes_sources = False  # the images are Earth Engine's, never local files
    retry_policy = RetryPolicy(attempts=6, base_delay_s=2.0, max_delay_s=60.0, jitter=0.5)
    cli_options = (
        SourceOption(
            "ee-url",
            "Earth Engine endpoint (a proxy, a test emulator); default Google's",
            env=URL_ENV,
            metavar="URL",
        ),
        SourceOption(
            "high-volume",
            f"use Earth Engine's high-volume endpoint ({HIGH_VOLUME_URL}) for bulk requests",
            flag=True,
        ),
        SourceOption(
            "project",
            "Google Cloud project registered for Earth Engine (quota and billing)",
            env=PROJECT_ENV,
            metavar="PROJECT",
        ),
        SourceOption(
            "ee-concurrency",
            "Earth Engine requests in flight across the whole cluster (keep it under the "
            "project's concurrent-request quota, 40 by default)",
            env=CONCURRENCY_ENV,
            metavar="K",
            default=str(DEFAULT_CONCURRENCY),
        ),
    )

    def __init__(self, recipe: Any, options: Any = None) -> None:
        super().__init__(recipe, options)
        where = recipe.path or f"recipe {recipe.name}"
        self.params: EEParams = parse_params(recipe.params, where)
        # Endpoint and project as the driver resolved them (``check``), so that workers whose
        # environment differs still talk to the same endpoint for the same project.
        self.settings: dict[str, str | None] = {}

    # --- configuration (driver) ------------------------------------------------------------

    @classmethod
    def check_params(cls, params: Mapping[str, Any], where: str) -> None:
        parse_params(params, where)

    @property
    def _where(self) -> str:
        return self.recipe.path or f"recipe {self.recipe.name}"

    def outputs(self) -> list[Output]:
        """The recipe's bands, in its order, with what each one is."""
        made = self.params.check_bands(self.recipe.bands, self._where)
        return [made[name] for name in self.recipe.bands]

    def check(self) -> Recipe:
        """Everything a user can get wrong, then one real connection: seconds, never a hang.

        The endpoint and project resolved here are kept (``settings``) for the workers."""
        recipe, where = self.recipe, self._where
        self.outputs()
        if recipe.windows or recipe.reducer:
            raise ConfigError(
                f"{where}: an earthengine recipe takes its windows and reducer under params "
                "(windows there are end-exclusive), not at the top level"
            )
        if recipe.nodata is None:
            raise ConfigError(
                f"{where}: key 'nodata': an earthengine recipe needs a nodata value for "
                "masked pixels (no image, clouds, outside the data)"
            )
        if recipe.resampling not in RESAMPLE:
            allowed = ", ".join(str(m) for m in RESAMPLE)
            raise ConfigError(
                f"{where}: key 'resampling': Earth Engine resamples with {allowed}; "
                f"{recipe.resampling} is not one of them"
            )
        if self.params.windows and self.options.year is None:
            raise ConfigError(
                f"recipe {recipe.name} composites date windows of a year: give --year YEAR"
            )
        self._check_year()
        self.concurrency()
        self.settings = {"url": self._url(), "project": self.option("project")}
        self._initialize()
        return recipe

    def _check_year(self) -> None:
        """A year without images is refused now, not after every tile came back empty: before
        the collection's first images (``FIRST_YEARS``, or the recipe's ``first_year`` for
        other collections), or one still to come."""
        year, params = self.options.year, self.params
        if year is None or not params.windows:
            return
        first = params.first_year or FIRST_YEARS.get(params.asset)
        this_year = dt.datetime.now(dt.UTC).year
        if (first is not None and year < first) or year > this_year:
            since = f"from {first} " if first is not None else ""
            raise ConfigError(
                f"--year {year}: {params.label} ({params.asset}) has images {since}to "
                f"{this_year}; choose a year between them"
            )

    def single_epoch(self) -> str | None:
        if self.params.windows:
            return None
        if self.params.image:
            return f"the single image {self.params.image}"
        return f"a {self.params.reducer} of all of {self.params.collection}, no date windows"

    def concurrency(self) -> int:
        value = self.option("ee-concurrency")
        return whole_number(value, "--ee-concurrency must be a whole number >= 1, got {value!r}",
                            default=DEFAULT_CONCURRENCY)  # fmt: skip

    def _url(self) -> str | None:
        url = self.option("ee-url")
        if self.option("high-volume"):
            if url:
                raise ConfigError("give either --ee-url or --high-volume, not both")
            return HIGH_VOLUME_URL
        if url and not str(url).startswith(("http://", "https://")):
            raise ConfigError(f"--ee-url must be an http(s) URL, got {url!r}")
        return str(url).rstrip("/") if url else None

    # --- connection (driver preflight and once per worker process) ----------------------------

    def setup_worker(self) -> None:
        self._initialize()

    def _credentials(self, ee: Any) -> tuple[Any, str | None]:
        """OAuth credentials and the project they imply; from the conventional places only."""
        key_file = os.environ.get(SERVICE_ACCOUNT_ENV)
        if key_file:
            try:
                with open(key_file, encoding="utf-8") as handle:
                    info = json.load(handle)
            except (OSError, ValueError) as error:
                raise CredentialsError(
                    f"cannot read the key file in {SERVICE_ACCOUNT_ENV} ({key_file}): "
                    f"{getattr(error, 'strerror', None) or error}"
                ) from None
            if info.get("type") == "service_account":
                from google.oauth2 import service_account

                try:
                    credentials = service_account.Credentials.from_service_account_info(
                        info, scopes=ee.oauth.SCOPES
                    )
                except (ValueError, KeyError) as error:
                    raise CredentialsError(
                        f"the service-account key in {SERVICE_ACCOUNT_ENV} is not valid: {error}"
                    ) from None
                return credentials, info.get("project_id")
        try:
            credentials = ee.data.get_persistent_credentials()
        except ee.EEException:
            raise CredentialsError(f"no Earth Engine credentials found: {AUTH_HINT}") from None
        return credentials, getattr(credentials, "quota_project_id", None)

    def _initialize(self) -> None:
        """``ee.Initialize`` once per process and endpoint, bounded in time."""
        if self.settings:
            url, project_option = self.settings["url"], self.settings["project"]
        else:
            url, project_option = self._url(), self.option("project")
        identity = (url, project_option, os.environ.get(API_KEY_ENV),
                    os.environ.get(SERVICE_ACCOUNT_ENV))  # fmt: skip
        with _INIT_LOCK:
            if _INITIALISED.get("done") == identity:
                return
            import ee

            api_key = os.environ.get(API_KEY_ENV)
            if api_key:
                credentials, project = None, None
            else:
                credentials, project = self._credentials(ee)
            project = project_option or project
            if not project:
                raise CredentialsError(
                    "no Cloud project for Earth Engine: pass --project PROJECT or set "
                    f"{PROJECT_ENV} (a project registered for Earth Engine)"
                )
            ee.data.setMaxRetries(0)  # our retry policy decides, with waits the client lacks
            where = url or DEFAULT_HOST
            retried: list[BaseException] = []  # what the service answered while retried

            def transient(error: BaseException) -> bool:
                retried.append(error)
                return self.is_transient(error)

            def connect() -> None:
                ee.Initialize(
                    credentials=credentials, url=url, cloud_api_key=api_key, project=project
                )
                # Initialising checks nothing once a process has the algorithm list, and the
                # project's registration is checked only by computations: one tiny one,
                # retried like any request when the quota is busy.
                self.retry_policy.run(lambda: ee.data.computeValue(ee.Number(1)),
                                      is_transient=transient)  # fmt: skip

            error = _bounded(connect, INIT_TIMEOUT_S)
            if error is TimeoutError:
                raise _no_answer(where, self._url_given(), retried[-1] if retried else None)
            if error is not None:
                raise self._init_error(ee, error, where, self._url_given()) from None
            ee.data.setDeadline(int(DEADLINE_S * 1000))
            self._widen_connection_pool()
            _INITIALISED["done"] = identity

    def _widen_connection_pool(self) -> None:
        """The client's requests.Session keeps 10 connections per host; with more threads
        urllib3 would open and discard one per request (and warn each time). Its adapter
        also reads each answer in one call instead of 10 KiB pieces (``_transport``)."""
        import requests

        from m3leo_tiles.sources.earthengine._transport import WholeBodyAdapter

        try:
            from ee import _state

            session = _state.get_state().requests_session
        except (ImportError, AttributeError):  # another client version: keep its defaults
            return
        if isinstance(session, requests.Session):
            size = max(10, 2 * (self.concurrency() or 1))
            adapter = WholeBodyAdapter(pool_connections=4, pool_maxsize=size)
            session.mount("https://", adapter)
            session.mount("http://", adapter)

    def _url_given(self) -> bool:
        """Whether the user chose the endpoint (--ee-url or its variable), not our default."""
        return bool(self.option("ee-url"))

    @staticmethod
    def _init_error(ee: Any, error: BaseException, where: str, url_given: bool) -> Exception:
        status = http_status(error)
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if status in (401, 403) or (
            isinstance(error, ee.EEException)
            and (
                "authoriz" in text.lower()
                or "permission" in text.lower()
                or "api key" in text.lower()
            )
        ):
            return CredentialsError(f"Earth Engine refused the credentials ({text}): {AUTH_HINT}")
        if isinstance(error, ee.EEException):
            return ConfigError(f"Earth Engine at {where} could not be initialised: {text}")
        return ConfigError(f"cannot reach Earth Engine at {where} ({text}); {_check(url_given)}")

    # --- planning (driver) ---------------------------------------------------------------

    def plan(self, tiles: Sequence[GridTile]) -> TileInputs:
        """Every tile needs the same server-side composite: no request before rendering."""
        params, year = self.params, self.options.year
        linked = sorted({mask.linked for mask in params.masks if mask.linked})
        label = "earthengine:" + "+".join([params.asset, *linked])
        if params.windows and year is not None:
            label += f"@{year}"
        return {tile.identifier: (label,) for tile in tiles}

    # --- rendering (worker) ----------------------------------------------------------------

    def is_transient(self, error: BaseException) -> bool:
        """Quota, overload and timeouts are worth waiting for; a bad request never is."""
        if isinstance(error, TransientSourceError):
            return True
        status = http_status(error)
        if status is not None:
            return status in TRANSIENT_STATUS
        import requests

        if isinstance(error, requests.ConnectionError | requests.Timeout | TimeoutError
                      | ConnectionError):  # fmt: skip
            return True
        return any(word in str(error) for word in TRANSIENT_WORDS)

    def render_many(
        self, items: Sequence[tuple[GridTile, tuple[str, ...]]], context: RenderContext
    ) -> Iterator[tuple[GridTile, Chip | Exception]]:
        """The batch's tiles on the threads the engine gives this worker; every request (not
        every tile) holds a slot of the cluster-wide budget and is retried on its own, so a
        tile split into several requests never repeats the parts it already has, and a
        backing-off request leaves its slot to others."""
        if not items:
            return
        self._initialize()
        threads = max(1, min(len(items), context.threads))
        with ThreadPoolExecutor(threads, thread_name_prefix="earthengine") as pool:
            futures = {pool.submit(self._outcome, tile, context): tile for tile, _ in items}
            for future in as_completed(futures):
                yield futures[future], future.result()

    def _outcome(self, tile: GridTile, context: RenderContext) -> Chip | Exception:
        try:
            return self._render(tile, context)
        except Exception as error:
            return error

    def _call(self, request: Callable[[], T], context: RenderContext) -> T:
        """One request under the budget, retried by the policy; errors become SourceErrors."""
        import ee

        def attempt() -> T:
            with context.slot():
                return request()

        try:
            return self.retry_policy.run(attempt, is_transient=self.is_transient,
                                         sleep=context.sleep)  # fmt: skip
        except ee.EEException as error:
            message = f"Earth Engine: {str(error).strip() or type(error).__name__}"
            if self.is_transient(error):
                raise TransientSourceError(message) from None
            raise SourceError(message) from None
        except Exception as error:
            if self.is_transient(error):
                raise TransientSourceError(f"Earth Engine unreachable: {error}") from None
            raise

    def _region(self, ee: Any, tile: GridTile) -> Any:
        ring = [list(point) for point in tile.lonlat_polygon().exterior.coords]
        return ee.Geometry.Polygon([ring], None, False)

    def _render(self, tile: GridTile, context: RenderContext) -> Chip:
        import ee

        recipe, params = self.recipe, self.params
        outputs = self.outputs()
        grid = tile.pixel_grid(recipe.resolution)
        region = self._region(ee, tile)
        itemsize = np.dtype(recipe.dtype).itemsize
        chunks = band_chunks(len(outputs), grid.width * grid.height * itemsize,
                             REQUEST_BYTES, MAX_BANDS)  # fmt: skip
        nodata = float(recipe.nodata) if recipe.nodata is not None else 0.0
        data = np.empty((len(outputs), grid.height, grid.width), dtype=recipe.dtype)
        for chunk in chunks:
            wanted = [outputs[i] for i in chunk]
            image = build_image(
                ee, params, wanted, year=self.options.year, dtype=recipe.dtype, nodata=nodata,
                scale=recipe.scale, region=region, resample=RESAMPLE[recipe.resampling],
            )  # fmt: skip
            request = {
                "expression": image,
                "fileFormat": "NPY",  # the bytes: ``_answer`` views them, no numpy.load
                "bandIds": [o.name for o in wanted],
                "grid": grid_json(grid),
            }
            pixels = self._call(lambda request=request: ee.data.computePixels(request), context)
            self._unpack(pixels, wanted, grid, data[chunk.start : chunk.stop])
        reasons = self._empty_reasons(ee, data, outputs, nodata, region, context)
        metadata = {"empty_windows": "; ".join(reasons)} if reasons else {}
        band_metadata = tuple(self._band_tags(output) for output in outputs)
        return Chip(data, tuple(recipe.bands), metadata, band_metadata)

    def _unpack(self, payload: bytes, wanted: Sequence[Output], grid: PixelGrid,
                out: np.ndarray) -> None:  # fmt: skip
        """Copy the answer (NPY bytes of a structured array, one field per band) into ``out``,
        checking that it is what was asked: the bands in order, on the grid's shape."""
        names = [o.name for o in wanted]
        pixels = npy_view(payload)
        fields = pixels.dtype.names or ()
        if tuple(fields) != tuple(names) or pixels.shape != (grid.height, grid.width):
            raise SourceError(
                f"Earth Engine sent bands {list(fields)} of {pixels.shape} pixels; asked for "
                f"{names} of {(grid.height, grid.width)}"
            )
        copy_bands(pixels, names, out)  # one copy, cast to the recipe's dtype if it differs

    def _empty_reasons(
        self, ee: Any, data: np.ndarray, outputs: Sequence[Output], nodata: float,
        region: Any, context: RenderContext,
    ) -> list[str]:  # fmt: skip
        """Why whole windows came back as nodata: no image there, or every pixel masked.

        Asked only when a (window, group) has no valid pixel, so a normal tile costs no extra
        request. A tile with no valid pixel at all is then recorded ``empty`` with these
        reasons by the caller (via ``EmptyTileError``).
        """
        params = self.params
        if params.collection is None:
            return []
        parts: dict[tuple[str, str], list[int]] = {}
        for index, output in enumerate(outputs):
            parts.setdefault(output.part, []).append(index)
        empty = [key for key, rows in parts.items()
                 if all(not (data[row] != nodata).any() for row in rows)]  # fmt: skip
        if not empty:
            return []
        first_of = {o.part: o for o in outputs}
        selected = [(first_of[key].window, first_of[key].group) for key in empty]
        counts = self._call(
            lambda: ee.data.computeValue(
                count_images(ee, params, selected, self.options.year, region)
            ),
            context,
        )
        reasons = []
        year = self.options.year
        for index, (window, group) in enumerate(selected):
            when = f" in {window.label(year)}" if window is not None and year else ""
            which = f" ({group})" if group else ""
            if int(counts.get(str(index), 0)) == 0:
                reasons.append(f"no {params.label} image{which}{when}")
            else:
                reasons.append(f"every {params.label} pixel{which} masked{when}")
        if len(empty) == len(parts):
            raise EmptyTileError("; ".join(reasons))
        return reasons

    def _band_tags(self, output: Output) -> dict[str, str]:
        tags = {"source_band": output.band}
        if output.window is not None and self.options.year is not None:
            start, end = output.window.dates(self.options.year)
            tags["window"] = f"{start}/{end}"
        if output.group:
            tags["group"] = output.group
        return tags
