"""Deterministic, resumable, shardable data order.

Two pieces make a resumed run see exactly the batches of an uninterrupted one:

- :class:`EpochBatchSampler` yields batches of ``(epoch, index)`` keys: the
  order of an epoch is a permutation seeded by ``(seed, epoch)``, sharded like
  ``DistributedSampler`` (padded to a multiple of the world size, rank r takes
  positions r, r + W, ...), and can start at any batch (the batches done before
  a kill are skipped without loading them). With a pool of pixel-labelled
  indices and ``labelled_per_batch`` k, every batch holds k of them beside
  ``batch_size - k`` unlabelled items, and the epoch lasts until every item was
  shown once (a few masks then supervise every step instead of one batch in
  ten, and the unlabelled items are still all seen each epoch).
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
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from attnguide.constants import IGNORE
from attnguide.core.annotations import Annotations
from attnguide.core.guidance import needs_masks
from attnguide.data.dataset import collate

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
        labelled_per_batch: k; every batch then holds exactly k of them (0 = plain order).

    With ``labelled_per_batch`` k, each batch is ``batch_size - k`` unlabelled items
    followed by k labelled ones, each kind from its own stream, and an epoch lasts
    until this process has shown every unlabelled item of its shard and every
    labelled item at least once: one epoch is still one pass over the data, it
    just takes more steps than ``n / batch_size`` (the labelled items recur). A
    stream that runs out before the epoch ends starts a new seeded order of the
    same items; an item's first appearance in an epoch has the key ``(epoch,
    index)``, a repeat ``(epoch, index, draw)`` so that its augmentation differs.

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

    @property
    def mixed(self) -> bool:
        """Whether batches mix the two streams (some, but not all, items are labelled)."""
        return bool(self.labelled_per_batch and self.shuffle and len(self.labelled) < self.n)

    def _shard(self, order: list[int]) -> list[int]:
        """This process's share of ``order``, padded like ``DistributedSampler``."""
        per_rank = -(-len(order) // self.world_size)
        padded = order + order[: per_rank * self.world_size - len(order)]
        return padded[self.rank::self.world_size]

    def batches_per_epoch(self) -> int:
        if self.mixed:
            k = self.labelled_per_batch
            free = self.batch_size - k
            unlabelled = -(-(self.n - len(self.labelled)) // self.world_size)  # per process
            return max(-(-unlabelled // free) if free else 0, -(-len(self.labelled) // k), 1)
        per_rank = -(-self.n // self.world_size)
        full = per_rank // self.batch_size
        if self.drop_last and full > 0:
            return full
        return -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        if self.mixed:
            keyed = self._mixed_batches(order)
        else:
            shard = self._shard(order)
            keyed = [[(self.epoch, i) for i in shard[b * self.batch_size:(b + 1) * self.batch_size]]
                     for b in range(self.batches_per_epoch())]
        yield from keyed[self.start:]

    def _stream(self, first: list[int], items: list[int], tag: int) -> Iterator[int]:
        """``first``, then seeded orders of ``items`` for as long as asked."""
        yield from first
        cycle = 0
        while True:
            cycle += 1
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.rank, cycle, tag))
            yield from (items[t] for t in torch.randperm(len(items), generator=g).tolist())

    def _mixed_batches(self, order: list[int]) -> list[list[tuple[int, ...]]]:
        """The whole epoch's batches (so a resumed epoch draws the same): each one
        ``batch_size - k`` unlabelled items, then k labelled ones, none twice."""
        pool = set(self.labelled)
        unlabelled = self._shard([i for i in order if i not in pool])
        k = self.labelled_per_batch
        takers = [_Taker(self._stream(unlabelled, unlabelled, 4), self.batch_size - k, len(set(unlabelled))),
                  _Taker(self._stream([], self.labelled, 3), k, len(self.labelled))]
        seen: set[int] = set()
        draw = 0
        keyed = []
        for _ in range(self.batches_per_epoch()):
            chunk: list[int] = []
            for taker in takers:
                taker.fill(chunk)
            keys = []
            for i in chunk:
                if i in seen:
                    draw += 1
                    keys.append((self.epoch, i, draw))
                else:
                    seen.add(i)
                    keys.append((self.epoch, i))
            keyed.append(keys)
        return keyed


class _Taker:
    """Takes ``count`` items a batch from an endless stream, none already in the batch
    while the stream has that many distinct items; a skipped item waits for the next batch."""

    def __init__(self, stream: Iterator[int], count: int, distinct: int) -> None:
        self.stream, self.count, self.distinct = stream, count, distinct
        self.waiting: list[int] = []

    def fill(self, chunk: list[int]) -> None:
        skipped = []
        taken = 0
        while taken < self.count:
            i = self.waiting.pop(0) if self.waiting else next(self.stream)
            if taken < self.distinct and i in chunk:
                skipped.append(i)
                continue
            chunk.append(i)
            taken += 1
        self.waiting[:0] = skipped


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
        collate_fn=collate,  # default_collate; items' annotations become one Annotations
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
    )


def batch_targets(batch: dict, guidance: str, guided: bool,
                  device: torch.device | str) -> Tensor | Annotations | None:
    """What a training batch hands `GuidedAttention` beside images and labels: None (no
    guidance this epoch, or nothing to supervise with), the (B, S, S) masks with 255 where
    an image may not supervise attention (pixel masks only, as before), or an
    `Annotations` holding those masks and the items' other annotations (boxes, points,
    scribbles, avoid regions) when the data set hands any. The one path of every kind,
    shared by the engine and the Lightning / Accelerate integrations."""
    if not guided:
        return None
    masks = None
    if needs_masks(guidance) and bool(batch["pixel_label"].any()):
        keep = batch["pixel_label"][:, None, None]
        masks = torch.where(keep, batch["mask"], torch.full_like(batch["mask"], IGNORE))  # (B, S, S)
    ann = batch.get("annotations")
    if not isinstance(ann, Annotations) or not ann.kinds():
        return None if masks is None else masks.to(device, non_blocking=True)
    items = []
    for i, item in enumerate(ann.items):
        item = dict(item)
        if masks is not None and bool(batch["pixel_label"][i]):
            item["mask"] = masks[i]
        items.append(item)
    return Annotations(items)
