"""A chip's pixels, each block decoded by imagecodecs straight into the array.

The Dataset reads one chip per input per sample, so what reading costs beyond inflating is
paid millions of times. ``tifffile``'s ``asarray`` costs as much again as the decoding for
our chips (per block: a new buffer, reshaping, a byte-order cast, a copy into the result;
bench/RESULTS.md, "loader"). Our chips are simple: little-endian, one sample per pixel or
band-interleaved (planar), strips or tiles, deflate, zstd, lzw or none, predictor 1-3.
For those, ``read_blocks`` reads the file once, lets tifffile parse only the header, and
decodes each strip into its rows of the result (tiles and the floating-point predictor need
one small buffer per block). libdeflate decodes old deflate chips too, faster than zlib.
Anything else (JPEG, sparse or big-endian files, other writers' layouts) returns None, and
the caller reads it the general way.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

# TIFF compression codes: none, lzw, deflate (Adobe and the old code), zstd
DECODERS: dict[int, Callable[..., np.ndarray] | None] = {
    1: None,
    8: imagecodecs.deflate_decode,
    32946: imagecodecs.deflate_decode,
    5: imagecodecs.lzw_decode,
    50000: imagecodecs.zstd_decode,
}


def read_blocks(path: Path) -> np.ndarray | None:
    """(bands, H, W) of a chip in one of the simple layouts above, else None."""
    payload = Path(path).read_bytes()
    with tifffile.TiffFile(io.BytesIO(payload)) as tiff:
        page = tiff.pages.first
        compression = int(page.compression)
        predictor = int(page.predictor)
        planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
        if (
            tiff.byteorder != "<"
            or compression not in DECODERS
            or predictor not in (1, 2, 3)
            or (page.samplesperpixel > 1 and not planar)
            or page.dtype is None
            or page.dtype.kind not in "iuf"
            or page.imagedepth > 1
            or min(page.databytecounts, default=0) == 0  # sparse blocks: GDAL fills them
        ):
            return None
        dtype = page.dtype
        bands, height, width = page.samplesperpixel, page.imagelength, page.imagewidth
        tiled = page.is_tiled
        if tiled:
            block_h, block_w = page.tilelength, page.tilewidth
        else:
            block_h, block_w = min(page.rowsperstrip, height), width
        offsets, counts = page.dataoffsets, page.databytecounts
    rows = -(-height // block_h)
    cols = -(-width // block_w)
    if len(offsets) != bands * rows * cols:
        return None
    out = np.empty((bands, height, width), dtype)
    decode = DECODERS[compression]
    scratch = None
    index = 0
    for band in range(bands):
        for row in range(rows):
            top = row * block_h
            for col in range(cols):
                left = col * block_w
                # bytes, not a memoryview: imagecodecs decodes a memoryview 2-3x slower
                data = payload[offsets[index] : offsets[index] + counts[index]]
                index += 1
                full_rows = block_w == width and predictor != 3
                if full_rows:  # a strip: decode into its own rows of the result
                    strip_h = min(block_h, height - top)
                    target = out[band, top : top + strip_h]
                    _decode_into(decode, data, target)
                    if predictor == 2:
                        imagecodecs.delta_decode(target, axis=-1, out=target)
                    continue
                if scratch is None:
                    scratch = np.empty((block_h, block_w), dtype)
                strip_h = block_h if tiled else min(block_h, height - top)
                block = scratch[:strip_h]
                _decode_into(decode, data, block)
                if predictor == 2:
                    imagecodecs.delta_decode(block, axis=-1, out=block)
                elif predictor == 3:
                    block = imagecodecs.floatpred_decode(block, axis=-1)
                bottom, right = min(top + block_h, height), min(left + block_w, width)
                out[band, top:bottom, left:right] = block[: bottom - top, : right - left]
    return out


def _decode_into(decode: Callable[..., np.ndarray] | None, data: bytes, target: np.ndarray):
    """Decode ``data`` into the C-contiguous array ``target`` (raw bytes when uncompressed)."""
    flat = target.reshape(-1).view(np.uint8)
    if decode is None:
        if len(data) < flat.size:
            raise ValueError("a block is shorter than its pixels")
        flat[:] = np.frombuffer(data, np.uint8, flat.size)
        return
    decoded = decode(data, out=flat)
    if len(decoded) != flat.size:
        raise ValueError(f"a block decoded to {len(decoded)} bytes, not {flat.size}")
