"""Earth Engine answers to chips without numpy.load: the NPY view and the band copy, and the
client's connections reading a whole body in one call with requests' own errors."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from tests.helpers.loopback import QuietHandler, serve

from m3leo_tiles.core.errors import SourceError
from m3leo_tiles.sources.earthengine._answer import copy_bands, npy_view, uniform_fields
from m3leo_tiles.sources.earthengine._transport import WholeBodyAdapter


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=False)
    else:  # numpy's writer, with the header version Earth Engine might use
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def answer(bands: list[str], dtype: str = "uint16", shape=(7, 5), seed: int = 0) -> np.ndarray:
    """A structured array like Earth Engine's: one field per band, values differing by band
    and pixel (a transposed or shifted copy would differ)."""
    rng = np.random.default_rng(seed)
    out = np.empty(shape, dtype=[(band, dtype) for band in bands])
    for band in bands:
        out[band] = rng.integers(1, 250, size=shape)
    return out


def per_field(pixels: np.ndarray, names: list[str], dtype: str) -> np.ndarray:
    """The reference: what the adapter did before, one field at a time."""
    return np.stack([pixels[name].astype(dtype) for name in names])


@pytest.mark.parametrize("version", [None, (1, 0), (2, 0)])
def test_npy_view_reads_what_numpy_load_reads_without_copying(version) -> None:
    array = answer(["a", "b", "c"])
    payload = npy(array, version)
    view = npy_view(payload)
    assert view.dtype == array.dtype and view.shape == array.shape
    np.testing.assert_array_equal(view, np.load(io.BytesIO(payload)))
    assert np.shares_memory(view, np.frombuffer(payload, dtype=np.uint8))  # the bytes, no copy
    assert not view.flags.writeable


def test_npy_view_keeps_a_fortran_ordered_array_as_it_is() -> None:
    array = np.asfortranarray(np.arange(12, dtype="<f4").reshape(3, 4))
    np.testing.assert_array_equal(npy_view(npy(array)), array)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"error": {"code": 500}}', "no NPY array"),
        (npy(np.arange(10, dtype="uint16"))[:-3], "cut short: 17 bytes of pixels for 20"),
        (
            npy(np.zeros(3, dtype="uint16")).replace(b"\x93NUMPY\x01", b"\x93NUMPY\x07"),
            "no NPY array",
        ),
    ],
)
def test_answers_that_are_not_whole_npy_arrays_are_source_errors(payload, message) -> None:
    with pytest.raises(SourceError, match=message):
        npy_view(payload)


def test_an_npy_of_python_objects_is_refused_not_unpickled() -> None:
    header = {"descr": "|O", "fortran_order": False, "shape": (2,)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with pytest.raises(SourceError, match="Python objects"):
        npy_view(buffer.getvalue() + b"\0" * 16)


def test_uniform_fields_only_for_packed_records_of_one_dtype() -> None:
    assert uniform_fields(np.dtype([("a", "<u2"), ("b", "<u2")])) == np.dtype("<u2")
    assert uniform_fields(np.dtype([("a", "<u2"), ("b", "<i4")])) is None
    assert uniform_fields(np.dtype({"names": ["a", "b"], "formats": ["<u2", "<u2"],
                                    "offsets": [2, 0]})) is None  # fmt: skip
    assert uniform_fields(np.dtype({"names": ["a"], "formats": ["<u2"], "itemsize": 4})) is None
    assert uniform_fields(np.dtype("<u2")) is None


@pytest.mark.parametrize(
    ("dtype", "out_dtype", "shape"),
    [
        ("<u2", "uint16", (448, 448)),  # s2srm: blocks of pixels, and a last partial block
        ("<f4", "float32", (50, 50)),
        (">i2", "int16", (9, 11)),  # another byte order: cast while copying
        ("<f8", "float32", (9, 11)),  # the recipe's dtype differs from the answer's: cast
    ],
)
def test_copy_bands_gives_each_band_plane_like_a_field_by_field_copy(
    dtype, out_dtype, shape
) -> None:
    names = [f"b{i}" for i in range(40)]
    pixels = npy_view(npy(answer(names, dtype, shape)))
    out = np.empty((len(names), *shape), dtype=out_dtype)
    copy_bands(pixels, names, out)
    np.testing.assert_array_equal(out, per_field(pixels, names, out_dtype))


def test_copy_bands_fills_a_slice_of_a_chip_and_falls_back_for_mixed_dtypes() -> None:
    chip = np.zeros((5, 7, 5), dtype="uint16")
    mixed = np.empty((7, 5), dtype=[("a", "<u2"), ("b", "<i4")])
    mixed["a"], mixed["b"] = 3, 4
    copy_bands(mixed, ["a", "b"], chip[1:3])
    uniform = answer(["c", "d"])
    copy_bands(uniform, ["c", "d"], chip[3:5])
    assert (chip[0] == 0).all() and (chip[1] == 3).all() and (chip[2] == 4).all()
    np.testing.assert_array_equal(chip[3:5], per_field(uniform, ["c", "d"], "uint16"))


def test_copy_bands_into_a_strided_output_copies_band_by_band() -> None:
    names = ["a", "b", "c"]
    pixels = answer(names)
    chip = np.zeros((3, 7, 10), dtype="uint16")
    copy_bands(pixels, names, chip[:, :, ::2])  # not contiguous: a reshape would be a copy
    np.testing.assert_array_equal(chip[:, :, ::2], per_field(pixels, names, "uint16"))
    assert (chip[:, :, 1::2] == 0).all()


# --- the connections: one read per body ---------------------------------------------------


class BodyHandler(QuietHandler):
    """``/whole`` answers its body; ``/short`` announces more bytes than it sends, then closes
    the connection (a connection dropped mid-answer)."""

    def do_GET(self) -> None:
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path == "/short":
            self.send_header("Content-Length", str(len(body) + 1000))
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def body_server() -> Iterator:
    with serve(BodyHandler, body=bytes(range(256)) * 4096) as server:
        yield server


def session(adapter: requests.adapters.HTTPAdapter) -> requests.Session:
    client = requests.Session()
    client.mount("http://", adapter)
    return client


def test_the_whole_body_is_read_by_the_adapter_in_one_call(body_server) -> None:
    adapter = WholeBodyAdapter()
    request = requests.Request("GET", body_server.url + "/whole").prepare()
    response = adapter.send(request, stream=False, timeout=10)
    assert response._content == body_server.body  # read before requests asks for it
    assert response.content == body_server.body
    streamed = adapter.send(request, stream=True, timeout=10)
    assert streamed._content is False  # a streamed body stays the caller's to read
    assert b"".join(streamed.iter_content(1000)) == body_server.body
    with session(WholeBodyAdapter()) as client:
        assert client.get(body_server.url + "/whole", timeout=10).content == body_server.body


def test_a_body_cut_short_raises_what_requests_raises(body_server) -> None:
    url = body_server.url + "/short"
    with session(requests.adapters.HTTPAdapter()) as client, pytest.raises(Exception) as plain:
        client.get(url, timeout=10)
    with session(WholeBodyAdapter()) as client, pytest.raises(Exception) as whole:
        client.get(url, timeout=10)
    assert type(whole.value) is type(plain.value) is requests.exceptions.ChunkedEncodingError
