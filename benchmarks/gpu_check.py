"""One-call GPU check: the throughput figures the issues asked for, as one JSON + a table.

Measured (each for ``--seconds`` after ``--warmup`` steps, images/s):

1. ``classifier_synthetic``: densenet121 at 320 px, bf16 autocast, channels-last, AdamW
   training steps on random tensors already on the GPU (the compute ceiling);
   ``classifier_loader``: the same steps fed by the real loader (``ImageDataset`` over a
   resolution cache of phantom JPEGs, ``BlockShuffleSampler``, 2 workers); the ratio
   says whether the loader keeps up.
2. ``unet_fp32`` / ``unet_bf16``: seed 002's U-Net (ResNet34 encoder, 2 classes) at
   512 px, training steps.
3. ``screening_ensemble`` / ``screening_shared``: seed 003 at 1024 px, inference: one
   ``MultiTaskNet`` per disease (five) vs one ``SharedEncoderNet`` with five heads.
4. ``mini_study``: 2 resolutions x 2 architectures, training images/s per cell.
5. ``ddp``: training images/s of (1) on every visible GPU with DistributedDataParallel
   (``torch.multiprocessing.spawn``, NCCL); skipped with one GPU.

``--smoke`` runs every measurement on CPU at toy sizes (64 px, resnet18 bodies, a few
steps) in seconds so the script is exercised by ``make test``; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def _scalar(output) -> torch.Tensor:
    """Sum of the means of every tensor in a model output (a loss for timing)."""
    if torch.is_tensor(output):
        return output.float().mean()
    if isinstance(output, dict):
        output = list(output.values())
    return sum(_scalar(o) for o in output if o is not None)


def _rate(step, batch: int, warmup: int, seconds: float, device: torch.device,
          max_steps: int | None = None) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and (max_steps is None or done < max_steps):
        step()
        done += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return round(done * batch / (time.perf_counter() - start), 1)


def _train_step(model, batch_fn, device, dtype, channels_last=False):
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        x = batch_fn()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = _scalar(model(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _phantom_loader(size: int, n: int, batch: int, workers: int, root: Path,
                    normalize: bool = True):
    from cxrlab.data.cache import ensure_cache
    from cxrlab.data.datasets import load_dataset
    from cxrlab.data.samplers import BlockShuffleSampler, block_items
    from cxrlab.data.synthetic_layouts import write_dataset
    from cxrlab.data.torch import ImageDataset, collate_items
    from cxrlab.data.transforms import PreprocessConfig

    data = write_dataset("chexpert", root / "data", n=n, size=max(64, size), seed=0,
                         valid_fraction=0.0)
    dataset = load_dataset("chexpert", csv=data / "CheXpert-v1.0-small" / "train.csv",
                           root=data)
    cfg = PreprocessConfig(size=size)
    cache = ensure_cache(dataset, cfg, root / "cache", workers=max(1, workers)).cache
    block = block_items(cache.item_bytes)
    ds = ImageDataset(dataset, cfg, channels=3, cache=cache, read_block=block,
                      normalize=normalize)
    return torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                       collate_fn=collate_items,
                                       sampler=BlockShuffleSampler(len(ds), block, seed=0),
                                       pin_memory=torch.cuda.is_available(), drop_last=True,
                                       persistent_workers=workers > 0)


def _ddp_worker(rank: int, world: int, arch: str, size: int, batch: int, seconds: float,
                queue) -> None:
    import torch.distributed as dist

    from cxrlab.models import create_classifier

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    model = create_classifier(arch, num_classes=5, in_chans=3).to(device)
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    x = torch.randn(batch, 3, size, size, device=device)
    step = _train_step(model, lambda: x, device, half, channels_last=True)
    rate = _rate(step, batch, 3, seconds, device)
    dist.destroy_process_group()
    queue.put((rank, rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes, seconds")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    from cxrlab.models import create_classifier
    from cxrlab.models.multitask import MultiTaskNet, SharedEncoderNet
    from cxrlab.models.segmentation import create_unet

    smoke = args.smoke
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    if not smoke and device.type != "cuda":
        raise SystemExit("no CUDA device; run with --smoke for the CPU check")
    seconds, warmup = (0.1, 0) if smoke else (args.seconds, args.warmup)
    steps = 1 if smoke else None
    half = torch.float32 if smoke else torch.bfloat16  # bf16 on CPU is emulated: slow
    cls_arch, cls_size, cls_batch = ("test_resnet", 32, 2) if smoke else ("densenet121", 320, 64)
    seg_enc, seg_size, seg_batch = ("resnet18", 64, 2) if smoke else ("resnet34", 512, 16)
    scr_enc, scr_size, scr_batch = ("resnet18", 32, 1) if smoke else ("densenet121", 1024, 8)
    diseases = ["nodule", "effusion", "pneumothorax", "cardiomegaly", "consolidation"]
    results: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else
                     platform.processor() or "cpu", "smoke": smoke,
                     "torch": torch.__version__, "gpus": torch.cuda.device_count()}
    started = time.perf_counter()

    # 1. classifier: synthetic tensors vs the real loader
    model = create_classifier(cls_arch, num_classes=5, in_chans=3)
    x = torch.randn(cls_batch, 3, cls_size, cls_size, device=device)
    results["classifier_synthetic"] = _rate(
        _train_step(model, lambda: x, device, half, channels_last=True),
        cls_batch, warmup, seconds, device, steps)
    from cxrlab.data.torch import normalize_batch

    # "loader": float32 batches normalized in the workers (data.normalize_on=loader);
    # "loader_uint8": uint8 batches normalized on the device (normalize_on=device, the
    # default on a GPU).
    for name, normalize in (("classifier_loader", True), ("classifier_loader_uint8", False)):
        with tempfile.TemporaryDirectory() as tmp:
            loader = _phantom_loader(cls_size, 8 if smoke else 2000, cls_batch,
                                     0 if smoke else 2, Path(tmp), normalize=normalize)
            batches = iter(())

            def real_batch(loader=loader, normalize=normalize) -> torch.Tensor:
                nonlocal batches
                try:
                    item = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    item = next(batches)
                images = item["image"].to(device, non_blocking=True)
                return images if normalize else normalize_batch(images, 3, "imagenet")

            results[name] = _rate(
                _train_step(model, real_batch, device, half, channels_last=True),
                cls_batch, warmup, seconds, device, steps)
            del loader
    results["loader_keeps_up"] = round(results["classifier_loader"]
                                       / results["classifier_synthetic"], 3)
    results["loader_uint8_keeps_up"] = round(results["classifier_loader_uint8"]
                                             / results["classifier_synthetic"], 3)

    # 2. U-Net fp32 vs bf16
    for name, dtype in (("unet_fp32", torch.float32), ("unet_bf16", half)):
        unet = create_unet(seg_enc, in_chans=3, classes=2)
        xs = torch.randn(seg_batch, 3, seg_size, seg_size, device=device)
        results[name] = _rate(_train_step(unet, lambda: xs, device, dtype), seg_batch, warmup,
                              seconds, device, steps)
        del unet

    # 3. screening: five per-disease networks vs one shared encoder (inference)
    xr = torch.randn(scr_batch, 1, scr_size, scr_size, device=device)
    ensemble = [MultiTaskNet(encoder=scr_enc, num_classes=3, in_chans=1).to(device).eval()
                for _ in diseases]
    shared = SharedEncoderNet(diseases=diseases, encoder=scr_enc, num_classes=3,
                              in_chans=1).to(device).eval()

    def infer(models):
        def step() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                 enabled=not smoke):
                for m in models:
                    m(xr)
        return step

    results["screening_ensemble"] = _rate(infer(ensemble), scr_batch, warmup, seconds,
                                          device, steps)
    results["screening_shared"] = _rate(infer([shared]), scr_batch, warmup, seconds, device,
                                        steps)
    del ensemble, shared

    # 4. mini study: 2 resolutions x 2 architectures
    sizes = (32, 48) if smoke else (240, 320)
    archs = ("test_resnet", "resnet18") if smoke else ("densenet121", "resnet50")
    results["mini_study"] = {}
    for arch in archs:
        for size in sizes:
            net = create_classifier(arch, num_classes=5, in_chans=3)
            xm = torch.randn(cls_batch, 3, size, size, device=device)
            results["mini_study"][f"{arch}@{size}"] = _rate(
                _train_step(net, lambda: xm, device, half, channels_last=True),
                cls_batch, warmup, seconds / 2, device, steps)
            del net

    # 5. DDP on every GPU
    world = torch.cuda.device_count() if device.type == "cuda" else 0
    if world > 1:
        import torch.multiprocessing as mp

        queue = mp.get_context("spawn").SimpleQueue()
        mp.spawn(_ddp_worker, args=(world, cls_arch, cls_size, cls_batch, seconds, queue),
                 nprocs=world, join=True)
        rates = dict(queue.get() for _ in range(world))
        results["ddp"] = {"gpus": world, "images_per_s": round(sum(rates.values()), 1),
                          "scaling": round(sum(rates.values())
                                           / results["classifier_synthetic"], 2)}
    else:
        results["ddp"] = {"gpus": world, "skipped": "needs at least 2 GPUs"}
    results["seconds"] = round(time.perf_counter() - started, 1)

    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    rows = [("classifier synthetic (img/s)", results["classifier_synthetic"]),
            ("classifier real loader (img/s)", results["classifier_loader"]),
            ("loader / synthetic", results["loader_keeps_up"]),
            ("classifier real loader, uint8 + on-device normalize (img/s)",
             results["classifier_loader_uint8"]),
            ("loader uint8 / synthetic", results["loader_uint8_keeps_up"]),
            ("U-Net fp32 (img/s)", results["unet_fp32"]),
            ("U-Net bf16 (img/s)", results["unet_bf16"]),
            ("screening ensemble (img/s)", results["screening_ensemble"]),
            ("screening shared (img/s)", results["screening_shared"]),
            *((f"mini study {k} (img/s)", v) for k, v in results["mini_study"].items()),
            ("DDP", json.dumps(results["ddp"]))]
    print(f"| measurement ({results['device']}{', smoke' if smoke else ''}) | value |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
