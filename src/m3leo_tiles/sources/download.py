"""Shared downloads: one file, fetched once, whole or not at all, whoever asks for it.

Remote sources (GUNW products, GSSIC cells) download files that many tiles, and so many
workers, need. Every source fetches through ``cached_download`` so that:

* a file is streamed to a hidden ``.<name>.<pid>.<random>.part`` beside its final name, its
  size (and checksum, when known) checked, then renamed: a killed download never looks whole;
* a per-file lock (``fcntl.flock`` on ``.<name>.lock``) makes a second worker *wait* for the
  first one's download instead of fetching the same bytes again (unlike the dataset lock,
  which refuses a second run); after the wait it finds the file in the cache;
* a cached file is checked again before use (size, and the caller's ``validate``), and a
  damaged one is fetched anew;
* connection errors, timeouts, 429 and 5xx are retried with backoff (``DOWNLOAD_RETRY``),
  then raised as ``TransientSourceError`` (the runner records the tile failed; a rerun
  retries it); 404 is ``MissingRemoteFile`` (a tiled product without that cell); 401/403 is
  a ``DownloadError`` that says to check the credentials;
* a host that cannot be reached is said at once (a warning on the terminal and in fetch.log,
  through ``events``), and waited on for at most ``UNREACHABLE_S`` seconds in all (per
  worker process, since its first failed connection, until one succeeds): then
  ``NetworkUnreachable`` stops the run (exit 2) instead of failing the grid tile by tile.

The lock is an advisory ``flock``: it serialises the processes of one machine (every local
worker), and on a shared file system that supports it, the workers of a cluster.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from m3leo_tiles.core import events
from m3leo_tiles.core.atomic import PARTIAL_SUFFIX, open_no_follow, replacing
from m3leo_tiles.core.errors import (
    NetworkUnreachable,
    SourceError,
    TransientSourceError,
    disk_full_as,
    first_line,
)
from m3leo_tiles.core.retry import RetryPolicy

if TYPE_CHECKING:
    import requests

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DOWNLOAD_RETRY = RetryPolicy(attempts=4, base_delay_s=1.0, max_delay_s=20.0)
UNREACHABLE_S = 60.0  # total wait on a host that does not answer; M3LEO_UNREACHABLE_S overrides
CONNECT_TIMEOUT_S = 10.0  # a host that takes longer to accept a connection is not there
CHUNK_BYTES = 1 << 20
LOCK_POLL_S = 0.1


class DownloadError(SourceError):
    """A download that retrying will not fix (refused, wrong size after retries)."""


class MissingRemoteFile(DownloadError):
    """The server says the file does not exist (404): no data there, for tiled products."""


def cache_name(url: str) -> str:
    """The cache file name of a URL: its last path part (product names are unique)."""
    name = Path(urlsplit(url).path).name
    if not name or name in {".", ".."}:
        raise DownloadError(f"cannot name a cache file for {url}: its path has no file name")
    return name


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path``, waiting up to ``timeout_s`` for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)  # never a link planted in the cache
    with os.fdopen(fd, "r+b") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TransientSourceError(
                        f"waited {timeout_s:.0f} s for another worker's download of "
                        f"{path.name.removesuffix('.lock').lstrip('.')}"
                    ) from None
                time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def drop_cached(target: Path, seen: os.stat_result, lock_timeout_s: float = 3600.0) -> bool:
    """Remove a cached file found damaged (it cannot be read), so that the next
    ``cached_download`` fetches it again; True when it was removed.

    Done under the file's lock, and only if the file is still the one found damaged (``seen``:
    its ``stat`` then): another worker may already have replaced it with a good copy, which
    must stay. Readers that still have the old file open keep reading it (POSIX unlink).
    """
    with file_lock(_lock_of(target), lock_timeout_s):
        try:
            now = target.stat()
        except FileNotFoundError:
            return False
        if (now.st_ino, now.st_mtime_ns, now.st_size) != (seen.st_ino, seen.st_mtime_ns,
                                                          seen.st_size):  # fmt: skip
            return False
        target.unlink()
        return True


def _check(path: Path, expected_size: int | None, sha256: str | None,
           validate: Callable[[Path], None] | None) -> str | None:  # fmt: skip
    """Why ``path`` is not the whole file we want, or None when it is."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"{size} bytes, expected {expected_size}"
    if sha256 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha256.lower():
            return "checksum differs"
    if validate is not None:
        try:
            validate(path)
        except Exception as error:
            return f"unreadable ({first_line(error)})"
    return None


class _Outages:
    """Hosts this process could not connect to: since when, so that the wait on one is
    bounded whatever the number of files and threads asking it (one clock per host)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: dict[str, float] = {}

    def failed(self, host: str, started: float, error: BaseException) -> None:
        """A connection to ``host`` that began at ``started`` failed: warn the first time,
        stop the run once the host has been unreachable for longer than the limit."""
        limit = unreachable_s()
        with self.lock:
            first = host not in self.since
            since = self.since.setdefault(host, started)
        waited = time.monotonic() - since
        if waited >= limit:
            raise NetworkUnreachable(
                f"network: could not reach {host} for {waited:.0f} s ({type(error).__name__}); "
                "check the connection and rerun"
            )
        if first:
            events.warn(f"network: cannot reach {host} ({type(error).__name__}); retrying for "
                        f"up to {limit:.0f} s")  # fmt: skip

    def answered(self, host: str) -> None:
        with self.lock:
            self.since.pop(host, None)


OUTAGES = _Outages()


def unreachable_s() -> float:
    """``UNREACHABLE_S``, or the ``M3LEO_UNREACHABLE_S`` environment variable (tests, or a
    flaky link that deserves more patience)."""
    try:
        return float(os.environ.get("M3LEO_UNREACHABLE_S", UNREACHABLE_S))
    except ValueError:
        return UNREACHABLE_S


def _stream(url: str, partial: Path, session: requests.Session, timeout_s: float) -> None:
    """One try: GET ``url`` into ``partial``; raises transient or permanent errors."""
    import requests

    host = urlsplit(url).netloc.rpartition("@")[2] or url  # never a URL's user:password@
    timeouts = (min(CONNECT_TIMEOUT_S, timeout_s), timeout_s)  # (connect, read)
    started = time.monotonic()
    full = (f"no space left for the download cache in {partial.parent}; free some space or "
            "choose another with --cache")  # fmt: skip
    with disk_full_as(full):
        try:
            with session.get(url, stream=True, timeout=timeouts, allow_redirects=True) as response:
                OUTAGES.answered(host)
                status = response.status_code
                if status == 404:
                    raise MissingRemoteFile(f"{url} does not exist (HTTP 404)")
                if status in (401, 403):
                    raise DownloadError(
                        f"{host} refused the download of {cache_name(url)} (HTTP {status}); "
                        "check your credentials"
                    )
                if status == 429 or status >= 500:
                    raise TransientSourceError(f"could not download from {host}: HTTP {status}")
                if status >= 400:
                    raise DownloadError(f"could not download {url}: HTTP {status}")
                with open(partial, "wb") as handle:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
        except requests.RequestException as error:
            if isinstance(error, requests.ConnectionError):  # refused, DNS, connect timeout
                OUTAGES.failed(host, started, error)
            raise TransientSourceError(f"network: could not reach {host} ({type(error).__name__})"
                                       ) from None  # fmt: skip


def cached_download(
    url: str,
    cache_dir: Path,
    *,
    name: str | None = None,
    session: requests.Session | None = None,
    expected_size: int | None = None,
    sha256: str | None = None,
    validate: Callable[[Path], None] | None = None,
    policy: RetryPolicy = DOWNLOAD_RETRY,
    timeout_s: float = 60.0,
    lock_timeout_s: float = 3600.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """The path of ``url``'s file in ``cache_dir``, downloading it if it is not there whole.

    ``session`` carries the service's authentication (asf-search's ``ASFSession``); a plain
    ``requests.Session`` is used otherwise.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / (name or cache_name(url))
    if target.exists() and _check(target, expected_size, sha256, validate) is None:
        return target
    if session is None:
        import requests

        session = requests.Session()
    with file_lock(_lock_of(target), lock_timeout_s):
        if target.exists():  # another worker may have finished it while we waited
            if _check(target, expected_size, sha256, validate) is None:
                return target
            target.unlink()  # damaged in the cache: fetch it anew

        def attempt() -> Path:
            with replacing(target, suffix=PARTIAL_SUFFIX, make_parent=False) as partial:
                _stream(url, partial, session, timeout_s)
                problem = _check(partial, expected_size, sha256, validate)
                if problem is not None:
                    raise TransientSourceError(f"download of {target.name} incomplete: {problem}")
            return target

        return policy.run(
            attempt,
            is_transient=lambda error: isinstance(error, TransientSourceError),
            sleep=sleep,
        )


def fetch_each(
    keys: Sequence[K], fetch: Callable[[K], V], threads: int, name: str
) -> dict[K, V | Exception]:
    """``fetch(key)`` for each of a batch's files, on up to ``threads`` threads (named
    ``name``), before its tiles are made: each file is fetched once for the whole batch, and
    one that fails has its error as its value (its tiles fail with it; the others go on).

    Whoever calls it bounds requests across the cluster: ``fetch`` holds a slot of the
    run's budget (``RenderContext.slot``) while it downloads.
    """

    def one(key: K) -> V | Exception:
        try:
            return fetch(key)
        except Exception as error:
            return error

    threads = min(threads, len(keys))
    if threads <= 1:
        return {key: one(key) for key in keys}
    with ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:
        return dict(zip(keys, pool.map(one, keys), strict=True))
