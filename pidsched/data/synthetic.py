"""Synthetic two-modality classification tasks with known information structure.

Two generators, each a small frozen dataclass, and one DataModule that serves either (or any
task of yours that has the members of :class:`SyntheticTask`):

* :class:`PIDStructureTask` - latent bits carry **unique**, **redundant** and **synergistic**
  information about the label in chosen amounts (the RDNUNQXOR construction, generalised).
* :class:`CompetitionTask` - a **fast** modality whose signal is learned in a few steps and a
  **slow** modality whose complementary signal takes much longer, so plain joint training
  leans on the fast one and leaves the slow encoder under-trained (modality competition).

Each task states its ground-truth decomposition in bits (:meth:`ground_truth`), exact in the
noiseless limit, so that PID estimates on trained models can be read against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from pidsched.data.in_memory import (
    InMemoryMultimodalDataModule,
    MultimodalTensorDataset,
    check_split_fractions,
    stratified_split,
)


@runtime_checkable
class SyntheticTask(Protocol):
    """What :class:`SyntheticDataModule` needs from a task: names, shapes, classes, a sampler.

    Attributes:
        modality_names: the modality names, in order.
        input_shapes: per-sample shape of each modality, ``{name: (D_m,)}`` (vector modalities).
        num_classes: K; labels are ``0..K-1``.
    """

    modality_names: Sequence[str]
    input_shapes: Mapping[str, tuple[int, ...]]
    num_classes: int

    def sample(
        self, num_samples: int, generator: torch.Generator
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``({name: (N, *input_shapes[name])}, target (N,) int64 in 0..K-1)``."""
        ...


def _orthonormal_columns(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """A random ``(rows, cols)`` matrix with orthonormal columns (``rows >= cols``)."""
    gaussian = torch.randn(rows, cols, generator=generator)
    return torch.linalg.qr(gaussian).Q


def _bits_of(values: Tensor, num_bits: int) -> Tensor:
    """Little-endian bits ``(N, num_bits)`` of non-negative integers ``(N,)``."""
    return (values[:, None] >> torch.arange(num_bits)) & 1


def _value_of(bits: Tensor) -> Tensor:
    """Integers ``(N,)`` from little-endian bits ``(N, B)`` (inverse of :func:`_bits_of`)."""
    return (bits << torch.arange(bits.shape[1])).sum(dim=1)


@dataclass(frozen=True)
class PIDStructureTask:
    """Label built from latent bits whose information about it is unique, redundant or synergistic.

    Latent fair bits: ``r`` (``redundant_bits``), ``u1`` and ``u2`` (``unique_bits`` each),
    ``a`` and ``c`` (``synergy_bits`` each). Modality ``x1`` observes ``(r, u1, a)``, modality
    ``x2`` observes ``(r, u2, c)``, and the label is the integer with bits
    ``(a xor c, u2, u1, r)`` from least to most significant - the RDNUNQXOR construction of
    the PID literature. Each observed bit ``b`` is embedded as
    ``signal_scale * (2b - 1)`` along its own orthonormal direction of a ``feature_dim``-dim
    space, plus Gaussian noise of std ``noise_std``.

    Ground truth (noiseless limit, bits): ``U1 = U2 = unique_bits``, ``R = redundant_bits``,
    ``S = synergy_bits``, ``I(X1,X2;Y) = R + U1 + U2 + S``; ``num_classes = 2 ** I``.

    Args:
        redundant_bits: bits both modalities see.
        unique_bits: bits each modality alone sees.
        synergy_bits: bits whose XOR across modalities enters the label.
        feature_dim: dimension of each modality's vector; at least its number of latent bits.
        signal_scale: amplitude of a latent bit in feature space.
        noise_std: std of the isotropic Gaussian noise added to each feature.

    Example::

        task = PIDStructureTask(redundant_bits=1, unique_bits=1, synergy_bits=1)
        inputs, target = task.sample(1000, torch.Generator().manual_seed(0))
        inputs["x1"].shape, target.max()  # (torch.Size([1000, 16]), tensor(15))
    """

    redundant_bits: int = 1
    unique_bits: int = 1
    synergy_bits: int = 1
    feature_dim: int = 16
    signal_scale: float = 1.0
    noise_std: float = 0.3

    modality_names = ("x1", "x2")

    def __post_init__(self) -> None:
        counts = {
            "redundant_bits": self.redundant_bits,
            "unique_bits": self.unique_bits,
            "synergy_bits": self.synergy_bits,
        }
        integers = all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values())
        if not integers or any(v < 0 for v in counts.values()) or sum(counts.values()) == 0:
            raise ValueError(f"{counts} must be non-negative integers, at least one positive.")
        if self.feature_dim < self.bits_per_modality:
            raise ValueError(
                f"feature_dim={self.feature_dim} is smaller than the {self.bits_per_modality} "
                "latent bits each modality embeds; raise feature_dim."
            )
        if self.signal_scale <= 0 or self.noise_std < 0:
            raise ValueError(
                f"signal_scale={self.signal_scale} must be > 0 and noise_std={self.noise_std} >= 0."
            )

    @property
    def bits_per_modality(self) -> int:
        """Latent bits each modality embeds: redundant + unique + synergy."""
        return self.redundant_bits + self.unique_bits + self.synergy_bits

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """``(feature_dim,)`` for each modality."""
        return dict.fromkeys(self.modality_names, (self.feature_dim,))

    @property
    def num_classes(self) -> int:
        """``2 ** (R + 2 U + S)`` label values."""
        return 2 ** (self.redundant_bits + 2 * self.unique_bits + self.synergy_bits)

    def ground_truth(self) -> dict:
        """The decomposition in bits, shaped like a probe-history record's PID fields."""
        total = self.redundant_bits + 2 * self.unique_bits + self.synergy_bits
        return {
            "unique": {"x1": float(self.unique_bits), "x2": float(self.unique_bits)},
            "redundancy": float(self.redundant_bits),
            "synergy": float(self.synergy_bits),
            "mutual_information": float(total),
        }

    def sample(
        self, num_samples: int, generator: torch.Generator
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Draw embeddings, then ``num_samples`` labelled samples.

        Returns:
            ``({"x1": (N, feature_dim), "x2": (N, feature_dim)}, target (N,) int64)``.
        """
        r, u, s = self.redundant_bits, self.unique_bits, self.synergy_bits
        embeddings = [
            _orthonormal_columns(self.feature_dim, self.bits_per_modality, generator)
            for _ in self.modality_names
        ]

        def fair_bits(width: int) -> Tensor:
            return torch.randint(0, 2, (num_samples, width), generator=generator)

        shared, unique_1, unique_2 = fair_bits(r), fair_bits(u), fair_bits(u)
        syn_1, syn_2 = fair_bits(s), fair_bits(s)
        target = _value_of(torch.cat([syn_1 ^ syn_2, unique_2, unique_1, shared], dim=1))
        observed = [
            torch.cat([shared, unique_1, syn_1], dim=1),
            torch.cat([shared, unique_2, syn_2], dim=1),
        ]
        inputs = {}
        for name, bits, embedding in zip(self.modality_names, observed, embeddings, strict=True):
            signs = 2.0 * bits.float() - 1.0
            noise = torch.randn(num_samples, self.feature_dim, generator=generator)
            inputs[name] = self.signal_scale * signs @ embedding.T + self.noise_std * noise
        return inputs, target


@dataclass(frozen=True)
class CompetitionTask:
    """A fast, partly informative modality against a slow, fully informative one.

    The label ``y`` is uniform over ``num_classes``. Each class has a random unit prototype per
    modality (``P[y]`` for fast, ``Q[y]`` for slow), and every feature carries unit-variance
    Gaussian noise:

    * ``fast = fast_scale * P[y] + noise`` on a random ``fast_coverage`` share of the samples,
      pure noise on the rest: a large, linearly readable signal that a network picks up within
      a few steps, but that says nothing about the uncovered samples.
    * ``slow = slow_scale * sign * Q[y] + noise`` with a fair random ``sign``: each class is a
      pair of opposite clusters, so the class means are equal and no linear read-out of the
      raw input works; an encoder must first learn ``|<Q[y], x>|``-like features, which takes
      many more steps. The slow modality alone can label every sample.

    Joint training of a fused classifier fits the fast signal first; the fused loss is then
    small on the covered samples and the slow encoder receives gradient mainly from the
    uncovered ``1 - fast_coverage`` share, so it ends far behind the same encoder trained alone
    - the modality competition the two-stage schedule is built to prevent.

    Ground truth (noiseless limit, bits, ``H = log2(num_classes)``): ``R = fast_coverage * H``,
    ``U_slow = (1 - fast_coverage) * H``, ``U_fast = 0``, ``S = 0``, ``I(X1,X2;Y) = H``.

    Args:
        num_classes: label values, at least 2.
        feature_dim: dimension of each modality's vector.
        fast_coverage: share of samples on which the fast modality shows its signal, in (0, 1].
        fast_scale: amplitude of the fast prototype.
        slow_scale: amplitude of the slow prototype pair.

    Example::

        task = CompetitionTask()
        inputs, target = task.sample(600, torch.Generator().manual_seed(0))
        sorted(inputs), inputs["slow"].shape  # (['fast', 'slow'], torch.Size([600, 32]))
    """

    num_classes: int = 8
    feature_dim: int = 32
    fast_coverage: float = 0.9
    fast_scale: float = 5.0
    slow_scale: float = 3.0

    modality_names = ("fast", "slow")

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes} must be at least 2.")
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim={self.feature_dim} must be a positive integer.")
        if not 0.0 < self.fast_coverage <= 1.0:
            raise ValueError(f"fast_coverage={self.fast_coverage} must lie in (0, 1].")
        if self.fast_scale <= 0 or self.slow_scale <= 0:
            raise ValueError(
                f"fast_scale={self.fast_scale} and slow_scale={self.slow_scale} must be > 0."
            )

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """``(feature_dim,)`` for each modality."""
        return dict.fromkeys(self.modality_names, (self.feature_dim,))

    def ground_truth(self) -> dict:
        """The decomposition in bits, shaped like a probe-history record's PID fields."""
        entropy = math.log2(self.num_classes)
        return {
            "unique": {"fast": 0.0, "slow": (1.0 - self.fast_coverage) * entropy},
            "redundancy": self.fast_coverage * entropy,
            "synergy": 0.0,
            "mutual_information": entropy,
        }

    def sample(
        self, num_samples: int, generator: torch.Generator
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Draw prototypes, then ``num_samples`` labelled samples.

        Returns:
            ``({"fast": (N, feature_dim), "slow": (N, feature_dim)}, target (N,) int64)``.
        """
        k, d = self.num_classes, self.feature_dim
        fast_prototypes = F.normalize(torch.randn(k, d, generator=generator), dim=1)
        slow_prototypes = F.normalize(torch.randn(k, d, generator=generator), dim=1)
        target = torch.randint(0, k, (num_samples,), generator=generator)
        covered = torch.rand(num_samples, 1, generator=generator) < self.fast_coverage
        sign = torch.randint(0, 2, (num_samples, 1), generator=generator).float() * 2.0 - 1.0
        fast = self.fast_scale * fast_prototypes[target] * covered
        slow = self.slow_scale * sign * slow_prototypes[target]
        return {
            "fast": fast + torch.randn(num_samples, d, generator=generator),
            "slow": slow + torch.randn(num_samples, d, generator=generator),
        }, target


class SyntheticDataModule(InMemoryMultimodalDataModule):
    """Serves a synthetic task with a fixed, stratified train/val/test split.

    All samples are drawn once from ``seed`` (which also fixes the split), so every run and
    every DDP rank sees the same data whatever the training seed.

    Args:
        task: the generator: :class:`CompetitionTask` (default), :class:`PIDStructureTask` or
            any object with the members of :class:`SyntheticTask`.
        num_samples: samples drawn in total, before the split.
        val_fraction: share of each class held out for validation (model selection, probes).
        test_fraction: share of each class held out for the final test.
        seed: seed of the data and of the split.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.

    Example::

        dm = SyntheticDataModule(CompetitionTask(), num_samples=1200)
        dm.setup()
        inputs, target = next(iter(dm.train_dataloader()))
    """

    def __init__(
        self,
        task: SyntheticTask | None = None,
        num_samples: int = 6000,
        val_fraction: float = 1 / 6,
        test_fraction: float = 1 / 6,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        task = CompetitionTask() if task is None else task
        if not isinstance(task, SyntheticTask):
            raise TypeError(
                f"task={task!r} must have modality_names, input_shapes, num_classes and "
                "sample(num_samples, generator) (pidsched.data.SyntheticTask), like "
                "CompetitionTask and PIDStructureTask."
            )
        if num_samples < 10 * task.num_classes:
            raise ValueError(
                f"num_samples={num_samples} leaves fewer than 10 samples per class for "
                f"{task.num_classes} classes; raise num_samples."
            )
        self.task = task
        self.num_samples = num_samples
        self.fractions = (val_fraction, test_fraction)
        check_split_fractions(self.fractions)
        self.seed = seed
        self.modality_names = tuple(task.modality_names)
        self.modality_kinds = dict.fromkeys(self.modality_names, "vector")
        self.input_shapes = {name: tuple(task.input_shapes[name]) for name in self.modality_names}
        self.num_classes = task.num_classes

    def _check_sample(self, inputs: Mapping[str, Tensor], target: Tensor) -> None:
        shapes = {name: tuple(x.shape) for name, x in inputs.items()}
        expected = {
            name: (self.num_samples, *self.input_shapes[name]) for name in self.modality_names
        }
        labels_ok = (
            target.shape == (self.num_samples,)
            and not target.is_floating_point()
            and int(target.min()) >= 0
            and int(target.max()) < self.num_classes
        )
        if shapes != expected or not labels_ok:
            raise ValueError(
                f"{type(self.task).__name__}.sample({self.num_samples}, generator) returned inputs "
                f"shaped {shapes} and target {tuple(target.shape)} {target.dtype}; expected "
                f"{expected} and ({self.num_samples},) integers in [0, {self.num_classes})."
            )

    @override
    def build_splits(self) -> dict[str, MultimodalTensorDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        inputs, target = self.task.sample(self.num_samples, generator)
        self._check_sample(inputs, target)
        parts = stratified_split(target, self.fractions, self.seed)
        return {
            split: MultimodalTensorDataset({n: x[idx] for n, x in inputs.items()}, target[idx])
            for split, idx in zip(("train", "val", "test"), parts, strict=True)
        }
