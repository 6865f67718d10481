"""The earthengine source against the loopback emulator, through the real earthengine-api client.

Each test inspects what the client really sent (collections, date windows, the cloud mask,
reducers, band ids and their order, the grid) and compares the chip with the emulator's
position-dependent pixels, so a shifted or transposed chip fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.ee_emulator import (
    EmulatorServer,
    constants,
    date_ranges,
    expected_pixels,
    function_names,
    result_dtype,
    serve_earthengine,
)

from m3leo_tiles.core.errors import ConfigError, CredentialsError, EmptyTileError, SourceError
from m3leo_tiles.grid.tile import BoxTile, Tile
from m3leo_tiles.recipes import load_recipe
from m3leo_tiles.sources.base import Chip, FetchOptions, RenderContext
from m3leo_tiles.sources.earthengine import EarthEngineSource
from m3leo_tiles.sources.earthengine.adapter import grid_json

TILE = Tile.from_point(12.5, 41.9)  # Rome, 33N
SOUTH_TILE = Tile.from_point(-47.9, -15.8)  # Brasília, 23S
BOX = BoxTile("geetiles_0042", 12.40, 41.80, 12.45, 41.84)


class FakeContext(RenderContext):
    """The engine's RenderContext with an in-process budget of ``k`` slots (instead of the
    cluster's semaphore), counting how many are held, and sleeps recorded instead of slept."""

    def __init__(self, k: int = 4, threads: int = 4) -> None:
        super().__init__(threads=threads, slot=self._hold, sleep=self._record)
        self.sleeps: list[float] = []
        self.held = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._budget = threading.Semaphore(k)

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        with self._budget:
            with self._lock:
                self.held += 1
                self.peak = max(self.peak, self.held)
            try:
                yield
            finally:
                with self._lock:
                    self.held -= 1

    def _record(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    with serve_earthengine() as server:
        monkeypatch.setenv("M3LEO_EE_API_KEY", "test-key")
        monkeypatch.setenv("EE_PROJECT", "m3leo-test")
        monkeypatch.setenv("M3LEO_EE_URL", server.url)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        yield server


def adapter(name: str, year: int | None = 2020, **extra: str) -> EarthEngineSource:
    recipe = load_recipe(name)
    source = EarthEngineSource(recipe, FetchOptions(year=year, extra=extra))
    source.check()
    return source


def render(source: EarthEngineSource, tiles, context: FakeContext | None = None) -> dict:
    context = context or FakeContext()
    outcomes = dict(source.render_many([(t, ("x",)) for t in tiles], context))  # type: ignore[arg-type]
    assert set(outcomes) == set(tiles)
    return outcomes


def assert_chip_is_the_tiles(chip: Chip, tile, recipe) -> None:
    grid = tile.pixel_grid(recipe.resolution)
    assert chip.band_names == recipe.bands
    assert chip.data.shape == (len(recipe.bands), grid.height, grid.width)
    assert chip.data.dtype == np.dtype(recipe.dtype)
    for index, band in enumerate(recipe.bands):
        np.testing.assert_array_equal(chip.data[index], expected_pixels(band, grid, recipe.dtype))


def test_s2srm_asks_for_cloud_free_monthly_means_on_the_tiles_grid(emulator) -> None:
    source = adapter("s2srm")
    (chip,) = render(source, [TILE]).values()
    assert isinstance(chip, Chip), chip
    assert_chip_is_the_tiles(chip, TILE, source.recipe)
    (body,) = emulator.pixel_requests()
    expression = body["expression"]
    assert body["bandIds"] == list(source.recipe.bands)
    assert body["fileFormat"] == "NPY"
    assert body["grid"] == grid_json(TILE.pixel_grid(10))
    assert body["grid"]["crsCode"] == "EPSG:32633"
    assert body["grid"]["dimensions"] == {"width": 448, "height": 448}
    assert body["grid"]["affineTransform"]["translateX"] == TILE.x_min
    assert body["grid"]["affineTransform"]["translateY"] == TILE.y_min + 4480
    assert body["grid"]["affineTransform"]["scaleY"] == -10
    assert {"COPERNICUS/S2_SR_HARMONIZED", "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"} <= set(
        c for c in constants(expression) if isinstance(c, str)
    )
    assert sorted(set(date_ranges(expression))) == [
        ("2020-03-01", "2020-04-01"),
        ("2020-06-01", "2020-07-01"),
        ("2020-09-01", "2020-10-01"),
        ("2020-12-01", "2021-01-01"),
    ]
    calls = function_names(expression)
    assert "Image.linkCollection" in calls and calls.count("reduce.mean") == 4
    assert "Image.gte" in calls and 0.6 in constants(expression)
    assert ["cs_cdf"] in constants(expression)
    assert "Collection.filter" in calls and "Filter.intersects" in calls  # the tile's footprint
    assert result_dtype(expression) == "uint16"  # cast on the server: 16 MB, one request
    label = "earthengine:COPERNICUS/S2_SR_HARMONIZED+GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
    assert source.plan([TILE]) == {TILE.identifier: (f"{label}@2020",)}
    assert chip.band_metadata[0] == {"source_band": "B2", "window": "2020-03-01/2020-04-01"}


def test_answers_come_through_the_whole_body_connections_of_a_widened_pool(emulator) -> None:
    """Each answer is read in one call (``_transport``), on a pool as wide as the threads."""
    from ee import _state

    from m3leo_tiles.sources.earthengine._transport import WholeBodyAdapter

    source = adapter("s2srm", **{"ee-concurrency": "12"})
    connections = _state.get_state().requests_session.get_adapter(emulator.url)
    assert isinstance(connections, WholeBodyAdapter)
    assert connections._pool_maxsize == 24
    (chip,) = render(source, [TILE]).values()
    assert_chip_is_the_tiles(chip, TILE, source.recipe)


def test_s1grd_seasonal_means_keep_orbit_directions_apart(emulator) -> None:
    source = adapter("s1grd", year=2021)
    (chip,) = render(source, [SOUTH_TILE]).values()
    assert isinstance(chip, Chip), chip
    assert_chip_is_the_tiles(chip, SOUTH_TILE, source.recipe)
    (body,) = emulator.pixel_requests()
    expression = body["expression"]
    assert body["grid"]["crsCode"] == "EPSG:32723"
    assert body["bandIds"][:4] == ["winter_vvasc", "winter_vvdes", "winter_vhasc", "winter_vhdes"]
    assert ("2020-12-01", "2021-03-01") in date_ranges(expression)  # DJF spans the new year
    assert ("2021-09-01", "2021-12-01") in date_ranges(expression)
    values = constants(expression)
    assert {"COPERNICUS/S1_GRD", "IW", "VV", "VH", "ASCENDING", "DESCENDING"} <= {
        v for v in values if isinstance(v, str)
    }
    calls = function_names(expression)
    # the paper's seasonal averages: a mean of the dB values, 4 seasons x 2 directions
    assert calls.count("reduce.mean") == 8 and "reduce.median" not in calls
    assert "Filter.listContains" in calls and "Filter.equals" in calls
    assert result_dtype(expression) == "float32"
    assert chip.band_metadata[0]["group"] == "asc"


@pytest.mark.parametrize(
    ("name", "asset", "dtype", "size", "call"),
    [
        ("srtm", "CGIAR/SRTM90_V4", "int16", 50, "Image.resample"),
        ("esawc", "ESA/WorldCover/v100", "uint8", 448, "ImageCollection.mosaic"),
        ("modisveg", "MODIS/061/MOD44B", "uint8", 20, "Collection.first"),
    ],
)
def test_static_and_yearly_recipes(emulator, name, asset, dtype, size, call) -> None:
    source = adapter(name)
    (chip,) = render(source, [TILE]).values()
    assert isinstance(chip, Chip), chip
    assert_chip_is_the_tiles(chip, TILE, source.recipe)
    (body,) = emulator.pixel_requests()
    assert asset in constants(body["expression"])
    assert body["grid"]["dimensions"] == {"width": size, "height": size}
    assert result_dtype(body["expression"]) == dtype
    assert call in function_names(body["expression"])
    if name == "esawc":
        assert "Image.resample" not in function_names(body["expression"])  # nearest
    if name == "modisveg":
        assert date_ranges(body["expression"]) == [("2020-01-01", "2021-01-01")]


def test_foreign_lonlat_box_tiles_get_their_own_grid(emulator) -> None:
    source = adapter("srtm")
    (chip,) = render(source, [BOX]).values()
    assert isinstance(chip, Chip), chip
    assert_chip_is_the_tiles(chip, BOX, source.recipe)
    (body,) = emulator.pixel_requests()
    assert body["grid"] == grid_json(BOX.pixel_grid(89.6))
    assert body["grid"]["crsCode"] == "EPSG:4326"


def test_quota_errors_are_retried_with_backoff_then_succeed(emulator) -> None:
    source = adapter("srtm")
    emulator.errors.extend([
        (429, "RESOURCE_EXHAUSTED", "Too many concurrent aggregations."),
        (503, "UNAVAILABLE", "The service is currently unavailable."),
        (429, "RESOURCE_EXHAUSTED", "Quota exceeded."),
    ])  # fmt: skip
    context = FakeContext()
    (chip,) = render(source, [TILE], context).values()
    assert isinstance(chip, Chip), chip
    assert len(emulator.pixel_requests()) == 4
    assert len(context.sleeps) == 3  # our policy's waits, not the client's
    policy = source.retry_policy
    for retry, slept in enumerate(context.sleeps, start=1):
        nominal = min(policy.max_delay_s, policy.base_delay_s * 2 ** (retry - 1))
        assert nominal * (1 - policy.jitter) <= slept <= nominal * (1 + policy.jitter)


def test_retries_are_bounded(emulator) -> None:
    source = adapter("srtm")
    emulator.errors.extend([(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")] * 50)
    (outcome,) = render(source, [TILE]).values()
    assert isinstance(outcome, SourceError) and "Quota exceeded" in str(outcome)
    assert len(emulator.pixel_requests()) == source.retry_policy.attempts


def test_a_permanent_error_fails_that_tile_only_with_earth_engines_message(emulator) -> None:
    source = adapter("s2srm")
    emulator.bad_bands.add("mar_B8A")
    outcomes = render(source, [TILE])
    (error,) = outcomes.values()
    assert isinstance(error, SourceError)
    assert "did not match any bands" in str(error) and "mar_B8A" in str(error)
    assert len(emulator.pixel_requests()) == 1  # a 400 is never retried


def test_an_oversized_request_is_split_by_bands_and_joined(emulator, tmp_path) -> None:
    recipe = load_recipe("s2srm")
    recipe = dataclasses.replace(recipe, dtype="float64", nodata=-9999.0, path=None)
    source = EarthEngineSource(recipe, FetchOptions(year=2020))
    source.check()
    (chip,) = render(source, [TILE]).values()
    assert isinstance(chip, Chip), chip
    assert_chip_is_the_tiles(chip, TILE, recipe)  # 40 x 448 x 448 float64 = 64 MB
    bodies = emulator.pixel_requests()
    assert [len(b["bandIds"]) for b in bodies] == [20, 20]
    assert bodies[0]["bandIds"] + bodies[1]["bandIds"] == list(recipe.bands)
    assert all(result_dtype(b["expression"]) == "float64" for b in bodies)


def test_a_month_without_images_is_nodata_with_a_reason(emulator) -> None:
    source = adapter("s2srm")
    emulator.masked_bands.update(b for b in source.recipe.bands if b.startswith("mar_"))
    emulator.empty_windows.add(("COPERNICUS/S2_SR_HARMONIZED", "2020-03-01"))
    (chip,) = render(source, [TILE]).values()
    assert isinstance(chip, Chip), chip
    assert (chip.data[:10] == 0).all() and (chip.data[10:] > 0).all()
    assert chip.metadata["empty_windows"] == "no Sentinel-2 image in 2020-03"
    (count,) = [r for r in emulator.value_requests() if date_ranges(r["expression"])]
    assert date_ranges(count["expression"]) == [("2020-03-01", "2020-04-01")]


def test_a_tile_without_any_image_is_empty_with_the_reasons(emulator) -> None:
    source = adapter("s2srm")
    emulator.masked_bands.update(source.recipe.bands)
    emulator.empty_windows.update({("COPERNICUS/S2_SR_HARMONIZED", "2020-03-01"),
                                   ("COPERNICUS/S2_SR_HARMONIZED", "2020-06-01")})  # fmt: skip
    (outcome,) = render(source, [TILE]).values()
    assert isinstance(outcome, EmptyTileError)
    assert str(outcome) == (
        "no Sentinel-2 image in 2020-03; no Sentinel-2 image in 2020-06; "
        "every Sentinel-2 pixel masked in 2020-09; every Sentinel-2 pixel masked in 2020-12"
    )


def test_requests_of_a_batch_run_concurrently_within_the_budget(emulator) -> None:
    emulator.latency_s = 0.1
    source = adapter("srtm")
    tiles = [Tile(33, 1036, 60 + i) for i in range(12)]
    context = FakeContext(k=3, threads=6)
    started = time.perf_counter()
    outcomes = render(source, tiles, context)
    elapsed = time.perf_counter() - started
    assert all(isinstance(o, Chip) for o in outcomes.values())
    assert context.peak == 3  # the budget, not the threads, limits what is in flight
    assert emulator.log.peak_in_flight == 3
    assert elapsed < 12 * 0.1 * 0.6  # far from one at a time
    for tile, chip in outcomes.items():
        assert_chip_is_the_tiles(chip, tile, source.recipe)


def test_missing_credentials_are_one_clear_error(emulator, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("M3LEO_EE_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    source = EarthEngineSource(load_recipe("srtm"), FetchOptions(year=2020))
    started = time.perf_counter()
    with pytest.raises(
        CredentialsError, match=r"earthengine authenticate.*--project or EE_PROJECT"
    ):
        source.check()
    assert time.perf_counter() - started < 5


def test_a_refused_key_and_a_missing_project_are_credentials_errors(emulator, monkeypatch) -> None:
    emulator.refuse_keys.add("bad-key")
    monkeypatch.setenv("M3LEO_EE_API_KEY", "bad-key")
    with pytest.raises(CredentialsError, match=r"refused the credentials \(API key not valid"):
        EarthEngineSource(load_recipe("srtm"), FetchOptions()).check()
    monkeypatch.setenv("M3LEO_EE_API_KEY", "test-key")
    monkeypatch.delenv("EE_PROJECT")
    with pytest.raises(CredentialsError, match=r"--project PROJECT or set EE_PROJECT"):
        EarthEngineSource(load_recipe("srtm"), FetchOptions()).check()


def test_a_bad_service_account_file_is_a_credentials_error(emulator, monkeypatch, tmp_path):
    monkeypatch.delenv("M3LEO_EE_API_KEY")
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account", "client_email": "x@y"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(CredentialsError, match=r"service-account key .* not valid"):
        EarthEngineSource(load_recipe("srtm"), FetchOptions()).check()


def test_an_unreachable_endpoint_is_a_config_error(emulator, monkeypatch) -> None:
    monkeypatch.setenv("M3LEO_EE_URL", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(ConfigError, match=r"cannot reach Earth Engine at http://127.0.0.1:9"):
        EarthEngineSource(load_recipe("srtm"), FetchOptions()).check()


def test_an_unreachable_default_endpoint_does_not_blame_an_ee_url_never_given(
    emulator, monkeypatch
) -> None:
    import ee
    import requests

    def no_network(**_: object) -> None:  # what the client raises offline; nothing is sent
        raise requests.ConnectionError(
            "HTTPSConnectionPool(host='earthengine.googleapis.com', port=443): Max retries"
        )

    monkeypatch.delenv("M3LEO_EE_URL")
    monkeypatch.setattr(ee, "Initialize", no_network)
    with pytest.raises(ConfigError) as raised:
        EarthEngineSource(load_recipe("srtm"), FetchOptions()).check()
    text = str(raised.value)
    assert text.startswith("cannot reach Earth Engine at earthengine.googleapis.com")
    assert text.endswith("check your network, or set --ee-url/M3LEO_EE_URL for a mirror")
    assert "check --ee-url" not in text


def test_a_service_failing_every_request_is_not_called_a_timeout(emulator, monkeypatch) -> None:
    import m3leo_tiles.sources.earthengine.adapter as module

    emulator.errors = [(500, "INTERNAL", "Internal error encountered.")] * 20
    monkeypatch.setattr(module, "INIT_TIMEOUT_S", 3.0)  # the first retries wait 2-3 s
    with pytest.raises(ConfigError) as raised:
        EarthEngineSource(load_recipe("srtm"), FetchOptions()).check()
    text = str(raised.value)
    assert f"at {emulator.url} answered HTTP 500 to every request for 3 s" in text
    assert "did not answer" not in text and "--ee-url" not in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"year": None, "recipe": "s2srm"}, r"give --year"),
        ({"extra": {"ee-concurrency": "0"}}, r"--ee-concurrency must be"),
        ({"extra": {"high-volume": True, "ee-url": "http://x"}}, r"not both"),
        ({"extra": {"ee-url": "ftp://x"}}, r"http\(s\) URL"),
    ],
)
def test_bad_options_are_config_errors(emulator, change, message) -> None:
    recipe = load_recipe(change.pop("recipe", "srtm"))
    options = FetchOptions(**{"year": 2020, **change})
    with pytest.raises(ConfigError, match=message):
        EarthEngineSource(recipe, options).check()


def test_high_volume_selects_the_high_volume_endpoint(monkeypatch) -> None:
    monkeypatch.delenv("M3LEO_EE_URL", raising=False)
    source = EarthEngineSource(load_recipe("srtm"), FetchOptions(extra={"high-volume": True}))
    assert source._url() == "https://earthengine-highvolume.googleapis.com"


def test_an_endpoint_that_never_answers_is_a_config_error_not_a_hang(emulator, monkeypatch):
    import socket

    import m3leo_tiles.sources.earthengine.adapter as module

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("M3LEO_EE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(module, "INIT_TIMEOUT_S", 1.0)
        started = time.perf_counter()
        with pytest.raises(ConfigError, match=r"did not answer within 1 s"):
            EarthEngineSource(load_recipe("srtm"), FetchOptions()).check()
        assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("recipe", "year", "message"),
    [
        ("s1grd", 1999, r"--year 1999: Sentinel-1 GRD \(COPERNICUS/S1_GRD\) has images from 2014"),
        ("s2srm", 2016, r"has images from 2017 to"),
        ("modisveg", 3000, r"--year 3000: .* to \d{4}; choose a year between them"),
    ],
)
def test_years_a_collection_cannot_have_are_refused_before_any_request(
    emulator, recipe, year, message
) -> None:
    """A year before a collection's first images, or one still to come, is refused up front:
    it would only make a dataset of empty tiles, one request each."""
    with pytest.raises(ConfigError, match=message):
        EarthEngineSource(load_recipe(recipe), FetchOptions(year=year)).check()
    assert emulator.pixel_requests() == []


def test_a_recipe_over_another_collection_says_its_first_year(emulator, tmp_path) -> None:
    """``first_year`` in params does it for a collection the source does not know."""
    text = (
        Path(load_recipe("modisveg").path)
        .read_text()
        .replace(
            "  collection: MODIS/061/MOD44B\n",
            "  collection: MY/OWN/COLLECTION\n  first_year: 2010\n",
        )
    )
    (tmp_path / "own.yaml").write_text(text.replace("name: modisveg", "name: own"))
    recipe = load_recipe(tmp_path / "own.yaml")
    with pytest.raises(
        ConfigError, match=r"--year 2009: .*MY/OWN/COLLECTION\) has images from 2010"
    ):
        EarthEngineSource(recipe, FetchOptions(year=2009)).check()
    EarthEngineSource(recipe, FetchOptions(year=2010)).check()  # its first year is fine
