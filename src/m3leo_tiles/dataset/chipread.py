"""A chip's pixels, each block decoded by imagecodecs straight into the array.

The Dataset reads one chip per input per sample, so what reading costs beyond inflating is
paid millions of times. ``tifffile``'s ``asarray`` costs as much again as the decoding for
our chips (per block: a new buffer, reshaping, a byte-order cast, a copy into the result;
bench/RESULTS.md, "loader"). Our chips are simple: little-endian, one sample per pixel or
band-interleaved (planar), strips or tiles, deflate, zstd, lzw or none, predictor 1-3.
For those, ``read_blocks`` lets tifffile parse only the header, reads each block with one
``pread`` and decodes each strip into its rows of the result (tiles and the floating-point
predictor need one small buffer per block). libdeflate decodes old deflate chips too,
faster than zlib. Anything else (JPEG, sparse or big-endian files, other writers' layouts)
returns None, and the caller reads it the general way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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
    with open(path, "rb") as handle:
        layout = _layout(handle)
        if layout is None:
            return None
        compression, predictor, dtype, shape, block, tiled, offsets, counts = layout
        # One pread per block into a new bytes object: no copy of the whole file first, and
        # bytes rather than memoryview slices, which imagecodecs decodes 2-3x slower.
        blocks = [os.pread(handle.fileno(), count, offset)
                  for offset, count in zip(offsets, counts, strict=True)]  # fmt: skip
    bands, height, width = shape
    block_h, block_w = block
    rows, cols = -(-height // block_h), -(-width // block_w)
    if len(blocks) != bands * rows * cols:
        return None
    out = np.empty(shape, dtype)
    decode = DECODERS[compression]
    scratch = None
    index = 0
    for band in range(bands):
        for row in range(rows):
            top = row * block_h
            for col in range(cols):
                left = col * block_w
                data = blocks[index]
                index += 1
                if block_w == width and predictor != 3:  # a strip: straight into its rows
                    target = out[band, top : top + min(block_h, height - top)]
                    _decode_into(decode, data, target)
                    if predictor == 2:
                        imagecodecs.delta_decode(target, axis=-1, out=target)
                    continue
                if scratch is None:
                    scratch = np.empty(block, dtype)
                piece = scratch if tiled else scratch[: min(block_h, height - top)]
                _decode_into(decode, data, piece)
                if predictor == 2:
                    imagecodecs.delta_decode(piece, axis=-1, out=piece)
                elif predictor == 3:
                    piece = imagecodecs.floatpred_decode(piece, axis=-1)
                bottom, right = min(top + block_h, height), min(left + block_w, width)
                out[band, top:bottom, left:right] = piece[: bottom - top, : right - left]
    return out


def _layout(handle: BinaryIO) -> tuple | None:
    """What ``read_blocks`` needs from the header (tifffile parses it), or None when the
    file is not in one of the simple layouts."""
    with tifffile.TiffFile(handle) as tiff:
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
        height, width = page.imagelength, page.imagewidth
        tiled = page.is_tiled
        block = (page.tilelength, page.tilewidth) if tiled else (
            min(page.rowsperstrip, height), width)  # fmt: skip
        shape = (page.samplesperpixel, height, width)
        return (compression, predictor, page.dtype, shape, block, tiled, page.dataoffsets,
                page.databytecounts)  # fmt: skip


def _decode_into(decode: Callable[..., np.ndarray] | None, data: bytes, target: np.ndarray) -> None:
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
