"""Whole batches for training: written in place, read ahead by processes or by threads.

torch's default path makes every sample in its own tensors and then stacks them into a
batch (``default_collate``); inside a DataLoader worker the stacked batch is fresh shared
memory, sent to the training process. For a packed sample that is where the time goes: on
the 2-core VM of ``bench/RESULTS.md`` the page faults of a fresh 8 MB shared sample cost ~7 ms,
reading it from a pack ~2 ms. ``M3LEODataset.read_batch`` writes each sample straight into its
row of a batch instead, and this module turns that into loaders:

* ``num_workers`` DataLoader worker processes write batches into a ring of shared slots made
  once, and send only the slot's number; the training process copies the batch out into
  memory of its own (``WorkerBatches``);
* ``threads``: batches read ahead by threads of the training process itself. Reading a
  pack is copies and arithmetic in numpy and torch, which release the GIL, so threads
  overlap, and no batch crosses a process at all (``ThreadedBatches``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from m3leo_tiles.core.errors import ConfigError

if TYPE_CHECKING:
    from m3leo_tiles.ml.dataset import M3LEODataset

_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.int64: np.int64,
    torch.bool: np.bool_,
}


def empty_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, either in shared memory or allocated by numpy.

    Shared: seen by DataLoader worker processes, and passed between processes as a file
    descriptor (``_new_shared`` is how torch's own collate allocates its batches). Private:
    numpy asks the kernel for huge pages on large arrays, so filling a fresh 8 MB sample takes
    a few page faults instead of 2,000 (10.8 against 27.4 ms for a 51 MB batch here).
    """
    if shared:
        nbytes = math.prod(shape) * dtype.itemsize
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))


def _own_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` copied into this process's own (huge-page) memory."""
    return empty_tensor(tuple(tensor.shape), tensor.dtype, shared=False).copy_(tensor)


class _Batches(Dataset):
    """``batches[list of indices]`` is one whole batch (with ``transforms``: stacked samples)."""

    def __init__(self, dataset: M3LEODataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.dataset.read_batch(indices)


class _Numbered:
    """A batch sampler whose batches come with their number in the epoch (which slot)."""

    def __init__(self, batches: BatchSampler) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        for number, indices in enumerate(self.batches):
            yield number, list(indices)


class _RingWriter(Dataset):
    """What a worker runs: batch ``number`` written into slot ``number % slots``."""

    def __init__(
        self, dataset: M3LEODataset, ring: dict[str, torch.Tensor], stamps: torch.Tensor
    ) -> None:
        self.dataset = dataset
        self.ring = ring
        self.stamps = stamps

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, list[int]]) -> tuple[int, list[str], list[str]]:
        number, indices = item
        slot = number % len(self.stamps)
        self.stamps[slot] = -1  # being written
        rows = {key: tensor[slot, : len(indices)] for key, tensor in self.ring.items()}
        batch = self.dataset.read_batch(indices, into=rows)
        self.stamps[slot] = number
        return number, batch["tile_id"], batch["crs"]


class WorkerBatches:
    """Batches read by DataLoader worker processes into shared slots, copied out here.

    The ring is made once, before the workers start, so its pages are faulted once; a
    worker sends a slot's number, and this process copies the batch into its own memory
    (numpy's huge pages: a few faults). Batch ``n`` goes to slot ``n % slots``; the DataLoader
    keeps at most ``prefetch_factor × num_workers`` batches in flight, so with two slots more
    than that a slot is never written while its batch is copied out. Each slot carries the
    number of the batch in it, checked after the copy, so a broken assumption fails loudly.
    The ring holds ``slots`` batches of shared memory while the loader lives (as many as a
    plain DataLoader has in flight, plus two).
    """

    def __init__(
        self,
        dataset: M3LEODataset,
        batches: BatchSampler,
        num_workers: int,
        generator: torch.Generator | None,
        options: dict[str, Any],
    ) -> None:
        slots = (options.get("prefetch_factor") or 2) * num_workers + 2
        size = batches.batch_size
        made = dataset.batch_buffers(slots * size, shared=True)
        self.ring = {key: t.view(slots, size, *t.shape[1:]) for key, t in made.items()}
        self.stamps = empty_tensor((slots,), torch.int64, shared=True).fill_(-1)
        self.loader = DataLoader(
            _RingWriter(dataset, self.ring, self.stamps),
            batch_size=None,
            sampler=_Numbered(batches),
            num_workers=num_workers,
            generator=generator,
            **options,
        )
        self._epoch: Iterator[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._epoch is not None:
            self._epoch.close()  # one epoch at a time: an abandoned one stops its workers
        self._epoch = self._batches()
        return self._epoch

    def _batches(self) -> Iterator[dict[str, Any]]:
        slots = len(self.stamps)
        for number, ids, crs in self.loader:
            slot = number % slots
            copied = {key: _own_copy(t[slot, : len(ids)]) for key, t in self.ring.items()}
            if int(self.stamps[slot]) != number:
                raise RuntimeError(
                    f"batch slot {slot} was rewritten while batch {number} was read from it; "
                    "please report this (m3leo-tiles loader ring)"
                )
            yield {"image": copied.pop("image"), "tile_id": ids, "crs": crs, **copied}


class ThreadedBatches:
    """Batches read ``ahead`` at most by ``threads`` threads of this process, in order.

    Iterating it twice gives two epochs, each drawing its order from the sampler as a
    DataLoader would (one seed is drawn from the generator first, as DataLoader does for
    its workers, so a shuffled order is the same as DataLoader's for the same generator).
    """

    def __init__(
        self,
        dataset: M3LEODataset,
        batches: BatchSampler,
        threads: int,
        generator: torch.Generator | None,
    ) -> None:
        self.dataset = dataset
        self.batches = batches
        self.threads = threads
        self.ahead = 2 * threads
        self.generator = generator

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="m3leo-reader")
        pending: deque[Future[dict[str, Any]]] = deque()
        try:
            for indices in self.batches:
                pending.append(pool.submit(self.dataset.read_batch, list(indices)))
                if len(pending) > self.ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def make_loader(
    dataset: M3LEODataset,
    batch_size: int = 8,
    shuffle: bool = False,
    num_workers: int = 0,
    *,
    threads: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    **options: Any,
) -> DataLoader | ThreadedBatches | WorkerBatches:
    """``M3LEODataset.loader``: batches made whole by ``read_batch``, the fast way to train.

    The same batches, in the same order, as ``DataLoader(dataset, batch_size, shuffle,
    generator=generator)``. ``num_workers`` DataLoader worker processes fill a ring of shared
    slots (``WorkerBatches``); ``threads`` instead read batches ahead in this process
    (``ThreadedBatches``). ``options`` go to the DataLoader (``persistent_workers``, ...).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if threads < 0 or num_workers < 0:
        raise ConfigError("threads and workers must be 0 or more")
    if threads and num_workers:
        raise ConfigError("choose reader threads or worker processes, not both")
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(order, batch_size, drop_last)
    if threads:
        if options:
            raise ConfigError(f"DataLoader options do not apply to threads: {sorted(options)}")
        return ThreadedBatches(dataset, batches, threads, generator)
    if options.get("pin_memory"):
        raise ConfigError("pin_memory is not supported by loader(); move batches with .to()")
    if num_workers and dataset.transforms is None:
        return WorkerBatches(dataset, batches, num_workers, generator, options)
    return DataLoader(
        _Batches(dataset),
        batch_size=None,
        sampler=batches,
        num_workers=num_workers,
        generator=generator,
        **options,
    )
