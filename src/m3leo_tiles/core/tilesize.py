"""The lattice's tile side, and the pixel sizes that divide it.

Here, not in ``grid.tile``, because a recipe checks its resolution against it: loading a recipe
must stay cheap (no shapely, pyproj or rasterio, which the grid package imports).
"""

from __future__ import annotations

import math

from m3leo_tiles.core.errors import ConfigError

TILE_SIZE_M = 4480


def pixels_per_side(resolution_m: float) -> int:
    """Pixels along a tile side at ``resolution_m``; refuses sizes that do not divide 4480 m.

    Every dataset of a tile must cover exactly the same footprint, which only holds when the
    pixel size divides the tile side.
    """
    if not resolution_m or resolution_m <= 0 or not math.isfinite(resolution_m):
        raise ConfigError(f"resolution must be a positive number of metres, got {resolution_m!r}")
    count = round(TILE_SIZE_M / resolution_m)
    if count < 1 or abs(count * resolution_m - TILE_SIZE_M) > 1e-6:
        raise ConfigError(
            f"resolution {resolution_m:g} m does not divide the {TILE_SIZE_M} m tile side; "
            "use e.g. 10, 20, 40, 89.6, 224 or 448 m"
        )
    return count
