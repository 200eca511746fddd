"""Decoding uploads in child processes, so that a decoder that dies does not take the service along.

The readers of :mod:`cxrlab.io` turn every exception a parser or codec raises into an
:class:`~cxrlab.errors.InputError`, Rust panics included. What no ``except`` can stop is a
native codec that ends its process: a segmentation fault, an ``abort()`` (a panic in a
crate built with ``panic = "abort"``, a failed assertion in C), or the kernel's memory
killer. :class:`DecodePool` therefore runs :func:`~cxrlab.io.read_image` in a few
long-lived child processes (started with ``spawn``, so nothing of the service's threads,
models or sockets is inherited), each one file at a time:

- each child caps its address space (``RLIMIT_AS``) at its size after its imports plus
  ``memory_mb``, so a decoder that allocates without bound fails in the child;
- a file that takes longer than ``timeout_s`` has its child killed;
- a child that dies, or is killed for taking too long, is replaced by a fresh one and the
  file that was being read gets an :class:`~cxrlab.errors.ImageReadError` naming it (the
  service answers 422). One child reads one file at a time, so the file named is the one
  that killed it, never a bystander.

A timeout is a 422 and not a 503: it is measured from the moment a child starts reading
the file (waiting for a free child does not count), the limit is far above what a
radiograph takes to decode, so a file that exceeds it is slow because of what it holds,
and sending it again would only tie up another child for as long.

``workers=0`` decodes in the calling process (tests, development): the same errors, but a
native crash then ends the service.

Example:
    >>> with DecodePool(workers=2, max_pixels=50_000_000) as pool:  # doctest: +SKIP
    ...     image = pool.read("upload.dcm")          # blocking, thread-safe
    ...     image = await pool.aread("upload.dcm")   # from a coroutine
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
import threading
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cxrlab.errors import CxrlabError, ImageReadError, ImageTooLargeError
from cxrlab.io import DEFAULT_MAX_PIXELS, XrayImage, read_image
from cxrlab.io.limits import limit_address_space

log = logging.getLogger(__name__)

#: ``decode(path, max_pixels) -> XrayImage``; in a child it must be picklable (a module-level
#: function), since ``spawn`` sends it by reference.
DecodeFn = Callable[[Path, int], XrayImage]
#: Seconds a fresh child may take for its imports before it answers (the first file waits).
START_TIMEOUT_S = 120.0


def decode_file(path: Path, max_pixels: int) -> XrayImage:
    """The default decode function: :func:`cxrlab.io.read_image` with the pixel limit."""
    return read_image(path, max_pixels=max_pixels)


class DecodePool:
    """A few child processes that decode image files; thread-safe and async-friendly.

    Args:
        workers: Child processes; 0 decodes in the calling process.
        max_pixels: Largest image decoded (``read_image``'s ``max_pixels``).
        memory_mb: Address space each child may add after its imports (``RLIMIT_AS``).
        timeout_s: Seconds one file may take in a child before the child is killed.
        decode: The decode function (a test hook: one that crashes its process).
        start_method: ``multiprocessing`` start method of the children.
    """

    def __init__(self, workers: int = 2, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 memory_mb: int = 4096, timeout_s: float = 60.0, decode: DecodeFn = decode_file,
                 start_method: str = "spawn") -> None:
        if workers < 0 or memory_mb < 1 or timeout_s <= 0:
            raise ValueError(f"DecodePool needs workers >= 0, memory_mb >= 1 and timeout_s > 0, "
                             f"got {workers}, {memory_mb}, {timeout_s}")
        self.workers = workers
        self.max_pixels = max_pixels
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._decode = decode
        self._context = multiprocessing.get_context(start_method)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._closed = False
        for _ in range(workers):
            self._idle.put(self._start())

    def read(self, path: str | Path) -> XrayImage:
        """Decode one file (blocks until a child is free and has read it).

        Raises:
            InputError: What :func:`~cxrlab.io.read_image` raises for the file, or an
                :class:`~cxrlab.errors.ImageReadError` when the child reading it died or
                ran past ``timeout_s``.
            RuntimeError: The pool is closed, or a fresh child did not start.
        """
        path = Path(path)
        if self.workers == 0:
            return self._decode(path, self.max_pixels)
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        worker = self._idle.get()
        if not worker.alive:  # stopped by close()
            self._idle.put(worker)
            raise RuntimeError("the decode pool is closed")
        try:
            return worker.read(path, self.max_pixels, self.timeout_s)
        finally:
            if not worker.alive:
                worker = self._replace(worker)
            self._idle.put(worker)

    async def aread(self, path: str | Path) -> XrayImage:
        """:meth:`read` from a coroutine, without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.read, path)

    def close(self) -> None:
        """Stop every child (idempotent). Call it once the reads have returned: a child
        still reading gets two seconds, then it is killed and its read fails."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._all)
        for worker in workers:
            worker.stop()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> _Worker:
        worker = _Worker(self._context, self._decode, self.memory_mb)
        with self._lock:
            self._all.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            closed = self._closed
        return worker if closed else self._start()


class _Worker:
    """One child process and the pipe to it; used by one thread at a time."""

    def __init__(self, context: Any, decode: DecodeFn, memory_mb: int) -> None:
        self._conn, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, decode, memory_mb),
                                       name="cxrlab-decode", daemon=True)
        self.process.start()
        child_end.close()
        self._ready = False
        self.alive = True

    def read(self, path: Path, max_pixels: int, timeout_s: float) -> XrayImage:
        if not self._ready:
            self._wait_ready()
        try:
            self._conn.send((str(path), max_pixels))
            answered = self._conn.poll(timeout_s)
        except OSError:
            answered = True  # a broken pipe: the child is gone, recv says so
        if not answered:
            self.stop(force=True)
            log.warning("decode worker %s killed after %.0f s on %s", self.process.pid, timeout_s, path)
            raise ImageReadError(path, f"decoding took longer than {timeout_s:g} s (the service's "
                                       "decode_timeout_s); the decoder process was stopped")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self.alive = False
            self.process.join(timeout=5.0)
            ended = _describe_exit(self.process.exitcode)
            log.warning("decode worker %s %s while reading %s", self.process.pid, ended, path)
            raise ImageReadError(path, f"the decoder process {ended} while reading this file (a crash "
                                       "in a native codec, or its memory limit)") from None
        if kind == "image":
            return payload
        raise payload

    def _wait_ready(self) -> None:
        try:
            ready = self._conn.poll(START_TIMEOUT_S) and self._conn.recv() == ("ready", None)
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.stop()
            raise RuntimeError("a decode worker did not start: it "
                               + (_describe_exit(self.process.exitcode) if self.process.exitcode is not None
                                  else f"did not answer within {START_TIMEOUT_S:.0f} s"))
        self._ready = True

    def stop(self, force: bool = False) -> None:
        """Ask the child to end, then kill it if it has not; a child still busy (``force``)
        or still importing is killed at once."""
        self.alive = False
        if self.process.is_alive() and not force and self._ready:
            try:
                self._conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5.0)
        self._conn.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not end"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def _serve(conn: Connection, decode: DecodeFn, memory_mb: int) -> None:
    """The child: cap the address space, then decode the paths the pipe sends until ``None``."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    limit_address_space(memory_mb)
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the service is gone
        if job is None:
            return
        path, max_pixels = Path(job[0]), job[1]
        try:
            answer: tuple[str, Any] = ("image", decode(path, max_pixels))
        except CxrlabError as err:
            answer = ("error", err)
        except MemoryError:
            answer = ("error", ImageTooLargeError(path, f"decoding needs more memory than a decode "
                                                        f"worker may use ({memory_mb} MiB)"))
        except Exception as err:  # noqa: BLE001 - a programming error: re-raised in the service
            answer = ("error", RuntimeError(f"decode worker: {type(err).__name__}: {err}"))
        try:
            conn.send(answer)
        except MemoryError:
            conn.send(("error", ImageTooLargeError(path, "the decoded image is too large to send "
                                                         f"back within the decode worker's {memory_mb} MiB")))
        except Exception as err:  # noqa: BLE001 - an answer that does not pickle
            conn.send(("error", RuntimeError(f"decode worker: cannot send the answer back: "
                                             f"{type(err).__name__}: {err}")))
