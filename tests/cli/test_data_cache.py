"""``cxrlab data cache`` end to end on a tiny generic-layout set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.data.cache import ResolutionCache
from cxrlab.data.datasets import load_dataset
from cxrlab.data.transforms import PreprocessConfig, preprocess

runner = CliRunner()


def write_generic(root: Path, n: int = 5, corrupt: tuple[int, ...] = ()) -> Path:
    """PNGs under ``root/images`` and ``root/labels.csv`` with columns path, A, B."""
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    lines = ["path,A,B,view"]
    for i in range(n):
        img = np.clip(rng.normal(100, 30, (40, 52)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"x{i}.png"), img)
        if i in corrupt:
            (root / "images" / f"x{i}.png").write_bytes(b"")
        lines.append(f"images/x{i}.png,{i % 2},{'' if i % 3 else 1},{'LATERAL' if i == 1 else 'PA'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def cache_args(csv: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "cache", "--dataset", "generic", "--csv", str(csv), "--root",
            str(csv.parent), "--option", "label_cols=A,B", "--size", "24", "--out", str(out),
            "--workers", "1", *extra]


def test_builds_a_cache_and_reports(tmp_path):
    csv = write_generic(tmp_path / "set")
    result = runner.invoke(app, cache_args(csv, tmp_path / "c"))
    assert result.exit_code == 0, result.output
    assert "cached 5 generic images at 24 px" in result.output, result.output
    assert "images/s" in result.output and "skipped 0" in result.output
    dataset = load_dataset("generic", csv=csv, root=csv.parent, label_cols=["A", "B"])
    cfg = PreprocessConfig(size=24)
    cache = ResolutionCache.open(tmp_path / "c", dataset=dataset, cfg=cfg, verify=True)
    np.testing.assert_array_equal(cache.images[3], preprocess(dataset.image(3).pixels, cfg))


def test_other_settings_need_overwrite(tmp_path):
    csv = write_generic(tmp_path / "set")
    assert runner.invoke(app, cache_args(csv, tmp_path / "c")).exit_code == 0
    again = runner.invoke(app, cache_args(csv, tmp_path / "c", "--clahe"))
    assert again.exit_code == 2 and "clahe: cache False vs requested True" in again.output
    replaced = runner.invoke(app, cache_args(csv, tmp_path / "c", "--clahe", "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    assert ResolutionCache.open(tmp_path / "c").manifest["preprocess"]["clahe"] is True


def test_bad_image_stops_or_is_skipped(tmp_path):
    csv = write_generic(tmp_path / "set", corrupt=(2,))
    stopped = runner.invoke(app, cache_args(csv, tmp_path / "c"))
    assert stopped.exit_code == 2 and "x2.png" in stopped.output
    assert not (tmp_path / "c").exists()
    skipped = runner.invoke(app, cache_args(csv, tmp_path / "c", "--skip-bad"))
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1" in skipped.output and "x2.png" in skipped.output
    assert [s["index"] for s in ResolutionCache.open(tmp_path / "c").skipped] == [2]


def test_frontal_only(tmp_path):
    csv = write_generic(tmp_path / "set")
    result = runner.invoke(app, cache_args(csv, tmp_path / "c", "--option", "view_col=view",
                                           "--frontal-only"))
    assert result.exit_code == 0, result.output
    cache = ResolutionCache.open(tmp_path / "c")
    assert len(cache) == 4
    sources = _sources(tmp_path / "c")
    assert len(sources) == 4 and not any(p.endswith("x1.png") for p in sources)


def _sources(folder: Path) -> list[str]:
    import json

    return [record[0] for record in json.loads((folder / "sources.json").read_text())["records"]]


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nosuch", "--root", "."], "unknown dataset"),
    (["--dataset", "folder", "--csv", "a.csv", "--root", "."], "has no CSV"),
    (["--dataset", "generic", "--csv", "a.csv", "--option", "oops"], "KEY=VALUE"),
])
def test_dataset_selection_errors(tmp_path, args, message):
    result = runner.invoke(app, ["data", "cache", *args, "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and message in result.output


def test_rerun_is_a_fast_noop_and_a_change_updates_alone(tmp_path):
    csv = write_generic(tmp_path / "set")
    assert runner.invoke(app, cache_args(csv, tmp_path / "c")).exit_code == 0
    stamp = (tmp_path / "c" / "images.u8").stat().st_mtime_ns
    again = runner.invoke(app, cache_args(csv, tmp_path / "c"))
    assert again.exit_code == 0, again.output
    assert "is up to date (5 images at 24 px); nothing to do" in again.output
    assert (tmp_path / "c" / "images.u8").stat().st_mtime_ns == stamp
    image = tmp_path / "set" / "images" / "x3.png"
    cv2.imwrite(str(image), np.full((30, 30), 77, np.uint8))
    updated = runner.invoke(app, cache_args(csv, tmp_path / "c"))
    assert updated.exit_code == 0, updated.output
    assert "processed 1 in" in updated.output and "kept 4 in place" in updated.output
    assert "1 modified (size or modification time): x3.png" in updated.output


def test_check_reports_and_finds_damage(tmp_path):
    csv = write_generic(tmp_path / "set")
    assert runner.invoke(app, cache_args(csv, tmp_path / "c")).exit_code == 0
    ok = runner.invoke(app, ["data", "cache", "--check", str(tmp_path / "c"), "--checksums"])
    assert ok.exit_code == 0, ok.output
    assert "5 generic images at 24 px" in ok.output and "checksums of all 5 items" in ok.output
    against = runner.invoke(app, ["data", "cache", "--check", str(tmp_path / "c"), "--dataset",
                                  "generic", "--csv", str(csv), "--root", str(csv.parent),
                                  "--option", "label_cols=A,B", "--size", "24"])
    assert against.exit_code == 0 and "matches the dataset's 5 source files" in against.output
    payload = bytearray((tmp_path / "c" / "images.u8").read_bytes())
    payload[2 * 24 * 24 + 5] ^= 0x0F
    (tmp_path / "c" / "images.u8").write_bytes(bytes(payload))
    assert runner.invoke(app, ["data", "cache", "--check", str(tmp_path / "c")]).exit_code == 0
    bad = runner.invoke(app, ["data", "cache", "--check", str(tmp_path / "c"), "--checksums"])
    assert bad.exit_code == 2 and "items 2)" in bad.output
    neither = runner.invoke(app, ["data", "cache", "--dataset", "generic"])
    assert neither.exit_code == 2 and "--out DIR" in neither.output
