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
