"""Which pixels of a chip hold a value: the one rule every writer and reader applies.

A pixel is missing when it equals the chip's nodata or is not finite (GUNW layers are NaN
outside the swath). A NaN nodata needs no comparison: NaN equals nothing, ``isfinite``
already finds it. Writing decides ``empty`` tiles with it, stats and pack count valid pixels,
the Dataset masks its inputs and targets, quicklook paints missing pixels.
"""

from __future__ import annotations

import numpy as np


def missing_mask(data: np.ndarray, nodata: float | None, *, finite: bool = True) -> np.ndarray:
    """Pixels without a value: nodata, NaN and (with ``finite``) infinities.

    ``finite=False`` counts only NaN, not infinities, as missing: the rule that decides an
    ``empty`` tile when a chip is written, kept so that existing datasets stay as they are.
    """
    compare = nodata is not None and not np.isnan(nodata)
    if data.dtype.kind != "f":
        return data == nodata if compare else np.zeros(data.shape, dtype=bool)
    missing = ~np.isfinite(data) if finite else np.isnan(data)
    if compare:
        missing |= data == nodata
    return missing


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels that hold a value: not the chip's nodata and not NaN (nor infinite)."""
    return ~missing_mask(data, nodata)


def invalid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Pixels without a value (nodata, NaN), or None when there are none (the common case)."""
    if data.dtype.kind != "f" and (nodata is None or np.isnan(nodata)):
        return None  # integers without nodata: every pixel holds a value, nothing to compute
    if data.size and _all_valid(data, nodata):
        return None
    missing = missing_mask(data, nodata)
    return missing if missing.any() else None


def _all_valid(data: np.ndarray, nodata: float | None) -> bool:
    """True when the range of ``data`` proves every pixel valid: finite bounds (``min`` and
    ``max`` propagate NaN, and an infinity is a bound) with the nodata value outside them.

    Two reductions without a temporary, against four passes and two boolean arrays for the
    mask itself: the common case of a training sample, whose chips rarely hold nodata.
    """
    low, high = data.min(), data.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        return False
    return nodata is None or bool(np.isnan(nodata)) or not (low <= nodata <= high)
