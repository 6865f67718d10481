"""The ``gunw`` source against ASF's services on 127.0.0.1, with the real asf-search client.

asf-search's own ``ASFSession`` is routed to a loopback server by a transport adapter mounted
on it (tests/helpers/asf_loopback.py; the code under test is unchanged). The server replays
CMR records: the real ARIA S1 GUNW record asf-search's tests replay, and records derived from
it for replica products over the demo AOI's Los Angeles box (tests/helpers/gunw_world.py); it
also speaks Earthdata login and serves the products. Products are replicas written from the
published GUNW specification (tests/helpers/gunw_netcdf.py): real files are 4-150 MB.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import shapely

from helpers.asf_loopback import (
    CMR_PATH,
    AsfHandler,
    asf_state,
    download_requests,
    real_gunw_item,
    route_asf_sessions,
)
from helpers.gunw_netcdf import ProductSpec, reference_warp, write_product
from helpers.gunw_world import (
    fetch_in_child,
    kept_2020,
    make_world,
    merge_saved_searches,
    write_saved_search,
)
from helpers.loopback import serve
from m3leo_tiles.core.errors import ConfigError, CredentialsError, SourceError
from m3leo_tiles.grid.lattice import grid_geometry
from m3leo_tiles.recipes import load_recipe
from m3leo_tiles.sources.base import FetchOptions, RenderContext
from m3leo_tiles.sources.gunw import GunwSource, _earthdata, _gunw_read
from m3leo_tiles.sources.gunw.adapter import _WorkerSession

LA_BOX = shapely.box(-118.0629, 33.9371, -117.9371, 34.0629)
USER, PASSWORD = "alice", "correct-horse-battery"


@pytest.fixture(scope="module")
def world(shared_data, tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("products"), real_gunw_item(shared_data))


@pytest.fixture(scope="module")
def tiles():
    return grid_geometry(LA_BOX)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No credentials anywhere unless a test sets them (HOME and NETRC point at tmp)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    for name in (
        "EARTHDATA_TOKEN",
        "EARTHDATA_USERNAME",
        "EARTHDATA_PASSWORD",
        "M3LEO_CMR_HOST",
        "M3LEO_EARTHDATA_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture(autouse=True)
def fresh_worker_sessions(monkeypatch):
    """Each test is a new worker process as far as logged-in sessions go."""
    monkeypatch.setattr(_WorkerSession, "sessions", {})
    monkeypatch.setattr(_WorkerSession, "failures", {})


@pytest.fixture
def logged_in(home, monkeypatch):
    """Earthdata credentials the loopback ASF accepts, where a user keeps them (environment)."""
    monkeypatch.setenv("EARTHDATA_USERNAME", USER)
    monkeypatch.setenv("EARTHDATA_PASSWORD", PASSWORD)


@pytest.fixture
def asf(world, home):
    state = asf_state(world.items, world.products, {USER: PASSWORD})
    with serve(AsfHandler, **state) as server, route_asf_sessions(server.url):
        yield server


def adapter(tmp_path: Path, *, sources: tuple[str, ...] = (), **extra) -> GunwSource:
    options = FetchOptions(
        year=2020, sources=sources, cache_dir=str(tmp_path / "cache"), extra=extra
    )
    source = GunwSource(load_recipe("gunw"), options)
    source.check()
    return source


def cmr_posts(server) -> int:
    return len([p for p in server.log.paths("POST") if p == CMR_PATH])


def expected_inputs(world, tiles) -> dict[str, tuple[str, ...]]:
    kept = kept_2020(world)
    return {
        tile.identifier: tuple(
            sorted(
                name
                for name in kept
                if world.specs[name].footprint().intersects(tile.lonlat_polygon())
            )
        )
        for tile in tiles
    }


# --- searching ----------------------------------------------------------------------------


def test_search_through_the_real_client_selects_pairs_and_is_cached(
    asf, logged_in, world, tiles, tmp_path
):
    inputs = adapter(tmp_path).plan(tiles)
    assert inputs == expected_inputs(world, tiles)
    assert sum(1 for names in inputs.values() if names) >= 9
    used = {name for names in inputs.values() for name in names}
    assert not any("v2_0_4" in name or "20200410" in name or "2021" in name[20:30] for name in used)
    searches = list(asf.searches)
    assert searches and all(
        f["temporal"][0].startswith("2020-01-01T00:00:00Z,2020-12-31T23:59:59Z") for f in searches
    )
    assert cmr_posts(asf) == len(searches) >= 1
    saved = list((tmp_path / "cache" / "gunw-searches").rglob("*.geojson"))
    assert len(saved) == len(searches)  # one answer per cell

    assert adapter(tmp_path).plan(tiles) == inputs  # a rerun reads the cached search
    assert cmr_posts(asf) == len(searches)
    assert adapter(tmp_path, **{"refresh-search": True}).plan(tiles) == inputs
    assert cmr_posts(asf) == 2 * len(searches)


def test_cmr_pages_are_followed(asf, world, tiles, tmp_path, monkeypatch):
    import asf_search.constants.INTERNAL as internal

    monkeypatch.setattr(internal, "CMR_PAGE_SIZE", 2)  # the real client asks 2 a page
    monkeypatch.setenv("EARTHDATA_TOKEN", "unused")
    source = adapter(tmp_path)
    products = source.search(tiles)
    assert {p.file_name for p in products} == {
        name
        for name, spec in world.specs.items()
        if spec.reference.year == 2020 and spec.track == 64
    }
    assert cmr_posts(asf) >= 4


def test_a_saved_search_and_a_product_folder_need_no_service(asf, world, tiles, tmp_path):
    adapter(tmp_path / "first", sources=(str(next(iter(world.products.values())).parent),)).plan(
        tiles
    )
    saved = merge_saved_searches(tmp_path / "first" / "cache", tmp_path / "saved.geojson")
    before = len(asf.log.requests)
    folder = str(next(iter(world.products.values())).parent)
    source = adapter(tmp_path / "second", sources=(folder,), **{"search-results": str(saved)})
    assert source.plan(tiles) == expected_inputs(world, tiles)  # no credentials needed
    assert len(asf.log.requests) == before


def test_a_failing_search_is_one_clear_line(world, tiles, tmp_path, home):
    with serve(AsfHandler, **asf_state([], {})) as server, route_asf_sessions(server.url):
        server.search_status = 400
        with pytest.raises(ConfigError) as caught:
            adapter(tmp_path).plan(tiles)
    message = str(caught.value)
    assert "ASF search" in message and "--search-results" in message and "\n" not in message
    assert not (tmp_path / "cache" / "gunw-searches").exists()  # nothing cached


# --- credentials ----------------------------------------------------------------------------


def test_missing_credentials_stop_the_plan_when_products_must_be_downloaded(asf, tiles, tmp_path):
    started = time.perf_counter()
    with pytest.raises(CredentialsError, match=r"EARTHDATA_TOKEN.*netrc"):
        adapter(tmp_path).plan(tiles)
    assert time.perf_counter() - started < 10
    assert not download_requests(asf)


@pytest.mark.parametrize("how", ["password", "token", "netrc"])
def test_refused_credentials_are_one_line_without_the_secret(
    asf, tiles, tmp_path, home, monkeypatch, how
):
    secret = "wrong-secret-123"
    if how == "password":
        monkeypatch.setenv("EARTHDATA_USERNAME", USER)
        monkeypatch.setenv("EARTHDATA_PASSWORD", secret)
    elif how == "token":
        monkeypatch.setenv("EARTHDATA_TOKEN", secret)
    else:
        netrc = home / ".netrc"
        netrc.write_text(f"machine urs.earthdata.nasa.gov login {USER} password {secret}\n")
        netrc.chmod(0o600)
    started = time.perf_counter()
    with pytest.raises(CredentialsError) as caught:
        adapter(tmp_path).plan(tiles)
    assert time.perf_counter() - started < 10
    message = str(caught.value)
    assert "refused" in message and "\n" not in message and secret not in message
    assert not download_requests(asf)


def test_accepted_netrc_credentials(asf, tiles, tmp_path, home):
    netrc = home / ".netrc"
    netrc.write_text(f"machine urs.earthdata.nasa.gov\n  login {USER}\n  password {PASSWORD}\n")
    netrc.chmod(0o600)
    assert adapter(tmp_path).plan(tiles)  # logged in: no error


def test_a_silent_login_server_is_an_error_within_the_deadline(world, home):
    with serve(AsfHandler, **asf_state([], {}, {USER: PASSWORD})) as server:
        server.latency_s = 3.0
        with route_asf_sessions(server.url):
            session = _earthdata.new_session(_earthdata.Hosts())
            started = time.perf_counter()
            with pytest.raises(CredentialsError, match="did not answer"):
                _earthdata.login(session, _earthdata.Credentials("test", USER, PASSWORD), 0.5)
            assert time.perf_counter() - started < 2


def test_half_set_environment_is_refused_at_check(tmp_path, home, monkeypatch):
    monkeypatch.setenv("EARTHDATA_USERNAME", USER)
    with pytest.raises(CredentialsError, match="EARTHDATA_PASSWORD is not set"):
        adapter(tmp_path)


# --- downloading ----------------------------------------------------------------------------


def test_a_truncated_download_is_retried_and_never_taken_whole(
    asf, logged_in, world, tiles, tmp_path, monkeypatch
):
    source = adapter(tmp_path)
    inputs = source.plan(tiles)
    name = next(n for names in inputs.values() for n in names)
    asf.truncate[name] = 5000
    monkeypatch.setattr(
        "m3leo_tiles.sources.download.DOWNLOAD_RETRY",
        type(source.retry_policy)(attempts=3, base_delay_s=0.01),
    )
    path = Path(source._product_path(name, RenderContext()))
    assert path.read_bytes() == world.products[name].read_bytes()
    assert [p for p in download_requests(asf) if p.endswith(name)] == [
        f"/grfn.asf.alaska.edu/door/download/{name}"
    ] * 2
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]


@pytest.mark.slow
def test_two_workers_asking_for_one_product_make_one_download(
    asf, logged_in, world, tiles, tmp_path, monkeypatch
):
    source = adapter(tmp_path / "driver")
    inputs = source.plan(tiles)
    search = merge_saved_searches(tmp_path / "driver" / "cache", tmp_path / "saved.geojson")
    name = next(n for names in inputs.values() for n in names)
    asf.latency_s = 0.3  # both workers are inside the download at once
    cache = str(tmp_path / "shared-cache")
    helpers = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([helpers, os.environ.get("PYTHONPATH", "")]))
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        paths = pool.map(fetch_in_child, [(asf.url, cache, name, str(search))] * 2)
    assert len(set(paths)) == 1
    assert Path(paths[0]).read_bytes() == world.products[name].read_bytes()
    assert [p for p in download_requests(asf) if p.endswith(name)] == [
        f"/grfn.asf.alaska.edu/door/download/{name}"
    ]


def test_a_refused_download_is_a_per_tile_failure(asf, logged_in, world, tiles, tmp_path):
    source = adapter(tmp_path)
    inputs = source.plan(tiles)
    items = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]]
    asf.refuse = True  # logged in on the driver, refused on the worker
    started = time.perf_counter()
    outcomes = list(source.render_many(items, RenderContext(threads=3)))
    assert time.perf_counter() - started < 10  # one refused login, remembered for the batch
    logins = [p for p in asf.log.paths("POST") if p.endswith("find_or_create_token")]
    assert len(logins) == 2  # the driver's, then the worker's
    assert len(outcomes) == len(items)
    assert all(isinstance(o, SourceError) for _, o in outcomes)
    assert all("refused" in str(o) and PASSWORD not in str(o) for _, o in outcomes)


# --- chips ----------------------------------------------------------------------------------


@pytest.fixture
def local_adapter(world, tiles, tmp_path, home):
    folder = str(next(iter(world.products.values())).parent)
    with serve(AsfHandler, **asf_state(world.items, {})) as server, route_asf_sessions(server.url):
        source = adapter(tmp_path, sources=(folder,))
        inputs = source.plan(tiles)
    return source, inputs


def test_batches_gather_the_tiles_of_a_frame(local_adapter, world, tiles):
    source, inputs = local_adapter
    keys: dict = {}
    for tile in tiles:
        names = inputs[tile.identifier]
        if names:
            frames = {world.specs[n].frame for n in names}
            keys.setdefault(source.batch_key(names), set()).add(frozenset(frames))
            assert source.batch_key(names) == tuple(
                ("ascending", 64, str(f)) for f in sorted(frames)
            )
    assert all(len(frame_sets) == 1 for frame_sets in keys.values())
    assert len(keys) >= 2  # south-frame tiles and tiles that also reach the northern frame
    assert len({inputs[t.identifier] for t in tiles if inputs[t.identifier]}) > len(keys)


@pytest.fixture
def opened_products(monkeypatch) -> list[str]:
    """The path of every product the source opens, in order."""
    opened: list[str] = []
    original = _gunw_read.Product.__init__

    def counting(self, path, layers):
        opened.append(path)
        original(self, path, layers)

    monkeypatch.setattr(_gunw_read.Product, "__init__", counting)
    return opened


def test_chips_have_every_pair_named_described_and_equal_to_reproject(
    local_adapter, world, tiles, opened_products
):
    source, inputs = local_adapter
    opened = opened_products
    items = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]]
    outcomes = dict((t.identifier, c) for t, c in source.render_many(items, RenderContext()))
    assert len(outcomes) == len(items)
    used = {name for _, names in items for name in names}
    assert sorted(Path(p).name for p in opened) == sorted(used)  # each product opened once

    mosaicked = 0
    for tile, names in items:
        chip = outcomes[tile.identifier]
        assert not isinstance(chip, Exception), chip
        specs = sorted((world.specs[n] for n in names), key=lambda s: (s.reference, s.secondary))
        pairs = sorted({(s.reference, s.secondary) for s in specs})
        expected_names = [
            f"{r:%Y%m%d}_{s:%Y%m%d}_{layer.band}" for r, s in pairs for layer in _gunw_read.LAYERS
        ]
        assert list(chip.band_names) == expected_names
        assert chip.data.shape == (len(expected_names), 50, 50)
        assert chip.metadata["inputs"] == ";".join(sorted(names))
        grid = tile.pixel_grid(89.6)
        for index, (band_name, meta) in enumerate(
            zip(chip.band_names, chip.band_metadata, strict=True)
        ):
            reference, secondary = band_name.split("_")[:2]
            assert meta["reference_date"].replace("-", "") == reference
            assert meta["secondary_date"].replace("-", "") == secondary
            members = sorted(n for n in names if f"{reference}_{secondary}" in n)
            assert meta["product"] == ";".join(n.removesuffix(".nc") for n in members)
            assert (
                int(meta["temporal_baseline_days"])
                == (world.specs[members[0]].reference - world.specs[members[0]].secondary).days
            )
            assert (meta["direction"], meta["track"], meta["version"].split(";")[0]) == (
                "ascending",
                "64",
                "3.0.1",
            )
            layer = _gunw_read.LAYERS_BY_BAND[meta["layer"]]
            paths = [world.products[n] for n in members]
            np.testing.assert_array_equal(chip.data[index], reference_warp(paths, layer, grid))
            mosaicked += len(members) > 1
    assert mosaicked  # some tiles lie across the two frames of 20200117_20200105


def test_a_corrupt_product_fails_only_its_tiles(local_adapter, tiles, tmp_path):
    source, inputs = local_adapter
    name = "S1-GUNW-broken.nc"
    broken = tmp_path / name
    broken.write_bytes(b"\x89HDF\r\n\x1a\n not really")
    good = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]][:2]
    bad = (next(t for t in tiles if t not in {g[0] for g in good}), (name,))
    source.local[name] = str(broken)
    source.catalog[name] = dataclasses.replace(
        source.catalog[good[0][1][0]], file_name=name, name="S1-GUNW-broken"
    )
    outcomes = list(source.render_many([good[0], bad, good[1]], RenderContext()))
    assert [type(o).__name__ for _, o in outcomes] == ["Chip", "SourceError", "Chip"]


def test_each_product_is_opened_once_per_batch_however_many_pairs(tmp_path, home, opened_products):
    """14 pairs over a few tiles: every product opened once for the batch, however many."""
    start = dt.date(2020, 3, 1)
    specs = [
        ProductSpec(
            start + dt.timedelta(days=6 * i + 12),
            start + dt.timedelta(days=6 * i),
            64,
            "A",
            -118.08,
            33.92,
            -117.92,
            34.08,
            seed=i,
        )
        for i in range(14)
    ]
    folder = tmp_path / "many"
    paths = [write_product(spec, folder) for spec in specs]
    search = write_saved_search(specs, paths, tmp_path / "search.geojson")
    source = adapter(tmp_path, sources=(str(folder),), **{"search-results": str(search)})
    tiles = grid_geometry(shapely.box(-118.0, 33.99, -117.97, 34.02))
    inputs = source.plan(tiles)
    items = [(t, inputs[t.identifier]) for t in tiles]
    assert len(items) >= 2 and all(len(names) == 14 for _, names in items)
    outcomes = list(source.render_many(items, RenderContext()))
    assert all(chip.data.shape[0] == 14 * 4 for _, chip in outcomes)
    assert sorted(opened_products) == sorted(str(p.resolve()) for p in paths)


def test_a_recipe_may_keep_some_layers_and_bad_params_are_one_line(local_adapter, tiles):
    source, inputs = local_adapter
    recipe = dataclasses.replace(source.recipe, params={**source.recipe.params,
                                                         "layers": ["coherence"]})  # fmt: skip
    narrow = GunwSource(recipe, source.options)
    narrow.catalog, narrow.local = source.catalog, source.local
    tile = next(t for t in tiles if len(inputs[t.identifier]) > 1)
    [(_, chip)] = narrow.render_many([(tile, inputs[tile.identifier])], RenderContext())
    assert chip.band_names and all(name.endswith("_coherence") for name in chip.band_names)
    [(_, full)] = source.render_many([(tile, inputs[tile.identifier])], RenderContext())
    np.testing.assert_array_equal(chip.data, full.data[1::4])
    for bad, message in (({"layers": ["phase"]}, "params.layers"),
                         ({"max_baseline_days": -1}, "params.max_baseline_days"),
                         ({"colour": 1}, "unknown gunw parameter")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            GunwSource.check_params(bad, "recipes/x.yaml")


def test_a_product_failing_mid_batch_fails_only_the_tiles_it_failed(
    local_adapter, tiles, monkeypatch
):
    source, inputs = local_adapter
    items = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]]
    victim = items[1][0].identifier
    original = _gunw_read.Product.warp

    def flaky(self, layer, grid, destination, resampling):
        if grid == items[1][0].pixel_grid(89.6):
            raise SourceError(f"cannot read {layer.variable} of {self.path}: damaged block")
        original(self, layer, grid, destination, resampling)

    monkeypatch.setattr(_gunw_read.Product, "warp", flaky)
    outcomes = {t.identifier: o for t, o in source.render_many(items, RenderContext())}
    assert isinstance(outcomes.pop(victim), SourceError)
    assert outcomes and not any(isinstance(o, Exception) for o in outcomes.values())


def test_a_cached_product_with_flipped_bytes_is_downloaded_again_once(
    asf, logged_in, world, tiles, tmp_path
):
    source = adapter(tmp_path)
    inputs = source.plan(tiles)
    items = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]]
    first = dict(source.render_many(items, RenderContext(threads=2)))
    assert all(not isinstance(o, Exception) for o in first.values()), first
    name = next(n for _, names in items for n in names)
    cached = tmp_path / "cache" / name
    body = bytearray(cached.read_bytes())
    body[:8] = bytes(b ^ 0xFF for b in body[:8])  # same size, the MD5 differs: unreadable
    cached.write_bytes(bytes(body))
    again = adapter(tmp_path)  # a rerun: the plan finds the product cached (its size is right)
    again.plan(tiles)
    second = dict(again.render_many(items, RenderContext(threads=2)))
    assert all(not isinstance(o, Exception) for o in second.values()), second
    for tile in first:
        np.testing.assert_array_equal(second[tile].data, first[tile].data)
    assert [p for p in download_requests(asf) if p.endswith(name)] == [
        f"/grfn.asf.alaska.edu/door/download/{name}"
    ] * 2
    assert cached.read_bytes() == world.products[name].read_bytes()
