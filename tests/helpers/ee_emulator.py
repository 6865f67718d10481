"""A loopback Earth Engine: the REST endpoints the real ``earthengine-api`` client calls.

The client is pointed here with ``ee.Initialize(credentials=None, url=server.url,
cloud_api_key=..., project=...)``. It then asks for its discovery document and the algorithm
list, both served from the copies the ``ee`` package ships for its own tests (so the client
builds its API objects exactly as against the real service), and sends ``computePixels`` /
``value:compute`` requests, which are recorded for tests to inspect.

Pixels are deterministic and depend on where they are: the value of band ``b`` at a pixel is
computed from the pixel's *world* position (its centre divided by the pixel size, so the same
ground pixel has the same value in every request on the same lattice) and a code of the band
id. A chip fetched with a shifted, flipped or transposed grid therefore differs from the
expected one, and ``expected_pixels`` gives a test the expected values independently.

What a test can steer (attributes of the server, or ``configure``):

* ``errors``: a list of ``(http_status, status_word, message)`` answered, one per request, to
  the next computePixels requests (quota errors then success, a permanent error...).
* ``bad_bands``: band ids that the "image" does not have: a request naming one gets Earth
  Engine's 400 INVALID_ARGUMENT.
* ``refuse_at``: ``(translateX, translateY)`` of grids whose requests get that 400 too (one
  tile's permanent failure in a multi-tile run).
* ``masked_bands``: band ids whose pixels are all masked (a window with no image or only
  clouds): they come back as the value of the expression's ``Image.unmask`` (0 without one,
  as the service fills masked pixels).
* ``empty_windows``: ``(collection id, start date)`` pairs with no image: ``value:compute``
  counts them as 0 (other windows count 3).
* ``latency_s``: seconds every request waits before it is answered.
* ``go_away()``: the service disappears mid-run: requests in flight get no answer (their
  connections close) and new connections are refused.

Limits are the service's: more than 1024 bands, or a response over 48 MiB
(50,331,648 bytes), is refused with 400 like the real service does.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from tests.helpers.loopback import LoopbackServer, QuietHandler, serve

MAX_REQUEST_BYTES = 50_331_648
MAX_BANDS = 1024
CAST_DTYPES = {
    "Image.toUint8": "uint8",
    "Image.toByte": "uint8",
    "Image.toInt8": "int8",
    "Image.toUint16": "uint16",
    "Image.toInt16": "int16",
    "Image.toShort": "int16",
    "Image.toUint32": "uint32",
    "Image.toInt32": "int32",
    "Image.toInt": "int32",
    "Image.toFloat": "float32",
    "Image.toDouble": "float64",
}


def _ee_tests_dir() -> Path:
    import ee

    return Path(ee.__file__).resolve().parent / "tests"


def band_code(band: str) -> int:
    """A small number that differs between band ids (and is the same in every process)."""
    return zlib.crc32(band.encode()) % 97


def expected_pixels(band: str, grid: Any, dtype: str) -> np.ndarray:
    """The emulator's values of ``band`` on a pixel grid (crs, transform, width, height).

    ``grid`` may be a ``PixelGrid`` or the request's JSON grid: only the affine transform and
    the size matter. Integer dtypes get values 1..250 (never 0 or a negative nodata);
    floats get the same plus 0.25 (so a float chip that went through an integer is caught).
    """
    if isinstance(grid, dict):
        affine = grid["affineTransform"]
        sx, tx = affine["scaleX"], affine["translateX"]
        sy, ty = affine["scaleY"], affine["translateY"]
        width, height = grid["dimensions"]["width"], grid["dimensions"]["height"]
    else:
        sx, tx = grid.transform.a, grid.transform.c
        sy, ty = grid.transform.e, grid.transform.f
        width, height = grid.width, grid.height
    cols = np.floor((tx + (np.arange(width) + 0.5) * sx) / abs(sx)).astype(np.int64)
    rows = np.floor((ty + (np.arange(height) + 0.5) * sy) / abs(sy)).astype(np.int64)
    values = (cols[None, :] * 3 + rows[:, None] * 7 + band_code(band)) % 250 + 1
    if np.dtype(dtype).kind == "f":
        return (values + 0.25).astype(dtype)
    return values.astype(dtype)


# --- reading the serialised expression ------------------------------------------------------


def graph_nodes(expression: dict) -> Iterator[dict]:
    """Every node of a serialised expression (values table and nested values)."""
    stack: list[Any] = [expression.get("values", {})]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def function_names(expression: dict) -> list[str]:
    return [
        node["functionInvocationValue"]["functionName"]
        for node in graph_nodes(expression)
        if "functionInvocationValue" in node
    ]


def constants(expression: dict) -> list[Any]:
    return [node["constantValue"] for node in graph_nodes(expression) if "constantValue" in node]


def _result_node(expression: dict) -> dict:
    return expression["values"][expression["result"]]


def result_dtype(expression: dict) -> str:
    """The dtype of the final cast (``Image.toFloat`` ...); float64 when the image is not
    cast, as the service's means and medians are."""
    node = _result_node(expression).get("functionInvocationValue", {})
    return CAST_DTYPES.get(node.get("functionName", ""), "float64")


def _resolve(expression: dict, node: dict) -> dict:
    while "valueReference" in node:
        node = expression["values"][node["valueReference"]]
    return node


def unmask_value(expression: dict) -> float:
    for node in graph_nodes(expression):
        call = node.get("functionInvocationValue")
        if call and call["functionName"] == "Image.unmask":
            value = _resolve(expression, call["arguments"].get("value", {}))
            if "constantValue" in value:
                return float(value["constantValue"])
            inner = value.get("functionInvocationValue", {})
            if inner.get("functionName") == "Image.constant":
                const = _resolve(expression, inner["arguments"]["value"])
                return float(const.get("constantValue", 0))
    return 0.0


def date_ranges(expression: dict, node: dict | None = None) -> list[tuple[str, str]]:
    """The ``(start, end)`` of every date filter under ``node`` (whole graph by default)."""
    found = []
    nodes = graph_nodes({"values": node} if node is not None else expression)
    for item in nodes:
        call = item.get("functionInvocationValue")
        if call and call["functionName"] == "DateRange":
            start = _resolve(expression, call["arguments"]["start"]).get("constantValue")
            end = _resolve(expression, call["arguments"].get("end", {})).get("constantValue")
            found.append((str(start), str(end)))
    return found


def _subgraph(expression: dict, node: Any) -> Iterator[dict]:
    """Nodes reachable from ``node``, following value references."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "valueReference" in item:
                key = item["valueReference"]
                if key not in seen:
                    seen.add(key)
                    stack.append(expression["values"][key])
                continue
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def collection_windows(expression: dict, node: Any) -> list[tuple[str, str]]:
    """``(collection id, start)`` of the collections loaded under ``node`` with their dates."""
    loads, starts = [], []
    for item in _subgraph(expression, node):
        call = item.get("functionInvocationValue")
        if not call:
            continue
        if call["functionName"] == "ImageCollection.load":
            ident = _resolve(expression, call["arguments"]["id"]).get("constantValue")
            loads.append(str(ident))
        if call["functionName"] == "DateRange":
            starts.append(
                str(_resolve(expression, call["arguments"]["start"]).get("constantValue"))
            )
    return [(load, start) for load in loads for start in starts] or [(ld, "") for ld in loads]


# --- the server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict
    arrived: float = 0.0  # time.monotonic() when the request was read


class EarthEngineHandler(QuietHandler):
    server: EmulatorServer

    def setup(self) -> None:
        """No Nagle delay: headers and body go out in two writes, and with the client's
        delayed ACK every response would wait ~40 ms, which the real service does not."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._accounted("GET", self._get)

    def do_POST(self) -> None:
        pixels = self.path.split("?", 1)[0].endswith("/image:computePixels")
        server = self.server
        if pixels:
            with server.ee_lock:
                server.pixels_in_flight += 1
                server.peak_pixels = max(server.peak_pixels, server.pixels_in_flight)
        try:
            self._accounted("POST", self._post)
        finally:
            if pixels:
                with server.ee_lock:
                    server.pixels_in_flight -= 1

    def _json(self, status: int, payload: Any) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json")

    def _error(self, code: int, status: str, message: str) -> None:
        self._json(code, {"error": {"code": code, "message": message, "status": status}})

    def _record(self, method: str, body: dict) -> RecordedRequest:
        parts = urlsplit(self.path)
        request = RecordedRequest(method, parts.path, parse_qs(parts.query), body,
                                  time.monotonic())  # fmt: skip
        with self.server.ee_lock:
            self.server.ee_requests.append(request)
        return request

    def _get(self) -> None:
        if self._gone():
            return
        path = urlsplit(self.path).path
        self._record("GET", {})
        if path.endswith("/$discovery/rest") or path.startswith("/$discovery"):
            body = (_ee_tests_dir() / "cloud_api_discovery_document.json").read_bytes()
            self.send_bytes(200, body, "application/json")
        elif path.endswith("/algorithms"):
            if self._refused():
                return
            body = (_ee_tests_dir() / "algorithms.json").read_bytes()
            self.send_bytes(200, body, "application/json")
        else:
            self._error(404, "NOT_FOUND", f"no such path {path}")

    def _refused(self) -> bool:
        refused = self.server.refuse_keys
        key = parse_qs(urlsplit(self.path).query).get("key", [""])[0]
        if key in refused:
            self._error(403, "PERMISSION_DENIED", "API key not valid. Please pass a valid API key.")
            return True
        return False

    def _gone(self) -> bool:
        """The service went away (``go_away``): no answer, and this connection closes."""
        if self.server.gone:
            self.close_connection = True
        return self.server.gone

    def _post(self) -> None:
        if self._gone():
            return
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b"{}"
        body = json.loads(raw or b"{}")
        request = self._record("POST", body)
        if self._refused():
            return
        if request.path.endswith("/image:computePixels"):
            self._compute_pixels(body)
        elif request.path.endswith("/value:compute"):
            self._compute_value(body)
        else:
            self._error(404, "NOT_FOUND", f"no such method {request.path}")

    def _scripted_error(self) -> bool:
        with self.server.ee_lock:
            scripted = self.server.errors.pop(0) if self.server.errors else None
        if scripted is None:
            return False
        code, status, message = scripted
        self._error(code, status, message)
        return True

    def _compute_pixels(self, body: dict) -> None:
        if self._scripted_error():
            return
        expression = body["expression"]
        grid = body["grid"]
        bands = body.get("bandIds") or []
        if not bands:
            self._error(400, "INVALID_ARGUMENT", "emulator: give bandIds")
            return
        affine = grid["affineTransform"]
        refused = (affine["translateX"], affine["translateY"]) in self.server.refuse_at
        for band in bands:
            if band in self.server.bad_bands or refused:
                self._error(
                    400,
                    "INVALID_ARGUMENT",
                    f"Image.select: Band pattern '{band}' did not match any bands. "
                    "Available bands: []",
                )
                return
        if len(bands) > MAX_BANDS:
            self._error(400, "INVALID_ARGUMENT", f"Too many bands: {len(bands)} > {MAX_BANDS}.")
            return
        dtype = np.dtype(result_dtype(expression))
        width, height = grid["dimensions"]["width"], grid["dimensions"]["height"]
        size = width * height * dtype.itemsize * len(bands)
        if size > MAX_REQUEST_BYTES:
            self._error(
                400,
                "INVALID_ARGUMENT",
                f"Total request size ({size} bytes) must be less than or equal to "
                f"{MAX_REQUEST_BYTES} bytes.",
            )
            return
        fill = unmask_value(expression)
        out = np.empty((height, width), dtype=[(band, dtype) for band in bands])
        for band in bands:
            if band in self.server.masked_bands:
                out[band] = fill
            else:
                out[band] = expected_pixels(band, grid, dtype.name)
        buffer = io.BytesIO()
        np.save(buffer, out, allow_pickle=False)
        self.send_bytes(200, buffer.getvalue())

    def _compute_value(self, body: dict) -> None:
        if self._scripted_error():
            return
        expression = body["expression"]
        result = _resolve(expression, _result_node(expression))
        if "constantValue" in result:  # a preflight like ee.Number(1)
            self._json(200, {"result": result["constantValue"]})
            return
        entries = result.get("dictionaryValue", {}).get("values")
        if entries is None:
            self._error(400, "INVALID_ARGUMENT", "emulator: only constants and dictionaries "
                        "of image counts")  # fmt: skip
            return
        answer = {}
        for key, node in entries.items():
            windows = collection_windows(expression, node)
            empty = any(window in self.server.empty_windows for window in windows)
            answer[key] = 0 if empty else 3
        self._json(200, {"result": answer})


class EmulatorServer(LoopbackServer):
    ee_requests: list[RecordedRequest]
    ee_lock: threading.Lock
    errors: list[tuple[int, str, str]]
    bad_bands: set[str]
    refuse_at: set[tuple[float, float]]
    masked_bands: set[str]
    empty_windows: set[tuple[str, str]]
    refuse_keys: set[str]
    pixels_in_flight: int
    gone: bool
    peak_pixels: int  # most computePixels requests open at once, latency included

    def pixel_requests(self) -> list[dict]:
        with self.ee_lock:
            return [r.body for r in self.ee_requests if r.path.endswith("/image:computePixels")]

    def pixel_arrivals(self) -> list[float]:
        with self.ee_lock:
            return [r.arrived for r in self.ee_requests
                    if r.path.endswith("/image:computePixels")]  # fmt: skip

    def value_requests(self) -> list[dict]:
        with self.ee_lock:
            return [r.body for r in self.ee_requests if r.path.endswith("/value:compute")]

    def algorithm_requests(self) -> int:
        with self.ee_lock:
            return sum(1 for r in self.ee_requests if r.path.endswith("/algorithms"))

    def clear(self) -> None:
        with self.ee_lock:
            self.ee_requests.clear()

    def go_away(self) -> None:
        """Stop answering: close the listening socket; requests in flight get no answer."""
        self.gone = True
        self.shutdown()
        self.server_close()


@contextmanager
def serve_earthengine(
    latency_s: float = 0.0, handler: type[EarthEngineHandler] = EarthEngineHandler
) -> Iterator[EmulatorServer]:
    """The emulator on 127.0.0.1:<free port> in a thread, for the duration of the block
    (``handler``: a subclass answering differently, e.g. bench_ee_cpu's recorded answers)."""
    with serve(
        handler,
        ee_requests=[],
        ee_lock=threading.Lock(),
        errors=[],
        bad_bands=set(),
        refuse_at=set(),
        masked_bands=set(),
        empty_windows=set(),
        refuse_keys=set(),
        pixels_in_flight=0,
        peak_pixels=0,
        gone=False,
    ) as server:
        server.__class__ = EmulatorServer
        server.latency_s = latency_s
        yield server  # type: ignore[misc]
