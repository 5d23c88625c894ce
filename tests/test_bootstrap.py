"""Tests of the streaming Poisson bootstrap: weighted joints, replicate states, intervals."""

import math

import numpy as np
import pytest
import torch
from _metric_helpers import NUM_CLASSES, assert_same_result, correlated_logits, xor_features
from torch import Tensor

import pidsched.metrics.fastpid as fastpid_module
from pidsched import ClusteredFastPID, FastPID
from pidsched.functional import (
    PIDResult,
    bootstrap_interval,
    bootstrap_weights,
    joint_from_features,
    joint_from_logits,
    pid,
)
from pidsched.functional.bootstrap import INFLATION, INFORMATION_FIELDS

CLUSTERED = {"num_classes": 2, "num_clusters": 6, "num_components": 3, "seed": 1}


def _repeated_samples_joint(logits_1, logits_2, target, counts, discretization):
    """Reference: the unweighted joint of each sample repeated ``counts[n]`` times."""
    index = torch.repeat_interleave(torch.arange(len(target)), counts.long())
    return joint_from_logits(
        logits_1[index],
        logits_2[index],
        target[index],
        num_classes=NUM_CLASSES,
        discretization=discretization,
    )


# ---------------------------------------------------------------------------------------------
# Weighted joints and weights
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("discretization", ["soft", "hard"])
def test_integer_weights_count_samples_that_many_times(discretization):
    inputs = correlated_logits(60, seed=1)
    weights = bootstrap_weights(3, 60, 0, 0)
    joints = joint_from_logits(*inputs, discretization=discretization, weights=weights)
    assert joints.shape == (3, NUM_CLASSES, NUM_CLASSES, NUM_CLASSES)
    for row, counts in zip(joints, weights, strict=True):
        expected = _repeated_samples_joint(*inputs, counts, discretization)
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-12)
    single = joint_from_logits(*inputs, discretization=discretization, weights=weights[1])
    torch.testing.assert_close(single, joints[1], rtol=0, atol=1e-12)


def test_fractional_weights_match_an_einsum_reference():
    logits_1, logits_2, target = correlated_logits(50, seed=2)
    target[target == 2] = 3  # a label without samples
    weights = torch.rand(2, 50, dtype=torch.float64)
    expected = torch.einsum(
        "bn,ni,nj,ny->bijy",
        weights,
        logits_1.double().softmax(1),
        logits_2.double().softmax(1),
        torch.nn.functional.one_hot(target, NUM_CLASSES).double(),
    )
    actual = joint_from_logits(logits_1, logits_2, target, weights=weights)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (torch.ones(9), r"`weights` shaped \(N,\) or \(B, N\) with N=10"),
        (torch.ones(2, 3, 10), r"`weights` shaped \(N,\) or \(B, N\)"),
        (-torch.ones(10), "`weights` to be finite and non-negative"),
        (torch.full((10,), math.nan), "`weights` to be finite and non-negative"),
        (torch.ones(10, dtype=torch.bool), "`weights` to be a real tensor"),
    ],
)
def test_joint_from_logits_rejects_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        joint_from_logits(*correlated_logits(10), weights=weights)


def test_joint_from_features_weights_reuse_one_clustering():
    features_1, features_2, target = xor_features(120, seed=3)
    weights = bootstrap_weights(2, 120, 0, 0)
    weighted = joint_from_features(features_1, features_2, target, 2, 6, 3, 1, weights=weights)
    unweighted = joint_from_features(features_1, features_2, target, 2, 6, 3, 1)
    # Same clusters: resampling the (cluster, cluster, label) triples of the unweighted joint.
    assert weighted.shape == (2, *unweighted.shape)
    torch.testing.assert_close(weighted.sum((1, 2, 3)), weights.sum(1), rtol=0, atol=1e-9)
    support = unweighted > 0
    assert not bool((weighted[:, ~support] > 0).any())


def test_bootstrap_weights_are_reproducible_poisson_draws():
    first = bootstrap_weights(200, 500, 7, 0, 3)
    assert torch.equal(first, bootstrap_weights(200, 500, 7, 0, 3))
    assert not torch.equal(first, bootstrap_weights(200, 500, 7, 1, 3))  # another rank
    assert not torch.equal(first, bootstrap_weights(200, 500, 7, 0, 4))  # the next draw
    assert not torch.equal(first, bootstrap_weights(200, 500, 8, 0, 3))  # another seed
    assert first.dtype == torch.float64 and bool((first == first.round()).all())
    assert first.mean().item() == pytest.approx(1.0, abs=0.01)
    assert first.var().item() == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ((2, 10, 1.5), "`seed`"),  # truncated to 1: the same draws as seed 1
        ((-1, 10, 0), "`num_bootstrap`"),  # a raw torch error
        ((2, 10, 0, 0, 2.0), r"`stream\[1\]`"),
    ],
)
def test_bootstrap_weights_reject_what_is_not_a_non_negative_integer(arguments, named):
    with pytest.raises(ValueError, match=named):
        bootstrap_weights(*arguments)


# ---------------------------------------------------------------------------------------------
# The interval
# ---------------------------------------------------------------------------------------------


def _result(values: dict[str, Tensor]) -> PIDResult:
    like = next(iter(values.values()))
    return PIDResult(**values, gap=torch.zeros_like(like), iterations=1)


def test_interval_is_the_widened_basic_interval_clamped_at_zero():
    generator = torch.Generator().manual_seed(0)
    replicates = _result(
        {
            name: 0.05 * torch.rand(101, generator=generator, dtype=torch.float64) + 0.01 * i
            for i, name in enumerate(INFORMATION_FIELDS)
        }
    )
    estimate = _result(
        {name: torch.tensor(0.02 + 0.01 * i).double() for i, name in enumerate(INFORMATION_FIELDS)}
    )
    low, high = bootstrap_interval(estimate, replicates, level=0.8)
    for name in INFORMATION_FIELDS:
        theta = getattr(estimate, name).item()
        q_lo, q_hi = np.quantile(getattr(replicates, name).numpy(), [0.1, 0.9])
        expected_low = max(0.0, theta - INFLATION * (q_hi - theta))
        expected_high = max(0.0, theta - INFLATION * (q_lo - theta))
        assert getattr(low, name).item() == pytest.approx(expected_low, abs=1e-15)
        assert getattr(high, name).item() == pytest.approx(expected_high, abs=1e-15)
    assert INFLATION == 1.5  # the calibration docs/method.md measures
    assert low.unique_1.item() == 0.0  # 0.02 - 1.5 (q_hi(U(0, 0.05)) - 0.02) < 0: clamped
    assert low.synergy.item() > 0.0


def test_interval_ignores_replicates_without_samples():
    metric = FastPID(NUM_CLASSES, num_bootstrap=40)
    metric.update(*correlated_logits(2, seed=4))  # P(no sample drawn) = exp(-2) per replicate
    result = metric.compute()
    empty = torch.isnan(result.replicates.synergy)
    assert 0 < int(empty.sum()) < 40
    low, high = result.interval()
    assert math.isfinite(low.synergy.item()) and math.isfinite(high.synergy.item())


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1, True, "0.9"])
def test_interval_rejects_a_level_outside_zero_one(level):
    metric = FastPID(NUM_CLASSES, num_bootstrap=4)
    metric.update(*correlated_logits(50))
    with pytest.raises(ValueError, match="`level`"):
        metric.compute().interval(level)


def test_interval_needs_replicates():
    metric = FastPID(NUM_CLASSES)
    metric.update(*correlated_logits(50))
    result = metric.compute()
    assert result.replicates is None
    with pytest.raises(ValueError, match=r"`replicates`.*num_bootstrap"):
        result.interval()
    with pytest.raises(ValueError, match="`replicates`"):
        bootstrap_interval(result, None)
    with pytest.raises(ValueError, match=r"`replicates` to have batch shape \(B, \*\(\)\)"):
        bootstrap_interval(result, result)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_bootstrap": -1}, "`num_bootstrap`"),
        ({"num_bootstrap": 1.5}, "`num_bootstrap`"),
        ({"num_bootstrap": "8"}, "`num_bootstrap`"),
        ({"num_bootstrap": True}, "`num_bootstrap`"),
        # One replicate gives no interval (and compute() would squeeze its batch dim away).
        ({"num_bootstrap": 1}, "`num_bootstrap` to be 0 .* or at least 2"),
        ({"seed": -1}, "`seed`"),
    ],
)
@pytest.mark.parametrize("metric_class", [FastPID, ClusteredFastPID])
def test_metrics_reject_bad_bootstrap_arguments(metric_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metric_class(num_classes=2, **kwargs)


def test_as_dict_of_a_bootstrapped_result_skips_the_replicates():
    metric = FastPID(NUM_CLASSES, num_bootstrap=3)
    metric.update(*correlated_logits(60))
    values = metric.compute().as_dict()
    assert "replicates" not in values
    assert set(values) == {*INFORMATION_FIELDS, "gap", "iterations"}


# ---------------------------------------------------------------------------------------------
# FastPID replicate states
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("discretization", ["soft", "hard"])
def test_replicate_states_equal_explicitly_weighted_joints(discretization):
    batches = [correlated_logits(70, seed=5), correlated_logits(30, seed=6)]
    metric = FastPID(NUM_CLASSES, discretization=discretization, num_bootstrap=16, seed=3)
    expected = torch.zeros(16, NUM_CLASSES, NUM_CLASSES, NUM_CLASSES, dtype=torch.float64)
    for draw, batch in enumerate(batches):
        metric.update(*batch)
        # Single process: rank 0; one draw per update.
        weights = bootstrap_weights(16, len(batch[2]), 3, 0, draw)
        expected += joint_from_logits(*batch, discretization=discretization, weights=weights)
    torch.testing.assert_close(metric.replicate_joint, expected, rtol=0, atol=1e-12)
    assert metric.bootstrap_state() == {"seed": 3, "draws": 2}

    result = metric.compute()
    assert_same_result(result, pid(metric.joint), atol=1e-6)
    solved = pid(expected)
    assert result.replicates.synergy.shape == (16,)
    for name in INFORMATION_FIELDS:
        torch.testing.assert_close(
            getattr(result.replicates, name), getattr(solved, name), rtol=0, atol=1e-6
        )


def test_forward_draws_once_per_batch_and_accumulates_replicates():
    metric = FastPID(NUM_CLASSES, num_bootstrap=5)
    first, second = correlated_logits(50, seed=16), correlated_logits(40, seed=17)
    batch_value = metric(*first)
    metric(*second)
    assert batch_value.replicates.synergy.shape == (5,)
    expected = joint_from_logits(*first, weights=bootstrap_weights(5, 50, 0, 0, 0))
    expected += joint_from_logits(*second, weights=bootstrap_weights(5, 40, 0, 0, 1))
    torch.testing.assert_close(metric.replicate_joint, expected, rtol=0, atol=1e-12)


def test_no_bootstrap_is_todays_metric():
    inputs = correlated_logits(150, seed=7)
    plain, boot = FastPID(NUM_CLASSES), FastPID(NUM_CLASSES, num_bootstrap=8)
    plain.update(*inputs)
    boot.update(*inputs)
    assert set(plain._defaults) == {"joint"}
    assert set(boot._defaults) == {"joint", "replicate_joint"}
    assert boot._reductions["replicate_joint"].__name__ == "dim_zero_sum"
    assert torch.equal(plain.joint, boot.joint)  # the estimate is untouched by the bootstrap
    torch.testing.assert_close(plain.joint, joint_from_logits(*inputs), rtol=0, atol=0)
    plain_result, boot_result = plain.compute(), boot.compute()
    assert plain_result.replicates is None
    assert_same_result(boot_result, plain_result, atol=1e-7)


def test_reset_clears_replicates_but_draws_fresh_weights():
    metric = FastPID(NUM_CLASSES, num_bootstrap=4)
    inputs = correlated_logits(80, seed=8)
    metric.update(*inputs)
    first = metric.replicate_joint.clone()
    metric.reset()
    assert metric.replicate_joint.sum() == 0
    metric.update(*inputs)
    assert not torch.equal(metric.replicate_joint, first)


def test_interval_width_shrinks_like_one_over_sqrt_n():
    widths = []
    for num_samples in (400, 1600):
        metric = FastPID(NUM_CLASSES, num_bootstrap=100)
        metric.update(*correlated_logits(num_samples, seed=9))
        low, high = metric.compute().interval(0.9)
        widths.append(torch.stack([high.unique_1 - low.unique_1, high.redundancy - low.redundancy]))
    ratio = widths[0] / widths[1]  # 2 for an exact 1 / sqrt(N) law
    assert bool((ratio > 1.5).all()) and bool((ratio < 2.7).all()), ratio


def test_the_estimate_warm_starts_from_the_last_solution_and_the_replicates_start_cold(
    monkeypatch,
):
    passed = []

    def recording_pid(joint, *, tol, warm_start=None):
        passed.append((joint.shape, warm_start))
        return pid(joint, tol=tol, warm_start=warm_start)

    monkeypatch.setattr(fastpid_module, "pid", recording_pid)
    metric = FastPID(NUM_CLASSES, num_bootstrap=6)
    metric.update(*correlated_logits(200, seed=10))
    first = metric.compute()
    metric.reset()
    metric.update(*correlated_logits(200, seed=11))
    second = metric.compute()

    square = (NUM_CLASSES,) * 3
    # Each compute: the full sample, then the replicates as one batch, always cold.
    assert [(shape, warm is None) for shape, warm in passed] == [
        (square, True),
        ((6, *square), True),
        (square, False),
        ((6, *square), True),
    ]
    warm = passed[2][1]
    assert torch.equal(warm.dual_1, first.dual_1) and torch.equal(warm.pair_mass, first.pair_mass)
    assert metric._last_result.replicates is None  # only the estimate's duals are kept
    assert torch.equal(metric.warm_start_state()["dual_1"], second.dual_1)
    cold = pid(metric.replicate_joint)
    torch.testing.assert_close(second.replicates.synergy, cold.synergy, rtol=0, atol=1e-6)


def test_replicates_that_drew_no_sample_are_nan_even_all_of_them():
    def computed(empty: list[int]):
        metric = FastPID(NUM_CLASSES, num_bootstrap=3)
        metric.update(*correlated_logits(40, seed=14))
        # As if these replicates drew multiplicity 0 for every sample (probability exp(-N)).
        metric.replicate_joint[empty] = 0.0
        return metric.compute(), metric.replicate_joint

    result, _ = computed([0, 1, 2])
    assert result.replicates.synergy.shape == (3,)
    assert torch.isnan(result.replicates.synergy).all() and torch.isfinite(result.synergy)
    result, replicate_joint = computed([0, 2])
    assert torch.isnan(result.replicates.synergy[[0, 2]]).all()
    expected = pid(replicate_joint[1]).synergy
    torch.testing.assert_close(result.replicates.synergy[1], expected, rtol=0, atol=1e-6)


def test_resumed_bootstrap_repeats_the_uninterrupted_draws():
    first_batch, second_batch = correlated_logits(60, seed=12), correlated_logits(60, seed=13)
    uninterrupted = FastPID(NUM_CLASSES, num_bootstrap=5, seed=4)
    uninterrupted.update(*first_batch)
    state = uninterrupted.bootstrap_state()
    assert all(isinstance(value, int) for value in state.values())
    uninterrupted.reset()
    uninterrupted.update(*second_batch)

    resumed = FastPID(NUM_CLASSES, num_bootstrap=5, seed=4)
    resumed.load_bootstrap_state(state)
    resumed.update(*second_batch)
    assert torch.equal(resumed.replicate_joint, uninterrupted.replicate_joint)

    restarted = FastPID(NUM_CLASSES, num_bootstrap=5, seed=4)  # no state: draws from the start
    restarted.update(*second_batch)
    assert not torch.equal(restarted.replicate_joint, uninterrupted.replicate_joint)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"seed": 4}, "keys 'seed' and 'draws'"),
        ({"seed": 5, "draws": 1}, "seed=4"),
        ({"seed": 4, "draws": -1}, r"`state\['draws'\]`"),
    ],
)
def test_load_bootstrap_state_rejects_a_foreign_state(state, match):
    with pytest.raises(ValueError, match=match):
        FastPID(NUM_CLASSES, num_bootstrap=5, seed=4).load_bootstrap_state(state)


# ---------------------------------------------------------------------------------------------
# ClusteredFastPID
# ---------------------------------------------------------------------------------------------


def test_clustered_replicates_reuse_the_full_sample_clustering():
    inputs = xor_features(150, seed=14)
    metric = ClusteredFastPID(**CLUSTERED, num_bootstrap=12)
    plain = ClusteredFastPID(**CLUSTERED)
    for each in (metric, plain):
        each.update(*inputs)
    result = metric.compute()
    assert_same_result(result, plain.compute(), atol=1e-7)
    assert metric.bootstrap_state() == {"seed": 1, "draws": 1}

    weights = bootstrap_weights(12, 150, 1, 0, 0)  # drawn at compute, rank-independent
    joints = joint_from_features(*inputs, 2, 6, 3, 1, weights=weights)
    expected = pid(joints)
    torch.testing.assert_close(result.replicates.synergy, expected.synergy, rtol=0, atol=1e-6)
    low, high = result.interval(0.9)
    # Synergy near its 1-bit ceiling: the replicates sit below the estimate and the interval,
    # reflected about it, reaches above it.
    assert 0 < high.synergy - low.synergy < 0.3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bootstrap_on_cuda_equals_cpu():
    inputs = correlated_logits(200, seed=15)
    metrics = {}
    for device in ("cpu", "cuda"):
        metric = FastPID(NUM_CLASSES, num_bootstrap=10, seed=2).to(device)
        metric.update(*[tensor.to(device) for tensor in inputs])
        metrics[device] = metric
    # The weights are drawn on the CPU, so both devices accumulate the same replicates.
    torch.testing.assert_close(
        metrics["cuda"].replicate_joint.cpu(), metrics["cpu"].replicate_joint, rtol=0, atol=1e-12
    )
    results = {device: metric.compute() for device, metric in metrics.items()}
    assert results["cuda"].replicates.synergy.device.type == "cuda"
    low_cuda, _ = results["cuda"].interval()
    low_cpu, _ = results["cpu"].interval()
    torch.testing.assert_close(low_cuda.synergy.cpu(), low_cpu.synergy, rtol=0, atol=1e-6)
