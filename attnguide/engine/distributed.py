"""DDP set-up from the environment torchrun provides.

``torchrun --nproc_per_node N -m attnguide train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the
process group uses gloo on CPU and nccl on CUDA. Without these variables
training runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attnguide.errors import AttnGuideError


@dataclass
class DistInfo:
    """This process's place in the torchrun process group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # this module created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's variables (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise AttnGuideError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(rank, world, local_rank, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, True)


def resolve_device(name: str) -> torch.device:
    """``auto``: cuda (this process's LOCAL_RANK GPU under torchrun) if available, else cpu."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AttnGuideError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AttnGuideError("--device cuda but no CUDA GPU is available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0)
        if device.index >= torch.cuda.device_count():
            raise AttnGuideError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``values`` summed over the processes, in place (unchanged in one process)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def shard(count: int, info: DistInfo) -> range:
    """This process's items of ``count`` (0..count-1): every ``world_size``-th from its rank.

    The ranks' slices are disjoint and together cover every item; each slice is as even as
    possible (sizes differ by at most one), so a split sorted by size stays balanced.
    """
    return range(info.rank, count, info.world_size)


def all_reduce_max(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``values``' maximum over the processes, in place (unchanged in one process)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def gather_objects(value, info: DistInfo) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every process (``[value]`` alone)."""
    if not info.enabled:
        return [value]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out
