"""Whole batches for training: written in place, read ahead by processes or by threads.

torch's default path makes every sample in its own tensors and then stacks them into a
batch (``default_collate``). For a packed sample that copy costs more than reading it, and
inside a DataLoader worker the stacked batch is a second, shared-memory, copy whose page
faults were most of a worker's time here. ``M3LEODataset.read_batch`` writes each sample
straight into its row of the batch instead; this module turns that into loaders:

* ``num_workers`` DataLoader worker processes, each making whole batches in shared memory
  (sent to the training process as a file descriptor, not copied);
* ``threads``: batches read ahead by threads of the training process itself. Reading a
  pack is copies and arithmetic in numpy and torch, which release the GIL, so threads
  overlap, and no batch crosses a process at all.
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

from m3leo_tiles.errors import ConfigError

if TYPE_CHECKING:
    from m3leo_tiles.torch.dataset import M3LEODataset

_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.int64: np.int64,
    torch.bool: np.bool_,
}


def empty_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, either in shared memory or allocated by numpy.

    Shared: a DataLoader worker sends it to the main process as a file descriptor, no copy
    (``_new_shared`` is how torch's own collate allocates its batches). Private: numpy asks
    the kernel for huge pages on large arrays, so filling a fresh 8 MB sample takes a few page
    faults instead of 2,000, which halved the time of a packed sample here.
    """
    if shared:
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))


class _Batches(Dataset):
    """``batches[list of indices]`` is one whole batch: what the DataLoader path iterates."""

    def __init__(self, dataset: M3LEODataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.dataset.read_batch(indices)


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
) -> DataLoader | ThreadedBatches:
    """``M3LEODataset.loader``: batches made whole by ``read_batch``, the fast way to train.

    The same batches, in the same order, as ``DataLoader(dataset, batch_size, shuffle,
    generator=generator)``. ``num_workers`` are DataLoader worker processes; ``threads``
    instead reads batches ahead in threads of this process (no batch crosses a process: with
    a pack, the fastest). ``options`` go to the DataLoader (``persistent_workers``, ...).
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
    return DataLoader(
        _Batches(dataset),
        batch_size=None,
        sampler=batches,
        num_workers=num_workers,
        generator=generator,
        **options,
    )
