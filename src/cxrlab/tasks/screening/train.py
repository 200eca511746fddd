"""Normal-screening pipeline (seed 003, SCXNN): recipe, data, training and the ensemble.

``train_screening(cfg)`` trains, for every configured disease, a
:class:`~cxrlab.models.multitask.MultiTaskNet` (hard labels with masks, then weak labels
with the decoder frozen), and — beyond the seed — one
:class:`~cxrlab.models.multitask.SharedEncoderNet` with a head per disease. For each
variant an SVM (scikit-learn) on the concatenated logits decides normal vs abnormal; its
operating point is chosen on the validation split for a target sensitivity (default
0.99) and stored with it. Then it writes the reports
(:mod:`cxrlab.tasks.screening.evaluate`) and runs the configured ablations.

Run directory::

    RUN/config.yaml  split.json  status.json  report.json  report.md
    RUN/<variant>/model_<disease>.pt | shared.pt     networks with their metadata
    RUN/<variant>/history_*.csv                       one row per epoch
    RUN/<variant>/svm.pkl  operating_point.json       the second classifier
    RUN/predictions/<variant>_<set>.csv               per image: truth, logits, decision
    RUN/tables/*.csv|md                               Tables 2, 3, 9, ablations, cost
    RUN/ablations/<name>/                             one sub-run per ablation

``svm.pkl`` is a pickle (scikit-learn's format): load run directories you trust only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.config.screening import ScreeningConfig, slug
from cxrlab.data.screening import (
    DilationConfig,
    ScreeningItems,
    ScreeningStore,
    screening_augment,
)
from cxrlab.engine.distributed import torch_threads, world
from cxrlab.engine.screening import (
    PhaseSchedule,
    predict_logits,
    resolve_device,
    train_network,
)
from cxrlab.losses.screening import ScreeningLoss
from cxrlab.models.multitask import (
    MultiTaskNet,
    SharedEncoderNet,
    save_multitask_checkpoint,
)
from cxrlab.tasks.screening.data import ScreeningData, _loader
from cxrlab.utils import atomic_write_text

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- recipe


# ----------------------------------------------------------------------------- data


# ----------------------------------------------------------------------------- training


def _schedules(cfg: ScreeningConfig):

    t = cfg.train
    common = dict(lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas), patience=t.patience,
                  factor=t.lr_factor, min_lr=t.min_lr, monitor=t.monitor)
    return (PhaseSchedule(max_epochs=t.phase1_epochs, **common),
            PhaseSchedule(max_epochs=t.phase2_epochs, train_encoder=t.phase2_train_encoder,
                          **common))


def network_meta(cfg: ScreeningConfig, variant: str, disease: str | None) -> dict[str, Any]:
    """Metadata stored with each network (what ``predict`` needs to preprocess an image)."""
    return {"variant": variant, "disease": disease, "diseases": list(cfg.data.diseases),
            "preprocessing": cfg.preprocess().to_dict(), "order": "seed003",
            "channels": cfg.data.channels, "normalization": cfg.data.normalization,
            "run_name": cfg.name}


def train_job(cfg: ScreeningConfig, store_folder: str, targets: np.ndarray,
              parts: dict[str, np.ndarray], variant: str, k: int | None, run_dir: str,
              report: Callable[[str], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train one network: disease ``k``'s model of the ensemble, or the shared one (None).

    Runs in this process or in a worker (:func:`train_networks`); saves
    ``run_dir/variant/{model_<disease>|shared}.pt`` and its ``history_*.csv`` (rank 0 of a
    DDP group), and each phase's epoch-end state under ``run_dir/variant/checkpoints/<stem>/``.
    ``resume`` skips a network whose ``.pt`` exists and continues an interrupted one.

    Returns:
        ``{"variant", "disease", "path", "epochs", "best_valid_loss", "seconds"}``.
    """
    import torch



    store = ScreeningStore.open(store_folder)
    size, rank = world()
    device = resolve_device(cfg.train.device)
    if size > 1 and device.type == "cuda":
        device = torch.device("cuda", rank % max(torch.cuda.device_count(), 1))
    hard, weak = _schedules(cfg)
    out = Path(run_dir) / variant
    out.mkdir(parents=True, exist_ok=True)
    m, d = cfg.model, cfg.data
    disease = None if k is None else d.diseases[k]
    label = disease or "shared encoder"
    stem = "shared" if k is None else f"model_{slug(disease)}"
    if resume and (out / f"{stem}.pt").is_file() and (out / f"history_{stem}.csv").is_file():
        log.info("%s %s already trained; kept", variant, label)
        done = pd.read_csv(out / f"history_{stem}.csv")
        losses = done["valid_loss"].dropna() if "valid_loss" in done else pd.Series(dtype=float)
        return {"variant": variant, "disease": label, "path": str(out / f"{stem}.pt"), "epochs": len(done),
                "best_valid_loss": float(losses.min()) if len(losses) else float("nan"), "seconds": 0.0}
    seed = cfg.seed * 1000 + (0 if k is None else k + 1)
    torch.manual_seed(seed)
    if k is None:
        net = SharedEncoderNet(list(d.diseases), m.encoder, m.num_classes, d.channels,
                               m.pretrained, m.decoder_channels, m.dropout)
    else:
        net = MultiTaskNet(m.encoder, m.num_classes, d.channels, m.pretrained,
                           m.decoder_channels, m.dropout)

    def loader(part: str):
        train = part != "valid"
        aug = screening_augment(seed=seed) if train and d.augment else None
        items = ScreeningItems(store, parts[part], targets, k, cfg.dilation(), aug, d.channels,
                               d.normalization)
        return _loader(items, d.batch_size, train, seed, d.num_workers, shard=size > 1)

    rows: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        if report is not None and rank == 0:
            report(f"{variant} {label}: {row['phase']} epoch {row['epoch']} valid loss "
                   f"{row['valid_loss']:.4f} auroc {row['valid_auroc']:.3f} ({row['action']})")

    started = time.perf_counter()
    with torch_threads(cfg.train.threads):
        rows = train_network(net, loader("hard_train"), loader("weak_train"), loader("valid"),
                             ScreeningLoss(lam=cfg.train.lam), hard, weak, device, on_epoch=on_epoch,
                             checkpoints=out / "checkpoints" / stem, resume=resume, name=f"{variant} {label}")
    seconds = round(time.perf_counter() - started, 2)
    path = out / f"{stem}.pt"
    if rank == 0:
        atomic_write_text(out / f"history_{stem}.csv", pd.DataFrame(rows).to_csv(index=False))
        path = save_multitask_checkpoint(path, net.cpu(), {**network_meta(cfg, variant, disease),
                                                          "train_seconds": seconds})
    losses = [r["valid_loss"] for r in rows if np.isfinite(r["valid_loss"])]
    return {"variant": variant, "disease": label, "path": str(path), "epochs": len(rows),
            "best_valid_loss": min(losses) if losses else float("nan"), "seconds": seconds}


def train_networks(cfg: ScreeningConfig, data: ScreeningData, run_dir: Path,
                   report: Callable[[str], None] | None = None, resume: bool = False) -> list[dict[str, Any]]:
    """Train every network of every configured variant.

    With ``train.workers > 1`` the networks train in that many spawned processes at once
    (each with ``train.threads`` torch threads): on a CPU this beats one process with
    several threads for small networks; per-epoch lines are then replaced by one line
    per finished network. With ``train.devices > 1`` each network instead trains on that
    many DDP processes, one network after the other (:func:`~cxrlab.engine.distributed.start_group`
    re-runs this command for the other ranks). ``resume``: see :func:`train_job`.
    """
    jobs = [(variant, k) for variant in cfg.model.variants
            for k in (range(len(cfg.data.diseases)) if variant == "ensemble" else [None])]
    args = (str(data.store.folder), data.targets, data.parts)
    if cfg.train.devices > 1:
        from cxrlab.engine.distributed import start_group

        cuda = resolve_device(cfg.train.device).type == "cuda"
        start_group(cfg.train.devices, "nccl" if cuda else "gloo")
    if cfg.train.workers <= 1 or len(jobs) == 1 or cfg.train.devices > 1:
        return [train_job(cfg, *args, variant, k, str(run_dir), report, resume) for variant, k in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.train.workers, mp_context=context) as pool:
        futures = [pool.submit(train_job, cfg, *args, variant, k, str(run_dir))
                   for variant, k in jobs]
        for future in as_completed(futures):
            done = future.result()
            results.append(done)
            if report is not None:
                report(f"{done['variant']} {done['disease']}: {done['epochs']} epochs, best "
                       f"valid loss {done['best_valid_loss']:.4f} ({done['seconds']:.0f} s)")
    return results


def variant_logits(cfg: ScreeningConfig, nets: list[Any], store: ScreeningStore,
                   rows: np.ndarray) -> np.ndarray:
    """Logits ``float32 [len(rows), D, K]`` of a variant on store rows (no augmentation)."""
    device = resolve_device(cfg.train.device)
    dummy = np.zeros((len(store), len(cfg.data.diseases)), dtype=np.int64)
    items = ScreeningItems(store, rows, dummy, 0, DilationConfig(enabled=False), None,
                           cfg.data.channels, cfg.data.normalization)
    loader = _loader(items, max(cfg.data.batch_size, 16), False, 0, cfg.data.num_workers)
    parts = []
    for net in nets:
        logits, _ = predict_logits(net.to(device), loader, device)
        parts.append(logits if logits.ndim == 3 else logits[:, None, :])
    if not len(items):
        return np.zeros((0, len(cfg.data.diseases), cfg.model.num_classes), np.float32)
    return np.concatenate(parts, axis=1).astype(np.float32)


