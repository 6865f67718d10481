"""A computePixels answer (NPY bytes) to the chip's band planes, with one copy of the pixels.

Why not the client's ``NUMPY_NDARRAY`` format: it runs ``numpy.load`` on the body, which copies
16 MB into a new structured array (one field per band, pixel-interleaved), and pulling each
band out of that array reads all of it once per band. Here the body is asked for as plain
``NPY`` bytes, the NPY header is parsed by numpy's own reader and the pixels are a read-only
view of the bytes (``np.frombuffer``); when every band has the same dtype (Earth Engine casts the
whole image to the recipe's dtype) the view is a ``(pixels, bands)`` matrix that is transposed
into the chip's ``(bands, pixels)`` planes block by block, so both sides stay in the CPU's cache.
Measured on an s2srm answer (40 × 448 × 448 uint16): ``bench/bench_ee_cpu.py``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from numpy.lib import format as npy_format

from m3leo_tiles.core.errors import SourceError

# Pixels per block of the transposed copy: 40 uint16 bands x 4096 pixels = 320 KiB read and
# written per block, about a core's L2 cache. Blocks of 512 to 16 Ki pixels measured the same
# within noise here (~7 ms for s2srm); the whole array at once took twice as long.
BLOCK_PIXELS = 4096
HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0,
                  (2, 0): npy_format.read_array_header_2_0}  # fmt: skip


def npy_view(payload: bytes) -> np.ndarray:
    """The array in NPY ``payload`` as a read-only view of its bytes (no copy).

    Anything that is not a whole NPY array of plain values (another format, an object dtype,
    a body cut short) is a ``SourceError`` naming what came instead.
    """
    stream = io.BytesIO(payload)  # shares ``payload``'s buffer until written to
    try:
        version = npy_format.read_magic(stream)
        reader = HEADER_READERS.get(version)
        if reader is None:
            raise ValueError(f"NPY version {version[0]}.{version[1]}")
        shape, fortran_order, dtype = reader(stream)
    except ValueError as error:
        raise SourceError(f"Earth Engine sent no NPY array ({error})") from None
    if dtype.hasobject:
        raise SourceError("Earth Engine sent an NPY array of Python objects")
    count = int(np.prod(shape, dtype=np.int64))
    start = stream.tell()
    if len(payload) - start < count * dtype.itemsize:
        raise SourceError(
            f"Earth Engine's answer was cut short: {len(payload) - start} bytes of pixels "
            f"for {count * dtype.itemsize}"
        )
    flat = np.frombuffer(payload, dtype=dtype, count=count, offset=start)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def uniform_fields(dtype: np.dtype) -> np.dtype | None:
    """The one dtype of every field when the record is those fields packed in order (then
    the records are a plain matrix of it), else None."""
    fields = [dtype.fields[name] for name in dtype.names or ()]
    if not fields:
        return None
    first = fields[0][0]
    packed = all(field == first and offset == index * first.itemsize
                 for index, (field, offset, *_) in enumerate(fields))  # fmt: skip
    return first if packed and dtype.itemsize == len(fields) * first.itemsize else None


def copy_bands(pixels: np.ndarray, names: Sequence[str], out: np.ndarray) -> None:
    """Copy the structured ``pixels`` (one field per band, ``names`` in order) into the band
    planes ``out`` (bands, rows, cols), cast to ``out``'s dtype where it differs."""
    field = uniform_fields(pixels.dtype)
    if field is None or not (pixels.flags.c_contiguous and out.flags.c_contiguous):
        # mixed dtypes (or layouts a view cannot flatten): one band at a time
        for index, name in enumerate(names):
            out[index] = pixels[name]
        return
    records = pixels.reshape(-1).view(field).reshape(-1, len(names))  # (pixels, bands)
    planes = out.reshape(len(names), -1)  # a view, ``out`` being C-contiguous
    for start in range(0, records.shape[0], BLOCK_PIXELS):
        stop = start + BLOCK_PIXELS
        planes[:, start:stop] = records[start:stop].T
