"""Validation accumulators and rank sharding: de-duplication, the gather over a real 2-process
gloo group, and the samplers' shards covering exactly one process's epoch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.data.samplers import EpochShuffleSampler, PositiveShareSampler, ShardedSampler, shard_order
from cxrlab.engine.metrics import Cumulative, first_per_index, merge
from cxrlab.errors import ConfigError


def test_cumulative_keeps_each_row_once_sorted_by_row():
    acc = Cumulative()
    acc.append(torch.tensor([5, 2]), prob=torch.tensor([[0.5, 0.1], [0.2, 0.9]]), loss=torch.tensor([1.0, 2.0]))
    acc.append(np.array([0, 5]), prob=np.array([[0.3, 0.3], [0.5, 0.1]]), loss=np.array([3.0, 1.0]))
    assert len(acc) == 4
    out = acc.aggregate()
    assert out["index"].tolist() == [0, 2, 5]
    np.testing.assert_allclose(out["prob"], [[0.3, 0.3], [0.2, 0.9], [0.5, 0.1]], rtol=1e-6)
    assert out["loss"].tolist() == [3.0, 2.0, 1.0]
    acc.reset()
    assert len(acc) == 0 and acc.aggregate()["index"].size == 0


def test_cumulative_rejects_mismatched_values():
    acc = Cumulative()
    acc.append(torch.tensor([0, 1]), prob=torch.tensor([0.1, 0.2]))
    with pytest.raises(ConfigError, match="differ"):
        acc.append(torch.tensor([2]), score=torch.tensor([0.3]))
    with pytest.raises(ConfigError, match="items"):
        acc.append(torch.tensor([2, 3]), prob=torch.tensor([0.3]))


def test_first_per_index_and_merge_of_rank_buffers():
    assert first_per_index(np.array([3, 3, 1, 0, 1])).tolist() == [3, 2, 0]
    parts = [{"index": np.array([0, 2]), "p": np.array([0.1, 0.3])},
             {"index": np.zeros(0, np.int64), "p": np.zeros(0)},          # a rank with nothing
             {"index": np.array([1, 0]), "p": np.array([0.2, 0.1])}]
    merged = merge(parts)
    assert merged["index"].tolist() == [0, 2, 1, 0] and merged["p"].tolist() == [0.1, 0.3, 0.2, 0.1]


@pytest.mark.parametrize("n, world, block", [(10, 2, 1), (11, 3, 1), (24, 2, 8), (20, 3, 4), (1, 2, 1)])
def test_shards_cover_one_epoch_with_equal_lengths(n, world, block):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
    shards = [shard_order(order, world, rank, block) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1                      # lockstep
    assert set().union(*map(set, shards)) == set(order)             # every item, nothing else
    assert sum(map(len, shards)) - n < world * block                # padding below one round of blocks
    # whole blocks of the shared order stay together, in order
    for rank, shard in enumerate(shards):
        chunks = [shard[i:i + block] for i in range(0, len(shard), block)]
        assert all(chunk in [order[j:j + block] for j in range(0, n, block)] for chunk in chunks)


def test_sharded_samplers_follow_the_epoch_and_keep_positive_shares():
    plain = EpochShuffleSampler(9, seed=4)
    sharded = ShardedSampler(EpochShuffleSampler(9, seed=4))
    sharded.set_epoch(3)
    plain.set_epoch(3)
    assert list(sharded) == list(plain) and len(sharded) == 9        # one process: unchanged
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, np.nan, 0])
    for rank in (0, 1):
        sampler = ShardedSampler(PositiveShareSampler(labels, 0.25, batch_size=4,
                                                      generator=torch.Generator().manual_seed(0)),
                                 block=4, num_replicas=2, rank=rank)
        order = list(sampler)
        assert len(order) == len(sampler) and len(order) % 4 == 0
        assert all(sum(labels[i] == 1 for i in order[b:b + 4]) == 1 for b in range(0, len(order), 4))
        assert 10 not in order                                       # unknown labels never drawn


_GATHER = textwrap.dedent("""
    import json, sys
    import numpy as np, torch, torch.distributed as dist
    from cxrlab.data.samplers import EpochShuffleSampler, ShardedSampler
    from cxrlab.engine.metrics import Cumulative

    rank, path = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method="file://" + path + ".rendezvous", rank=rank, world_size=2)
    values = np.arange(11, dtype=np.float64) ** 2                     # value of dataset row i
    acc = Cumulative()
    order = list(ShardedSampler(EpochShuffleSampler(11, seed=1, shuffle=False)))
    for start in range(0, len(order), 4):                             # batches of 4 on this rank
        rows = torch.tensor(order[start:start + 4])
        acc.append(rows, value=torch.as_tensor(values[rows.numpy()]))
    out = acc.aggregate()
    if rank == 0:
        json.dump({"local": len(acc), "index": out["index"].tolist(), "value": out["value"].tolist()},
                  open(path, "w"))
    dist.destroy_process_group()
""")


def test_aggregate_gathers_a_two_process_gloo_group(tmp_path, cli_env):
    script = tmp_path / "gather.py"
    script.write_text(_GATHER)
    result = tmp_path / "result.json"
    workers = [subprocess.Popen([sys.executable, str(script), str(rank), str(result)], env=cli_env,
                                stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for worker in workers:
        _, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err[-3000:]
    got = json.loads(Path(result).read_text())
    assert got["local"] == 6                                          # 11 rows -> 6 per rank, 1 repeat
    assert got["index"] == list(range(11))
    assert got["value"] == [float(i * i) for i in range(11)]
