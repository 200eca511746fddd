"""Normal-screening pipeline (seed 003, SCXNN): recipe, data, training and the ensemble.

``train_screening(cfg)`` trains, for every configured disease, a
:class:`~cxrlab.models.multitask.MultiTaskNet` (hard labels with masks, then weak labels
with the decoder frozen), and — beyond the seed — one
:class:`~cxrlab.models.multitask.SharedEncoderNet` with a head per disease. For each
variant an SVM (scikit-learn) on the concatenated logits decides normal vs abnormal; its
operating point is chosen on the validation split for a target sensitivity (default
0.99) and stored with it. Then it writes the reports
(:mod:`cxrlab.pipelines.screening_report`) and runs the configured ablations.

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

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxrlab.config import _build, _resolve, apply_overrides, read_recipe
from cxrlab.data.screening import (DilationConfig, ScreeningItems, ScreeningStore,
                                   abnormal_truth, screening_augment, screening_targets)
from cxrlab.data.transforms import PreprocessConfig
from cxrlab.engine.screening import resolve_device, torch_threads
from cxrlab.errors import ConfigError, SkipLog
from cxrlab.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

VARIANTS = ("ensemble", "shared")
SEED003_RISK_GROUPS = {
    "critical": ["Pneumothorax", "Pneumoperitoneum", "Mediastinal Widening", "Pleural Effusion"],
    "urgent": ["Nodule", "Consolidation", "Active Tuberculosis", "Advanced Tuberculosis",
               "Atelectasis"],
    "non-urgent": ["Support Device", "Pleural Calcification", "Interstitial Opacity"],
    "cardiomegaly": ["Cardiomegaly"],
}
"""Seed 003 Table 1 (Table 9 lists Atelectasis under non-urgent; Table 1 is followed)."""


# ----------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class ScreeningDataConfig:
    """Data of a screening recipe.

    Attributes:
        dataset: Adapter name (``vindr``, ``generic``, ...); options: its arguments.
        diseases: Classes that get a model (seed 003: 13); names of ``dataset``.
        unseen: Classes held out of training: their images are evaluated separately
            (seed 003 Table 9).
        split: Fractions by patient of the hard-labelled images (seed: 8:1:1) when the
            table has no ``split`` column; weak-labelled images always train.
        split_seed: Seed of that split.
        eval_sets: Further evaluation sets: name -> ``{dataset: ..., options: {...}}``
            (temporal, external...). The test split is the ``internal`` set.
        size, clip_percentiles, clahe, clahe_clip_limit, clahe_tile_grid, equalize:
            Seed 003 preprocessing (:func:`~cxrlab.data.screening.screening_preprocess`).
        channels, normalization: Network input (1 channel, ``unit`` [0, 1] by default).
        dilation: Structuring element of the lesion-mask dilation
            (:class:`~cxrlab.data.screening.DilationConfig`: enabled, shape, size, iterations).
        augment: Seed 003's training augmentations.
        batch_size: Images per step (seed: 4).
        num_workers: DataLoader workers.
        cache: Folder of the preprocessed store; empty = ``output.root/cache/...``.
        on_error: ``raise`` or ``skip`` unreadable images.
    """

    dataset: str = "vindr"
    options: Mapping[str, Any] = field(default_factory=dict)
    diseases: tuple[str, ...] = ()
    unseen: tuple[str, ...] = ()
    split: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1})
    split_seed: int = 0
    eval_sets: Mapping[str, Any] = field(default_factory=dict)
    size: int = 1024
    clip_percentiles: tuple[float, float] | None = (0.5, 99.5)
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8
    equalize: bool = False
    channels: int = 1
    normalization: str = "unit"
    dilation: Mapping[str, Any] = field(default_factory=dict)
    augment: bool = True
    batch_size: int = 4
    num_workers: int = 0
    cache: str = ""
    on_error: str = "raise"


@dataclass(frozen=True)
class ScreeningModelConfig:
    """Networks: ``encoder`` (any timm body; seed: densenet121), ``num_classes`` (3, or 2
    for the ablation), ``pretrained`` (null, ``imagenet`` or a file), decoder widths,
    head dropout, and which ``variants`` to train (``ensemble``, ``shared``)."""

    encoder: str = "densenet121"
    num_classes: int = 3
    pretrained: str | None = "imagenet"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    dropout: float = 0.0
    variants: tuple[str, ...] = ("ensemble", "shared")


@dataclass(frozen=True)
class ScreeningTrainConfig:
    """Optimisation (seed 003 §3.3.4). ``lam`` is λ of CE + λ·MSE; ``phase1_epochs`` /
    ``phase2_epochs`` bound the hard- and weak-label phases (seed: 300); ``patience``
    epochs without improvement halve the LR (seed: 50) and below ``min_lr`` stop;
    ``phase2_train_encoder`` false trains only the head on weak labels (the seed's
    wording); ``device`` is ``cpu``, ``cuda`` or ``auto``; ``workers`` > 1 trains that
    many networks at once in separate processes, each with ``threads`` torch threads (0 =
    PyTorch's default)."""

    lam: float = 0.8
    lr: float = 1e-3
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    phase1_epochs: int = 300
    phase2_epochs: int = 300
    patience: int = 50
    lr_factor: float = 0.5
    min_lr: float = 1e-4
    monitor: str = "loss"
    phase2_train_encoder: bool = True
    device: str = "auto"
    workers: int = 1
    threads: int = 0


@dataclass(frozen=True)
class SVMConfig:
    """The second classifier: ``sklearn.svm.SVC`` on standardized concatenated logits.

    ``fit_on``: ``train`` (training images; seed 003) or ``valid``. The operating point
    is always chosen on ``valid`` for ``target_sensitivity``."""

    kernel: str = "rbf"
    C: float = 1.0
    gamma: str = "scale"
    degree: int = 3
    class_weight: Any = "balanced"
    fit_on: str = "train"
    target_sensitivity: float = 0.99


@dataclass(frozen=True)
class AblationConfig:
    """One ablation: a ``name`` and ``key=value`` overrides of this recipe (Tables 5-7)."""

    name: str = ""
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScreeningOutputConfig:
    """``root``: runs go to ``root/<name>``; ``mlflow``: also log to MLflow;
    ``cost_batch_sizes``: batch sizes of the CPU/GPU inference timing in the report."""

    root: str = "runs"
    mlflow: bool = False
    experiment: str = "cxrlab-screening"
    cost_batch_sizes: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class ScreeningConfig:
    """A screening recipe (see ``configs/screening_seed003.yaml``)."""

    name: str = "screening"
    seed: int = 0
    data: ScreeningDataConfig = field(default_factory=ScreeningDataConfig)
    model: ScreeningModelConfig = field(default_factory=ScreeningModelConfig)
    train: ScreeningTrainConfig = field(default_factory=ScreeningTrainConfig)
    svm: SVMConfig = field(default_factory=SVMConfig)
    risk_groups: Mapping[str, Any] = field(default_factory=lambda: dict(SEED003_RISK_GROUPS))
    ablations: tuple[AblationConfig, ...] = ()
    output: ScreeningOutputConfig = field(default_factory=ScreeningOutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def preprocess(self) -> PreprocessConfig:
        d = self.data
        return PreprocessConfig(size=d.size, clip_percentiles=d.clip_percentiles,
                                pad_square=True, clahe=d.clahe, clahe_clip_limit=d.clahe_clip_limit,
                                clahe_tile_grid=d.clahe_tile_grid, equalize=d.equalize)

    def dilation(self) -> DilationConfig:
        from cxrlab.data.screening import dilation_from_dict

        return dilation_from_dict(dict(self.data.dilation))


def screening_config_from_dict(raw: Mapping[str, Any], overrides: list[str] | tuple[str, ...] = (),
                               base: Path | None = None) -> ScreeningConfig:
    """Build and check a :class:`ScreeningConfig` from a mapping plus ``key=value`` overrides;
    relative data paths resolve against ``base`` (the recipe's folder)."""
    data = json.loads(json.dumps(raw or {}))
    apply_overrides(data, list(overrides))
    cfg = _build(ScreeningConfig, data, "")
    if base is not None:
        sets = {name: {**dict(spec), "options": _resolve(dict(spec.get("options", {})), base)}
                for name, spec in cfg.data.eval_sets.items()}
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, options=_resolve(dict(cfg.data.options), base), eval_sets=sets))
    check_config(cfg)
    return cfg


def load_screening_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                          ) -> ScreeningConfig:
    """Read a YAML screening recipe (see :func:`screening_config_from_dict`).

    Raises:
        MissingFileError: No such recipe. ConfigError: Bad YAML, keys or values.
    """
    return read_recipe(path, lambda raw: screening_config_from_dict(raw, overrides, base=Path(path).parent),
                       "screening recipe")


def check_config(cfg: ScreeningConfig) -> None:
    """Reject recipes that cannot run (before any data is read)."""
    if not cfg.data.diseases:
        raise ConfigError("data.diseases", "name at least one disease to screen for")
    overlap = set(cfg.data.diseases) & set(cfg.data.unseen)
    if overlap:
        raise ConfigError("data.unseen", f"{sorted(overlap)} cannot be trained and unseen")
    bad = [v for v in cfg.model.variants if v not in VARIANTS]
    if bad or not cfg.model.variants:
        raise ConfigError("model.variants", f"choose from {VARIANTS}, got {list(cfg.model.variants)}")
    if cfg.svm.fit_on not in ("train", "valid"):
        raise ConfigError("svm.fit_on", f"must be train or valid, got {cfg.svm.fit_on!r}")
    if not 0 < cfg.svm.target_sensitivity <= 1:
        raise ConfigError("svm.target_sensitivity", "must be in (0, 1]")
    for group, members in cfg.risk_groups.items():
        if isinstance(members, str) or not isinstance(members, (list, tuple)):
            raise ConfigError(f"risk_groups.{group}", "must be a list of disease names")
    cfg.preprocess()
    cfg.dilation()


def save_screening_config(cfg: ScreeningConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def slug(name: str) -> str:
    """File-name-safe form of a disease name (``"Pleural Effusion"`` -> ``pleural_effusion``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "disease"


# ----------------------------------------------------------------------------- data


@dataclass
class EvalSet:
    """Rows of one evaluation set in its dataset/store."""

    name: str
    dataset: Any
    store: ScreeningStore
    rows: np.ndarray


@dataclass
class ScreeningData:
    """Everything training and evaluation read: the main dataset, its store and splits."""

    dataset: Any
    store: ScreeningStore
    targets: np.ndarray        # int64 [N, D]
    truth: np.ndarray          # float [N] abnormal reference
    parts: dict[str, np.ndarray]   # hard_train, weak_train, valid, test, unseen
    eval_sets: dict[str, EvalSet]


def _store_folder(cfg: ScreeningConfig, dataset: Any, name: str) -> Path:
    digest = hashlib.sha1("\n".join(dataset.table["path"].astype(str)).encode())
    digest.update(json.dumps([cfg.preprocess().to_dict(), list(cfg.data.diseases)]).encode())
    root = Path(cfg.data.cache) if cfg.data.cache else Path(cfg.output.root) / "cache"
    return root / f"screening-{name}-{digest.hexdigest()[:12]}-{cfg.data.size}"


def _open(cfg: ScreeningConfig, spec: Mapping[str, Any], name: str, skips: SkipLog
          ) -> tuple[Any, ScreeningStore]:
    from cxrlab.data.datasets import load_dataset

    dataset = load_dataset(spec["dataset"], on_error=cfg.data.on_error, **dict(spec["options"]))
    store = ScreeningStore.build(dataset, cfg.preprocess(), list(cfg.data.diseases),
                                 _store_folder(cfg, dataset, name), skips=skips,
                                 workers=max(1, cfg.data.num_workers))
    return dataset, store


def unseen_rows(dataset: Any, unseen: tuple[str, ...]) -> np.ndarray:
    """Rows positive for any held-out (unseen) class present in ``dataset``."""
    cols = [dataset.pathologies.index(u) for u in unseen if u in dataset.pathologies]
    if not cols:
        return np.zeros(len(dataset), dtype=bool)
    return (np.nan_to_num(dataset.labels[:, cols], nan=0.0) == 1).any(axis=1)


def prepare_screening_data(cfg: ScreeningConfig, skips: SkipLog | None = None) -> ScreeningData:
    """Open the recipe's datasets, split them and build (or reuse) their stores."""
    from cxrlab.data.splits import patient_split

    skips = skips or SkipLog(cfg.data.on_error)
    dataset, store = _open(cfg, {"dataset": cfg.data.dataset, "options": cfg.data.options},
                           "main", skips)
    missing = [n for n in (*cfg.data.diseases, *cfg.data.unseen) if n not in dataset.pathologies]
    if missing:
        raise ConfigError("data.diseases", f"{missing} not among {dataset.name}'s classes "
                                           f"{dataset.pathologies}")
    targets = screening_targets(dataset.labels, dataset.pathologies, cfg.data.diseases,
                                cfg.model.num_classes)
    truth = abnormal_truth(dataset.labels)
    table = dataset.table
    n = len(dataset)
    weak = table["weak"].to_numpy(dtype=bool) if "weak" in table.columns else np.zeros(n, bool)
    held_out = unseen_rows(dataset, cfg.data.unseen)
    usable = ~held_out & ~np.isin(np.arange(n), store.skipped)
    split = np.array([""] * n, dtype=object)
    if "split" in table.columns and (table["split"] != "").any():
        split[:] = table["split"].to_numpy()
    else:
        hard = np.flatnonzero(usable & ~weak)
        fractions = {k: float(v) for k, v in cfg.data.split.items() if float(v) > 0}
        parts = patient_split(table["patient_id"].to_numpy()[hard].astype(str),
                              fractions=fractions, seed=cfg.data.split_seed)
        for part, idx in parts.items():
            split[hard[np.asarray(idx, dtype=np.int64)]] = part
    split[weak] = "train"
    parts = {
        "hard_train": np.flatnonzero(usable & ~weak & (split == "train")),
        "weak_train": np.flatnonzero(usable & weak & (split == "train")),
        "valid": np.flatnonzero(usable & ~weak & (split == "valid")),
        "test": np.flatnonzero(usable & ~weak & (split == "test")),
        "unseen": np.flatnonzero(held_out & ~np.isin(np.arange(n), store.skipped)),
    }
    for part in ("hard_train", "valid"):
        if parts[part].size == 0:
            raise ConfigError("data.split", f"the recipe yields no {part} images")
    valid_truth = truth[parts["valid"]]
    if not (np.nansum(valid_truth == 1) and np.nansum(valid_truth == 0)):
        raise ConfigError("data.split", "the validation split needs normal and abnormal images "
                                        "to choose the operating point")
    eval_sets = {"internal": EvalSet("internal", dataset, store, parts["test"])}
    if parts["unseen"].size:
        eval_sets["unseen"] = EvalSet("unseen", dataset, store, parts["unseen"])
    for name, spec in cfg.data.eval_sets.items():
        if not isinstance(spec, Mapping) or "dataset" not in spec:
            raise ConfigError(f"data.eval_sets.{name}", "needs 'dataset' and 'options'")
        other, other_store = _open(cfg, {"dataset": spec["dataset"],
                                         "options": spec.get("options", {})}, name, skips)
        rows = np.flatnonzero(~np.isin(np.arange(len(other)), other_store.skipped))
        eval_sets[name] = EvalSet(name, other, other_store, rows)
    return ScreeningData(dataset, store, targets, truth, parts, eval_sets)


# ----------------------------------------------------------------------------- training


def _loader(items: ScreeningItems, batch_size: int, shuffle: bool, seed: int, workers: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=shuffle,
                                       generator=generator, num_workers=workers,
                                       persistent_workers=workers > 0)


def _schedules(cfg: ScreeningConfig):
    from cxrlab.engine.screening import PhaseSchedule

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
              report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one network: disease ``k``'s model of the ensemble, or the shared one (None).

    Runs in this process or in a worker (:func:`train_networks`); saves
    ``run_dir/variant/{model_<disease>|shared}.pt`` and its ``history_*.csv``.

    Returns:
        ``{"variant", "disease", "path", "epochs", "best_valid_loss", "seconds"}``.
    """
    import torch

    from cxrlab.engine.screening import train_network
    from cxrlab.losses.screening import ScreeningLoss
    from cxrlab.models.multitask import (MultiTaskNet, SharedEncoderNet,
                                         save_multitask_checkpoint)

    store = ScreeningStore.open(store_folder)
    device = resolve_device(cfg.train.device)
    hard, weak = _schedules(cfg)
    out = Path(run_dir) / variant
    out.mkdir(parents=True, exist_ok=True)
    m, d = cfg.model, cfg.data
    disease = None if k is None else d.diseases[k]
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
        return _loader(items, d.batch_size, train, seed, d.num_workers)

    label = disease or "shared encoder"
    rows: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        if report is not None:
            report(f"{variant} {label}: {row['phase']} epoch {row['epoch']} valid loss "
                   f"{row['valid_loss']:.4f} auroc {row['valid_auroc']:.3f} ({row['action']})")

    started = time.perf_counter()
    with torch_threads(cfg.train.threads):
        train_network(net, loader("hard_train"), loader("weak_train"), loader("valid"),
                      ScreeningLoss(lam=cfg.train.lam), hard, weak, device, on_epoch=on_epoch)
    seconds = round(time.perf_counter() - started, 2)
    stem = "shared" if k is None else f"model_{slug(disease)}"
    atomic_write_text(out / f"history_{stem}.csv", pd.DataFrame(rows).to_csv(index=False))
    path = save_multitask_checkpoint(out / f"{stem}.pt", net.cpu(),
                                     {**network_meta(cfg, variant, disease),
                                      "train_seconds": seconds})
    losses = [r["valid_loss"] for r in rows if np.isfinite(r["valid_loss"])]
    return {"variant": variant, "disease": label, "path": str(path), "epochs": len(rows),
            "best_valid_loss": min(losses) if losses else float("nan"), "seconds": seconds}


def train_networks(cfg: ScreeningConfig, data: ScreeningData, run_dir: Path,
                   report: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train every network of every configured variant.

    With ``train.workers > 1`` the networks train in that many spawned processes at once
    (each with ``train.threads`` torch threads): on a CPU this beats one process with
    several threads for small networks; per-epoch lines are then replaced by one line
    per finished network.
    """
    jobs = [(variant, k) for variant in cfg.model.variants
            for k in (range(len(cfg.data.diseases)) if variant == "ensemble" else [None])]
    args = (str(data.store.folder), data.targets, data.parts)
    if cfg.train.workers <= 1 or len(jobs) == 1:
        return [train_job(cfg, *args, variant, k, str(run_dir), report) for variant, k in jobs]
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


def load_variant(run_dir: Path, variant: str, diseases: list[str]) -> list[Any]:
    """The trained networks of a variant in disease order (one for ``shared``)."""
    from cxrlab.models.multitask import load_multitask_checkpoint

    folder = Path(run_dir) / variant
    names = ["shared"] if variant == "shared" else [f"model_{slug(d)}" for d in diseases]
    return [load_multitask_checkpoint(folder / f"{name}.pt")[0].eval() for name in names]


def variant_logits(cfg: ScreeningConfig, nets: list[Any], store: ScreeningStore,
                   rows: np.ndarray) -> np.ndarray:
    """Logits ``float32 [len(rows), D, K]`` of a variant on store rows (no augmentation)."""
    from cxrlab.engine.screening import predict_logits

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


def run_directory(cfg: ScreeningConfig) -> Path:
    return Path(cfg.output.root) / cfg.name


def train_screening(cfg: ScreeningConfig, report: Callable[[str], None] | None = None,
                    overwrite: bool = False) -> Path:
    """Train every variant, fit the SVMs, evaluate, run ablations; returns the run directory.

    Raises:
        ConfigError: The run directory exists and ``overwrite`` is False, or the recipe
            cannot run on its data.
    """
    from cxrlab.pipelines.run_dir import claim_run_directory, run_status
    from cxrlab.pipelines.screening_report import evaluate_screening, run_ablations

    run_dir = claim_run_directory(run_directory(cfg), overwrite=overwrite, hint="pass --overwrite")
    save_screening_config(cfg, run_dir / "config.yaml")
    with run_status(run_dir) as status:
        data = prepare_screening_data(cfg)
        atomic_write_json(run_dir / "split.json", {
            **{part: int(rows.size) for part, rows in data.parts.items()},
            **{f"eval/{name}": int(s.rows.size) for name, s in data.eval_sets.items()}})
        from cxrlab.pipelines.screening_report import fit_second_classifier

        train_networks(cfg, data, run_dir, report)
        for variant in cfg.model.variants:
            fit_second_classifier(cfg, data, load_variant(run_dir, variant,
                                                          list(cfg.data.diseases)),
                                  run_dir / variant)
        summary = evaluate_screening(run_dir, cfg=cfg, data=data)
        if cfg.ablations:
            run_ablations(cfg, run_dir, report)
            summary = evaluate_screening(run_dir, cfg=cfg, data=data)
        status.finished()
        if cfg.output.mlflow:
            from cxrlab.pipelines.screening_report import log_to_mlflow

            log_to_mlflow(cfg, run_dir, summary)
    return run_dir
