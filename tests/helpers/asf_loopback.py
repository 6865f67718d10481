"""ASF's services on 127.0.0.1 for the real asf-search client: CMR, Earthdata login, downloads.

asf-search sends every request through its ``ASFSession`` (a ``requests.Session``) to
``https://<host>/...``. ``LoopbackAdapter`` is a requests transport adapter mounted on such a
session for ``https://``: it forwards each request to a loopback server as
``http://127.0.0.1:PORT/<host>/<path>`` and hands the response back under the original URL,
so cookies, redirects and auth headers behave as they would against the real hosts. The code
under test is unchanged: ``route_asf_sessions`` mounts the adapter on every ``ASFSession`` made
while it is active, and ``M3LEO_TEST_ASF_LOOPBACK=URL`` does the same in any Python process
started with ``tests/helpers/site`` on its path (CLI subprocesses and their dask workers).

``AsfHandler`` answers:

* ``POST /cmr.earthdata.nasa.gov/search/granules.umm_json``: CMR's UMM-JSON answer
  (``{"hits", "took", "items": [{"meta", "umm"}]}``) replayed from recorded items, filtered by
  the query's ``temporal`` and ``polygon``/``bounding_box`` and paged with ``page_size`` and
  the ``CMR-Search-After`` header, as CMR does;
* Earthdata login as asf-search uses it: ``POST /api/users/find_or_create_token`` (basic
  auth), ``GET /oauth/authorize`` (redirect to ASF's ``/login``, which sets the ``asf-urs``
  cookie) and ``POST /oauth/tokens/user`` (token check); ``server.refuse = True`` refuses all;
* product downloads under ``/grfn.asf.alaska.edu/door/download/<file>``, only with a valid
  bearer token or ``asf-urs`` cookie (else 401), from ``server.products`` (name → path), with
  ``server.truncate`` (name → byte count, once) cutting a response short as a dropped
  connection does; ``server.signed_query`` (a query string) makes them redirect, as ASF does,
  to a signed S3 URL (``https://grfn-content-prod.s3.amazonaws.com/<file>?<query>``), which
  serves the file without login; ``server.download_status`` makes whichever answers the file
  answer that HTTP status instead, and ``server.search_errors`` is the ``errors`` list of a
  failing CMR answer (CMR's own quote the token they refused: ``Token [...] does not exist``).

Items are recorded CMR answers: ``real_gunw_item`` is the real ARIA S1 GUNW record that
asf-search's own tests replay (../shared/data/asf/ARIAS1-GUNW_response.yml), and
``derived_gunw_item`` is that record with the fields that name another product changed
(granule name, dates, track, frame, version, footprint, URL, size, checksum).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import shapely
import yaml
from requests.adapters import HTTPAdapter
from shapely.geometry import Polygon, box

from helpers.loopback import QuietHandler

ENV = "M3LEO_TEST_ASF_LOOPBACK"
_KEPT: list = []
CMR_PATH = "/cmr.earthdata.nasa.gov/search/granules.umm_json"
DOWNLOAD_PREFIX = "/grfn.asf.alaska.edu/door/download/"
DOWNLOAD_URL = "https://grfn.asf.alaska.edu/door/download/"
S3_HOST = "grfn-content-prod.s3.amazonaws.com"


class LoopbackAdapter(HTTPAdapter):
    """Sends ``https://host/path`` to ``<base>/host/path``; the response keeps the https URL."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        parts = urllib.parse.urlsplit(request.url)
        forwarded = request.copy()
        forwarded.url = f"{self.base_url}/{parts.netloc}{parts.path or '/'}" + (
            f"?{parts.query}" if parts.query else ""
        )
        response = super().send(
            forwarded, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies={}
        )
        response.url = request.url
        response.request = request
        return response


@contextlib.contextmanager
def route_asf_sessions(base_url: str) -> Iterator[None]:
    """Every ``ASFSession`` made in this block talks to the loopback server."""
    import asf_search

    original = asf_search.ASFSession.__init__

    def init(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.mount("https://", LoopbackAdapter(base_url))

    asf_search.ASFSession.__init__ = init
    try:
        yield
    finally:
        asf_search.ASFSession.__init__ = original


def install_from_environment() -> None:
    """For sitecustomize: route this process's sessions when ``M3LEO_TEST_ASF_LOOPBACK`` is set."""
    url = os.environ.get(ENV)
    if url:
        routing = route_asf_sessions(url)
        routing.__enter__()
        _KEPT.append(routing)  # a collected context manager would undo the routing


# --- the recorded items -----------------------------------------------------------------------


def _nones(value: Any) -> Any:
    """asf-search's recordings write Python's None; YAML reads it as the string 'None'."""
    if isinstance(value, dict):
        return {key: _nones(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nones(item) for item in value]
    return None if value == "None" else value


def load_recording(path: Path) -> Any:
    with open(path, encoding="utf-8") as stream:
        return _nones(yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def real_gunw_item(shared_data: Path) -> dict[str, Any]:
    """The real CMR item of S1-GUNW-A-R-035-tops-20240816_20230717-...-v3_0_1."""
    record = load_recording(shared_data / "asf" / "ARIAS1-GUNW_response.yml")
    return {"meta": record["meta"], "umm": record["umm"]}


def stack_dates(shared_data: Path, year: int | None = None) -> list[dt.date]:
    """Acquisition dates of the real 342-scene Sentinel-1 stack of ARIA frame 5289."""
    records = load_recording(shared_data / "asf" / "ARIAS1GUNW_stack.yml")
    dates = sorted({dt.date.fromisoformat(r["properties"]["startTime"][:10]) for r in records})
    return [d for d in dates if year is None or d.year == year]


def _attribute(umm: dict, name: str, value: str) -> None:
    for entry in umm["AdditionalAttributes"]:
        if entry["Name"] == name:
            entry["Values"] = [value]
            return
    umm["AdditionalAttributes"].append({"Name": name, "Values": [value]})


def derived_gunw_item(
    template: dict[str, Any], name: str, footprint: Polygon, size: int, md5: str, frame: int
) -> dict[str, Any]:
    """The real record rewritten to describe product ``name`` (fields asf-search reads)."""
    from m3leo_tiles.sources.gunw._gunw_catalog import NAME

    match = NAME.match(name)
    assert match, name
    reference = dt.datetime.strptime(match["reference"], "%Y%m%d")
    secondary = dt.datetime.strptime(match["secondary"], "%Y%m%d")
    item = copy.deepcopy(template)
    umm, meta = item["umm"], item["meta"]
    umm["GranuleUR"] = name
    meta["native-id"] = name
    meta["concept-id"] = "G" + str(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)) + "-ASF"
    start = reference.replace(hour=2, minute=7, second=49)
    umm["TemporalExtent"]["RangeDateTime"] = {
        "BeginningDateTime": f"{start:%Y-%m-%dT%H:%M:%S}.000000Z",
        "EndingDateTime": f"{start + dt.timedelta(seconds=52):%Y-%m-%dT%H:%M:%S}.000000Z",
    }
    version = match["version"].replace("_", ".")
    _attribute(
        umm, "ASCENDING_DESCENDING", "ascending" if match["direction"] == "A" else "descending"
    )
    _attribute(umm, "PATH_NUMBER", str(int(match["track"])))
    _attribute(umm, "FRAME_NUMBER", str(frame))
    _attribute(umm, "VERSION", version)
    _attribute(umm, "TEMPORAL_BASELINE_DAYS", str((reference - secondary).days))
    ring = shapely.geometry.polygon.orient(footprint, 1.0).exterior.coords  # CMR: counter-clockwise
    umm["SpatialExtent"]["HorizontalSpatialDomain"]["Geometry"]["GPolygons"] = [
        {"Boundary": {"Points": [{"Longitude": x, "Latitude": y} for x, y in ring]}}
    ]
    umm["RelatedUrls"] = [
        {"Type": "GET DATA", "URL": f"{DOWNLOAD_URL}{name}.nc"},
        {
            "Type": "GET RELATED VISUALIZATION",
            "URL": f"https://grfn-public-prod.asf.alaska.edu/{name}.png",
        },
    ]
    files = umm["DataGranule"]["ArchiveAndDistributionInformation"]
    for entry in files:
        suffix = entry["Name"].rsplit(".", 1)[-1]
        entry["Name"] = f"{name}.{suffix}"
        if entry["Format"] == "netCDF-4":
            entry["SizeInBytes"] = size
            entry["Checksum"] = {"Value": md5, "Algorithm": "MD5"}
    scenes = [
        f"S1A_IW_SLC__1SDV_{day:%Y%m%d}T020749_{day:%Y%m%d}T020816_000000_000000_0000"
        for day in (reference, secondary)
    ]
    umm["InputGranules"] = scenes
    return item


def item_for_file(
    template: dict[str, Any], path: Path, footprint: Polygon, frame: int
) -> dict[str, Any]:
    body = Path(path).read_bytes()
    return derived_gunw_item(
        template, Path(path).stem, footprint, len(body), hashlib.md5(body).hexdigest(), frame
    )


def item_start(item: dict[str, Any]) -> str:
    return item["umm"]["TemporalExtent"]["RangeDateTime"]["BeginningDateTime"]


def item_polygon(item: dict[str, Any]) -> Polygon:
    points = item["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]["Geometry"]["GPolygons"][0]
    return Polygon([(p["Longitude"], p["Latitude"]) for p in points["Boundary"]["Points"]])


# --- the server -------------------------------------------------------------------------------


class AsfHandler(QuietHandler):
    """CMR search, Earthdata login and ASF downloads (see the module docstring)."""

    def do_GET(self) -> None:
        self._accounted("GET", self._get)

    def do_POST(self) -> None:
        self._accounted("POST", self._post)

    # server state: items (list), users ({name: password}), tokens (set), refuse (bool),
    # products ({file name: path}), truncate ({file name: bytes}), searches (list of forms),
    # search_status, search_errors, signed_query, download_status (see the module docstring)

    def _form(self) -> dict[str, list[str]]:
        length = int(self.headers.get("Content-Length", "0"))
        return urllib.parse.parse_qs(self.rfile.read(length).decode())

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(body).encode(), "application/json", headers)

    def _post(self) -> None:
        path = self.path.partition("?")[0]
        if path == CMR_PATH:
            self._search(self._form())
        elif path == "/urs.earthdata.nasa.gov/api/users/find_or_create_token":
            self._form()
            user = self._basic_user()
            if user is None:
                self._json(401, {"error": "invalid_credentials"})
                return
            token = secrets.token_hex(8)
            self.server.tokens.add(token)  # type: ignore[attr-defined]
            self._json(
                200,
                {"access_token": token, "token_type": "Bearer", "expiration_date": "12/31/2099"},
            )
        elif path == "/urs.earthdata.nasa.gov/oauth/tokens/user":
            token = self._form().get("token", [""])[0]
            valid = not self.server.refuse and token in self.server.tokens  # type: ignore[attr-defined]
            self._json(200 if valid else 401, {"uid": "user"} if valid else {"error": "invalid"})
        else:
            self._json(404, {"errors": ["not found"]})

    def _basic_user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if self.server.refuse or not header.startswith("Basic "):  # type: ignore[attr-defined]
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.server.users.get(user) == password else None  # type: ignore[attr-defined]

    def _get(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/urs.earthdata.nasa.gov/oauth/authorize":
            if self._basic_user() is None and not self._bearer_ok():
                self._json(401, {"error": "unauthorized"})
                return
            target = urllib.parse.parse_qs(query).get("redirect_uri", [""])[0]
            self.send_bytes(302, b"", headers={"Location": f"{target}?code={secrets.token_hex(4)}"})
        elif path == "/cumulus.asf.alaska.edu/login":
            cookie = secrets.token_hex(8)
            self.server.cookies.add(cookie)  # type: ignore[attr-defined]
            self.send_bytes(
                200,
                b"logged in",
                "text/plain",
                headers={"Set-Cookie": f"asf-urs={cookie}; Domain=asf.alaska.edu; Path=/; Secure"},
            )
        elif path.startswith(DOWNLOAD_PREFIX):
            self._download(urllib.parse.unquote(path[len(DOWNLOAD_PREFIX) :]))
        elif path.startswith(f"/{S3_HOST}/"):
            self._serve_product(urllib.parse.unquote(path[len(S3_HOST) + 2 :]))
        else:
            self._json(404, {"errors": ["not found"]})

    def _bearer_ok(self) -> bool:
        header = self.headers.get("Authorization", "")
        tokens = self.server.tokens  # type: ignore[attr-defined]
        return not self.server.refuse and header.startswith("Bearer ") and header[7:] in tokens  # type: ignore[attr-defined]

    def _cookie_ok(self) -> bool:
        cookies = dict(
            part.strip().partition("=")[::2]
            for part in self.headers.get("Cookie", "").split(";")
            if "=" in part
        )
        return cookies.get("asf-urs") in self.server.cookies  # type: ignore[attr-defined]

    def _download(self, name: str) -> None:
        if not (self._bearer_ok() or self._cookie_ok()):
            self.send_bytes(401, b"HTTP Basic: Access denied.", "text/plain")
            return
        query = self.server.signed_query  # type: ignore[attr-defined]
        if query and name in self.server.products:  # type: ignore[attr-defined]
            target = f"https://{S3_HOST}/{urllib.parse.quote(name)}?{query}"
            self.send_bytes(307, b"", headers={"Location": target})
            return
        self._serve_product(name)

    def _serve_product(self, name: str) -> None:
        status = self.server.download_status  # type: ignore[attr-defined]
        if status is not None:
            self.send_bytes(status, b"AccessDenied", "text/plain")
            return
        path = self.server.products.get(name)  # type: ignore[attr-defined]
        if path is None:
            self.send_bytes(404, b"not found", "text/plain")
            return
        body = Path(path).read_bytes()
        cut = self.server.truncate.pop(name, None)  # type: ignore[attr-defined]
        if cut is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[:cut])
            self.close_connection = True
            return
        self.send_bytes(200, body, "application/x-netcdf")

    def _search(self, form: dict[str, list[str]]) -> None:
        self.server.searches.append(form)  # type: ignore[attr-defined]
        status = self.server.search_status  # type: ignore[attr-defined]
        if status != 200:
            errors = self.server.search_errors or [f"loopback CMR answers {status}"]  # type: ignore[attr-defined]
            self._json(status, {"errors": errors})
            return
        items = list(self.server.items)  # type: ignore[attr-defined]
        temporal = form.get("temporal", [""])[0]
        if temporal:
            start, end = [*temporal.split(","), "", ""][:2]  # CMR: "start,end,"
            items = [
                i
                for i in items
                if (not start or item_start(i) >= start) and (not end or item_start(i) <= end)
            ]
        area = _query_area(form)
        if area is not None:
            items = [i for i in items if item_polygon(i).intersects(area)]
        size = int(form.get("page_size", ["250"])[0])
        offset = int(self.headers.get("CMR-Search-After") or 0)
        page = items[offset : offset + size]
        headers = {"CMR-Hits": str(len(items))}
        if offset + size < len(items):
            headers["CMR-Search-After"] = str(offset + size)
        self._json(200, {"hits": len(items), "took": 3, "items": page}, headers)


def _query_area(form: dict[str, list[str]]) -> Any:
    if "polygon" in form:
        numbers = [float(v) for v in form["polygon"][0].split(",")]
        return Polygon(list(zip(numbers[::2], numbers[1::2], strict=True)))
    if "bounding_box" in form:
        return box(*[float(v) for v in form["bounding_box"][0].split(",")])
    return None


def asf_state(
    items: list[dict[str, Any]],
    products: dict[str, Path] | None = None,
    users: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword state for ``serve(AsfHandler, **asf_state(...))``."""
    return {
        "items": items,
        "products": {k: str(v) for k, v in (products or {}).items()},
        "users": users or {},
        "tokens": set(),
        "cookies": set(),
        "refuse": False,
        "truncate": {},
        "searches": [],
        "search_status": 200,
        "search_errors": None,
        "signed_query": None,
        "download_status": None,
    }


def download_requests(server: Any) -> list[str]:
    return [p for p in server.log.paths("GET") if p.startswith(DOWNLOAD_PREFIX)]
