"""Band splits: 60/20/20 on a real AOI, contiguous strips at the requested angle, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.grid import assign_bands, assign_splits, lattice_cells, load_aoi, parse_ratios
from m3leo_tiles.grid.splits import across_coordinate


@pytest.fixture(scope="module")
def pakin_centres() -> tuple[np.ndarray, np.ndarray]:
    cells = lattice_cells(load_aoi("pakin").geometry)
    return cells.lons.mean(axis=1), cells.lats.mean(axis=1)


def test_ratios_close_to_60_20_20_on_a_real_aoi(pakin_centres) -> None:
    lons, lats = pakin_centres
    split = assign_splits(assign_bands(lons, lats, 60, 1.5), (3, 1, 1))
    share = {name: np.mean(split == name) for name in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.6, abs=0.02)
    assert share["val"] == pytest.approx(0.2, abs=0.02)
    assert share["test"] == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("angle", [0.0, 0.9, 1.5, math.pi / 2])
def test_bands_are_contiguous_equal_strips_at_the_angle(pakin_centres, angle) -> None:
    lons, lats = pakin_centres
    band = assign_bands(lons, lats, 60, angle)
    across = across_coordinate(lons, lats, angle)
    present = sorted(set(band.tolist()))
    assert set(present) <= set(range(60)) and len(present) >= 55  # a strip may fall in the sea
    assert present[0] == 0 and present[-1] == 59
    low = np.array([across[band == b].min() for b in present])
    high = np.array([across[band == b].max() for b in present])
    assert (high[:-1] <= low[1:]).all()  # strips in order, never interleaved
    width = (across.max() - across.min()) / 60
    assert ((high - low) <= width + 1e-6).all()
    assert np.median(high - low) > 0.9 * width  # equal ground width (tile centres fill them)


def test_angle_convention_clockwise_from_west(pakin_centres) -> None:
    lons, lats = pakin_centres
    west_east_strips = assign_bands(lons, lats, 60, 0.0)  # stacked south to north
    north_south_strips = assign_bands(lons, lats, 60, math.pi / 2)  # stacked west to east
    assert np.corrcoef(west_east_strips, lats)[0, 1] > 0.98
    assert np.corrcoef(north_south_strips, lons)[0, 1] > 0.98
    assert abs(np.corrcoef(west_east_strips, lons)[0, 1]) < 0.5


def test_splits_repeat_and_seed_shifts_the_start() -> None:
    bands = np.arange(10)
    assert assign_splits(bands, (3, 1, 1)).tolist() == ["train"] * 3 + ["val", "test"] + [
        "train"
    ] * 3 + ["val", "test"]
    shifted = assign_splits(bands, (3, 1, 1), seed=1).tolist()
    assert shifted[:5] == ["train", "train", "val", "test", "train"]
    assert (
        assign_splits(bands, (3, 1, 1), seed=5).tolist() == assign_splits(bands, (3, 1, 1)).tolist()
    )
    assert set(assign_splits(bands, (1, 0, 1)).tolist()) == {"train", "test"}


@pytest.mark.parametrize("text", ["3:1", "a:b:c", "3:1:1:1", "0:0:0", "-1:1:1", ""])
def test_bad_ratios_are_refused(text) -> None:
    with pytest.raises(ConfigError, match="ratios"):
        parse_ratios(text)


def test_good_ratios_parse() -> None:
    assert parse_ratios("3:1:1") == (3, 1, 1)
    assert parse_ratios(" 8 : 1 : 1 ") == (8, 1, 1)
