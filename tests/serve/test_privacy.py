"""No patient data in stored rows, artifacts, answers or logs: the real RG1_UNCR.dcm."""

from __future__ import annotations

import logging
import stat

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxrlab.errors import ConfigError
from cxrlab.serve.app import create_app
from cxrlab.serve.privacy import (PROFILE_ACTIONS, RedactingFilter, UidHasher, deidentify, identifying_values,
                                  load_or_create_salt, safe_header)

SALT = b"0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def rg1(rg1_dir):
    return rg1_dir / "RG1_UNCR.dcm"


@pytest.fixture(scope="module")
def rg1_phi(rg1) -> dict[str, str]:
    """The identifying values RG1_UNCR.dcm carries (read from the file, checked to be there)."""
    ds = pydicom.dcmread(rg1, stop_before_pixels=True)
    keywords = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
                "InstitutionName", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
                "StudyInstanceUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyDate", "StudyID")
    values = {k: str(ds.get(k)) for k in keywords}
    assert values["PatientName"] == "CompressedSamples^RG1" and values["PatientBirthDate"] == "19400305"
    assert all(len(v) >= 4 for v in values.values()), values
    return values


def _leaks(text: str, phi: dict[str, str]) -> list[str]:
    family, given = phi["PatientName"].split("^")
    needles = {**phi, "family": family}
    return [name for name, value in needles.items() if value.lower() in text.lower()]


def test_uid_hash_is_keyed_and_stable():
    a, b = UidHasher(SALT), UidHasher(b"another-salt-of-32-bytes-00000000")
    uid = "1.3.6.1.4.1.5962.1.1.9.1.1.20040826185059.5457"
    assert a.hash(uid) == a.hash(uid + "\x00") == a.hash(f" {uid} ")
    assert a.hash(uid) != b.hash(uid) and a.hash(uid) != a.hash(uid[:-1])
    assert len(a.hash(uid)) == 64 and uid not in a.hash(uid)
    assert a.hash(None) is None and a.hash("") is None
    assert a.new_uid(uid).startswith("2.25.") and a.new_uid(uid) == a.new_uid(uid) != b.new_uid(uid)
    with pytest.raises(ConfigError, match="16 bytes"):
        UidHasher(b"short")


def test_salt_file_is_private_and_reused(tmp_path):
    path = tmp_path / "db.sqlite.key"
    salt = load_or_create_salt(path)
    assert len(salt) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_salt(path) == salt
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    path.write_text("not hex")
    with pytest.raises(ConfigError, match="not hex"):
        load_or_create_salt(path)


def test_basic_profile_on_rg1(rg1, rg1_phi):
    ds = pydicom.dcmread(rg1, stop_before_pixels=True)
    ds.add_new(0x00091010, "LO", "private vendor note 19400305")          # a private attribute
    person = Dataset()
    person.PersonName = "Nested^Person"
    person.PatientID = "nested-id-77"
    ds.ContentSequence = Sequence([person])
    ds.OperatorsName = "Operator^Olga"
    deidentify(ds, UidHasher(SALT))
    text = str(ds) + str(ds.file_meta)
    assert _leaks(text, rg1_phi) == []
    for value in ("Nested", "nested-id-77", "Olga", "private vendor note"):
        assert value not in text
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert not [elem for elem in ds if elem.tag.is_private]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate"):
        assert ds[keyword].value in (None, "")                              # Z: kept, emptied
    for keyword in ("InstitutionName", "OtherPatientIDs", "StationName", "DeviceSerialNumber", "SeriesDate",
                    "InstanceCreationDate", "TimezoneOffsetFromUTC", "OperatorsName"):
        assert keyword not in ds                                            # X: removed
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"                     # class UIDs kept
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "CR" and ds.ViewPosition == "PA" and ds.Rows == 1955   # technical attributes kept
    assert {"PatientName", "StudyInstanceUID", "InstitutionName"} <= set(PROFILE_ACTIONS)


def test_safe_header_is_plain_json(rg1, rg1_phi):
    import json

    header = safe_header(pydicom.dcmread(rg1, stop_before_pixels=True), UidHasher(SALT))
    text = json.dumps(header)
    assert _leaks(text, rg1_phi) == []
    assert header["PatientIdentityRemoved"] == "YES" and header["PatientName"] is None
    assert header["Rows"] == 1955 and header["PixelSpacing"] == [0.0, 0.0] and header["KVP"] == 150.0
    assert "PixelData" not in header and "DeidentificationMethodCodeSequence" not in header


def test_redacting_filter(rg1):
    redactor = RedactingFilter()
    redactor.remember(identifying_values(pydicom.dcmread(rg1, stop_before_pixels=True)))
    record = logging.LogRecord("cxrlab.x", logging.INFO, __file__, 1,
                               "patient %s id=%s born %s uid %s on 2004-08-26 at %s", (
                                   "Doe^John", "9RG1", "19521224", "1.2.840.113619.2.55.3", "Our Department"), None)
    assert redactor.filter(record) is True
    message = record.getMessage()
    for value in ("Doe", "John", "9RG1", "19521224", "1.2.840.113619.2.55.3", "2004-08-26", "Our Department"):
        assert value not in message, message
    assert message == "patient <name> id=<redacted> born <date> uid <uid> on <date> at <redacted>"
    assert redactor.redact("born 19400305") == "born <redacted>"
    assert redactor.redact("127.0.0.1:8000 - GET /v1/worklist 200") == "127.0.0.1:8000 - GET /v1/worklist 200"
    try:
        raise ValueError("cannot read CompressedSamples^RG1")
    except ValueError:
        import sys

        failing = logging.LogRecord("cxrlab.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    redactor.filter(failing)
    assert "CompressedSamples" not in failing.exc_text and "<name>" in failing.exc_text


def test_no_phi_stored_answered_or_logged_for_rg1(make_settings, model_set, auth, upload, rg1, rg1_phi, caplog):
    settings = make_settings()
    caplog.set_level(logging.DEBUG)
    app = create_app(settings, models=model_set)
    with TestClient(app) as client:
        first = upload(client, rg1)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["image"]["format"] == "dicom" and body["image"]["photometric"] == "MONOCHROME1"
        assert body["dicom"]["PatientIdentityRemoved"] == "YES" and body["dicom"]["Modality"] == "CR"
        logging.getLogger("cxrlab.serve.test").warning("upload of %s for %s", rg1_phi["PatientID"],
                                                       rg1_phi["PatientName"])
        repeat = upload(client, rg1)
        assert repeat.json()["repeat"] is True and repeat.json()["study_id"] == body["study_id"]
        assert client.get("/v1/worklist", headers=auth).json()["total"] == 1
        answers = first.text + repeat.text + client.get(f"/v1/studies/{body['study_id']}", headers=auth).text
        rows = app.state.service.store
        stored = rows.get(body["study_id"])
        hasher = UidHasher(settings.uid_salt)
        assert stored.sop_hash == hasher.hash(rg1_phi["SOPInstanceUID"])
        assert stored.study_hash == hasher.hash(rg1_phi["StudyInstanceUID"])
    assert _leaks(answers, rg1_phi) == []
    files = [settings.db, *settings.db.parent.glob(settings.db.name + "-*"),
             *settings.artifact_dir.rglob("*")]
    blob = b"".join(p.read_bytes() for p in files if p.is_file())
    for name, value in rg1_phi.items():
        assert value.encode().lower() not in blob.lower(), name
    assert caplog.records, "the service logged nothing"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "upload of <redacted> for <name>" in logged
    assert _leaks(logged, rg1_phi) == []
    assert f"study {body['study_id']} stored" in logged


def test_redaction_keeps_uvicorn_access_records_formattable():
    from uvicorn.logging import AccessFormatter

    redactor = RedactingFilter()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/v1/studies/1.2.840.113619.2.55.3.604688119", "1.1", 404),
                               None)
    redactor.filter(record)
    line = AccessFormatter("%(client_addr)s - \"%(request_line)s\" %(status_code)s", use_colors=False).format(record)
    assert line == '127.0.0.1:5000 - "GET /v1/studies/<uid> HTTP/1.1" 404 Not Found'


def test_remembered_values_match_whole_words_only():
    redactor = RedactingFilter()
    redactor.remember(["ward", "9RG1", "ab"])
    assert redactor.redact("sent forward to ward 3 (9RG1)") == "sent forward to <redacted> 3 (<redacted>)"
    assert redactor.redact("ab is too short to be remembered") == "ab is too short to be remembered"


def _multipart(parts: list[bytes], boundary: str = "cxrlab-test-boundary") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
                    for part in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_no_phi_on_the_stow_and_dimse_paths(make_settings, model_set, auth, rg1, rg1_dir, rg1_phi, caplog):
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    from .conftest import free_port

    settings = make_settings(dicom_port=free_port(), forward=(f"PACS@127.0.0.1:{free_port()}",),
                             forward_retry_initial_s=5.0, forward_retry_max_s=5.0)   # a destination that is down
    caplog.set_level(logging.DEBUG)
    app = create_app(settings, models=model_set)
    with TestClient(app) as client:
        body, content_type = _multipart([rg1.read_bytes(), b"not a dicom file"])
        stow = client.post("/dicomweb/studies", content=body, headers={**auth, "Content-Type": content_type})
        assert stow.status_code == 202, stow.text                         # one stored, one failed
        assert stow.headers["content-type"].startswith("application/dicom+json")
        answer = stow.json()
        referenced = answer["00081199"]["Value"]
        assert referenced[0]["00081155"]["Value"] == [rg1_phi["SOPInstanceUID"]]   # the sender's own UID, echoed
        assert answer["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
        unauthorized = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        assert unauthorized.status_code == 401
        assert client.post("/dicomweb/studies", content=b"x", headers={**auth, "Content-Type": "image/png"}
                           ).status_code == 415

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="CXRLAB")
        assert assoc.is_established
        status = assoc.send_c_store(pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm"))
        assoc.release()
        assert status.Status == 0x0000                                    # a repeat: stored once
        worklist = client.get("/v1/worklist", headers=auth)
        assert worklist.json()["total"] == 1
        study_id = worklist.json()["items"][0]["study_id"]
        sr = client.get(f"/v1/studies/{study_id}/results/sr.dcm", headers=auth)
        assert sr.status_code == 200
        outbox = client.get("/v1/outbox", headers=auth)
        assert outbox.json()["pending"] == 2
        answers = (worklist.text + client.get(f"/v1/studies/{study_id}", headers=auth).text + outbox.text
                   + sr.content.decode("latin-1") + stow.text.replace(rg1_phi["SOPInstanceUID"], ""))
    assert _leaks(answers, rg1_phi) == []
    files = [settings.db, *settings.db.parent.glob(settings.db.name + "-*"), *settings.artifact_dir.rglob("*")]
    blob = b"".join(p.read_bytes() for p in files if p.is_file())
    for name, value in rg1_phi.items():
        assert value.encode().lower() not in blob.lower(), name
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert _leaks(logged, rg1_phi) == []
    # the identifiers the PACS needs live only in the outbox, readable by the service user only
    held = [p for p in settings.outbox_dir.rglob("*.dcm")]
    assert len(held) == 2 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in held)
    assert stat.S_IMODE(settings.outbox_dir.stat().st_mode) == 0o700
    assert all(pydicom.dcmread(p).PatientName == rg1_phi["PatientName"] for p in held)
