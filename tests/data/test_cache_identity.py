"""Resolution cache found by content, updated incrementally, refused with the cause (issue 17).

Phantom CheXpert-layout sets (train.csv + valid.csv, frontal and lateral views, 64 px),
so the tests run the adapters users run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.data.cache import (IMAGES, MANIFEST, ResolutionCache, _ChunkWriter, auto_cache,
                               build_cache, dataset_identity, ensure_cache, find_cache)
from cxrlab.data.datasets import load_dataset
from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import CacheError

CFG = PreprocessConfig(size=32)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from cxrlab.data.synthetic_layouts import write_dataset

    return write_dataset("chexpert", tmp_path_factory.mktemp("ph") / "set", n=24, size=64,
                         seed=3, valid_fraction=0.25)


@pytest.fixture()
def data_dir(phantoms, tmp_path) -> Path:
    """A private copy (mtimes kept), so a test may touch, move or replace files."""
    return Path(shutil.copytree(phantoms, tmp_path / "data"))


def open_set(root: Path, part: str = "train"):
    return load_dataset("chexpert", csv=root / "CheXpert-v1.0-small" / f"{part}.csv", root=root)


def test_identity_ignores_location_and_symlinks(data_dir, tmp_path):
    before = dataset_identity(open_set(data_dir), CFG)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    os.rename(data_dir, moved)
    link = tmp_path / "link"
    link.symlink_to(moved)
    for root in (moved, link):
        after = dataset_identity(open_set(root), CFG)
        assert after.key == before.key and after.base != before.base
    assert before.base_name == "train" and before.records[0][0].startswith("patient")


def test_moved_data_reuses_the_cache(data_dir, tmp_path):
    built = ensure_cache(open_set(data_dir), CFG, tmp_path / "runs" / "cache" / "mine",
                         workers=1)
    assert built.action == "built"
    stamp = (tmp_path / "runs" / "cache" / "mine" / IMAGES).stat().st_mtime_ns
    moved = tmp_path / "moved"
    os.rename(data_dir, moved)
    again = ensure_cache(open_set(moved), CFG, tmp_path / "runs" / "cache" / "mine", workers=1)
    assert again.action == "reused" and "nothing to do" in again.message()
    assert (tmp_path / "runs" / "cache" / "mine" / IMAGES).stat().st_mtime_ns == stamp
    # `cache: auto` finds the cache made with --out by its content, not its folder name
    found = auto_cache(open_set(moved), CFG, tmp_path / "runs" / "cache", workers=1)
    assert found.action == "reused" and found.cache.path == tmp_path / "runs" / "cache" / "mine"
    ResolutionCache.open(found.cache.path, dataset=open_set(moved), cfg=CFG)


def test_incremental_update_reprocesses_changed_files_alone(data_dir, tmp_path, monkeypatch):
    dataset = open_set(data_dir)
    folder = tmp_path / "c"
    ensure_cache(dataset, CFG, folder, workers=1)
    paths = dataset.table["path"].tolist()
    touched, rewritten = Path(paths[2]), Path(paths[5])
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    shutil.copyfile(paths[0], rewritten)  # other bytes: a modified image
    csv = data_dir / "CheXpert-v1.0-small" / "train.csv"
    lines = csv.read_text().splitlines()
    removed_rel = lines[4].split(",")[0]  # row 3 (dataset index 3) leaves the CSV
    extra = lines[1].replace("view1_frontal", "view9_frontal")  # a new file joins
    shutil.copyfile(paths[0], data_dir / extra.split(",")[0])
    csv.write_text("\n".join(lines[:4] + lines[5:] + [extra]) + "\n")
    changed = open_set(data_dir)

    written: list[int] = []
    original = _ChunkWriter._write
    monkeypatch.setattr(_ChunkWriter, "_write",
                        lambda self, i: (written.append(i), original(self, i))[1])
    result = ensure_cache(changed, CFG, folder, workers=1)
    assert result.action == "updated"
    new_paths = changed.table["path"].tolist()
    expected = sorted([new_paths.index(str(touched)), new_paths.index(str(rewritten)),
                       len(new_paths) - 1])
    assert sorted(written) == expected and result.processed == 3
    assert result.cache.manifest["build"]["copied"] == len(changed) - 3
    assert "2 modified" in result.detail and touched.name in result.detail
    assert "1 added" in result.detail and "view9_frontal" in result.detail
    assert "1 removed" in result.detail and removed_rel.split("train/")[1] in result.detail
    # the updated cache is what a fresh build gives, and it checks clean
    fresh = build_cache(changed, CFG, tmp_path / "fresh", workers=1, progress=False)
    assert (folder / IMAGES).read_bytes() == (tmp_path / "fresh" / IMAGES).read_bytes()
    np.testing.assert_array_equal(result.cache.digests, fresh.digests)
    ResolutionCache.open(folder, dataset=changed, cfg=CFG, verify=True)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
    written.clear()
    assert ensure_cache(changed, CFG, folder, workers=1).action == "reused" and written == []


def test_modified_files_alone_are_rewritten_in_place(data_dir, tmp_path, monkeypatch):
    """Same files in the same order, some modified: their slots are rewritten in the cache's
    own files (no copy of the unchanged items), and the result equals a fresh build."""
    dataset = open_set(data_dir)
    folder = tmp_path / "c"
    ensure_cache(dataset, CFG, folder, workers=1)
    inode = (folder / IMAGES).stat().st_ino
    paths = dataset.table["path"].tolist()
    shutil.copyfile(paths[0], paths[4])
    shutil.copyfile(paths[1], paths[9])
    written: list[int] = []
    original = _ChunkWriter._write
    monkeypatch.setattr(_ChunkWriter, "_write",
                        lambda self, i: (written.append(i), original(self, i))[1])
    result = ensure_cache(open_set(data_dir), CFG, folder, workers=1)
    assert result.action == "updated" and sorted(written) == [4, 9] and result.processed == 2
    assert "2 modified" in result.detail
    assert (folder / IMAGES).stat().st_ino == inode  # the same file, not a rewritten copy
    assert result.cache.manifest["build"]["copied"] == len(dataset) - 2
    assert result.cache.manifest["build"]["in_place"] is True
    assert "updating" not in result.cache.manifest and "updated" in result.cache.manifest
    fresh = build_cache(open_set(data_dir), CFG, tmp_path / "fresh", workers=1, progress=False)
    assert (folder / IMAGES).read_bytes() == (tmp_path / "fresh" / IMAGES).read_bytes()
    np.testing.assert_array_equal(result.cache.digests, fresh.digests)
    ResolutionCache.open(folder, dataset=open_set(data_dir), cfg=CFG, verify=True)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_an_interrupted_in_place_update_is_refused_then_finished(data_dir, tmp_path, monkeypatch):
    dataset = open_set(data_dir)
    folder = tmp_path / "c"
    ensure_cache(dataset, CFG, folder, workers=1)
    paths = dataset.table["path"].tolist()
    shutil.copyfile(paths[0], paths[6])
    original = _ChunkWriter._write

    class Killed(BaseException):
        pass

    def die(self, i):
        self.images[i] = 77  # a half-written slot
        raise Killed

    monkeypatch.setattr(_ChunkWriter, "_write", die)
    with pytest.raises(Killed):
        ensure_cache(open_set(data_dir), CFG, folder, workers=1)
    monkeypatch.setattr(_ChunkWriter, "_write", original)
    # the slot's old record is void: whatever the source files do now, the item is redone
    for check in (lambda: ResolutionCache.open(folder, dataset=open_set(data_dir), cfg=CFG),
                  lambda: ResolutionCache.open(folder, verify=True)):
        with pytest.raises(CacheError, match="did not finish; re-run `cxrlab data cache`"):
            check()
    found = auto_cache(open_set(data_dir), CFG, tmp_path, workers=1)  # cache: auto finds it
    assert found.action == "updated" and found.processed == 1 and found.cache.path == folder
    fresh = build_cache(open_set(data_dir), CFG, tmp_path / "fresh", workers=1, progress=False)
    assert (folder / IMAGES).read_bytes() == (tmp_path / "fresh" / IMAGES).read_bytes()
    ResolutionCache.open(folder, dataset=open_set(data_dir), cfg=CFG, verify=True)


def test_frontal_only_mismatch_names_the_cause(data_dir, tmp_path):
    import pandas as pd

    csv = data_dir / "CheXpert-v1.0-small" / "train.csv"
    table = pd.read_csv(csv)
    table.loc[[1, 4, 7], "Frontal/Lateral"] = "Lateral"  # the phantoms are all frontal
    table.to_csv(csv, index=False)
    dataset = open_set(data_dir)
    assert (~dataset.table["frontal"]).sum() == 3
    ensure_cache(dataset, CFG, tmp_path / "c", workers=1)
    frontal = dataset.filter_views(frontal=True)
    with pytest.raises(CacheError, match="keeps frontal views only; the cache was built "
                                         "with all views .* --frontal-only"):
        ensure_cache(frontal, CFG, tmp_path / "c", workers=1)
    with pytest.raises(CacheError, match="keeps frontal views only"):
        ResolutionCache.open(tmp_path / "c", dataset=frontal, cfg=CFG)
    with pytest.raises(CacheError, match="clahe: cache False vs requested True"):
        ensure_cache(dataset, PreprocessConfig(size=32, clahe=True), tmp_path / "c", workers=1)


def test_validation_set_is_never_checked_against_the_training_cache(data_dir, tmp_path):
    train, valid = open_set(data_dir), open_set(data_dir, "valid")
    store = tmp_path / "runs" / "cache"
    ensure_cache(train, CFG, store / "train320", workers=1)
    payload = (store / "train320" / IMAGES).read_bytes()
    with pytest.raises(CacheError, match="another image set .* under 'train/'.* under "
                                         "'valid/'"):
        ensure_cache(valid, CFG, store / "train320", workers=1)
    assert (store / "train320" / IMAGES).read_bytes() == payload  # never overwritten
    own = auto_cache(valid, CFG, store, workers=1)
    assert own.action == "built" and own.cache.path != store / "train320"
    assert len(own.cache) == len(valid)
    exact, _ = find_cache([store], dataset_identity(train, CFG))
    assert exact == store / "train320"


def test_check_names_damaged_items(data_dir, tmp_path):
    dataset = open_set(data_dir)
    cache = ensure_cache(dataset, CFG, tmp_path / "c", workers=1).cache
    np.testing.assert_array_equal(cache.images[4], preprocess(dataset.image(4).pixels, CFG))
    data = bytearray((tmp_path / "c" / IMAGES).read_bytes())
    data[4 * 32 * 32 + 100] ^= 0xFF
    (tmp_path / "c" / IMAGES).write_bytes(bytes(data))
    reopened = ResolutionCache.open(tmp_path / "c")
    assert reopened.damaged_items() == [4]
    with pytest.raises(CacheError, match=r"1 item\(s\) .*items 4\)"):
        reopened.verify()
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["dataset"]["key"] == dataset_identity(dataset, CFG).key


def test_a_changed_mask_source_reprocesses_its_item(tmp_path):
    """Masks come from other files than the images (Kaggle's train-rle.csv here): an edited
    RLE row changes that item's cache record, so its mask is re-processed, never served
    stale; the other items stay as they are."""
    from cxrlab.data.synthetic_layouts import write_dataset

    root = write_dataset("siim", tmp_path / "siim", n=8, size=64, seed=1, prevalence=0.5)
    rle_csv = root / "train-rle.csv"
    dataset = load_dataset("siim", rle_csv=rle_csv, root=root)
    folder = tmp_path / "c"
    ensure_cache(dataset, CFG, folder, workers=1)
    positive = next(i for i in range(len(dataset)) if dataset.mask(i).any())
    image_id = dataset.table["image_id"].iloc[positive]
    lines = rle_csv.read_text().splitlines()
    target = next(k for k, line in enumerate(lines) if line.startswith(image_id))
    lines[target] = lines[target].split(",")[0] + ", -1"   # the reader withdrew the region
    rle_csv.write_text("\n".join(lines) + "\n")
    changed = load_dataset("siim", rle_csv=rle_csv, root=root)
    assert not changed.mask(positive).any()
    with pytest.raises(CacheError, match="mask source"):
        ResolutionCache.open(folder, dataset=changed, cfg=CFG)
    result = ensure_cache(changed, CFG, folder, workers=1)
    assert result.action == "updated" and result.processed == 1, result.message()
    assert "1 modified (size, modification time or mask source)" in result.detail
    assert not result.cache.masks[positive].any()
    fresh = build_cache(changed, CFG, tmp_path / "fresh", workers=1, progress=False)
    np.testing.assert_array_equal(np.asarray(result.cache.masks), np.asarray(fresh.masks))
    assert ensure_cache(changed, CFG, folder, workers=1).action == "reused"
