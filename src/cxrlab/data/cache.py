"""Resolution cache: every image of a dataset preprocessed once into a memory-mapped store.

Training at 320 px from 2–3k px JPEGs or DICOMs spends most of its time decoding and
resizing. :func:`build_cache` runs :func:`~cxrlab.data.transforms.preprocess` once per
image and writes the results into raw uint8 files that :class:`ResolutionCache` maps
into memory, so a training step reads one ``S × S`` slice and decodes nothing.

A cache folder holds:

``images.u8``
    raw uint8 ``[N, S, S]`` (C order, no header; the shape is in the manifest).
``masks.u8``, ``mask_known.u8``
    only when the dataset has masks: uint8 ``[N, S, S]`` with 0/1 values resized like
    the image (nearest), and uint8 ``[N]`` with 1 where the source had a mask for that
    image (``dataset.mask(i)`` was not ``None``; unknown masks are stored as zeros).
``digests.u64``
    little-endian uint64 ``[N]``: an 8-byte blake2b of every item's cached bytes (image,
    then mask and its known flag), so a check names the damaged items and an
    incremental update re-hashes only what it re-processed.
``sources.json``
    ``{"base": ..., "records": [[relative path, size, mtime_ns], ...]}``: the ordered
    source files relative to ``base``, their common folder at build time (size and
    mtime ``-1`` for a file that could not be stat'ed); with masks each record also
    holds the item's mask source record (:meth:`~cxrlab.data.datasets.base.XrayDataset.mask_records`:
    the mask file's size and mtime, or a digest of its RLE or boxes).
``manifest.json``
    format and cxrlab versions, the preprocessing parameters (``cfg.to_dict()``), the
    dataset (name, pathologies, ``N``, views, masks, its content ``key``), the byte size
    of every data file and the blake2b of ``digests.u64``, the images skipped as
    unreadable and build statistics.

**Identity by content, not location.** A cache belongs to a dataset through
:class:`CacheIdentity`: the source files' paths *relative to their common folder*,
their sizes and modification times, the adapter name, the view selection, masks and
the preprocessing parameters. Moving the data folder, reaching it through a symlink or
from another working directory does not change it; :func:`find_cache` finds a cache
by it in any folder of caches, so ``cxrlab data cache --out DIR`` and a recipe's
``cache: auto`` agree.

**Incremental update.** :func:`ensure_cache` reuses a matching cache as it is (one
``stat`` per source file) and, when files were modified, added or removed, re-processes
those alone (:func:`update_cache`), saying which files changed and how. When the files
and their order are the same and some were only modified, their slots are rewritten in
the cache's own files (kill-safe, see :func:`_update_in_place`); otherwise the unchanged
items are copied into a new build that replaces the old one. Settings that change every item (size, CLAHE, view selection, masks)
are refused with the cause instead.

What :meth:`ResolutionCache.open` validates:

* always: the manifest parses and has this format version; every data file exists
  with exactly the byte size the manifest gives (a missing or truncated file is
  refused); when ``cfg`` is given, its parameters equal the manifest's; when
  ``dataset`` is given, its name, views and relative source paths equal the manifest's,
  and (``check_sources=True``, default) every source file still has the size and
  ``mtime_ns`` recorded at build time (one ``stat`` per file);
* with ``verify=True`` also every item's digest (reads every byte: seconds per GB).

Writes are atomic: a build or an update that adds, removes or reorders files is written
into ``<out>.tmp-XXXX`` beside
``out_dir`` and moved into place with :func:`os.replace` at the end, so ``out_dir``
never holds a half-written cache. A failed or interrupted build removes its temporary
folder (a folder left by a SIGKILLed process can be deleted by hand).

**Reading a cache larger than memory.** Items are read through ``mmap`` with
``MADV_RANDOM`` (no useless read-around) and :meth:`ResolutionCache.prefetch` issues
``MADV_WILLNEED`` over a whole block of contiguous items: with the quasi-random order
of :class:`~cxrlab.data.samplers.BlockShuffleSampler` a block is read from disk in one
sequential sweep instead of one random read per item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrlab import __version__
from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import CacheError, ConfigError, InputError
from cxrlab.utils import atomic_write_text

if TYPE_CHECKING:
    from cxrlab.data.datasets.base import XrayDataset

logger = logging.getLogger(__name__)

FORMAT_NAME = "cxrlab-resolution-cache"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SOURCES = "sources.json"
IMAGES = "images.u8"
MASKS = "masks.u8"
MASK_KNOWN = "mask_known.u8"
DIGESTS = "digests.u64"
MIN_SIZE, MAX_SIZE = 16, 4096

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each finished chunk of images."""

_HASH_CHUNK = 8 << 20
_COPY_ITEMS_BYTES = 64 << 20


def _rebuild_hint(path: Path) -> str:
    return (f"rebuild it with `cxrlab data cache ... --out {path} --overwrite` "
            "(or build_cache(..., overwrite=True))")


def file_blake2b(path: str | Path, chunk: int = _HASH_CHUNK) -> str:
    """Hex blake2b digest of a file's bytes, read in chunks of ``chunk`` bytes."""
    digest = hashlib.blake2b()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def source_records(paths: Iterable[str]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` for every path (``-1, -1`` when it cannot be stat'ed)."""
    records = []
    for path in paths:
        try:
            st = os.stat(path)
            records.append([str(path), int(st.st_size), int(st.st_mtime_ns)])
        except OSError:
            records.append([str(path), -1, -1])
    return records


def fingerprint(rows: Iterable[Sequence[Any]]) -> str:
    """128-bit blake2b over ordered rows of values (e.g. ``[path, size, mtime_ns]``)."""
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        digest.update("\0".join(map(str, row)).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def _cfg_dict(cfg: PreprocessConfig) -> dict[str, Any]:
    """``cfg.to_dict()`` normalised through JSON (tuples become lists) for comparison."""
    return json.loads(json.dumps(cfg.to_dict()))


# --------------------------------------------------------------------------- identity


def _views(dataset: XrayDataset) -> str:
    """``"frontal"`` when every image is a frontal view, else ``"all"``."""
    table = dataset.table
    if "frontal" in table.columns and len(table) and bool(table["frontal"].all()):
        return "frontal"
    return "all"


@dataclass(frozen=True)
class CacheIdentity:
    """What a cache must match, independent of where the data lives.

    Attributes:
        name: Adapter name (``dataset.name``).
        base: Absolute common folder of the source files now (not part of the key).
        records: ``[relative path, size, mtime_ns]`` per image, in dataset order.
        masks: Whether masks are cached.
        views: ``"frontal"`` (every image frontal) or ``"all"``.
        preprocess: The preprocessing parameters (``cfg.to_dict()``, JSON-normalised).
    """

    name: str
    base: str
    records: list[list[Any]] = field(repr=False)
    masks: bool
    views: str
    preprocess: dict[str, Any]

    @property
    def base_name(self) -> str:
        """Last component of ``base`` (CheXpert: ``train`` or ``valid``)."""
        return Path(self.base).name

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def settings_key(self) -> str:
        """Fingerprint of everything but the files: caches with equal settings can be
        updated into one another."""
        return fingerprint([[FORMAT_VERSION, self.name, self.masks, self.views,
                             json.dumps(self.preprocess, sort_keys=True)]])

    @property
    def key(self) -> str:
        """Content fingerprint: the settings and every record."""
        return fingerprint([[self.settings_key], *self.records])

    @property
    def paths_key(self) -> str:
        """Fingerprint of the ordered relative paths alone."""
        return fingerprint([r[0]] for r in self.records)


def dataset_identity(dataset: XrayDataset, cfg: PreprocessConfig,
                     stat: bool = True) -> CacheIdentity:
    """The :class:`CacheIdentity` of ``dataset`` preprocessed with ``cfg`` (one ``stat``
    per source file; ``stat=False`` skips them and records sizes and mtimes as ``-1``,
    enough to compare paths)."""
    paths = [os.path.abspath(str(p)) for p in dataset.table["path"].tolist()]
    if not paths:
        base = ""
    else:
        folders = {p.rpartition(os.sep)[0] or os.sep for p in paths}
        base = os.path.commonpath(list(folders))
    cut = len(base.rstrip(os.sep)) + 1
    records = []
    for path in paths:
        rel = path[cut:]
        if not stat:
            records.append([rel, -1, -1])
            continue
        try:
            st = os.stat(path)
            records.append([rel, int(st.st_size), int(st.st_mtime_ns)])
        except OSError:
            records.append([rel, -1, -1])
    masks = bool(dataset.has_masks())
    if masks and stat:  # a changed mask source (file, RLE, box) changes the item too
        for record, mask in zip(records, dataset.mask_records()):
            record.append(mask)
    return CacheIdentity(name=dataset.name, base=base, records=records, masks=masks,
                         views=_views(dataset), preprocess=_cfg_dict(cfg))


@dataclass
class FileChanges:
    """How a dataset's files differ from a cache's: indices are into the dataset
    (``modified``, ``added``) or the cache (``removed``)."""

    modified: list[int]
    added: list[int]
    removed: list[int]
    reuse: dict[int, int]  # dataset index -> cache index of unchanged items

    @property
    def reprocess(self) -> list[int]:
        return sorted(self.modified + self.added)

    def describe(self, identity: CacheIdentity, cached: list[list[Any]], limit: int = 3) -> str:
        """``"2 modified (a.jpg, b.jpg), 1 added (c.jpg)"``; '' when nothing changed."""
        parts = []
        modified = ("modified (size, modification time or mask source)" if identity.masks
                    else "modified (size or modification time)")
        for label, items, rows in ((modified, self.modified, identity.records),
                                   ("added", self.added, identity.records),
                                   ("removed", self.removed, cached)):
            if items:
                names = ", ".join(rows[i][0] for i in items[:limit])
                more = f" and {len(items) - limit} more" if len(items) > limit else ""
                parts.append(f"{len(items)} {label}: {names}{more}")
        return "; ".join(parts)


def _file_changes(identity: CacheIdentity, cached: list[list[Any]],
                  skipped: set[int]) -> FileChanges:
    old = {row[0]: k for k, row in enumerate(cached)}
    modified: list[int] = []
    added: list[int] = []
    reuse: dict[int, int] = {}
    seen = set()
    for i, row in enumerate(identity.records):
        k = old.get(row[0])
        if k is None:
            added.append(i)
            continue
        seen.add(k)
        if list(cached[k]) != list(row):
            modified.append(i)
        else:  # unchanged (an unreadable one stays skipped: its file did not change)
            reuse[i] = k
    removed = [k for k in range(len(cached)) if k not in seen]
    return FileChanges(modified, added, removed, reuse)


# --------------------------------------------------------------------------- building


def _slot_digest(images: np.ndarray, masks: np.ndarray | None, known: np.ndarray | None,
                 i: int) -> int:
    digest = hashlib.blake2b(images[i].tobytes(), digest_size=8)
    if masks is not None:
        digest.update(masks[i].tobytes())
        digest.update(bytes([int(known[i])]))
    return int.from_bytes(digest.digest(), "little")


class _ChunkWriter:
    """Preprocesses chunks of images straight into the memory maps of a build folder.

    One instance lives in each worker process (or in the caller for ``workers=1``).
    """

    def __init__(self, dataset: XrayDataset, cfg: PreprocessConfig, folder: str,
                 n: int, with_masks: bool, stop_on_error: bool) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.stop_on_error = stop_on_error
        shape = (n, cfg.size, cfg.size)
        folder_path = Path(folder)
        self.images = np.memmap(folder_path / IMAGES, dtype=np.uint8, mode="r+", shape=shape)
        self.digests = np.memmap(folder_path / DIGESTS, dtype="<u8", mode="r+", shape=(n,))
        self.masks = self.mask_known = None
        if with_masks:
            self.masks = np.memmap(folder_path / MASKS, dtype=np.uint8, mode="r+", shape=shape)
            self.mask_known = np.memmap(folder_path / MASK_KNOWN, dtype=np.uint8, mode="r+",
                                        shape=(n,))

    def run(self, indices: Sequence[int]) -> list[tuple[int, type, str | None, str]]:
        """Write every index of ``indices``; return ``(index, error class, source, problem)``
        for the images that could not be read (stopping at the first when raising)."""
        failures: list[tuple[int, type, str | None, str]] = []
        for i in indices:
            try:
                self._write(int(i))
            except InputError as err:  # name the file when the error does not
                source = err.source or str(self.dataset.table["path"].iloc[i])
                failures.append((int(i), type(err), source, err.problem))
                self.images[i] = 0
                if self.masks is not None:
                    self.masks[i] = 0
                    self.mask_known[i] = 0
                if self.stop_on_error:
                    break
            except Exception as err:  # a bug or an unexpected decoder failure: add context
                err.add_note(f"while caching image {i} ({self.dataset.table['path'].iloc[i]})")
                raise
            self.digests[i] = _slot_digest(self.images, self.masks, self.mask_known, int(i))
        self.images.flush()
        self.digests.flush()
        if self.masks is not None:
            self.masks.flush()
            self.mask_known.flush()
        return failures

    def _write(self, i: int) -> None:
        pixels = self.dataset.image(i).pixels
        if self.masks is None:
            self.images[i] = preprocess(pixels, self.cfg)
            return
        mask = self.dataset.mask(i)
        if mask is None:
            self.images[i] = preprocess(pixels, self.cfg)
            self.masks[i] = 0
            self.mask_known[i] = 0
            return
        image, small_mask = preprocess(pixels, self.cfg, mask)
        self.images[i] = image
        self.masks[i] = np.asarray(small_mask) > 0
        self.mask_known[i] = 1


_WORKER: _ChunkWriter | None = None


def _init_worker(*args: Any) -> None:
    # OpenCV's thread settings are left alone: cv2.setNumThreads() deadlocks in a
    # forked child once the parent has used OpenCV's thread pool (e.g. for CLAHE).
    global _WORKER
    _WORKER = _ChunkWriter(*args)


def _run_chunk(indices: Sequence[int]) -> list[tuple[int, type, str | None, str]]:
    if _WORKER is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("cache worker used before its initializer ran")
    return _WORKER.run(indices)


def _allocate(path: Path, nbytes: int) -> None:
    """Create ``path`` with ``nbytes`` zero bytes, reserving the disk space when possible.

    Reserving matters: writing into a sparse memory map on a full disk kills the
    process with SIGBUS instead of raising.
    """
    with open(path, "wb") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, nbytes)
        except OSError as err:
            if err.errno == 28:  # ENOSPC
                raise CacheError(path, f"not enough disk space for {nbytes:,} bytes") from err
            fh.truncate(nbytes)  # file system without fallocate
        except AttributeError:  # pragma: no cover - platforms without posix_fallocate
            fh.truncate(nbytes)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _report(progress: bool | ProgressCallback, done: int, total: int, state: dict) -> None:
    if callable(progress):
        progress(done, total)
    elif progress and done:
        step = max(1, total // 10)
        if done == total or done // step > state.get("logged", -1):
            state["logged"] = done // step
            logger.info("cached %d/%d images", done, total)


def _check_arguments(cfg: PreprocessConfig, workers: int | None, on_error: str) -> int:
    if on_error not in ("raise", "skip"):
        raise ConfigError(None, f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not isinstance(cfg.size, int) or not MIN_SIZE <= cfg.size <= MAX_SIZE:
        raise ConfigError(None, f"cache size must be an integer in [{MIN_SIZE}, {MAX_SIZE}] "
                                f"(typically 160–1024), got {cfg.size!r}")
    workers = max(1, min(8, os.cpu_count() or 1)) if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(None, f"workers must be at least 1, got {workers}")
    return workers


def build_cache(
    dataset: XrayDataset,
    cfg: PreprocessConfig,
    out_dir: str | Path,
    workers: int | None = None,
    progress: bool | ProgressCallback = True,
    on_error: str = "raise",
    overwrite: bool = False,
    chunk_size: int | None = None,
) -> ResolutionCache:
    """Preprocess every image of ``dataset`` once at ``cfg.size`` into ``out_dir``.

    Each image becomes ``preprocess(image.pixels, cfg[, mask])``, bit for bit what
    :class:`~cxrlab.data.torch.ImageDataset` computes without a cache. Worker processes
    write their chunks directly into the memory-mapped files of a temporary folder
    (no arrays travel back to the parent); the folder is moved onto ``out_dir`` in one
    :func:`os.replace`. The output does not depend on ``workers``.

    Args:
        dataset: Any :class:`~cxrlab.data.datasets.base.XrayDataset`. Masks are cached
            when ``dataset.has_masks()``.
        cfg: Preprocessing parameters; typical sizes are 160–1024 px.
        out_dir: Cache folder to create.
        workers: Worker processes; ``None`` = number of CPUs (at most 8); ``1`` runs in
            the calling process.
        progress: ``True`` logs progress through :mod:`logging` every 10 %, ``False``
            stays silent, a callable is called as ``progress(done, total)`` after each
            chunk (the CLI passes one that drives a progress bar).
        on_error: ``"raise"`` aborts on the first unreadable image with its error
            (which names the file) and leaves no ``out_dir``; ``"skip"`` records the
            image in the manifest's ``skipped`` list (its slot stays zero) and goes on.
        overwrite: Replace an existing ``out_dir``; otherwise an existing folder is an
            error (:func:`ensure_cache` reuses or updates one instead).
        chunk_size: Images per task sent to a worker (default: a few tasks per worker,
            at most 32 images each).

    Returns:
        The new cache, opened.

    Raises:
        CacheError: ``out_dir`` exists without ``overwrite``, or the disk is too small.
        ConfigError: A bad ``cfg.size``, ``workers`` or ``on_error``.
        InputError: An unreadable image under ``on_error="raise"`` (e.g.
            :class:`~cxrlab.errors.ImageReadError` naming the file).
    """
    out_dir = Path(out_dir)
    workers = _check_arguments(cfg, workers, on_error)
    if out_dir.exists() and not overwrite:
        raise CacheError(out_dir, "already exists; pass overwrite=True (CLI: --overwrite) "
                                  "to replace it")
    if len(dataset) == 0:
        raise CacheError(out_dir, f"dataset {dataset.name!r} has no images; nothing to cache")
    identity = dataset_identity(dataset, cfg)
    return _write_cache(dataset, cfg, identity, out_dir, None, workers, progress, on_error,
                        chunk_size)


def _write_cache(dataset: XrayDataset, cfg: PreprocessConfig, identity: CacheIdentity,
                 out_dir: Path, reuse: tuple[ResolutionCache, FileChanges] | None,
                 workers: int, progress: bool | ProgressCallback, on_error: str,
                 chunk_size: int | None) -> ResolutionCache:
    """Write a cache of ``dataset`` into a temporary folder and move it onto ``out_dir``;
    with ``reuse`` copy its unchanged items and process the others only."""
    start = time.perf_counter()
    n, size = len(dataset), cfg.size
    with_masks = identity.masks
    paths = [str(p) for p in dataset.table["path"].tolist()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _allocate(tmp / IMAGES, n * size * size)
        _allocate(tmp / DIGESTS, n * 8)
        if with_masks:
            _allocate(tmp / MASKS, n * size * size)
            _allocate(tmp / MASK_KNOWN, n)
        todo = list(range(n))
        kept_skips: list[dict[str, Any]] = []
        copied = 0
        if reuse is not None:
            old, changes = reuse
            copied = _copy_items(old, tmp, n, size, with_masks, changes.reuse)
            todo = changes.reprocess
            old_skipped = {s["index"]: s for s in old.skipped}
            kept_skips = [{**old_skipped[k], "index": i, "path": paths[i]}
                          for i, k in changes.reuse.items() if k in old_skipped]
        failures = _fill(dataset, cfg, tmp, n, with_masks, workers, progress, on_error,
                         chunk_size, todo) if todo else []
        skipped = sorted(kept_skips + _skip_entries(failures, paths, on_error),
                         key=lambda s: s["index"])
        build_seconds = time.perf_counter() - start
        file_info = _file_info(tmp, with_masks)
        (tmp / SOURCES).write_text(json.dumps({"base": identity.base,
                                               "records": identity.records}) + "\n")
        manifest = _manifest(dataset, identity, n, size, file_info, skipped, workers,
                             len(todo), copied, build_seconds)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync(tmp / MANIFEST)
        if reuse is not None:
            reuse[0].close()
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ResolutionCache(out_dir, manifest)


def _skip_entries(failures: list[tuple[int, type, str | None, str]], paths: list[str],
                  on_error: str) -> list[dict[str, Any]]:
    """The manifest's ``skipped`` entries of ``failures``; under ``on_error="raise"`` the
    first failure (by index) is raised instead."""
    if failures and on_error == "raise":
        _i, cls, source, problem = min(failures, key=lambda f: f[0])
        raise cls(source, problem)
    return [{"index": i, "path": paths[i], "problem": f"{cls.__name__}: {problem}"}
            for i, cls, _source, problem in failures]


def _file_info(folder: Path, with_masks: bool) -> dict[str, Any]:
    """fsync the data files of ``folder``; their byte sizes and the digests file's blake2b
    (the manifest's ``files``)."""
    info = {}
    for name in [IMAGES] + ([MASKS, MASK_KNOWN] if with_masks else []) + [DIGESTS]:
        _fsync(folder / name)
        info[name] = {"bytes": (folder / name).stat().st_size}
    info[DIGESTS]["blake2b"] = file_blake2b(folder / DIGESTS)
    return info


def _manifest(dataset: XrayDataset, identity: CacheIdentity, n: int, size: int,
              file_info: dict[str, Any], skipped: list[dict[str, Any]], workers: int,
              processed: int, copied: int, seconds: float) -> dict[str, Any]:
    """The ``manifest.json`` of a finished build or update."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "cxrlab_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {
            "name": dataset.name,
            "n": n,
            "pathologies": list(dataset.pathologies),
            "base": identity.base,
            "base_name": identity.base_name,
            "views": identity.views,
            "masks": identity.masks,
            "key": identity.key,
            "settings_key": identity.settings_key,
            "paths_key": identity.paths_key,
        },
        "preprocess": identity.preprocess,
        "shape": [n, size, size],
        "dtype": "uint8",
        "files": file_info,
        "skipped": skipped,
        "build": {
            "workers": workers,
            "processed": processed,
            "copied": copied,
            "seconds": round(seconds, 3),
            "images_per_second": (round(processed / seconds, 2)
                                  if seconds > 0 and processed else None),
        },
    }


def _in_place(changes: FileChanges, n_cached: int, n: int) -> bool:
    """Whether an update can rewrite the changed items where they are: the dataset lists
    the cache's files in the cache's order and only some were modified."""
    return (n == n_cached and not changes.added and not changes.removed
            and len(changes.reuse) + len(changes.modified) == n
            and all(i == k for i, k in changes.reuse.items()))


def _update_in_place(cache: ResolutionCache, dataset: XrayDataset, cfg: PreprocessConfig,
                     identity: CacheIdentity, changes: FileChanges, workers: int,
                     progress: bool | ProgressCallback, on_error: str,
                     chunk_size: int | None) -> ResolutionCache:
    """Re-process the modified items into the cache's own files, not into a copy.

    Copying every unchanged item costs a full read and write of the cache (22.9 GB for
    CheXpert at 320 px: minutes) to change a handful of slots. Kill-safe in three steps:
    (1) ``sources.json`` and ``manifest.json`` are replaced atomically with the changed
    items' records voided (size and mtime -1, which no file has) and an ``updating``
    mark, so from then on any reader or later update sees those items as changed
    whatever happens next; (2) their slots and digests are written in place; (3) the new
    records and manifest are written atomically. A process killed before (3) leaves a
    cache that the next ``cxrlab data cache`` (or ``cache: auto``) updates again.
    Readers that have the cache open meanwhile see the changed items' new pixels.
    """
    start = time.perf_counter()
    path, n, size = cache.path, len(dataset), cfg.size
    todo = changes.modified
    voided = [list(r) for r in cache.source_records()]
    for i in todo:
        voided[i] = [voided[i][0], -1, -1]
    marked = json.loads(json.dumps(cache.manifest))
    marked["dataset"]["key"] = "updating"
    marked["updating"] = {"items": len(todo), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(path / SOURCES, json.dumps({"base": cache.manifest["dataset"]["base"],
                                                  "records": voided}) + "\n")
    atomic_write_text(path / MANIFEST, json.dumps(marked, indent=2) + "\n")
    failures = _fill(dataset, cfg, path, n, identity.masks, workers, progress, on_error,
                     chunk_size, todo)
    paths = [str(p) for p in dataset.table["path"].tolist()]
    redone = set(todo)
    skipped = sorted([s for s in cache.skipped if s["index"] not in redone]
                     + _skip_entries(failures, paths, on_error), key=lambda s: s["index"])
    file_info = _file_info(path, identity.masks)
    manifest = _manifest(dataset, identity, n, size, file_info, skipped, workers, len(todo),
                         n - len(todo), time.perf_counter() - start)
    manifest["created"] = cache.manifest.get("created", manifest["created"])
    manifest["build"]["in_place"] = True
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(path / SOURCES, json.dumps({"base": identity.base,
                                                  "records": identity.records}) + "\n")
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    cache.close()
    return ResolutionCache(path, manifest)


def _copy_items(old: ResolutionCache, tmp: Path, n: int, size: int, with_masks: bool,
                reuse: dict[int, int]) -> int:
    """Copy the unchanged items of ``old`` into the new build (runs of consecutive items
    as one slice, so an unchanged cache is copied sequentially)."""
    if not reuse:
        return 0
    new_idx = np.fromiter(reuse.keys(), dtype=np.int64, count=len(reuse))
    old_idx = np.fromiter(reuse.values(), dtype=np.int64, count=len(reuse))
    order = np.argsort(new_idx)
    new_idx, old_idx = new_idx[order], old_idx[order]
    breaks = np.flatnonzero((np.diff(new_idx) != 1) | (np.diff(old_idx) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(new_idx)]])
    shape = (n, size, size)
    targets = [(np.memmap(tmp / IMAGES, dtype=np.uint8, mode="r+", shape=shape), old.images)]
    if with_masks:
        targets.append((np.memmap(tmp / MASKS, dtype=np.uint8, mode="r+", shape=shape),
                        old.masks))
        targets.append((np.memmap(tmp / MASK_KNOWN, dtype=np.uint8, mode="r+", shape=(n,)),
                        old.mask_known))
    digests = np.memmap(tmp / DIGESTS, dtype="<u8", mode="r+", shape=(n,))
    digests[new_idx] = old.digests[old_idx]
    step = max(1, _COPY_ITEMS_BYTES // (size * size))
    for a, b in zip(starts.tolist(), ends.tolist()):
        for s in range(a, b, step):
            e = min(b, s + step)
            for target, source in targets:
                target[new_idx[s]:new_idx[s] + (e - s)] = source[old_idx[s]:old_idx[s] + (e - s)]
    for target, _ in targets:
        target.flush()
    digests.flush()
    return int(len(new_idx))


def _fill(dataset: XrayDataset, cfg: PreprocessConfig, tmp: Path, n: int, with_masks: bool,
          workers: int, progress: bool | ProgressCallback, on_error: str,
          chunk_size: int | None, todo: list[int]) -> list[tuple[int, type, str | None, str]]:
    """Process the items ``todo`` in-process or on a process pool; return the failures."""
    stop = on_error == "raise"
    total = len(todo)
    if chunk_size is None:
        chunk_size = max(1, min(32, math.ceil(total / (workers * 4))))
    step = int(chunk_size)
    chunks = [todo[k:k + step] for k in range(0, total, step)]
    args = (dataset, cfg, str(tmp), n, with_masks, stop)
    state: dict = {}
    done = 0
    failures: list[tuple[int, type, str | None, str]] = []
    _report(progress, 0, total, state)
    if workers == 1 or len(chunks) <= 1:
        writer = _ChunkWriter(*args)
        for chunk in chunks:
            failures += writer.run(chunk)
            done += len(chunk)
            _report(progress, done, total, state)
            if failures and stop:
                break
        del writer
        return failures

    executor = ProcessPoolExecutor(max_workers=min(workers, len(chunks)),
                                   initializer=_init_worker, initargs=args)
    try:
        pending: dict[Future, int] = {executor.submit(_run_chunk, c): len(c) for c in chunks}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                failures += future.result()
                done += pending.pop(future)
            _report(progress, done, total, state)
            if failures and stop:
                break
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return failures


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """``os.replace`` the finished build onto ``out_dir`` (an old cache is removed after)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / "cache")
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ reuse and update


@dataclass
class CacheResult:
    """What :func:`ensure_cache` / :func:`auto_cache` did.

    Attributes:
        cache: The opened cache.
        action: ``"reused"`` (nothing changed), ``"updated"`` (some items re-processed)
            or ``"built"`` (every item processed).
        detail: Why, in words (which files changed and how, or why a new cache).
        processed: Items preprocessed by this call.
        seconds: Wall time of the call.
    """

    cache: ResolutionCache
    action: str
    detail: str
    processed: int
    seconds: float

    def message(self) -> str:
        n = len(self.cache)
        if self.action == "reused":
            return (f"cache {self.cache.path} is up to date ({n} images at "
                    f"{self.cache.size} px); nothing to do")
        if self.action == "updated":
            return (f"updated cache {self.cache.path}: re-processed {self.processed} of {n} "
                    f"images ({self.detail})")
        return (f"built cache {self.cache.path}: {n} images at {self.cache.size} px"
                + (f" ({self.detail})" if self.detail else ""))


def settings_mismatch(manifest: dict[str, Any], identity: CacheIdentity) -> str | None:
    """The cause, in words, when a cache's settings rule it out for ``identity`` (a
    different adapter, view selection, masks or preprocessing); ``None`` when only files
    may differ."""
    info = manifest["dataset"]
    if info.get("name") != identity.name:
        return f"the cache was built from dataset {info.get('name')!r}, not {identity.name!r}"
    if info.get("views") != identity.views:
        if identity.views == "frontal":
            return ("the recipe keeps frontal views only; the cache was built with all views "
                    f"({info.get('n')} images, the dataset has {identity.n}) — rebuild it "
                    "with `cxrlab data cache ... --frontal-only`")
        return ("the cache holds frontal views only; the dataset has all views "
                f"({identity.n} images, the cache {info.get('n')}) — rebuild it without "
                "--frontal-only")
    if bool(info.get("masks")) != identity.masks:
        return ("the cache was built " + ("with" if info.get("masks") else "without")
                + " masks; the dataset has " + ("masks" if identity.masks else "none"))
    built, wanted = manifest["preprocess"], identity.preprocess
    if built != wanted:
        keys = sorted(set(built) | set(wanted))
        diffs = [f"{k}: cache {built.get(k, '<absent>')!r} vs requested "
                 f"{wanted.get(k, '<absent>')!r}" for k in keys
                 if built.get(k, "<absent>") != wanted.get(k, "<absent>")]
        return "built with other preprocessing parameters (" + "; ".join(diffs) + ")"
    return None


def _other_image_set(manifest: dict[str, Any], identity: CacheIdentity,
                     changes: FileChanges) -> str | None:
    """Why the cache holds another image set (e.g. the training cache offered to the
    validation set), or ``None`` when an incremental update makes sense."""
    info = manifest["dataset"]
    if info.get("base_name") == identity.base_name and changes.reuse:
        return None
    return (f"the cache holds another image set ({info.get('n')} images under "
            f"'{info.get('base_name')}/', {len(changes.reuse)} of them in this dataset), not "
            f"this dataset's {identity.n} images under '{identity.base_name}/'")


def update_cache(cache: ResolutionCache, dataset: XrayDataset, cfg: PreprocessConfig,
                 identity: CacheIdentity | None = None, workers: int | None = None,
                 progress: bool | ProgressCallback = False, on_error: str = "raise",
                 chunk_size: int | None = None) -> CacheResult:
    """Bring ``cache`` up to date with ``dataset``: re-process modified and added source
    files alone, drop removed ones, copy the rest; a no-op when nothing changed.

    Raises:
        CacheError: Other settings (views, preprocessing, masks, adapter) or another
            image set altogether, with the cause.
    """
    start = time.perf_counter()
    workers = _check_arguments(cfg, workers, on_error)
    identity = identity or dataset_identity(dataset, cfg)
    why = settings_mismatch(cache.manifest, identity)
    if why:
        raise CacheError(cache.path, why)
    if cache.manifest["dataset"].get("key") == identity.key:
        return CacheResult(cache, "reused", "", 0, time.perf_counter() - start)
    cached = cache.source_records()
    changes = _file_changes(identity, cached, {s["index"] for s in cache.skipped})
    other = _other_image_set(cache.manifest, identity, changes)
    if other:
        raise CacheError(cache.path, other + "; give the cache another folder")
    detail = changes.describe(identity, cached)
    if not changes.reprocess and not changes.removed and len(changes.reuse) == identity.n \
            and cached == identity.records:
        return CacheResult(cache, "reused", "", 0, time.perf_counter() - start)
    logger.info("updating cache %s: %s; re-processing %d of %d images", cache.path,
                detail or "same files, new order", len(changes.reprocess), identity.n)
    if _in_place(changes, len(cached), identity.n):
        new = _update_in_place(cache, dataset, cfg, identity, changes, workers, progress,
                               on_error, chunk_size)
    else:
        new = _write_cache(dataset, cfg, identity, cache.path, (cache, changes), workers,
                           progress, on_error, chunk_size)
    return CacheResult(new, "updated", detail or "same files, new order",
                       len(changes.reprocess), time.perf_counter() - start)


def ensure_cache(dataset: XrayDataset, cfg: PreprocessConfig, out_dir: str | Path,
                 workers: int | None = None, progress: bool | ProgressCallback = False,
                 on_error: str = "raise", overwrite: bool = False,
                 chunk_size: int | None = None) -> CacheResult:
    """The cache of ``dataset`` in ``out_dir``: reused when it matches, updated
    incrementally when source files changed, built when absent (or ``overwrite``).

    Raises:
        CacheError: ``out_dir`` holds a cache with other settings or of another image set
            (without ``overwrite``), or a corrupt one; the message names the cause.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    workers = _check_arguments(cfg, workers, on_error)
    if len(dataset) == 0:
        raise CacheError(out_dir, f"dataset {dataset.name!r} has no images; nothing to cache")
    identity = dataset_identity(dataset, cfg)
    if out_dir.exists() and not overwrite:
        if not (out_dir / MANIFEST).is_file() and out_dir.is_dir() and any(out_dir.iterdir()):
            raise CacheError(out_dir, "exists and is not a resolution cache; give another "
                                      "folder or pass --overwrite")
        if (out_dir / MANIFEST).is_file():
            cache = ResolutionCache.open(out_dir)
            return update_cache(cache, dataset, cfg, identity, workers, progress, on_error,
                                chunk_size)
    reason = "replacing the old cache" if out_dir.exists() else ""
    cache = _write_cache(dataset, cfg, identity, out_dir, None, workers, progress, on_error,
                         chunk_size)
    return CacheResult(cache, "built", reason, len(dataset), time.perf_counter() - start)


def list_caches(store: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, manifest)`` of every readable cache directly inside ``store``."""
    store = Path(store)
    found = []
    if not store.is_dir():
        return found
    for folder in sorted(store.iterdir()):
        file = folder / MANIFEST
        if ".tmp-" in folder.name or ".old-" in folder.name or not file.is_file():
            continue
        try:
            manifest = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME \
                and manifest.get("format_version") == FORMAT_VERSION:
            found.append((folder, manifest))
    return found


def find_cache(stores: Sequence[str | Path], identity: CacheIdentity
               ) -> tuple[Path | None, Path | None]:
    """Look for ``identity``'s cache in folders of caches.

    Returns:
        ``(exact, candidate)``: a cache whose content key matches (reuse as it is), and
        otherwise the cache with the same settings and base folder name that shares the
        most source files with the dataset (update it incrementally), or ``None``.
    """
    best, best_overlap = None, 0
    wanted = {r[0] for r in identity.records}
    for store in stores:
        for folder, manifest in list_caches(store):
            info = manifest.get("dataset", {})
            if info.get("key") == identity.key:
                return folder, None
            if info.get("settings_key") != identity.settings_key or \
                    info.get("base_name") != identity.base_name:
                continue
            try:
                cached = json.loads((folder / SOURCES).read_text())["records"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            overlap = sum(1 for r in cached if r[0] in wanted)
            if overlap > best_overlap:
                best, best_overlap = folder, overlap
    return None, best


def auto_folder_name(identity: CacheIdentity) -> str:
    """Folder name of a new cache in a store (for people; lookup reads manifests)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in identity.base_name) or "data"
    return (f"{identity.name}-{safe}-{identity.preprocess.get('size')}px-"
            f"{identity.views}-{identity.key[:8]}")


def auto_cache(dataset: XrayDataset, cfg: PreprocessConfig, store: str | Path,
               extra_stores: Sequence[str | Path] = (), workers: int | None = None,
               progress: bool | ProgressCallback = False, on_error: str = "raise",
               chunk_size: int | None = None) -> CacheResult:
    """The cache of ``dataset`` found by content in ``store`` (and ``extra_stores``):
    reused, updated incrementally from the closest one, or built in ``store``."""
    start = time.perf_counter()
    workers = _check_arguments(cfg, workers, on_error)
    if len(dataset) == 0:
        raise CacheError(Path(store), f"dataset {dataset.name!r} has no images; "
                                      "nothing to cache")
    identity = dataset_identity(dataset, cfg)
    stores = [Path(store), *map(Path, extra_stores)]
    exact, candidate = find_cache(stores, identity)
    if exact is not None:
        cache = ResolutionCache.open(exact)
        return CacheResult(cache, "reused", "", 0, time.perf_counter() - start)
    if candidate is not None:
        try:
            cache = ResolutionCache.open(candidate)
        except CacheError as err:
            logger.warning("ignoring the unusable cache %s: %s", candidate, err)
        else:
            return update_cache(cache, dataset, cfg, identity, workers, progress, on_error,
                                chunk_size)
    folder = Path(store) / auto_folder_name(identity)
    detail = "no cache of this dataset and preprocessing yet"
    logger.info("building the %d px resolution cache of %d images in %s (%s)", cfg.size,
                len(dataset), folder, detail)
    cache = _write_cache(dataset, cfg, identity, folder, None, workers, progress, on_error,
                         chunk_size)
    return CacheResult(cache, "built", detail, len(dataset), time.perf_counter() - start)


# --------------------------------------------------------------------------- reading


def _map_file(path: Path, shape: tuple[int, ...], dtype: str) -> tuple[mmap.mmap, np.ndarray]:
    """Read-only ``mmap`` of ``path`` with ``MADV_RANDOM`` and its array view."""
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return mapped, np.frombuffer(mapped, dtype=dtype).reshape(shape)


class ResolutionCache:
    """A built cache, memory-mapped read-only.

    Use :meth:`open` (which validates), :func:`ensure_cache` or the return value of
    :func:`build_cache`.

    Attributes:
        path: The cache folder.
        manifest: The parsed ``manifest.json``.
        images: read-only uint8 array ``[N, S, S]`` over the memory map.
        masks: read-only uint8 ``[N, S, S]`` with 0/1 values, or ``None``.
        mask_known: read-only uint8 ``[N]`` (1 = the source had a mask), or ``None``.
        digests: read-only uint64 ``[N]`` item digests.

    A cache pickles as its folder path and reopens its memory maps on unpickling, so a
    DataLoader worker never receives a copy of the data.
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._maps: list[mmap.mmap] = []
        self._prefetched: set[int] = set()
        self._map()

    def _map(self) -> None:
        n, s, _ = self.manifest["shape"]
        self._maps = []

        def view(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
            mapped, array = _map_file(self.path / name, shape, dtype)
            self._maps.append(mapped)
            return array

        self.images = view(IMAGES, (n, s, s), "u1")
        self.digests = view(DIGESTS, (n,), "<u8")
        self.masks = self.mask_known = None
        if self.manifest["dataset"].get("masks"):
            self.masks = view(MASKS, (n, s, s), "u1")
            self.mask_known = view(MASK_KNOWN, (n,), "u1")

    def close(self) -> None:
        """Drop the arrays (the maps close once no slice refers to them)."""
        self.images = self.masks = self.mask_known = self.digests = None  # type: ignore[assignment]
        self._maps = []

    def prefetch(self, start: int, stop: int) -> None:
        """Ask the kernel to read items ``[start, stop)`` ahead (``MADV_WILLNEED``): one
        sequential read instead of a random read per item. Cheap when already cached."""
        if not self._maps or not hasattr(mmap, "MADV_WILLNEED"):
            return
        n, s, _ = self.manifest["shape"]
        start, stop = max(0, int(start)), min(n, int(stop))
        if stop <= start:
            return
        item = s * s
        page = mmap.PAGESIZE
        first = (start * item) // page * page
        length = stop * item - first
        self._maps[0].madvise(mmap.MADV_WILLNEED, first, length)
        if self.masks is not None:
            self._maps[2].madvise(mmap.MADV_WILLNEED, first, length)

    def prefetch_block(self, i: int, block: int) -> None:
        """:meth:`prefetch` the block of ``block`` items holding item ``i``, once per
        process (the sampler's blocks: see
        :class:`~cxrlab.data.samplers.BlockShuffleSampler`)."""
        b = int(i) // max(1, int(block))
        if b in self._prefetched:
            return
        if len(self._prefetched) > 4096:
            self._prefetched.clear()
        self._prefetched.add(b)
        self.prefetch(b * block, (b + 1) * block)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["manifest"])

    def __len__(self) -> int:
        return int(self.manifest["shape"][0])

    def __repr__(self) -> str:
        return (f"ResolutionCache({str(self.path)!r}, n={len(self)}, size={self.size}, "
                f"masks={self.masks is not None}, skipped={len(self.skipped)})")

    @property
    def size(self) -> int:
        return int(self.manifest["shape"][1])

    @property
    def item_bytes(self) -> int:
        """Bytes of one cached image."""
        return self.size * self.size

    @property
    def cfg(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """``[{index, path, problem}]`` of the images left out as unreadable."""
        return list(self.manifest.get("skipped", []))

    @property
    def valid_indices(self) -> np.ndarray:
        """Indices of the images actually cached (all but the skipped ones)."""
        bad = np.array([s["index"] for s in self.skipped], dtype=np.int64)
        return np.setdiff1d(np.arange(len(self), dtype=np.int64), bad)

    @property
    def nbytes(self) -> int:
        """Bytes of the data files."""
        return int(sum(f["bytes"] for f in self.manifest["files"].values()))

    @classmethod
    def open(cls, out_dir: str | Path, dataset: XrayDataset | None = None,
             cfg: PreprocessConfig | None = None, verify: bool = False,
             check_sources: bool = True) -> ResolutionCache:
        """Open and validate a cache folder (see the module docstring for what is checked).

        Args:
            out_dir: The cache folder.
            dataset: When given, the cache must have been built from the same source
                files (relative to their common folder), in the same order.
            cfg: When given, the cache must have been built with these parameters.
            verify: Also recompute every item's digest.
            check_sources: With ``dataset``, also ``stat`` every source file and compare
                size and ``mtime_ns`` with the build (a touched or modified source
                makes the cache stale).

        Raises:
            CacheError: Missing, corrupt or stale, with what differs and how to rebuild.
        """
        path = Path(out_dir)
        if not path.is_dir():
            raise CacheError(path, "no resolution cache here; build it with "
                                   f"`cxrlab data cache ... --out {path}`")
        manifest = _read_manifest(path)
        _check_files(path, manifest)
        cache = cls(path, manifest)
        if verify:
            cache.verify()
        cache.check(dataset=dataset, cfg=cfg, check_sources=check_sources)
        return cache

    def check(self, dataset: XrayDataset | None = None, cfg: PreprocessConfig | None = None,
              check_sources: bool = True) -> None:
        """Raise :class:`CacheError` unless this cache matches ``dataset`` and ``cfg``."""
        if cfg is not None:
            self._check_cfg(cfg)
        if dataset is not None:
            self._check_dataset(dataset, cfg or self.cfg, check_sources)

    def _stale(self, what: str) -> CacheError:
        return CacheError(self.path, f"stale cache: {what}; {_rebuild_hint(self.path)}")

    def _check_cfg(self, cfg: PreprocessConfig) -> None:
        built, wanted = self.manifest["preprocess"], _cfg_dict(cfg)
        if built != wanted:
            keys = sorted(set(built) | set(wanted))
            diffs = [f"{k}: cache {built.get(k, '<absent>')!r} vs requested "
                     f"{wanted.get(k, '<absent>')!r}" for k in keys
                     if built.get(k, "<absent>") != wanted.get(k, "<absent>")]
            raise self._stale("built with other preprocessing parameters (" +
                              "; ".join(diffs) + ")")

    def _check_dataset(self, dataset: XrayDataset, cfg: PreprocessConfig,
                       check_sources: bool) -> None:
        info = self.manifest["dataset"]
        self._check_not_updating()
        identity = dataset_identity(dataset, cfg, stat=check_sources)
        why = settings_mismatch(self.manifest, identity)
        if why:
            raise self._stale(why)
        if identity.key == info.get("key"):
            return
        if identity.paths_key == info.get("paths_key") and not check_sources:
            return
        cached = self.source_records()
        if not check_sources:  # compare paths only
            cached = [[r[0], -1, -1] for r in cached]
        changes = _file_changes(identity, cached, set())
        other = _other_image_set(self.manifest, identity, changes)
        if other:
            raise CacheError(self.path, f"{other}; give this dataset's cache another folder")
        update = (f"`cxrlab data cache ... --out {self.path}` with the same options updates "
                  "it, re-processing the changed files alone")
        size = (f"built from {info['n']} images, the dataset has {identity.n}; "
                if info["n"] != identity.n else "")
        if not (changes.added or changes.removed or changes.modified):
            raise CacheError(self.path, f"stale cache: {size}the dataset lists the same files "
                                        f"in another order; {update}")
        raise CacheError(self.path, f"stale cache: {size}source files changed since the build "
                                    f"({changes.describe(identity, cached)}); {update}")

    def _check_not_updating(self) -> None:
        mark = self.manifest.get("updating")
        if mark:
            raise CacheError(self.path, f"an incremental update of {mark.get('items')} item(s) "
                                        f"started {mark.get('started')} did not finish; "
                                        "re-run `cxrlab data cache` with the same options (or "
                                        "the training command, with `cache: auto`) to finish it")

    def source_records(self) -> list[list[Any]]:
        """The ``[relative path, size, mtime_ns]`` records of the build."""
        try:
            return json.loads((self.path / SOURCES).read_text())["records"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CacheError(self.path / SOURCES, f"unreadable ({err}); "
                                                  f"{_rebuild_hint(self.path)}") from err

    def damaged_items(self, chunk_items: int | None = None) -> list[int]:
        """Indices whose cached bytes no longer match their digest (reads every byte)."""
        n = len(self)
        step = chunk_items or max(1, _HASH_CHUNK // self.item_bytes)
        bad = []
        for start in range(0, n, step):
            stop = min(n, start + step)
            self.prefetch(start, stop)
            for i in range(start, stop):
                if _slot_digest(self.images, self.masks, self.mask_known, i) != \
                        int(self.digests[i]):
                    bad.append(i)
        return bad

    def verify(self) -> None:
        """Check the digests file and every item; raise :class:`CacheError` naming the
        damaged items."""
        self._check_not_updating()
        recorded = self.manifest["files"].get(DIGESTS, {}).get("blake2b")
        if file_blake2b(self.path / DIGESTS) != recorded:
            raise CacheError(self.path / DIGESTS, "corrupt cache: checksum of the digests "
                                                  f"differs from the manifest; "
                                                  f"{_rebuild_hint(self.path)}")
        bad = self.damaged_items()
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more"
                                                     if len(bad) > 5 else "")
            raise CacheError(self.path / IMAGES, f"corrupt cache: the checksum of {len(bad)} "
                                                 f"item(s) differs from the manifest "
                                                 f"(items {shown}); {_rebuild_hint(self.path)}")


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError as err:
        raise CacheError(file, f"missing: not a finished cache; {_rebuild_hint(path)}") from err
    except (OSError, ValueError) as err:
        raise CacheError(file, f"unreadable manifest ({err}); {_rebuild_hint(path)}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CacheError(file, f"not a {FORMAT_NAME} manifest; {_rebuild_hint(path)}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(file, f"stale cache: format version {version!r}, this cxrlab "
                               f"({__version__}) reads version {FORMAT_VERSION}; "
                               f"{_rebuild_hint(path)}")
    required = ("dataset", "preprocess", "shape", "files")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise CacheError(file, f"manifest lacks {', '.join(missing)}; {_rebuild_hint(path)}")
    return manifest


def _check_files(path: Path, manifest: dict[str, Any]) -> None:
    n, s, _ = manifest["shape"]
    expected = {IMAGES: n * s * s, DIGESTS: n * 8}
    if manifest["dataset"].get("masks"):
        expected.update({MASKS: n * s * s, MASK_KNOWN: n})
    for name, nbytes in expected.items():
        file = path / name
        recorded = manifest["files"].get(name, {})
        if recorded.get("bytes") != nbytes:
            raise CacheError(file, f"corrupt cache: manifest records {recorded.get('bytes')} "
                                   f"bytes, shape {manifest['shape']} needs {nbytes}; "
                                   f"{_rebuild_hint(path)}")
        try:
            actual = file.stat().st_size
        except FileNotFoundError as err:
            raise CacheError(file, f"corrupt cache: data file missing; "
                                   f"{_rebuild_hint(path)}") from err
        if actual != nbytes:
            raise CacheError(file, f"corrupt cache: {actual:,} bytes, expected {nbytes:,} "
                                   f"(truncated or overwritten); {_rebuild_hint(path)}")
