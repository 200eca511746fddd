"""Training-step overhead of the Lightning engine, and single-image inference latency.

Two measurements, each against a baseline measured in the same run:

1. Training-step time of cxrlab's Lightning module (``ClassifierModule`` under
   ``lightning.Trainer``) vs a plain PyTorch loop, same model, batch, loss and optimizer,
   on synthetic tensors (so data loading is out of the picture). Target ratio <= 1.10.
2. Single-image CPU latency (batch 1, eval, no_grad) of cxrlab's densenet121 at 224 px
   vs torchxrayvision's DenseNet-121 at 224 px (weights=None; architecture only, so no
   download). Target ratio <= 1.1.

Usage:
    python benchmarks/bench_engine.py [--arch resnet18] [--size 128] [--batch 16] [--steps 20]

With a GPU: ``--device cuda --precision bf16-mixed --channels-last --arch densenet121
--size 320`` times the training images/s of densenet121 at 320 px on synthetic tensors;
``benchmarks/bench_data_loading.py`` times the input pipeline on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import numpy as np
import torch

from cxrlab.engine.module import ClassifierModule
from cxrlab.engine.optim import OptimSpec
from cxrlab.losses import create_loss
from cxrlab.models import create_classifier


class _Tensors(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int, channels: int, classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, channels, size, size, generator=g)
        self.y = (torch.rand(n, classes, generator=g) > 0.5).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "labels": self.y[i], "index": i}


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def _spec() -> OptimSpec:
    return OptimSpec(optimizer="adam", lr_body=1e-4, lr_head=1e-3, freeze_body=False,
                     schedule="constant", total_steps=1000)


def lightning_steps(args, loader) -> list[float]:
    model = create_classifier(args.arch, num_classes=5, in_chans=3, head="concat", pretrained=None)
    n = len(loader.dataset)
    module = ClassifierModule(model, create_loss("bce"), [f"c{i}" for i in range(5)], list(range(5)),
                              item_study_ids=np.arange(n).astype(str), item_labels=np.zeros((n, 5)),
                              optim=_spec(), channels_last=args.channels_last)
    timer = _StepTimer()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=args.steps + args.warmup, limit_val_batches=0,
                        accelerator=args.device if args.device != "cuda" else "gpu", devices=1,
                        precision=args.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        num_sanity_val_steps=0)
    trainer.fit(module, loader)
    return timer.times[args.warmup:]


def plain_steps(args, loader) -> list[float]:
    device = torch.device(args.device)
    model = create_classifier(args.arch, num_classes=5, in_chans=3, head="concat", pretrained=None).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = create_loss("bce")
    optimizer = torch.optim.Adam([{"params": model.body.parameters(), "lr": 1e-4},
                                  {"params": model.head.parameters(), "lr": 1e-3}])
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float16
    model.train()
    times: list[float] = []
    for step, batch in enumerate(loader):
        if step >= args.steps + args.warmup:
            break
        t = time.perf_counter()
        x = batch["image"].to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "32"):
            loss = loss_fn(model(x).float(), batch["labels"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times[args.warmup:]


def latency(model: torch.nn.Module, size: int, repeats: int) -> float:
    model.eval()
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = _Tensors((args.steps + args.warmup) * args.batch, args.size, 3, 5)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=False)
    # Alternate the two so drift in machine load affects both alike.
    plain_a = plain_steps(args, loader)
    light = lightning_steps(args, loader)
    plain_b = plain_steps(args, loader)
    plain = statistics.median(plain_a + plain_b)
    engine = statistics.median(light)
    print(f"training step, {args.arch} {args.size}px batch {args.batch} on {args.device} ({args.precision}):")
    print(f"  plain PyTorch loop   {plain * 1000:8.1f} ms/step  {args.batch / plain:8.1f} img/s")
    print(f"  cxrlab Lightning     {engine * 1000:8.1f} ms/step  {args.batch / engine:8.1f} img/s")
    print(f"  ratio Lightning/plain = {engine / plain:.3f}  (target <= 1.10)")

    if args.skip_latency:
        return
    import torchxrayvision as xrv

    ours = create_classifier("densenet121", num_classes=18, in_chans=1, head="linear", pretrained=None)
    theirs = xrv.models.DenseNet(weights=None, num_classes=18, in_channels=1)
    # Alternate and keep each model's best median, so load drift favours neither.
    t_theirs, t_ours = float("inf"), float("inf")
    for _ in range(2):
        t_theirs = min(t_theirs, latency(theirs, 224, args.latency_repeats))
        t_ours = min(t_ours, latency(ours, 224, args.latency_repeats))
    print("single-image CPU latency, densenet121 224px, batch 1:")
    print(f"  torchxrayvision DenseNet  {t_theirs * 1000:8.1f} ms")
    print(f"  cxrlab densenet121        {t_ours * 1000:8.1f} ms")
    print(f"  ratio cxrlab/xrv = {t_ours / t_theirs:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
