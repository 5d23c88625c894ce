"""Coverage of FastPID's bootstrap intervals on a task whose population PID is known.

Task: ``K`` uniform classes; each modality's logits are ``s_m onehot(y) + N(0, I)`` with
independent noise (``s = 1.5`` and ``1.0``), the soft discretisation of a fixed classifier. Given
``y`` the two posteriors are independent, so the population soft joint is exactly
``p(y) c1(x1 | y) c2(x2 | y)``, where ``c_m`` is the mean posterior given the label: a symmetric
channel, estimated from ``--reference-samples`` draws and symmetrised exactly. The weaker
symmetric channel is a garbling of the stronger, so its unique information is exactly 0
(Bertschinger et al. 2014): the task has one atom on the boundary and three away from it.

Each repetition draws a fresh probe of ``N`` samples, runs ``FastPID(num_bootstrap=B)`` on it and
checks whether each interval covers the reference atom (atoms >= 0.01 bits) or starts at 0
(atoms equal to 0). Printed beside the library's interval (``result.interval``, the basic interval
widened by ``c = 1.5``): the percentile interval and the basic interval with ``c = 1`` and
``1.25``, all from the same replicates; then the library interval's mean width, the estimate's
bias and standard deviation over the repetitions, and their bootstrap estimates (means over the
repetitions of the replicates' mean minus the estimate and of the replicates' standard
deviation).

    python benchmarks/coverage.py                   # the table of docs/method.md (~4 min)
    python benchmarks/coverage.py --repetitions 5 --sizes 300 --bootstrap 50   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor

from pidsched import FastPID
from pidsched.functional import PIDResult, pid

ATOMS = ("unique_1", "unique_2", "redundancy", "synergy")
ZERO_BITS = 1e-6  # a reference atom below this is the boundary value 0 (solver tol 1e-10)
AT_ZERO_BITS = 1e-7  # an interval "starts at 0" below the solver's certified error
MIN_BITS = 0.01  # the coverage goal applies to reference atoms at least this large


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=5, help="K, classes and symbols")
    parser.add_argument("--signal", type=float, nargs=2, default=(1.5, 1.0), help="s_1 s_2")
    parser.add_argument("--sizes", default="300,1000", help="comma list of probe sizes N")
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=200, help="replicates B")
    parser.add_argument("--level", type=float, default=0.9)
    parser.add_argument("--reference-samples", type=int, default=10**6)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def sample(num_samples: int, signal, num_classes: int, generator: torch.Generator):
    """``(logits_1, logits_2, target)`` of ``num_samples`` draws of the task."""
    target = torch.randint(num_classes, (num_samples,), generator=generator)
    onehot = torch.nn.functional.one_hot(target, num_classes).double()
    logits = [
        strength * onehot
        + torch.randn(num_samples, num_classes, generator=generator, dtype=torch.float64)
        for strength in signal
    ]
    return logits[0], logits[1], target


def symmetric_channel(strength: float, num_classes: int, num_samples: int, generator) -> Tensor:
    """``c[y, x] = E[softmax(logits)_x | y]``: ``a`` on the diagonal, ``(1 - a) / (K - 1)`` off."""
    logits = torch.randn(num_samples, num_classes, generator=generator, dtype=torch.float64)
    logits[:, 0] += strength
    diagonal = logits.softmax(1)[:, 0].mean().item()
    channel = torch.full((num_classes, num_classes), (1 - diagonal) / (num_classes - 1))
    return channel.double().fill_diagonal_(diagonal)


def reference_pid(args, generator) -> PIDResult:
    channels = [
        symmetric_channel(strength, args.classes, args.reference_samples, generator)
        for strength in args.signal
    ]
    joint = torch.einsum("yi,yj->ijy", *channels) / args.classes
    return pid(joint, tol=1e-10)


def candidate_intervals(estimate: Tensor, replicates: Tensor, level: float):
    """``{name: (low, high)}`` of one atom from its estimate and ``(B,)`` replicates (bits):
    the percentile interval and the basic interval widened less than the library's ``c = 1.5``."""
    tail = (1 - level) / 2
    q_lo, q_hi = replicates.quantile(tail), replicates.quantile(1 - tail)
    intervals = {"percentile": (q_lo, q_hi)}
    for widening in (1.0, 1.25):
        intervals[f"basic, c = {widening:g}"] = (
            (estimate - widening * (q_hi - estimate)).clamp_min(0),
            (estimate - widening * (q_lo - estimate)).clamp_min(0),
        )
    return intervals


def run_size(args, num_samples: int, reference: PIDResult, generator) -> dict:
    """Per interval and atom: the fraction of repetitions covering (or starting at 0)."""
    hits: dict[str, dict[str, int]] = {}
    widths: dict[str, float] = dict.fromkeys(ATOMS, 0.0)
    estimates: dict[str, list[float]] = {atom: [] for atom in ATOMS}
    spreads: dict[str, float] = dict.fromkeys(ATOMS, 0.0)  # bootstrap sd of the replicates
    boot_bias: dict[str, float] = dict.fromkeys(ATOMS, 0.0)  # replicate mean - estimate
    for repetition in range(args.repetitions):
        metric = FastPID(args.classes, num_bootstrap=args.bootstrap, seed=repetition)
        metric.update(*sample(num_samples, args.signal, args.classes, generator))
        result = metric.compute()
        low, high = result.interval(args.level)
        for atom in ATOMS:
            truth = getattr(reference, atom).item()
            estimate = getattr(result, atom)
            intervals = {"bootstrap_interval": (getattr(low, atom), getattr(high, atom))}
            intervals |= candidate_intervals(estimate, getattr(result.replicates, atom), args.level)
            for name, (lower, upper) in intervals.items():
                if truth < ZERO_BITS:
                    hit = lower.item() <= AT_ZERO_BITS
                else:
                    hit = lower.item() <= truth <= upper.item()
                hits.setdefault(name, dict.fromkeys(ATOMS, 0))[atom] += int(hit)
            widths[atom] += (getattr(high, atom) - getattr(low, atom)).item()
            replicates = getattr(result.replicates, atom)
            estimates[atom].append(estimate.item())
            spreads[atom] += replicates.std().item()
            boot_bias[atom] += (replicates.mean() - estimate).item()
    total = args.repetitions
    references = {atom: getattr(reference, atom).item() for atom in ATOMS}
    return {
        "coverage": {name: {a: n / total for a, n in row.items()} for name, row in hits.items()},
        "mean width": {atom: value / total for atom, value in widths.items()},
        "bias of estimate": {
            atom: statistics.fmean(values) - references[atom] for atom, values in estimates.items()
        },
        "bootstrap bias": {atom: value / total for atom, value in boot_bias.items()},
        "sd of estimate": {atom: statistics.stdev(values) for atom, values in estimates.items()},
        "bootstrap sd": {atom: value / total for atom, value in spreads.items()},
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)
    reference = reference_pid(args, generator)
    print(
        f"K={args.classes}, signal={tuple(args.signal)}, B={args.bootstrap}, "
        f"{args.repetitions} repetitions, nominal level {args.level}"
    )
    print(
        "reference (bits, from "
        f"{args.reference_samples:.0e} samples): "
        + ", ".join(f"{atom} {getattr(reference, atom).item():.4f}" for atom in ATOMS)
    )
    print(
        f"coverage = fraction of repetitions whose interval covers the reference (atoms >= "
        f"{MIN_BITS} bits) or starts at 0 (atoms = 0: a lower end below {AT_ZERO_BITS} bits)"
    )
    for num_samples in (int(size) for size in args.sizes.split(",")):
        start = time.perf_counter()
        table = run_size(args, num_samples, reference, generator)
        seconds = time.perf_counter() - start
        print(f"\nN = {num_samples} ({seconds:.0f} s)")
        print(f"| {'interval':<20} | " + " | ".join(f"{atom:>10}" for atom in ATOMS) + " |")
        print(f"|{'-' * 22}|" + "|".join("-" * 12 for _ in ATOMS) + "|")
        for name, row in table["coverage"].items():
            print(f"| {name:<20} | " + " | ".join(f"{row[atom]:>10.3f}" for atom in ATOMS) + " |")
        summaries = ("mean width", "bias of estimate", "bootstrap bias", "sd of estimate")
        for name in (*summaries, "bootstrap sd"):
            row = table[name]
            print(f"| {name:<20} | " + " | ".join(f"{row[atom]:>10.4f}" for atom in ATOMS) + " |")


if __name__ == "__main__":
    main()
