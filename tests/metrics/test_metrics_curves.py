"""report.curves: ROC/PR/reliability PNGs and curves.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from cxrlab.errors import InputError
from cxrlab.metrics import reliability_curve
from cxrlab.report.curves import save_roc_pr_curves


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.4).astype(float)
    y[:, 2] = 1.0  # one class only: no ROC/PR curve for it
    y[rng.random((200, 3)) < 0.1] = np.nan
    s = np.clip(0.35 * np.nan_to_num(y) + 0.65 * rng.random((200, 3)), 0, 1)
    return y, s


def test_save_roc_pr_curves_writes_pngs_and_json(tmp_path) -> None:
    y, s = _data()
    names = ["Cardiomegaly", "Edema", "Support Devices"]
    paths = save_roc_pr_curves(y, s, names, tmp_path / "curves")
    assert {p.name for p in paths.values()} == {"roc.png", "pr.png", "reliability.png", "curves.json"}
    for key in ("roc", "pr", "reliability"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.size == (600, 600)
            # something was drawn: the figure is not one flat colour
            assert len(img.convert("L").getcolors(maxcolors=1_000_000)) > 10
    assert not list((tmp_path / "curves").glob(".*tmp"))  # no temporary files left behind

    data = json.loads(paths["json"].read_text())["classes"]
    assert list(data) == names
    for c, name in enumerate(names[:2]):
        kept = ~np.isnan(y[:, c])
        yc, sc = y[kept, c], s[kept, c]
        entry = data[name]
        assert entry["n"] == kept.sum() and entry["n_positive"] == yc.sum()
        assert entry["auroc"] == pytest.approx(skm.roc_auc_score(yc, sc))
        fpr, tpr, thr = skm.roc_curve(yc, sc)
        np.testing.assert_allclose(entry["roc"]["fpr"], fpr)
        np.testing.assert_allclose(entry["roc"]["tpr"], tpr)
        assert entry["roc"]["thresholds"][0] is None  # inf is not JSON
        np.testing.assert_allclose(entry["roc"]["thresholds"][1:], thr[1:])
        prec, rec, _ = skm.precision_recall_curve(yc, sc, drop_intermediate=True)
        np.testing.assert_allclose(entry["pr"]["precision"], prec)
        np.testing.assert_allclose(entry["pr"]["recall"], rec)
        frac, mean, counts = reliability_curve(yc, sc)
        np.testing.assert_allclose(entry["reliability"]["fraction_positive"], frac)
        assert entry["reliability"]["counts"] == counts.tolist()
    one_class = data["Support Devices"]
    assert one_class["roc"] is None and one_class["pr"] is None and one_class["auroc"] is None
    assert one_class["reliability"] is not None


def test_logits_get_no_reliability_and_names_are_checked(tmp_path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    logits = rng.normal(size=50) * 3
    paths = save_roc_pr_curves(y, logits, None, tmp_path)
    entry = json.loads(paths["json"].read_text())["classes"]["0"]
    assert entry["reliability"] is None and entry["roc"] is not None
    assert paths["reliability"].stat().st_size > 0
    with pytest.raises(InputError, match="class names"):
        save_roc_pr_curves(y, logits, ["a", "b"], tmp_path)
