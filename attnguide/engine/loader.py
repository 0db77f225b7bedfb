"""Deterministic, resumable, shardable data order.

Two pieces make a resumed run see exactly the batches of an uninterrupted one:

- :class:`EpochBatchSampler` yields batches of ``(epoch, index)`` keys: the
  order of an epoch is a permutation seeded by ``(seed, epoch)``, sharded like
  ``DistributedSampler`` (padded to a multiple of the world size, rank r takes
  positions r, r + W, ...), and can start at any batch (the batches done before
  a kill are skipped without loading them). With a pool of pixel-labelled
  indices and ``labelled_per_batch`` k, every batch holds at least k of them:
  missing ones replace the batch's last unlabelled items, drawn from the pool
  in an order seeded by ``(seed, epoch, rank)`` (a few masks then supervise
  every step instead of one batch in ten).
- :class:`SeededItems` loads item ``index`` with every generator (torch, numpy,
  python) seeded from ``(seed, epoch, index)`` and restored afterwards, so the
  random augmentation of a sample does not depend on the worker, the batch
  order, the number of processes, or what ran before; the training step's own
  randomness (dropout, pair sampling) stays on the global generator, whose
  state the checkpoint holds.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator

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
        labelled: indices whose pixel masks supervise attention.
        labelled_per_batch: at least this many of them in every batch (0 = plain order).

    Call :meth:`set_epoch` before iterating.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, labelled: Collection[int] = (),
                 labelled_per_batch: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.labelled = sorted(labelled)
        self.labelled_per_batch = min(labelled_per_batch, len(self.labelled), batch_size)
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

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        shard = self._shard()
        batches = [shard[b * self.batch_size:(b + 1) * self.batch_size]
                   for b in range(self.batches_per_epoch())]
        # Keys: (epoch, index) for the epoch's own items; (epoch, index, draw) for an
        # extra labelled item, so its augmentation differs from its other appearances.
        keyed = [[(self.epoch, i) for i in chunk] for chunk in batches]
        if self.labelled_per_batch and self.shuffle:
            self._top_up(batches, keyed)
        yield from keyed[self.start:]

    def _top_up(self, batches: list[list[int]], keyed: list[list[tuple[int, ...]]]) -> None:
        """Replace the last unlabelled items of each batch short of labelled ones.
        Computed for the whole epoch, so a resumed epoch draws the same."""
        pool, k = set(self.labelled), self.labelled_per_batch
        stream: list[int] = []
        cycle = draw = 0
        for chunk, keys in zip(batches, keyed):
            missing = k - sum(i in pool for i in chunk)
            slots = [j for j in reversed(range(len(chunk))) if chunk[j] not in pool][:max(0, missing)]
            for j in slots:
                while True:
                    if not stream:
                        cycle += 1
                        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.rank, cycle, 3))
                        stream = [self.labelled[t] for t in torch.randperm(len(self.labelled), generator=g)]
                    i = stream.pop()
                    if i not in chunk:
                        break
                draw += 1
                chunk[j], keys[j] = i, (self.epoch, i, draw)


class SeededItems(Dataset):
    """``items[(epoch, index)]`` = ``dataset[index]`` loaded under generators seeded
    from ``(seed, epoch, index)``; the caller's generator states are restored."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, ...]):
        epoch, index, *draw = key  # draw: an extra appearance of a labelled item (EpochBatchSampler)
        s = _mix(self.seed, epoch, index, 2, *draw)
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
