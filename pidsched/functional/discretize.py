"""Turn model outputs into the joint distribution tensor that :func:`pidsched.functional.pid` takes.

Two discretisations are provided:

- ``joint_from_logits``: each modality's class logits are the source symbols. "soft" spreads every
  sample over all symbol pairs by its class posteriors, ``sum_n softmax(z1_n) x softmax(z2_n) x
  onehot(y_n)``; "hard" counts argmax predictions. This is pidsched's default.
- ``joint_from_features``: the released paper code's recipe (docs/method.md, "The released code"):
  each modality's embedding is L2 normalised, projected by PCA and clustered by k-means; cluster ids
  are the source symbols. ``pca_project`` and ``kmeans`` are plain, deterministic PyTorch and run on
  the input's device.

Every joint is an unnormalised count tensor shaped ``(K1, K2, Ky)`` in float64 (source 1 symbol,
source 2 symbol, label). The private helpers follow torchmetrics' functional layout (argument
validation, tensor validation, format, update) so that the metrics in :mod:`pidsched.metrics` reuse
them piece by piece.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pidsched._checks import check_int_at_least as _check_int_at_least

__all__ = [
    "cluster_features",
    "joint_from_features",
    "joint_from_logits",
    "kmeans",
    "pca_project",
]

Discretization = Literal["soft", "hard"]
_DISCRETIZATIONS = ("soft", "hard")


# ---------------------------------------------------------------------------------------------
# Argument validation (plain Python values)
# ---------------------------------------------------------------------------------------------


def _joint_from_logits_arg_validation(num_classes: int | None, discretization: str) -> None:
    """Validate the non-tensor arguments of :func:`joint_from_logits`.

    Raises:
        ValueError: If ``num_classes`` is not ``None`` or an integer >= 2, or ``discretization`` is
            not "soft" or "hard".
    """
    if num_classes is not None:
        _check_int_at_least("num_classes", num_classes, 2, "the number of target classes")
    if discretization not in _DISCRETIZATIONS:
        raise ValueError(
            f"Expected argument `discretization` to be one of {_DISCRETIZATIONS}, but got "
            f"{discretization!r}. Use 'soft' to weight symbol pairs by class posteriors or 'hard' "
            "to count argmax predictions."
        )


def _joint_from_features_arg_validation(
    num_classes: int, num_clusters: int, num_components: int, seed: int
) -> None:
    """Validate the non-tensor arguments of :func:`joint_from_features`.

    Raises:
        ValueError: If an argument is not an integer in its allowed range.
    """
    _check_int_at_least("num_classes", num_classes, 2, "the number of target classes")
    _check_int_at_least("num_clusters", num_clusters, 2, "k-means clusters per modality")
    _check_int_at_least("num_components", num_components, 1, "PCA components per modality")
    _check_int_at_least("seed", seed, 0, "the k-means seeding seed")


# ---------------------------------------------------------------------------------------------
# Tensor validation
# ---------------------------------------------------------------------------------------------


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"Expected `{name}` to be a torch.Tensor, but got {type(value).__name__}; "
            "convert it with torch.as_tensor(...)."
        )


def _check_sample_matrix(name: str, value: Tensor, what: str) -> None:
    """Check that ``value`` is a finite, floating-point ``(N, D)`` tensor with ``D >= 1``."""
    _check_tensor(name, value)
    if value.ndim != 2 or value.shape[1] == 0:
        raise ValueError(
            f"Expected `{name}` to have shape (N, D) with one row of {what} per sample, but got "
            f"shape {tuple(value.shape)}; reshape it to (N, D) before passing it."
        )
    if not value.is_floating_point():
        raise ValueError(
            f"Expected `{name}` to be a floating-point tensor of {what}, but got dtype "
            f"{value.dtype}; pass the model's raw outputs, not predicted labels."
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"`{name}` contains NaN or Inf values; check the model's outputs (for example a "
            "diverged loss) before passing them."
        )


def _check_target(target: object, samples: Tensor, num_classes: int) -> None:
    """Check that ``target`` holds one integer label in ``[0, num_classes)`` per row of ``samples``,
    on the same device."""
    _check_tensor("target", target)
    num_samples = samples.shape[0]
    if target.ndim != 1:
        # (N, K) rows are one-hot or soft targets (which cross-entropy accepts): their classes
        # are the argmax; reshaping them would give N K "labels".
        fix = (
            "pass class indices, e.g. target.argmax(dim=-1)"
            if target.ndim == 2 and target.shape[1] == num_classes and target.shape[1] > 1
            else "flatten it with target.reshape(-1)"
        )
        raise ValueError(
            f"Expected `target` to have shape (N,), one class index per sample, but got shape "
            f"{tuple(target.shape)}; {fix}."
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"Expected `target` to be an integer tensor of class indices, but got dtype "
            f"{target.dtype}; pass labels, for example target.long()."
        )
    if target.shape[0] != num_samples:
        raise ValueError(
            f"Expected `target` to have one label per sample (N={num_samples}), but got "
            f"{target.shape[0]}; pass the labels of the same samples as the model outputs."
        )
    if target.device != samples.device:
        raise ValueError(
            f"Expected `target` on the inputs' device {samples.device}, but got {target.device}; "
            "move all inputs to the same device."
        )
    if target.numel() > 0:
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"Expected `target` values in [0, {num_classes - 1}] (num_classes={num_classes}), "
                f"but got values from {low} to {high}; set num_classes to the number of labels "
                "or remap the labels to 0..num_classes-1."
            )


def _check_same_samples_and_device(name_1: str, value_1: Tensor, name_2: str, value_2: Tensor):
    """Check that two modalities' outputs describe the same samples on the same device."""
    if value_1.shape[0] != value_2.shape[0]:
        raise ValueError(
            f"Expected `{name_1}` and `{name_2}` to hold the same samples, but got N="
            f"{value_1.shape[0]} and N={value_2.shape[0]}; pass both modalities' outputs for the "
            "same batch."
        )
    if value_1.device != value_2.device:
        raise ValueError(
            f"Expected `{name_1}` and `{name_2}` on one device, but got {value_1.device} and "
            f"{value_2.device}; move all inputs to the same device."
        )


def _check_weights(weights: object, samples: Tensor) -> None:
    """Check that ``weights`` holds finite non-negative per-sample weights ``(N,)`` or ``(B, N)``
    for the rows of ``samples``, on their device."""
    _check_tensor("weights", weights)
    num_samples = samples.shape[0]
    if weights.ndim not in (1, 2) or weights.shape[-1] != num_samples:
        raise ValueError(
            f"Expected `weights` shaped (N,) or (B, N) with N={num_samples} (one weight per "
            f"sample, B replicates), but got shape {tuple(weights.shape)}."
        )
    if weights.is_complex() or weights.dtype == torch.bool:
        raise ValueError(
            f"Expected `weights` to be a real tensor, but got dtype {weights.dtype}; pass counts "
            "or non-negative floats, for example weights.double()."
        )
    if weights.device != samples.device:
        raise ValueError(
            f"Expected `weights` on the inputs' device {samples.device}, but got "
            f"{weights.device}; move all inputs to the same device."
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(
            "Expected `weights` to be finite and non-negative (sample multiplicities such as "
            "Poisson(1) bootstrap draws), but it holds NaN, Inf or negative values."
        )


def _joint_from_logits_tensor_validation(
    logits_1: Tensor,
    logits_2: Tensor,
    target: Tensor,
    num_classes: int | None,
    source_classes: int | None = None,
) -> None:
    """Validate the tensors passed to :func:`joint_from_logits` (or ``FastPID.update``).

    Args:
        logits_1: ``(N, K1)`` floating-point logits of modality 1.
        logits_2: ``(N, K2)`` floating-point logits of modality 2.
        target: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of target classes ``Ky``; ``None`` means ``K1`` when ``K1 == K2``.
        source_classes: If given, the number of columns both logits must have (the metric's ``K``).

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: On wrong shapes or dtypes, NaN/Inf logits, mismatched ``N`` or devices, or
            targets out of range; the message names the argument.
    """
    _check_sample_matrix("logits_1", logits_1, "class logits")
    _check_sample_matrix("logits_2", logits_2, "class logits")
    if source_classes is not None:
        for name, logits in (("logits_1", logits_1), ("logits_2", logits_2)):
            if logits.shape[1] != source_classes:
                raise ValueError(
                    f"Expected `{name}` to have num_classes={source_classes} columns, but got "
                    f"{logits.shape[1]}; construct the metric with num_classes equal to the "
                    "number of classes the modality heads predict."
                )
    _check_same_samples_and_device("logits_1", logits_1, "logits_2", logits_2)
    num_classes = _resolve_num_classes(logits_1, logits_2, num_classes)
    _check_target(target, logits_1, num_classes)


def _joint_from_features_tensor_validation(
    features_1: Tensor, features_2: Tensor, target: Tensor, num_classes: int
) -> None:
    """Validate the tensors passed to :func:`joint_from_features` (or ``ClusteredFastPID``).

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: On wrong shapes or dtypes, NaN/Inf features, mismatched ``N`` or devices, or
            targets out of range; the message names the argument.
    """
    _check_sample_matrix("features_1", features_1, "embedding features")
    _check_sample_matrix("features_2", features_2, "embedding features")
    _check_same_samples_and_device("features_1", features_1, "features_2", features_2)
    _check_target(target, features_1, num_classes)


def _resolve_num_classes(logits_1: Tensor, logits_2: Tensor, num_classes: int | None) -> int:
    """Default ``Ky`` to the logits' class count when both modalities predict the same classes."""
    if num_classes is not None:
        return num_classes
    if logits_1.shape[1] == logits_2.shape[1]:
        return logits_1.shape[1]
    raise ValueError(
        "Cannot infer `num_classes` because `logits_1` and `logits_2` have different shapes "
        f"{tuple(logits_1.shape)} and {tuple(logits_2.shape)}; pass num_classes explicitly."
    )


# ---------------------------------------------------------------------------------------------
# Format and update
# ---------------------------------------------------------------------------------------------


def _posteriors_from_logits(logits: Tensor, discretization: Discretization) -> Tensor:
    """Map ``(N, K)`` logits to per-sample float64 distributions over the ``K`` source symbols.

    "soft" is the softmax posterior; "hard" is the one-hot argmax, which makes the soft update
    below count argmax pairs exactly (integers are exact in float64).
    """
    if discretization == "soft":
        # The explicit softmax: torch.softmax's CPU kernel is ~4x slower along a short class dim
        # (1200 x 8: 170 us against 45 us) and this agrees with it to 1e-15.
        shifted = logits.to(torch.float64)
        shifted = (shifted - shifted.amax(dim=1, keepdim=True)).exp_()
        return shifted / shifted.sum(dim=1, keepdim=True)
    return F.one_hot(logits.argmax(dim=1), logits.shape[1]).to(torch.float64)


def _joint_update(
    posteriors_1: Tensor,
    posteriors_2: Tensor,
    target: Tensor,
    num_classes: int,
    weights: Tensor | None = None,
) -> Tensor:
    """Sum ``w[n] posteriors_1[n] x posteriors_2[n] x onehot(target[n])`` over the samples.

    The samples are grouped by label (a stable sort) and each label's ``(K1, K2)`` slice is one
    matmul of its samples' posteriors: ``O(N K1 K2)`` work and ``O(N (K1 + K2))`` memory (a
    one-hot contraction of all ``(N, K1 K2)`` pairs with the labels costs ``O(N K1 K2 Ky)`` and
    ``O(N K1 K2)``: 4e9 multiply-adds and 334 MB at 101 classes and 4,096 samples). Matmuls and
    the stable sort are deterministic on CUDA, unlike atomic scatter-adds. The label counts are
    read on the host (one device sync per call) to slice the groups.

    Args:
        posteriors_1: ``(N, K1)`` float64 distributions over source 1 symbols.
        posteriors_2: ``(N, K2)`` float64 distributions over source 2 symbols.
        target: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of labels ``Ky``.
        weights: ``None`` (every sample counts once), or non-negative per-sample weights shaped
            ``(N,)`` or ``(B, N)``: one joint per row (bootstrap replicates).

    Returns:
        ``(K1, K2, Ky)`` float64 counts (mass ``N``, or ``weights.sum(-1)``), with the leading
        ``(B,)`` of 2-d ``weights``.
    """
    target = target.long()
    order = torch.argsort(target, stable=True)
    counts = torch.bincount(target, minlength=num_classes).tolist()
    sorted_1, sorted_2 = posteriors_1[order], posteriors_2[order]
    sorted_weights = None if weights is None else weights.to(sorted_1.dtype)[..., order]
    slices = []
    start = 0
    for count in counts:
        rows_1, rows_2 = sorted_1[start : start + count], sorted_2[start : start + count]
        if sorted_weights is not None:
            rows_1 = sorted_weights[..., start : start + count, None] * rows_1
        slices.append(rows_1.mT @ rows_2)  # (..., K1, K2); zeros for a label without samples
        start += count
    return torch.stack(slices, dim=-1)


def _one_hot_symbols(symbols: Tensor, num_symbols: int) -> Tensor:
    return F.one_hot(symbols.long(), num_symbols).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def joint_from_logits(
    logits_1: Tensor,
    logits_2: Tensor,
    target: Tensor,
    num_classes: int | None = None,
    discretization: Discretization = "soft",
    validate_args: bool = True,
    *,
    weights: Tensor | None = None,
) -> Tensor:
    """Joint count tensor of two modalities' predicted classes and the true label.

    "soft": ``joint[i, j, y] = sum_n softmax(logits_1[n])[i] softmax(logits_2[n])[j] [y_n = y]``;
    "hard": the number of samples with ``argmax logits_1[n] = i``, ``argmax logits_2[n] = j`` and
    ``target[n] = y``. Soft mode is differentiable with respect to the logits. With ``weights``
    each sample counts ``weights[n]`` times instead of once: ``(B, N)`` weights (for example
    Poisson(1) bootstrap draws) give ``B`` joints in one pass.

    Args:
        logits_1: ``(N, K1)`` unnormalised class scores of modality 1 (any floating dtype).
        logits_2: ``(N, K2)`` unnormalised class scores of modality 2 (``K2`` may differ from K1).
        target: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of labels ``Ky``; defaults to ``K1`` when ``K1 == K2``.
        discretization: "soft" (posterior-weighted) or "hard" (argmax counts).
        validate_args: Check arguments and tensors (a device sync on CUDA); turn off only for
            inputs already known to be valid.
        weights: Optional non-negative per-sample weights ``(N,)`` or ``(B, N)``.

    Returns:
        ``(K1, K2, Ky)`` float64 counts on the logits' device, summing to ``N`` (or to
        ``weights.sum(-1)``); ``(B, K1, K2, Ky)`` for ``(B, N)`` weights. Work ``O(B N K1 K2)``.

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: On an invalid argument or tensor (the message names it).

    Example::

        >>> import torch
        >>> from pidsched.functional import joint_from_logits
        >>> logits = torch.tensor([[9.0, -9.0], [-9.0, 9.0]])
        >>> joint_from_logits(logits, logits, torch.tensor([0, 1]), discretization="hard")[:, :, 0]
        tensor([[1., 0.],
                [0., 0.]], dtype=torch.float64)
    """
    if validate_args:
        _joint_from_logits_arg_validation(num_classes, discretization)
        _joint_from_logits_tensor_validation(logits_1, logits_2, target, num_classes)
        if weights is not None:
            _check_weights(weights, logits_1)
    num_classes = _resolve_num_classes(logits_1, logits_2, num_classes)
    return _joint_update(
        _posteriors_from_logits(logits_1, discretization),
        _posteriors_from_logits(logits_2, discretization),
        target,
        num_classes,
        weights,
    )


def pca_project(features: Tensor, num_components: int) -> Tensor:
    """Project samples onto their leading principal axes.

    The features are centred and projected onto the top right-singular vectors. Each axis is
    returned by the SVD only up to sign; the sign is fixed so that the axis's largest-magnitude
    loading is positive, which makes the projection reproducible.

    Args:
        features: ``(N, D)`` floating-point samples.
        num_components: Number of axes ``C``, ``1 <= C <= min(N, D)``.

    Returns:
        ``(N, C)`` float64 principal-component scores on the input's device.

    Raises:
        TypeError: If ``features`` is not a tensor.
        ValueError: If ``features`` is not a finite ``(N, D)`` float tensor or ``num_components``
            is out of range.
    """
    _check_sample_matrix("features", features, "features")
    _check_int_at_least("num_components", num_components, 1, "PCA components")
    if num_components > min(features.shape):
        raise ValueError(
            f"Expected `num_components` <= min(N, D) = {min(features.shape)} for features of "
            f"shape {tuple(features.shape)}, but got {num_components}; lower num_components or "
            "pass more samples."
        )
    centred = features.to(torch.float64) - features.to(torch.float64).mean(dim=0)
    _, _, right_vectors = torch.linalg.svd(centred, full_matrices=False)
    axes = right_vectors[:num_components]  # (C, D), unit rows
    largest = axes.gather(1, axes.abs().argmax(dim=1, keepdim=True))
    axes = axes * torch.sign(largest)
    return centred @ axes.mT


def _squared_distances(points: Tensor, centres: Tensor) -> Tensor:
    """``(N, D), (M, D) -> (N, M)`` squared Euclidean distances.

    Expanded as ``|x|^2 - 2 x.c + |c|^2`` (one matmul, O(N M) memory, deterministic on CUDA);
    clamped at zero against rounding. ``torch.cdist`` is several times slower on CPU at these sizes.
    """
    cross = points @ centres.mT
    distances = points.square().sum(1, keepdim=True) - 2 * cross + centres.square().sum(1)
    return distances.clamp_min_(0.0)


def _kmeans_plusplus(points: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; sklearn's greedy variant).

    Each new centre is the best, by resulting inertia, of ``2 + log(k)`` candidates drawn with
    probability proportional to the squared distance to the nearest chosen centre. Random numbers
    come from a CPU generator and are inverted through the CDF on the points' device, so the
    same seed picks the same centres on every device (up to floating-point ties).

    Returns:
        ``(num_clusters, D)`` initial centres.
    """
    num_points = points.shape[0]
    num_trials = 2 + int(math.log(num_clusters))
    first = int(torch.randint(num_points, (1,), generator=generator))
    centres = [points[first]]
    closest = _squared_distances(points, points[first : first + 1])[:, 0]  # (N,)
    for _ in range(1, num_clusters):
        cumulative = closest.cumsum(dim=0)
        draws = torch.rand(num_trials, generator=generator, dtype=torch.float64)
        thresholds = draws.to(points.device) * cumulative[-1]
        # side="right" never picks a point of zero weight (an already chosen centre).
        candidates = torch.searchsorted(cumulative, thresholds, right=True).clamp_(
            max=num_points - 1
        )
        candidate_closest = torch.minimum(
            closest, _squared_distances(points, points[candidates]).mT
        )
        best = candidate_closest.sum(dim=1).argmin()
        closest = candidate_closest[best]
        centres.append(points[candidates[best]])
    return torch.stack(centres)


def _assign(points: Tensor, centres: Tensor) -> Tensor:
    return _squared_distances(points, centres).argmin(dim=1)


def _recentre(points: Tensor, assignment: Tensor, centres: Tensor) -> Tensor:
    """Move each centre to the mean of its points; an empty cluster keeps its centre."""
    membership = _one_hot_symbols(assignment, centres.shape[0])  # (N, k)
    sizes = membership.sum(dim=0)[:, None]
    # A matmul rather than index_add_: deterministic on CUDA.
    means = (membership.mT @ points) / sizes.clamp(min=1.0)
    return torch.where(sizes > 0, means, centres)


def kmeans(
    points: Tensor, num_clusters: int, *, seed: int = 0, max_iter: int = 300
) -> tuple[Tensor, Tensor]:
    """Deterministic k-means: greedy k-means++ seeding, then Lloyd iterations.

    Lloyd iterations stop when no assignment changes (an exact fixed point) or after ``max_iter``.
    Everything runs in float64 on the points' device; the result depends only on the points, their
    order and ``seed``.

    Args:
        points: ``(N, D)`` floating-point samples, ``N >= num_clusters``.
        num_clusters: Number of clusters ``k >= 2``.
        seed: Seed of the CPU ``torch.Generator`` used for seeding; the global RNG is untouched.
        max_iter: Maximal number of Lloyd iterations.

    Returns:
        ``(assignment, centres)``: ``(N,)`` int64 cluster ids in ``[0, k)`` and ``(k, D)`` float64
        centres.

    Raises:
        TypeError: If ``points`` is not a tensor.
        ValueError: If ``points`` is not a finite ``(N, D)`` float tensor, there are fewer points
            than clusters, or an integer argument is out of range.

    Example::

        >>> import torch
        >>> from pidsched.functional import kmeans
        >>> points = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> assignment, _ = kmeans(points, 2)
        >>> bool(assignment[0] == assignment[1] != assignment[2] == assignment[3])
        True
    """
    _check_sample_matrix("points", points, "features")
    _check_int_at_least("num_clusters", num_clusters, 2, "k-means clusters")
    _check_int_at_least("seed", seed, 0, "the seeding seed")
    _check_int_at_least("max_iter", max_iter, 1, "Lloyd iterations")
    if points.shape[0] < num_clusters:
        raise ValueError(
            f"Expected at least `num_clusters`={num_clusters} points, but got N={points.shape[0]}; "
            "lower num_clusters or pass more samples."
        )
    points = points.to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    centres = _kmeans_plusplus(points, num_clusters, generator)
    assignment = _assign(points, centres)
    for _ in range(max_iter):
        centres = _recentre(points, assignment, centres)
        new_assignment = _assign(points, centres)
        if torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
    return assignment, centres


def cluster_features(
    features: Tensor, num_clusters: int = 20, num_components: int = 5, seed: int = 0
) -> Tensor:
    """The released paper code's discretisation of one modality's embeddings.

    L2 normalise each sample, project onto ``num_components`` principal axes, cluster with
    ``kmeans(num_clusters, seed)`` (docs/method.md, "The released code").

    Args:
        features: ``(N, D)`` embeddings, ``N >= num_clusters`` and ``min(N, D) >= num_components``.
        num_clusters: Number of k-means clusters (symbols).
        num_components: Number of PCA components.
        seed: k-means seeding seed.

    Returns:
        ``(N,)`` int64 cluster ids in ``[0, num_clusters)``.

    Raises:
        TypeError: If ``features`` is not a tensor.
        ValueError: On invalid features or arguments (the message names them).
    """
    _check_sample_matrix("features", features, "embedding features")
    normalised = F.normalize(features.to(torch.float64), dim=1)
    assignment, _ = kmeans(pca_project(normalised, num_components), num_clusters, seed=seed)
    return assignment


def joint_from_features(
    features_1: Tensor,
    features_2: Tensor,
    target: Tensor,
    num_classes: int,
    num_clusters: int = 20,
    num_components: int = 5,
    seed: int = 0,
    validate_args: bool = True,
    *,
    weights: Tensor | None = None,
) -> Tensor:
    """Joint count tensor of two modalities' embedding clusters and the true label.

    Each modality is discretised independently by :func:`cluster_features` (the paper's
    L2 normalise -> PCA(5) -> KMeans(20)); the joint counts (cluster 1, cluster 2, label) triples.
    PCA and k-means need every sample at once, so call this on the whole probe set. ``weights``
    reweight the samples of the joint only: the clustering is fitted once on the unweighted
    samples and shared by every weighted joint (the bootstrap replicates of ``ClusteredFastPID``).

    Args:
        features_1: ``(N, D1)`` embeddings of modality 1.
        features_2: ``(N, D2)`` embeddings of modality 2.
        target: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: Number of labels ``Ky``.
        num_clusters: k-means clusters per modality (``K1 = K2 = num_clusters``).
        num_components: PCA components per modality.
        seed: k-means seeding seed, shared by both modalities.
        validate_args: Check arguments and tensors.
        weights: Optional non-negative per-sample weights ``(N,)`` or ``(B, N)``.

    Returns:
        ``(num_clusters, num_clusters, num_classes)`` float64 counts summing to ``N`` (or to
        ``weights.sum(-1)``), with a leading ``(B,)`` for ``(B, N)`` weights.

    Raises:
        TypeError: If an input is not a tensor.
        ValueError: On an invalid argument or tensor (the message names it).
    """
    if validate_args:
        _joint_from_features_arg_validation(num_classes, num_clusters, num_components, seed)
        _joint_from_features_tensor_validation(features_1, features_2, target, num_classes)
        if weights is not None:
            _check_weights(weights, features_1)
    symbols_1 = cluster_features(features_1, num_clusters, num_components, seed)
    symbols_2 = cluster_features(features_2, num_clusters, num_components, seed)
    return _joint_update(
        _one_hot_symbols(symbols_1, num_clusters),
        _one_hot_symbols(symbols_2, num_clusters),
        target,
        num_classes,
        weights,
    )
