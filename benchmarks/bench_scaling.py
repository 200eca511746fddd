"""Training throughput per (architecture, resolution) and the cost of the seed-001 grid.

Measures, for each configuration, the images per second of a full training step
(forward, BCE loss, backward, AdamW step) on synthetic tensors (no data loading), and
counts the forward FLOPs per image (``torch.utils.flop_counter``). Ratios are printed
against the first configuration measured in the same run.

Then it estimates the cost of a whole study grid (default: seed 001, 5 resolutions x 5
architectures x 5 seeds x 5 tasks, 6 epochs over CheXpert's 223,414 training images):

* measured: time of the configurations benchmarked here, scaled by the number of images
  the grid trains on them;
* extrapolated (labelled so): the other configurations from their FLOPs and the seconds
  per training TFLOP measured here for the same architecture; and GPU hours at an ASSUMED
  sustained training throughput (``--assumed-tflops``, default 50 / 100 / 150 TFLOP/s,
  i.e. 5-15 % of an H100's 989 dense bf16 TFLOP/s; ResNet-50 training at 3,000-6,000
  images/s is 75-150 TFLOP/s), which this script cannot measure without a GPU.

Usage:
    python benchmarks/bench_scaling.py                         # CPU, small subset
    python benchmarks/bench_scaling.py --archs resnet50 densenet121 efficientnet \
        --resolutions 160 320 --batch 8 --steps 3
    python benchmarks/bench_scaling.py --device cuda --precision bf16 --batch 40 --steps 20 \
        --resolutions 160 240 320 400 480                       # on a GPU: measured, not assumed
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cxrlab.models import create_classifier
from cxrlab.models.registry import EFFICIENTNET_FOR_RESOLUTION, SEED001_RESOLUTIONS

SEED001_ARCHS = ("resnet50", "resnet152", "densenet121", "densenet161", "efficientnet")
CHEXPERT_TRAIN_IMAGES = 223_414      # rows of CheXpert-v1.0(-small)/train.csv
CHEXPERT_VALID_IMAGES = 234


def _arch(name: str, resolution: int) -> str:
    return EFFICIENTNET_FOR_RESOLUTION[resolution] if name == "efficientnet" else name


def forward_flops(arch: str, resolution: int) -> float:
    """Forward FLOPs of one 3-channel image (multiply-add = 2 FLOPs)."""
    model = create_classifier(arch, num_classes=1, in_chans=3, pretrained=None).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, resolution, resolution))
    return float(counter.get_total_flops())


def train_throughput(arch: str, resolution: int, batch: int, steps: int, warmup: int, device: str,
                     precision: str, channels_last: bool) -> float:
    """Images per second of full training steps (median step time)."""
    torch.manual_seed(0)
    model = create_classifier(arch, num_classes=1, in_chans=3, pretrained=None).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, resolution, resolution, device=device).to(memory_format=memory_format)
    y = (torch.rand(batch, 1, device=device) > 0.5).float()
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def grid_cost(flops: dict[tuple[str, int], float], measured: dict[tuple[str, int], float], runs_per_cell: int,
              epochs: int, train_images: int, assumed_tflops: list[float]) -> dict:
    """Seconds of the whole grid: measured cells, FLOP-extrapolated cells, assumed GPU rates."""
    images_per_run = epochs * (train_images + CHEXPERT_VALID_IMAGES / 3)   # validation ~ 1/3 of a step
    train_flops = {key: 3.0 * value for key, value in flops.items()}        # forward + backward ~ 3x
    per_tflop = {key: 1.0 / (rate * train_flops[key] / 1e12) for key, rate in measured.items()}
    sec_per_tflop = statistics.median(per_tflop.values())
    cells = {}
    for key, f in train_flops.items():
        images = images_per_run * runs_per_cell
        # An unmeasured cell takes its architecture's measured seconds per TFLOP (the
        # median over all measured cells when the architecture was not measured).
        same_arch = [v for (arch, _), v in per_tflop.items() if arch == key[0]]
        rate = statistics.median(same_arch) if same_arch else sec_per_tflop
        source = "measured" if key in measured else "extrapolated (FLOPs)"
        seconds = images / measured[key] if key in measured else images * f / 1e12 * rate
        cells[f"{key[0]}@{key[1]}"] = {"train_gflops_per_image": f / 1e9, "cpu_hours": seconds / 3600,
                                       "source": source}
    total_tflop = sum(images_per_run * runs_per_cell * f / 1e12 for f in train_flops.values())
    return {"cells": cells, "total_train_pflop": total_tflop / 1e3,
            "cpu_hours": sum(c["cpu_hours"] for c in cells.values()),
            "cpu_seconds_per_train_tflop": sec_per_tflop,
            "assumed_gpu_hours": {f"{t:g} TFLOP/s": total_tflop / t / 3600 for t in assumed_tflops}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet50", "densenet121", "efficientnet"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[160, 320])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5, help="binary runs per cell (1 = multi-label)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=CHEXPERT_TRAIN_IMAGES)
    parser.add_argument("--assumed-tflops", nargs="+", type=float, default=[50.0, 100.0, 150.0],
                        help="ASSUMED sustained GPU training TFLOP/s for the extrapolation")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    flops = {(a, r): forward_flops(_arch(a, r), r) for a in SEED001_ARCHS for r in SEED001_RESOLUTIONS}
    measured: dict[tuple[str, int], float] = {}
    print(f"device {args.device}, precision {args.precision}, batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'configuration':<26}{'fwd GFLOPs':>11}{'images/s':>10}{'ratio':>8}{'TFLOP/s':>9}")
    baseline = None
    for name in args.archs:
        for resolution in args.resolutions:
            arch = _arch(name, resolution)
            rate = train_throughput(arch, resolution, args.batch, args.steps, args.warmup, args.device,
                                    args.precision, args.channels_last)
            measured[(name, resolution)] = rate
            baseline = baseline or rate
            gflops = flops[(name, resolution)] / 1e9
            print(f"{arch + '@' + str(resolution):<26}{gflops:>11.2f}{rate:>10.2f}{rate / baseline:>8.3f}"
                  f"{3 * gflops * rate / 1e3:>9.3f}")
    cost = grid_cost(flops, measured, args.seeds * args.tasks, args.epochs, args.train_images, args.assumed_tflops)
    runs = len(SEED001_ARCHS) * len(SEED001_RESOLUTIONS) * args.seeds * args.tasks
    print(f"\nGrid: {runs} runs x {args.epochs} epochs x {args.train_images:,} images; "
          f"{cost['total_train_pflop']:.0f} PFLOP of training compute")
    print(f"  this device, measured cells + FLOP-extrapolated rest: {cost['cpu_hours']:,.0f} device-hours "
          f"({cost['cpu_seconds_per_train_tflop']:.1f} s per training TFLOP)")
    for label, hours in cost["assumed_gpu_hours"].items():
        print(f"  EXTRAPOLATION at an assumed {label} sustained GPU throughput: {hours:,.0f} GPU-hours")
    if args.out:
        record = {"measured_images_per_second": {f"{a}@{r}": v for (a, r), v in measured.items()},
                  "forward_gflops": {f"{a}@{r}": v / 1e9 for (a, r), v in flops.items()}, **cost,
                  "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
