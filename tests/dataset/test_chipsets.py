"""Finding what fetch wrote (dataset/chipsets.py): dataset folders by name, their finished
chips, their bands and their splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.chip_tree import AOI, ChipTree, make_chip_tree
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import (
    ChipSet,
    chip_ids,
    find_dataset,
    ids_of_split,
    load_splits,
    read_chip_info,
)
from m3leo_tiles.dataset.manifest import ManifestRow, write_manifest


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    return make_chip_tree(tmp_path_factory.mktemp("chipsets-tree"))


def test_a_dataset_is_found_by_name_path_or_recipe(tree: ChipTree) -> None:
    assert find_dataset("s1x", tree.root) == tree.folder("s1x")
    assert find_dataset("agb", tree.root) == tree.folder("agb-2020")  # its only year
    assert find_dataset(tree.folder("esawc"), tree.root) == tree.folder("esawc")
    assert find_dataset("s2x", tree.root, aoi=AOI) == tree.folder("s2x")
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope' .*found: tst/agb-2020"):
        find_dataset("nope", tree.root)
    with pytest.raises(ConfigError, match="is not a folder; pass the --out folder"):
        find_dataset("s1x", tree.root / "missing")


def test_a_name_in_two_areas_must_be_chosen(tmp_path: Path) -> None:
    for aoi in ("a", "b"):
        (tmp_path / aoi / "dem").mkdir(parents=True)
        (tmp_path / aoi / "dem" / "manifest.csv").write_text("identifier\n")
    with pytest.raises(ConfigError, match=r"'dem' is ambiguous .*a/dem, b/dem; name one"):
        find_dataset("dem", tmp_path)
    assert find_dataset("dem", tmp_path, aoi="b") == tmp_path / "b" / "dem"


def test_finished_chips_are_ok_rows_with_their_file(tmp_path: Path) -> None:
    for name in ("A", "B", "C"):
        (tmp_path / f"{name}.tif").write_bytes(b"x")
    assert chip_ids(tmp_path) == {"A", "B", "C"}  # no manifest: every chip counts
    write_manifest(tmp_path / "manifest.csv", {
        "A": ManifestRow("A", TileStatus.OK), "B": ManifestRow("B", TileStatus.FAILED),
        "D": ManifestRow("D", TileStatus.OK),  # recorded, but its chip is gone
    })  # fmt: skip
    chipset = ChipSet.open(tmp_path)
    assert chipset.ids == {"A"} and chipset.path("A") == tmp_path / "A.tif"


def test_bands_and_splits(tree: ChipTree) -> None:
    chipset = ChipSet.open(tree.folder("s2x"))
    assert (chipset.name, chipset.aoi) == ("s2x", AOI)
    info = read_chip_info(chipset.first_chip())
    assert (info.bands, info.dtype, info.nodata) == (("B2", "B3", "B4"), "uint16", 0.0)
    splits = load_splits(tree.grid)
    assert ids_of_split(chipset.ids, splits, "val") == sorted(
        set(tree.split_ids("val")) & chipset.ids
    )
    assert ids_of_split(chipset.ids, splits, None) == sorted(chipset.ids)
