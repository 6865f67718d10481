"""Fixtures for the grid tests: the real Natural Earth countries and a gap checker."""

from __future__ import annotations

from collections.abc import Callable

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry.base import BaseGeometry

from m3leo_tiles.grid.tile import Tile, utm_zone_of_longitude


@pytest.fixture(scope="session")
def countries(shared_data) -> gpd.GeoDataFrame:
    return gpd.read_parquet(shared_data / "vector" / "natural_earth_admin0_10m.parquet")


@pytest.fixture(scope="session")
def country(countries) -> Callable[[str], BaseGeometry]:
    def lookup(name: str) -> BaseGeometry:
        rows = countries[countries["SOVEREIGNT"] == name]
        assert len(rows), name
        return shapely.union_all(rows.geometry.to_numpy())

    return lookup


def sample_points(geometry: BaseGeometry, count: int, seed: int = 0) -> np.ndarray:
    """Uniform random points inside ``geometry`` (rejection sampling in its bounds)."""
    rng = np.random.default_rng(seed)
    west, south, east, north = geometry.bounds
    shapely.prepare(geometry)
    found: list[np.ndarray] = []
    total = 0
    for _ in range(200):
        xy = np.column_stack([rng.uniform(west, east, 20000), rng.uniform(south, north, 20000)])
        inside = xy[shapely.contains_xy(geometry, xy[:, 0], xy[:, 1])]
        found.append(inside)
        total += len(inside)
        if total >= count:
            break
    return np.concatenate(found)[:count]


def uncovered(points: np.ndarray, identifiers: set[str]) -> list[tuple[float, float]]:
    """Points whose own zone's tile is not in the grid (an exact test: it projects)."""
    missing = []
    for lon, lat in points:
        tile = Tile.from_point(float(lon), float(lat), utm_zone_of_longitude(float(lon)))
        if tile.identifier not in identifiers:
            missing.append((float(lon), float(lat)))
    return missing


@pytest.fixture(scope="session")
def points_in() -> Callable[..., np.ndarray]:
    return sample_points


@pytest.fixture(scope="session")
def gaps() -> Callable[[np.ndarray, set[str]], list[tuple[float, float]]]:
    return uncovered
