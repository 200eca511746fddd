"""Write synthetic phantoms in the real on-disk layouts of the public datasets.

Each layout reproduces the files, names, headers and label conventions the real dataset
ships, so every adapter in :mod:`cxrlab.data.datasets` runs end to end on a CPU:

- chexpert: ``CheXpert-v1.0-small/{train,valid}.csv``, ``.../patientNNNNN/studyN/viewK_frontal.jpg``
- mimic: ``mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz``,
  ``files/pXX/p<subject>/s<study>/<dicom_id>.jpg``
- siim: ``train-rle.csv``, ``dicom-images-train/<study>/<series>/<sop>.dcm``
- nih: ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, ``train_val_list.txt``,
  ``test_list.txt``, ``images/NNNNNNNN_NNN.png``
- folder: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (Kermany names)
- vindr: ``train.csv`` (one row per reader and box), ``train/<image_id>.dicom``
- generic: ``labels.csv``, ``images/*.png``, ``masks/*.png``

Every dataset also holds ``README.txt`` ("SYNTHETIC PHANTOM DATA — not real patients")
and ``synthetic_manifest.json`` (parameters, per-finding counts and, per image, its
file, findings and severities; :func:`manifest_phantom` re-renders any image from it).
DICOMs carry PatientName ``SYNTHETIC^PHANTOM``. Output is deterministic: the same
``(layout, n, size, seed, options)`` gives byte-identical label files.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrlab.data.synthetic import FINDINGS, Phantom, check_findings, generate_phantom
from cxrlab.errors import ConfigError
from cxrlab.io.rle import rle_encode

LAYOUTS = ("chexpert", "mimic", "siim", "nih", "folder", "vindr", "generic")
MANIFEST = "synthetic_manifest.json"
README = "README.txt"
README_TEXT = ("SYNTHETIC PHANTOM DATA — not real patients.\n\n"
               "Written by cxrlab (cxrlab.data.synthetic_layouts.write_dataset) in the {layout} "
               "layout: {n} images of {size} x {size} px, seed {seed}.\nThe images are "
               "generated chest-radiograph phantoms for tests and demos; they show no real "
               "person and must not be used to evaluate clinical performance.\n")
FAINT = 0.45
CHEXPERT_COLUMNS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                    "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                    "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                    "Support Devices"]
CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_COLUMNS)
CHEXPERT_DIR = "CheXpert-v1.0-small"
_CHEXPERT_DIRECT = {"Cardiomegaly": "cardiomegaly", "Edema": "edema",
                    "Consolidation": "consolidation", "Atelectasis": "atelectasis",
                    "Pneumothorax": "pneumothorax", "Pleural Effusion": "effusion",
                    "Lung Lesion": "nodule"}
_OPACITIES = ("consolidation", "edema", "atelectasis", "infiltrates")
NIH_NAMES = {"cardiomegaly": "Cardiomegaly", "effusion": "Effusion",
             "pneumothorax": "Pneumothorax", "consolidation": "Consolidation", "edema": "Edema",
             "atelectasis": "Atelectasis", "nodule": "Nodule", "infiltrates": "Infiltration"}
NIH_BOX_NAMES = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly",
                 "effusion": "Effusion", "infiltrates": "Infiltrate", "nodule": "Nodule",
                 "pneumothorax": "Pneumothorax"}
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
VINDR_CLASSES = {"cardiomegaly": ("Cardiomegaly", 3), "effusion": ("Pleural effusion", 10),
                 "pneumothorax": ("Pneumothorax", 12), "consolidation": ("Consolidation", 4),
                 "edema": ("Lung Opacity", 7), "atelectasis": ("Atelectasis", 1),
                 "nodule": ("Nodule/Mass", 8), "infiltrates": ("Infiltration", 6)}
GENERIC_COLUMNS = {f: f.capitalize() for f in FINDINGS}
GENERIC_HEADER = "path,patient_id,study_id,view,split,weak,mask_path," + ",".join(
    GENERIC_COLUMNS.values())
MIMIC_COLUMNS = sorted(CHEXPERT_COLUMNS)
MIMIC_META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,"
                     "ViewPosition,Rows,Columns,StudyDate,StudyTime,"
                     "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                     "PatientOrientationCodeSequence_CodeMeaning")
_OPTIONS: dict[str, dict[str, Any]] = {
    "chexpert": {"valid_fraction": 0.15, "blank_rate": 0.3, "uncertain_rate": 0.5},
    "mimic": {"valid_fraction": 0.1, "test_fraction": 0.1, "blank_rate": 0.3,
              "uncertain_rate": 0.5},
    "siim": {"other_prevalence": 0.1, "multi_row_rate": 0.4},
    "nih": {"test_fraction": 0.2, "bbox_fraction": 0.5, "bits": 8},
    "folder": {"valid_fraction": 0.1, "test_fraction": 0.2},
    "vindr": {"radiologists": 3, "monochrome1_rate": 0.3},
    "generic": {"weak_fraction": 0.3, "blank_rate": 0.3, "valid_fraction": 0.1,
                "test_fraction": 0.1, "bits": 8},
}
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------- public API
def write_dataset(layout: str, out: str | Path, n: int, size: int, seed: int, *,
                  overwrite: bool = False, prevalence: float | Mapping[str, float] | None = None,
                  progress: Progress | None = None, **options: Any) -> Path:
    """Render ``n`` phantoms and write them as the dataset ``layout`` into ``out``.

    The dataset is built in a temporary sibling folder and moved into place at the end,
    so ``out`` never holds a half-written dataset.

    Args:
        layout: One of :data:`LAYOUTS`.
        out: Target folder; must be missing or empty unless ``overwrite``.
        n: Number of images (at least 2).
        size: Image side in pixels (at least 32).
        seed: Seed of every random choice; same arguments, same files.
        overwrite: Replace ``out`` if it holds an earlier synthetic dataset (one with
            ``synthetic_manifest.json``); other non-empty folders are never deleted.
        prevalence: Share of positives per finding: one float for all findings or a
            mapping finding -> share (default 0.3; for ``siim`` the pneumothorax share,
            for ``folder`` the pneumonia share, default 0.5). Findings are independent;
            each class gets at least one positive and one negative.
        progress: Called as ``progress(done, total)`` after each image.
        **options: Layout options (see ``_OPTIONS``), e.g. ``valid_fraction``,
            ``blank_rate``, ``uncertain_rate``, ``radiologists``, ``weak_fraction``.

    Returns:
        ``out`` as a :class:`Path`.

    Raises:
        ConfigError: Unknown layout or option, bad ``n``/``size``/prevalence, or ``out``
            is a non-empty folder that may not be replaced.
    """
    if layout not in LAYOUTS:
        raise ConfigError("layout", f"unknown layout {layout!r}; expected one of "
                                    f"{', '.join(LAYOUTS)}")
    unknown = sorted(set(options) - set(_OPTIONS[layout]))
    if unknown:
        raise ConfigError("options", f"layout {layout!r} has no option(s) {', '.join(unknown)};"
                                     f" known: {', '.join(_OPTIONS[layout]) or 'none'}")
    if int(n) != n or n < 2:
        raise ConfigError("n", f"number of images must be an integer >= 2, got {n!r}")
    if int(size) != size or size < 32:
        raise ConfigError("size", f"image size must be an integer >= 32, got {size!r}")
    try:
        opts = {k: type(default)(options.get(k, default))
                for k, default in _OPTIONS[layout].items()}
    except (TypeError, ValueError) as err:
        raise ConfigError("options", f"layout {layout!r}: bad option value: {err}") from None
    prev = _prevalence(prevalence, 0.5 if layout == "folder" else 0.3)
    out = Path(out)
    tmp = _prepare(out, overwrite)
    try:
        writer = _Writer(layout, tmp, int(n), int(size), int(seed), prev, opts, progress)
        getattr(writer, f"write_{layout}")()
        writer.finish()
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The ``synthetic_manifest.json`` of a dataset written by :func:`write_dataset`.

    Raises:
        ConfigError: ``out`` holds no manifest.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise ConfigError(out, f"no {MANIFEST}: not a synthetic dataset written by cxrlab")
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_phantom(manifest: Mapping[str, Any], record: Mapping[str, Any]) -> Phantom:
    """Re-render the phantom of one manifest ``record`` (same pixels and masks)."""
    rng = np.random.default_rng([manifest["seed"], 1, record["index"]])
    return generate_phantom(rng, manifest["size"], record["findings"], bits=record["bits"],
                            severity=record["severity"])


def mask_boxes(mask: np.ndarray, min_area: int | None = None) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` (pixels, end exclusive) of a mask's connected regions.

    Regions smaller than ``min_area`` (default ``max(2, H * W // 2000)``) are dropped
    unless no region is that large, then the largest is kept. Empty mask -> ``[]``.
    """
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return []
    stats = stats[1:]
    limit = max(2, mask.size // 2000) if min_area is None else min_area
    keep = stats[:, cv2.CC_STAT_AREA] >= limit
    if not keep.any():
        keep[int(np.argmax(stats[:, cv2.CC_STAT_AREA]))] = True
    return [(int(x), int(y), int(x + w), int(y + h))
            for x, y, w, h, _ in stats[keep].tolist()]


# ---------------------------------------------------------------------------- helpers
def _prevalence(value: float | Mapping[str, float] | None, default: float) -> dict[str, float]:
    shares = dict.fromkeys(FINDINGS, default if value is None or isinstance(value, Mapping)
                           else float(value))
    if isinstance(value, Mapping):
        for key, share in value.items():
            shares.update(dict.fromkeys(check_findings([key]), float(share)))
    bad = {f: p for f, p in shares.items() if not 0.0 <= p <= 1.0}
    if bad:
        raise ConfigError("prevalence", f"shares must lie in [0, 1], got {bad}")
    return shares


def _prepare(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(out, "output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(out, "output folder is not empty; pass overwrite=True "
                                   "(--overwrite) to replace an earlier synthetic dataset")
        if not (out / MANIFEST).is_file():
            raise ConfigError(out, f"output folder is not empty and holds no {MANIFEST}; "
                                   "refusing to replace a folder cxrlab did not write")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def _commit(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _label(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _encode(path: Path, image: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(path.suffix, np.ascontiguousarray(image), params)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())


def _write_text(path: Path, lines: list[str], gz: bool = False) -> None:
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
            handle.write(data)
        data = buffer.getvalue()
    path.write_bytes(data)


def _split_groups(rng: np.random.Generator, groups: int, fractions: list[float]) -> np.ndarray:
    """Part index (0 = train, 1.. = the others) per group; each part gets one if it can."""
    order = rng.permutation(groups)
    counts = [int(round(f * groups)) for f in fractions]
    for k, f in enumerate(fractions):
        if f > 0 and counts[k] == 0 and groups - sum(counts) > 1:
            counts[k] = 1
    part = np.zeros(groups, dtype=np.int64)
    start = 0
    for k, count in enumerate(counts, start=1):
        part[order[start:start + count]] = k
        start += count
    return part


def _write_dicom(path: Path, pixels: np.ndarray, *, sop: str, study: str, series: str,
                 patient: str, view: str, sex: str, age: int, photometric: str = "MONOCHROME2",
                 bits_stored: int = 8) -> None:
    """Write ``pixels`` as a CR DICOM file (explicit VR little endian, uncompressed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"     # CR Image Storage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "SYNTHETIC^PHANTOM", patient
    ds.PatientSex, ds.PatientAge = sex, f"{age:03d}Y"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", view
    ds.ImageComments = "SYNTHETIC PHANTOM DATA - not real patients"
    ds.StudyDate, ds.StudyTime = "20000101", "000000"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [round(350.0 / pixels.shape[0], 6)] * 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


class _Writer:
    """Plans the images of one layout (patients, studies, findings) and writes them."""

    def __init__(self, layout: str, root: Path, n: int, size: int, seed: int,
                 prevalence: dict[str, float], options: dict[str, Any],
                 progress: Progress | None) -> None:
        self.layout, self.root, self.n, self.size, self.seed = layout, root, n, size, seed
        self.prevalence, self.opts, self.progress = prevalence, options, progress
        self.rng = np.random.default_rng([seed, 0, LAYOUTS.index(layout)])
        self.records: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ planning
    def _severity(self, findings: tuple[str, ...]) -> dict[str, float]:
        return {f: round(float(0.25 + 0.75 * self.rng.beta(2.0, 1.4)), 4) for f in findings}

    def _assign(self, units: int, names: tuple[str, ...] = FINDINGS,
                share: float | None = None) -> list[tuple[str, ...]]:
        """Independent findings per unit; every finding has >= 1 positive and negative
        (when its share is strictly between 0 and 1). ``share`` overrides the prevalence."""
        has = np.zeros((units, len(names)), dtype=bool)
        for j, name in enumerate(names):
            p = self.prevalence[name] if share is None else share
            count = int(round(p * units))
            if 0.0 < p < 1.0 and units >= 2:
                count = min(max(count, 1), units - 1)
            has[self.rng.permutation(units)[:count], j] = True
        return [tuple(nm for j, nm in enumerate(names) if has[i, j]) for i in range(units)]

    def _groups(self, max_studies: int, two_view_rate: float = 0.0) -> list[list[int]]:
        """Patients -> their studies' image counts (1 or 2 views), ``n`` images in total."""
        patients, total = [], 0
        while total < self.n:
            studies = []
            for _ in range(int(self.rng.integers(1, max_studies + 1))):
                views = min(2 if self.rng.random() < two_view_rate else 1, self.n - total)
                if views > 0:
                    studies.append(views)
                    total += views
            if studies:
                patients.append(studies)
        return patients

    def _emit(self, rel: str, findings: tuple[str, ...], severity: dict[str, float] | None = None,
              bits: int = 8, encode: bool = True, **extra: Any) -> Phantom:
        """Render the next phantom, write it to ``rel`` (unless ``encode`` is False) and
        record it in the manifest."""
        index = len(self.records)
        severity = self._severity(findings) if severity is None else severity
        phantom = generate_phantom(np.random.default_rng([self.seed, 1, index]), self.size,
                                   findings, bits=bits, severity=severity)
        if encode:
            _encode(self.root / rel, phantom.image)
        self.records.append({"index": index, "path": rel, "findings": list(findings),
                             "severity": severity, "bits": bits, **extra})
        if self.progress is not None:
            self.progress(len(self.records), self.n)
        return phantom

    def _chexpert_labels(self, findings: tuple[str, ...], severity: dict[str, float],
                         complete: bool) -> list[str]:
        """CheXpert-labeler-like cells for :data:`CHEXPERT_COLUMNS`: 1.0, 0.0, -1.0, blank.

        ``complete`` (CheXpert valid.csv) gives only 1.0 / 0.0.
        """
        blank, uncertain = self.opts["blank_rate"], self.opts["uncertain_rate"]

        def negative() -> float | None:
            return 0.0 if complete or self.rng.random() >= blank else None

        def positive(finding: str) -> float:
            faint = severity.get(finding, 1.0) < FAINT
            return -1.0 if not complete and faint and self.rng.random() < uncertain else 1.0

        labels: dict[str, float | None] = {}
        for column in CHEXPERT_COLUMNS:
            if column == "No Finding":
                labels[column] = 1.0 if not findings else (0.0 if complete else None)
            elif column in _CHEXPERT_DIRECT:
                finding = _CHEXPERT_DIRECT[column]
                labels[column] = positive(finding) if finding in findings else negative()
            elif column == "Lung Opacity":
                present = [f for f in _OPACITIES if f in findings]
                labels[column] = max(positive(f) for f in present) if present else negative()
            elif column == "Pneumonia" and {"consolidation", "infiltrates"} & set(findings):
                labels[column] = 1.0 if complete or self.rng.random() < 0.5 else -1.0
            elif column == "Enlarged Cardiomediastinum" and "cardiomegaly" in findings:
                draw = self.rng.random()
                labels[column] = 1.0 if complete or draw < 0.3 else (-1.0 if draw < 0.5 else None)
            else:
                labels[column] = negative()
        return [_label(labels[c]) for c in CHEXPERT_COLUMNS]

    # ------------------------------------------------------------------ layouts
    def write_chexpert(self) -> None:
        patients = self._groups(3, 0.3)
        part = _split_groups(self.rng, len(patients), [self.opts["valid_fraction"]])
        units = iter(self._assign(sum(len(s) for s in patients)))
        rows: dict[str, list[str]] = {"train": [CHEXPERT_HEADER], "valid": [CHEXPERT_HEADER]}
        for p, studies in enumerate(patients):
            split, patient = ("valid" if part[p] else "train"), f"patient{p + 1:05d}"
            sex = "Female" if self.rng.random() < 0.5 else "Male"
            age = int(self.rng.integers(18, 90))
            for s, views in enumerate(studies):
                findings = next(units)
                severity = self._severity(findings)
                labels = self._chexpert_labels(findings, severity, complete=split == "valid")
                for k in range(views):
                    view = ("AP", "PA")[k] if views == 2 else ("AP", "PA")[self.rng.random() < 0.3]
                    rel = f"{CHEXPERT_DIR}/{split}/{patient}/study{s + 1}/view{k + 1}_frontal.jpg"
                    self._emit(rel, findings, severity, patient=patient, view=view, split=split,
                               study=f"{patient}/study{s + 1}")
                    rows[split].append(",".join([rel, sex, str(age + s), "Frontal", view, *labels]))
        for split, lines in rows.items():
            _write_text(self.root / CHEXPERT_DIR / f"{split}.csv", lines)

    def write_mimic(self) -> None:
        patients = self._groups(3, 0.4)
        fractions = [self.opts["valid_fraction"], self.opts["test_fraction"]]
        part = _split_groups(self.rng, len(patients), fractions)
        units = self._assign(sum(len(s) for s in patients))
        subjects = 10_000_000 + np.sort(self.rng.choice(9_999_999, len(patients), replace=False))
        study_ids = 50_000_000 + self.rng.choice(9_999_999, len(units), replace=False)
        meta, labels, splits = [MIMIC_META_HEADER], [], ["dicom_id,study_id,subject_id,split"]
        unit = 0
        for p, studies in enumerate(patients):
            subject, split = int(subjects[p]), ("train", "validate", "test")[part[p]]
            for views in studies:
                study, findings = int(study_ids[unit]), units[unit]
                unit += 1
                severity = self._severity(findings)
                cells = dict(zip(CHEXPERT_COLUMNS,
                                 self._chexpert_labels(findings, severity, complete=False)))
                labels.append((subject, study, [cells[c] for c in MIMIC_COLUMNS]))
                date = (f"{int(self.rng.integers(2110, 2200))}{int(self.rng.integers(1, 13)):02d}"
                        f"{int(self.rng.integers(1, 29)):02d}")
                for k in range(views):
                    view = ("PA", "AP")[k] if views == 2 else ("PA", "AP")[self.rng.random() < 0.5]
                    dicom = "-".join(self.rng.bytes(4).hex() for _ in range(5))
                    rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
                    self._emit(rel, findings, severity, patient=str(subject), study=str(study),
                               view=view, split=split, dicom_id=dicom)
                    procedure = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
                    meaning = "postero-anterior" if view == "PA" else "antero-posterior"
                    meta.append(f"{dicom},{subject},{study},{procedure},{view},{self.size},"
                                f"{self.size},{date},{120000 + 100 * k}.000,{procedure},"
                                f"{meaning},Erect")
                    splits.append(f"{dicom},{study},{subject},{split}")
        header = "subject_id,study_id," + ",".join(MIMIC_COLUMNS)
        rows = [header] + [",".join([str(a), str(b), *c]) for a, b, c in sorted(labels)]
        _write_text(self.root / "mimic-cxr-2.0.0-metadata.csv.gz", meta, gz=True)
        _write_text(self.root / "mimic-cxr-2.0.0-chexpert.csv.gz", rows, gz=True)
        _write_text(self.root / "mimic-cxr-2.0.0-split.csv.gz", splits, gz=True)

    def write_siim(self) -> None:
        from pydicom.uid import generate_uid


        others = tuple(f for f in FINDINGS if f != "pneumothorax")
        ptx = self._assign(self.n, ("pneumothorax",))
        extra = self._assign(self.n, others, share=self.opts["other_prevalence"])
        rows = ["ImageId, EncodedPixels"]
        for i in range(self.n):
            study, series, sop = (generate_uid(entropy_srcs=[str(self.seed), "siim", str(i), kind])
                                  for kind in ("study", "series", "sop"))
            patient = "-".join(self.rng.bytes(k).hex() for k in (4, 2, 2, 2, 6))
            view = ("PA", "AP")[self.rng.random() < 0.4]
            rel = f"dicom-images-train/{study}/{series}/{sop}.dcm"
            phantom = self._emit(rel, check_findings(ptx[i] + extra[i]), encode=False,
                                 patient=patient, study=study, view=view)
            _write_dicom(self.root / rel, phantom.image, sop=sop, study=study, series=series,
                         patient=patient, view=view, sex=("F", "M")[self.rng.random() < 0.5],
                         age=int(self.rng.integers(18, 90)))
            mask = phantom.masks.get("pneumothorax")
            if mask is None:
                rows.append(f"{sop},-1")
                continue
            parts, ys = [mask], np.flatnonzero(mask.any(axis=1))
            if len(ys) >= 2 and self.rng.random() < self.opts["multi_row_rate"]:
                upper = mask.copy()
                upper[int(ys[len(ys) // 2]):] = False
                parts = [upper, mask & ~upper]      # two rows, unioned by readers
            rows.extend(f"{sop},{rle_encode(part)}" for part in parts)
        _write_text(self.root / "train-rle.csv", rows)

    def write_nih(self) -> None:
        patients = self._groups(4)
        part = _split_groups(self.rng, len(patients), [self.opts["test_fraction"]])
        units, bits, scale = iter(self._assign(self.n)), int(self.opts["bits"]), 1024 / self.size
        entries, boxes = [NIH_HEADER], ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
        lists: dict[str, list[str]] = {"train": [], "test": []}
        spacing = round(350.0 / self.size, 6)
        for p, studies in enumerate(patients):
            sex, age = ("F", "M")[self.rng.random() < 0.5], int(self.rng.integers(18, 90))
            split = "test" if part[p] else "train"
            for follow_up in range(len(studies)):
                findings, name = next(units), f"{p + 1:08d}_{follow_up:03d}.png"
                view = ("PA", "AP")[self.rng.random() < 0.4]
                boxed = [f for f in findings if f in NIH_BOX_NAMES] \
                    if self.rng.random() < self.opts["bbox_fraction"] else []
                phantom = self._emit(f"images/{name}", findings, bits=bits, patient=str(p + 1),
                                     view=view, split=split, boxed=boxed)
                label = "|".join(sorted(NIH_NAMES[f] for f in findings)) or "No Finding"
                entries.append(f"{name},{label},{follow_up},{p + 1},{age + follow_up},{sex},"
                               f"{view},{self.size},{self.size},{spacing},{spacing}")
                for finding in boxed:
                    ys, xs = np.nonzero(phantom.masks[finding])
                    # frame of the 1024 px originals; the 0.01 px inset makes scaling back
                    # plus floor/ceil give exactly the pixel box
                    x0, y0 = (xs.min() + 0.01) * scale, (ys.min() + 0.01) * scale
                    x1, y1 = (xs.max() + 0.99) * scale, (ys.max() + 0.99) * scale
                    boxes.append(f"{name},{NIH_BOX_NAMES[finding]},{x0:.4f},{y0:.4f},"
                                 f"{x1 - x0:.4f},{y1 - y0:.4f}")
                lists[split].append(name)
        _write_text(self.root / "Data_Entry_2017.csv", entries)
        _write_text(self.root / "BBox_List_2017.csv", boxes)
        _write_text(self.root / "train_val_list.txt", lists["train"])
        _write_text(self.root / "test_list.txt", lists["test"])

    def write_folder(self) -> None:
        sick = self._assign(self.n, ("consolidation",))
        members = {"NORMAL": sum(not s for s in sick), "PNEUMONIA": sum(bool(s) for s in sick)}
        counters = {"bacteria": 0, "virus": 0}
        fractions = [self.opts["valid_fraction"], self.opts["test_fraction"]]
        for label, count in members.items():
            people: list[int] = []
            while sum(people) < count:
                people.append(min(int(self.rng.integers(1, 3)), count - sum(people)))
            part = _split_groups(self.rng, len(people), fractions)
            for person, images in enumerate(people):
                split = ("train", "val", "test")[part[person]]
                kind = ("bacteria", "virus")[self.rng.random() < 0.4]
                for k in range(images):
                    if label == "NORMAL":
                        findings, patient = (), f"IM-{person + 1:04d}"
                        name = f"{patient}-{k + 1:04d}.jpeg"
                    else:
                        findings = ("consolidation",) if kind == "bacteria" else ("infiltrates",)
                        counters[kind] += 1
                        patient = f"person{person + 1}"
                        name = f"{patient}_{kind}_{counters[kind]}.jpeg"
                    self._emit(f"chest_xray/{split}/{label}/{name}", findings, split=split,
                               patient=patient)

    def write_vindr(self) -> None:
        readers = int(self.opts["radiologists"])
        if not 1 <= readers <= 17:
            raise ConfigError("radiologists", f"must be 1 to 17, got {readers}")
        rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
        for findings in self._assign(self.n):
            image_id = self.rng.bytes(16).hex()
            mono1 = self.rng.random() < self.opts["monochrome1_rate"]
            photometric = "MONOCHROME1" if mono1 else "MONOCHROME2"
            rel = f"train/{image_id}.dicom"
            phantom = self._emit(rel, findings, bits=12, encode=False, patient=image_id,
                                 image_id=image_id, photometric=photometric)
            uids = [f"2.25.{int(self.rng.bytes(8).hex(), 16)}" for _ in range(3)]
            _write_dicom(self.root / rel, 4095 - phantom.image if mono1 else phantom.image,
                         sop=uids[0], study=uids[1], series=uids[2], patient=image_id, view="PA",
                         sex=("F", "M")[self.rng.random() < 0.5],
                         age=int(self.rng.integers(18, 90)), photometric=photometric,
                         bits_stored=12)
            rads = [f"R{r + 1}" for r in sorted(self.rng.choice(17, readers, replace=False))]
            severity = self.records[-1]["severity"]
            # a faint finding may be missed by some readers, never by the first one
            seen = {f: [severity[f] >= FAINT or k == 0 or self.rng.random() < 0.5
                        for k in range(readers)] for f in findings}
            for k, rad in enumerate(rads):
                marked = [f for f in findings if seen[f][k]]
                if not marked:
                    rows.append(f"{image_id},No finding,14,{rad},,,,")
                for finding in marked:
                    name, class_id = VINDR_CLASSES[finding]
                    rows.extend(f"{image_id},{name},{class_id},{rad},{x0:.1f},{y0:.1f},{x1:.1f},"
                                f"{y1:.1f}" for x0, y0, x1, y1 in
                                mask_boxes(phantom.masks[finding]))
        _write_text(self.root / "train.csv", rows)

    def write_generic(self) -> None:
        patients = self._groups(2)
        fractions = [self.opts["valid_fraction"], self.opts["test_fraction"]]
        part = _split_groups(self.rng, len(patients), fractions)
        units, bits = iter(self._assign(self.n)), int(self.opts["bits"])
        weak = np.zeros(self.n, dtype=bool)
        weak[self.rng.permutation(self.n)[:int(round(self.opts["weak_fraction"] * self.n))]] = True
        rows = [GENERIC_HEADER]
        for p, studies in enumerate(patients):
            split, patient = ("train", "valid", "test")[part[p]], f"P{p + 1:05d}"
            for s in range(len(studies)):
                index, findings = len(self.records), next(units)
                mask_rel = "" if weak[index] else f"masks/{index + 1:06d}.png"
                view = ("PA", "AP")[self.rng.random() < 0.4]
                phantom = self._emit(f"images/{index + 1:06d}.png", findings, bits=bits,
                                     patient=patient, split=split, weak=bool(weak[index]),
                                     mask_path=mask_rel, view=view)
                if mask_rel:       # hard labels come with the union of the finding masks
                    union = np.zeros((self.size, self.size), dtype=bool)
                    for mask in phantom.masks.values():
                        union |= mask
                    _encode(self.root / mask_rel, union.astype(np.uint8) * np.uint8(255))
                cells = ["1" if f in findings else
                         "" if weak[index] and self.rng.random() < self.opts["blank_rate"]
                         else "0" for f in GENERIC_COLUMNS]
                rows.append(",".join([f"images/{index + 1:06d}.png", patient,
                                      f"{patient}_S{s + 1}", view, split, str(int(weak[index])),
                                      mask_rel, *cells]))
        _write_text(self.root / "labels.csv", rows)

    # ------------------------------------------------------------------ metadata
    def finish(self) -> None:
        counts = {f: sum(f in r["findings"] for r in self.records) for f in FINDINGS}
        counts["normal"] = sum(not r["findings"] for r in self.records)
        manifest = {"note": "SYNTHETIC PHANTOM DATA — not real patients", "layout": self.layout,
                    "n": self.n, "size": self.size, "seed": self.seed,
                    "prevalence": self.prevalence, "options": self.opts, "counts": counts,
                    "images": self.records}
        (self.root / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False),
                                          encoding="utf-8")
        (self.root / README).write_text(README_TEXT.format(layout=self.layout, n=self.n,
                                                           size=self.size, seed=self.seed),
                                        encoding="utf-8")
