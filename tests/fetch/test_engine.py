"""The engine's contract for remote sources: retries, the request budget, worker set-up, one
outcome per tile, per-tile band lists and chip metadata, source options.

Fake sources (tests/helpers/fake_sources.py) play the sources; ``fake-http`` makes one real
HTTP request per chip to a loopback server that counts how many it has in flight.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

import helpers.fake_sources
from helpers.cli import run_cli
from helpers.loopback import QuietHandler, serve
from m3leo_tiles.cli.tiles import parse_source_options
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError, EmptyTileError, SourceError, TransientSourceError
from m3leo_tiles.dataset.geotiff import ChipEncoder
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch.api import FetchRequest, fetch_tiles
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe, parse_recipe
from m3leo_tiles.sources.base import (
    Chip,
    FetchOptions,
    PerTileSource,
    RenderContext,
    RetryPolicy,
    SourceOption,
    check_recipe,
)

ORIGIN = Tile.from_point(4.5, 43.6)
TILES = [Tile(ORIGIN.zone, ORIGIN.row + i, ORIGIN.col + j) for i in range(4) for j in range(6)]


def fake_recipe(source: str, bands=("value",), **params) -> Recipe:
    return Recipe(name=source, source=source, resolution=224.0, bands=bands, dtype="int16",
                  nodata=-1, params=params)  # fmt: skip


def run(address: str, recipe: Recipe, out: Path, tiles=TILES, **kwargs):
    request = FetchRequest(aoi="engine", out=out, scheduler=address, progress=False, **kwargs)
    return fetch_tiles(recipe, tiles, request)


class SlowOk(QuietHandler):
    def do_GET(self) -> None:
        self._accounted("GET", lambda: self.send_bytes(200, b"ok"))


# --- retry policy ---------------------------------------------------------------------------


def test_retry_policy_delays_grow_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(attempts=6, base_delay_s=2.0, max_delay_s=10.0, jitter=0.25)
    assert [policy.delay(n, rng=lambda: 0.5) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(1, rng=lambda: 0.0) == pytest.approx(1.5)
    assert policy.delay(1, rng=lambda: 1.0) == pytest.approx(2.5)


def test_retry_policy_retries_only_transient_errors_with_injected_time() -> None:
    """A source whose quota needs long waits: 30 s, 60 s — measured on a fake clock."""
    slept: list[float] = []
    calls = []

    def quota_then_ok() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientSourceError("RESOURCE_EXHAUSTED")
        return "chip"

    policy = RetryPolicy(attempts=5, base_delay_s=30.0, max_delay_s=300.0, jitter=0.0)
    is_transient = lambda e: isinstance(e, TransientSourceError)  # noqa: E731
    assert policy.run(quota_then_ok, is_transient=is_transient, sleep=slept.append) == "chip"
    assert slept == [30.0, 60.0]

    def permanent() -> str:
        calls.append(1)
        raise SourceError("INVALID_ARGUMENT")

    calls.clear()
    with pytest.raises(SourceError, match="INVALID_ARGUMENT"):
        policy.run(permanent, is_transient=is_transient, sleep=slept.append)
    assert len(calls) == 1

    def always() -> str:
        raise TransientSourceError("503")

    slept.clear()
    with pytest.raises(TransientSourceError):
        policy.run(always, is_transient=is_transient, sleep=slept.append)
    assert len(slept) == 4  # five tries, four waits


class Flaky(PerTileSource):
    name = "flaky-inline"
    retry_policy = RetryPolicy(attempts=3, base_delay_s=45.0, max_delay_s=600.0, jitter=0.0)

    def __init__(self, recipe, options=None, failures=2):
        super().__init__(recipe, options)
        self.failures = failures
        self.calls = 0

    def plan(self, tiles):
        return {}

    def render_tile(self, tile, inputs):
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientSourceError("429 quota")
        return Chip(np.zeros((1, 20, 20), "int16"), ("value",))


def test_render_many_applies_the_adapters_policy() -> None:
    slept: list[float] = []
    adapter = Flaky(fake_recipe("fake-synthetic"), failures=2)
    [(_, chip)] = adapter.render_many([(TILES[0], ("x",))], RenderContext(sleep=slept.append))
    assert isinstance(chip, Chip) and slept == [45.0, 90.0]
    adapter = Flaky(fake_recipe("fake-synthetic"), failures=5)
    [(_, error)] = adapter.render_many([(TILES[0], ("x",))], RenderContext(sleep=slept.append))
    assert isinstance(error, TransientSourceError) and adapter.calls == 3


# --- the request budget ---------------------------------------------------------------------


def test_budget_is_never_exceeded_across_two_workers(cluster, tmp_path: Path) -> None:
    with serve(SlowOk) as server:
        server.latency_s = 0.15
        recipe = fake_recipe("fake-http", url=server.url, budget=3)
        report = run(cluster.scheduler_address, recipe, tmp_path / "out")
        peak = server.log.peak_in_flight
        requests = len(server.log.paths())
    assert report.ok == len(TILES) and requests == len(TILES)
    assert peak <= 3
    assert peak >= 2  # both workers' threads did work at once: the budget was used


def test_io_bound_sources_overlap_requests_inside_one_worker() -> None:
    with serve(SlowOk) as server:
        server.latency_s = 0.2
        recipe = fake_recipe("fake-http", url=server.url, budget=8)
        adapter = helpers.fake_sources.FakeHttp(recipe)
        items = [(t, (f"{server.url}/{t.identifier}",)) for t in TILES[:8]]
        outcomes = list(adapter.render_many(items, RenderContext(threads=8)))
        assert server.log.peak_in_flight > 1
    assert [t.identifier for t, _ in outcomes] == [t.identifier for t, _ in items]  # in order
    assert all(isinstance(chip, Chip) for _, chip in outcomes)


# --- worker set-up --------------------------------------------------------------------------


def test_setup_worker_runs_once_per_process_on_a_local_cluster(cluster, tmp_path: Path) -> None:
    setups = tmp_path / "setups"
    setups.mkdir()
    with serve(SlowOk) as server:
        recipe = fake_recipe("fake-http", url=server.url, setup_dir=str(setups))
        report = run(cluster.scheduler_address, recipe, tmp_path / "out")
    assert report.ok == len(TILES)
    pids = [p.name.split("-")[0] for p in setups.iterdir()]
    assert len(pids) == len(set(pids)) >= 1  # never twice in one process
    assert str(os.getpid()) not in pids  # the driver renders nothing


@pytest.mark.slow
def test_setup_worker_runs_once_on_an_existing_cluster(external_cluster, tmp_path: Path) -> None:
    address, _ = external_cluster
    setups = tmp_path / "setups"
    setups.mkdir()
    with serve(SlowOk) as server:
        recipe = fake_recipe("fake-http", url=server.url, setup_dir=str(setups), budget=2)
        first = run(address, recipe, tmp_path / "out", tiles=TILES[:8])
        second = run(address, recipe, tmp_path / "out", tiles=TILES[8:16])
    assert first.ok == second.ok == 8
    assert len(list(setups.iterdir())) == 1  # one worker process, two runs, one set-up


# --- exactly one outcome per tile -----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "failed", "reason"),
    [
        ({"skip": [TILES[1].identifier]}, {TILES[1].identifier}, "gave no chip"),
        ({"twice": [TILES[2].identifier]}, set(), ""),
        ({"break_after": 3}, {t.identifier for t in TILES[3:6]}, "batch stopped"),
    ],
)
def test_every_tile_gets_exactly_one_row(tmp_path: Path, params, failed, reason) -> None:
    from m3leo_tiles.fetch.worker import Batch, render_batch

    adapter = helpers.fake_sources.FakeOutcomes(fake_recipe("fake-outcomes", **params))
    items = tuple((t, ("fake://all",)) for t in TILES[:6])
    rows = render_batch(adapter, Batch(str(tmp_path), items))
    assert sorted(r.identifier for r in rows) == sorted(t.identifier for t in TILES[:6])
    assert {r.identifier for r in rows if r.status is TileStatus.FAILED} == failed
    assert all(reason in r.reason for r in rows if r.identifier in failed)
    assert len(list(tmp_path.glob("*.tif"))) == 6 - len(failed)


def test_empty_tile_error_is_recorded_empty_with_its_reason(cluster, tmp_path: Path) -> None:
    class NoImage(PerTileSource):
        name = "no-image-inline"

        def plan(self, tiles):
            return {}

        def render_tile(self, tile, inputs):
            raise EmptyTileError("no Sentinel-2 image in 2020-03")

    [(_, outcome)] = NoImage(fake_recipe("fake-synthetic")).render_many(
        [(TILES[0], ("x",))], RenderContext()
    )
    assert isinstance(outcome, EmptyTileError)
    from m3leo_tiles.fetch.worker import Batch, render_batch

    rows = render_batch(NoImage(fake_recipe("fake-synthetic")),
                        Batch(str(tmp_path), ((TILES[0], ("x",)),)))  # fmt: skip
    assert rows[0].status is TileStatus.EMPTY
    assert rows[0].reason == "no Sentinel-2 image in 2020-03"


# --- per-tile bands and chip metadata --------------------------------------------------------


PER_TILE_YAML = """
source: fake-per-tile-bands
resolution: 224
bands_per_tile: true
dtype: int16
nodata: -1
"""


def test_recipe_with_per_tile_bands_needs_no_band_list(tmp_path: Path) -> None:
    import yaml

    recipe = parse_recipe(yaml.safe_load(PER_TILE_YAML), "per-tile.yaml", tmp_path / "p.yaml")
    assert recipe.bands_per_tile and recipe.bands == ()
    with pytest.raises(ConfigError, match="bands"):  # refused by the source, which needs them
        check_recipe(parse_recipe({"source": "fake-synthetic", "resolution": 224}, "x.yaml",
                                  tmp_path / "x.yaml"))  # fmt: skip


def test_per_tile_bands_end_to_end_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pairs.yaml").write_text(PER_TILE_YAML)
    result = run_cli(["fetch", str(tmp_path / "pairs.yaml"), "--aoi", "demo", "--limit", "4",
                      "--out", str(tmp_path / "data"), "--workers", "1", "--quiet"],
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    chips = sorted((tmp_path / "data" / "demo" / "pairs").glob("*.tif"))
    assert len(chips) == 4
    counts = set()
    for chip in chips:
        tile_id = chip.stem
        with rasterio.open(chip) as dataset:
            counts.add(dataset.count)
            assert all(d.endswith(f"_coherence_{tile_id}") for d in dataset.descriptions)
            assert dataset.tags()["products"] == f"product-{tile_id}"
            assert dataset.tags()["inputs"] == "real-input"  # the source's word wins
            assert dataset.tags(1)["reference"] == "2020-01-01"
            assert dataset.tags(dataset.count)["baseline_days"] == str(dataset.count)
            assert dataset.scales == (0.01,) * dataset.count
            assert dataset.offsets == (0.0,) * dataset.count
    assert len(counts) > 1  # band lists really differ between tiles
    rows = read_manifest(tmp_path / "data" / "demo" / "pairs" / MANIFEST_NAME)
    assert all(row.inputs == ("fake://pairs",) for row in rows.values())  # columns unchanged


def test_encoder_template_cache_is_bounded() -> None:
    from affine import Affine

    encoder = ChipEncoder(max_templates=4)
    transform = Affine(224.0, 0, 500000.0, 0, -224.0, 4480000.0)
    for index in range(10):
        encoder.encode(np.ones((1, 20, 20), "int16"), "EPSG:32631", transform, "int16", -1,
                       (f"band_{index}",), {"tile_id": "x"})  # fmt: skip
    assert encoder.template_count == 4


# --- options declared by sources -------------------------------------------------------------


class WithOptions(PerTileSource):
    name = "with-options-inline"
    cli_options = (
        SourceOption("svc-url", "where the service is", env="M3LEO_SVC_URL", default="https://x"),
        SourceOption("svc-fast", "a switch", flag=True),
    )

    def plan(self, tiles):
        return {}

    def render_tile(self, tile, inputs):
        raise AssertionError


def test_option_values_come_from_run_then_environment_then_default(monkeypatch) -> None:
    recipe = fake_recipe("fake-synthetic")
    monkeypatch.delenv("M3LEO_SVC_URL", raising=False)
    assert WithOptions(recipe).option("svc-url") == "https://x"
    monkeypatch.setenv("M3LEO_SVC_URL", "http://127.0.0.1:9")
    assert WithOptions(recipe).option("svc-url") == "http://127.0.0.1:9"
    given = FetchOptions(extra={"svc-url": "http://127.0.0.1:10"})
    assert WithOptions(recipe, given).option("svc-url") == "http://127.0.0.1:10"
    with pytest.raises(KeyError):
        WithOptions(recipe).option("nope")


def test_cli_parses_declared_source_options() -> None:
    assert parse_source_options(["--http-concurrency", "4"]) == {"http-concurrency": "4"}
    assert parse_source_options(["--http-concurrency=9"]) == {"http-concurrency": "9"}
    with pytest.raises(ConfigError, match="unknown option"):
        parse_source_options(["--no-such-thing", "1"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_source_options(["--http-concurrency"])


def test_run_options_do_not_change_the_recipe_hash(cluster, tmp_path: Path) -> None:
    with serve(SlowOk) as server:
        recipe = fake_recipe("fake-http", url=server.url)
        first = run(cluster.scheduler_address, recipe, tmp_path / "out", tiles=TILES[:3],
                    options={"anything": "1"}, cache=tmp_path / "c1")  # fmt: skip
        again = run(cluster.scheduler_address, recipe, tmp_path / "out", tiles=TILES[:3],
                    options={"anything": "2"}, cache=tmp_path / "c2")  # fmt: skip
    assert first.ok == 3 and again.skipped == 3 and again.ok == 0
