"""Batched inference for the service: concurrent requests' images in one model call.

A :class:`Batcher` owns one background thread and a queue. Callers (the service's worker
threads, after they decoded and preprocessed an upload) :meth:`~Batcher.submit` an item and
get a :class:`concurrent.futures.Future`; the thread takes the oldest waiting item, keeps
collecting until ``max_batch`` items are together or ``wait_s`` has passed since that
oldest item arrived (whichever comes first), calls ``run_batch(items)`` once, and resolves
each future with its own result (results are matched to items by position, never by
arrival). So a request waits at most the wait bound plus the batch in front of it, as long
as requests arrive no faster than the models answer them.

One item's error does not fail its batch-mates: when ``run_batch`` raises for a batch of
several items, each item is run again alone and only the ones that fail get the error.
:meth:`~Batcher.close` stops taking items, finishes every item already queued (drains)
and joins the thread. :meth:`~Batcher.stats` gives the batch sizes and queue waits for the
service's health endpoint.

``max_batch=1`` runs each item alone, in arrival order: the unbatched service.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RECENT = 1024
"""How many recent queue waits and batch times :meth:`Batcher.stats` summarises."""


class BatcherClosedError(RuntimeError):
    """An item was submitted after :meth:`Batcher.close` (the service is shutting down)."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()


class Batcher(Generic[T, R]):
    """Gather items from many threads into batches for one model call (see the module).

    Args:
        run_batch: Maps a list of items to the list of their results, in the same order
            and of the same length. Runs in the batcher's thread only.
        max_batch: Most items per call (1: no batching).
        wait_s: Longest time the oldest waiting item is held back for batch-mates.
        name: The thread's name (logs).

    Raises:
        ConfigError: ``max_batch`` below 1 or a negative ``wait_s``.
    """

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R]], max_batch: int, wait_s: float,
                 name: str = "cxrlab-batcher") -> None:
        if max_batch < 1:
            raise ConfigError("max_batch", f"must be at least 1, got {max_batch}")
        if not wait_s >= 0:
            raise ConfigError("batch_wait_ms", f"must be zero or positive, got {wait_s * 1000:g} ms")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.wait_s = float(wait_s)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._submit_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._sizes: Counter[int] = Counter()
        self._waits: deque[float] = deque(maxlen=RECENT)
        self._batch_times: deque[float] = deque(maxlen=RECENT)
        self._isolated = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        """Queue one item; the future gets its result or the exception it raised.

        Raises:
            BatcherClosedError: After :meth:`close`.
        """
        pending: _Pending[T, R] = _Pending(item)
        with self._submit_lock:
            if self._closed:
                raise BatcherClosedError("the batcher is closed (the service is shutting down)")
            self._queue.put(pending)
        return pending.future

    def __call__(self, item: T) -> R:
        """Submit one item and wait for its result (for worker threads)."""
        return self.submit(item).result()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking items, finish the queued ones, join the thread (idempotent)."""
        with self._submit_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Batch sizes and recent queue waits / batch times (milliseconds)."""
        with self._stats_lock:
            sizes = dict(sorted(self._sizes.items()))
            waits = np.array(self._waits, dtype=float) * 1000.0
            times = np.array(self._batch_times, dtype=float) * 1000.0
            isolated = self._isolated
        batches = sum(sizes.values())
        images = sum(size * count for size, count in sizes.items())

        def summary(values: np.ndarray) -> dict[str, float] | None:
            if not len(values):
                return None
            return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2),
                    "max": round(float(values.max()), 2)}

        return {"max_batch": self.max_batch, "wait_ms": round(self.wait_s * 1000.0, 3), "batches": batches,
                "images": images, "mean_batch": round(images / batches, 3) if batches else None,
                "batch_sizes": {str(size): count for size, count in sizes.items()},
                "queue_wait_ms": summary(waits), "batch_ms": summary(times), "queued": self._queue.qsize(),
                "isolated_retries": isolated}

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        try:
            self._serve()
        finally:      # normally after the stop; also if run_batch raised a BaseException (a native panic)
            with self._submit_lock:
                self._closed = True
            while True:
                try:
                    left = self._queue.get_nowait()
                except queue.Empty:
                    break
                if left is not _STOP and left.future.set_running_or_notify_cancel():
                    left.future.set_exception(BatcherClosedError("the batcher stopped before this item ran"))

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = first.enqueued + self.wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True        # everything queued before the stop is in this batch
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[_Pending[T, R]]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            self._call(live)
        except BaseException as err:   # not an Exception (a native panic): fail the batch, stop the batcher
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(err)
            log.error("the batcher stopped: %r", err)
            raise

    def _call(self, live: list[_Pending[T, R]]) -> None:
        started = time.monotonic()
        try:
            results = list(self.run_batch([p.item for p in live]))
            if len(results) != len(live):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
        except Exception as err:   # noqa: BLE001 - handed to the waiting callers, never swallowed
            if len(live) == 1:
                live[0].future.set_exception(err)
                self._record(live, started)
                return
            log.warning("a batch of %d failed (%s); running its items one by one", len(live), err)
            with self._stats_lock:
                self._isolated += 1
            for pending in live:
                self._call([pending])       # alone: only the failing item gets its error
            return
        self._record(live, started)
        for pending, result in zip(live, results):
            pending.future.set_result(result)

    def _record(self, batch: list[_Pending[T, R]], started: float) -> None:
        with self._stats_lock:
            self._sizes[len(batch)] += 1
            self._waits.extend(started - p.enqueued for p in batch)
            self._batch_times.append(time.monotonic() - started)


__all__ = ["Batcher", "BatcherClosedError"]
