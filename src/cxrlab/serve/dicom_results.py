"""The service's results as DICOM objects, built with highdicom and filed in the source's study.

:func:`build_results` turns the stored result of one received image (the JSON the API
answers: findings, screening decision, pneumothorax, heatmap, model versions) and the
image's DICOM header into the objects a PACS files and its viewers display:

- ``sr.dcm``: a Comprehensive SR (``1.2.840.10008.5.1.4.1.1.88.33``). Root container
  "Diagnostic Imaging Report" (LOINC 18748-4) holding the algorithm name and version
  (DCM 111001/111003), one "Finding" (DCM 121071) per classifier label, coded (SNOMED CT
  where a code is known, else the private scheme ``99CXRLAB``), with its probability,
  threshold and presence (SCT Present/Absent), then the screening decision with its
  probability and risk group, and the pneumothorax result when those models ran;
- ``seg.dcm``: a binary Segmentation of the pneumothorax mask, only when a mask was
  predicted (segment "Pneumothorax", SCT 36118008, algorithm type AUTOMATIC);
- ``sc.dcm``: a Secondary Capture (RGB) of the Grad-CAM overlay, referencing the source
  image.

Every object keeps the source's patient and study modules and Study Instance UID, lies
in a new series whose description names cxrlab and the model version, and references
the source SOP Instance (SR evidence, SEG source image, SC source image sequence). The
UIDs of the new series and instances come from a caller-given function, so the same
source always gives the same result UIDs (the destination de-duplicates repeats).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from cxrlab import __version__
from cxrlab.errors import InputError

log = logging.getLogger(__name__)

RESULT_NAMES = ("sr.dcm", "seg.dcm", "sc.dcm")
"""File names of the result objects (artifact names in the store, outbox kinds)."""

SERIES_NUMBERS = {"sr.dcm": 9901, "seg.dcm": 9902, "sc.dcm": 9903}
MANUFACTURER = "cxrlab"
PRIVATE_SCHEME = "99CXRLAB"
"""Coding scheme of concepts without a standard code (PS3.16 8.2: '99' prefix = private)."""

REQUIRED_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

_LABEL_CODES: dict[str, hd.sr.CodedConcept] = {
    "atelectasis": hd.sr.CodedConcept("46621007", "SCT", "Atelectasis"),
    "cardiomegaly": hd.sr.CodedConcept("287272002", "SCT", "Cardiomegaly"),
    "consolidation": hd.sr.CodedConcept("95436008", "SCT", "Lung consolidation"),
    "edema": hd.sr.CodedConcept("19242006", "SCT", "Pulmonary edema"),
    "pleural effusion": hd.sr.CodedConcept("60046008", "SCT", "Pleural effusion"),
    "effusion": hd.sr.CodedConcept("60046008", "SCT", "Pleural effusion"),
    "pneumonia": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
    "pneumothorax": hd.sr.CodedConcept("36118008", "SCT", "Pneumothorax"),
    "fracture": hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone"),
}
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
_PROBABILITY = hd.sr.CodedConcept("PROB", PRIVATE_SCHEME, "Probability")
_THRESHOLD = hd.sr.CodedConcept("THRESH", PRIVATE_SCHEME, "Decision threshold")
_PRESENCE = hd.sr.CodedConcept("PRESENCE", PRIVATE_SCHEME, "Presence")
_SCREENING = hd.sr.CodedConcept("SCREEN", PRIVATE_SCHEME, "Screening decision")
_RISK_GROUP = hd.sr.CodedConcept("RISKGRP", PRIVATE_SCHEME, "Risk group")
_AREA_FRACTION = hd.sr.CodedConcept("AREAFRAC", PRIVATE_SCHEME, "Area fraction of image")
_DECISIONS = {"normal": hd.sr.CodedConcept("NORMAL", PRIVATE_SCHEME, "Normal"),
              "abnormal": hd.sr.CodedConcept("ABNORMAL", PRIVATE_SCHEME, "Abnormal")}


@dataclass(frozen=True)
class ResultObject:
    """One result object: its file name (``sr.dcm``, ...), the dataset, and its encoding."""

    name: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    def to_bytes(self) -> bytes:
        """The DICOM Part 10 file (preamble, file meta, dataset)."""
        return dataset_bytes(self.dataset)


def dataset_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file in memory."""
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def algorithm_identity(models: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """``(name, version)`` of the algorithm: the classifier's run name, and cxrlab's version
    with every loaded model's version (``cxrlab 0.1.0 classifier:ab12 screening:cd34``)."""
    classifier = models.get("classifier", {})
    name = str(classifier.get("name") or "cxrlab-classifier")
    versions = " ".join(f"{role}:{info.get('version', '?')}" for role, info in models.items())
    return name, f"cxrlab {__version__} {versions}".strip()


def build_results(source: Dataset, result: Mapping[str, Any], heatmap_png: bytes, mask_png: bytes | None,
                  uid_for: Callable[[str, str], str]) -> list[ResultObject]:
    """The SR, the SEG (when a pneumothorax mask was predicted) and the heatmap SC of one image.

    Args:
        source: The received image's header (pixel data not needed).
        result: The stored result (``findings``, ``screening``, ``pneumothorax``,
            ``heatmap``, ``models``), as :func:`cxrlab.serve.app.study_response` reads it.
        heatmap_png: The Grad-CAM overlay PNG.
        mask_png: The pneumothorax mask PNG (0/255, source size), or None.
        uid_for: ``uid_for(name, "series" | "instance")`` gives the UIDs of the new objects;
            the same answer for the same source makes the results idempotent.

    Raises:
        InputError: The source header lacks the UIDs the results must reference, or the
            mask does not match the source's size.
    """
    missing = [k for k in REQUIRED_KEYWORDS if not str(source.get(k, "") or "").strip()]
    if missing:
        raise InputError("DICOM header", f"cannot file results in the source's study: no {', '.join(missing)}")
    name, version = algorithm_identity(result.get("models", {}))
    out = [ResultObject("sr.dcm", _structured_report(source, result, name, version, uid_for))]
    pneumothorax = result.get("pneumothorax")
    if mask_png is not None and pneumothorax is not None and pneumothorax.get("present"):
        out.append(ResultObject("seg.dcm", _segmentation(source, _decode_png(mask_png, "L") > 127, name,
                                                         version, uid_for)))
    out.append(ResultObject("sc.dcm", _secondary_capture(source, _decode_png(heatmap_png, "RGB"), name,
                                                         version, uid_for, result.get("heatmap", {}))))
    return out


# --------------------------------------------------------------------------- the SR


def label_code(label: str) -> hd.sr.CodedConcept:
    """The code of a classifier label: SNOMED CT when known, else ``(label, 99CXRLAB, label)``."""
    known = _LABEL_CODES.get(label.strip().lower())
    if known is not None:
        return known
    value = "".join(c if c.isalnum() else "_" for c in label.strip().upper())[:16] or "UNNAMED"
    return hd.sr.CodedConcept(value, PRIVATE_SCHEME, label.strip() or "unnamed label")


def _num(concept: hd.sr.CodedConcept, value: float) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=concept, value=round(float(value), 6), unit=_NO_UNITS,
                                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)


def _structured_report(source: Dataset, result: Mapping[str, Any], name: str, version: str,
                       uid_for: Callable[[str, str], str]) -> Dataset:
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[Any] = [
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmName, value=name[:1024], relationship_type=contains),
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmVersion, value=version[:1024], relationship_type=contains),
    ]
    for finding in result.get("findings", []):
        item = hd.sr.CodeContentItem(name=codes.DCM.Finding, value=label_code(str(finding["label"])),
                                     relationship_type=contains)
        item.ContentSequence = hd.sr.ContentSequence([
            _num(_PROBABILITY, finding["probability"]), _num(_THRESHOLD, finding["threshold"]),
            hd.sr.CodeContentItem(name=_PRESENCE, value=codes.SCT.Present if finding["positive"] else codes.SCT.Absent,
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)])
        items.append(item)
    screening = result.get("screening")
    if screening is not None:
        item = hd.sr.CodeContentItem(name=_SCREENING, value=_DECISIONS[str(screening["decision"])],
                                     relationship_type=contains)
        item.ContentSequence = hd.sr.ContentSequence([
            _num(_PROBABILITY, screening["probability"]),
            hd.sr.TextContentItem(name=_RISK_GROUP, value=str(screening.get("risk_group", "none"))[:1024],
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)])
        items.append(item)
    pneumothorax = result.get("pneumothorax")
    if pneumothorax is not None:
        item = hd.sr.CodeContentItem(name=codes.DCM.Finding, value=_LABEL_CODES["pneumothorax"],
                                     relationship_type=contains)
        item.ContentSequence = hd.sr.ContentSequence([
            _num(_PROBABILITY, pneumothorax["probability"]), _num(_AREA_FRACTION, pneumothorax["area_fraction"]),
            hd.sr.CodeContentItem(name=_PRESENCE,
                                  value=codes.SCT.Present if pneumothorax["present"] else codes.SCT.Absent,
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)])
        items.append(item)
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id=None)
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=root, series_instance_uid=uid_for("sr.dcm", "series"),
        series_number=SERIES_NUMBERS["sr.dcm"], sop_instance_uid=uid_for("sr.dcm", "instance"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = _description("AI findings", name, version)
    _private_scheme(sr)
    return sr


def _private_scheme(ds: Dataset) -> None:
    """Declare the private coding scheme (SOP Common: Coding Scheme Identification Sequence)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "cxrlab labels and result properties"
    item.CodingSchemeResponsibleOrganization = "cxrlab"
    ds.CodingSchemeIdentificationSequence = DicomSequence([item])


def _description(what: str, name: str, version: str) -> str:
    """A Series Description (LO, 64 characters) naming cxrlab and the model version."""
    return f"{what} {name} {version}"[:64].rstrip()


# --------------------------------------------------------------------------- SEG and SC


def _segmentation(source: Dataset, mask: np.ndarray, name: str, version: str,
                  uid_for: Callable[[str, str], str]) -> Dataset:
    rows, cols = int(source.Rows), int(source.Columns)
    if mask.shape != (rows, cols):
        raise InputError("pneumothorax mask", f"shape {mask.shape} does not match the source image "
                                              f"({rows} x {cols})")
    algorithm = hd.AlgorithmIdentificationSequence(name=name[:64], family=codes.DCM.ArtificialIntelligence,
                                                   version=version[:64])
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Pneumothorax", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=[_with_valid_spacing(source)], pixel_array=mask[None].astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=uid_for("seg.dcm", "series"),
        series_number=SERIES_NUMBERS["seg.dcm"], sop_instance_uid=uid_for("seg.dcm", "instance"), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=name[:64], software_versions=version[:64],
        device_serial_number="none", omit_empty_frames=False)
    seg.SeriesDescription = _description("AI pneumothorax", name, version)
    if "FrameOfReferenceUID" not in seg:
        seg.PatientOrientation = list(_orientation(source))   # General Image, Type 2C without a frame of reference
    return seg


def _with_valid_spacing(source: Dataset) -> Dataset:
    """``source`` without Pixel Spacing / Imager Pixel Spacing values of zero (some modalities
    write ``0\\0``; highdicom would copy them into the SEG's pixel measures, which PS3.3 forbids)."""
    bad = [k for k in ("PixelSpacing", "ImagerPixelSpacing")
           if k in source and (source[k].VM != 2 or any(float(v) <= 0 for v in source[k].value))]
    if not bad:
        return source
    copy = Dataset(source)
    copy.file_meta = getattr(source, "file_meta", Dataset())
    for keyword in bad:
        del copy[keyword]
    return copy


def _secondary_capture(source: Dataset, rgb: np.ndarray, name: str, version: str,
                       uid_for: Callable[[str, str], str], heatmap: Mapping[str, Any]) -> Dataset:
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8, coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uid_for("sc.dcm", "series"), series_number=SERIES_NUMBERS["sc.dcm"],
        sop_instance_uid=uid_for("sc.dcm", "instance"), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=_orientation(source), transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.SeriesDescription = _description("AI heatmap", name, version)
    label, method = heatmap.get("label"), heatmap.get("method")
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = f"{method or 'CAM'} heatmap of {label or 'the top finding'} over the source image"[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = DicomSequence([reference])
    sc.BurnedInAnnotation = "NO"
    sc.Laterality = source.get("Laterality", "") or ""      # General Series, Type 2C
    return sc


def _orientation(source: Dataset) -> tuple[str, str]:
    """The source's Patient Orientation when it has two values, else a PA chest's ``(L, F)``."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return "L", "F"


def _decode_png(data: bytes, mode: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert(mode))
    except (OSError, ValueError) as err:
        raise InputError("result image", f"cannot decode the stored PNG: {err}") from err


__all__ = ["RESULT_NAMES", "ResultObject", "algorithm_identity", "build_results", "dataset_bytes", "label_code"]
