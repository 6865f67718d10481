"""Loopback HTTP servers for tests: real HTTP on 127.0.0.1, never anything else.

The remote sources are tested against servers that speak the real protocol (HTTP/1.1 with
Range requests, as GDAL's ``/vsicurl/`` needs; Python's ``http.server`` has no Range support),
so the code under test is the real client code. Every server binds 127.0.0.1 on a free port,
counts its requests and the most it had in flight at once, and is stopped by the block that
started it.

``serve`` runs the server in a thread of the test process: right for clients written in Python
(requests, earthengine-api, asf-search), which release the GIL while they wait. GDAL does not
release it while it opens a dataset, so a server that GDAL reads from must live in another
process: ``serve_in_process`` (same handlers; the test reads the request log and changes the
server's state through ``/_loopback/`` control URLs).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
CONTROL = "/_loopback/"


@dataclass
class RequestLog:
    """What a server saw: method, path and Range of each request, and peak concurrency."""

    requests: list[tuple[str, str, str]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, method: str, path: str, range_header: str) -> None:
        with self.lock:
            self.requests.append((method, path, range_header))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def paths(self, method: str = "GET") -> list[str]:
        with self.lock:
            return [p for m, p, _ in self.requests if m == method]


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], **state: object) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.log = RequestLog()
        self.latency_s = 0.0
        for key, value in state.items():
            setattr(self, key, value)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class QuietHandler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 keep-alive, no console noise, request accounting, latency."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms Nagle + delayed-ACK stall per response
    server: LoopbackServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _accounted(self, method: str, respond: Callable[[], None]) -> None:
        if self.path.startswith(CONTROL):
            self._control(method)
            return
        self.server.log.enter(method, self.path, self.headers.get("Range", ""))
        try:
            if self.server.latency_s:
                time.sleep(self.server.latency_s)
            respond()
        finally:
            self.server.log.leave()

    def _control(self, method: str) -> None:
        """``GET /_loopback/log``: the request log; ``POST /_loopback/state``: set attributes."""
        if method == "POST":
            length = int(self.headers.get("Content-Length", "0"))
            for key, value in json.loads(self.rfile.read(length) or b"{}").items():
                setattr(self.server, key, value)
            self.send_bytes(204, b"")
            return
        log = self.server.log
        with log.lock:
            body = {"requests": log.requests, "peak_in_flight": log.peak_in_flight}
        self.send_bytes(200, json.dumps(body).encode(), "application/json")

    def do_POST(self) -> None:
        self._accounted("POST", lambda: self.send_bytes(404, b"not found", "text/plain"))

    def send_bytes(self, status: int, body: bytes, content_type: str = "application/octet-stream",
                   headers: dict[str, str] | None = None, head: bool = False) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class RangeFileHandler(QuietHandler):
    """Serves files under ``server.root`` with HEAD, GET and single-range GET, like a bucket.

    ``server.truncate`` maps a URL path to a byte count: the response then announces the full
    length but stops early and closes, as a dropped connection does.
    """

    def do_HEAD(self) -> None:
        self._accounted("HEAD", lambda: self._serve(head=True))

    def do_GET(self) -> None:
        self._accounted("GET", lambda: self._serve(head=False))

    def _serve(self, head: bool) -> None:
        root: Path = self.server.root  # type: ignore[attr-defined]
        relative = self.path.split("?", 1)[0].lstrip("/")
        path = (root / relative).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            self.send_bytes(404, b"not found", "text/plain", head=head)
            return
        body = path.read_bytes()
        size = len(body)
        truncate = getattr(self.server, "truncate", {}).pop("/" + relative, None)
        match = RANGE.match(self.headers.get("Range", ""))
        if match and (match.group(1) or match.group(2)):
            first, last = match.group(1), match.group(2)
            if first:
                start, end = int(first), min(size - 1, int(last) if last else size - 1)
            else:
                start, end = max(0, size - int(last)), size - 1
            if start >= size:
                self.send_bytes(416, b"", headers={"Content-Range": f"bytes */{size}"}, head=head)
                return
            self.send_bytes(206, body[start : end + 1], headers={
                "Content-Range": f"bytes {start}-{end}/{size}", "Accept-Ranges": "bytes"},
                head=head)  # fmt: skip
            return
        if truncate is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[:truncate])
            self.close_connection = True
            return
        self.send_bytes(200, body, headers={"Accept-Ranges": "bytes"}, head=head)


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler], **state: object) -> Iterator[LoopbackServer]:
    """Run ``handler`` on 127.0.0.1:<free port> in a thread for the duration of the block."""
    server = LoopbackServer(handler, **state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)  # fmt: skip
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def serve_files(root: Path, latency_s: float = 0.0) -> Iterator[LoopbackServer]:
    """A static file server with Range support over ``root`` (a bucket or mirror stand-in)."""
    with serve(RangeFileHandler, root=Path(root), truncate={}) as server:
        server.latency_s = latency_s
        yield server


class ProcessServer:
    """Handle on a server running in a child process (see ``serve_in_process``)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, path: str, payload: dict | None = None) -> dict:
        import urllib.request

        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + CONTROL + path, data=data)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def requests(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self._call("log")["requests"]]

    def paths(self, method: str = "GET") -> list[str]:
        return [p for m, p, _ in self.requests() if m == method]

    def peak_in_flight(self) -> int:
        return int(self._call("log")["peak_in_flight"])

    def set(self, **state: object) -> None:
        self._call("state", state)


def _run_in_child(handler: type[BaseHTTPRequestHandler], state: dict, urls: object) -> None:
    server = LoopbackServer(handler, **state)
    urls.put(server.url)  # type: ignore[attr-defined]
    server.serve_forever(poll_interval=0.05)


@contextlib.contextmanager
def serve_in_process(handler: type[BaseHTTPRequestHandler], **state: object
                     ) -> Iterator[ProcessServer]:  # fmt: skip
    """Like ``serve``, in a spawned child process (for GDAL clients); killed at the end."""
    context = multiprocessing.get_context("spawn")
    urls = context.Queue()
    child = context.Process(target=_run_in_child, args=(handler, state, urls), daemon=True)
    child.start()
    try:
        yield ProcessServer(urls.get(timeout=30))
    finally:
        child.terminate()
        child.join(timeout=5)


@contextlib.contextmanager
def serve_files_in_process(root: Path, latency_s: float = 0.0) -> Iterator[ProcessServer]:
    """``serve_files`` in a child process: for GDAL's ``/vsicurl/``."""
    with serve_in_process(RangeFileHandler, root=Path(root), truncate={},
                          latency_s=latency_s) as server:  # fmt: skip
        yield server
