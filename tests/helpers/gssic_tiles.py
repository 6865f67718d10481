"""Write GSSIC-named 1°×1° tiles laid out like the public bucket (a stand-in mirror for tests).

No real GSSIC tile is small enough to ship (../shared/data/SOURCES.md: "Not found"), so these
are faithful replicas of the product's published layout, not its values:

* key ``data/tiles/<TILE>/<TILE>_<season>_<pol>_<metric>.tif``; ``<TILE>`` names the cell's
  upper-left corner (``N48W090`` covers 47–48°N, 90–89°W);
* EPSG:4326, 1200 × 1200 pixels of 3 arcsec (1/1200°), origin on the full degree;
* one band, LZW, no predictor, strips of 6 rows (200 strips), GDAL nodata 0, no scale/offset;
* uint8 for coherence (``COHxx``, DN = 100·γ, 1…100) and uint16 for ``AMP``, ``rho``,
  ``tau``, ``rmse`` (as the bucket's readme and tifffile's earthbigdata example give them).

Values are a smooth function of longitude and latitude (so neighbouring cells join without a
step and bilinear warps across a 1° line are meaningful), different for every season, pol and
metric (so a band mix-up shows), with a disc of nodata in every cell, somewhere else in every
layer (so nodata handling is exercised band by band). Run as a script to make a mirror
folder by hand::

    python tests/helpers/gssic_tiles.py OUT N34W118 N35W118 --metrics COH12 AMP
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

SEASONS = ("winter", "spring", "summer", "fall")
POLS = ("vv", "vh")
PAPER_METRICS = ("COH12", "COH24", "COH36", "COH48", "AMP", "rho", "tau", "rmse")
PIXELS = 1200
PIXEL_DEG = 1.0 / PIXELS
CELL = re.compile(r"^([NS])(\d{2})([EW])(\d{3})$")


def cell_name(lon: float, lat: float) -> str:
    """The GSSIC cell holding (lon, lat), named by its upper-left corner."""
    top = math.floor(lat) + 1
    west = math.floor(lon)
    return f"{'N' if top >= 0 else 'S'}{abs(top):02d}{'E' if west >= 0 else 'W'}{abs(west):03d}"


def cell_corner(name: str) -> tuple[int, int]:
    """(west longitude, north latitude) of a cell name."""
    match = CELL.match(name)
    if match is None:
        raise ValueError(f"not a GSSIC cell name: {name}")
    ns, lat, ew, lon = match.groups()
    return (int(lon) * (1 if ew == "E" else -1), int(lat) * (1 if ns == "N" else -1))


def dtype_of(metric: str) -> str:
    return "uint8" if metric.upper().startswith("COH") else "uint16"


def tile_key(cell: str, season: str, pol: str, metric: str) -> str:
    return f"data/tiles/{cell}/{cell}_{season}_{pol}_{metric}.tif"


def values(cell: str, season: str, pol: str, metric: str) -> np.ndarray:
    """Smooth in lon/lat across cells, distinct per layer, with a nodata disc per cell."""
    west, north = cell_corner(cell)
    centres = (np.arange(PIXELS, dtype="float64") + 0.5) * PIXEL_DEG
    lon, lat = west + centres, north - centres
    layer = SEASONS.index(season) * 7 + POLS.index(pol) * 3 + sum(map(ord, metric)) % 11
    rows = np.rint(24.5 * (np.cos(lat * 7.0 - layer) + 1)).astype("float32")  # 0..49
    cols = np.sin(lon * 9.0 + layer).astype("float32")
    step = 2 if dtype_of(metric) == "uint8" else 80  # 50 levels: small LZW files, fast tests
    data = (1 + step * np.rint(np.outer(rows / 49 * 2 - 1, cols) * 24.5 + 24.5)).astype(
        dtype_of(metric)
    )
    centre = (west + 0.02 + 0.004 * (layer % 8), north - 0.02 - 0.004 * (layer % 5))
    near = slice(0, 120)  # the disc lies within 0.1° of the NW corner
    disc = (lon[np.newaxis, near] - centre[0]) ** 2 + (lat[near, np.newaxis] - centre[1]) ** 2
    data[near, near][disc < 0.03**2] = 0
    return data


def write_tile(path: Path, cell: str, data: np.ndarray) -> None:
    west, north = cell_corner(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff", "width": PIXELS, "height": PIXELS, "count": 1, "dtype": data.dtype,
        "crs": "EPSG:4326", "transform": Affine(PIXEL_DEG, 0, west, 0, -PIXEL_DEG, north),
        "nodata": 0, "compress": "lzw", "blockysize": 6, "tiled": False,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data, 1)


def write_mirror(
    root: Path,
    cells: Iterable[str],
    seasons: Sequence[str] = SEASONS,
    pols: Sequence[str] = POLS,
    metrics: Sequence[str] = PAPER_METRICS,
) -> list[Path]:
    """Every (cell, season, pol, metric) file under ``root``, as in the bucket; returns them."""
    written = []
    for cell in cells:
        for season in seasons:
            for pol in pols:
                for metric in metrics:
                    path = Path(root) / tile_key(cell, season, pol, metric)
                    if not path.exists():
                        write_tile(path, cell, values(cell, season, pol, metric))
                    written.append(path)
    return written


RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "gssic.yaml"
SMALL_METRICS = ("COH12", "AMP")
SMALL_BANDS = ("winter_vv_coh12", "winter_vv_amp")


def small_recipe(folder: Path, **params):
    """The shipped gssic recipe with its axes cut to winter × vv × (COH12, AMP)."""
    import yaml

    from m3leo_tiles.recipes import parse_recipe

    data = yaml.safe_load(RECIPE.read_text())
    grid = data["params"]["layer_grids"][0]
    grid["axes"] = {"season": ["winter"], "pol": ["vv"], "metric": list(SMALL_METRICS)}
    data["params"].update(params)
    data["bands"] = list(SMALL_BANDS)
    data["name"] = "gssic-small"
    return parse_recipe(data, "test", Path(folder) / "gssic-small.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("cells", nargs="+")
    parser.add_argument("--seasons", nargs="+", default=SEASONS)
    parser.add_argument("--pols", nargs="+", default=POLS)
    parser.add_argument("--metrics", nargs="+", default=PAPER_METRICS)
    args = parser.parse_args()
    paths = write_mirror(args.root, args.cells, args.seasons, args.pols, args.metrics)
    print(f"{len(paths)} files under {args.root}")


if __name__ == "__main__":
    main()
