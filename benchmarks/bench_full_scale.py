"""The real-data path at CheXpert-v1.0-small's size, on a replica built from its real CSV.

The replica: the first ``--rows`` rows (or all 223,414) of the CheXpert train CSV that
torchxrayvision ships (``chexpert_train.csv.gz``, CheXpert's own columns), with a JPEG
at every ``Path``. The JPEGs are ``--phantoms`` synthetic radiograph stand-ins of the
real small-set dimensions (320 x 390), hard-linked, so the replica costs a few MB of disk
besides the cache; a 234-row ``valid.csv`` beside ``train.csv`` (CheXpert's layout) points
at linked JPEGs under ``valid/``. Synthetic pixels, real row count, paths and labels.

Timed for every size, each step as a user runs it (``cxrlab`` in a subprocess, wall time
including start-up):

stats         ``cxrlab data stats`` on train.csv
cache build   ``cxrlab data cache --size S --out DATA_ROOT/runs/cache/train-S --workers W``
re-run        the same command again (a no-op on a matching cache)
incremental   the same command after ``--changed`` source files were replaced
start-up      ``prepare_data`` of seed 001's recipe (``cache: auto``, valid.csv beside
              train.csv) in a fresh process: import + open both CSVs + find both caches;
              the first call builds the 234-image validation cache, the time is the second
moved         the same after the data folder was renamed (the caches must be reused)
loader        DataLoader items/s with ``--loader-workers`` workers, batch 40, 3 channels,
              ImageNet normalization, over ``--loader-items`` items: random order
              (``EpochShuffleSampler``) vs the quasi-random block order with read-ahead
              (``BlockShuffleSampler`` + ``read_block``), warm (the file read once first)
              and cold (the cache file's pages dropped with ``posix_fadvise(DONTNEED)``
              before each run; ``fincore``-style residency is reported).

Usage::

    nice -n 10 python benchmarks/bench_full_scale.py --rows 10000 50000 --work /tmp/fs \\
        --json benchmarks/full_scale.json
    python benchmarks/bench_full_scale.py --rows all --work /big/disk/fs
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

VALID_ROWS = 234
SOURCE_SHAPE = (390, 320)  # rows, columns: CheXpert-v1.0-small's typical image


def xrv_csv() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise SystemExit("torchxrayvision is not installed (its CSV is the replica's source)")
    return Path(spec.origin).parent / "data" / "chexpert_train.csv.gz"


def write_phantoms(folder: Path, count: int) -> list[Path]:
    """``count`` distinct JPEG radiograph stand-ins of 390 x 320 px."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    h, w = SOURCE_SHAPE
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(count):
        lungs = (((xx - w * 0.3) / (w * 0.18)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2 < 1) | \
                (((xx - w * 0.7) / (w * 0.18)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2 < 1)
        img = 170 - 90 * lungs + rng.normal(0, 12 + k % 7, (h, w))
        path = folder / f"phantom{k:03d}.jpg"
        cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        files.append(path)
    return files


def build_replica(root: Path, rows: int | None, phantoms: list[Path]) -> tuple[Path, Path]:
    """``root/CheXpert-v1.0-small/{train,valid}.csv`` and a hard-linked JPEG per row."""
    import pandas as pd

    with gzip.open(xrv_csv(), "rt") as fh:
        table = pd.read_csv(fh)
    if rows is not None:
        table = table.iloc[:rows]
    valid = table.iloc[:VALID_ROWS].copy()
    valid["Path"] = [f"CheXpert-v1.0-small/valid/patient{64541 + k:05d}/study1/"
                     f"view1_frontal.jpg" for k in range(len(valid))]
    valid["Frontal/Lateral"] = "Frontal"
    small = root / "CheXpert-v1.0-small"
    small.mkdir(parents=True, exist_ok=True)
    for frame in (table, valid):
        made: set[str] = set()
        for k, rel in enumerate(frame["Path"].tolist()):
            dest = root / rel
            parent = str(dest.parent)
            if parent not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(parent)
            os.link(phantoms[k % len(phantoms)], dest)
    table.to_csv(small / "train.csv", index=False)
    valid.to_csv(small / "valid.csv", index=False)
    return small / "train.csv", small / "valid.csv"


def cli(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cxrlab.cli.main", *args], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cxrlab {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


_PREPARE = textwrap.dedent("""
    import json, sys, time
    start = time.perf_counter()
    from cxrlab.config import load_config
    from cxrlab.tasks.classification.data import prepare_data
    imported = time.perf_counter()
    cfg = load_config(sys.argv[1], sys.argv[2:])
    prepared = prepare_data(cfg)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - start, "prepare_s": done - imported,
                      "train_cache": str(prepared.splits["train"].cache.path),
                      "valid_cache": str(prepared.splits["valid"].cache.path)}))
""")


def prepare(recipe: Path, data_root: Path, runs: Path, env: dict[str, str],
            size: int) -> tuple[float, dict]:
    small = data_root / "CheXpert-v1.0-small"
    overrides = [f"data.options.csv={small / 'train.csv'}", f"data.options.root={data_root}",
                 f"data.valid_options.csv={small / 'valid.csv'}",
                 f"data.valid_options.root={data_root}", f"data.size={size}",
                 f"output.root={runs}", "data.num_workers=2"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PREPARE, str(recipe), *overrides], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"prepare_data failed:\n{done.stdout}\n{done.stderr}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_share(path: Path) -> float:
    """Share of the file's pages in the page cache (``mincore`` over a fresh map)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        try:
            if libc.mincore(addr, size, vec) != 0:
                return float("nan")
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / pages


class PerItem:
    """The dataset item by item (no ``__getitems__``): the loader before batched reads."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> dict:
        return self.dataset[k]


#: Loader variants: (order, read path). "per-item": __getitem__ per item + default_collate
#: (the loader as the issue measured it); "batched": __getitems__ + collate_items (float32
#: normalized batches, what training gets today); "uint8": batched, normalize=False (the
#: loader's share when the consumer normalizes on the GPU: what training uses there with
#: data.normalize_on auto; the normalization on the GPU is not timed).
LOADERS = (("warm", "random", "batched"), ("warm", "quasi", "batched"),
           ("cold", "random", "per-item"), ("cold", "random", "batched"),
           ("cold", "quasi", "per-item"), ("cold", "quasi", "batched"),
           ("cold", "quasi", "uint8"))


def loader_rate(cache_dir: Path, data_root: Path, items: int, workers: int, order_kind: str,
                read: str, cold: bool) -> dict:
    """Items/s of a DataLoader (batch 40, 3 channels, ImageNet normalization) whose batches
    reach the main process, as in training."""
    import numpy as np
    import torch
    from torch.utils.data._utils.collate import default_collate

    from cxrlab.data.cache import IMAGES, ResolutionCache
    from cxrlab.data.datasets import load_dataset
    from cxrlab.data.samplers import BlockShuffleSampler, block_items
    from cxrlab.data.torch import ImageDataset, collate_items
    from cxrlab.engine.callbacks import EpochShuffleSampler

    quasi = order_kind == "quasi"
    dataset = load_dataset("chexpert", csv=data_root / "CheXpert-v1.0-small" / "train.csv",
                           root=data_root, check_files=False)
    cache = ResolutionCache.open(cache_dir)
    block = block_items(cache.item_bytes) if quasi else None
    ds = ImageDataset(dataset, cache.cfg, channels=3, normalization="imagenet", cache=cache,
                      read_block=block, normalize=read != "uint8")
    if quasi:
        sampler = BlockShuffleSampler(len(ds), block, seed=0)
    else:
        sampler = EpochShuffleSampler(len(ds), 0)
    order = list(iter(sampler))[:items]
    file = cache_dir / IMAGES
    drop_pages(file)
    if not cold:  # the items of this run read once first
        for i in np.sort(order):
            int(cache.images[i].max())
    before = resident_share(file)
    loader = torch.utils.data.DataLoader(
        PerItem(ds) if read == "per-item" else ds, batch_size=40, sampler=order,
        num_workers=workers, persistent_workers=False,
        collate_fn=default_collate if read == "per-item" else collate_items)
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        seen += int(batch["image"].shape[0])
    seconds = time.perf_counter() - start
    return {"items": seen, "items_per_s": round(seen / seconds, 1), "read": read,
            "resident_before": round(before, 3), "block_items": block}


def measure_loaders(out: dict, label: str, cache_dir: Path, data_root: Path, n: int,
                    args: argparse.Namespace) -> None:
    items = min(n, args.loader_items)
    for temp, order_kind, read in LOADERS:
        name = f"loader_{temp}_{order_kind}" + ("" if read == "batched" else f"_{read}")
        out[name] = loader_rate(cache_dir, data_root, items, args.loader_workers, order_kind,
                                read, temp == "cold")
        print(f"[{label}] {name}: {out[name]}", flush=True)
    quasi = out["loader_cold_quasi"]["items_per_s"]
    out["cold_ratio"] = round(quasi / out["loader_cold_random_per-item"]["items_per_s"], 2)
    out["cold_ratio_batched_random"] = round(quasi / out["loader_cold_random"]["items_per_s"], 2)
    # what a GPU run trains from (data.normalize_on: auto): uint8 batches, normalized there
    out["cold_ratio_uint8"] = round(out["loader_cold_quasi_uint8"]["items_per_s"]
                                    / out["loader_cold_random_per-item"]["items_per_s"], 2)


def run_size(rows: int | None, args: argparse.Namespace, phantoms: list[Path],
             env: dict[str, str]) -> dict:
    label = "all" if rows is None else str(rows)
    work = Path(args.work) / label
    shutil.rmtree(work, ignore_errors=True)
    data_root = work / "data"
    t0 = time.perf_counter()
    train_csv, _valid_csv = build_replica(data_root, rows, phantoms)
    replica_s = time.perf_counter() - t0
    n = sum(1 for _ in open(train_csv)) - 1
    out: dict = {"rows": n, "replica_s": round(replica_s, 1)}
    print(f"[{label}] replica of {n} rows in {replica_s:.1f} s", flush=True)

    common = ["--dataset", "chexpert", "--csv", str(train_csv), "--root", str(data_root)]
    out["stats_s"], _ = cli(["data", "stats", *common], env)
    cache_dir = work / "runs" / "cache" / f"train-{args.size}"
    cache_cmd = ["data", "cache", *common, "--size", str(args.size), "--out", str(cache_dir),
                 "--workers", str(args.workers), "--no-progress"]
    out["cache_build_s"], _ = cli(cache_cmd, env)
    out["cache_gb"] = round(sum(f.stat().st_size for f in cache_dir.iterdir()) / 1e9, 2)
    out["cache_images_per_s"] = round(n / out["cache_build_s"], 1)
    out["rerun_s"], text = cli(cache_cmd, env)
    assert "nothing to do" in text, text
    import pandas as pd

    table = pd.read_csv(train_csv, usecols=["Path"])
    for rel in table["Path"].iloc[:: max(1, n // args.changed)][: args.changed]:
        target = data_root / rel
        target.unlink()
        shutil.copyfile(phantoms[-1], target)
        with open(target, "ab") as fh:  # a different size too
            fh.write(b"\0")
    out["incremental_s"], text = cli(cache_cmd, env)
    out["incremental_processed"] = args.changed
    assert f"processed {args.changed} " in text, text
    print(f"[{label}] stats {out['stats_s']:.1f} s, build {out['cache_build_s']:.1f} s, "
          f"re-run {out['rerun_s']:.1f} s, incremental {out['incremental_s']:.1f} s", flush=True)

    recipe = Path(__file__).resolve().parent.parent / "configs" / "chexpert_seed001.yaml"
    runs = work / "runs"
    prepare(recipe, data_root, runs, env, args.size)  # builds the 234-image valid cache
    out["startup_s"], info = prepare(recipe, data_root, runs, env, args.size)
    out["startup_prepare_s"] = round(info["prepare_s"], 2)
    out["startup_import_s"] = round(info["import_s"], 2)
    assert info["train_cache"] == str(cache_dir), info
    moved = work / "moved-data"
    os.rename(data_root, moved)
    out["moved_s"], moved_info = prepare(recipe, moved, runs, env, args.size)
    assert moved_info["train_cache"] == str(cache_dir), moved_info
    os.rename(moved, data_root)
    print(f"[{label}] start-up {out['startup_s']:.1f} s (prepare_data "
          f"{out['startup_prepare_s']} s), moved data {out['moved_s']:.1f} s", flush=True)

    measure_loaders(out, label, cache_dir, data_root, n, args)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


def loaders_only(rows: int | None, args: argparse.Namespace) -> dict:
    """The loader measurements alone, on a replica and cache kept by an earlier ``--keep``."""
    label = "all" if rows is None else str(rows)
    work = Path(args.work) / label
    data_root = work / "data"
    cache_dir = work / "runs" / "cache" / f"train-{args.size}"
    if not (cache_dir / "manifest.json").is_file():
        raise SystemExit(f"no cache at {cache_dir}: run once with --keep first")
    n = sum(1 for _ in open(data_root / "CheXpert-v1.0-small" / "train.csv")) - 1
    out: dict = {"rows": n}
    measure_loaders(out, label, cache_dir, data_root, n, args)
    return out


def _rate(r: dict, name: str) -> str:
    return f"{r[name]['items_per_s']:.0f}" if name in r else "-"


def table(results: list[dict]) -> str:
    lines = ["| rows | stats s | cache build s (img/s) | cache GB | re-run s | incremental s "
             "(files) | start-up s (prepare_data) | moved data s |",
             "|---" * 8 + "|"]
    for r in results:
        if "stats_s" not in r:
            continue
        lines.append(
            f"| {r['rows']:,} | {r['stats_s']:.1f} | {r['cache_build_s']:.0f} "
            f"({r['cache_images_per_s']:.0f}) | {r['cache_gb']} | {r['rerun_s']:.1f} | "
            f"{r['incremental_s']:.1f} ({r['incremental_processed']}) | {r['startup_s']:.1f} "
            f"({r['startup_prepare_s']:.1f}) | {r['moved_s']:.1f} |")
    lines += ["", "| rows | warm random / quasi | cold random per-item / batched | cold quasi "
              "per-item / batched / uint8 | cold ratio (quasi batched / random per-item) | "
              "cold ratio uint8 (quasi uint8 / random per-item) |",
              "|---" * 6 + "|"]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {_rate(r, 'loader_warm_random')} / "
            f"{_rate(r, 'loader_warm_quasi')} | {_rate(r, 'loader_cold_random_per-item')} / "
            f"{_rate(r, 'loader_cold_random')} | {_rate(r, 'loader_cold_quasi_per-item')} / "
            f"{_rate(r, 'loader_cold_quasi')} / {_rate(r, 'loader_cold_quasi_uint8')} | "
            f"{r.get('cold_ratio', '-')}x | {r.get('cold_ratio_uint8', '-')}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=["10000", "50000", "all"])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2, help="cache build workers")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--loader-items", type=int, default=4000)
    parser.add_argument("--phantoms", type=int, default=64)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--work", default="/tmp/cxrlab-full-scale")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the replica and caches")
    parser.add_argument("--loader-only", action="store_true",
                        help="only the loader rows, on replicas kept by --keep; merged into "
                             "--json's entries of the same size")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent / "src"))
    if args.loader_only:
        previous = (json.loads(Path(args.json).read_text())
                    if args.json and Path(args.json).is_file() else [])
        results = []
        for rows in args.rows:
            fresh = loaders_only(None if rows == "all" else int(rows), args)
            entry = next((r for r in previous if r["rows"] == fresh["rows"]), None)
            if entry is None:
                previous.append(fresh)
                entry = fresh
            else:
                for key in [k for k in entry if k.startswith(("loader_", "cold_ratio"))]:
                    del entry[key]  # the old loader's rows: replaced, not mixed
                entry.update(fresh)
            results.append(entry)
            if args.json:
                Path(args.json).write_text(json.dumps(previous, indent=2) + "\n")
        print(table(results))
        return
    phantoms = write_phantoms(Path(args.work) / "phantoms", args.phantoms)
    results = []
    for rows in args.rows:
        results.append(run_size(None if rows == "all" else int(rows), args, phantoms, env))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
