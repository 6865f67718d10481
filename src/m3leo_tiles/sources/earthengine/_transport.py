"""The Earth Engine client's HTTP connections: a wider pool, and bodies read in one call.

``requests`` reads a body that is not streamed as ``b"".join(iter_content(10 KiB))``: a 16 MB
computePixels answer passes through ~1,600 rounds of five Python layers (requests, urllib3,
http.client, the buffered socket) and is then joined, a second copy. Reading it with one
``urllib3`` ``read()`` lets the buffered reader fill one buffer in C: about a third of the CPU
for the same bytes (``bench/bench_ee_cpu.py``). Everything else stays requests' own: the same
decoding of ``Content-Encoding``, the same checks of ``Content-Length`` (a body cut short is
an error, not a short answer), the same exceptions, the connection returned to the pool.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError, SSLError


class WholeBodyAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that reads a non-streamed body in one call (see the module)."""

    def send(self, request: Any, stream: bool = False, **kwargs: Any) -> requests.Response:
        response = super().send(request, stream=stream, **kwargs)
        if not stream:
            read_whole(response)
        return response


def read_whole(response: requests.Response) -> None:
    """Read ``response``'s body now, as ``Response.content`` would, with the errors requests
    raises while reading (``iter_content``), so callers see no difference but the CPU."""
    if response.raw is None or response.status_code == 0:
        return  # ``content`` then says None itself
    try:
        body = response.raw.read(decode_content=True)
    except ProtocolError as error:
        raise requests.exceptions.ChunkedEncodingError(error) from error
    except DecodeError as error:
        raise requests.exceptions.ContentDecodingError(error) from error
    except ReadTimeoutError as error:
        raise requests.exceptions.ConnectionError(error) from error
    except SSLError as error:
        raise requests.exceptions.SSLError(error) from error
    # What ``Response.content`` stores once it has read the body (requests' own attributes).
    response._content = body or b""
    response._content_consumed = True
