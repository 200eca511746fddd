"""Validation accumulators that the engine's modules share, including the gather across ranks.

The pattern is MONAI's ``Cumulative`` / ``ROCAUCMetric``: a module appends per-item values
at every validation step, :meth:`Cumulative.aggregate` returns them for the whole
validation set, :meth:`Cumulative.reset` empties the buffers for the next epoch. Metrics
are then computed by the pure functions of :mod:`cxrlab.metrics` on the aggregated
arrays, so they never depend on how the items were batched or spread over processes.

Under DDP every rank sees its shard of the validation items, and samplers pad the shards
to equal length by repeating items (:class:`torch.utils.data.DistributedSampler`,
:class:`cxrlab.data.samplers.ShardedSampler`). Each appended value therefore carries
the dataset row of its item (the batch's ``index``); :meth:`Cumulative.aggregate`
gathers every rank's buffers and keeps each row once (:func:`first_per_index`), so the
metrics equal those one process computes on the whole split.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist

from cxrlab.engine.distributed import world
from cxrlab.errors import ConfigError


def first_per_index(index: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of every distinct value of ``index``, by value.

    ``values[first_per_index(index)]`` keeps each item once, in ascending row order.

    Example:
        >>> first_per_index(np.array([4, 1, 4, 0]))
        array([3, 1, 0])
    """
    _, first = np.unique(np.asarray(index), return_index=True)
    return first


class Cumulative:
    """Per-item buffers of one validation pass: ``append(index, **values)``, then ``aggregate()``.

    Every call appends one value per item for each name (a tensor whose first dimension
    is the batch); the names must be the same at every call. Values are detached and
    moved to the CPU as they come, so buffers never hold device memory or graphs.

    Example:
        >>> acc = Cumulative()
        >>> acc.append(torch.tensor([2, 0]), prob=torch.tensor([0.75, 0.25]))
        >>> acc.append(torch.tensor([1, 2]), prob=torch.tensor([0.5, 0.75]))   # 2 repeated
        >>> out = acc.aggregate()
        >>> out["index"].tolist(), out["prob"].tolist()
        ([0, 1, 2], [0.25, 0.5, 0.75])
    """

    def __init__(self) -> None:
        self._index: list[np.ndarray] = []
        self._values: dict[str, list[np.ndarray]] = {}

    def reset(self) -> None:
        """Empty the buffers (call at the start of every validation pass)."""
        self._index, self._values = [], {}

    def __len__(self) -> int:
        """Items appended on this rank (repeats included)."""
        return int(sum(len(i) for i in self._index))

    def append(self, index: torch.Tensor | np.ndarray, **values: torch.Tensor | np.ndarray) -> None:
        """Add one batch: the dataset rows ``index`` (B,) and per-item ``values`` (B, ...).

        Raises:
            ConfigError: A value's first dimension is not B, or the names differ from earlier calls.
        """
        rows = _numpy(index).astype(np.int64).reshape(-1)
        if self._index and set(values) != set(self._values):
            raise ConfigError("Cumulative.append", f"values {sorted(values)} differ from the first call's "
                                                   f"{sorted(self._values)}")
        for name, value in values.items():
            array = _numpy(value)
            if array.shape[:1] != rows.shape:
                raise ConfigError("Cumulative.append", f"{name!r} has {array.shape[:1]} items, index has {len(rows)}")
            self._values.setdefault(name, []).append(array)
        self._index.append(rows)

    def local(self) -> dict[str, np.ndarray]:
        """This rank's buffers concatenated (``index`` and every value), repeats kept."""
        out = {"index": np.concatenate(self._index) if self._index else np.zeros(0, np.int64)}
        for name, parts in self._values.items():
            out[name] = np.concatenate(parts)
        return out

    def aggregate(self) -> dict[str, np.ndarray]:
        """Every rank's items, each dataset row once, sorted by row.

        A collective under DDP: every rank must call it (also one whose buffers are empty).
        """
        mine = self.local()
        size, _ = world()
        if size > 1:
            parts: list[Mapping[str, np.ndarray] | None] = [None] * size
            dist.all_gather_object(parts, mine)
            mine = merge([p for p in parts if p is not None])
        keep = first_per_index(mine["index"])
        return {name: array[keep] for name, array in mine.items()}


def merge(parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the buffers of several ranks (names of the non-empty ones)."""
    filled = [p for p in parts if len(p["index"])]
    if not filled:
        return dict(parts[0]) if parts else {"index": np.zeros(0, np.int64)}
    names = list(filled[0])
    return {name: np.concatenate([np.asarray(p[name]) for p in filled]) for name in names}


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if torch.is_tensor(value):
        value = value.detach().cpu()
        return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()
    return np.asarray(value)
