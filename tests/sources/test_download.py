"""The shared download cache: one download for many askers, never a partial file taken whole."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest

from helpers.full_disk import FullDiskFile
from helpers.loopback import QuietHandler, serve, serve_files
from m3leo_tiles.core.errors import DiskFullError, TransientSourceError
from m3leo_tiles.core.retry import RetryPolicy
from m3leo_tiles.sources.download import DownloadError, MissingRemoteFile, cached_download

FAST = RetryPolicy(attempts=3, base_delay_s=0.0, jitter=0.0)
PAYLOAD = random.Random(7).randbytes(300_000)  # the same in spawned processes


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    root = tmp_path / "bucket"
    (root / "products").mkdir(parents=True)
    (root / "products" / "granule.nc").write_bytes(PAYLOAD)
    return root


def test_downloads_once_then_serves_from_the_cache(bucket: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with serve_files(bucket) as server:
        url = f"{server.url}/products/granule.nc"
        first = cached_download(url, cache, expected_size=len(PAYLOAD), policy=FAST)
        second = cached_download(url, cache, expected_size=len(PAYLOAD), policy=FAST)
        assert server.log.paths() == ["/products/granule.nc"]
    assert first == second == cache / "granule.nc"
    assert first.read_bytes() == PAYLOAD
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_truncated_download_is_retried_and_never_left_whole(bucket: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with serve_files(bucket) as server:
        server.truncate["/products/granule.nc"] = 1000  # the first response breaks off
        url = f"{server.url}/products/granule.nc"
        path = cached_download(url, cache, expected_size=len(PAYLOAD), policy=FAST)
        assert len(server.log.paths()) == 2
    assert path.read_bytes() == PAYLOAD


def test_truncation_on_every_try_fails_and_leaves_nothing(bucket: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with serve(TruncatingHandler, root=bucket) as server:
        with pytest.raises(TransientSourceError):
            cached_download(f"{server.url}/products/granule.nc", cache,
                            expected_size=len(PAYLOAD), policy=FAST)  # fmt: skip
        assert len(server.log.paths()) == FAST.attempts
    assert not (cache / "granule.nc").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


class TruncatingHandler(QuietHandler):
    def do_GET(self) -> None:
        def respond() -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(PAYLOAD[:500])
            self.close_connection = True

        self._accounted("GET", respond)


def test_a_damaged_cached_file_is_fetched_again(bucket: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "granule.nc").write_bytes(PAYLOAD[:10])  # a file a crash or a user cut short
    with serve_files(bucket) as server:
        path = cached_download(f"{server.url}/products/granule.nc", cache,
                               expected_size=len(PAYLOAD), policy=FAST)  # fmt: skip
        assert len(server.log.paths()) == 1
    assert path.read_bytes() == PAYLOAD


def test_validate_rejects_a_file_of_the_right_size(bucket: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "granule.nc").write_bytes(b"\0" * len(PAYLOAD))

    def starts_like_payload(path: Path) -> None:
        if path.read_bytes()[:16] != PAYLOAD[:16]:
            raise ValueError("not a product")

    with serve_files(bucket) as server:
        path = cached_download(f"{server.url}/products/granule.nc", cache,
                               validate=starts_like_payload, policy=FAST)  # fmt: skip
        assert len(server.log.paths()) == 1
    assert path.read_bytes() == PAYLOAD


def test_missing_file_and_refusal_are_permanent(bucket: Path, tmp_path: Path) -> None:
    with serve_files(bucket) as server:
        with pytest.raises(MissingRemoteFile):
            cached_download(f"{server.url}/products/none.nc", tmp_path / "c", policy=FAST)
        assert len(server.log.paths()) == 1  # a 404 is an answer, not worth a retry
    with serve(StatusHandler, status=401) as server:
        with pytest.raises(DownloadError, match="check your credentials"):
            cached_download(f"{server.url}/p/x.nc", tmp_path / "c", policy=FAST)
        assert len(server.log.paths()) == 1


def test_server_errors_are_retried_then_transient(tmp_path: Path) -> None:
    slept: list[float] = []
    policy = RetryPolicy(attempts=3, base_delay_s=2.0, jitter=0.0)
    with serve(StatusHandler, status=503) as server:
        with pytest.raises(TransientSourceError, match="HTTP 503"):
            cached_download(f"{server.url}/p/x.nc", tmp_path / "c", policy=policy,
                            sleep=slept.append)  # fmt: skip
        assert len(server.log.paths()) == 3
    assert slept == [2.0, 4.0]


def test_unreachable_host_says_network(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(TransientSourceError, match=r"network: could not reach 127\.0\.0\.1"):
        cached_download(f"http://127.0.0.1:{port}/x.nc", tmp_path / "c",
                        policy=RetryPolicy(attempts=1), timeout_s=5)  # fmt: skip


class StatusHandler(QuietHandler):
    def do_GET(self) -> None:
        self._accounted("GET", lambda: self.send_bytes(self.server.status, b"no"))  # type: ignore[attr-defined]


def _ask(url: str, cache: str, size: int, results) -> None:
    path = cached_download(url, Path(cache), expected_size=size, policy=FAST)
    results.put(path.read_bytes() == PAYLOAD)


def test_two_processes_asking_at_once_cause_one_download(bucket: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with serve_files(bucket, latency_s=1.0) as server:  # slow enough for both to ask at once
        url = f"{server.url}/products/granule.nc"
        askers = [context.Process(target=_ask, args=(url, str(cache), len(PAYLOAD), results))
                  for _ in range(2)]  # fmt: skip
        for process in askers:
            process.start()
        for process in askers:
            process.join(timeout=60)
        assert [results.get(timeout=5) for _ in askers] == [True, True]
        assert server.log.paths() == ["/products/granule.nc"]


def test_a_full_cache_disk_stops_the_run_in_one_line(bucket: Path, tmp_path: Path,
                                                     monkeypatch) -> None:  # fmt: skip
    """ENOSPC while streaming is fatal (every further download would fail too), not retried,
    and no partial file is left behind."""
    import m3leo_tiles.sources.download as download

    monkeypatch.setattr(download, "open", FullDiskFile, raising=False)
    cache = tmp_path / "cache"
    with serve_files(bucket) as server:
        with pytest.raises(DiskFullError, match="no space left for the download cache") as caught:
            cached_download(f"{server.url}/products/granule.nc", cache, policy=FAST)
        assert len(server.log.paths()) == 1  # not retried
    assert "\n" not in str(caught.value) and "--cache" in str(caught.value)
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]
