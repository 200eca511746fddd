"""STOW-RS (PS3.18 10.5): the multipart/related request body and the response dataset.

``POST /dicomweb/studies`` takes ``Content-Type: multipart/related; type="application/dicom";
boundary=...`` with one DICOM Part 10 instance per part. :func:`split_instances` checks
the media type and cuts the body into parts (RFC 2046: a delimiter is CRLF ``--boundary``;
the last one is followed by ``--``). :func:`response_dataset` builds the Store
Instances Response Module: Referenced SOP Sequence (0008,1199) for the stored
instances, Failed SOP Sequence (0008,1198) with a Failure Reason (0008,1197) for the
others, in the DICOM JSON model (PS3.18 F.2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from cxrlab.errors import InputError

MEDIA_TYPE = "application/dicom"
RESPONSE_MEDIA_TYPE = "application/dicom+json"

# PS3.18 Table I.2-1 / PS3.4 C-STORE status codes used as Failure Reason.
FAILURE_PROCESSING = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_TRANSFER_SYNTAX = 0xC122
FAILURE_OUT_OF_RESOURCES = 0xA700


class StowError(InputError):
    """A STOW-RS request the service cannot take at all; ``status`` is the HTTP status (400, 415)."""

    def __init__(self, problem: str, status: int) -> None:
        super().__init__("STOW-RS request", problem)
        self.status = status

    def __reduce__(self):
        return (self.__class__, (self.problem, self.status))


@dataclass(frozen=True)
class Part:
    """One body part: its Content-Type (lower case, without parameters) and its bytes."""

    content_type: str
    data: bytes


def _parameters(header: str) -> tuple[str, dict[str, str]]:
    media, _, rest = header.partition(";")
    params = {}
    for match in re.finditer(r';?\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', ";" + rest):
        value = match.group(2).strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"')
        params[match.group(1).lower()] = value
    return media.strip().lower(), params


def split_instances(content_type: str | None, body: bytes) -> list[Part]:
    """The parts of a STOW-RS request body.

    Raises:
        StowError: 415 when the request is not ``multipart/related`` of ``application/dicom``;
            400 when it has no boundary or no part.
    """
    media, params = _parameters(content_type or "")
    if media != "multipart/related":
        raise StowError(f"Content-Type {media or 'missing'!s}: STOW-RS takes multipart/related", 415)
    kind = params.get("type", MEDIA_TYPE).lower()
    if kind != MEDIA_TYPE:
        raise StowError(f"multipart/related of type {kind!r}: only {MEDIA_TYPE} instances are accepted", 415)
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 200:
        raise StowError("multipart/related without a boundary parameter", 400)
    delimiter = b"--" + boundary.encode("latin-1")
    data = b"\r\n" + body
    chunks = data.split(b"\r\n" + delimiter)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break                                         # the close delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise StowError("a body part has no header/content separator", 400)
        headers = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        part_type, _ = _parameters(headers.get("content-type", MEDIA_TYPE))
        parts.append(Part(part_type, content))
    if not parts:
        raise StowError("the multipart body has no part (wrong boundary?)", 400)
    return parts


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str | None = None


@dataclass(frozen=True)
class FailedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    reason: int


def response_dataset(stored: Sequence[StoredInstance], failed: Sequence[FailedInstance]) -> dict[str, Any]:
    """The Store Instances Response Module as DICOM JSON."""
    ds = Dataset()
    referenced = []
    for item in stored:
        entry = Dataset()
        entry.ReferencedSOPClassUID = item.sop_class_uid
        entry.ReferencedSOPInstanceUID = item.sop_instance_uid
        if item.retrieve_url:
            entry.RetrieveURL = item.retrieve_url
        referenced.append(entry)
    failures = []
    for item in failed:
        entry = Dataset()
        entry.ReferencedSOPClassUID = item.sop_class_uid
        entry.ReferencedSOPInstanceUID = item.sop_instance_uid
        entry.FailureReason = item.reason
        failures.append(entry)
    if referenced:
        ds.ReferencedSOPSequence = DicomSequence(referenced)
    if failures:
        ds.FailedSOPSequence = DicomSequence(failures)
    return ds.to_json_dict()


def http_status(stored: Sequence[StoredInstance], failed: Sequence[FailedInstance]) -> int:
    """200 when every instance was stored, 202 when some were, 409 when none was (PS3.18 10.5.3)."""
    if not failed:
        return 200
    return 202 if stored else 409


__all__ = ["FailedInstance", "MEDIA_TYPE", "Part", "RESPONSE_MEDIA_TYPE", "StoredInstance", "StowError",
           "http_status", "response_dataset", "split_instances"]
