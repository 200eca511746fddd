"""The process group as the engine sees it: world size and rank, rank-0-first sections."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Run a block on rank 0 before the other ranks run it (no-op without a process group).

    For work whose files the ranks share, such as building a resolution cache: rank 0
    writes them, the others wait at a barrier and then find them ready. Every rank must
    enter the block.
    """
    size, rank = world()
    if size > 1 and rank > 0:
        dist.barrier()
    yield
    if size > 1 and rank == 0:
        dist.barrier()
