"""Where the runs of a study execute: in this process, a local process pool, or Ray.

Every executor has the same small interface: :meth:`Executor.run` takes a picklable
module-level function and ``(key, payload)`` items, calls ``fn(payload)`` for each, and
yields :class:`TaskEvent` objects (``started``, ``finished`` with the return value,
``failed`` with the error text) as they happen. At most ``max_parallel`` calls are in
flight. The study runner (:mod:`cxrlab.tasks.scaling.run`) turns those events into
result files and progress; executors know nothing about training.

* :class:`InlineExecutor` — serial, in this process (tests, debugging).
* :class:`LocalExecutor` — a pool of worker processes (``spawn``, one fresh process per
  run so a run's memory, GPU memory included, is returned when it ends). With ``gpus``
  each in-flight run gets one GPU through ``CUDA_VISIBLE_DEVICES``.
* :class:`RayExecutor` — Ray core tasks, on a local Ray instance when no address is
  given (``ray.init(num_cpus=..., include_dashboard=False)``), or on a running cluster
  (``ray.init(address="auto" | "ray://head:10001" | "head:6379")``). Ray gives every task
  its GPUs through ``CUDA_VISIBLE_DEVICES``.

A :class:`KeyboardInterrupt` (Ctrl-C) in the driver stops submitting, cancels what is
in flight and propagates; runs cut short are re-run (resumed) by the next invocation.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "inline")


@dataclass(frozen=True)
class TaskEvent:
    """Something that happened to one item.

    Attributes:
        kind: ``"started"``, ``"finished"`` or ``"failed"``.
        key: The item's key.
        result: The function's return value (``finished`` only).
        error: ``"ExceptionType: message"`` (``failed`` only).
        detail: The traceback text where one is available (``failed`` only).
    """

    kind: str
    key: str
    result: Any = None
    error: str | None = None
    detail: str | None = None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class Executor:
    """Base class: runs ``fn(payload)`` for ``(key, payload)`` items, yields events."""

    name = "base"
    max_parallel = 1

    def run(self, fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]]) -> Iterator[TaskEvent]:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (and a Ray instance this executor started)."""

    def describe(self) -> str:
        """One line for logs and the CLI."""
        return f"{self.name} ({self.max_parallel} in parallel)"

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs items one after another in this process.

    An exception of a run becomes a ``failed`` event; :class:`KeyboardInterrupt` and
    :class:`SystemExit` propagate (the study stops).
    """

    name = "inline"

    def run(self, fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]]) -> Iterator[TaskEvent]:
        for key, payload in items:
            yield TaskEvent("started", key)
            try:
                result = fn(payload)
            except Exception as err:  # one failed run must not stop the study
                yield TaskEvent("failed", key, error=_describe(err), detail=traceback.format_exc())
                continue
            yield TaskEvent("finished", key, result=result)


def _call_with_env(fn: Callable[[Any], Any], env: dict[str, str], threads: int | None, payload: Any,
                   log_path: str | None = None) -> Any:
    """Worker-side wrapper: environment (GPU, threads) and console output, then ``fn(payload)``."""
    import sys

    if log_path:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.environ.update(env)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return fn(payload)


def _invoke(fn: Callable[[Any], Any], payload: Any) -> Any:
    """Ray task body: ``fn(payload)`` (Ray can only wrap Python functions, not builtins)."""
    return fn(payload)


class LocalExecutor(Executor):
    """A pool of ``max_parallel`` worker processes on this machine.

    Args:
        max_parallel: Runs at once.
        gpus: GPU ids (``["0", "1"]``); each in-flight run gets
            ``CUDA_VISIBLE_DEVICES=gpus[slot % len(gpus)]``. None leaves the
            environment as it is (one GPU, or CPU).
        threads_per_run: Torch intra-op threads per worker (default: the machine's
            cores divided by ``max_parallel``, so parallel CPU runs do not oversubscribe).
        log_dir: Send each worker's console output (Lightning's messages, warnings) to
            ``log_dir/<key>.log`` instead of this terminal.
    """

    name = "local"

    def __init__(self, max_parallel: int = 1, gpus: list[str] | None = None,
                 threads_per_run: int | None = None, log_dir: str | os.PathLike | None = None) -> None:
        if max_parallel < 1:
            raise ConfigError("--max-parallel", f"must be at least 1, got {max_parallel}")
        self.max_parallel = int(max_parallel)
        self.gpus = [str(g) for g in gpus] if gpus else None
        cores = os.cpu_count() or 1
        self.threads_per_run = threads_per_run or max(1, cores // self.max_parallel)
        self.log_dir = os.fspath(log_dir) if log_dir is not None else None
        self._pool: cf.ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.max_parallel,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=1,
            )
        return self._pool

    def run(self, fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]]) -> Iterator[TaskEvent]:
        pool = self._ensure_pool()
        pending = iter(items)
        in_flight: dict[cf.Future, tuple[str, int, cf.ProcessPoolExecutor]] = {}
        free_slots = list(range(self.max_parallel))
        try:
            while True:
                while free_slots and (item := next(pending, None)) is not None:
                    key, payload = item
                    slot = free_slots.pop(0)
                    env = {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]} if self.gpus else {}
                    log_path = os.path.join(self.log_dir, f"{key}.log") if self.log_dir else None
                    future = pool.submit(_call_with_env, fn, env, self.threads_per_run, payload, log_path)
                    in_flight[future] = (key, slot, pool)
                    yield TaskEvent("started", key)
                if not in_flight:
                    return
                done, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
                for future in done:
                    key, slot, owner = in_flight.pop(future)
                    free_slots.append(slot)
                    err = future.exception()
                    if err is None:
                        yield TaskEvent("finished", key, result=future.result())
                    else:
                        detail = "".join(traceback.format_exception(err))
                        yield TaskEvent("failed", key, error=_describe(err), detail=detail)
                        if isinstance(err, cf.process.BrokenProcessPool) and owner is self._pool:
                            # A worker died (killed, out of memory): the pool is unusable;
                            # start a fresh one (its other runs fail and are re-run later).
                            self.close(wait=False)
                            pool = self._ensure_pool()
        except BaseException:
            for future in in_flight:
                future.cancel()
            self.close(wait=False)
            raise

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        gpus = f", GPUs {','.join(self.gpus)}" if self.gpus else ""
        return f"local process pool ({self.max_parallel} in parallel{gpus})"


class RayExecutor(Executor):
    """Ray core tasks on a local instance or a cluster.

    Args:
        address: None starts a local Ray instance; otherwise what :func:`ray.init`
            accepts (``"auto"`` to join the cluster this machine belongs to,
            ``"ray://head:10001"`` for Ray Client, ``"head:6379"``).
        max_parallel: Runs in flight at once; default: as many as the cluster's CPUs
            (or GPUs, when ``num_gpus_per_run > 0``) hold.
        num_cpus_per_run: CPUs Ray reserves per run (data-loading workers need some).
        num_gpus_per_run: GPUs per run (1 on a GPU cluster; fractions share a GPU).
        local_num_cpus: CPUs of a local instance (None: all; tests use 2).
        runtime_env: Ray runtime environment (e.g. ``{"working_dir": "."}``) for
            clusters where cxrlab is not installed on every node.
        init_kwargs: Further keyword arguments of :func:`ray.init`.
    """

    name = "ray"

    def __init__(self, address: str | None = None, max_parallel: int | None = None,
                 num_cpus_per_run: float = 1.0, num_gpus_per_run: float = 0.0,
                 local_num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError as err:  # pragma: no cover - make test installs every extra
            raise ConfigError("--executor ray", "Ray is not installed: pip install 'cxrlab[ray]'") from err
        if num_cpus_per_run <= 0 or num_gpus_per_run < 0:
            raise ConfigError("ray", f"num_cpus_per_run must be > 0 and num_gpus_per_run >= 0, got "
                                     f"{num_cpus_per_run} and {num_gpus_per_run}")
        self._ray = ray
        self._started = False
        self.address = address
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, **(init_kwargs or {})}
            if runtime_env:
                kwargs["runtime_env"] = runtime_env
            if address:
                ray.init(address=address, **kwargs)
            else:
                kwargs.setdefault("include_dashboard", False)
                ray.init(num_cpus=local_num_cpus, **kwargs)
            self._started = True
        resources = ray.cluster_resources()
        self.num_cpus_per_run = float(num_cpus_per_run)
        self.num_gpus_per_run = float(num_gpus_per_run)
        if max_parallel is None:
            if self.num_gpus_per_run > 0:
                max_parallel = int(resources.get("GPU", 0) // self.num_gpus_per_run)
            else:
                max_parallel = int(resources.get("CPU", 1) // self.num_cpus_per_run)
        if max_parallel < 1:
            raise ConfigError("ray", f"the cluster ({resources}) cannot hold one run of "
                                     f"{num_cpus_per_run} CPU and {num_gpus_per_run} GPU")
        self.max_parallel = int(max_parallel)
        self.resources = resources

    def run(self, fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]]) -> Iterator[TaskEvent]:
        ray = self._ray
        remote = ray.remote(num_cpus=self.num_cpus_per_run, num_gpus=self.num_gpus_per_run,
                            max_retries=1)(_invoke)
        pending = iter(items)
        in_flight: dict[Any, str] = {}
        try:
            while True:
                while len(in_flight) < self.max_parallel and (item := next(pending, None)) is not None:
                    key, payload = item
                    in_flight[remote.remote(fn, payload)] = key
                    yield TaskEvent("started", key)
                if not in_flight:
                    return
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    key = in_flight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as err:  # RayTaskError wraps the run's exception
                        cause = getattr(err, "cause", None) or err
                        yield TaskEvent("failed", key, error=_describe(cause), detail=str(err))
                        continue
                    yield TaskEvent("finished", key, result=result)
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def describe(self) -> str:
        where = self.address or "local Ray instance"
        cpus, gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        return (f"Ray at {where} ({cpus:g} CPU, {gpus:g} GPU; {self.max_parallel} runs in parallel, "
                f"{self.num_cpus_per_run:g} CPU + {self.num_gpus_per_run:g} GPU each)")


def create_executor(name: str, max_parallel: int | None = None, ray_address: str | None = None,
                    gpus: list[str] | None = None, num_cpus_per_run: float = 1.0,
                    num_gpus_per_run: float = 0.0, log_dir: str | os.PathLike | None = None,
                    **ray_options: Any) -> Executor:
    """An executor by name: ``local``, ``ray`` or ``inline`` (``log_dir``: local workers' output).

    Raises:
        ConfigError: Unknown name, or ``--ray-address`` without ``ray``.
    """
    if name not in EXECUTORS:
        raise ConfigError("--executor", f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    if ray_address and name != "ray":
        raise ConfigError("--ray-address", "only used with --executor ray")
    if name == "inline":
        if max_parallel not in (None, 1):
            raise ConfigError("--max-parallel", "the inline executor runs one run at a time")
        return InlineExecutor()
    if name == "local":
        return LocalExecutor(max_parallel or 1, gpus=gpus, log_dir=log_dir)
    return RayExecutor(address=ray_address, max_parallel=max_parallel, num_cpus_per_run=num_cpus_per_run,
                       num_gpus_per_run=num_gpus_per_run, **ray_options)
