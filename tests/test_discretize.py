"""Tests of pidsched.functional.discretize: joint tensors from logits, PCA, k-means, clustering."""

import pytest
import torch

from pidsched.functional import (
    cluster_features,
    joint_from_features,
    joint_from_logits,
    kmeans,
    pca_project,
)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


def _slow_soft_joint(logits_1, logits_2, target, num_classes):
    """Reference: add each sample's posterior outer product to its label's slice, one by one."""
    joint = torch.zeros(logits_1.shape[1], logits_2.shape[1], num_classes, dtype=torch.float64)
    for z1, z2, y in zip(logits_1.double(), logits_2.double(), target.tolist(), strict=True):
        joint[:, :, y] += torch.outer(torch.softmax(z1, 0), torch.softmax(z2, 0))
    return joint


def _slow_hard_joint(logits_1, logits_2, target, num_classes):
    """Reference: count (argmax 1, argmax 2, label) triples one by one."""
    joint = torch.zeros(logits_1.shape[1], logits_2.shape[1], num_classes, dtype=torch.float64)
    for z1, z2, y in zip(logits_1, logits_2, target.tolist(), strict=True):
        joint[int(z1.argmax()), int(z2.argmax()), y] += 1
    return joint


def _random_inputs(num_samples=37, k1=3, k2=4, num_classes=5, dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(1)
    logits_1 = (3 * torch.randn(num_samples, k1, generator=generator)).to(dtype)
    logits_2 = (3 * torch.randn(num_samples, k2, generator=generator)).to(dtype)
    target = torch.randint(num_classes, (num_samples,), generator=generator)
    return logits_1.to(device), logits_2.to(device), target.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_soft_joint_matches_slow_reference(device, dtype):
    logits_1, logits_2, target = _random_inputs(dtype=dtype, device=device)
    joint = joint_from_logits(logits_1, logits_2, target, num_classes=5)
    expected = _slow_soft_joint(logits_1.cpu(), logits_2.cpu(), target.cpu(), 5)
    assert joint.shape == (3, 4, 5)
    assert joint.dtype == torch.float64
    assert joint.device.type == device
    torch.testing.assert_close(joint.cpu(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_hard_joint_counts_argmax_triples(device):
    logits_1, logits_2, target = _random_inputs(num_samples=200, device=device)
    joint = joint_from_logits(logits_1, logits_2, target, num_classes=5, discretization="hard")
    expected = _slow_hard_joint(logits_1.cpu(), logits_2.cpu(), target.cpu(), 5)
    assert torch.equal(joint.cpu(), expected)
    assert joint.sum() == 200


def test_soft_joint_of_confident_logits_equals_hard_counts():
    generator = torch.Generator().manual_seed(2)
    classes_1 = torch.randint(4, (50,), generator=generator)
    classes_2 = torch.randint(4, (50,), generator=generator)
    target = torch.randint(4, (50,), generator=generator)
    # A margin of 80 nats leaves off-class posterior mass of about 4 * exp(-80) ~ 1e-34.
    logits_1 = 80.0 * torch.nn.functional.one_hot(classes_1, 4) + 0.1 * torch.randn(50, 4)
    logits_2 = 80.0 * torch.nn.functional.one_hot(classes_2, 4) + 0.1 * torch.randn(50, 4)
    soft = joint_from_logits(logits_1, logits_2, target, discretization="soft")
    hard = joint_from_logits(logits_1, logits_2, target, discretization="hard")
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-12)


def test_num_classes_defaults_to_logit_width_and_can_exceed_it():
    logits_1, logits_2, target = _random_inputs(k1=4, k2=4, num_classes=4)
    assert joint_from_logits(logits_1, logits_2, target).shape == (4, 4, 4)
    # The label set is independent of what the heads predict.
    assert joint_from_logits(logits_1, logits_2, target, num_classes=7).shape == (4, 4, 7)


def test_soft_joint_is_differentiable_in_the_logits():
    logits_1, logits_2, target = _random_inputs(num_samples=6, k1=2, k2=3, num_classes=2)
    logits_1 = logits_1.double().requires_grad_()
    logits_2 = logits_2.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: joint_from_logits(a, b, target, num_classes=2), (logits_1, logits_2)
    )


def test_empty_batch_gives_zero_counts():
    logits_1, logits_2, target = _random_inputs(num_samples=0)
    joint = joint_from_logits(logits_1, logits_2, target, num_classes=5)
    assert torch.equal(joint, torch.zeros(3, 4, 5, dtype=torch.float64))


def _valid_logit_inputs():
    logits_1, logits_2, target = _random_inputs(num_samples=8, k1=3, k2=3, num_classes=3)
    return {"logits_1": logits_1, "logits_2": logits_2, "target": target, "num_classes": 3}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"logits_1": [[0.0, 1.0, 2.0]]}, TypeError, "`logits_1` to be a torch.Tensor"),
        ({"target": [0, 1]}, TypeError, "`target` to be a torch.Tensor"),
        ({"logits_1": torch.zeros(8)}, ValueError, r"`logits_1` to have shape \(N, D\)"),
        ({"logits_2": torch.zeros(8, 3, 1)}, ValueError, r"`logits_2` to have shape \(N, D\)"),
        ({"logits_1": torch.zeros(8, 0)}, ValueError, r"`logits_1` to have shape \(N, D\)"),
        ({"logits_1": torch.zeros(8, 3, dtype=torch.long)}, ValueError, "`logits_1` to be a float"),
        ({"logits_1": torch.full((8, 3), float("nan"))}, ValueError, "`logits_1` contains NaN"),
        ({"logits_2": torch.full((8, 3), float("inf"))}, ValueError, "`logits_2` contains NaN"),
        ({"logits_2": torch.zeros(7, 3)}, ValueError, "`logits_1` and `logits_2` to hold the same"),
        ({"target": torch.zeros(7, dtype=torch.long)}, ValueError, r"`target` to have one label"),
        ({"target": torch.zeros(8, 1, dtype=torch.long)}, ValueError, r"shape.*reshape\(-1\)"),
        # One-hot or soft (N, K) targets (cross-entropy takes them): the classes are the argmax.
        ({"target": torch.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]]}, ValueError, r"argmax\(dim=-1\)"),
        ({"target": torch.zeros(8)}, ValueError, "`target` to be an integer tensor"),
        ({"target": torch.zeros(8, dtype=torch.bool)}, ValueError, "`target` to be an integer"),
        ({"target": torch.full((8,), 3)}, ValueError, r"`target` values in \[0, 2\]"),
        ({"target": torch.full((8,), -1)}, ValueError, r"`target` values in \[0, 2\]"),
        ({"num_classes": 1}, ValueError, "`num_classes`"),
        ({"num_classes": 2.0}, ValueError, "`num_classes`"),
        ({"num_classes": True}, ValueError, "`num_classes`"),
        ({"discretization": "argmax"}, ValueError, "`discretization`"),
        ({"logits_2": torch.zeros(8, 4), "num_classes": None}, ValueError, "infer `num_classes`"),
    ],
)
def test_joint_from_logits_rejects_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        joint_from_logits(**{**_valid_logit_inputs(), **change})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_joint_from_logits_rejects_inputs_on_different_devices():
    inputs = _valid_logit_inputs()
    with pytest.raises(ValueError, match="`target` on the inputs' device"):
        joint_from_logits(**{**inputs, "target": inputs["target"].cuda()})


def test_pca_projection_matches_eigendecomposition_of_covariance():
    generator = torch.Generator().manual_seed(3)
    mixing = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    features = torch.randn(300, 6, generator=generator, dtype=torch.float64) @ mixing
    scores = pca_project(features, 3)

    centred = features - features.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.mT @ centred)
    axes = eigenvectors[:, [5, 4, 3]]  # largest first
    axes = axes * torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    torch.testing.assert_close(scores, centred @ axes, rtol=0, atol=1e-9)
    # The scores are uncorrelated and carry the three largest variances, in order.
    gram = scores.mT @ scores
    torch.testing.assert_close(gram, torch.diag(eigenvalues[[5, 4, 3]]), rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize(
    ("num_components", "match"), [(0, "`num_components`"), (5, r"`num_components` <= min")]
)
def test_pca_rejects_bad_component_counts(num_components, match):
    with pytest.raises(ValueError, match=match):
        pca_project(torch.randn(10, 4), num_components)


def _blobs(seed, num_blobs=5, dim=3, spread=0.05):
    """Well-separated Gaussian blobs of unequal sizes: (points, true blob id)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(num_blobs, dim, generator=generator, dtype=torch.float64)
    sizes = torch.randint(5, 60, (num_blobs,), generator=generator)
    labels = torch.repeat_interleave(torch.arange(num_blobs), sizes)
    noise = spread * torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    order = torch.randperm(len(labels), generator=generator)
    return (centres[labels] + noise)[order], labels[order], centres


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_recovers_well_separated_blobs(seed):
    points, labels, true_centres = _blobs(seed)
    assignment, centres = kmeans(points, 5, seed=seed)
    pairs = set(zip(labels.tolist(), assignment.tolist(), strict=True))
    assert len(pairs) == 5, "each blob must map to exactly one cluster and vice versa"
    for blob, cluster in pairs:
        torch.testing.assert_close(centres[cluster], points[labels == blob].mean(0))
        assert torch.dist(centres[cluster], true_centres[blob]) < 0.2


@pytest.mark.parametrize("device", DEVICES)
def test_kmeans_returns_a_lloyd_fixed_point(device):
    points = torch.randn(400, 4, generator=torch.Generator().manual_seed(4)).to(device)
    assignment, centres = kmeans(points, 7, seed=0)
    assert assignment.device.type == device
    assert torch.equal(torch.cdist(points.double(), centres).argmin(1), assignment)
    for cluster in range(7):
        torch.testing.assert_close(centres[cluster], points[assignment == cluster].double().mean(0))


def test_kmeans_is_deterministic_and_leaves_global_rng_alone():
    points = torch.randn(500, 5, generator=torch.Generator().manual_seed(5))
    state = torch.get_rng_state()
    first, _ = kmeans(points, 20, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the global RNG must not matter
    second, _ = kmeans(points, 20, seed=3)
    assert torch.equal(first, second)


def test_kmeans_tolerates_fewer_distinct_points_than_clusters():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).repeat(10, 1)
    assignment, centres = kmeans(points, 5)
    assert torch.isfinite(centres).all()
    assert len(set(zip(points[:, 0].tolist(), assignment.tolist(), strict=True))) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": torch.randn(3, 2), "num_clusters": 4}, "at least `num_clusters`=4 points"),
        ({"points": torch.randn(9, 2), "num_clusters": 1}, "`num_clusters`"),
        ({"points": torch.randn(9, 2), "num_clusters": 2, "seed": -1}, "`seed`"),
        ({"points": torch.randn(9, 2), "num_clusters": 2, "max_iter": 0}, "`max_iter`"),
        ({"points": torch.randn(9), "num_clusters": 2}, r"`points` to have shape \(N, D\)"),
    ],
)
def test_kmeans_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans(**kwargs)


def test_cluster_features_ignores_sample_norms():
    features = torch.randn(200, 16, generator=torch.Generator().manual_seed(6))
    scales = torch.rand(200, 1, generator=torch.Generator().manual_seed(7)) * 10 + 0.1
    ids = cluster_features(features, num_clusters=8, num_components=4)
    assert torch.equal(ids, cluster_features(features * scales, num_clusters=8, num_components=4))
    assert ids.min() >= 0
    assert ids.max() < 8


def test_joint_from_features_counts_cluster_label_triples():
    generator = torch.Generator().manual_seed(8)
    features_1 = torch.randn(120, 10, generator=generator)
    features_2 = torch.randn(120, 6, generator=generator)
    target = torch.randint(3, (120,), generator=generator)
    joint = joint_from_features(features_1, features_2, target, 3, num_clusters=6, seed=1)
    ids_1 = cluster_features(features_1, num_clusters=6, seed=1)
    ids_2 = cluster_features(features_2, num_clusters=6, seed=1)
    expected = torch.zeros(6, 6, 3, dtype=torch.float64)
    for i, j, y in zip(ids_1.tolist(), ids_2.tolist(), target.tolist(), strict=True):
        expected[i, j, y] += 1
    assert torch.equal(joint, expected)


def _valid_feature_inputs():
    return {
        "features_1": torch.randn(30, 8),
        "features_2": torch.randn(30, 7),
        "target": torch.randint(3, (30,)),
        "num_classes": 3,
        "num_clusters": 4,
    }


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"features_1": torch.randn(30)}, ValueError, r"`features_1` to have shape \(N, D\)"),
        ({"features_2": torch.randn(29, 7)}, ValueError, "`features_1` and `features_2`"),
        ({"features_2": torch.full((30, 7), float("nan"))}, ValueError, "`features_2` contains"),
        ({"target": torch.full((30,), 3)}, ValueError, r"`target` values in \[0, 2\]"),
        ({"target": torch.zeros(30)}, ValueError, "`target` to be an integer"),
        ({"num_clusters": 1}, ValueError, "`num_clusters`"),
        ({"num_components": 0}, ValueError, "`num_components`"),
        ({"num_components": 8}, ValueError, r"`num_components` <= min"),
        ({"num_clusters": 31}, ValueError, "at least `num_clusters`=31"),
        ({"num_classes": 1}, ValueError, "`num_classes`"),
        ({"seed": -2}, ValueError, "`seed`"),
        ({"features_1": "features"}, TypeError, "`features_1` to be a torch.Tensor"),
    ],
)
def test_joint_from_features_rejects_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        joint_from_features(**{**_valid_feature_inputs(), **change})


def test_kmeans_plusplus_seeds_spread_over_blobs_for_many_seeds():
    # Greedy seeding must put one initial centre in each of 4 far-apart blobs for every seed;
    # otherwise Lloyd iterations could merge two blobs.
    points, labels, _ = _blobs(0, num_blobs=4, dim=2, spread=0.01)
    for seed in range(10):
        assignment, _ = kmeans(points, 4, seed=seed, max_iter=1)
        assert len(set(zip(labels.tolist(), assignment.tolist(), strict=True))) == 4
