"""CPU inference speed: torchxrayvision vs cxrlab eager vs cxrlab ONNX Runtime fp32 / INT8, one run.

Contenders, all with the same intra-op thread count (``--threads``, default 2):

- ``xrv``: ``torchxrayvision.models.DenseNet(weights=None)`` (architecture only, no download;
  random weights are fine for speed), PyTorch eager, ``no_grad``;
- ``torch``: cxrlab's densenet121 classifier (``create_classifier``), PyTorch eager through
  :class:`~cxrlab.inference.backends.TorchBackend` (what ``--backend torch`` runs);
- ``onnx-fp32``: the same network exported by :func:`~cxrlab.inference.backends.export_onnx`
  (what ``cxrlab export`` writes), ONNX Runtime with all graph optimizations;
- ``onnx-int8``: that file quantized by :func:`~cxrlab.inference.export.quantize_static_int8`
  (static QDQ, per-channel weights; what ``cxrlab export --quantize int8`` writes),
  calibrated on preprocessed phantoms;
- ``onnx-int8-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` of the fp32 file, for
  the static-vs-dynamic choice.

For densenet121 at 224 and 320 px (1 channel, 14 labels) and for the seed-002 U-Net
(ResNet34 encoder, 3 channels, 2 classes) at 256 px (no xrv contender): latency at batch 1
(median) and images/s at batch 16 (median batch time). Each contender is measured twice,
alternating, and keeps its better median so load drift favours none. Ratios against xrv
(batch-1 latency) and against cxrlab eager (batch-16 images/s) are printed with the
issue's targets; ``--out`` writes everything as JSON.

Usage:
    python benchmarks/bench_inference.py [--threads 2] [--repeats 20] [--batch-repeats 5]
        [--sizes 224 320] [--no-unet] [--out bench_inference.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cxrlab.data.synthetic import generate_phantom
from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
from cxrlab.inference.backends import OnnxBackend, TorchBackend, export_onnx
from cxrlab.inference.export import quantize_static_int8
from cxrlab.models import create_classifier
from cxrlab.models.segmentation import create_unet

TARGETS = {"onnx-fp32 latency / xrv": ("<=", 0.45), "onnx-int8 latency / xrv": ("<=", 0.30),
           "onnx-fp32 img/s / torch": (">=", 1.8)}


def phantoms(n: int, size: int, channels: int) -> np.ndarray:
    """``(n, C, size, size)`` preprocessed phantom radiographs (calibration and inputs)."""
    cfg = PreprocessConfig(size=size)
    return torch.stack([to_tensor(preprocess(generate_phantom(np.random.default_rng(i), 2 * size,
                                                              ["cardiomegaly"] if i % 2 else []).image, cfg),
                                  channels=channels, normalization="unit") for i in range(n)]).numpy()


def median_time(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def contenders(module: torch.nn.Module, xrv_model: torch.nn.Module | None, shape: tuple[int, int, int],
               folder: Path, threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> batch runner, exporting and quantizing ``module`` into ``folder``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if xrv_model is not None:
        runners["xrv"] = TorchBackend(xrv_model)
    runners["torch"] = TorchBackend(module)
    fp32 = folder / "model.onnx"
    export_onnx(module, fp32, shape)
    runners["onnx-fp32"] = OnnxBackend(fp32, threads=threads)
    calibration = phantoms(16, shape[1], shape[0])
    int8 = quantize_static_int8(fp32, folder / "model.int8.onnx", [calibration[:8], calibration[8:]])
    runners["onnx-int8"] = OnnxBackend(int8, threads=threads)
    dynamic = folder / "model.dynamic.onnx"
    try:
        quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QUInt8)
        runners["onnx-int8-dynamic"] = OnnxBackend(dynamic, threads=threads)
    except Exception as err:  # noqa: BLE001 - a benchmark reports an unsupported graph and goes on
        print(f"  dynamic INT8 not measured: {type(err).__name__}: {err}")
    return runners


def measure(name: str, runners: dict[str, Callable[[np.ndarray], np.ndarray]], shape: tuple[int, int, int],
            repeats: int, batch_repeats: int) -> dict[str, dict[str, float]]:
    one = phantoms(1, shape[1], shape[0])
    sixteen = np.concatenate([one] * 16)
    out = {k: {"latency_ms": float("inf"), "batch16_img_s": 0.0} for k in runners}
    for _ in range(2):
        for key, run in runners.items():
            out[key]["latency_ms"] = min(out[key]["latency_ms"], 1000 * median_time(run, one, repeats))
            out[key]["batch16_img_s"] = max(out[key]["batch16_img_s"],
                                            16 / median_time(run, sixteen, batch_repeats, warmup=1))
    print(f"\n{name}", flush=True)
    print(f"  {'contender':<18} {'batch-1 ms':>11} {'batch-16 img/s':>15} {'lat/xrv':>8} {'lat/torch':>10} "
          f"{'img/s vs torch':>15}")
    for key, row in out.items():
        row["latency_vs_xrv"] = row["latency_ms"] / out["xrv"]["latency_ms"] if "xrv" in out else float("nan")
        row["latency_vs_torch"] = row["latency_ms"] / out["torch"]["latency_ms"]
        row["img_s_vs_torch"] = row["batch16_img_s"] / out["torch"]["batch16_img_s"]
        print(f"  {key:<18} {row['latency_ms']:11.1f} {row['batch16_img_s']:15.1f} {row['latency_vs_xrv']:8.2f} "
              f"{row['latency_vs_torch']:10.2f} {row['img_s_vs_torch']:15.2f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every contender")
    parser.add_argument("--repeats", type=int, default=20, help="batch-1 timings per round")
    parser.add_argument("--batch-repeats", type=int, default=5, help="batch-16 timings per round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--no-unet", action="store_true", help="skip the U-Net at 256 px")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    import logging
    import os

    import torchxrayvision as xrv

    logging.disable(logging.WARNING)  # onnxruntime.quantization's per-tensor notices

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {"threads": args.threads, "torch": torch.__version__,
                                  "load_average": os.getloadavg(), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = Path(tmp) / f"densenet{size}"
            folder.mkdir()
            ours = create_classifier("densenet121", num_classes=14, in_chans=1, head="linear", pretrained=None)
            theirs = xrv.models.DenseNet(weights=None, num_classes=18, in_channels=1).eval()
            shape = (1, size, size)
            key = f"densenet121@{size}"
            results[key] = measure(key, contenders(ours, theirs, shape, folder, args.threads), shape,
                                   args.repeats, args.batch_repeats)
            save(args.out, results)
        if not args.no_unet:
            folder = Path(tmp) / "unet"
            folder.mkdir()
            unet = create_unet("resnet34", in_chans=3, classes=2)
            shape = (3, 256, 256)
            results["unet-resnet34@256"] = measure("unet-resnet34@256 (seed 002)",
                                                   contenders(unet, None, shape, folder, args.threads), shape,
                                                   args.repeats, args.batch_repeats)
            save(args.out, results)
    results["load_average_after"] = os.getloadavg()
    if "densenet121@224" in results:
        row = results["densenet121@224"]
        measured = {"onnx-fp32 latency / xrv": row["onnx-fp32"]["latency_vs_xrv"],
                    "onnx-int8 latency / xrv": row["onnx-int8"]["latency_vs_xrv"],
                    "onnx-fp32 img/s / torch": row["onnx-fp32"]["img_s_vs_torch"]}
        print("\ntargets (densenet121 224 px):")
        for name, value in measured.items():
            op, bound = TARGETS[name]
            met = value <= bound if op == "<=" else value >= bound
            print(f"  {name:<26} {value:6.2f}  target {op} {bound}  {'met' if met else 'NOT met'}")
        results["targets"] = {k: {"value": v, "target": f"{TARGETS[k][0]} {TARGETS[k][1]}"} for k, v in measured.items()}
    print(f"\nload average before/after: {results['load_average']} / {results['load_average_after']}")
    save(args.out, results)
    if args.out is not None:
        print(f"wrote {args.out}")


def save(path: Path | None, results: dict[str, object]) -> None:
    """Write the results so far (a long run killed midway keeps its finished sections)."""
    if path is not None:
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
