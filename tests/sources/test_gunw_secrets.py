"""No Earthdata credential or S3 signature in anything a GUNW run leaves behind (issue #17).

The GUNW source meets credentials in three places: the Earthdata token it logs in with
(``EARTHDATA_TOKEN``), the answers of CMR (whose errors quote the token they refused), and
the product URLs, which ASF redirects to signed S3 URLs (``?X-Amz-Signature=...&
X-Amz-Credential=...``) and which a search or a saved search may already carry signed.
Each failure path (search failing or refused, download refused, failing, redirected, a bad
checksum) is driven against the loopback ASF (tests/helpers/asf_loopback.py) with
recognisable secrets, and the messages, the cache's file names, the chips' tags and, end to
end, the terminal, ``fetch.log`` and the manifest are searched for them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tenacity
from tests.core.test_secrets import CREDENTIAL, SIGNATURE, TOKEN, assert_no_secret, closed_port_url
from tests.sources import test_gunw

from helpers.asf_loopback import AsfHandler, asf_state, route_asf_sessions
from helpers.loopback import serve
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.fetch.worker import reason_of
from m3leo_tiles.sources.base import RenderContext, RetryPolicy

# test_gunw's fixtures (the replica world, the LA tiles, a credential-free HOME, fresh worker
# sessions) and its adapter as a run builds it.
world, tiles, home = test_gunw.world, test_gunw.tiles, test_gunw.home
fresh_worker_sessions, adapter = test_gunw.fresh_worker_sessions, test_gunw.adapter
S3_QUERY = f"X-Amz-Signature={SIGNATURE}&X-Amz-Credential={CREDENTIAL}&X-Amz-Date=20200101"


@pytest.fixture(autouse=True)
def no_waits(monkeypatch) -> None:
    """Retries without their waits: asf-search's 5xx retries and the downloads' backoff."""
    pages = importlib.import_module("asf_search.search.search_generator").get_page
    monkeypatch.setattr(pages.retry, "wait", tenacity.wait_none())
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, retry, rng=None: 0.0)


def signed_items(items: list[dict[str, Any]], md5: str | None = None) -> list[dict[str, Any]]:
    """The CMR records with each product URL signed (and, given ``md5``, a wrong checksum)."""
    signed = copy.deepcopy(items)
    for item in signed:
        for url in item["umm"]["RelatedUrls"]:
            if url["Type"] == "GET DATA":
                url["URL"] += f"?{S3_QUERY}"
        if md5:
            for entry in item["umm"]["DataGranule"]["ArchiveAndDistributionInformation"]:
                if entry.get("Checksum"):
                    entry["Checksum"]["Value"] = md5
    return signed


@contextlib.contextmanager
def signed_asf(world, md5: str | None = None) -> Iterator[Any]:
    """The loopback ASF with signed product URLs, accepting ``TOKEN`` (set in the env)."""
    state = asf_state(signed_items(world.items, md5), world.products)
    state["tokens"].add(TOKEN)
    with serve(AsfHandler, **state) as server, route_asf_sessions(server.url):
        yield server


def names_under(folder: Path) -> list[str]:
    """Every file and folder name under ``folder`` (the cache's names; its saved search
    answers hold the signed URLs ASF gave, as a cache of that answer must)."""
    return [str(path.relative_to(folder)) for path in folder.rglob("*")]


def chip_texts(outcomes) -> list[str]:
    """What reaches a chip's tags or the manifest's reason from each rendered tile."""
    texts = []
    for _, outcome in outcomes:
        if isinstance(outcome, Exception):
            texts.append(reason_of(outcome))
        else:
            texts += [str(outcome.metadata), *map(str, outcome.band_metadata)]
    return texts


# --- the search ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["5xx", "refused"])
def test_a_failing_search_names_no_token(world, tiles, tmp_path, home, monkeypatch, failure):
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    with contextlib.ExitStack() as stack:
        if failure == "5xx":
            server = stack.enter_context(serve(AsfHandler, **asf_state([], {})))
            server.search_status = 503
            server.search_errors = [f"Token [{TOKEN}] does not exist"]  # as CMR says it
            stack.enter_context(route_asf_sessions(server.url))
        else:
            stack.enter_context(route_asf_sessions(closed_port_url()))
        with pytest.raises(ConfigError) as caught:
            adapter(tmp_path).plan(tiles)
    message = str(caught.value)
    assert message.startswith("the ASF search at cmr.earthdata.nasa.gov failed"), message
    assert ("HTTP 503" if failure == "5xx" else "ConnectionError") in message
    assert_no_secret(message, folders=(tmp_path,))


# --- downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("redirected", [False, True], ids=["direct", "s3-redirect"])
@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_a_failing_download_names_no_credential(world, tiles, tmp_path, home, monkeypatch,
                                                status, redirected):  # fmt: skip
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    with signed_asf(world) as server:
        source = adapter(tmp_path)
        inputs = source.plan(tiles)
        items = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]]
        server.signed_query = S3_QUERY if redirected else None
        server.download_status = status
        outcomes = list(source.render_many(items, RenderContext(threads=2)))
    assert outcomes and all(isinstance(outcome, Exception) for _, outcome in outcomes)
    reasons = chip_texts(outcomes)
    said = {401: "refused", 403: "refused", 404: "does not exist", 500: "HTTP 500"}[status]
    assert all(said in reason for reason in reasons), reasons
    assert_no_secret(*reasons, *names_under(tmp_path / "cache"))


def test_a_product_with_a_bad_checksum_names_no_credential(world, tiles, tmp_path, home,
                                                           monkeypatch):  # fmt: skip
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    with signed_asf(world, md5="0" * 32) as server:
        server.signed_query = S3_QUERY
        source = adapter(tmp_path)
        inputs = source.plan(tiles)
        items = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]]
        outcomes = list(source.render_many(items, RenderContext(threads=2)))
    reasons = chip_texts(outcomes)
    assert reasons and all("differs from the search's 000" in r for r in reasons), reasons
    assert_no_secret(*reasons, *names_under(tmp_path / "cache"))


def test_signed_product_urls_name_no_chip_tag_or_cache_file(world, tiles, tmp_path, home,
                                                            monkeypatch):  # fmt: skip
    """Products found with signed URLs, downloaded through ASF's redirect to a signed S3
    URL: the chips and the cache know them by their file names alone."""
    monkeypatch.setenv("EARTHDATA_TOKEN", TOKEN)
    with signed_asf(world) as server:
        server.signed_query = S3_QUERY
        source = adapter(tmp_path)
        inputs = source.plan(tiles)
        items = [(t, inputs[t.identifier]) for t in tiles if inputs[t.identifier]]
        outcomes = list(source.render_many(items, RenderContext(threads=2)))
    assert outcomes and not any(isinstance(outcome, Exception) for _, outcome in outcomes)
    assert all(name.endswith(".nc") for names in inputs.values() for name in names), inputs
    assert_no_secret(*chip_texts(outcomes), *names_under(tmp_path / "cache"))


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_gunw_run_with_signed_urls_failing_then_working(world, tiles, tmp_path, home):
    """``m3leo-tiles fetch gunw`` (subprocess, dask workers) with a token: downloads failing
    (500 from the signed S3 URL: failed tiles, exit 1), then working, then a search that CMR
    refuses quoting the token (exit 2): the terminal, fetch.log, the manifest, the chips and
    the cache's names hold no token and no signature."""
    from tests.helpers.cli import assert_one_error_line
    from tests.sources.test_earthengine_fetch import write_grid
    from tests.sources.test_gunw_cli import _env, _run

    from m3leo_tiles.grid.tile import Tile

    grid = write_grid(tmp_path / "tiles.geojson", [Tile.from_id(t.identifier) for t in tiles])
    args = ["fetch", "gunw", "--year", "2020", "--grid", str(grid), "--out", "data",
            "--workers", "1", "--cache", str(tmp_path / "cache")]  # fmt: skip
    with signed_asf(world) as server:
        server.signed_query = S3_QUERY
        server.download_status = 500
        env = _env(home, EARTHDATA_TOKEN=TOKEN, M3LEO_TEST_ASF_LOOPBACK=server.url)
        failing = _run(args, tmp_path, env)
        server.download_status = None
        working = _run(args, tmp_path, env)
        server.search_status = 503  # asked again, CMR answers with the token quoted
        server.search_errors = [f"Token [{TOKEN}] does not exist"]
        searching = _run([*args, "--refresh-search"], tmp_path, env)
    assert failing.returncode == 1, failing.stderr
    assert working.returncode == 0, working.stderr
    assert_one_error_line(searching.returncode, searching.stderr, "ASF search", "HTTP 503")
    dataset = tmp_path / "data" / "rome" / "gunw-2020"
    assert list(dataset.glob("*.tif")) and "HTTP 500" in (dataset / "fetch.log").read_text()
    assert_no_secret(failing.stdout, failing.stderr, working.stdout, working.stderr,
                     searching.stdout, searching.stderr, *names_under(tmp_path / "cache"),
                     folders=(tmp_path / "data",))  # fmt: skip
