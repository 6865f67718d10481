"""`m3leo-tiles pack`: every finished chip in one array, refused for per-tile band lists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers.chip_tree import TILES, ChipTree, make_chip_tree
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import ChipSet
from m3leo_tiles.tools.pack import current_pack, open_pack, pack, read_pack_index

CLI = Path(sys.executable).parent / "m3leo-tiles"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    return make_chip_tree(tmp_path_factory.mktemp("pack-tree"))


def test_pack_holds_every_finished_chip_and_goes_stale(tree: ChipTree) -> None:
    folder = tree.folder("s1x")
    index = pack(folder)
    assert index == read_pack_index(folder) == current_pack(ChipSet.open(folder))
    assert TILES[2].identifier not in index.ids and len(index.ids) == 11  # no chip there
    array = open_pack(folder)
    assert array.shape == (11, 2, 20, 20) and array.dtype == np.float32
    for row, identifier in enumerate(index.ids):
        with rasterio.open(folder / f"{identifier}.tif") as chip:
            assert np.array_equal(array[row], chip.read())
    chip = folder / f"{index.ids[0]}.tif"
    chip.write_bytes(chip.read_bytes())  # a rewritten chip: the pack no longer matches
    assert current_pack(ChipSet.open(folder)) is None


def test_per_tile_band_lists_are_not_packed(tree: ChipTree) -> None:
    with pytest.raises(ConfigError, match="per-tile band lists"):
        pack(tree.folder("gunw"))
    assert not (tree.folder("gunw") / "pack").exists()


def test_cli(tree: ChipTree) -> None:
    done = subprocess.run(
        [CLI, "pack", "s2x", "--root", tree.root], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "packed 11 chips (3 bands, 50x50 px, uint16)" in done.stdout
    bad = subprocess.run(
        [CLI, "pack", "gunw", "--root", tree.root], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot pack gunw")
