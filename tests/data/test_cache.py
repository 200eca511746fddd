"""Resolution cache: bit-exact contents, manifest, atomic builds, skips, stale/corrupt refusal."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrlab import __version__
from cxrlab.data.cache import (DIGESTS, FORMAT_VERSION, IMAGES, MANIFEST, MASKS, SOURCES,
                               ResolutionCache, build_cache, file_blake2b)
from cxrlab.data.datasets.base import XrayDataset
from cxrlab.data.transforms import PreprocessConfig, preprocess
from cxrlab.errors import CacheError, ConfigError, ImageReadError, SkipLog

SHAPES = ((40, 56), (56, 40), (48, 48))
CFG = PreprocessConfig(size=32)


class TinyDataset(XrayDataset):
    """PNG radiograph stand-ins of a few shapes, optional rectangle masks, corrupt files."""

    name = "tiny"

    def __init__(self, root: Path, n: int = 6, masks: bool = False,
                 corrupt: tuple[int, ...] = ()) -> None:
        rng = np.random.default_rng(0)
        root.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            h, w = SHAPES[i % len(SHAPES)]
            ramp = np.linspace(0, 200, w)[None, :] + np.linspace(0, 40, h)[:, None]
            img = np.clip(ramp + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)
            img[h // 4: h // 2, w // 3: 2 * w // 3] = 250
            path = root / f"img{i}.png"
            if i in corrupt:
                path.write_bytes(b"\x89PNG\r\n\x1a\n truncated, not an image")
            else:
                cv2.imwrite(str(path), img)
            row = {"path": str(path), "patient_id": f"p{i // 2}", "study_id": f"s{i}",
                   "view": "PA", "frontal": True}
            if masks:
                mask = np.zeros((h, w), np.uint8)
                if i % 3:  # every third image has an empty mask
                    mask[h // 4: h // 2, w // 3: 2 * w // 3] = 255
                cv2.imwrite(str(root / f"mask{i}.png"), mask)
                row["mask_path"] = str(root / f"mask{i}.png") if i != 4 else ""
            rows.append(row)
        raw = rng.choice(np.array([1, 0, -1, np.nan], dtype=np.float32), size=(n, 2))
        self._setup(pd.DataFrame(rows), raw, ["A", "B"], None, SkipLog(), root)


@pytest.fixture()
def tiny(tmp_path: Path) -> TinyDataset:
    return TinyDataset(tmp_path / "src")


@pytest.fixture()
def tiny_masks(tmp_path: Path) -> TinyDataset:
    return TinyDataset(tmp_path / "src", masks=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_images_equal_preprocess_bit_for_bit(tiny, tmp_path):
    cache = build_cache(tiny, CFG, tmp_path / "c", workers=1, progress=False)
    assert cache.images.shape == (6, 32, 32) and cache.images.dtype == np.uint8
    assert cache.masks is None
    for i in range(len(tiny)):
        np.testing.assert_array_equal(cache.images[i], preprocess(tiny.image(i).pixels, CFG))
    assert not cache.images.flags.writeable
    assert len(np.unique(cache.images[0])) > 10


def test_masks_cached_with_their_geometry(tiny_masks, tmp_path):
    cache = build_cache(tiny_masks, CFG, tmp_path / "c", workers=1, progress=False)
    assert cache.masks is not None and cache.masks.shape == (6, 32, 32)
    for i in range(len(tiny_masks)):
        source = tiny_masks.mask(i)
        if source is None:
            assert cache.mask_known[i] == 0 and not cache.masks[i].any()
            continue
        image, mask = preprocess(tiny_masks.image(i).pixels, CFG, source)
        np.testing.assert_array_equal(cache.images[i], image)
        np.testing.assert_array_equal(cache.masks[i], (np.asarray(mask) > 0).astype(np.uint8))
        assert cache.mask_known[i] == 1
        if source.any():  # the mask covers the bright rectangle of the image
            inside = cache.images[i][cache.masks[i] == 1]
            outside = cache.images[i][cache.masks[i] == 0]
            assert inside.mean() > outside.mean() + 60
    assert list(cache.mask_known) == [1, 1, 1, 1, 0, 1]


def test_manifest_records_parameters_sources_and_checksums(tiny, tmp_path):
    cache = build_cache(tiny, PreprocessConfig(size=40, clahe=True), tmp_path / "c",
                        workers=1, progress=False)
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest == cache.manifest
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["cxrlab_version"] == __version__
    assert manifest["preprocess"] == json.loads(json.dumps(
        PreprocessConfig(size=40, clahe=True).to_dict()))
    assert manifest["dataset"]["name"] == "tiny" and manifest["dataset"]["n"] == 6
    assert manifest["dataset"]["pathologies"] == ["A", "B"]
    assert manifest["shape"] == [6, 40, 40] and manifest["skipped"] == []
    images = tmp_path / "c" / IMAGES
    assert manifest["files"][IMAGES] == {"bytes": 6 * 40 * 40}
    assert manifest["files"][DIGESTS]["blake2b"] == file_blake2b(tmp_path / "c" / DIGESTS)
    assert images.stat().st_size == 6 * 40 * 40
    sources = json.loads((tmp_path / "c" / SOURCES).read_text())
    assert sources["base"] == str(tmp_path / "src")  # relative paths: identity by content
    assert [s[0] for s in sources["records"]] == [Path(p).name for p in tiny.table["path"]]
    first = os.stat(tiny.table["path"][0])
    assert sources["records"][0][1:] == [first.st_size, first.st_mtime_ns]
    assert cache.cfg == PreprocessConfig(size=40, clahe=True)
    assert manifest["build"]["images_per_second"] > 0


def test_failed_build_leaves_no_output(tmp_path):
    bad = TinyDataset(tmp_path / "src", corrupt=(3,))
    with pytest.raises(ImageReadError, match="img3.png"):
        build_cache(bad, CFG, tmp_path / "c", workers=1, progress=False)
    assert not (tmp_path / "c").exists()
    assert leftovers(tmp_path) == []


def test_failed_parallel_build_leaves_no_output(tmp_path):
    bad = TinyDataset(tmp_path / "src", corrupt=(4,))
    with pytest.raises(ImageReadError, match="img4.png"):
        build_cache(bad, CFG, tmp_path / "c", workers=2, progress=False, chunk_size=2)
    assert not (tmp_path / "c").exists()
    assert leftovers(tmp_path) == []


def test_failed_rebuild_keeps_the_old_cache(tiny, tmp_path):
    build_cache(tiny, CFG, tmp_path / "c", workers=1, progress=False)
    before = (tmp_path / "c" / IMAGES).read_bytes()
    bad = TinyDataset(tmp_path / "src2", corrupt=(0,))
    with pytest.raises(ImageReadError):
        build_cache(bad, CFG, tmp_path / "c", workers=1, progress=False, overwrite=True)
    assert (tmp_path / "c" / IMAGES).read_bytes() == before
    ResolutionCache.open(tmp_path / "c", dataset=tiny, cfg=CFG)


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_mode_records_bad_images(tmp_path, workers):
    bad = TinyDataset(tmp_path / "src", corrupt=(1, 4))
    cache = build_cache(bad, CFG, tmp_path / "c", workers=workers, progress=False,
                        on_error="skip", chunk_size=2)
    assert [s["index"] for s in cache.skipped] == [1, 4]
    assert cache.skipped[0]["path"].endswith("img1.png")
    assert "ImageReadError" in cache.skipped[0]["problem"]
    assert not cache.images[1].any() and cache.images[0].any()
    assert list(cache.valid_indices) == [0, 2, 3, 5]
    reopened = ResolutionCache.open(tmp_path / "c", dataset=bad, cfg=CFG)
    assert reopened.skipped == cache.skipped


def test_existing_output_needs_overwrite(tiny, tmp_path):
    build_cache(tiny, CFG, tmp_path / "c", workers=1, progress=False)
    with pytest.raises(CacheError, match="overwrite"):
        build_cache(tiny, CFG, tmp_path / "c", workers=1, progress=False)
    cache = build_cache(tiny, PreprocessConfig(size=24), tmp_path / "c", workers=1,
                        progress=False, overwrite=True)
    assert cache.images.shape == (6, 24, 24)
    assert ResolutionCache.open(tmp_path / "c").size == 24
    assert leftovers(tmp_path) == []


def test_bad_arguments(tiny, tmp_path):
    with pytest.raises(ConfigError, match="on_error"):
        build_cache(tiny, CFG, tmp_path / "c", on_error="ignore")
    with pytest.raises(ConfigError, match="size"):
        build_cache(tiny, PreprocessConfig(size=8), tmp_path / "c")
    with pytest.raises(ConfigError, match="workers"):
        build_cache(tiny, CFG, tmp_path / "c", workers=0)
    with pytest.raises(CacheError, match="no images"):
        build_cache(tiny.subset([]), CFG, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_workers_give_identical_bytes(tiny_masks, tmp_path):
    one = build_cache(tiny_masks, CFG, tmp_path / "one", workers=1, progress=False)
    two = build_cache(tiny_masks, CFG, tmp_path / "two", workers=2, progress=False,
                      chunk_size=2)
    for name in (IMAGES, MASKS):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert one.manifest["files"] == two.manifest["files"]


def test_progress_callback_sees_every_image(tiny, tmp_path):
    seen: list[tuple[int, int]] = []
    build_cache(tiny, CFG, tmp_path / "c", workers=1, progress=lambda d, t: seen.append((d, t)),
                chunk_size=4)
    assert seen == [(0, 6), (4, 6), (6, 6)]


# ------------------------------------------------------------------ stale and corrupt


@pytest.fixture()
def built(tiny, tmp_path) -> Path:
    build_cache(tiny, CFG, tmp_path / "c", workers=1, progress=False)
    return tmp_path / "c"


def test_open_accepts_a_matching_cache(built, tiny):
    cache = ResolutionCache.open(built, dataset=tiny, cfg=CFG, verify=True)
    assert len(cache) == 6 and cache.size == 32


@pytest.mark.parametrize("cfg, what", [(PreprocessConfig(size=48), "size: cache 32"),
                                       (PreprocessConfig(size=32, clahe=True), "clahe")])
def test_other_parameters_are_stale(built, cfg, what):
    with pytest.raises(CacheError, match="stale") as info:
        ResolutionCache.open(built, cfg=cfg)
    assert what in str(info.value) and "--overwrite" in str(info.value)


def test_other_file_list_is_stale(built, tiny):
    with pytest.raises(CacheError, match="built from 6 images, the dataset has 5"):
        ResolutionCache.open(built, dataset=tiny.subset(range(5)))
    with pytest.raises(CacheError, match="same files in another order"):
        ResolutionCache.open(built, dataset=tiny.subset([1, 0, 2, 3, 4, 5]))


def test_touched_or_modified_source_is_stale(built, tiny):
    path = Path(tiny.table["path"][2])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(CacheError, match="1 modified .*: img2.png.*updates it"):
        ResolutionCache.open(built, dataset=tiny)
    ResolutionCache.open(built, dataset=tiny, check_sources=False)  # paths still match
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ResolutionCache.open(built, dataset=tiny)
    cv2.imwrite(str(path), np.zeros((8, 8), np.uint8))
    with pytest.raises(CacheError, match="img2.png"):
        ResolutionCache.open(built, dataset=tiny)


def test_truncated_or_missing_data_file_is_corrupt(built):
    data = built / IMAGES
    payload = data.read_bytes()
    data.write_bytes(payload[:-100])
    with pytest.raises(CacheError, match="corrupt.*truncated"):
        ResolutionCache.open(built)
    data.unlink()
    with pytest.raises(CacheError, match="missing"):
        ResolutionCache.open(built)


def test_flipped_byte_caught_by_verify(built):
    data = built / IMAGES
    payload = bytearray(data.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    data.write_bytes(bytes(payload))
    ResolutionCache.open(built)  # sizes still match: only the checksum can tell
    with pytest.raises(CacheError, match="checksum of 1 item.*items 3"):
        ResolutionCache.open(built, verify=True)


def test_bad_manifest_is_refused(built, tmp_path):
    manifest = json.loads((built / MANIFEST).read_text())
    (built / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CacheError, match="format version 99"):
        ResolutionCache.open(built)
    (built / MANIFEST).write_text("{not json")
    with pytest.raises(CacheError, match="unreadable manifest"):
        ResolutionCache.open(built)
    (built / MANIFEST).unlink()
    with pytest.raises(CacheError, match="not a finished cache"):
        ResolutionCache.open(built)
    with pytest.raises(CacheError, match="no resolution cache"):
        ResolutionCache.open(tmp_path / "nowhere")


def test_pickles_as_a_path_not_the_data(built):
    cache = ResolutionCache.open(built)
    blob = pickle.dumps(cache)
    assert len(blob) < (built / MANIFEST).stat().st_size + 1000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.images, cache.images)


def test_synthetic_chexpert_set(tmp_path):
    from cxrlab.data.datasets import load_dataset
    from cxrlab.data.synthetic_layouts import write_dataset

    root = write_dataset("chexpert", tmp_path / "phantoms", n=8, size=64, seed=0,
                         valid_fraction=0.0)
    dataset = load_dataset("chexpert", csv=root / "CheXpert-v1.0-small" / "train.csv")
    cfg = PreprocessConfig(size=48)
    one = build_cache(dataset, cfg, tmp_path / "one", workers=1, progress=False)
    two = build_cache(dataset, cfg, tmp_path / "two", workers=2, progress=False, chunk_size=1)
    assert len(one) == len(dataset) == 8 and one.masks is None
    assert (tmp_path / "one" / IMAGES).read_bytes() == (tmp_path / "two" / IMAGES).read_bytes()
    for i in range(len(dataset)):
        np.testing.assert_array_equal(one.images[i], preprocess(dataset.image(i).pixels, cfg))
    assert one.manifest["dataset"]["name"] == "chexpert"
    assert one.manifest["dataset"]["pathologies"] == list(dataset.pathologies)
    ResolutionCache.open(tmp_path / "two", dataset=dataset, cfg=cfg, verify=True)
