"""PositiveShareSampler: positives per batch, unknown rows never drawn, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cxrlab.data.samplers import PositiveShareSampler
from cxrlab.errors import ConfigError, LabelValueError


@pytest.fixture()
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    values = (rng.random(200) < 0.1).astype(float)   # about 10 % positives
    values[rng.random(200) < 0.15] = np.nan
    return values


def test_each_batch_holds_the_requested_positives(labels: np.ndarray) -> None:
    sampler = PositiveShareSampler(labels, pos_share=0.5, batch_size=8, generator=torch.Generator().manual_seed(0))
    order = np.array(list(sampler))
    assert len(order) == len(sampler) and len(order) % 8 == 0
    per_batch = (labels[order] == 1).reshape(-1, 8).sum(axis=1)
    assert np.all(per_batch == 4)
    assert not np.isnan(labels[order]).any()
    negatives = np.flatnonzero(labels == 0)
    assert set(order[labels[order] == 0]) == set(negatives)    # every negative seen this epoch
    assert len(order) == int(np.ceil(len(negatives) / 0.5 / 8) * 8)


def test_share_without_batch_size(labels: np.ndarray) -> None:
    sampler = PositiveShareSampler(labels, pos_share=0.3, num_samples=100, generator=torch.Generator().manual_seed(1))
    order = np.array(list(sampler))
    assert len(order) == 100 and (labels[order] == 1).sum() == 30


def test_dataloader_batches(labels: np.ndarray) -> None:
    dataset = TensorDataset(torch.as_tensor(labels, dtype=torch.float32))
    sampler = PositiveShareSampler(labels, pos_share=0.2, batch_size=10, generator=torch.Generator().manual_seed(2))
    counts = [int((batch[0] == 1).sum()) for batch in DataLoader(dataset, batch_size=10, sampler=sampler)]
    assert counts and all(c == 2 for c in counts)


def test_multilabel_class_index() -> None:
    labels = np.array([[1, 0], [0, 1], [0, 0], [1, np.nan], [0, 0], [0, 1]], dtype=float)
    sampler = PositiveShareSampler(labels, pos_share=0.5, class_index=1, num_samples=40,
                                   generator=torch.Generator().manual_seed(3))
    order = np.array(list(sampler))
    assert (labels[order, 1] == 1).sum() == 20 and 3 not in order
    with pytest.raises(ConfigError, match="name the class"):
        PositiveShareSampler(labels)
    with pytest.raises(ConfigError, match="outside"):
        PositiveShareSampler(labels, class_index=2)


def test_generator_makes_it_reproducible(labels: np.ndarray) -> None:
    def order(seed: int) -> list[int]:
        return list(PositiveShareSampler(labels, batch_size=8, generator=torch.Generator().manual_seed(seed)))

    assert order(5) == order(5)
    assert order(5) != order(6)
    sampler = PositiveShareSampler(labels, batch_size=8, generator=torch.Generator().manual_seed(5))
    assert list(sampler) != list(sampler)   # a new shuffle each epoch


def test_invalid_inputs() -> None:
    with pytest.raises(LabelValueError, match="no positive"):
        PositiveShareSampler(np.array([0.0, 0.0, np.nan]))
    with pytest.raises(ConfigError, match="pos_share"):
        PositiveShareSampler(np.array([0.0, 1.0]), pos_share=1.5)
    only_positives = PositiveShareSampler(np.array([1.0, 1.0, 0.0]), pos_share=1.0)
    assert sorted(set(only_positives)) == [0, 1]


# ------------------------------------------------------------- quasi-random block order


@pytest.mark.parametrize("n, block, window", [(1000, 37, 4), (64, 8, 1), (10, 64, 4), (0, 5, 2)])
def test_block_order_visits_every_item_once(n, block, window):
    from cxrlab.data.samplers import BlockShuffleSampler

    sampler = BlockShuffleSampler(n, block, seed=5, window=window)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == n
        assert sorted(order) == list(range(n))


def test_block_order_is_fixed_by_seed_and_epoch_and_stays_local():
    from cxrlab.data.samplers import BlockShuffleSampler

    n, block, window = 2000, 50, 4
    one, two = BlockShuffleSampler(n, block, seed=7), BlockShuffleSampler(n, block, seed=7)
    one.set_epoch(3)
    two.set_epoch(3)
    assert list(one) == list(two)  # what a resumed run gets after set_epoch
    two.set_epoch(4)
    assert list(one) != list(two)
    assert list(BlockShuffleSampler(n, block, seed=8)) != list(BlockShuffleSampler(n, block, seed=7))
    order = np.asarray(list(one))
    span = block * window
    for start in range(0, n, span):  # each window reads `window` blocks, nothing else
        blocks = np.unique(order[start:start + span] // block)
        assert len(blocks) == window
    assert not np.array_equal(order, np.arange(n))  # shuffled across blocks ...
    assert np.abs(np.diff(order[:span])).max() > block  # ... and across a window's blocks
    assert list(BlockShuffleSampler(n, block, shuffle=False)) == list(range(n))


def test_block_sampler_arguments_and_block_size():
    from cxrlab.data.samplers import BlockShuffleSampler, block_items

    assert block_items(320 * 320) == 81 and block_items(480 * 480) == 36
    assert block_items(10 << 20) == 1
    with pytest.raises(ConfigError):
        BlockShuffleSampler(10, 0)
    with pytest.raises(ConfigError):
        BlockShuffleSampler(10, 4, window=0)
