"""ImageDataset: cached and uncached items agree, masks keep their geometry, augmentation."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.data.cache import build_cache
from cxrlab.data.datasets.base import XrayDataset
from cxrlab.data.torch import ImageDataset, collate_items, default_train_augment, normalize_batch
from cxrlab.data.transforms import PreprocessConfig, preprocess, to_tensor
from cxrlab.errors import CacheError, ConfigError, SkipLog

CFG = PreprocessConfig(size=32)


class BoxDataset(XrayDataset):
    """Non-square PNGs with a bright box in the upper left quadrant and its mask."""

    name = "boxes"

    def __init__(self, root: Path, n: int = 5, corrupt: tuple[int, ...] = ()) -> None:
        rng = np.random.default_rng(1)
        root.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            h, w = (36, 60) if i % 2 else (60, 36)
            img = np.clip(rng.normal(60, 10, (h, w)), 0, 255).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            mask[2: h // 3, 3: w // 3] = 255
            img[mask > 0] = 230
            cv2.imwrite(str(root / f"img{i}.png"), img)
            if i in corrupt:
                (root / f"img{i}.png").write_bytes(b"garbage")
            cv2.imwrite(str(root / f"mask{i}.png"), mask)
            rows.append({"path": str(root / f"img{i}.png"), "patient_id": f"p{i}",
                         "study_id": f"s{i}", "view": "PA", "frontal": True,
                         "mask_path": str(root / f"mask{i}.png") if i != 3 else ""})
        raw = np.array([[1, np.nan, -1], [0, 1, np.nan]] * n, dtype=np.float32)[:n]
        self._setup(pd.DataFrame(rows), raw, ["A", "B", "C"], None, SkipLog(), root)


@pytest.fixture()
def boxes(tmp_path: Path) -> BoxDataset:
    return BoxDataset(tmp_path / "src")


@pytest.fixture()
def cache(boxes, tmp_path):
    return build_cache(boxes, CFG, tmp_path / "cache", workers=1, progress=False)


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
        else:
            assert a[key] == b[key]


@pytest.mark.parametrize("channels, normalization", [(1, "imagenet"), (3, "xrv"),
                                                     (1, "unit")])
def test_cached_items_equal_uncached(boxes, cache, channels, normalization):
    plain = ImageDataset(boxes, CFG, channels=channels, normalization=normalization)
    cached = ImageDataset(boxes, CFG, channels=channels, normalization=normalization,
                          cache=cache)
    assert len(plain) == len(cached) == 5
    for i in range(5):
        assert_items_equal(plain[i], cached[i])
    item = cached[1]
    assert item["image"].shape == (channels, 32, 32) and item["image"].dtype == torch.float32
    expected = to_tensor(preprocess(boxes.image(1).pixels, CFG), channels=channels,
                         normalization=normalization)
    torch.testing.assert_close(item["image"], expected, rtol=0, atol=0)
    assert item["index"] == 1
    assert torch.isnan(item["labels"][2]) and item["labels"][1] == 1  # NaN kept


def test_masks_keep_their_geometry(boxes, cache):
    plain = ImageDataset(boxes, CFG, normalization="unit", with_masks=True)
    cached = ImageDataset(boxes, CFG, normalization="unit", with_masks=True, cache=cache)
    for i in range(5):
        assert_items_equal(plain[i], cached[i])
    for i in (0, 1):
        item = cached[i]
        mask, image = item["mask"], item["image"]
        assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}
        assert item["mask_known"] is True
        # the box is bright in the image exactly where the mask is
        assert image[mask > 0].min() > 0.8 and image[mask == 0].mean() < 0.5
        rows, cols = torch.nonzero(mask[0], as_tuple=True)
        assert rows.max() < 16 and cols.max() < 16  # upper left, after padding to square
    unknown = cached[3]
    assert unknown["mask_known"] is False and not unknown["mask"].any()


def test_indices_select_rows_and_skip_unreadable(tmp_path):
    bad = BoxDataset(tmp_path / "src", corrupt=(2,))
    cache = build_cache(bad, CFG, tmp_path / "cache", workers=1, progress=False,
                        on_error="skip")
    ds = ImageDataset(bad, CFG, cache=cache, indices=[4, 2, 0])
    assert len(ds) == 2 and [ds[k]["index"] for k in range(2)] == [4, 0]
    assert len(ImageDataset(bad, CFG, cache=cache)) == 4
    with pytest.raises(ConfigError, match="out of range"):
        ImageDataset(bad, CFG, indices=[5])


def test_dataloader_batches(boxes, cache):
    ds = ImageDataset(boxes, CFG, channels=3, cache=cache, with_masks=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["labels"].shape == (4, 3)
    assert batch["mask"].shape == (4, 1, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3]


def test_cache_must_match(boxes, cache, tmp_path):
    with pytest.raises(CacheError, match="size"):
        ImageDataset(boxes, PreprocessConfig(size=40), cache=cache)
    with pytest.raises(CacheError, match="images"):
        ImageDataset(boxes.subset([0, 1]), CFG, cache=cache)
    opened = ImageDataset(boxes, CFG, cache=tmp_path / "cache")  # a folder is opened
    assert opened.cache.size == 32


def test_bad_arguments(tmp_path):
    plain = _no_mask_dataset(tmp_path)
    with pytest.raises(ConfigError, match="no mask source"):
        ImageDataset(plain, CFG, with_masks=True)
    with pytest.raises(ConfigError, match="channels"):
        ImageDataset(plain, CFG, channels=2)


def _no_mask_dataset(tmp_path: Path) -> XrayDataset:
    data = BoxDataset(tmp_path / "src", n=2)
    data.table = data.table.drop(columns=["mask_path"])
    return data


def test_augment_moves_image_and_mask_together(boxes, cache):
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    plain = ImageDataset(boxes, CFG, normalization="unit", with_masks=True, cache=cache)
    flipped = ImageDataset(boxes, CFG, normalization="unit", with_masks=True, cache=cache,
                           augment=flip)
    a, b = plain[0], flipped[0]
    torch.testing.assert_close(b["image"], a["image"].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(b["mask"], a["mask"].flip(-1), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_default_train_augment(boxes, cache, kind):
    augment = default_train_augment(kind, seed=3)
    names = [type(t).__name__ for t in augment.transforms]
    assert ("HorizontalFlip" in names) == (kind == "segmentation")
    ds = ImageDataset(boxes, CFG, normalization="unit", with_masks=True, cache=cache,
                      augment=augment)
    plain = ImageDataset(boxes, CFG, normalization="unit", with_masks=True, cache=cache)
    changed = 0
    for i in (0, 1, 2):
        item = ds[i]
        assert item["image"].shape == (1, 32, 32) and torch.isfinite(item["image"]).all()
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}  # nearest: stays binary
        changed += not torch.equal(item["image"], plain[i]["image"])
        if item["mask"].sum() > 4:  # the box moved with its mask
            assert item["image"][item["mask"] > 0].mean() > item["image"][item["mask"] == 0].mean()
    assert changed >= 1
    with pytest.raises(ConfigError, match="kind"):
        default_train_augment("detection")


class _SeedStamp:
    """An augment that writes its current seed into the image (to see reseeding)."""

    def __init__(self) -> None:
        self.seed = 0

    def set_random_seed(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict:
        return {"image": np.full_like(image, self.seed % 251)}


def test_each_loader_worker_reseeds_the_augment(boxes, cache):
    ds = ImageDataset(boxes, CFG, normalization="unit", cache=cache, augment=_SeedStamp())
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    stamps = [round(float(batch["image"][0, 0, 0, 0]) * 255) for batch in loader]
    # items alternate between the two workers; each stamps its own (different) seed
    assert stamps[0] != stamps[1] and stamps[0] == stamps[2] and stamps[1] == stamps[3]
    # in the main process the augment follows torch's seed (set per epoch by the engine)
    for seed in (7, 8, 7):
        torch.manual_seed(seed)
        assert round(float(ds[0]["image"].max()) * 255) == seed


# ------------------------------------------------------------ batched reads (__getitems__)

def _collated_per_item(ds: ImageDataset, ks: list[int]) -> dict:
    return torch.utils.data.default_collate([ds[k] for k in ks])


@pytest.mark.parametrize("channels, normalization", [(3, "imagenet"), (1, "imagenet"),
                                                     (3, "xrv"), (1, "unit")])
def test_batched_items_equal_per_item_bit_for_bit(boxes, cache, channels, normalization):
    ds = ImageDataset(boxes, CFG, channels=channels, normalization=normalization, cache=cache,
                      with_masks=True, read_block=2, indices=[1, 0, 4, 2, 3])
    ks = [3, 0, 4, 1]  # rows 2, 1, 3, 0: out of file order; the batch keeps the sampler's
    expected = _collated_per_item(ds, ks)
    items = ds.__getitems__(ks)
    for got in (collate_items(items), torch.utils.data.default_collate(items)):
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key].dtype == expected[key].dtype, key
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, equal_nan=True)
    assert got["index"].tolist() == [2, 1, 3, 0]
    assert got["mask_known"].tolist() == [True, True, False, True]  # row 3 has no mask


def test_uint8_batches_normalized_on_device_equal_float_batches(boxes, cache):
    float_ds = ImageDataset(boxes, CFG, channels=3, cache=cache)
    uint8_ds = ImageDataset(boxes, CFG, channels=3, cache=cache, normalize=False)
    batch = collate_items(uint8_ds.__getitems__([2, 0, 1]))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 1, 32, 32)
    assert uint8_ds[2]["image"].dtype == torch.uint8  # the item path agrees
    torch.testing.assert_close(uint8_ds.normalize_on_device(batch["image"]),
                               _collated_per_item(float_ds, [2, 0, 1])["image"], rtol=0, atol=0)
    same = float_ds.normalize_on_device(batch["image"])  # already normalized: unchanged
    assert same is batch["image"]
    with pytest.raises(ConfigError, match="uint8"):
        normalize_batch(batch["image"].float())


@pytest.mark.parametrize("channels, normalization", [(1, n) for n in ("imagenet", "xrv", "unit")]
                         + [(3, "imagenet")])
def test_normalize_batch_matches_to_tensor_on_every_gray_level(channels, normalization):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = to_tensor(levels, channels=channels, normalization=normalization)
    got = normalize_batch(torch.from_numpy(levels)[None], channels, normalization)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=0)


def test_batches_through_workers_and_augment_per_item(boxes, cache):
    ds = ImageDataset(boxes, CFG, channels=3, cache=cache, with_masks=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1,
                                         collate_fn=collate_items)
    batches = list(loader)  # shared-memory batches from a worker reach the main process
    expected = _collated_per_item(ds, [0, 1, 2])
    torch.testing.assert_close(batches[0]["image"], expected["image"], rtol=0, atol=0)
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2], [3, 4]]



def test_augmented_batches_equal_augmented_items(boxes, cache):
    """Augmentation stays per item, in the sampler's order, through the same albumentations
    draws: a batch equals the items of a twin dataset with an identically seeded augment."""
    twins = [ImageDataset(boxes, CFG, channels=3, cache=cache, with_masks=True,
                          augment=default_train_augment("segmentation", seed=3))
             for _ in range(2)]
    torch.manual_seed(11)
    expected = _collated_per_item(twins[0], [4, 1, 2, 0])
    got = collate_items(twins[1].__getitems__([4, 1, 2, 0]))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, equal_nan=True)
    plain = _collated_per_item(ImageDataset(boxes, CFG, channels=3, cache=cache), [4, 1, 2, 0])
    assert not torch.equal(got["image"], plain["image"])  # the augment did act
