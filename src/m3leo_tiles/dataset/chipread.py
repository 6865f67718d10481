"""A chip's pixels, each block decoded by imagecodecs straight into the array.

The Dataset reads one chip per input per sample, so what reading costs beyond inflating is
paid millions of times. ``tifffile``'s ``asarray`` costs as much again as the decoding for
our chips (per block: a new buffer, reshaping, a byte-order cast, a copy into the result;
bench/RESULTS.md, "loader"). Our chips are simple: little-endian, one sample per pixel or
band-interleaved (planar), strips or tiles, deflate, zstd, lzw or none, predictor 1-3.
For those, ``read_blocks`` lets tifffile parse only the header, reads each block with one
``pread`` and decodes each strip into its rows of the result (tiles and the floating-point
predictor need one small buffer per block). Uncompressed strips (``compress: none``, the
default of speckled SAR) are read by ``preadv`` straight into their rows: no block is held
as bytes first, which cost ~10x the read itself on fresh memory (bench/RESULTS.md, "loader
on GeoTIFF chips"). ``out`` lets a caller give the array (a row of a batch), so a chip that
needs no conversion is written where it is used, without a copy. libdeflate decodes old
deflate chips too, faster than zlib. Anything else (JPEG, sparse or big-endian files, other
writers' layouts) returns None, and the caller reads it the general way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Layout:
    """What reading a chip's blocks needs: the same values tifffile's first page gives."""

    compression: int
    predictor: int
    dtype: np.dtype
    shape: tuple[int, int, int]  # (bands, height, width)
    block: tuple[int, int]  # (height, width) of a tile or a strip
    tiled: bool
    offsets: tuple[int, ...]
    counts: tuple[int, ...]


def read_blocks(path: Path, out: np.ndarray | None = None) -> np.ndarray | None:
    """(bands, H, W) of a chip in one of the simple layouts above, else None.

    Into ``out`` when it is C-contiguous with the chip's shape and dtype (then ``out`` is
    returned; on an error it may hold part of the chip), else into a new array.
    """
    with open(path, "rb") as handle:
        layout = _layout(handle)
        if layout is None:
            return None
        compression, predictor, dtype, shape, block, tiled = (
            layout.compression, layout.predictor, layout.dtype, layout.shape, layout.block,
            layout.tiled)  # fmt: skip
        offsets, counts = layout.offsets, layout.counts
        fits = (out is not None and out.shape == shape and out.dtype == dtype
                and out.flags.c_contiguous)  # fmt: skip
        target = out if fits else np.empty(shape, dtype)
        if DECODERS[compression] is None and not tiled and predictor == 1:
            _read_strips(handle.fileno(), target, block[0], offsets, counts)
            return target
        # One pread per block into a new bytes object: no copy of the whole file first, and
        # bytes rather than memoryview slices, which imagecodecs decodes 2-3x slower.
        blocks = [os.pread(handle.fileno(), count, offset)
                  for offset, count in zip(offsets, counts, strict=True)]  # fmt: skip
    bands, height, width = shape
    block_h, block_w = block
    rows, cols = -(-height // block_h), -(-width // block_w)
    if len(blocks) != bands * rows * cols:
        return None
    out = target
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


def _read_strips(fd: int, out: np.ndarray, block_h: int, offsets: tuple, counts: tuple) -> None:
    """Uncompressed strips (band after band, top to bottom), each ``preadv`` straight into
    its rows of ``out``; a strip shorter than its rows (a truncated chip) is an error."""
    bands, height, _ = out.shape
    strips = [(band, top) for band in range(bands) for top in range(0, height, block_h)]
    if len(strips) != len(offsets):
        raise ValueError(f"{len(offsets)} strips where {len(strips)} were expected")
    for (band, top), offset, count in zip(strips, offsets, counts, strict=True):
        rows = out[band, top : top + block_h].reshape(-1).view(np.uint8)
        if count < rows.size or os.preadv(fd, [rows], offset) != rows.size:
            raise ValueError("a strip is shorter than its pixels (a truncated chip)")


def _layout(handle: BinaryIO) -> Layout | None:
    """What ``read_blocks`` needs from the header (tifffile parses it), or None when the
    file is not in one of the simple layouts."""
    layout = _tifffile_layout(handle)
    if layout is None or layout.compression not in DECODERS or layout.predictor not in (1, 2, 3):
        return None
    if layout.dtype.kind not in "iuf" or min(layout.counts, default=0) == 0:
        return None  # sparse blocks (a count of 0): GDAL fills them
    return layout


def _tifffile_layout(handle: BinaryIO) -> Layout | None:
    with tifffile.TiffFile(handle) as tiff:
        page = tiff.pages.first
        planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
        if (
            tiff.byteorder != "<"
            or (page.samplesperpixel > 1 and not planar)
            or page.dtype is None
            or page.imagedepth > 1
        ):
            return None
        height, width = page.imagelength, page.imagewidth
        tiled = page.is_tiled
        block = (page.tilelength, page.tilewidth) if tiled else (
            min(page.rowsperstrip, height), width)  # fmt: skip
        shape = (page.samplesperpixel, height, width)
        return Layout(int(page.compression), int(page.predictor), page.dtype, shape, block,
                      tiled, tuple(page.dataoffsets), tuple(page.databytecounts))  # fmt: skip


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
