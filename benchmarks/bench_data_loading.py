"""Data-loading throughput: per-item decoding vs the resolution cache vs torchxrayvision.

Synthesizes a CheXpert-layout phantom set (JPEGs at ``--source-size``), then reads
``--items`` images at ``--size`` px three ways, single process:

a. ``ImageDataset`` without a cache: decode the JPEG, percentile clip, pad, Lanczos
   resize, to_tensor — per item;
b. ``ImageDataset(cache=...)``: one memory-map slice + to_tensor per item;
c. ``torchxrayvision.datasets.CheX_Dataset`` on the same files with
   ``XRayCenterCrop() + XRayResizer(size)`` (its documented transform).

and, with ``--loader-workers K`` (K > 0), the same three through a DataLoader with K
worker processes. Prints items/s and the ratios b/a and b/c. Synthetic phantoms, not
patient data; both caches are read warm (the files were just written, so the page
cache holds them), which is the steady state of a training run after epoch 1.

Usage::

    python benchmarks/bench_data_loading.py --n 400 --source-size 1024 --size 320
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _items_per_second(get: Callable[[int], object], count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        get(i)
    return count / (time.perf_counter() - start)


def _loader_items_per_second(dataset: torch.utils.data.Dataset, count: int, workers: int,
                             batch_size: int) -> float:
    subset = torch.utils.data.Subset(dataset, range(count))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=lambda batch: len(batch))
    start = time.perf_counter()
    seen = sum(loader)
    return seen / (time.perf_counter() - start)


class _XrvCheX(torch.utils.data.Dataset):
    """``CheX_Dataset`` on the phantom set (all views, one row per image, as ours)."""

    def __init__(self, images: Path, csv: Path, size: int) -> None:
        import torchvision
        import torchxrayvision as xrv

        transform = torchvision.transforms.Compose(
            [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(size)])
        self.inner = xrv.datasets.CheX_Dataset(imgpath=str(images), csvpath=str(csv),
                                               views=["*"], transform=transform,
                                               unique_patients=False)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict:
        return self.inner[i]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="phantom images to synthesize")
    parser.add_argument("--source-size", type=int, default=1024, help="JPEG side (px)")
    parser.add_argument("--size", type=int, default=320, help="training resolution (px)")
    parser.add_argument("--items", type=int, default=None,
                        help="items read per method (default: all n)")
    parser.add_argument("--workers", type=int, default=2, help="processes building the cache")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="also measure through a DataLoader with this many workers")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads of the reading process (DataLoader "
                             "workers always use 1)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="keep the phantom set and cache here and reuse a phantom set "
                             "written there with the same --n/--source-size "
                             "(default: a temp folder, deleted)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)

    import cv2
    import torchxrayvision as xrv  # noqa: F401  (fail early when missing)

    from cxrlab.data.cache import build_cache
    from cxrlab.data.datasets import load_dataset
    from cxrlab.data.synthetic_layouts import write_dataset
    from cxrlab.data.torch import ImageDataset
    from cxrlab.data.transforms import PreprocessConfig

    work = args.dir or Path(tempfile.mkdtemp(prefix="cxrlab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        root = work / "phantoms"
        if not _same_phantoms(root, args.n, args.source_size):
            write_dataset("chexpert", root, n=args.n, size=args.source_size, seed=0,
                          valid_fraction=0.0, overwrite=True)
        csv = root / "CheXpert-v1.0-small" / "train.csv"
        synth_s = time.perf_counter() - start
        dataset = load_dataset("chexpert", csv=csv)
        count = min(args.items or len(dataset), len(dataset))
        cfg = PreprocessConfig(size=args.size)
        start = time.perf_counter()
        cache = build_cache(dataset, cfg, work / f"cache{args.size}", workers=args.workers,
                            progress=False, overwrite=True)
        build_s = time.perf_counter() - start

        plain = ImageDataset(dataset, cfg, normalization="xrv")
        cached = ImageDataset(dataset, cfg, normalization="xrv", cache=cache)
        xrv_set = _XrvCheX(csv.parent, csv, args.size)
        if len(xrv_set) != len(dataset):
            raise RuntimeError(f"torchxrayvision sees {len(xrv_set)} images, cxrlab "
                               f"{len(dataset)}")
        print(f"{len(dataset)} synthetic CheXpert-layout JPEGs at {args.source_size} px "
              f"(ready in {synth_s:.1f} s); {count} items per method at {args.size} px; "
              f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), "
              f"OpenCV {cv2.__version__}")
        print(f"cache build: {build_s:.2f} s with {args.workers} worker(s) = "
              f"{len(dataset) / build_s:.1f} images/s, {cache.nbytes / 2**20:.1f} MiB")

        results = {}
        for name, ds in (("a", plain), ("b", cached), ("c", xrv_set)):
            ds[0]  # first touch: imports, lazy setup
            results[name] = _items_per_second(ds.__getitem__, count)
        _print("single process (num_workers=0)", results)
        if args.loader_workers > 0:
            loaded = {name: _loader_items_per_second(ds, count, args.loader_workers,
                                                     args.batch_size)
                      for name, ds in (("a", plain), ("b", cached), ("c", xrv_set))}
            _print(f"DataLoader, num_workers={args.loader_workers}, "
                   f"batch {args.batch_size}", loaded)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _same_phantoms(root: Path, n: int, size: int) -> bool:
    """Whether ``root`` already holds the phantom set this run would write."""
    import json

    try:
        manifest = json.loads((root / "synthetic_manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("layout"), manifest.get("n"), manifest.get("size"),
            manifest.get("seed")) == ("chexpert", n, size, 0)


def _print(title: str, ips: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"  (a) ImageDataset, decode + preprocess per item : {ips['a']:9.1f} items/s")
    print(f"  (b) ImageDataset, resolution cache             : {ips['b']:9.1f} items/s")
    print(f"  (c) torchxrayvision CheX_Dataset               : {ips['c']:9.1f} items/s")
    print(f"  b/a = {ips['b'] / ips['a']:.1f}x   b/c = {ips['b'] / ips['c']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
