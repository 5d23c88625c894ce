"""DDP tests of the metrics: 2 CPU processes with gloo must agree with one process fed all data."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _metric_helpers import (
    NUM_CLASSES,
    assert_same_result,
    correlated_logits,
    xor_features,
)

from pidsched import ClusteredFastPID, FastPID
from pidsched.functional import bootstrap_weights, joint_from_logits

WORLD_SIZE = 2
# Uneven shards (rank 0 first) exercise torchmetrics' padded gather of "cat" states.
SHARD_SIZES = (130, 90)
CLUSTERED = {"num_classes": 2, "num_clusters": 6, "num_components": 3, "seed": 1}
NUM_BOOTSTRAP = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shard(tensors, rank):
    start = sum(SHARD_SIZES[:rank])
    return [tensor[start : start + SHARD_SIZES[rank]] for tensor in tensors]


def _update_in_two_batches(metric, inputs):
    half = len(inputs[-1]) // 2
    metric.update(*[tensor[:half] for tensor in inputs])
    metric.update(*[tensor[half:] for tensor in inputs])


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        total = sum(SHARD_SIZES)
        results = {}
        for discretization in ("soft", "hard"):
            metric = FastPID(NUM_CLASSES, discretization=discretization)
            _update_in_two_batches(metric, _shard(correlated_logits(total), rank))
            results[discretization] = metric.compute()
            results[f"{discretization}_local_joint"] = metric.joint.clone()
        clustered = ClusteredFastPID(**CLUSTERED)
        _update_in_two_batches(clustered, _shard(xor_features(total), rank))
        results["clustered"] = clustered.compute()
        results.update(_bootstrap_results(rank, total))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _bootstrap_results(rank: int, total: int) -> dict:
    """The bootstrap metrics' local and synced states and results on one rank."""
    results = {}
    metric = FastPID(NUM_CLASSES, num_bootstrap=NUM_BOOTSTRAP, seed=5)
    _update_in_two_batches(metric, _shard(correlated_logits(total), rank))
    results["boot_local"] = metric.replicate_joint.clone()
    results["boot"] = metric.compute()
    metric.sync()
    results["boot_synced"] = metric.replicate_joint.clone()
    metric.unsync()
    # Every rank fed the same samples: only the ranks' draws tell their replicates apart.
    same_data = FastPID(NUM_CLASSES, num_bootstrap=NUM_BOOTSTRAP, seed=5)
    same_data.update(*correlated_logits(60, seed=9))
    results["boot_same_data"] = same_data.replicate_joint.clone()
    clustered = ClusteredFastPID(**CLUSTERED, num_bootstrap=NUM_BOOTSTRAP)
    _update_in_two_batches(clustered, _shard(xor_features(total), rank))
    results["clustered_boot"] = clustered.compute()
    return results


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [
        torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)
    ]


@pytest.mark.ddp
@pytest.mark.parametrize("discretization", ["soft", "hard"])
def test_fastpid_synced_compute_equals_single_process(ddp_results, discretization):
    single = FastPID(NUM_CLASSES, discretization=discretization)
    single.update(*correlated_logits(sum(SHARD_SIZES)))
    expected = single.compute()
    for rank, results in enumerate(ddp_results):
        assert_same_result(results[discretization], expected, atol=1e-9)
        # compute() syncs a copy: each rank keeps accumulating only its own shard.
        assert results[f"{discretization}_local_joint"].sum().item() == pytest.approx(
            SHARD_SIZES[rank]
        )


@pytest.mark.ddp
def test_clustered_fastpid_synced_compute_equals_single_process(ddp_results):
    single = ClusteredFastPID(**CLUSTERED)
    single.update(*xor_features(sum(SHARD_SIZES)))  # rank 0's samples first, as gathered
    expected = single.compute()
    assert expected.synergy > 0.5  # the clusters see the XOR structure
    for results in ddp_results:
        assert_same_result(results["clustered"], expected, atol=1e-9)


@pytest.mark.ddp
def test_fastpid_bootstrap_states_sum_over_ranks_with_independent_draws(ddp_results):
    local = [results["boot_local"] for results in ddp_results]
    for results in ddp_results:
        torch.testing.assert_close(results["boot_synced"], local[0] + local[1], rtol=0, atol=1e-12)
        for name in ("synergy", "unique_1", "redundancy"):
            torch.testing.assert_close(
                getattr(results["boot"].replicates, name),
                getattr(ddp_results[0]["boot"].replicates, name),
                rtol=0,
                atol=1e-9,
            )
    # Rank r drew its weights from stream (seed, r, draw): the same data, different replicates,
    # each reproducible from the seed alone.
    same = [results["boot_same_data"] for results in ddp_results]
    assert not torch.allclose(same[0], same[1])
    inputs = correlated_logits(60, seed=9)
    for rank, replicate_joint in enumerate(same):
        weights = bootstrap_weights(NUM_BOOTSTRAP, 60, 5, rank, 0)
        expected = joint_from_logits(*inputs, weights=weights)
        torch.testing.assert_close(replicate_joint, expected, rtol=0, atol=1e-12)


@pytest.mark.ddp
def test_clustered_bootstrap_is_the_same_on_every_rank_and_in_one_process(ddp_results):
    single = ClusteredFastPID(**CLUSTERED, num_bootstrap=NUM_BOOTSTRAP)
    single.update(*xor_features(sum(SHARD_SIZES)))  # the gathered order: rank 0's samples first
    expected = single.compute()
    for results in ddp_results:
        assert_same_result(results["clustered_boot"], expected, atol=1e-9)
        assert_same_result(results["clustered_boot"].replicates, expected.replicates, atol=1e-9)
