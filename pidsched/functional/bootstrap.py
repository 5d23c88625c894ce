"""Bootstrap uncertainty of PID atoms: reproducible Poisson weights and bias-aware intervals.

A probe estimates the atoms from a few hundred samples, so their sampling error is orders of
magnitude above the solver's certified gap (1e-7 bits). The Poisson bootstrap (Hanley and
MacGibbon 2006) resamples by giving every sample an independent Poisson(1) multiplicity per
replicate, which needs no second pass over the data and sums across batches and processes: the
metrics accumulate one weighted joint per replicate (:func:`pidsched.functional.joint_from_logits`
with ``weights``) and decompose all of them with one batched :func:`pidsched.functional.pid`.

The interval (:func:`bootstrap_interval`) is a widened basic (reverse-percentile) interval,
``[theta - c (q_hi - theta), theta - c (q_lo - theta)]`` with ``c = 1.5``, clamped at 0. Plug-in
PID is biased upwards, and the replicates are biased by about as much again above the estimate,
so reflecting their quantiles about the estimate removes the bias to first order, where the
percentile interval doubles it; every atom is non-negative, so an interval reaching below 0
starts at exactly 0. At a few hundred samples the bootstrap still underestimates the spread (by
15-17 %) and the bias (2 to 3.5 times) of R and S, and the plain basic interval covers only
73-82 %; ``c = 1.5`` is the smallest widening tried that meets 85 % on
``benchmarks/coverage.py`` at 300 samples, an empirical calibration that makes the interval
conservative (98-99 %) at 1,000. See docs/method.md, "Bootstrap intervals", for the coverage.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from pidsched._checks import check_int_at_least
from pidsched.functional.pid import INFORMATION_FIELDS, PIDResult

__all__ = ["bootstrap_interval", "bootstrap_weights"]

# How far beyond the reflected bootstrap quantiles the interval reaches (see the module docstring).
INFLATION = 1.5


def bootstrap_weights(num_bootstrap: int, num_samples: int, seed: int, *stream: int) -> Tensor:
    """Poisson(1) multiplicities of ``num_samples`` samples in ``num_bootstrap`` replicates.

    The draws come from a CPU generator seeded by a hash of ``(seed, *stream)``, so they depend
    only on these integers (not on the device or the global RNG), and different streams (a rank,
    an update counter) are independent in practice.

    Args:
        num_bootstrap: Number of replicates ``B``.
        num_samples: Number of samples ``N``.
        seed: The user's seed.
        stream: Further integers naming the draw (e.g. the process rank and the update index).

    Returns:
        ``(B, N)`` float64 non-negative integer weights on the CPU.

    Raises:
        ValueError: an argument is not a non-negative integer (a float seed was truncated: 1.5
            drew what 1 draws).
    """
    check_int_at_least("num_bootstrap", num_bootstrap, 0, "bootstrap replicates")
    check_int_at_least("num_samples", num_samples, 0, "samples to weigh")
    for name, part in (("seed", seed), *((f"stream[{i}]", p) for i, p in enumerate(stream))):
        check_int_at_least(name, part, 0, "an integer naming the random draw")
    key = ":".join(str(part) for part in (seed, *stream)).encode()
    generator = torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)
    )
    rates = torch.ones(num_bootstrap, num_samples, dtype=torch.float64)
    return torch.poisson(rates, generator=generator)


def check_level(level: object) -> None:
    """Raise ``ValueError`` unless ``level`` is a number in (0, 1)."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(
            f"Expected argument `level` (the nominal coverage of the interval) to be a number in "
            f"(0, 1), for example 0.9, but got {level!r}."
        )


def bootstrap_interval(
    estimate: PIDResult, replicates: PIDResult, level: float = 0.9
) -> tuple[PIDResult, PIDResult]:
    """Bias-aware bootstrap interval of every information field of a PID estimate (bits).

    For each field, ``low = max(0, theta - c (q_hi - theta))`` and ``high = max(0, theta - c (q_lo -
    theta))``, with ``theta`` the estimate, ``q_lo, q_hi`` the ``(1 -+ level) / 2`` quantiles of
    the replicates and ``c = INFLATION = 1.5``: the basic interval, widened (see the module
    docstring for why, and docs/method.md for its coverage).

    Args:
        estimate: The full-sample result, batch shape ``S`` (0-d for one probe).
        replicates: The bootstrap replicates' results, batch shape ``(B, *S)``, ``B >= 2``;
            NaN replicates (a replicate that drew no sample) are ignored.
        level: Nominal coverage in (0, 1).

    Returns:
        ``(low, high)``: two :class:`PIDResult` of batch shape ``S`` holding the interval ends of
        ``unique_1 ... mutual_information_2``; ``gap`` and ``iterations`` are the estimate's and
        there are no dual variables.

    Raises:
        ValueError: If ``level`` is not in (0, 1), ``replicates`` is ``None`` or its batch shape is
            not ``(B, *S)`` with ``B >= 2``.
    """
    check_level(level)
    if replicates is None:
        raise ValueError(
            "Expected argument `replicates` to be the bootstrap replicates' PIDResult, but got "
            "None; construct the metric with num_bootstrap > 0 (at least 2)."
        )
    shape = tuple(estimate.synergy.shape)
    replicate_shape = tuple(replicates.synergy.shape)
    if len(replicate_shape) != len(shape) + 1 or replicate_shape[1:] != shape:
        raise ValueError(
            f"Expected argument `replicates` to have batch shape (B, *{shape}), one leading "
            f"replicate dim over the estimate's, but got {replicate_shape}."
        )
    if replicate_shape[0] < 2:
        raise ValueError(
            f"Expected argument `replicates` to hold at least 2 replicates to take quantiles of, "
            f"but got {replicate_shape[0]}; use num_bootstrap >= 2 (100 or more in practice)."
        )
    ends: tuple[dict[str, Tensor], dict[str, Tensor]] = ({}, {})
    for name in INFORMATION_FIELDS:
        ends[0][name], ends[1][name] = interval_ends(
            getattr(estimate, name), getattr(replicates, name), level
        )
    return tuple(PIDResult(**end, gap=estimate.gap, iterations=estimate.iterations) for end in ends)


def interval_ends(theta: Tensor, replicates: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """``(low, high)`` of one quantity: the widened basic interval of :func:`bootstrap_interval`.

    Args:
        theta: The estimate, shape ``S`` (bits).
        replicates: Its bootstrap replicates, shape ``(B, *S)``; NaN replicates are ignored.
        level: Nominal coverage in (0, 1) (checked by the caller).

    Returns:
        Two tensors of shape ``S``, clamped at 0 (every PID atom is non-negative).
    """
    tail = (1.0 - level) / 2.0
    probabilities = torch.tensor([1.0 - tail, tail], dtype=theta.dtype, device=theta.device)
    quantiles = torch.nanquantile(replicates.to(theta.dtype), probabilities, dim=0)
    reflected = theta - INFLATION * (quantiles - theta)
    return reflected[0].clamp_min(0.0), reflected[1].clamp_min(0.0)
