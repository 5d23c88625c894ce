"""PID of M >= 2 modalities about the label, from bivariate PIDs (pure PyTorch).

Two modalities are one bivariate PID. Beyond two, each modality m is measured against the rest
(one-vs-rest): the "rest" of logits is the log of the others' averaged softmax prediction (logits
whose softmax is that average), the rest of features is the others' features side by side. The M
bivariate results then combine into one :class:`MultimodalPIDResult`: ``unique[m]`` is m's
uniqueness against the rest, redundancy, synergy and mutual information are the means over m,
and the gap is the largest of the M gaps (a bound on every combined atom, since a mean of values
each within ``gap_m`` of the truth is within ``max gap_m``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pidsched.functional.bootstrap import check_level
from pidsched.functional.pid import PIDResult

__all__ = [
    "MultimodalPIDResult",
    "combine_pair_results",
    "multimodal_bootstrap_interval",
    "one_vs_rest_inputs",
    "pair_count",
]

# The combined atoms whose value is one tensor (the per-modality ones are dicts).
SCALAR_ATOMS = ("redundancy", "synergy", "mutual_information")


@dataclass(frozen=True)
class MultimodalPIDResult:
    """PID of M modalities about the label; every tensor has one batch shape (bits).

    Attributes:
        unique: ``{m: U_m}``: for two modalities the bivariate uniquenesses, beyond two the
            uniqueness of m against the rest.
        redundancy: R (beyond two modalities the mean over the one-vs-rest PIDs).
        synergy: S (ditto).
        mutual_information: I(all; Y) for two modalities, the mean of I(m, rest; Y) beyond.
        mutual_information_per_modality: ``{m: I(X_m; Y)}``.
        gap: certified bound on the error of every atom (largest of the bivariate gaps).
        replicates: the same quantities for each bootstrap replicate, batch shape ``(B,)``
            (None without bootstrap).
    """

    unique: dict[str, Tensor]
    redundancy: Tensor
    synergy: Tensor
    mutual_information: Tensor
    mutual_information_per_modality: dict[str, Tensor]
    gap: Tensor
    replicates: MultimodalPIDResult | None = None

    def is_certified(self, tol: float) -> bool:
        """Whether every atom is finite and the gap is finite and at most ``tol`` bits."""
        values = [
            *self.unique.values(),
            *self.mutual_information_per_modality.values(),
            *(getattr(self, atom) for atom in SCALAR_ATOMS),
        ]
        atoms_finite = all(bool(torch.isfinite(value).all()) for value in values)
        gap_ok = bool(torch.isfinite(self.gap).all()) and bool((self.gap <= tol).all())
        return atoms_finite and gap_ok

    def interval(self, level: float = 0.9) -> tuple[MultimodalPIDResult, MultimodalPIDResult]:
        """Bootstrap interval ``(low, high)`` at nominal coverage ``level``; see
        :func:`multimodal_bootstrap_interval`."""
        return multimodal_bootstrap_interval(self, level)


def pair_count(num_modalities: int) -> int:
    """Bivariate PIDs measured: one for two modalities, one per modality (one-vs-rest) beyond."""
    return 1 if num_modalities == 2 else num_modalities


def one_vs_rest_inputs(
    values: Mapping[str, Tensor], names: Sequence[str], kind: str
) -> list[tuple[Tensor, Tensor]]:
    """The bivariate PID inputs: ``[(x_1, x_2)]`` for two modalities, else ``(m, rest)`` per m.

    Args:
        values: ``{m: (N, K) logits}`` (``kind="logits"``) or ``{m: (N, D_m) features}``.
        names: the modality names in order (at least two).
        kind: ``"logits"`` (rest = log of the others' mean softmax, ``(N, K)`` float) or
            ``"features"`` (rest = the others' features concatenated, ``(N, sum D)``).
    """
    if len(names) == 2:
        return [(values[names[0]], values[names[1]])]
    return [(values[name], _rest(values, names, name, kind)) for name in names]


def _rest(values: Mapping[str, Tensor], names: Sequence[str], name: str, kind: str) -> Tensor:
    others = [values[other] for other in names if other != name]
    if kind == "features":
        return torch.cat(others, dim=-1)
    log_probs = torch.stack([other.float().log_softmax(dim=-1) for other in others])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(others))


def combine_pair_results(
    names: Sequence[str],
    results: Sequence[PIDResult],
    replicates: MultimodalPIDResult | None = None,
) -> MultimodalPIDResult:
    """Combine the bivariate results of :func:`one_vs_rest_inputs`' pairs (same order).

    Works for any common batch shape (0-d for a probe, ``(B,)`` for bootstrap replicates).
    """
    if len(results) != pair_count(len(names)):
        raise ValueError(
            f"expected {pair_count(len(names))} bivariate results for {len(names)} modalities, "
            f"got {len(results)}."
        )
    if len(names) == 2:
        (result,) = results
        return MultimodalPIDResult(
            unique={names[0]: result.unique_1, names[1]: result.unique_2},
            redundancy=result.redundancy,
            synergy=result.synergy,
            mutual_information=result.mutual_information,
            mutual_information_per_modality={
                names[0]: result.mutual_information_1,
                names[1]: result.mutual_information_2,
            },
            gap=result.gap,
            replicates=replicates,
        )

    def mean(atom: str) -> Tensor:
        return torch.stack([getattr(result, atom) for result in results]).mean(dim=0)

    return MultimodalPIDResult(
        unique={name: r.unique_1 for name, r in zip(names, results, strict=True)},
        redundancy=mean("redundancy"),
        synergy=mean("synergy"),
        mutual_information=mean("mutual_information"),
        mutual_information_per_modality={
            name: r.mutual_information_1 for name, r in zip(names, results, strict=True)
        },
        gap=torch.stack([result.gap for result in results]).amax(dim=0),
        replicates=replicates,
    )


def multimodal_bootstrap_interval(
    estimate: MultimodalPIDResult, level: float
) -> tuple[MultimodalPIDResult, MultimodalPIDResult]:
    """Bias-aware bootstrap interval ``(low, high)`` of every atom of ``estimate`` (0-d, bits).

    The same interval as :func:`pidsched.functional.bootstrap_interval` gives a bivariate PID:
    ``low = max(0, 2 theta - q_hi)``, ``high = max(0, 2 theta - q_lo)`` with ``theta`` the
    estimate and ``q_lo, q_hi`` the ``(1 -+ level) / 2`` quantiles of its ``(B,)`` replicates
    (NaN replicates ignored); ``gap`` is the estimate's.

    Raises:
        ValueError: ``estimate`` has no replicates, or ``level`` is not in (0, 1).
    """
    check_level(level)
    replicates = estimate.replicates
    if replicates is None:
        raise ValueError(
            "interval() needs bootstrap replicates: build the pair metrics with num_bootstrap > 0."
        )
    tail = (1.0 - level) / 2.0

    def ends(theta: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        probabilities = torch.tensor([1.0 - tail, tail], dtype=theta.dtype, device=theta.device)
        quantiles = torch.nanquantile(values.to(theta.dtype), probabilities, dim=0)
        return (2 * theta - quantiles[0]).clamp_min(0.0), (2 * theta - quantiles[1]).clamp_min(0.0)

    def per_modality(field: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        thetas, values = getattr(estimate, field), getattr(replicates, field)
        pairs = {name: ends(theta, values[name]) for name, theta in thetas.items()}
        return {n: p[0] for n, p in pairs.items()}, {n: p[1] for n, p in pairs.items()}

    unique = per_modality("unique")
    informations = per_modality("mutual_information_per_modality")
    scalars = {
        atom: ends(getattr(estimate, atom), getattr(replicates, atom)) for atom in SCALAR_ATOMS
    }
    return tuple(
        MultimodalPIDResult(
            unique=unique[end],
            mutual_information_per_modality=informations[end],
            gap=estimate.gap,
            **{atom: bounds[end] for atom, bounds in scalars.items()},
        )
        for end in (0, 1)
    )
