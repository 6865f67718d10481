"""Whole batches: ``read_batch`` is the batch torch's collate makes, ``loader`` keeps its order."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from helpers.chip_tree import ChipTree, make_chip_tree, write_train_stats
from m3leo_tiles.errors import ConfigError
from m3leo_tiles.pack import pack
from m3leo_tiles.torch import M3LEODataset, PairRule


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    tree = make_chip_tree(tmp_path_factory.mktemp("batches-tree"))
    write_train_stats(tree, ("s2x", "s1x"))
    pack(tree.folder("s2x"))  # one input from its pack, the other from its chips
    return tree


def make(tree: ChipTree, **options: Any) -> M3LEODataset:
    options = {"inputs": ["s2x", "s1x"], **options}
    return M3LEODataset(tree.root, tree.grid, grids_dir=tree.grids_dir, **options)


def assert_same_batches(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert got[key].dtype == value.dtype, key
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, equal_nan=True)
        else:
            assert got[key] == value, key


def double_image(sample: dict[str, Any]) -> dict[str, Any]:
    return {**sample, "image": sample["image"] * 2}


CASES = {
    "classes, packed and missing inputs": {"target": "esawc", "normalize": True},
    "continuous target with nodata": {"inputs": ["s1x"], "target": "agb-2020",
                                      "target_bands": ["agb", "agb_sd"]},
    "pairs padded": {"inputs": ["gunw"], "pairs": PairRule(count=2)},
    "transforms": {"inputs": ["s2x"], "transforms": double_image},
}  # fmt: skip


@pytest.mark.parametrize("options", CASES.values(), ids=CASES)
def test_read_batch_is_the_batch_default_collate_makes(tree: ChipTree, options: dict) -> None:
    data = make(tree, **options)
    indices = [3, 0, 1, 2]  # tiles 1 and 2 lack an input chip each
    batch = data.read_batch(indices)
    assert_same_batches(batch, default_collate([data[i] for i in indices]))
    assert batch["image"].shape[0] == 4


@pytest.mark.parametrize("how", [{"num_workers": 0}, {"threads": 2}, {"num_workers": 2}], ids=str)
def test_loader_gives_the_dataloaders_batches_in_its_order(tree: ChipTree, how: dict) -> None:
    data = make(tree, target="esawc", normalize=True)
    ours = data.loader(4, shuffle=True, generator=torch.Generator().manual_seed(7), **how)
    theirs = DataLoader(data, 4, shuffle=True, generator=torch.Generator().manual_seed(7))
    orders = []
    for _epoch in range(2):
        got, expected = list(ours), list(theirs)
        assert len(got) == len(expected) == len(ours) == 2
        for a, b in zip(got, expected, strict=True):
            assert_same_batches(a, b)
        orders.append([i for batch in got for i in batch["tile_id"]])
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_batches_of_workers_are_made_in_shared_memory(tree: ChipTree) -> None:
    data = make(tree, target="esawc")
    keys = ("image", "bounds", "missing", "filled", "mask")
    assert not any(data.read_batch([0, 1])[k].is_shared() for k in keys)

    class Probe(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> torch.Tensor:
            batch = data.read_batch([0, 1])
            return torch.tensor([batch[k].is_shared() for k in keys])

    (flags,) = DataLoader(Probe(), batch_size=None, num_workers=1)
    assert flags.all()  # sent to this process as they are, not copied into shared memory


def test_reader_threads_stop_with_the_loop(tree: ChipTree) -> None:
    batches = iter(make(tree).loader(1, threads=2))
    assert next(batches)["image"].shape[0] == 1
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("m3leo-reader")]


@pytest.mark.parametrize(
    "bad",
    [{"threads": 2, "num_workers": 2}, {"batch_size": 0}, {"threads": -1},
     {"threads": 2, "pin_memory": True}],
    ids=str,
)  # fmt: skip
def test_bad_loader_options_are_config_errors(tree: ChipTree, bad: dict) -> None:
    with pytest.raises(ConfigError):
        make(tree).loader(**{"batch_size": 2, **bad})
