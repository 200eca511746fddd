"""The service path validated by dicom3tools: DCMTK's storescu sends pydicom-data's real CR
radiograph (uncompressed and JPEG 2000) to the listener, DCMTK's storescp receives the results,
and dciodvfy finds no error in any of them (test_dimse.py and test_orthanc.py cover the
listener's negotiation, AE titles, load and the Orthanc round trip)."""

from __future__ import annotations

import socket
from pathlib import Path
import time

import pydicom
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")



def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    # Debian's programs by absolute path: the venv's bin/ holds pynetdicom's own storescu/storescp
    path = f"/usr/bin/{name}"
    if not Path(path).is_file():
        pytest.skip(f"{name} not installed (scripts/ensure_dicom_tools.sh installs DCMTK and dicom3tools)")
    return path


def test_dcmtk_storescu_in_storescp_receives_results_that_dciodvfy_accepts(make_settings, model_set, rg1_dir,
                                                                          tmp_path):
    """The issue's "Done when": DCMTK's storescu sends RG1_UNCR.dcm and RG1_J2KR.dcm to the
    listener, DCMTK's storescp is the forward destination, dicom3tools' dciodvfy validates every
    object received, and dsrdump reads the SR."""
    import subprocess

    from cxrlab.serve.app import create_app

    storescu, storescp, dciodvfy, dsrdump = (_tool(n) for n in ("storescu", "storescp", "dciodvfy", "dsrdump"))
    inbox = tmp_path / "pacs"
    inbox.mkdir()
    pacs_port, port = _port(), _port()
    scp = subprocess.Popen([storescp, "-aet", "STORESCP", "-od", str(inbox), "-uf", str(pacs_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        settings = make_settings(dicom_port=port, ae_title="CXRLAB", forward=(f"STORESCP@127.0.0.1:{pacs_port}",),
                                 outbox=tmp_path / "outbox", forward_retry_initial_s=0.2, forward_retry_max_s=1.0)
        with TestClient(create_app(settings, models=model_set)):
            # storescu proposes uncompressed syntaxes unless told; -xv proposes JPEG 2000 lossless
            for options, name in (([], "RG1_UNCR.dcm"), (["-xv"], "RG1_J2KR.dcm")):
                sent = subprocess.run([storescu, *options, "-aec", "CXRLAB", "127.0.0.1", str(port),
                                       str(rg1_dir / name)], capture_output=True, text=True, timeout=120)
                assert sent.returncode == 0, sent.stdout + sent.stderr
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(list(inbox.iterdir())) < 4:
                time.sleep(0.3)
            time.sleep(1.0)
    finally:
        scp.terminate()
        scp.wait(timeout=30)
    files = sorted(inbox.iterdir())
    modalities = [str(pydicom.dcmread(f, stop_before_pixels=True).Modality) for f in files]
    assert modalities.count("SR") == 2, modalities             # one report per received image
    for path in files:
        check = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (path.name, errors)
    report = next(f for f, m in zip(files, modalities) if m == "SR")
    dump = subprocess.run([dsrdump, str(report)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "cxrlab" in dump.stdout.lower(), dump.stdout[-2000:] + dump.stderr
