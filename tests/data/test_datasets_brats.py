"""BraTS adapters: the three layouts read back to the same regions; bad input named by case and file;
survival CSV parsing; SYNTHETIC phantoms and the real MNI152 brain through crop and z-scoring."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.data.datasets.brats import (LAYOUTS, BratsDataset, detect_convention, parse_survival_cell,
                                        read_survival_csv, region_masks, to_canonical, to_convention)
from cxrlab.data.synthetic_brain import write_phantoms
from cxrlab.errors import ConfigError, LabelValueError, MissingFileError, SkipLog, VolumeMismatchError
from cxrlab.io.nifti import read_nifti, write_nifti


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory) -> dict[str, Path]:
    """The same 3 SYNTHETIC cases (seed 5) written in every layout."""
    root = tmp_path_factory.mktemp("brats_layouts")
    for layout in LAYOUTS:
        write_phantoms(root / layout, layout, n=3, size=24, seed=5)
    return {layout: root / layout for layout in LAYOUTS}


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_every_layout_reads_back_to_the_same_regions(phantom_sets):
    loaded = {}
    for layout, root in phantom_sets.items():
        ds = BratsDataset(root)
        assert ds.layout == layout and len(ds) == 3
        assert ds.labels == {"brats2020": "2020", "brats2023": "2023", "msd": "msd"}[layout]
        case = ds.load(1)
        assert case.image.shape[0] == 4 and case.label.shape == case.image.shape[1:]
        assert case.survival is not None and case.survival.age > 0
        loaded[layout] = case
    first = loaded["brats2020"]
    regions = region_masks(first.label)
    assert regions["WT"].sum() > regions["TC"].sum() >= regions["ET"].sum() > 0
    for case in loaded.values():
        np.testing.assert_array_equal(case.label, first.label)
        np.testing.assert_allclose(case.image, first.image, atol=1.0)        # int16 (truncated) vs float32 files
        np.testing.assert_allclose(case.affine, first.affine)
    # modality looks: enhancing tumour brightest on T1ce, edema bright on FLAIR
    t1, t1ce, t2, flair = first.image
    et, ed, brain = first.label == 3, first.label == 2, np.any(first.image != 0, axis=0)
    assert t1ce[et].mean() > 1.3 * t1ce[brain & (first.label == 0)].mean()
    assert flair[ed].mean() > 1.3 * flair[brain & (first.label == 0)].mean()


def test_label_conventions_round_trip():
    canonical = np.array([0, 1, 2, 3], dtype=np.uint8)
    np.testing.assert_array_equal(to_convention(canonical, "2020"), [0, 1, 2, 4])
    np.testing.assert_array_equal(to_convention(canonical, "2023"), [0, 1, 2, 3])
    np.testing.assert_array_equal(to_convention(canonical, "msd"), [0, 2, 1, 3])
    for convention in ("2020", "2023", "msd"):
        np.testing.assert_array_equal(to_canonical(to_convention(canonical, convention), convention), canonical)
    # 2024's resection cavity (4 in the 2023 convention) is no tumour region
    np.testing.assert_array_equal(to_canonical(np.array([4, 3]), "2023"), [0, 3])
    assert detect_convention({0, 1, 2, 4}) == "2020" and detect_convention({0, 2, 3}) == "2023"
    regions = region_masks(canonical)
    assert regions["WT"].tolist() == [False, True, True, True]
    assert regions["TC"].tolist() == [False, True, False, True]
    assert regions["ET"].tolist() == [False, False, False, True]


def test_missing_modality_raises_or_is_skipped(phantom_sets, tmp_path):
    root = copy_set(phantom_sets["brats2020"], tmp_path / "set")
    victim = sorted(root.glob("*/*_t1ce.nii.gz"))[0]
    victim.unlink()
    with pytest.raises(MissingFileError, match=r"case SYNTH20_Training_001: the t1ce volume is missing") as err:
        BratsDataset(root)
    assert "SYNTH20_Training_001_t1ce.nii.gz" in str(err.value)
    ds = BratsDataset(root, on_error="skip")
    assert len(ds) == 2 and ds.skips.count == 1


def test_shape_and_affine_disagreement(phantom_sets, tmp_path):
    root = copy_set(phantom_sets["brats2023"], tmp_path / "set")
    case_dir = sorted(p for p in root.iterdir() if p.is_dir())[0]
    t2w = next(case_dir.glob("*-t2w.nii.gz"))
    volume = read_nifti(t2w)
    write_nifti(t2w, volume.array[:-1], affine=volume.affine)
    with pytest.raises(VolumeMismatchError, match=r"t2 has shape") as err:
        BratsDataset(root).load(0)
    assert case_dir.name in str(err.value) and "t2w.nii.gz" in str(err.value)
    moved = volume.affine.copy()
    moved[0, 3] += 7.0
    write_nifti(t2w, volume.array, affine=moved)
    with pytest.raises(VolumeMismatchError, match="affine differs"):
        BratsDataset(root).load(0)


def test_unknown_label_value(phantom_sets, tmp_path):
    root = copy_set(phantom_sets["brats2020"], tmp_path / "set")
    seg = sorted(root.glob("*/*_seg.nii.gz"))[0]
    volume = read_nifti(seg, dtype=np.uint8)
    array = volume.array.copy()
    array[0, 0, 0] = 3                       # 3 is not a 2018-2021 label
    write_nifti(seg, array, reference=volume)
    with pytest.raises(LabelValueError, match=r"label value\(s\) \[3\] are not in the BraTS 2020") as err:
        BratsDataset(root).load(0)
    assert seg.name in str(err.value)


def test_no_layout(tmp_path):
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no BraTS layout"):
        BratsDataset(tmp_path)


def test_survival_csv_formats(tmp_path):
    assert parse_survival_cell("ALIVE (361 days later)") == (361.0, True)
    assert parse_survival_cell("289") == (289.0, False)
    assert parse_survival_cell("") == (None, False)
    csv2020 = tmp_path / "survival_info.csv"
    csv2020.write_text("Brats20ID,Age,Survival_days,Extent_of_Resection\n"
                       "A,60.463,289,GTR\nB,52.263,ALIVE (361 days later),NA\nC,41.2,1145,STR\n")
    rows = read_survival_csv(csv2020)
    assert rows["A"].days == 289 and rows["A"].resection == "GTR"
    assert rows["B"].censored and rows["B"].days == 361 and rows["B"].resection is None
    assert rows["C"].resection == "STR"
    csv2018 = tmp_path / "survival_data.csv"
    csv2018.write_text("BraTS18ID,Age,Survival\nX,70.1,153\n")
    assert read_survival_csv(csv2018)["X"].resection is None
    bad = tmp_path / "bad.csv"
    bad.write_text("Brats20ID,Age,Survival_days,Extent_of_Resection\nA,60,289,GTR\nB,50,dead soon,GTR\n")
    with pytest.raises(LabelValueError, match=r"bad.csv:3: case B: survival 'dead soon'"):
        read_survival_csv(bad)
    skips = SkipLog("skip")
    assert list(read_survival_csv(bad, skips)) == ["A"] and skips.count == 1
    no_age = tmp_path / "no_age.csv"
    no_age.write_text("Brats20ID,Survival_days\nA,3\n")
    with pytest.raises(Exception, match="Age"):
        read_survival_csv(no_age)

