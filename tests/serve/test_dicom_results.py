"""The result objects: valid for dicom3tools' dciodvfy, readable by DCMTK's dsrdump, filed in the source's study."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

pytest.importorskip("highdicom")

from cxrlab.errors import InputError  # noqa: E402
from cxrlab.serve.dicom_results import build_results, label_code  # noqa: E402
from cxrlab.serve.models import png_bytes  # noqa: E402
from cxrlab.serve.privacy import UidHasher  # noqa: E402

RESULT = {
    "findings": [{"label": "Cardiomegaly", "probability": 0.31, "threshold": 0.5, "positive": False},
                 {"label": "Enlarged Cardiomediastinum", "probability": 0.72, "threshold": 0.4, "positive": True}],
    "screening": {"decision": "abnormal", "probability": 0.83, "threshold": 0.1, "risk_group": "high"},
    "pneumothorax": {"present": True, "probability": 0.91, "area_fraction": 0.012},
    "heatmap": {"label": "Enlarged Cardiomediastinum", "method": "gradcam"},
    "models": {"classifier": {"name": "tiny-serve", "version": "0123456789ab"}},
}


@pytest.fixture(scope="module")
def rg1_results(rg1_dir, tmp_path_factory):
    source = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm", stop_before_pixels=True)
    mask = np.zeros((source.Rows, source.Columns), np.uint8)
    mask[200:420, 300:520] = 255
    heatmap = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    hasher = UidHasher(b"0123456789abcdef0123456789abcdef")
    objects = build_results(source, RESULT, png_bytes(heatmap), png_bytes(mask),
                            lambda name, level: hasher.new_uid(f"{source.SOPInstanceUID}|{name}|{level}"))
    out = tmp_path_factory.mktemp("results")
    paths = {}
    for obj in objects:
        paths[obj.name] = out / obj.name
        paths[obj.name].write_bytes(obj.to_bytes())
    return source, objects, paths


def test_results_are_filed_in_the_source_study(rg1_results):
    source, objects, paths = rg1_results
    assert [o.name for o in objects] == ["sr.dcm", "seg.dcm", "sc.dcm"]
    classes = {"sr.dcm": "1.2.840.10008.5.1.4.1.1.88.33", "seg.dcm": "1.2.840.10008.5.1.4.1.1.66.4",
               "sc.dcm": "1.2.840.10008.5.1.4.1.1.7"}
    for name, path in paths.items():
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == classes[name]
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.PatientName == source.PatientName
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
        assert "cxrlab" in ds.SeriesDescription and "tiny-serve" in ds.SeriesDescription
    sr = pydicom.dcmread(paths["sr.dcm"])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    seg = pydicom.dcmread(paths["seg.dcm"])
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID
    assert int(seg.pixel_array.sum()) == 220 * 220
    sc = pydicom.dcmread(paths["sc.dcm"])
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.pixel_array.shape == (48, 48, 3)


def test_dciodvfy_finds_no_error(rg1_results, dicom_tool):
    _, _, paths = rg1_results
    for name, path in paths.items():
        run = subprocess.run([dicom_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
        output = run.stdout + run.stderr
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        assert errors == [], f"{name}:\n{output}"


def test_dsrdump_reads_the_findings(rg1_results, dicom_tool):
    _, _, paths = rg1_results
    run = subprocess.run([dicom_tool("dsrdump"), str(paths["sr.dcm"])], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "Comprehensive SR Document" in text
    assert '<contains TEXT:(,,"Algorithm Name")="tiny-serve">' in text
    assert '<contains CODE:(,,"Finding")=(287272002,SCT,"Cardiomegaly")>' in text
    assert '<has properties NUM:(,,"Probability")="0.31" (1,UCUM,"no units")>' in text
    assert '<has properties CODE:(,,"Presence")=(272519000,SCT,"Absent")>' in text
    assert '(ENLARGED_CARDIOM,99CXRLAB,"Enlarged Cardiomediastinum")' in text
    assert '<contains CODE:(,,"Screening decision")=(ABNORMAL,99CXRLAB,"Abnormal")>' in text
    assert '<has properties TEXT:(,,"Risk group")="high">' in text


def test_no_seg_without_a_mask_and_a_clear_error_without_uids(rg1_dir):
    source = pydicom.dcmread(rg1_dir / "RG1_UNCR.dcm", stop_before_pixels=True)
    heatmap = png_bytes(np.zeros((8, 8, 3), np.uint8))
    names = [o.name for o in build_results(source, {**RESULT, "pneumothorax": None}, heatmap, None,
                                           lambda n, k: f"2.25.{abs(hash((n, k))) % 10**20}")]
    assert names == ["sr.dcm", "sc.dcm"]
    del source.StudyInstanceUID
    with pytest.raises(InputError, match="no StudyInstanceUID"):
        build_results(source, RESULT, heatmap, None, lambda n, k: "2.25.1")
    assert label_code("Pneumothorax").value == "36118008"
