"""Warm against cold starts of the solver on soft probes: ``python benchmarks/warm_starts.py``.

A probe is what ``FastPID`` accumulates from two classifiers (``soft_probe_joint``'s model: each
right 85 % of the time, logit margin 4 plus unit noise). Two kinds of "the next solve" are timed,
each as one batch, cold (``pid(joints)``) and warm-started from the previous probe's optimum
(``pid(joints, warm_start=previous)``), the two alternating over ``--rounds`` rounds:

- ``moved by d``: 8 probes of the same samples with every logit moved by Gaussian noise of size
  ``d``: the next epoch's probe, where ``FastPID(warm_start=True)`` starts warm;
- ``bootstrap``: 64 Poisson(1) replicates of the probe against the optimum of the probe with its
  logits moved by 0.2 (the previous compute): the replicates of a bootstrapped ``FastPID``,
  which it solves cold.

It prints milliseconds per joint, the most Newton iterations in the batch, and the ratio warm /
cold of the sums over rounds (one thread).

    python benchmarks/warm_starts.py                       # K = 10, 16, 20 (docs/benchmarks.md)
    python benchmarks/warm_starts.py --classes 101 --samples 4096 --drifts 0.1,0.3 --replicates 0
    python benchmarks/warm_starts.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from pidsched.functional import PIDResult, pid

PREVIOUS_DRIFT = 0.2  # how far the previous compute's probe is from the bootstrapped one


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="10,16,20", help="comma list of K")
    parser.add_argument("--samples", type=int, default=2000, help="samples per probe")
    parser.add_argument("--drifts", default="0.01,0.1,0.3,1.0", help="logit moves of 'moved by'")
    parser.add_argument("--replicates", type=int, default=64, help="bootstrap replicates (0: none)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--tol", type=float, default=1e-7, help="bits")
    parser.add_argument("--quick", action="store_true", help="K = 4, 200 samples, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.samples, args.drifts, args.replicates, args.rounds = (
            "4",
            200,
            "0.1",
            4,
            1,
        )
    return args


class Probe:
    """``num_samples`` samples of two classifiers' logits about ``num_classes`` labels."""

    def __init__(self, num_classes: int, num_samples: int, rng: np.random.Generator) -> None:
        self.rng, self.num_classes = rng, num_classes
        self.labels = rng.integers(num_classes, size=num_samples)
        self.logits = []
        for _ in range(2):
            right = rng.random(num_samples) < 0.85
            guess = np.where(right, self.labels, rng.integers(num_classes, size=num_samples))
            logits = rng.normal(size=(num_samples, num_classes))
            logits[np.arange(num_samples), guess] += 4.0
            self.logits.append(logits)

    def joints(self, drift: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, K, K, K)`` joints of the samples weighted by ``weights (B, N)`` (None: one joint,
        every sample once), every logit moved by ``drift`` Gaussian noise."""
        probs = [
            torch.softmax(torch.from_numpy(x + drift * self.rng.normal(size=x.shape)), dim=-1)
            for x in self.logits
        ]
        if weights is None:
            weights = torch.ones(1, len(self.labels), dtype=torch.float64)
        joints = torch.zeros(len(weights), *(self.num_classes,) * 3, dtype=torch.float64)
        for label in range(self.num_classes):  # per label, one product over its samples
            mine = torch.from_numpy(self.labels == label)
            joints[..., label] = (weights[:, mine, None] * probs[0][mine]).mT @ probs[1][mine]
        return joints


def repeated(result: PIDResult, size: int) -> PIDResult:
    """A warm start for a batch of ``size`` from one result."""
    return replace(
        result,
        **{
            name: getattr(result, name).expand(size, *getattr(result, name).shape)
            for name in ("dual_1", "dual_2", "pair_mass")
        },
    )


def compare(joints: torch.Tensor, previous: PIDResult, rounds: int, tol: float) -> dict:
    """Cold and warm solves of ``joints``, alternating: seconds summed, most iterations."""
    warm = repeated(previous, len(joints))
    seconds = {"cold": 0.0, "warm": 0.0}
    iterations = {"cold": 0, "warm": 0}
    for round_ in range(rounds):
        for kind in ("cold", "warm") if round_ % 2 == 0 else ("warm", "cold"):
            start = time.perf_counter()
            result = pid(joints, tol=tol, warm_start=warm if kind == "warm" else None)
            seconds[kind] += time.perf_counter() - start
            iterations[kind] = max(iterations[kind], result.iterations)
    return {"seconds": seconds, "iterations": iterations, "joints": len(joints) * rounds}


def rows(args: argparse.Namespace):
    """``(K, case, comparison)`` for every size and case."""
    for k in (int(c) for c in args.classes.split(",")):
        rng = np.random.default_rng(k)
        probe = Probe(k, args.samples, rng)
        optimum = pid(probe.joints()[0], tol=args.tol)
        for drift in (float(d) for d in args.drifts.split(",") if d):
            moved = torch.cat([probe.joints(drift) for _ in range(8)])
            yield k, f"moved by {drift:g}", compare(moved, optimum, args.rounds, args.tol)
        if args.replicates:
            weights = torch.from_numpy(rng.poisson(1.0, size=(args.replicates, args.samples)))
            replicates = probe.joints(weights=weights.double())
            previous = pid(probe.joints(PREVIOUS_DRIFT)[0], tol=args.tol)
            yield k, "bootstrap", compare(replicates, previous, args.rounds, args.tol)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(f"# python benchmarks/warm_starts.py (tol {args.tol:g} bits, {args.samples} samples)")
    print("| K | next solve | cold, ms a joint (iterations) | warm | warm / cold |")
    print("|---|---|---|---|---|")
    for k, case, result in rows(args):
        seconds, iterations = result["seconds"], result["iterations"]
        each = {kind: 1e3 * seconds[kind] / result["joints"] for kind in seconds}
        print(
            f"| {k} | {case} | {each['cold']:.2f} ({iterations['cold']}) | "
            f"{each['warm']:.2f} ({iterations['warm']}) | "
            f"{seconds['warm'] / seconds['cold']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
