"""The block layout of a chip's first image, read from its TIFF header in a few ``pread``s.

The Dataset opens one chip per input per sample. ``tifffile.TiffFile`` parses every tag of
the header into objects, ~0.13 ms a chip here: a fifth of a whole training sample's CPU
once the pixels themselves are cheap to read (uncompressed SAR; bench/RESULTS.md, "loader
on GeoTIFF chips"). ``dataset.chipread`` needs a dozen numbers, which this module reads
straight from the first IFD of a classic little-endian TIFF (what GDAL and tifffile write
for our chips) in ~0.02 ms. Anything else (BigTIFF, big-endian, a tag of an unexpected type,
odd sample formats) gives None, and the caller asks tifffile, which reads every TIFF.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

HEAD_BYTES = 4096  # the header, the first IFD and its arrays, for every chip we write
# TIFF tags read here
WIDTH, LENGTH, BITS, COMPRESSION = 256, 257, 258, 259
STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP, STRIP_COUNTS = 273, 277, 278, 279
PLANAR, PREDICTOR, TILE_WIDTH, TILE_LENGTH = 284, 317, 322, 323
TILE_OFFSETS, TILE_COUNTS, SAMPLE_FORMAT, IMAGE_DEPTH = 324, 325, 339, 32997
WANTED = {WIDTH, LENGTH, BITS, COMPRESSION, STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP,
          STRIP_COUNTS, PLANAR, PREDICTOR, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_COUNTS,
          SAMPLE_FORMAT, IMAGE_DEPTH}  # fmt: skip
INTEGERS = {3: "H", 4: "I"}  # SHORT and LONG: every tag above is one or the other
SAMPLE_KINDS = {1: "u", 2: "i", 3: "f"}  # TIFF SampleFormat: unsigned, signed, float


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


def read_layout(fd: int) -> Layout | None:
    """The first image's layout, or None when the file is not a plain classic TIFF."""
    head = os.pread(fd, HEAD_BYTES, 0)
    if len(head) < 8 or head[:4] != b"II*\x00":
        return None
    (ifd,) = struct.unpack_from("<I", head, 4)
    if ifd + 2 > len(head):
        return None  # an IFD after the pixels: not how our chips are written
    (entries,) = struct.unpack_from("<H", head, ifd)
    end = ifd + 2 + 12 * entries
    if end > len(head):
        return None
    tags: dict[int, tuple[int, ...]] = {}
    for start in range(ifd + 2, end, 12):
        code, kind, count = struct.unpack_from("<HHI", head, start)
        if code not in WANTED:
            continue
        letter = INTEGERS.get(kind)
        if letter is None or count == 0:
            return None
        size = count * struct.calcsize(letter)
        if size <= 4:
            tags[code] = struct.unpack_from(f"<{count}{letter}", head, start + 8)
            continue
        (where,) = struct.unpack_from("<I", head, start + 8)
        data = head[where : where + size] if where + size <= len(head) else (
            os.pread(fd, size, where))  # fmt: skip
        if len(data) != size:
            return None
        tags[code] = struct.unpack(f"<{count}{letter}", data)
    return _layout(tags)


def _layout(tags: dict[int, tuple[int, ...]]) -> Layout | None:
    def one(code: int, default: int | None = None) -> int | None:
        values = tags.get(code)
        if values is None:
            return default
        return values[0] if len(set(values)) == 1 else None

    width, height = one(WIDTH), one(LENGTH)
    bits, kind = one(BITS, 1), SAMPLE_KINDS.get(one(SAMPLE_FORMAT, 1) or 0)
    samples, planar = one(SAMPLES, 1), one(PLANAR, 1)
    compression, predictor = one(COMPRESSION, 1), one(PREDICTOR, 1)
    if None in (width, height, bits, kind, samples, planar, compression, predictor):
        return None
    if one(IMAGE_DEPTH, 1) != 1 or (samples > 1 and planar != 2) or bits % 8:
        return None
    try:
        dtype = np.dtype(f"<{kind}{bits // 8}")
    except TypeError:
        return None
    tiled = TILE_WIDTH in tags
    if tiled:
        block = (one(TILE_LENGTH), one(TILE_WIDTH))
        offsets, counts = tags.get(TILE_OFFSETS), tags.get(TILE_COUNTS)
    else:
        rows = one(ROWS_PER_STRIP, 2**32 - 1)
        block = (min(rows, height) if rows else None, width)
        offsets, counts = tags.get(STRIP_OFFSETS), tags.get(STRIP_COUNTS)
    if None in block or not offsets or counts is None or len(offsets) != len(counts):
        return None
    shape = (samples, height, width)
    return Layout(compression, predictor, dtype, shape, block, tiled, offsets, counts)
