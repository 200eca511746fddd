"""Samplers that fix the share of positives in each batch (for AUC-M and rare findings).

Why not LibAUC's ``DualSampler``: it rejects NaN labels (cxrlab's "unknown"), seeds
NumPy's global generator (``np.random.seed``) in its constructor and reshuffles with it,
needs the batch size up front and handles one binary task at a time. The
:class:`PositiveShareSampler` below keeps its idea (each block of ``batch_size`` indices
holds a fixed number of positives; the smaller pool is cycled) but takes a dataset's
``labels`` array as it is, skips unknown rows, draws from a ``torch.Generator`` and
picks the class of a multi-label array by index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from cxrlab.errors import ConfigError, LabelValueError


class PositiveShareSampler(Sampler[int]):
    """Yield dataset indices so that a set share of them are positives of one class.

    Positives are rows whose label is 1, negatives rows whose label is 0; rows with NaN
    (or any other value, such as -1 under the ``multiclass`` policy) are never drawn.
    Each pool is walked in a fresh random order and restarted (reshuffled) when used up,
    so the smaller pool repeats and every row of the larger one is seen once per epoch.

    With ``batch_size`` every consecutive block of ``batch_size`` indices holds exactly
    ``round(pos_share * batch_size)`` positives (at least 1, at most ``batch_size - 1``
    for 0 < pos_share < 1) in random order; use it with a ``DataLoader`` of the same batch
    size and ``shuffle=False``. Without it, the epoch as a whole holds
    ``round(pos_share * num_samples)`` positives in random order.

    Args:
        labels: ``(N,)`` or ``(N, K)`` labels (1, 0, NaN), e.g. ``XrayDataset.labels``.
        pos_share: Wanted share of positives, in [0, 1].
        num_samples: Indices per epoch. Default: enough that each pool is used up once,
            ``max(n_pos / pos_share, n_neg / (1 - pos_share))``, rounded up to whole batches.
        generator: Random source; a fresh one seeded from torch's global RNG if None.
        class_index: The class of a ``(N, K)`` array to balance (required when K > 1).
        batch_size: Fix the count per batch (see above).

    Raises:
        ConfigError: Invalid share, size or class index.
        LabelValueError: The chosen class has no positives (or no negatives) to draw.

    Example:
        >>> labels = np.array([1, 0, 0, 0, 0, 0, 0, np.nan])
        >>> sampler = PositiveShareSampler(labels, pos_share=0.5, batch_size=4)
        >>> len(sampler)
        12
    """

    def __init__(self, labels: np.ndarray | Sequence[float] | torch.Tensor, pos_share: float = 0.5,
                 num_samples: int | None = None, generator: torch.Generator | None = None,
                 class_index: int | None = None, batch_size: int | None = None) -> None:
        array = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels, dtype=float)
        array = array.astype(float)
        if array.ndim == 2:
            if class_index is None and array.shape[1] != 1:
                raise ConfigError("sampler.class_index", f"labels have {array.shape[1]} classes; "
                                                         "name the class to balance")
            index = 0 if class_index is None else class_index
            if not 0 <= index < array.shape[1]:
                raise ConfigError("sampler.class_index", f"{index} outside [0, {array.shape[1] - 1}]")
            array = array[:, index]
        elif array.ndim != 1:
            raise ConfigError("sampler.labels", f"labels must be (N,) or (N, K), got shape {array.shape}")
        if not 0.0 <= pos_share <= 1.0:
            raise ConfigError("sampler.pos_share", f"must lie in [0, 1], got {pos_share}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError("sampler.batch_size", f"must be >= 1, got {batch_size}")
        self.positives = torch.as_tensor(np.flatnonzero(array == 1), dtype=torch.long)
        self.negatives = torch.as_tensor(np.flatnonzero(array == 0), dtype=torch.long)
        self.pos_share = float(pos_share)
        self.batch_size = batch_size
        self.generator = generator
        if self.pos_share > 0 and len(self.positives) == 0:
            raise LabelValueError("labels", "no positive rows to sample (label 1)")
        if self.pos_share < 1 and len(self.negatives) == 0:
            raise LabelValueError("labels", "no negative rows to sample (label 0)")
        self.num_samples = self._default_length() if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ConfigError("sampler.num_samples", f"must be >= 1, got {num_samples}")

    def positives_per_batch(self) -> int | None:
        """Positives in each block of ``batch_size`` (None without ``batch_size``)."""
        if self.batch_size is None:
            return None
        count = round(self.pos_share * self.batch_size)
        if 0.0 < self.pos_share < 1.0 and self.batch_size > 1:
            count = min(max(count, 1), self.batch_size - 1)
        return count

    def _default_length(self) -> int:
        needs = []
        if self.pos_share > 0:
            needs.append(len(self.positives) / self.pos_share)
        if self.pos_share < 1:
            needs.append(len(self.negatives) / (1 - self.pos_share))
        length = math.ceil(max(needs) - 1e-9)
        if self.batch_size is not None:
            length = math.ceil(length / self.batch_size) * self.batch_size
        return max(length, 1)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = self.generator
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        if self.batch_size is None:
            n_pos = round(self.pos_share * self.num_samples)
            layout = torch.zeros(self.num_samples, dtype=torch.bool)
            layout[:n_pos] = True
            layout = layout[torch.randperm(self.num_samples, generator=generator)]
        else:
            per_batch = self.positives_per_batch() or 0
            blocks = []
            for start in range(0, self.num_samples, self.batch_size):
                size = min(self.batch_size, self.num_samples - start)
                block = torch.zeros(size, dtype=torch.bool)
                block[:min(per_batch, size)] = True
                blocks.append(block[torch.randperm(size, generator=generator)])
            layout = torch.cat(blocks)
        pos_stream = _cycle(self.positives, int(layout.sum()), generator)
        neg_stream = _cycle(self.negatives, int((~layout).sum()), generator)
        order = torch.empty(self.num_samples, dtype=torch.long)
        order[layout] = pos_stream
        order[~layout] = neg_stream
        return iter(order.tolist())


def _cycle(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` items of ``pool``: whole shuffled passes, then part of one more."""
    if count == 0:
        return pool[:0]
    passes = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(math.ceil(count / len(pool)))]
    return torch.cat(passes)[:count]


def block_items(item_bytes: int, block_bytes: int = 8 << 20) -> int:
    """Items per read block: as many whole items as fit in ``block_bytes`` (at least 1).

    8 MiB holds 81 items at 320 px (100 KiB each) and 36 at 480 px: large enough that
    one read per block runs at the disk's sequential speed, small enough that a window
    of a few blocks stays far below memory.
    """
    return max(1, int(block_bytes) // max(1, int(item_bytes)))


class _EpochSeeded(Sampler[int]):
    """``n`` items in an order that is a pure function of ``(seed, epoch)``.

    The trainer calls :meth:`set_epoch` before each epoch, so a resumed run gets the order
    an uninterrupted one would have had; every epoch's generator is seeded with
    :meth:`generator` (``seed * 7919 + epoch``).
    """

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def generator(self) -> torch.Generator:
        """This epoch's random generator."""
        return torch.Generator().manual_seed(self.seed * 7919 + self.epoch)


class BlockShuffleSampler(_EpochSeeded):
    """Quasi-random order for a store larger than memory (FFCV's ``QUASI_RANDOM``).

    The ``n`` items are cut into blocks of ``block_size`` consecutive indices; each
    epoch the blocks are shuffled, consecutive shuffled blocks are grouped into windows
    of ``window`` blocks, and the items of each window are shuffled together. Reading a
    memory-mapped store in this order touches one window (``window × block_size``
    items) at a time, so each block can be read ahead sequentially
    (:meth:`~cxrlab.data.cache.ResolutionCache.prefetch_block`) instead of one random
    disk read per item, while a batch still mixes items of ``window`` random places of
    the dataset. With ``n <= block_size * window`` the order is a full permutation.

    Every epoch visits every index exactly once; the order is a pure function of
    ``(seed, epoch)`` (the same derivation as
    :class:`EpochShuffleSampler`), so a resumed run that calls
    :meth:`set_epoch` gets the order an uninterrupted run would have had.

    Args:
        n: Number of items.
        block_size: Consecutive items per block (see :func:`block_items`).
        seed: Base seed.
        window: Blocks whose items are mixed together.
        shuffle: False keeps the natural order.

    Raises:
        ConfigError: ``n`` negative, ``block_size`` or ``window`` below 1.
    """

    def __init__(self, n: int, block_size: int, seed: int = 0, window: int = 4,
                 shuffle: bool = True) -> None:
        if int(n) < 0:
            raise ConfigError("sampler.n", f"must be >= 0, got {n}")
        if int(block_size) < 1 or int(window) < 1:
            raise ConfigError("sampler.block_size", f"block_size and window must be >= 1, "
                                                    f"got {block_size} and {window}")
        super().__init__(n, seed, shuffle)
        self.block_size = int(block_size)
        self.window = int(window)

    def order(self) -> np.ndarray:
        """This epoch's order as an int64 array."""
        if not self.shuffle or self.n == 0:
            return np.arange(self.n, dtype=np.int64)
        generator = self.generator()
        n_blocks = math.ceil(self.n / self.block_size)
        blocks = torch.randperm(n_blocks, generator=generator).numpy()
        parts = []
        for w in range(0, n_blocks, self.window):
            items = np.concatenate([np.arange(b * self.block_size,
                                              min(self.n, (b + 1) * self.block_size))
                                    for b in blocks[w:w + self.window]])
            parts.append(items[torch.randperm(len(items), generator=generator).numpy()])
        return np.concatenate(parts).astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())


class EpochShuffleSampler(_EpochSeeded):
    """Shuffles ``n`` items with a permutation fixed by (seed, epoch).

    The trainer calls :meth:`set_epoch` before each epoch, so a resumed run gets the
    order an uninterrupted one would have had. Under DDP wrap it in
    :class:`ShardedSampler`: every rank draws the same permutation and takes its slice.

    Args:
        n: Number of items.
        seed: Base seed.
        shuffle: False keeps the natural order.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(n, seed, shuffle)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(torch.randperm(self.n, generator=self.generator()).tolist())


def shard_order(order: Sequence[int], num_replicas: int, rank: int, block: int = 1) -> list[int]:
    """Rank ``rank``'s part of an epoch ``order`` shared by ``num_replicas`` ranks.

    The order is cut into blocks of ``block`` consecutive indices (a batch of a
    :class:`PositiveShareSampler` stays whole), padded at the end by repeating its own
    first blocks until every rank gets the same number of blocks (DDP steps in
    lockstep), and rank ``r`` takes blocks ``r, r + num_replicas, ...``. Together the
    ranks cover exactly the items of ``order``, plus the repeated padding.

    Example:
        >>> shard_order(list(range(5)), 2, 0), shard_order(list(range(5)), 2, 1)
        ([0, 2, 4], [1, 3, 0])
    """
    if num_replicas < 1 or not 0 <= rank < num_replicas or block < 1:
        raise ConfigError("sampler.shard", f"need num_replicas >= 1, 0 <= rank < num_replicas and block >= 1, "
                                           f"got {num_replicas}, {rank}, {block}")
    order = list(order)
    if not order:
        return []
    blocks = [order[i:i + block] for i in range(0, len(order), block)]
    per_rank = math.ceil(len(blocks) / num_replicas)
    padded = blocks + [blocks[i % len(blocks)] for i in range(per_rank * num_replicas - len(blocks))]
    return [item for chunk in padded[rank::num_replicas] for item in chunk]


class ShardedSampler(Sampler[int]):
    """This rank's slice of another sampler's epoch order (the same on every rank).

    The wrapped sampler must give every rank the same order (a seeded generator, or a
    pure function of seed and epoch such as :class:`EpochShuffleSampler`); each rank
    then keeps its blocks of it (:func:`shard_order`), so the items of an epoch over all
    ranks are those one process would see. Rank and world size are read when iterated,
    from the initialised process group (one process: the wrapped order unchanged), so
    loaders can be built before the trainer starts the group. Trainers that use it must
    not add their own distributed sampler (Lightning: ``use_distributed_sampler=False``).

    Args:
        sampler: The sampler of the whole epoch.
        block: Consecutive indices kept together (the micro-batch size of a sampler
            that composes whole batches, else 1).
        num_replicas: World size (default: the process group's).
        rank: This rank (default: the process group's).
    """

    def __init__(self, sampler: Sampler[int], block: int = 1, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        self.sampler = sampler
        self.block = int(block)
        self.num_replicas = num_replicas
        self.rank = rank

    def _world(self) -> tuple[int, int]:
        size, rank = 1, 0
        if dist.is_available() and dist.is_initialized():
            size, rank = dist.get_world_size(), dist.get_rank()
        return (self.num_replicas if self.num_replicas is not None else size,
                self.rank if self.rank is not None else rank)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        size, rank = self._world()
        if size == 1:
            return len(self.sampler)
        return len(shard_order(range(len(self.sampler)), size, rank, self.block))

    def __iter__(self) -> Iterator[int]:
        size, rank = self._world()
        if size == 1:
            return iter(self.sampler)
        return iter(shard_order(list(self.sampler), size, rank, self.block))
