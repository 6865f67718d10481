"""A small output folder like ``fetch`` writes, for the consumer tests (stats, pack, torch).

Chips are written by the package's own chip writer (``io.write_chip``, the path every fetched
chip takes) with manifests, except ``gunw``, whose per-tile band lists with per-band metadata
are written with rasterio and no manifest: the consumer must read whatever a source wrote.

Layout (AOI ``tst``, 12 lattice tiles of zone 33 in a 3 x 4 block):

* train: tiles 0-5, val: 6-8, test: 9-11 (a ``split`` column in the grid file);
* ``s2x``  uint16 3 bands (B2 B3 B4) at 89.6 m (50 px), nodata 0 in the top rows of tile 0,
  no chip for tile 1 (``no-source`` in the manifest);
* ``s1x``  float32 2 bands (vv vh) at 224 m (20 px), nodata -9999, no chip for tile 2;
* ``esawc`` uint8 WorldCover classes at 89.6 m, 0 (nodata) in a corner of every tile;
* ``agb-2020`` float32 (agb agb_sd) at 224 m, nodata -9999 in places, no chip for tile 11;
* ``gunw`` float32 pairs at 448 m (10 px): tile i has i % 3 + 1 pairs, two layers each, named
  and described as the gunw source does (``20200117_20200105_coherence``; ISO dates, layer and
  baseline in each band's metadata); tile 4 also has its first pair from a second track
  (``..._D099_coherence``, values + 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.chipfile import write_chip
from m3leo_tiles.dataset.manifest import ManifestRow, write_manifest
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import Chip

AOI = "tst"
TILES = tuple(Tile(33, 1036 + r, 60 + c) for r in range(3) for c in range(4))
SPLITS = ("train",) * 6 + ("val",) * 3 + ("test",) * 3
WORLDCOVER = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
GUNW_LAYERS = ("unwrapped_phase", "coherence")


@dataclass(frozen=True)
class ChipTree:
    root: Path  # the --out folder: root/tst/<dataset>/
    grid: Path
    grids_dir: Path

    @property
    def ids(self) -> list[str]:
        return [t.identifier for t in TILES]

    def split_ids(self, split: str) -> list[str]:
        return [t.identifier for t, s in zip(TILES, SPLITS, strict=True) if s == split]

    def folder(self, dataset: str) -> Path:
        return self.root / AOI / dataset


def _recipe(name: str, bands: list[str], resolution: float, dtype: str, nodata: float | None):
    data = {
        "name": name,
        "source": "raster",
        "params": {"inputs": "/nowhere/never.tif"},
        "resolution": resolution,
        "bands": bands,
        "dtype": dtype,
        "nodata": nodata,
    }
    return parse_recipe(data, f"test recipe {name}")


def _smooth(rng: np.random.Generator, bands: int, size: int, low: float, high: float):
    """Random but spatially smooth fields (like real imagery), bands x size x size."""
    coarse = rng.uniform(low, high, (bands, 4, 4))
    index = np.linspace(0, 3, size)
    rows = np.interp(index, np.arange(4), np.arange(4)).astype(int)
    field = coarse[:, rows][:, :, rows]
    return field + rng.normal(0, (high - low) * 0.02, field.shape)


def _write_dataset(tree: ChipTree, recipe, make, skip: set[int]) -> None:
    folder = tree.folder(recipe.name)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for index, tile in enumerate(TILES):
        if index in skip:
            rows[tile.identifier] = ManifestRow(tile.identifier, TileStatus.NO_SOURCE)
            continue
        grid = tile.pixel_grid(recipe.resolution)
        data = make(index, grid.height).astype(recipe.dtype)
        chip = Chip(data, recipe.bands)
        write_chip(folder / f"{tile.identifier}.tif", chip, grid, recipe, {})
        rows[tile.identifier] = ManifestRow(
            tile.identifier, TileStatus.OK, recipe_hash=recipe.recipe_hash
        )
    write_manifest(folder / "manifest.csv", rows)


def gunw_pairs(index: int) -> list[tuple[date, date]]:
    """Tile ``index``'s pairs (reference, secondary): 12, 24, 36... day baselines."""
    start = date(2020, 1, 5)
    pairs = []
    for k in range(index % 3 + 1):
        secondary = start + timedelta(days=12 * k)
        reference = secondary + timedelta(days=12 * (k + 1))
        pairs.append((reference, secondary))
    return pairs


def _write_gunw(tree: ChipTree) -> None:
    folder = tree.folder("gunw")
    folder.mkdir(parents=True, exist_ok=True)
    for index, tile in enumerate(TILES):
        grid = tile.pixel_grid(448)
        names, metadata, arrays = [], [], []
        pairs = [(r, s, "", 0) for r, s in gunw_pairs(index)]
        if index == 4:
            pairs.append((*gunw_pairs(index)[0], "_D099", 100))
        for reference, secondary, track, offset in pairs:
            for layer_number, layer in enumerate(GUNW_LAYERS):
                names.append(f"{reference:%Y%m%d}_{secondary:%Y%m%d}{track}_{layer}")
                metadata.append(
                    {
                        "layer": layer,
                        "reference_date": reference.isoformat(),
                        "secondary_date": secondary.isoformat(),
                        "temporal_baseline_days": str((reference - secondary).days),
                    }
                )
                # value = baseline days + layer number: tests can tell which pair is where
                value = (reference - secondary).days + layer_number + offset
                arrays.append(np.full((grid.height, grid.width), value))
        data = np.stack(arrays).astype("float32")
        profile = {
            "driver": "GTiff", "width": grid.width, "height": grid.height,
            "count": len(names), "dtype": "float32", "crs": grid.crs,
            "transform": grid.transform, "nodata": 0.0,
        }  # fmt: skip
        with rasterio.open(folder / f"{tile.identifier}.tif", "w", **profile) as dst:
            dst.write(data)
            for band, (name, tags) in enumerate(zip(names, metadata, strict=True), 1):
                dst.set_band_description(band, name)
                dst.update_tags(band, **tags)


def make_chip_tree(base: Path) -> ChipTree:
    tree = ChipTree(root=base / "data", grid=base / "grids" / AOI / "tiles.geojson",
                    grids_dir=base / "grids")  # fmt: skip
    frame = gpd.GeoDataFrame(
        {
            "identifier": [t.identifier for t in TILES],
            "aoi": [AOI] * len(TILES),
            "split": list(SPLITS),
        },
        geometry=[t.lonlat_polygon() for t in TILES],
        crs="EPSG:4326",
    )
    tree.grid.parent.mkdir(parents=True)
    frame.to_file(tree.grid, driver="GeoJSON")

    s2_recipe = _recipe("s2x", ["B2", "B3", "B4"], 89.6, "uint16", 0)

    def s2(index, size):
        data = np.clip(_smooth(np.random.default_rng(index), 3, size, 100, 3000), 1, None)
        if index == 0:
            data[:, :5] = 0  # nodata rows
        return data

    _write_dataset(tree, s2_recipe, s2, skip={1})

    s1_recipe = _recipe("s1x", ["vv", "vh"], 224, "float32", -9999)

    def s1(index, size):
        return _smooth(np.random.default_rng(index), 2, size, -25, 0)

    _write_dataset(tree, s1_recipe, s1, skip={2})

    wc_recipe = _recipe("esawc", ["map"], 89.6, "uint8", 0)

    def worldcover(index, size):
        rng = np.random.default_rng(index)
        classes = np.array(WORLDCOVER)
        data = classes[rng.integers(0, len(classes), (1, size, size))]
        data[:, :3, :3] = 0
        return data

    _write_dataset(tree, wc_recipe, worldcover, skip=set())

    agb_recipe = _recipe("agb-2020", ["agb", "agb_sd"], 224, "float32", -9999)

    def agb(index, size):
        data = _smooth(np.random.default_rng(index), 2, size, 0, 300)
        data[:, -2:, -2:] = -9999
        return data

    _write_dataset(tree, agb_recipe, agb, skip={11})
    _write_gunw(tree)
    return tree


def write_train_stats(tree: ChipTree, names: tuple[str, ...]) -> None:
    """``m3leo-tiles stats`` of the train split for ``names`` (what ``normalize=True`` reads)."""
    from m3leo_tiles.tools.stats import compute_stats, write_stats

    for name in names:
        folder = tree.folder(name)
        write_stats(compute_stats(folder, "train", grids_dir=tree.grids_dir), folder)
