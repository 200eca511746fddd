"""The process group as the engine sees it: world size and rank, rank-0-first sections,
and the launcher of the training loops that do not run under Lightning."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from cxrlab.runs.rundir import process_rank

log = logging.getLogger(__name__)


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


_WORKERS: list[subprocess.Popen] = []


def _this_command() -> list[str]:
    """The command line that started this process (``python -m pkg.mod`` kept as such)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    return [sys.executable, *sys.argv]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_group(devices: int, backend: str) -> tuple[int, int]:
    """Start (rank 0) or join (a worker) a process group of ``devices`` local processes.

    For training loops that are not Lightning's: like Lightning's DDP launcher, rank 0
    re-runs its own command line for ranks 1..devices-1 with ``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; a worker finds them and joins.
    Nothing happens with ``devices <= 1`` or when a group already exists.

    Args:
        devices: Processes in the group (one node).
        backend: ``gloo`` (CPU) or ``nccl`` (CUDA).

    Returns:
        ``(world_size, rank)``.
    """
    if devices <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    rank = process_rank()
    if rank == 0:
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                           "WORLD_SIZE": str(devices), "RANK": "0", "LOCAL_RANK": "0"})
        command = _this_command()
        for worker in range(1, devices):
            env = {**os.environ, "RANK": str(worker), "LOCAL_RANK": str(worker)}
            _WORKERS.append(subprocess.Popen(command, env=env))
        atexit.register(_wait_for_workers)
    log.info("joining a %s process group as rank %d of %d", backend, rank, devices)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=devices)
    return world()


def _wait_for_workers() -> None:
    for worker in _WORKERS:
        worker.wait()


@contextmanager
def torch_threads(threads: int):
    """Run a block with ``threads`` torch intra-op threads (0: leave as is), then restore."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
