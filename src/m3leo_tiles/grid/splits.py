"""Band splits: parallel strips of equal ground width, dealt out train/val/test in sequence.

As in M3LEO, spatially separated strips keep neighbouring (correlated) tiles out of
different splits over most of the AOI. The strips are cut on a Lambert azimuthal equal-area
plane centred on the AOI, so each has the same width on the ground wherever it lies; cutting
in degrees would make northern strips narrower on the ground.

Angle convention (Table A.2 of the paper): radians, clockwise, west = 0. The angle is the
direction the strips run in: 0 gives strips running west-east (stacked south to north),
π/2 gives strips running north-south (stacked west to east). Band 0 is the strip at the
south (angle 0) or west (angle π/2) end; band numbers increase across the strips.
"""

from __future__ import annotations

import math
import re

import numpy as np
from pyproj import Transformer

from m3leo_tiles.core.enums import Split
from m3leo_tiles.core.errors import ConfigError

DEFAULT_BANDS = 60
DEFAULT_RATIOS = (3, 1, 1)


def parse_ratios(text: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """``"3:1:1"`` → (3, 1, 1): bands of train, val and test in each repeat of the pattern."""
    if isinstance(text, tuple):
        values = text
    else:
        if not re.fullmatch(r"\s*\d+\s*:\s*\d+\s*:\s*\d+\s*", str(text)):
            raise ConfigError(
                f"--ratios {text!r} is not TRAIN:VAL:TEST whole numbers, e.g. 3:1:1 (60/20/20)"
            )
        values = tuple(int(part) for part in str(text).split(":"))
    if len(values) != 3 or any(int(v) < 0 for v in values) or sum(values) == 0:
        raise ConfigError(
            f"ratios {values} must be three whole numbers >= 0, not all zero, e.g. 3:1:1"
        )
    return (int(values[0]), int(values[1]), int(values[2]))


def check_bands(bands: int) -> int:
    if int(bands) < 1:
        raise ConfigError(f"--bands must be at least 1, got {bands}")
    return int(bands)


def check_angle(angle: float) -> float:
    if not math.isfinite(angle):
        raise ConfigError(f"--angle must be a finite number of radians, got {angle}")
    return float(angle)


def band_plane(lons: np.ndarray, lats: np.ndarray) -> Transformer:
    """An equal-area azimuthal plane centred on the points (circular mean of longitudes)."""
    rad = np.radians(lons)
    lon0 = math.degrees(math.atan2(float(np.sin(rad).mean()), float(np.cos(rad).mean())))
    lat0 = float(np.clip(lats.mean(), -89.0, 89.0))
    return Transformer.from_crs(
        "EPSG:4326", f"+proj=laea +lat_0={lat0:.6f} +lon_0={lon0:.6f} +datum=WGS84 +units=m",
        always_xy=True,
    )  # fmt: skip


def across_coordinate(lons: np.ndarray, lats: np.ndarray, angle: float) -> np.ndarray:
    """Metres across the strips (the axis perpendicular to their direction)."""
    x, y = band_plane(lons, lats).transform(lons, lats)
    return np.asarray(x) * math.sin(angle) + np.asarray(y) * math.cos(angle)


def assign_bands(lons: np.ndarray, lats: np.ndarray, bands: int, angle: float) -> np.ndarray:
    """Band number 0..bands-1 of each point (tile centre), strips of equal ground width."""
    lons, lats = np.asarray(lons, float), np.asarray(lats, float)
    if not len(lons):
        return np.empty(0, dtype=np.int32)
    across = across_coordinate(lons, lats, angle)
    low, high = float(across.min()), float(across.max())
    width = (high - low) / bands if high > low else 1.0
    return np.clip(np.floor((across - low) / width), 0, bands - 1).astype(np.int32)


def assign_splits(band: np.ndarray, ratios: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Split name per band: the ratios pattern repeated, started ``seed`` steps in.

    With 3:1:1 and seed 0, bands 0-2 are train, 3 val, 4 test, 5-7 train... A seed shifts
    where the pattern starts (seed 1: bands 0-1 train, 2 val, 3 test, 4-6 train...), so
    seeds 0..sum(ratios)-1 give every distinct deal of the same strips.
    """
    period = sum(ratios)
    names = np.array([Split.TRAIN.value] * ratios[0] + [Split.VAL.value] * ratios[1]
                     + [Split.TEST.value] * ratios[2], dtype=object)  # fmt: skip
    return names[(np.asarray(band, dtype=np.int64) + int(seed)) % period]
