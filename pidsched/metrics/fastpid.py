"""torchmetrics wrappers that accumulate a joint distribution and decompose it with ``pid``.

``FastPID`` is pidsched's default probe: a fixed-size ``K x K x K`` sum state built from the two
modalities' logits (the ``MulticlassConfusionMatrix`` pattern), so memory does not grow with the
probe set and DDP sync is one all-reduce. ``ClusteredFastPID`` reproduces the released paper code's
embedding clustering, which needs every sample at once. With ``num_bootstrap=B`` both also
decompose ``B`` Poisson-bootstrap replicates of the joint (``result.replicates``,
``result.interval()``; docs/method.md, "Bootstrap intervals"). All mathematics lives in
:mod:`pidsched.functional`; these classes only hold state.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn
from typing_extensions import override

from pidsched._checks import check_int_at_least, check_num_bootstrap, check_tolerance_bits
from pidsched.functional.bootstrap import bootstrap_weights
from pidsched.functional.discretize import (
    Discretization,
    _joint_from_features_arg_validation,
    _joint_from_features_tensor_validation,
    _joint_from_logits_arg_validation,
    _joint_from_logits_tensor_validation,
    _joint_update,
    _posteriors_from_logits,
    joint_from_features,
)
from pidsched.functional.pid import BITS_FIELDS, PIDResult, pid

__all__ = ["ClusteredFastPID", "FastPID"]


class _PIDMetric(Metric):
    """Shared compute path: decompose the accumulated joint (and its bootstrap replicates), or
    warn and return NaN atoms; the bootstrap's reproducible draw counter."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    tol: float
    num_bootstrap: int
    seed: int

    def _set_tol(self, tol: float) -> None:
        check_tolerance_bits("tol", tol)
        self.tol = float(tol)

    def _set_bootstrap(self, num_bootstrap: int, seed: int) -> None:
        check_num_bootstrap(num_bootstrap, "bootstrap replicates; 0 turns the bootstrap off")
        check_int_at_least("seed", seed, 0, "the seed of the k-means seeding and bootstrap draws")
        self.num_bootstrap = num_bootstrap
        self.seed = seed
        # Draws made so far: names the next draw's random stream. A plain attribute, not a metric
        # state, so reset() keeps it and every probe resamples afresh.
        self._bootstrap_draws = 0

    def _draw_weights(self, num_samples: int, rank: int) -> Tensor:
        """The next ``(num_bootstrap, num_samples)`` Poisson(1) weights, on the metric's device."""
        weights = bootstrap_weights(
            self.num_bootstrap, num_samples, self.seed, rank, self._bootstrap_draws
        )
        self._bootstrap_draws += 1
        return weights.to(self.device)

    def bootstrap_state(self) -> dict[str, int]:
        """The bootstrap's random state (plain ints) for a checkpoint: the seed and the number of
        draws made. :meth:`load_bootstrap_state` of it makes a resumed run repeat the
        uninterrupted run's draws. The rank is not part of it (it is read at each draw), so under
        DDP rank 0's state restores every rank whose update count matched rank 0's."""
        return {"seed": self.seed, "draws": self._bootstrap_draws}

    def load_bootstrap_state(self, state: dict[str, int]) -> None:
        """Continue the draws of a :meth:`bootstrap_state`.

        Raises:
            ValueError: If ``state`` is not a dict of non-negative integers ``seed`` and ``draws``,
                or its seed is not this metric's.
        """
        if not isinstance(state, dict) or set(state) != {"seed", "draws"}:
            raise ValueError(
                "Expected argument `state` to be a dict with the keys 'seed' and 'draws', as "
                f"returned by bootstrap_state(), but got {state!r}."
            )
        check_int_at_least("state['draws']", int(state["draws"]), 0, "bootstrap draws made")
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"Expected argument `state` to come from a metric with seed={self.seed}, but it "
                f"has seed={state['seed']}; construct the metric with the checkpoint's seed."
            )
        self._bootstrap_draws = int(state["draws"])

    def _decompose(self, joint: Tensor, warm_start: PIDResult | None) -> PIDResult:
        """``pid(joint)``, or the no-samples result when ``joint`` holds no mass."""
        if not bool(joint.sum() > 0):
            return self._no_samples_result()
        return pid(joint, tol=self.tol, warm_start=warm_start)

    def _decompose_with_replicates(
        self, joint: Tensor, replicate_joints: Tensor, warm_start: PIDResult | None
    ) -> PIDResult:
        """Decompose ``joint`` (from ``warm_start``) and its ``(B, K1, K2, Ky)`` replicates, these
        as one batch started cold.

        A replicate's resampling noise moves ``p`` further than a probe moves from one epoch to
        the next: started from the previous optimum, the interior point needed more iterations or
        redid the start cold, and a warm compute of 64 replicates took 1.4-1.7x as long at 16-20
        classes (docs/benchmarks.md, "Warm starts"). A replicate that drew no samples at all
        (probability ``exp(-N)``) has NaN atoms, which
        :func:`~pidsched.functional.bootstrap_interval` ignores.
        """
        if not bool(joint.sum() > 0):
            return self._no_samples_result()
        result = pid(joint, tol=self.tol, warm_start=warm_start)
        solvable = replicate_joints.sum((1, 2, 3)) > 0
        replicates = pid(replicate_joints[solvable], tol=self.tol)
        if not bool(solvable.all()):
            replicates = _scatter_result(replicates, solvable)
        result.replicates = replicates
        return result

    def _no_samples_result(self) -> PIDResult:
        """Warn (on rank zero) and return NaN atoms: there is nothing to decompose."""
        rank_zero_warn(
            f"{type(self).__name__}.compute() found no accumulated samples and returns NaN "
            "atoms; call update(...) with at least one non-empty batch before compute().",
            UserWarning,
        )
        nan = {
            name: torch.full((), math.nan, dtype=torch.float64, device=self.device)
            for name in BITS_FIELDS
        }
        return PIDResult(**nan, iterations=0)


def _process_rank() -> int:
    """This process's global rank (0 outside ``torch.distributed``): it keeps the ranks' bootstrap
    draws independent."""
    distributed = torch.distributed
    return (
        distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0
    )


def _scatter_result(solved: PIDResult, solvable: Tensor) -> PIDResult:
    """``solved`` (the rows where ``solvable``) spread over ``solvable``'s batch, NaN elsewhere."""
    values = {}
    for name in (*BITS_FIELDS, "dual_1", "dual_2", "pair_mass"):
        part = getattr(solved, name)
        full = part.new_full((solvable.shape[0], *part.shape[1:]), math.nan)
        full[solvable] = part
        values[name] = full
    return PIDResult(**values, iterations=solved.iterations)


class FastPID(_PIDMetric):
    """Partial information decomposition of two modalities' predictions about the label (bits).

    Accumulates the joint count tensor of (modality 1 symbol, modality 2 symbol, label) over all
    updates in one ``(K, K, K)`` float64 sum state and decomposes it with
    :func:`pidsched.functional.pid` (exact, certified BROJA PID). With ``discretization="soft"``
    each sample adds ``softmax(logits_1) x softmax(logits_2) x onehot(target)``; with ``"hard"`` it
    adds one count at its argmax pair.

    As input to ``update``:

    - ``logits_1`` (:class:`~torch.Tensor`): ``(N, K)`` float logits of modality 1.
    - ``logits_2`` (:class:`~torch.Tensor`): ``(N, K)`` float logits of modality 2.
    - ``target`` (:class:`~torch.Tensor`): ``(N,)`` integer labels in ``[0, K)``.

    As output of ``compute``: a :class:`~pidsched.functional.PIDResult` of 0-d tensors (bits):
    ``unique_1, unique_2, redundancy, synergy, mutual_information`` and its certified ``gap``.
    With nothing accumulated it warns and returns NaN atoms.

    The last solution's dual variables are kept as a plain attribute (not a metric state, so
    ``reset()`` keeps it) and warm-start the next ``compute`` when ``warm_start=True``: a probe
    repeated every few epochs then costs a few Newton iterations.

    Bootstrap (``num_bootstrap = B > 0``): a streaming Poisson bootstrap. Every ``update`` draws
    one Poisson(1) multiplicity per sample and replicate and adds the weighted joints to a second
    sum state ``replicate_joint`` of shape ``(B, K, K, K)``, so memory stays fixed and DDP still
    syncs by summing. The draws come from a CPU generator named by ``(seed, rank, draw index)``
    (:func:`~pidsched.functional.bootstrap_weights`): independent across ranks, reproducible, the
    same on every device; :meth:`bootstrap_state` checkpoints the draw counter. ``compute`` then
    solves the full sample (warm-started) and the ``B`` replicates as one batch (cold) and the
    result's ``replicates`` holds the ``(B,)`` replicate atoms, from which
    ``result.interval(level)`` gives a bias-aware interval. The state is ``(B + 1) K^3`` float64
    (8 (B + 1) K^3 bytes) and an update costs ``O((B + 1) N K^2)``.

    Args:
        num_classes: Number of classes ``K`` of the label and of both modality heads.
        discretization: "soft" (posterior-weighted counts) or "hard" (argmax counts).
        warm_start: Start each solve from the previous compute's dual variables.
        tol: Certified bound (bits) on the error of every atom, passed to
            :func:`~pidsched.functional.pid`.
        num_bootstrap: Number of bootstrap replicates ``B`` (0: none; 200 for a 90 % interval).
        seed: Seed of the bootstrap draws.
        validate_args: Check arguments and inputs (a device sync per update on CUDA).
        kwargs: Passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``...).

    Raises:
        ValueError: If ``num_classes`` is not an integer >= 2, ``discretization`` is unknown,
            ``warm_start`` is not a bool, ``tol`` is not in (0, 1), ``num_bootstrap`` is not 0
            or an integer >= 2, or ``seed`` is not a non-negative integer.

    Example::

        >>> import torch
        >>> from pidsched import FastPID
        >>> metric = FastPID(num_classes=2, discretization="hard")
        >>> bits = torch.tensor([0, 0, 1, 1])
        >>> logits_1 = 9.0 * torch.nn.functional.one_hot(bits, 2).float()
        >>> logits_2 = 9.0 * torch.nn.functional.one_hot(bits.roll(1), 2).float()
        >>> metric.update(logits_1, logits_2, target=bits ^ bits.roll(1))
        >>> round(metric.compute().synergy.item(), 6)
        1.0
    """

    joint: Tensor
    replicate_joint: Tensor

    def __init__(
        self,
        num_classes: int,
        discretization: Discretization = "soft",
        warm_start: bool = True,
        tol: float = 1e-7,
        num_bootstrap: int = 0,
        seed: int = 0,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_tol(tol)
        self._set_bootstrap(num_bootstrap, seed)
        if validate_args:
            _joint_from_logits_arg_validation(num_classes, discretization)
            if not isinstance(warm_start, bool):
                raise ValueError(
                    f"Expected argument `warm_start` to be a bool, got {warm_start!r}."
                )
        self.num_classes = num_classes
        self.discretization = discretization
        self.warm_start = warm_start
        self.validate_args = validate_args
        self._last_result: PIDResult | None = None
        shape = (num_classes, num_classes, num_classes)
        self.add_state("joint", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        if num_bootstrap > 0:
            self.add_state(
                "replicate_joint",
                torch.zeros((num_bootstrap, *shape), dtype=torch.float64),
                dist_reduce_fx="sum",
            )

    @override
    def update(self, logits_1: Tensor, logits_2: Tensor, target: Tensor) -> None:
        """Add a batch's (modality 1, modality 2, label) counts to the joint state, and its
        Poisson-weighted counts to the replicate states."""
        if self.validate_args:
            _joint_from_logits_tensor_validation(
                logits_1, logits_2, target, self.num_classes, source_classes=self.num_classes
            )
        posteriors_1 = _posteriors_from_logits(logits_1, self.discretization)
        posteriors_2 = _posteriors_from_logits(logits_2, self.discretization)
        self.joint += _joint_update(posteriors_1, posteriors_2, target, self.num_classes)
        if self.num_bootstrap > 0:
            weights = self._draw_weights(target.shape[0], _process_rank())
            self.replicate_joint += _joint_update(
                posteriors_1, posteriors_2, target, self.num_classes, weights
            )

    def warm_start_state(self) -> dict[str, Tensor] | None:
        """The last solution's duals and pair masses as CPU tensors (None before a compute), so a
        checkpoint can carry the warm start and a resumed run solves exactly as the first did."""
        last = self._last_result
        if last is None:
            return None
        return {
            name: getattr(last, name).detach().cpu() for name in ("dual_1", "dual_2", "pair_mass")
        }

    def load_warm_start_state(self, state: dict[str, Tensor] | None) -> None:
        """Start the next compute from a :meth:`warm_start_state` (None: a cold start)."""
        if state is None:
            self._last_result = None
            return
        nan = torch.full((), math.nan, dtype=torch.float64)
        self._last_result = PIDResult(
            **dict.fromkeys(BITS_FIELDS, nan), iterations=0, **{k: state[k] for k in state}
        )

    @override
    def compute(self) -> PIDResult:
        """Decompose the accumulated (and, under DDP, all-reduced) joint and its replicates."""
        warm_start = self._last_result if self.warm_start else None
        if self.num_bootstrap == 0:
            result = self._decompose(self.joint, warm_start)
        else:
            result = self._decompose_with_replicates(self.joint, self.replicate_joint, warm_start)
        if result.dual_1 is not None:
            self._last_result = replace(result, replicates=None)
        return result


class ClusteredFastPID(_PIDMetric):
    """PID of two modalities' embeddings discretised as in the released paper code (bits).

    Each modality's features are L2 normalised, projected by PCA(``num_components``) and clustered
    by a deterministic k-means(``num_clusters``); the joint counts (cluster 1, cluster 2, label)
    and is decomposed with :func:`pidsched.functional.pid` (docs/method.md, "The released code").

    Unlike :class:`FastPID`, the states are ``"cat"`` lists of all features and targets: PCA and
    k-means must see the whole probe set at once, and no fixed-size sufficient statistic gives
    their result. Memory therefore grows with the probe set (``N x (D1 + D2)`` values), and DDP
    sync gathers every rank's samples (rank 0's first), so every rank clusters the same data.
    The clustering is refitted at every compute, so cluster ids are not comparable between
    computes and there is no warm start.

    Bootstrap (``num_bootstrap = B > 0``): the clustering is fitted once, on the full sample, and
    reused for the ``B`` Poisson(1)-reweighted joints, so the interval reflects the sampling
    noise of the counts given the clusters, not that of the clustering. The weights are drawn at
    compute, ``(B, N)`` over the gathered samples, from a generator named by ``(seed, compute
    index)`` only (:func:`~pidsched.functional.bootstrap_weights`): after the DDP gather every
    rank holds the same samples in the same order, so every rank draws the same weights and
    returns the same interval, a single process fed the samples in gathered order reproduces it,
    and nothing is added to the per-sample states. :meth:`bootstrap_state` checkpoints the
    compute counter. The ``B + 1`` joints are solved as one batch.

    As input to ``update``:

    - ``features_1`` (:class:`~torch.Tensor`): ``(N, D1)`` float embeddings of modality 1.
    - ``features_2`` (:class:`~torch.Tensor`): ``(N, D2)`` float embeddings of modality 2.
    - ``target`` (:class:`~torch.Tensor`): ``(N,)`` integer labels in ``[0, num_classes)``.

    As output of ``compute``: a :class:`~pidsched.functional.PIDResult` of 0-d tensors (bits). With
    nothing accumulated it warns and returns NaN atoms.

    Args:
        num_classes: Number of label classes.
        num_clusters: k-means clusters per modality (the paper uses 20).
        num_components: PCA components per modality (the paper uses 5).
        seed: Seed of the k-means++ seeding and of the bootstrap draws.
        tol: Certified bound (bits) on the error of every atom, passed to
            :func:`~pidsched.functional.pid`.
        num_bootstrap: Number of bootstrap replicates ``B`` (0: none; 200 for a 90 % interval).
        validate_args: Check arguments and inputs.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: If an argument is not an integer in its allowed range.
    """

    features_1: list[Tensor] | Tensor
    features_2: list[Tensor] | Tensor
    target: list[Tensor] | Tensor

    def __init__(
        self,
        num_classes: int,
        num_clusters: int = 20,
        num_components: int = 5,
        seed: int = 0,
        tol: float = 1e-7,
        num_bootstrap: int = 0,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_tol(tol)
        self._set_bootstrap(num_bootstrap, seed)
        if validate_args:
            _joint_from_features_arg_validation(num_classes, num_clusters, num_components, seed)
        self.num_classes = num_classes
        self.num_clusters = num_clusters
        self.num_components = num_components
        self.validate_args = validate_args
        self.add_state("features_1", [], dist_reduce_fx="cat")
        self.add_state("features_2", [], dist_reduce_fx="cat")
        self.add_state("target", [], dist_reduce_fx="cat")

    @override
    def update(self, features_1: Tensor, features_2: Tensor, target: Tensor) -> None:
        """Store a batch of both modalities' features and its labels."""
        if self.validate_args:
            _joint_from_features_tensor_validation(features_1, features_2, target, self.num_classes)
            self._check_feature_width("features_1", features_1, self.features_1)
            self._check_feature_width("features_2", features_2, self.features_2)
        # Detached: a stored tensor would otherwise keep its batch's autograd graph alive.
        self.features_1.append(features_1.detach())
        self.features_2.append(features_2.detach())
        self.target.append(target.detach())

    @staticmethod
    def _check_feature_width(name: str, features: Tensor, stored: list[Tensor]) -> None:
        if stored and features.shape[1] != stored[0].shape[1]:
            raise ValueError(
                f"Expected `{name}` to have D={stored[0].shape[1]} columns like the earlier "
                f"batches, but got {features.shape[1]}; pass the same embedding every update or "
                "reset() the metric first."
            )

    @override
    def compute(self) -> PIDResult:
        """Cluster all accumulated (under DDP, gathered) features and decompose the joint."""
        # A list before sync (one entry per update), a tensor after a DDP gather.
        target = dim_zero_cat(self.target) if len(self.target) else None
        if target is None or target.numel() == 0:
            return self._no_samples_result()
        weights = None
        if self.num_bootstrap > 0:
            # Row 0 counts every sample once: integer weights keep its joint exact.
            draws = self._draw_weights(target.shape[0], rank=0).to(target.device)
            weights = torch.cat([torch.ones_like(draws[:1]), draws])
        joints = joint_from_features(
            dim_zero_cat(self.features_1),
            dim_zero_cat(self.features_2),
            target,
            self.num_classes,
            self.num_clusters,
            self.num_components,
            self.seed,
            validate_args=False,
            weights=weights,
        )
        if weights is None:
            return self._decompose(joints, None)
        return self._decompose_with_replicates(joints[0], joints[1:], None)
