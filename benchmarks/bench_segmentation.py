"""Training throughput and memory of the pneumothorax U-Net, fp32 against bf16, in one run.

Trains the seed-002 baseline U-Net (smp U-Net, ResNet34 encoder, 3 input channels, two
output channels, Jaccard loss, Adam) for ``--steps`` steps on SYNTHETIC phantom
radiographs with pneumothorax masks (``cxrlab.data.synthetic``) at ``--size`` pixels, once
per ``--precisions`` entry, and prints images/s (median step time), the ratio against the
first precision measured in the same run, and the peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` per precision (reset before each);
* CPU: the process's peak resident set size so far (``ru_maxrss``; it only grows, so
  read the first row as the honest one).

The batch is built once and kept on the device (no data loading in the loop): this
measures the model, the loss and the optimizer, as a GPU check of issue 5 asks.

Usage:
    python benchmarks/bench_segmentation.py                                  # CPU smoke: 128 px
    python benchmarks/bench_segmentation.py --device cuda --size 512 --batch 16 --steps 300 \
        --channels-last                                                       # the GPU check
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cxrlab.data.synthetic import generate_phantom
from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
from cxrlab.losses.segmentation import create_segmentation_loss
from cxrlab.models.segmentation import create_unet, foreground_logits


def phantom_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` phantom radiographs (3 channels, unit range) and their pneumothorax masks."""
    rng = np.random.default_rng(seed)
    cfg = PreprocessConfig(size=size)
    images, masks = [], []
    for k in range(batch):
        phantom = generate_phantom(rng, size, ["pneumothorax"] if k % 2 == 0 else [])
        images.append(to_tensor(preprocess(phantom.image, cfg), channels=3, normalization="unit"))
        mask = phantom.masks.get("pneumothorax")
        masks.append(torch.from_numpy(np.zeros((size, size), np.float32) if mask is None
                                      else mask.astype(np.float32))[None])
    return torch.stack(images), torch.stack(masks)


def _peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KiB on Linux


def train_steps(encoder: str, images: torch.Tensor, masks: torch.Tensor, steps: int, warmup: int,
                device: str, precision: str, channels_last: bool, loss_name: str) -> dict[str, float]:
    """Median step time of forward + loss + backward + Adam step; images/s and peak memory."""
    torch.manual_seed(0)
    model = create_unet(encoder, in_chans=images.shape[1], classes=2, pretrained=None).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    loss_fn = create_segmentation_loss(loss_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = images.to(device).contiguous(memory_format=memory_format)
    y = masks.to(device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            output = model(x)
        loss = loss_fn(foreground_logits(output.float()), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{precision}: the loss is {loss.item()} after {steps} steps")
    return {"images_per_second": len(x) / statistics.median(times), "step_seconds": statistics.median(times),
            "peak_memory_mib": _peak_memory_mib(device), "final_loss": float(loss.item())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", choices=["32", "bf16"], default=["32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--loss", default="jaccard", help="seed 002: jaccard")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")

    images, masks = phantom_batch(args.batch, args.size)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"U-Net {args.encoder}, {args.size} px, batch {args.batch}, {args.steps} steps (+{args.warmup} warm-up), "
          f"channels_last {args.channels_last}, loss {args.loss}; {name}; SYNTHETIC phantoms")
    print(f"{'precision':<10}{'images/s':>10}{'ratio':>8}{'step s':>9}{'peak MiB':>10}{'loss':>8}")
    results, first = {}, None
    for precision in args.precisions:
        row = train_steps(args.encoder, images, masks, args.steps, args.warmup, args.device, precision,
                          args.channels_last, args.loss)
        first = first or row["images_per_second"]
        row["ratio"] = row["images_per_second"] / first
        results[precision] = row
        print(f"{precision:<10}{row['images_per_second']:>10.2f}{row['ratio']:>8.2f}{row['step_seconds']:>9.3f}"
              f"{row['peak_memory_mib']:>10.0f}{row['final_loss']:>8.3f}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": name,
                                        "results": results}, indent=2))


if __name__ == "__main__":
    main()
