"""Keeping patient data out of everything the service stores or logs.

Three tools:

- :class:`UidHasher`: a keyed hash (HMAC-SHA256 with a secret salt) of a UID. The service
  keeps only these hashes of the SOP and Study Instance UIDs, enough to recognise a
  repeated upload and nothing more.
- :func:`deidentify`: the DICOM PS3.15 Annex E *Basic Application Level Confidentiality
  Profile* applied with pydicom to a dataset: every attribute the profile lists is
  removed (X), emptied (Z), given a dummy value (D) or given a new UID (U) derived from
  the salted hash; private attributes, curve and overlay data are removed. Beyond the
  profile, and to be safe where its table is silent, every person name (PN), every date
  or time and every non-standard UID left anywhere is removed or replaced too. The
  result carries ``PatientIdentityRemoved = YES`` and the profile's code (113100).
  :func:`safe_header` is what the service stores: the de-identified header as plain
  JSON values, without bulk data or sequences.
- :class:`RedactingFilter`: a :mod:`logging` filter that rewrites every record so that
  DICOM UIDs, dates, ``Family^Given`` names and the identifying values of the datasets
  seen recently never reach a log.

The profile table here lists the attributes a radiograph header can carry (PS3.15
Table E.1-1, basic profile column); the catch-all rules above cover the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)

PROFILE_NAME = "PS3.15 Basic Application Level Confidentiality Profile (cxrlab)"
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")

_REMOVE = """
AccessionNumber:Z PatientName:Z PatientID:Z PatientBirthDate:Z PatientSex:Z StudyDate:Z StudyTime:Z
StudyID:Z ReferringPhysicianName:Z ConsultingPhysicianName:Z FillerOrderNumberImagingServiceRequest:Z
PlacerOrderNumberImagingServiceRequest:Z ContentCreatorName:Z ContrastBolusAgent:Z
VerifyingObserverIdentificationCodeSequence:Z ClinicalTrialProtocolName:Z ClinicalTrialSiteID:Z
ClinicalTrialSiteName:Z ClinicalTrialTimePointID:Z ClinicalTrialCoordinatingCenterName:Z
ROIName:Z ROIInterpreter:Z StructureSetDate:Z StructureSetTime:Z ReviewDate:Z ReviewTime:Z
SpecimenPreparationSequence:Z IssuerOfTheSpecimenIdentifierSequence:Z
IssuerOfTheContainerIdentifierSequence:Z CalibrationDateTime:Z
ContentDate:D ContentTime:D PersonName:D VerifyingObserverName:D VerifyingOrganization:D
VerificationDateTime:D ContentSequence:D GraphicAnnotationSequence:D SpecimenIdentifier:D
ContainerIdentifier:D ClinicalTrialSubjectID:D ClinicalTrialSubjectReadingID:D
ClinicalTrialSponsorName:D ClinicalTrialProtocolID:D ClinicalTrialProtocolEthicsCommitteeName:D
XRayDetectorID:D XRaySourceID:D DeviceLabel:D SourceIdentifier:D VerifyingObserverSequence:D
PersonIdentificationCodeSequence:D Date:D Time:D DateTime:D
StudyInstanceUID:U SeriesInstanceUID:U SOPInstanceUID:U MediaStorageSOPInstanceUID:U
FrameOfReferenceUID:U SynchronizationFrameOfReferenceUID:U ReferencedSOPInstanceUID:U
ReferencedFrameOfReferenceUID:U InstanceCreatorUID:U IrradiationEventUID:U
DimensionOrganizationUID:U ConcatenationUID:U DeviceUID:U FiducialUID:U StorageMediaFileSetUID:U
TargetUID:U TemplateExtensionCreatorUID:U TemplateExtensionOrganizationUID:U UID:U
TransactionUID:U ReferencedGeneralPurposeScheduledProcedureStepTransactionUID:U
RelatedFrameOfReferenceUID:U RequestedSOPInstanceUID:U DoseReferenceUID:U
ContextGroupExtensionCreatorUID:U CreatorVersionUID:U LargePaletteColorLookupTableUID:U
PaletteColorLookupTableUID:U ObservationUID:U SpecimenUID:U
ReferencedObservationUIDTrial:U ReferencedTreatmentRecordSequence:X
InstitutionName:X InstitutionAddress:X InstitutionalDepartmentName:X InstitutionalDepartmentTypeCodeSequence:X
InstitutionCodeSequence:X StationName:X DeviceSerialNumber:X SoftwareVersions:X
PatientAge:X PatientSize:X PatientWeight:X PatientAddress:X PatientTelephoneNumbers:X
PatientTelecomInformation:X PatientBirthName:X PatientMotherBirthName:X PatientBirthTime:X
OtherPatientIDs:X OtherPatientIDsSequence:X OtherPatientNames:X PatientComments:X EthnicGroup:X
Occupation:X MilitaryRank:X BranchOfService:X MedicalRecordLocator:X AdditionalPatientHistory:X
MedicalAlerts:X Allergies:X CountryOfResidence:X RegionOfResidence:X LastMenstrualDate:X
SmokingStatus:X PregnancyStatus:X PatientReligiousPreference:X PatientState:X
PatientInsurancePlanCodeSequence:X InsurancePlanIdentification:X ResponsiblePerson:X
ResponsiblePersonRole:X ResponsibleOrganization:X PatientSexNeutered:X SpecialNeeds:X
IssuerOfPatientID:X IssuerOfPatientIDQualifiersSequence:X PatientPrimaryLanguageCodeSequence:X
ReferencedPatientSequence:X ReferencedPatientPhotoSequence:X ReferencedPatientAliasSequence:X
PatientInstitutionResidence:X CurrentPatientLocation:X ServiceEpisodeID:X ServiceEpisodeDescription:X
IssuerOfServiceEpisodeID:X AdmissionID:X IssuerOfAdmissionID:X IssuerOfAdmissionIDSequence:X
AdmittingDate:X AdmittingTime:X AdmittingDiagnosesDescription:X AdmittingDiagnosesCodeSequence:X
DischargeDate:X DischargeTime:X DischargeDiagnosisDescription:X VisitComments:X
StudyDescription:X SeriesDescription:X ProtocolName:X ImageComments:X StudyComments:X
StudyIDIssuer:X RequestAttributesSequence:X RequestedProcedureID:X RequestedProcedureDescription:X
RequestedProcedureComments:X RequestedContrastAgent:X ReasonForTheRequestedProcedure:X
ReasonForStudy:X RequestingPhysician:X RequestingService:X ReferringPhysicianAddress:X
ReferringPhysicianTelephoneNumbers:X ReferringPhysicianIdentificationSequence:X PhysiciansOfRecord:X
PhysiciansOfRecordIdentificationSequence:X PerformingPhysicianName:X
PerformingPhysicianIdentificationSequence:X NameOfPhysiciansReadingStudy:X
PhysiciansReadingStudyIdentificationSequence:X ConsultingPhysicianIdentificationSequence:X
OperatorsName:X OperatorIdentificationSequence:X PerformedProcedureStepID:X
PerformedProcedureStepDescription:X PerformedProcedureStepStartDate:X PerformedProcedureStepStartTime:X
PerformedProcedureStepEndDate:X PerformedProcedureStepEndTime:X PerformedStationName:X
PerformedStationAETitle:X PerformedLocation:X CommentsOnThePerformedProcedureStep:X
ScheduledProcedureStepID:X ScheduledProcedureStepDescription:X ScheduledPerformingPhysicianName:X
ScheduledStationName:X ScheduledStationAETitle:X ScheduledStudyLocation:X ScheduledStudyLocationAETitle:X
ScheduledHumanPerformersSequence:X HumanPerformerName:X HumanPerformerOrganization:X
ActualHumanPerformersSequence:X OrderEnteredBy:X OrderEntererLocation:X OrderCallbackPhoneNumber:X
ImagingServiceRequestComments:X ReferencedStudySequence:X ReferencedPerformedProcedureStepSequence:X
ReferencedImageSequence:X SourceImageSequence:X ReferencedSeriesSequence:X
InstanceCreationDate:X InstanceCreationTime:X SeriesDate:X SeriesTime:X AcquisitionDate:X
AcquisitionTime:X AcquisitionDateTime:X OverlayDate:X OverlayTime:X CurveDate:X CurveTime:X
TimezoneOffsetFromUTC:X DerivationDescription:X IdentifyingComments:X DataSetTrailingPadding:X
DigitalSignaturesSequence:X IconImageSequence:X FrameComments:X ModifiedAttributesSequence:X
OriginalAttributesSequence:X DateOfLastCalibration:X TimeOfLastCalibration:X DateTimeOfLastCalibration:X
DateOfSecondaryCapture:X TimeOfSecondaryCapture:X DateOfManufacture:X DateOfInstallation:X
DetectorID:X GantryID:X GeneratorID:X CassetteID:X PlateID:X DeviceDescription:X
LongDeviceDescription:X CommentsOnRadiationDose:X AcquisitionComments:X
AcquisitionDeviceProcessingDescription:X AcquisitionProtocolDescription:X NetworkID:X
DistributionName:X DistributionAddress:X TextString:X TextComments:X TopicTitle:X TopicSubject:X
TopicAuthor:X TopicKeywords:X AuthorObserverSequence:X ParticipantSequence:X
CustodialOrganizationSequence:X InterpretationText:X InterpretationAuthor:X InterpretationRecorder:X
InterpretationTranscriber:X InterpretationDiagnosisDescription:X InterpretationID:X
InterpretationIDIssuer:X InterpretationRecordedDate:X InterpretationRecordedTime:X
InterpretationApprovalDate:X InterpretationApprovalTime:X InterpretationApproverSequence:X
Impressions:X ResultsIDIssuer:X ResultsComments:X ResultsDistributionListSequence:X
IntendedRecipientsOfResultsIdentificationSequence:X NamesOfIntendedRecipientsOfResults:X
ModifyingDeviceID:X ModifiedImageDate:X ModifiedImageTime:X ModifiedImageDescription:X
ContributionDescription:X ContributionDateTime:X Arbitrary:X
ImagePresentationComments:X ConfidentialityConstraintOnPatientDataDescription:X
HL7DocumentEffectiveTime:X ExpectedCompletionDateTime:X PlacerOrderNumberProcedure:X
FillerOrderNumberProcedure:X IssueDateOfImagingServiceRequest:X IssueTimeOfImagingServiceRequest:X
ScheduledProcedureStepStartDate:X ScheduledProcedureStepStartTime:X ScheduledProcedureStepEndDate:X
ScheduledProcedureStepEndTime:X ScheduledProcedureStepLocation:X PreMedication:X
SourceApplicationEntityTitle:X SendingApplicationEntityTitle:X ReceivingApplicationEntityTitle:X
"""

PROFILE_ACTIONS: dict[str, str] = dict(item.split(":") for item in _REMOVE.split())
"""Attribute keyword -> action (X remove, Z empty, D dummy value, U new UID)."""

_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_DATE_VRS = {"DA", "DT", "TM"}
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "PN": "ANONYMOUS",
          "AS": "000Y", "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "IS": "0", "DS": "0"}
_KEEP_UIDS = {"SOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID", "ReferencedSOPClassUID",
              "ImplementationClassUID", "CodingSchemeUID", "ContextUID"}


def _profile_tags() -> dict[BaseTag, str]:
    tags: dict[BaseTag, str] = {}
    for keyword, action in PROFILE_ACTIONS.items():
        tag = tag_for_keyword(keyword)
        if tag is not None:
            tags[BaseTag(tag)] = action
    return tags


_PROFILE_TAGS = _profile_tags()


class UidHasher:
    """Keyed hashes of UIDs: equal UIDs give equal hashes, nothing leads back to the UID.

    Args:
        salt: The secret key (at least 16 bytes).
    """

    def __init__(self, salt: bytes) -> None:
        if len(salt) < 16:
            raise ConfigError("uid_salt", f"the UID salt must be at least 16 bytes, got {len(salt)}")
        self._salt = bytes(salt)

    def hash(self, uid: str | None) -> str | None:
        """Hex HMAC-SHA256 of ``uid`` (``None`` for a missing or blank UID)."""
        text = (uid or "").strip().rstrip("\x00")
        if not text:
            return None
        return hmac.new(self._salt, b"uid:" + text.encode(), hashlib.sha256).hexdigest()

    def new_uid(self, uid: str) -> str:
        """A replacement UID under the ``2.25`` root (UUID-derived form), stable per salt."""
        digest = hmac.new(self._salt, b"replace:" + str(uid).encode(), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def load_or_create_salt(path: str | Path) -> bytes:
    """The salt stored in ``path``, created (32 random bytes, mode 0600) when missing."""
    path = Path(path)
    if path.is_file():
        try:
            salt = bytes.fromhex(path.read_text().strip())
        except ValueError as err:
            raise ConfigError(path, "the salt file is not hex text; restore it, or delete it to start "
                                    "a new salt (stored UID hashes then no longer match repeats)") from err
        if len(salt) < 16:
            raise ConfigError(path, "the salt file holds fewer than 16 bytes; delete it to create a new one")
        return salt
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(salt.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)          # never replace a salt another process just created
        except FileExistsError:
            return load_or_create_salt(path)
    finally:
        tmp.unlink(missing_ok=True)
    return salt


def deidentify(ds: Dataset, hasher: UidHasher) -> Dataset:
    """Apply the basic confidentiality profile to ``ds`` in place (sequences too).

    Args:
        ds: A pydicom dataset (header; pixel data, if present, is left as is).
        hasher: Gives the replacement UIDs, stable for one salt.

    Returns:
        ``ds``, with the de-identification attributes set.
    """
    _clean(ds, hasher)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _clean(meta, hasher)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = PROFILE_NAME
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = DicomSequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return ds


def _clean(ds: Dataset, hasher: UidHasher) -> None:
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or tag.group & 0xFF00 == 0x5000 or _overlay_text(tag):
            del ds[tag]
            continue
        action = _PROFILE_TAGS.get(BaseTag(tag))
        if action is None:
            action = _fallback_action(elem)
        _apply(ds, elem, action, hasher)


def _overlay_text(tag: BaseTag) -> bool:
    """Overlay comments, labels and data (60xx,4000 / 1500 / 3000) — may carry burnt-in text."""
    return tag.group & 0xFF00 == 0x6000 and tag.element in (0x4000, 0x1500, 0x3000)


def _fallback_action(elem: DataElement) -> str | None:
    if elem.VR == "PN" or elem.VR in _DATE_VRS:
        return "X"
    if elem.VR == "UI" and elem.keyword not in _KEEP_UIDS and not _standard_uids(elem.value):
        return "U"
    return None


def _as_list(value: Any) -> list[Any]:
    """Multi-valued elements as a list, single values as a one-item list."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _standard_uids(value: Any) -> bool:
    return all(str(v) in UID_dictionary for v in _as_list(value) if v)


def _apply(ds: Dataset, elem: DataElement, action: str | None, hasher: UidHasher) -> None:
    tag = elem.tag
    if action == "X":
        del ds[tag]
    elif action == "Z":
        elem.value = DicomSequence([]) if elem.VR == "SQ" else None
    elif action == "D":
        if elem.VR == "SQ":
            elem.value = DicomSequence([])
        else:
            elem.value = _DUMMY.get(elem.VR, "ANONYMIZED")
    elif action == "U":
        if elem.VR == "SQ":
            for item in elem.value:
                _clean(item, hasher)
        elif elem.value:
            new = [hasher.new_uid(str(v)) for v in _as_list(elem.value)]
            elem.value = new if len(new) > 1 else new[0]
    elif elem.VR == "SQ":
        for item in elem.value:
            _clean(item, hasher)


def safe_header(ds: Dataset, hasher: UidHasher, max_chars: int = 256) -> dict[str, Any]:
    """The de-identified header as ``{keyword: value}`` JSON values (no bulk data, no sequences).

    ``ds`` is de-identified in place first (:func:`deidentify`).
    """
    deidentify(ds, hasher)
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.VR in _BULK_VRS or elem.VR == "SQ" or elem.tag.group == 0x7FE0 or not elem.keyword:
            continue
        value = elem.value
        if value is None or value == "":
            out[elem.keyword] = None
            continue
        values = [_plain(v, max_chars) for v in _as_list(value)]
        out[elem.keyword] = values[0] if len(values) == 1 and not elem.VM > 1 else values
    return out


def _plain(value: Any, max_chars: int) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, bytes):
        return None
    return str(value)[:max_chars]


def identifying_values(ds: Dataset) -> set[str]:
    """The text of every attribute the profile (or its catch-all rules) would touch.

    Used to teach :class:`RedactingFilter` the values of a dataset about to be
    processed; values shorter than 3 characters are left out (they would redact
    ordinary words).
    """
    found: set[str] = set()

    def walk(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
                continue
            action = _PROFILE_TAGS.get(BaseTag(elem.tag)) or _fallback_action(elem)
            if (action or elem.tag.is_private) and elem.VR not in _BULK_VRS and elem.value not in (None, ""):
                for value in _as_list(elem.value):
                    text = str(value).strip()
                    found.update(part for part in {text, *text.split("^")} if len(part.strip()) >= 3)

    walk(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        walk(meta)
    return found


_UID_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+){4,}(?![\w.])")
_DATE_RE = re.compile(r"(?<!\d)(?:18|19|20)\d\d-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01])(?!\d)")
_PN_RE = re.compile(r"[^\s^'\"=:,;()\[\]{}]+\^[^\s'\"=:,;()\[\]{}]*")


class RedactingFilter(logging.Filter):
    """Rewrites log records so they carry no names, identifiers, UIDs or dates.

    It removes, from the message, its arguments and any exception text: dotted UIDs
    (five or more numeric components), calendar dates (``YYYYMMDD``, ``YYYY-MM-DD``),
    DICOM person names (``Family^Given``) and every value registered with
    :meth:`remember` as a whole word (the identifying values of uploaded datasets; the
    last ``capacity`` are kept, in memory only). The filter never drops a record.

    Args:
        capacity: How many remembered values are kept.
    """

    def __init__(self, capacity: int = 2048) -> None:
        super().__init__("cxrlab-redact")
        self._values: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def remember(self, values: Iterable[str]) -> None:
        """Redact these values from now on."""
        with self._lock:
            for value in values:
                value = value.strip()
                if len(value) < 3:
                    continue
                self._values[value] = None
                self._values.move_to_end(value)
            while len(self._values) > self._capacity:
                self._values.popitem(last=False)
            words = sorted(self._values, key=len, reverse=True)
            self._pattern = (re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.IGNORECASE)
                             if words else None)

    def redact(self, text: str) -> str:
        """``text`` with every identifying piece replaced by a ``<...>`` marker."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub("<redacted>", text)
        text = _UID_RE.sub("<uid>", text)
        text = _DATE_RE.sub("<date>", text)
        return _PN_RE.sub("<name>", text)

    def _argument(self, value: Any) -> Any:
        if isinstance(value, (bool, int, float)) or value is None:
            return value
        text = value if isinstance(value, str) else str(value)
        cleaned = self.redact(text)
        return cleaned if (cleaned != text or isinstance(value, str)) else value

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if getattr(record, "_cxrlab_redacted", False):
            return True
        # Redact the format string and each argument, keeping their shape: formatters such
        # as uvicorn's access log unpack ``record.args``.
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {key: self._argument(value) for key, value in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(self._argument(value) for value in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            message = str(record.msg)
        if self.redact(message) != message:          # pieces that only meet in the full message
            record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        record._cxrlab_redacted = True
        return True


LOGGERS = ("", "cxrlab", "uvicorn", "uvicorn.error", "uvicorn.access", "fastapi", "pydicom", "pynetdicom",
           "py.warnings")
"""Loggers whose handlers (and own records) :func:`install_log_redaction` filters."""


def install_log_redaction(redactor: RedactingFilter, loggers: Iterable[str] = LOGGERS) -> None:
    """Attach ``redactor`` to the named loggers and to every handler they have now.

    Records logged anywhere and handled by those handlers (the root logger's included)
    pass through the filter; call it again after adding handlers. Idempotent.
    """
    for name in loggers:
        logger = logging.getLogger(name)
        if redactor not in logger.filters:
            logger.addFilter(redactor)
        for handler in logger.handlers:
            if redactor not in handler.filters:
                handler.addFilter(redactor)


def remove_log_redaction(redactor: RedactingFilter, loggers: Iterable[str] = LOGGERS) -> None:
    """Undo :func:`install_log_redaction`."""
    for name in loggers:
        logger = logging.getLogger(name)
        logger.removeFilter(redactor)
        for handler in logger.handlers:
            handler.removeFilter(redactor)
