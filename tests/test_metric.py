"""Tests of the FastPID and ClusteredFastPID torchmetrics metrics (single process)."""

import math
import pickle

import pytest
import torch
from _metric_helpers import NUM_CLASSES, assert_same_result, correlated_logits, xor_features

import pidsched.metrics.fastpid as fastpid_module
from pidsched import ClusteredFastPID, FastPID
from pidsched.functional import joint_from_features, joint_from_logits, pid

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


def _chunks(tensors, sizes):
    start = 0
    for size in sizes:
        yield [tensor[start : start + size] for tensor in tensors]
        start += size


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("discretization", ["soft", "hard"])
def test_fastpid_equals_functional(discretization, device):
    inputs = [tensor.to(device) for tensor in correlated_logits(300)]
    metric = FastPID(NUM_CLASSES, discretization=discretization).to(device)
    metric.update(*inputs)
    result = metric.compute()

    expected = pid(joint_from_logits(*inputs, discretization=discretization))
    assert result.synergy.device.type == device
    assert result.synergy.shape == ()
    assert_same_result(result, expected, atol=1e-12)
    assert result.mutual_information > 0.1  # the heads do carry information about the label


@pytest.mark.parametrize("discretization", ["soft", "hard"])
def test_fastpid_accumulates_batches_like_one_batch(discretization):
    inputs = correlated_logits(257)
    whole = FastPID(NUM_CLASSES, discretization=discretization)
    whole.update(*inputs)
    batched = FastPID(NUM_CLASSES, discretization=discretization)
    for batch in _chunks(inputs, [100, 0, 57, 100]):
        batched.update(*batch)

    torch.testing.assert_close(batched.joint, whole.joint, rtol=0, atol=1e-10)
    assert batched.joint.sum().item() == pytest.approx(257)
    assert_same_result(batched.compute(), whole.compute())


def test_fastpid_recovers_xor_synergy_from_confident_heads():
    bits = torch.randint(2, (2, 400))
    logits_1 = 20.0 * torch.nn.functional.one_hot(bits[0], NUM_CLASSES).float()
    logits_2 = 20.0 * torch.nn.functional.one_hot(bits[1], NUM_CLASSES).float()
    metric = FastPID(NUM_CLASSES)
    metric.update(logits_1, logits_2, bits[0] ^ bits[1])
    result = metric.compute()
    assert result.synergy.item() == pytest.approx(1.0, abs=0.01)
    for atom in (result.unique_1, result.unique_2, result.redundancy):
        assert abs(atom.item()) < 0.01


def test_fastpid_reset_clears_samples_but_keeps_warm_start():
    metric = FastPID(NUM_CLASSES)
    metric.update(*correlated_logits(200, seed=1))
    first = metric.compute()
    metric.reset()
    assert torch.equal(metric.joint, torch.zeros(NUM_CLASSES, NUM_CLASSES, NUM_CLASSES).double())
    assert torch.equal(metric._last_result.dual_1, first.dual_1)
    assert torch.equal(metric._last_result.pair_mass, first.pair_mass)

    other = correlated_logits(150, seed=2)
    metric.update(*other)
    fresh = FastPID(NUM_CLASSES, warm_start=False)
    fresh.update(*other)
    assert_same_result(metric.compute(), fresh.compute(), atol=1e-6)


@pytest.mark.parametrize("warm_start", [True, False])
def test_fastpid_warm_starts_from_previous_compute(monkeypatch, warm_start):
    passed = []

    def recording_pid(joint, *, tol, warm_start=None):
        assert tol == 1e-7  # the solver's default unless the metric is given another
        passed.append(warm_start)
        return pid(joint, tol=tol, warm_start=warm_start)

    monkeypatch.setattr(fastpid_module, "pid", recording_pid)
    metric = FastPID(NUM_CLASSES, warm_start=warm_start)
    metric.update(*correlated_logits(100, seed=3))
    first = metric.compute()
    metric.update(*correlated_logits(100, seed=4))
    second = metric.compute()

    assert passed[0] is None
    if warm_start:
        assert torch.equal(passed[1].dual_1, first.dual_1)
        assert torch.equal(passed[1].pair_mass, first.pair_mass)
    else:
        assert passed[1] is None
    cold = pid(metric.joint)
    assert_same_result(second, cold, atol=1e-6)  # the solver's certified tolerance is 1e-7


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # torchmetrics' own warning
def test_fastpid_compute_without_samples_warns_and_returns_nan():
    metric = FastPID(NUM_CLASSES)
    with pytest.warns(UserWarning, match=r"no accumulated samples.*call update\(\.\.\.\)"):
        result = metric.compute()
    assert math.isnan(result.synergy.item())
    assert all(
        math.isnan(value) for name, value in result.as_dict().items() if name != "iterations"
    )

    logits_1, logits_2, target = correlated_logits(0)
    metric.update(logits_1, logits_2, target)
    with pytest.warns(UserWarning, match="no accumulated samples"):
        assert math.isnan(metric.compute().unique_1.item())
    assert metric._last_result is None  # a NaN result is no warm start


def test_fastpid_forward_returns_batch_value_and_accumulates():
    metric = FastPID(NUM_CLASSES)
    first, second = correlated_logits(120, seed=5), correlated_logits(80, seed=6)
    batch_value = metric(*first)
    metric(*second)
    assert_same_result(batch_value, pid(joint_from_logits(*first)), atol=1e-6)
    both = [torch.cat(pair) for pair in zip(first, second, strict=True)]
    assert_same_result(metric.compute(), pid(joint_from_logits(*both)), atol=1e-6)


def test_fastpid_pickles_with_its_state():
    metric = FastPID(NUM_CLASSES, discretization="hard")
    metric.update(*correlated_logits(90, seed=7))
    restored = pickle.loads(pickle.dumps(metric))
    assert torch.equal(restored.joint, metric.joint)
    assert restored.discretization == "hard"
    assert_same_result(restored.compute(), metric.compute())


def _valid_update():
    logits_1, logits_2, target = correlated_logits(10)
    return {"logits_1": logits_1, "logits_2": logits_2, "target": target}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"logits_1": torch.zeros(10, 3)}, ValueError, "`logits_1` to have num_classes=4"),
        ({"logits_2": torch.zeros(10, 5)}, ValueError, "`logits_2` to have num_classes=4"),
        ({"logits_1": torch.full((10, 4), float("nan"))}, ValueError, "`logits_1` contains NaN"),
        ({"logits_2": torch.full((10, 4), -float("inf"))}, ValueError, "`logits_2` contains"),
        ({"logits_2": torch.zeros(9, 4)}, ValueError, "`logits_1` and `logits_2` to hold"),
        ({"target": torch.zeros(11, dtype=torch.long)}, ValueError, "`target` to have one label"),
        ({"target": torch.full((10,), 4)}, ValueError, r"`target` values in \[0, 3\]"),
        ({"target": torch.zeros(10)}, ValueError, "`target` to be an integer tensor"),
        ({"logits_1": torch.zeros(10, 4, dtype=torch.int64)}, ValueError, "`logits_1` to be a"),
        ({"logits_1": torch.zeros(10, 4, 1)}, ValueError, r"`logits_1` to have shape \(N, D\)"),
        ({"target": None}, TypeError, "`target` to be a torch.Tensor"),
    ],
)
def test_fastpid_update_rejects_bad_input(change, error, match):
    metric = FastPID(NUM_CLASSES)
    with pytest.raises(error, match=match):
        metric.update(**{**_valid_update(), **change})
    assert metric.joint.sum() == 0


def test_fastpid_warm_start_state_round_trips():
    first = FastPID(NUM_CLASSES)
    first.update(*correlated_logits(200, seed=6))
    first.compute()
    state = first.warm_start_state()
    assert FastPID(NUM_CLASSES).warm_start_state() is None
    logits = correlated_logits(200, seed=7)
    results = []
    for metric in (first, FastPID(NUM_CLASSES)):
        if metric is not first:
            metric.load_warm_start_state(state)
        metric.reset()
        metric.update(*logits)
        results.append(metric.compute())
    # Same warm start, same solve: bit-identical, and as cheap as the original's.
    assert results[0].iterations == results[1].iterations
    assert torch.equal(results[0].synergy, results[1].synergy)
    cold = FastPID(NUM_CLASSES)
    cold.load_warm_start_state(None)
    cold.update(*logits)
    assert cold.compute().iterations > results[1].iterations


def test_fastpid_tol_bounds_the_certified_error():
    logits = correlated_logits(300, seed=5)
    exact = pid(joint_from_logits(*logits, num_classes=NUM_CLASSES), tol=1e-11)
    default, loose = FastPID(NUM_CLASSES), FastPID(NUM_CLASSES, tol=1e-3)
    for metric in (default, loose):
        metric.update(*logits)
    default, loose = default.compute(), loose.compute()
    assert loose.gap.item() <= 1e-3 and default.gap.item() <= 1e-7
    assert_same_result(loose, exact, atol=1e-3)
    assert loose.iterations < default.iterations


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 4, "tol": 0.0}, "`tol`"),
        ({"num_classes": 4, "tol": "1e-5"}, "`tol`"),
        ({"num_classes": 1}, "`num_classes`"),
        ({"num_classes": "4"}, "`num_classes`"),
        ({"num_classes": 4, "discretization": "argmax"}, "`discretization`"),
        ({"num_classes": 4, "warm_start": "yes"}, "`warm_start`"),
    ],
)
def test_fastpid_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastPID(**kwargs)


def test_fastpid_state_is_a_fixed_size_sum():
    metric = FastPID(NUM_CLASSES)
    assert metric._reductions["joint"].__name__ == "dim_zero_sum"
    assert metric.joint.shape == (NUM_CLASSES,) * 3
    assert metric.joint.dtype == torch.float64
    assert not FastPID.full_state_update
    assert not FastPID.is_differentiable


# ---------------------------------------------------------------------------------------------
# ClusteredFastPID
# ---------------------------------------------------------------------------------------------


def test_clustered_fastpid_finds_one_bit_of_synergy_in_xor_embeddings():
    features_1, features_2, target = xor_features(2000)
    metric = ClusteredFastPID(num_classes=2)  # the paper's PCA(5) + KMeans(20)
    metric.update(features_1, features_2, target)
    result = metric.compute()
    # Clusters never straddle two bits, so the pair of cluster ids determines the label.
    label_frequencies = target.bincount().double() / len(target)
    label_entropy = -(label_frequencies * label_frequencies.log2()).sum()
    torch.testing.assert_close(result.mutual_information, label_entropy, rtol=0, atol=1e-9)
    assert result.synergy.item() == pytest.approx(1.0, abs=0.03)
    for atom in (result.unique_1, result.unique_2, result.redundancy):
        assert -1e-6 < atom.item() < 0.03


@pytest.mark.parametrize("device", DEVICES)
def test_clustered_fastpid_equals_functional_and_accumulates_batches(device):
    inputs = [tensor.to(device) for tensor in xor_features(300, seed=1)]
    metric = ClusteredFastPID(num_classes=2, num_clusters=6, num_components=3, seed=2).to(device)
    for batch in _chunks(inputs, [120, 0, 180]):
        metric.update(*batch)
    result = metric.compute()

    joint = joint_from_features(*inputs, 2, num_clusters=6, num_components=3, seed=2)
    assert joint.device.type == device
    assert result.synergy.device.type == device
    assert_same_result(result, pid(joint), atol=1e-12)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # torchmetrics' own warning
def test_clustered_fastpid_reset_and_empty_compute():
    metric = ClusteredFastPID(num_classes=2, num_clusters=4)
    with pytest.warns(UserWarning, match="no accumulated samples"):
        assert math.isnan(metric.compute().synergy.item())
    metric.update(*xor_features(100))
    assert not math.isnan(metric.compute().synergy.item())
    metric.reset()
    assert metric.target == []
    with pytest.warns(UserWarning, match="no accumulated samples"):
        assert math.isnan(metric.compute().redundancy.item())


def test_clustered_fastpid_pickles_with_its_state():
    metric = ClusteredFastPID(num_classes=2, num_clusters=5, num_components=2, seed=3)
    metric.update(*xor_features(80, seed=4))
    restored = pickle.loads(pickle.dumps(metric))
    assert (restored.num_clusters, restored.num_components, restored.seed) == (5, 2, 3)
    assert_same_result(restored.compute(), metric.compute(), atol=0.0)


def test_clustered_fastpid_stores_detached_features():
    features_1, features_2, target = xor_features(30)
    features_1.requires_grad_()
    metric = ClusteredFastPID(num_classes=2, num_clusters=3)
    metric.update(features_1 * 2, features_2, target)
    assert metric.features_1[0].grad_fn is None


def _valid_features():
    features_1, features_2, target = xor_features(40)
    return {"features_1": features_1, "features_2": features_2, "target": target}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"features_1": torch.randn(40)}, r"`features_1` to have shape \(N, D\)"),
        ({"features_2": torch.randn(39, 8)}, "`features_1` and `features_2` to hold"),
        ({"features_2": torch.full((40, 8), float("nan"))}, "`features_2` contains NaN"),
        ({"target": torch.full((40,), 2)}, r"`target` values in \[0, 1\]"),
        ({"target": torch.zeros(41, dtype=torch.long)}, "`target` to have one label"),
    ],
)
def test_clustered_fastpid_update_rejects_bad_input(change, match):
    metric = ClusteredFastPID(num_classes=2, num_clusters=4)
    with pytest.raises(ValueError, match=match):
        metric.update(**{**_valid_features(), **change})
    assert metric.target == []


def test_clustered_fastpid_rejects_a_change_of_feature_width():
    metric = ClusteredFastPID(num_classes=2, num_clusters=4)
    metric.update(**_valid_features())
    features = _valid_features()
    with pytest.raises(ValueError, match="`features_2` to have D=8 columns"):
        metric.update(**{**features, "features_2": features["features_2"][:, :5]})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "`num_classes`"),
        ({"num_classes": 2, "num_clusters": 1}, "`num_clusters`"),
        ({"num_classes": 2, "num_components": 0}, "`num_components`"),
        ({"num_classes": 2, "seed": -1}, "`seed`"),
        ({"num_classes": 2, "tol": 1.5}, "`tol`"),
    ],
)
def test_clustered_fastpid_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClusteredFastPID(**kwargs)


def test_clustered_fastpid_needs_at_least_num_clusters_samples():
    metric = ClusteredFastPID(num_classes=2)
    metric.update(*xor_features(10))
    with pytest.raises(ValueError, match="at least `num_clusters`=20 points"):
        metric.compute()
