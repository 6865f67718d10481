"""Whole batches: ``read_batch`` is the batch torch's collate makes, ``loader`` keeps its order."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from helpers.chip_tree import ChipTree, make_chip_tree, write_train_stats
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.ml import M3LEODataset, PairRule
from m3leo_tiles.ml.batches import WorkerBatches, _RingWriter
from m3leo_tiles.tools.pack import pack


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


def test_workers_fill_a_ring_of_shared_slots_and_batches_are_copied_out(tree: ChipTree) -> None:
    data = make(tree, target="esawc", normalize=True)
    loader = data.loader(2, num_workers=2, prefetch_factor=1)
    assert isinstance(loader, WorkerBatches)
    assert len(loader.stamps) == 1 * 2 + 2  # in flight at most, plus two
    assert all(t.is_shared() and t.shape[:2] == (4, 2) for t in loader.ring.values())
    expected = list(DataLoader(data, batch_size=2))
    first = next(iter(loader))  # an epoch left after one batch, then a whole one
    assert_same_batches(first, expected[0])
    got = list(loader)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected, strict=True):
        assert_same_batches(a, b)
        assert not a["image"].is_shared()  # the training process's own memory
    assert got[0]["image"].data_ptr() != got[1]["image"].data_ptr()
    # transforms may change shapes: no ring, the batches are stacked samples
    doubled = make(tree, transforms=double_image).loader(2, num_workers=1)
    assert not isinstance(doubled, WorkerBatches)
    assert torch.equal(next(iter(doubled))["image"], 2 * make(tree).read_batch([0, 1])["image"])


def test_a_slot_rewritten_too_early_is_an_error(
    tree: ChipTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _RingWriter.__getitem__

    def writes_late(self: _RingWriter, item: tuple[int, list[int]]) -> tuple:
        number, tile_ids, crs = original(self, item)  # then stamps another batch's number
        self.stamps[number % len(self.stamps)] = number + 1
        return number, tile_ids, crs

    monkeypatch.setattr(_RingWriter, "__getitem__", writes_late)
    with pytest.raises(RuntimeError, match="rewritten"):
        next(iter(make(tree).loader(2, num_workers=1)))


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
