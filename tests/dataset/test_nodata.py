"""Which pixels hold a value (dataset/nodata.py): one rule for writing, stats, pack, the
Dataset and quicklook."""

from __future__ import annotations

import numpy as np

from m3leo_tiles.dataset.nodata import invalid_mask, missing_mask, valid_mask


def test_nodata_nan_and_infinities_are_missing() -> None:
    data = np.array([[1.0, -9999.0], [np.nan, np.inf]], dtype="float32")
    expected = np.array([[False, True], [True, True]])
    assert (missing_mask(data, -9999.0) == expected).all()
    assert (valid_mask(data, -9999.0) == ~expected).all()
    assert (invalid_mask(data, -9999.0) == expected).all()
    # a NaN nodata compares with nothing: NaN pixels are missing by being NaN
    assert (missing_mask(data, float("nan")) == np.array([[False, False], [True, True]])).all()


def test_deciding_an_empty_tile_counts_nan_only() -> None:
    infinite = np.full((1, 2, 2), np.inf, dtype="float32")  # kept as a value when written
    assert not missing_mask(infinite, None, finite=False).any()
    assert missing_mask(infinite, None).all()


def test_integers_without_nodata_are_all_valid() -> None:
    data = np.arange(6, dtype="uint8").reshape(1, 2, 3)
    assert valid_mask(data, None).all() and invalid_mask(data, None) is None
    assert invalid_mask(data, 7) is None  # no pixel equals it: nothing to mask
    assert (invalid_mask(data, 0) == (data == 0)).all()


def test_invalid_mask_is_the_missing_mask_whatever_the_range_shows() -> None:
    """``invalid_mask`` skips the mask when the chip's range proves every pixel valid; the
    answer must stay the missing mask (or None when it is empty) in every case: nodata
    inside, below, above the values, a NaN or an infinity among them, integers."""
    rng = np.random.default_rng(0)
    base = rng.normal(0, 5, (2, 8, 8)).astype("float32")
    cases = []
    for nodata in (-9999.0, 0.0, 9999.0, None, float("nan")):
        for poke in (None, np.nan, np.inf, -np.inf, -9999.0):
            data = base.copy()
            if poke is not None:
                data[1, 3, 4] = poke
            cases.append((data, nodata))
    for nodata in (0, 5, 255):
        cases.append((rng.integers(1, 200, (3, 6, 6)).astype("uint8"), nodata))
        cases.append((np.zeros((1, 2, 2), "uint8"), nodata))
    for data, nodata in cases:
        missing = missing_mask(data, nodata)
        found = invalid_mask(data, nodata)
        if missing.any():
            assert found is not None and (found == missing).all(), (nodata, data.dtype)
        else:
            assert found is None, (nodata, data.dtype)
