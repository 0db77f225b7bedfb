"""Deterministic, resumable, shardable data order.

Two pieces make a resumed run see exactly the batches of an uninterrupted one:

- :class:`EpochBatchSampler` yields batches of ``(epoch, index)`` keys: the
  order of an epoch is a permutation seeded by ``(seed, epoch)``, sharded like
  ``DistributedSampler`` (padded to a multiple of the world size, rank r takes
  positions r, r + W, ...), and can start at any batch (the batches done before
  a kill are skipped without loading them).
- :class:`SeededItems` loads item ``index`` with every generator (torch, numpy,
  python) seeded from ``(seed, epoch, index)`` and restored afterwards, so the
  random augmentation of a sample does not depend on the worker, the batch
  order, the number of processes, or what ran before; the training step's own
  randomness (dropout, pair sampling) stays on the global generator, whose
  state the checkpoint holds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden ratio


def _mix(*values: int) -> int:
    """A 63-bit seed from a few ints (deterministic across processes and runs)."""
    h = 0
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * _MIX & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch (the same in every process)."""
    g = torch.Generator().manual_seed(_mix(seed, epoch, 1))
    return torch.randperm(n, generator=g).tolist()


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys for this process.

    Args:
        n: data set size. batch_size: per-process batch size.
        seed: order seed. rank, world_size: the DDP shard.
        shuffle: False keeps 0..n-1 (evaluation).
        drop_last: drop the last partial batch when there is at least one full one.

    Call :meth:`set_epoch` before iterating.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration yields ``epoch``'s batches from ``start_batch`` on."""
        self.epoch, self.start = epoch, start_batch

    def _shard(self) -> list[int]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        per_rank = -(-self.n // self.world_size)
        padded = order + order[: per_rank * self.world_size - self.n]
        return padded[self.rank::self.world_size]

    def batches_per_epoch(self) -> int:
        per_rank = -(-self.n // self.world_size)
        full = per_rank // self.batch_size
        if self.drop_last and full > 0:
            return full
        return -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        shard = self._shard()
        for b in range(self.start, self.batches_per_epoch()):
            chunk = shard[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, i) for i in chunk]


class SeededItems(Dataset):
    """``items[(epoch, index)]`` = ``dataset[index]`` loaded under generators seeded
    from ``(seed, epoch, index)``; the caller's generator states are restored."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        s = _mix(self.seed, epoch, index, 2)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(s)  # CPU only: torch.manual_seed would touch CUDA
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def make_loader(dataset: Dataset, sampler: EpochBatchSampler, seed: int, workers: int,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``SeededItems(dataset)`` driven by ``sampler``.

    Its own generator is passed so creating an iterator never draws from the
    global torch generator (that would shift a resumed run's randomness).
    """
    return DataLoader(
        SeededItems(dataset, seed),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=default_collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
    )
