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
``sources.json``
    the ordered source files as ``[path, size, mtime_ns]`` (size and mtime ``-1`` for a
    file that could not be stat'ed).
``manifest.json``
    format and cxrlab versions, the preprocessing parameters (``cfg.to_dict()``), the
    dataset name, pathologies and ``N``, fingerprints of the source list, the byte size
    and blake2b checksum of every data file, the images skipped as unreadable and
    build statistics.

What :meth:`ResolutionCache.open` validates:

* always: the manifest parses and has this format version; every data file exists
  with exactly the byte size the manifest gives (a missing or truncated file is
  refused); when ``cfg`` is given, its parameters equal the manifest's; when
  ``dataset`` is given, its name, ``N`` and ordered source paths equal the manifest's,
  and (``check_sources=True``, default) every source file still has the size and
  ``mtime_ns`` recorded at build time (one ``stat`` per file);
* with ``verify=True`` also the blake2b checksum of every data file (reads every byte:
  seconds per GB, which is why it is not done on every open).

Builds are atomic: everything is written into ``<out>.tmp-XXXX`` beside ``out_dir`` and
moved into place with :func:`os.replace` at the end, so ``out_dir`` never holds a
half-written cache. A failed or interrupted build removes its temporary folder; there
is no resume (a folder left by a SIGKILLed process can be deleted by hand).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrlab import __version__
from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import CacheError, ConfigError, InputError

if TYPE_CHECKING:
    from cxrlab.data.datasets.base import XrayDataset

logger = logging.getLogger(__name__)

FORMAT_NAME = "cxrlab-resolution-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SOURCES = "sources.json"
IMAGES = "images.u8"
MASKS = "masks.u8"
MASK_KNOWN = "mask_known.u8"
MIN_SIZE, MAX_SIZE = 16, 4096

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each finished chunk of images."""

_HASH_CHUNK = 8 << 20


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


def paths_fingerprint(paths: Iterable[str]) -> str:
    """Fingerprint of the ordered paths alone (cheap: no file system access)."""
    return fingerprint([p] for p in paths)


def _dataset_paths(dataset: XrayDataset) -> list[str]:
    return [str(p) for p in dataset.table["path"].tolist()]


def _cfg_dict(cfg: PreprocessConfig) -> dict[str, Any]:
    """``cfg.to_dict()`` normalised through JSON (tuples become lists) for comparison."""
    return json.loads(json.dumps(cfg.to_dict()))


# --------------------------------------------------------------------------- building


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
                if self.stop_on_error:
                    break
            except Exception as err:  # a bug or an unexpected decoder failure: add context
                err.add_note(f"while caching image {i} ({self.dataset.table['path'].iloc[i]})")
                raise
        self.images.flush()
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
    (no arrays travel back to the parent); the folder is checksummed, then moved onto
    ``out_dir`` in one :func:`os.replace`. The output does not depend on ``workers``.

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
            error.
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
    if on_error not in ("raise", "skip"):
        raise ConfigError(None, f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not isinstance(cfg.size, int) or not MIN_SIZE <= cfg.size <= MAX_SIZE:
        raise ConfigError(None, f"cache size must be an integer in [{MIN_SIZE}, {MAX_SIZE}] "
                                f"(typically 160–1024), got {cfg.size!r}")
    workers = max(1, min(8, os.cpu_count() or 1)) if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(None, f"workers must be at least 1, got {workers}")
    if out_dir.exists() and not overwrite:
        raise CacheError(out_dir, "already exists; pass overwrite=True (CLI: --overwrite) "
                                  "to replace it")

    start = time.perf_counter()
    n, size = len(dataset), cfg.size
    if n == 0:
        raise CacheError(out_dir, f"dataset {dataset.name!r} has no images; nothing to cache")
    with_masks = bool(dataset.has_masks())
    paths = _dataset_paths(dataset)
    records = source_records(paths)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        files = [IMAGES] + ([MASKS, MASK_KNOWN] if with_masks else [])
        _allocate(tmp / IMAGES, n * size * size)
        if with_masks:
            _allocate(tmp / MASKS, n * size * size)
            _allocate(tmp / MASK_KNOWN, n)
        failures = _fill(dataset, cfg, tmp, n, with_masks, workers, progress, on_error,
                         chunk_size)
        if failures and on_error == "raise":
            _i, cls, source, problem = min(failures, key=lambda f: f[0])
            raise cls(source, problem)
        skipped = [{"index": i, "path": paths[i], "problem": f"{cls.__name__}: {problem}"}
                   for i, cls, _source, problem in sorted(failures, key=lambda f: f[0])]
        build_seconds = time.perf_counter() - start

        file_info = {}
        for name in files:
            _fsync(tmp / name)
            file_info[name] = {"bytes": (tmp / name).stat().st_size,
                               "blake2b": file_blake2b(tmp / name)}
        (tmp / SOURCES).write_text(json.dumps(records) + "\n")
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "cxrlab_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dataset": {
                "name": dataset.name,
                "n": n,
                "pathologies": list(dataset.pathologies),
                "paths_fingerprint": paths_fingerprint(paths),
                "sources_fingerprint": fingerprint(records),
                "masks": with_masks,
            },
            "preprocess": _cfg_dict(cfg),
            "shape": [n, size, size],
            "dtype": "uint8",
            "files": file_info,
            "skipped": skipped,
            "build": {
                "workers": workers,
                "seconds": round(build_seconds, 3),
                "checksum_seconds": round(time.perf_counter() - start - build_seconds, 3),
                "images_per_second": round(n / build_seconds, 2) if build_seconds > 0 else None,
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync(tmp / MANIFEST)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ResolutionCache(out_dir, manifest)


def _fill(dataset: XrayDataset, cfg: PreprocessConfig, tmp: Path, n: int, with_masks: bool,
          workers: int, progress: bool | ProgressCallback, on_error: str,
          chunk_size: int | None) -> list[tuple[int, type, str | None, str]]:
    """Run the chunks in-process or on a process pool; return the failures."""
    stop = on_error == "raise"
    if chunk_size is None:
        chunk_size = max(1, min(32, math.ceil(n / (workers * 4))))
    chunks = [list(range(k, min(k + int(chunk_size), n))) for k in range(0, n, int(chunk_size))]
    args = (dataset, cfg, str(tmp), n, with_masks, stop)
    state: dict = {}
    done = 0
    failures: list[tuple[int, type, str | None, str]] = []
    _report(progress, 0, n, state)
    if workers == 1 or len(chunks) <= 1:
        writer = _ChunkWriter(*args)
        for chunk in chunks:
            failures += writer.run(chunk)
            done += len(chunk)
            _report(progress, done, n, state)
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
            _report(progress, done, n, state)
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


# --------------------------------------------------------------------------- reading


class ResolutionCache:
    """A built cache, memory-mapped read-only.

    Use :meth:`open` (which validates) or the return value of :func:`build_cache`.

    Attributes:
        path: The cache folder.
        manifest: The parsed ``manifest.json``.
        images: ``np.memmap`` uint8 ``[N, S, S]``, read-only.
        masks: ``np.memmap`` uint8 ``[N, S, S]`` with 0/1 values, or ``None``.
        mask_known: ``np.memmap`` uint8 ``[N]`` (1 = the source had a mask), or ``None``.

    A cache pickles as its folder path and reopens its memory maps on unpickling, so a
    DataLoader worker never receives a copy of the data.
    """

    def __init__(self, path: str | Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._map()

    def _map(self) -> None:
        n, s, _ = self.manifest["shape"]
        self.images = np.memmap(self.path / IMAGES, dtype=np.uint8, mode="r", shape=(n, s, s))
        self.masks = self.mask_known = None
        if self.manifest["dataset"].get("masks"):
            self.masks = np.memmap(self.path / MASKS, dtype=np.uint8, mode="r", shape=(n, s, s))
            self.mask_known = np.memmap(self.path / MASK_KNOWN, dtype=np.uint8, mode="r",
                                        shape=(n,))

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
                files, in the same order.
            cfg: When given, the cache must have been built with these parameters.
            verify: Also recompute the blake2b checksum of every data file.
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
        _check_files(path, manifest, verify)
        cache = cls(path, manifest)
        cache.check(dataset=dataset, cfg=cfg, check_sources=check_sources)
        return cache

    def check(self, dataset: XrayDataset | None = None, cfg: PreprocessConfig | None = None,
              check_sources: bool = True) -> None:
        """Raise :class:`CacheError` unless this cache matches ``dataset`` and ``cfg``."""
        if cfg is not None:
            self._check_cfg(cfg)
        if dataset is not None:
            self._check_dataset(dataset, check_sources)

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

    def _check_dataset(self, dataset: XrayDataset, check_sources: bool) -> None:
        info = self.manifest["dataset"]
        if dataset.name != info["name"]:
            raise self._stale(f"built from dataset {info['name']!r}, not {dataset.name!r}")
        if len(dataset) != info["n"]:
            raise self._stale(f"built from {info['n']} images, the dataset has {len(dataset)}")
        paths = _dataset_paths(dataset)
        if paths_fingerprint(paths) != info["paths_fingerprint"]:
            built = [r[0] for r in self._source_records()]
            diff = next((k for k, (a, b) in enumerate(zip(built, paths)) if a != b), None)
            where = (f"image {diff} is {paths[diff]!r} but was {built[diff]!r}"
                     if diff is not None else "the source list differs")
            raise self._stale(f"the dataset's image files differ from the build ({where})")
        if check_sources:
            records = source_records(paths)
            if fingerprint(records) != info["sources_fingerprint"]:
                built = self._source_records()
                changed = [r[0] for r, b in zip(records, built) if list(r) != list(b)]
                shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more"
                                                  if len(changed) > 3 else "")
                raise self._stale(f"{len(changed)} source file(s) changed size or "
                                  f"modification time since the build: {shown}")

    def _source_records(self) -> list[list[Any]]:
        try:
            return json.loads((self.path / SOURCES).read_text())
        except (OSError, ValueError) as err:
            raise CacheError(self.path / SOURCES, f"unreadable ({err}); "
                                                  f"{_rebuild_hint(self.path)}") from err

    def verify(self) -> None:
        """Recompute every data file's blake2b; raise :class:`CacheError` on a mismatch."""
        _check_files(self.path, self.manifest, verify=True)


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


def _check_files(path: Path, manifest: dict[str, Any], verify: bool) -> None:
    n, s, _ = manifest["shape"]
    expected = {IMAGES: n * s * s}
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
        if verify and file_blake2b(file) != recorded.get("blake2b"):
            raise CacheError(file, f"corrupt cache: blake2b checksum differs from the "
                                   f"manifest; {_rebuild_hint(path)}")
