"""Robustness fuzz of the PID solver: every solve must certify, or return a finite honest gap.

Joints of sizes up to 9 per variable, drawn from families that break interior point methods:
dense with Gamma(0.05) entries (most cells tiny but non-zero), sparse (most cells exactly 0),
peaked (one cell holds almost everything), one cell, one label, X2 a copy of X1 (diagonal),
integer counts, float32 input, and soft joints of confident classifiers (logit margins 10 to 100,
softmax probabilities down to 1e-44, as FastPID accumulates them).

For each joint it records whether ``pid`` certified ``gap <= tol``; otherwise whether the gap is
finite and at most 1e-6 bits ("fallback"); and it flags any non-finite gap or atom, and any atom
below ``-gap`` (a certificate that cannot be true, since every true atom is >= 0).

    python benchmarks/solver_fuzz.py                   # 10,000 joints + 1,000 soft probes
    python benchmarks/solver_fuzz.py --joints 500 --soft 100 --method iterative
    python benchmarks/solver_fuzz.py --batched         # the same joints, batched by shape
    python benchmarks/solver_fuzz.py --joints 0 --soft 300 --soft-classes 12-24 --batched
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch

from pidsched.functional import pid

ATOMS = ("unique_1", "unique_2", "redundancy", "synergy")
FALLBACK_GAP = 1e-6  # bits: the largest gap accepted when float64 is truly exhausted
FAMILIES = ("dense", "sparse", "peaked", "one_cell", "one_label", "copy", "int", "float32")


def random_shape(rng: np.random.Generator, largest: int = 9) -> tuple[int, int, int]:
    return tuple(int(k) for k in rng.integers(1, largest + 1, size=3))


def fuzz_joint(family: str, rng: np.random.Generator) -> torch.Tensor:
    """One joint ``(K1, K2, Ky)`` of ``family`` (see the module docstring)."""
    k1, k2, ky = random_shape(rng)
    if family == "dense":
        return torch.from_numpy(rng.gamma(0.05, size=(k1, k2, ky)) + 1e-300)
    if family == "sparse":
        values = rng.gamma(0.5, size=(k1, k2, ky)) * (rng.random((k1, k2, ky)) < 0.15)
        values.flat[rng.integers(values.size)] += 1.0
        return torch.from_numpy(values)
    if family == "peaked":
        values = rng.random((k1, k2, ky)) * 10.0 ** -rng.uniform(6, 15)
        values.flat[rng.integers(values.size)] = 1.0
        return torch.from_numpy(values)
    if family == "one_cell":
        values = np.zeros((k1, k2, ky))
        values.flat[rng.integers(values.size)] = 1.0
        return torch.from_numpy(values)
    if family == "one_label":
        values = np.zeros((k1, k2, ky))
        values[..., rng.integers(ky)] = rng.gamma(0.3, size=(k1, k2))
        values.flat[rng.integers(values.size)] += 1e-3
        return torch.from_numpy(values)
    if family == "copy":
        k = max(k1, 2)
        values = np.zeros((k, k, ky))
        idx = np.arange(k)
        values[idx, idx] = rng.gamma(0.3, size=(k, ky)) + 1e-12 * rng.random((k, ky))
        return torch.from_numpy(values)
    if family == "int":
        probs = rng.dirichlet(np.full(k1 * k2 * ky, 0.3))
        counts = rng.multinomial(int(rng.integers(1, 60)), probs).reshape(k1, k2, ky)
        return torch.from_numpy(counts).to(torch.int64)
    if family == "float32":
        return torch.from_numpy(rng.gamma(0.1, size=(k1, k2, ky))).float() + 1e-30
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def soft_probe_joint(
    num_classes: int, margin: float, rng: np.random.Generator, num_samples: int = 2000
) -> torch.Tensor:
    """The joint FastPID accumulates from two confident classifiers: each sample adds
    ``softmax(logits_1) x softmax(logits_2) x onehot(y)``; a classifier is right 90 % of the time
    and puts logit ``margin`` (plus unit noise) on its prediction."""
    y = rng.integers(num_classes, size=num_samples)
    probs = []
    for _ in range(2):
        wrong = rng.random(num_samples) > 0.9
        guess = np.where(wrong, rng.integers(num_classes, size=num_samples), y)
        logits = rng.normal(size=(num_samples, num_classes))
        logits[np.arange(num_samples), guess] += margin
        probs.append(torch.softmax(torch.from_numpy(logits), dim=-1))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y), num_classes).double()
    return torch.einsum("ni,nj,ny->ijy", probs[0], probs[1], onehot)


def check(joint: torch.Tensor, tol: float, method: str) -> dict:
    """Solve one joint and classify the outcome."""
    return check_batch(joint[None], tol, method)[0]


def check_batch(joints: torch.Tensor, tol: float, method: str) -> list[dict]:
    """Solve a batch ``(B, K1, K2, Ky)`` in one call and classify each distribution's outcome."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = pid(joints, tol=tol, method=method)
    outcomes = []
    for row in range(len(joints)):
        gap = float(result.gap[row])
        atoms = np.array([float(getattr(result, a)[row]) for a in ATOMS])
        finite = bool(np.isfinite(gap) and np.isfinite(atoms).all())
        outcomes.append(
            {
                "certified": finite and gap <= tol,
                "fallback": finite and tol < gap <= FALLBACK_GAP,
                "non_finite": not finite,
                "below_gap": finite and bool((atoms < -gap).any()),
                "gap": gap,
                "iterations": result.iterations,
            }
        )
    return outcomes


def fuzz_cases(num_joints: int, num_soft: int, seed: int, soft_classes: tuple[int, int] = (2, 10)):
    """Yield ``(family, joint)``: ``num_joints`` round-robin over FAMILIES, then soft probes of
    ``soft_classes`` (the fewest and the most) classes."""
    rng = np.random.default_rng(seed)
    for i in range(num_joints):
        family = FAMILIES[i % len(FAMILIES)]
        yield family, fuzz_joint(family, rng)
    for _ in range(num_soft):
        k = int(rng.integers(soft_classes[0], soft_classes[1] + 1))
        margin = float(rng.uniform(10, 100))
        yield "soft", soft_probe_joint(k, margin, rng, num_samples=int(rng.integers(50, 2000)))


def run(
    num_joints: int,
    num_soft: int,
    seed: int,
    tol: float,
    method: str,
    batched: bool = False,
    soft_classes: tuple[int, int] = (2, 10),
) -> dict[str, dict]:
    """Counts per family: solved, certified, fallback, non-finite, atom below -gap, worst gap.
    ``batched``: the joints of each shape (of any family) are solved as one batch."""
    table: dict[str, dict] = {}
    cases = fuzz_cases(num_joints, num_soft, seed, soft_classes)
    for family, outcome in outcomes(cases, tol, method, batched):
        row = table.setdefault(
            family,
            {"n": 0, "certified": 0, "fallback": 0, "non_finite": 0, "below_gap": 0, "worst": 0.0},
        )
        row["n"] += 1
        for key in ("certified", "fallback", "non_finite", "below_gap"):
            row[key] += int(outcome[key])
        row["worst"] = max(row["worst"], outcome["gap"])
    return table


def outcomes(cases, tol: float, method: str, batched: bool):
    """Yield ``(family, outcome)`` for every case, solved one by one or batched by shape across
    families, in float64 (a batch exercises what single solves do not: members leaving as they
    certify, the line search halving some members only, chunks)."""
    if not batched:
        for family, joint in cases:
            yield family, check(joint, tol, method)
        return
    groups: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for family, joint in cases:
        groups.setdefault(tuple(joint.shape), []).append((family, joint.double()))
    for members in groups.values():
        joints = torch.stack([joint for _, joint in members])
        for (family, _), outcome in zip(members, check_batch(joints, tol, method), strict=True):
            yield family, outcome


def class_range(text: str) -> tuple[int, int]:
    """``--soft-classes``: ``LO-HI`` with ``2 <= LO <= HI``."""
    low, _, high = text.partition("-")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        bounds = (0, 0)
    if not 2 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO-HI with 2 <= LO <= HI, e.g. 12-24")
    return bounds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joints", type=int, default=10_000)
    parser.add_argument("--soft", type=int, default=1_000, help="soft probes of margin 10 to 100")
    parser.add_argument(
        "--soft-classes",
        type=class_range,
        default=(2, 10),
        help="LO-HI: classes of the soft probes (12-24 runs batches on the adaptive path)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-7, help="bits")
    parser.add_argument("--method", default="auto", choices=("auto", "dense", "iterative"))
    parser.add_argument(
        "--batched", action="store_true", help="solve the joints of each shape as one batch"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    table = run(
        args.joints, args.soft, args.seed, args.tol, args.method, args.batched, args.soft_classes
    )
    print(f"# python benchmarks/solver_fuzz.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {time.perf_counter() - start:.0f} s, tol {args.tol:g} bits, method {args.method}")
    print(
        "| family | joints | certified | fallback (<= 1e-6) | non-finite | atom < -gap "
        "| worst gap |"
    )
    print("|---|---|---|---|---|---|---|")
    bad = 0
    for family, row in table.items():
        bad += row["non_finite"] + row["below_gap"] + row["n"] - row["certified"] - row["fallback"]
        print(
            f"| {family} | {row['n']} | {row['certified']} | {row['fallback']} | "
            f"{row['non_finite']} | {row['below_gap']} | {row['worst']:.2e} |"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
