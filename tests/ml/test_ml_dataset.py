"""M3LEODataset: sample keys, shapes, dtypes, bands, splits, missing inputs, pairs, workers."""

from __future__ import annotations

import shutil
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import DataLoader

from helpers.chip_tree import TILES, WORLDCOVER, ChipTree, make_chip_tree, write_train_stats
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.ml import IGNORE_INDEX, M3LEODataset, PairRule
from m3leo_tiles.ml.dataset import NoChipsError
from m3leo_tiles.ml.inputs import read_chip_array, resize, resize_into
from m3leo_tiles.tools.pack import pack
from m3leo_tiles.tools.stats import compute_stats


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    tree = make_chip_tree(tmp_path_factory.mktemp("dataset-tree"))
    write_train_stats(tree, STATS_OF)
    return tree


STATS_OF = ("s2x", "s1x", "agb-2020", "gunw")


def dataset(tree: ChipTree, **options) -> M3LEODataset:
    defaults = {"inputs": ["s2x", "s1x"], "grids_dir": tree.grids_dir}
    return M3LEODataset(tree.root, tree.grid, **{**defaults, **options})


def raw(tree: ChipTree, name: str, identifier: str) -> tuple[np.ndarray, float | None]:
    with rasterio.open(tree.folder(name) / f"{identifier}.tif") as chip:
        return chip.read(), chip.nodata


def test_sample_keys_shapes_and_dtypes(tree: ChipTree) -> None:
    data = dataset(tree, target="esawc")
    assert len(data) == 6 and data.num_classes == 11
    sample = data[3]
    assert set(sample) == {"image", "mask", "tile_id", "crs", "bounds", "missing", "filled"}
    assert sample["image"].shape == (5, 50, 50) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (50, 50) and sample["mask"].dtype == torch.int64
    tile = Tile.from_id(sample["tile_id"])
    assert sample["crs"] == "EPSG:32633" == tile.crs
    assert sample["bounds"].dtype == torch.float64
    assert tuple(sample["bounds"].tolist()) == tile.bounds
    assert sample["missing"].tolist() == [False, False]
    assert data.channel_names == ("s2x:B2", "s2x:B3", "s2x:B4", "s1x:vv", "s1x:vh")
    assert dataset(tree, chip_size=32, target="esawc")[0]["image"].shape == (5, 32, 32)


def test_worldcover_values_become_eleven_indices_and_nodata_is_ignored(tree: ChipTree) -> None:
    data = dataset(tree, target="esawc")
    sample = data[0]
    values, _ = raw(tree, "esawc", sample["tile_id"])
    expected = np.full(values[0].shape, IGNORE_INDEX)
    for index, value in enumerate(WORLDCOVER):
        expected[values[0] == value] = index
    assert np.array_equal(sample["mask"].numpy(), expected)
    assert (sample["mask"][:3, :3] == IGNORE_INDEX).all()
    assert set(np.unique(sample["mask"])) == {IGNORE_INDEX, *range(11)}


def test_band_selection_keeps_the_order_asked_for(tree: ChipTree) -> None:
    data = dataset(tree, bands={"s2x": ["B4", "B2"]}, inputs=["s2x"])
    sample = data[1]  # tile 2: every pixel valid
    values, _ = raw(tree, "s2x", sample["tile_id"])
    assert data.channel_names == ("s2x:B4", "s2x:B2")
    assert np.array_equal(sample["image"].numpy(), values[[2, 0]].astype(np.float32))
    with pytest.raises(ConfigError, match=r"unknown band.*B9.*it has: B2, B3, B4"):
        dataset(tree, bands={"s2x": ["B9"]})


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_split_filtering(tree: ChipTree, split: str) -> None:
    data = dataset(tree, target="agb", split=split)  # agb finds agb-2020; no chip on tile 11
    expected = [i for i in tree.split_ids(split) if i != TILES[11].identifier]
    assert list(data.tile_ids) == expected
    sample = data[0]
    assert sample["target"].shape == (1, 50, 50) and sample["target"].dtype == torch.float32
    values, nodata = raw(tree, "agb-2020", sample["tile_id"])
    # the 2 x 2 nodata corner of the 20 px chip is 5 x 5 px at 50 px (nearest): NaN
    assert int(torch.isnan(sample["target"]).sum()) == 25
    assert np.nanmax(sample["target"].numpy()) == values[0][values[0] != nodata].max()


def test_missing_inputs_are_zeros_with_flags(tree: ChipTree) -> None:
    data = dataset(tree, target="esawc")
    by_id = {tile_id: index for index, tile_id in enumerate(data.tile_ids)}
    no_s2 = data[by_id[TILES[1].identifier]]
    assert no_s2["missing"].tolist() == [True, False]
    assert no_s2["filled"].tolist() == [True, True, True, False, False]
    assert (no_s2["image"][:3] == 0).all() and (no_s2["image"][3:] != 0).any()
    no_s1 = data[by_id[TILES[2].identifier]]
    assert no_s1["missing"].tolist() == [False, True]
    assert (no_s1["image"][3:] == 0).all()


def test_an_unreadable_input_chip_counts_as_missing(tree: ChipTree, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("s2x", "esawc"):
        shutil.copytree(tree.folder(name), root / "tst" / name)
    broken = root / "tst" / "s2x" / f"{TILES[3].identifier}.tif"
    broken.write_bytes(broken.read_bytes()[:500])  # truncated
    data = M3LEODataset(root, tree.grid, ["s2x"], "esawc", grids_dir=tree.grids_dir)
    index = data.tile_ids.index(TILES[3].identifier)
    with pytest.warns(UserWarning, match=f"cannot read the s2x chip of {TILES[3].identifier}"):
        sample = data[index]
    assert sample["missing"].tolist() == [True] and sample["filled"].all()
    assert (sample["image"] == 0).all() and sample["mask"].shape == (50, 50)


def test_normalisation_uses_the_train_stats(tree: ChipTree) -> None:
    data = dataset(tree, inputs=["s2x"], normalize=True)
    stats = compute_stats(tree.folder("s2x"), "train", grids_dir=tree.grids_dir)
    first = data[0]  # tile 0: nodata rows on top
    values, _ = raw(tree, "s2x", first["tile_id"])
    mean = np.array([b.mean for b in stats.bands], dtype=np.float32)[:, None, None]
    std = np.array([b.std for b in stats.bands], dtype=np.float32)[:, None, None]
    expected = (values.astype(np.float32) - mean) / std
    expected[:, :5] = 0.0  # nodata becomes 0 (the mean) after normalisation
    assert np.allclose(first["image"].numpy(), expected, atol=1e-5)
    # over the train chips, valid pixels are now centred and scaled
    pixels = torch.cat([data[i]["image"][:, 5:].flatten(1) for i in range(len(data))], 1)
    assert pixels.mean(1).abs().max() < 0.05 and (pixels.std(1) - 1).abs().max() < 0.05


def test_normalize_without_stats_says_what_to_run(tree: ChipTree, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tree.folder("esawc"), root / "tst" / "esawc")
    (root / "tst" / "esawc" / "stats-train.json").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="m3leo-tiles stats"):
        M3LEODataset(root, tree.grid, ["esawc"], normalize=True, grids_dir=tree.grids_dir)


def test_categorical_target_without_stats_computes_them(tree: ChipTree, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tree.folder("s2x"), root / "tst" / "s2x")
    shutil.copytree(tree.folder("esawc"), root / "tst" / "classes")  # no preset for this name
    (root / "tst" / "classes" / "stats-train.json").unlink(missing_ok=True)
    data = M3LEODataset(root, tree.grid, ["s2x"], target="classes", target_type="categorical",
                        grids_dir=tree.grids_dir)  # fmt: skip
    assert data.classes == tuple(WORLDCOVER)  # as m3leo-train: computed, nodata 0 left out
    assert (root / "tst" / "classes" / "stats-train.json").exists()


def test_two_workers_give_the_same_batches(tree: ChipTree) -> None:
    data = dataset(tree, target="esawc", normalize=True)
    single = list(DataLoader(data, batch_size=4, num_workers=0))
    double = list(DataLoader(data, batch_size=4, num_workers=2))
    assert len(single) == len(double) == 2
    for a, b in zip(single, double, strict=True):
        assert a["tile_id"] == b["tile_id"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_pack_and_chips_give_the_same_samples(tree: ChipTree, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tree.folder("s2x"), root / "tst" / "s2x")
    index = pack(root / "tst" / "s2x")
    assert index.ids == tuple(sorted(i for i in tree.ids if i != TILES[1].identifier))
    assert index.with_nodata == {TILES[0].identifier}  # its nodata rows; others need no mask
    packed = M3LEODataset(root, tree.grid, ["s2x"], grids_dir=tree.grids_dir)
    files = M3LEODataset(root, tree.grid, ["s2x"], grids_dir=tree.grids_dir, use_pack=False)
    assert packed.inputs[0].packed and not files.inputs[0].packed
    for index in range(len(files)):
        assert torch.equal(packed[index]["image"], files[index]["image"])
    # a chip rewritten after packing: the pack is stale, the chips are read, with a warning
    chip = root / "tst" / "s2x" / f"{files.tile_ids[0]}.tif"
    chip.write_bytes(chip.read_bytes())
    with pytest.warns(UserWarning, match="pack of s2x does not match"):
        stale = M3LEODataset(root, tree.grid, ["s2x"], grids_dir=tree.grids_dir)
    assert not stale.inputs[0].packed
    assert torch.equal(stale[0]["image"], files[0]["image"])


def test_pair_rule_picks_shortest_pairs_and_pads_with_flags(tree: ChipTree) -> None:
    data = dataset(tree, inputs=["gunw"], pairs=PairRule(count=2))
    assert data.channel_names == (
        "gunw:pair0:unwrapped_phase", "gunw:pair0:coherence",
        "gunw:pair1:unwrapped_phase", "gunw:pair1:coherence",
    )  # fmt: skip
    one_pair = data[0]  # tile 0: one pair (12 days); the second is padding
    assert one_pair["image"][:, 0, 0].tolist() == [12, 13, 0, 0]
    assert one_pair["filled"].tolist() == [False, False, True, True]
    three_pairs = data[2]  # tile 2: baselines 12, 24, 36 days
    assert three_pairs["image"][:, 0, 0].tolist() == [12, 13, 24, 25]
    assert three_pairs["filled"].tolist() == [False] * 4
    assert [(r - s).days for r, s in data.pairs_of(2)["gunw"]] == [12, 24]
    # tile 4: pairs of 12 and 24 days, the 12-day one also from a second track (values +100):
    # a pair is its dates, so the first track's bands are used once and the rest is padding
    three = dataset(tree, inputs=["gunw"], pairs=PairRule(count=3))
    assert three[4]["image"][:, 0, 0].tolist() == [12, 13, 24, 25, 0, 0]


def test_pair_rule_by_longest_baseline_date_range_and_layers(tree: ChipTree) -> None:
    longest = dataset(tree, inputs=["gunw"], pairs=PairRule(count=2, order="longest"))
    assert longest[2]["image"][:, 0, 0].tolist() == [36, 37, 24, 25]
    by_feb = PairRule(count=3, end=date(2020, 2, 10))  # pairs ending by 10 Feb: 12 and 24 d
    ranged = dataset(tree, inputs=["gunw"], pairs=by_feb, bands={"gunw": ["coherence"]})
    assert ranged[2]["image"][:, 0, 0].tolist() == [13, 25, 0]
    assert ranged[2]["filled"].tolist() == [False, False, True]
    normalised = dataset(tree, inputs=["gunw"], pairs=PairRule(count=1), normalize=True)
    assert normalised[0]["image"].abs().max() < 5


def test_bad_input_is_a_config_error(tree: ChipTree) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'nothere'"):
        dataset(tree, inputs=["nothere"])
    with pytest.raises(ConfigError, match="unknown dataset 'nothere'"):
        dataset(tree, target="nothere")
    with pytest.raises(ConfigError, match="at least one input"):
        dataset(tree, inputs=[])
    with pytest.raises(ConfigError, match="unknown split"):
        dataset(tree, split="dev")


def test_no_chips_for_the_split(tree: ChipTree, tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "tst" / "only-test").mkdir(parents=True)
    for identifier in tree.split_ids("test"):
        shutil.copy(tree.folder("esawc") / f"{identifier}.tif", root / "tst" / "only-test")
    shutil.copytree(tree.folder("s2x"), root / "tst" / "s2x")
    with pytest.raises(NoChipsError, match="no chips of split 'train' for target only-test"):
        M3LEODataset(root, tree.grid, ["s2x"], "only-test", grids_dir=tree.grids_dir,
                     classes="esa-worldcover")  # fmt: skip
    test = M3LEODataset(root, tree.grid, ["s2x"], "only-test", split="test",
                        grids_dir=tree.grids_dir, classes="esa-worldcover")  # fmt: skip
    assert len(test) == 3


def test_no_warning_for_a_dataset_without_pack(tree: ChipTree) -> None:
    """No pack folder: the chips are read, and nothing warns of a stale pack."""
    assert not any((tree.folder(name) / "pack").exists() for name in ("s2x", "s1x"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = dataset(tree)
        sample = data[0]
    assert [str(warning.message) for warning in caught] == []
    assert not any(spec.packed for spec in data.inputs)
    assert sample["missing"].tolist() == [False, False]


def test_a_float_chip_at_the_sample_size_is_read_straight_into_the_batch(
    tree: ChipTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 chips of the sample's size are decoded into their rows of the batch (no copy),
    then normalised there: nodata still becomes 0, values as from a separate array."""
    import m3leo_tiles.ml.dataset as module

    into_batch = []

    def spy(path: Path, out: np.ndarray | None = None) -> np.ndarray:
        array = read_chip_array(path, out)
        into_batch.append(out is not None and array is out)
        return array

    monkeypatch.setattr(module, "read_chip_array", spy)
    data = dataset(tree, inputs=["agb-2020"], normalize=True)
    batch = data.read_batch(range(len(data)))
    assert into_batch and all(into_batch)
    stats = compute_stats(tree.folder("agb-2020"), "train", grids_dir=tree.grids_dir)
    mean = torch.tensor([b.mean for b in stats.bands], dtype=torch.float32)[:, None, None]
    std = torch.tensor([b.std for b in stats.bands], dtype=torch.float32)[:, None, None]
    for row, identifier in enumerate(batch["tile_id"]):
        if batch["missing"][row].any():
            continue
        values, nodata = raw(tree, "agb-2020", identifier)
        expected = (torch.from_numpy(values) - mean) / std
        expected[torch.from_numpy(values == nodata)] = 0.0
        assert (values == nodata).any()
        assert torch.equal(batch["image"][row], expected)


def test_resize_into_gives_resize_values() -> None:
    """The upsampling written in place is the very same as ``resize``'s (and so as the
    pack path's and the paper-style loaders')."""
    tensor = torch.randn(3, 20, 20)
    for size in (50, 20, 10):  # up, same, down (antialiased)
        out = torch.full((3, size, size), 7.0)
        resize_into(out, tensor)
        assert torch.equal(out, resize(tensor, size))
