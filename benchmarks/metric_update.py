"""Cost of one FastPID update at many classes: the joint update against its one-hot predecessor.

A soft update adds ``sum_n p1[n] x p2[n] x onehot(y[n])``. The update before issue 10 contracted
the ``(N, K^2)`` pair products with the ``(N, K)`` one-hot labels, ``O(N K^3)`` work and an
``(N, K^2)`` temporary; ``_joint_update`` groups the samples by label, ``O(N K^2)``. One run
each (the old one takes seconds), the ratio measured in the same process, and the bootstrap's
weighted update for ``B`` replicates beside them.

    python benchmarks/metric_update.py                # 101 classes, 4,096 samples, B = 20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pidsched.functional.discretize import _joint_update, _posteriors_from_logits


def one_hot_contraction(p1, p2, target, num_classes):
    """The pre-issue-10 update: labels^T @ pairs."""
    num_samples = p1.shape[0]
    pairs = (p1[:, :, None] * p2[:, None, :]).reshape(num_samples, -1)
    labels = F.one_hot(target, num_classes).to(pairs.dtype)
    return (labels.mT @ pairs).mT.reshape(p1.shape[1], p2.shape[1], num_classes)


def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=101)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--bootstrap", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    k, n = args.classes, args.samples
    p1, p2 = (
        _posteriors_from_logits(torch.randn(n, k, generator=generator), "soft") for _ in range(2)
    )
    target = torch.randint(k, (n,), generator=generator)
    weights = torch.poisson(torch.ones(args.bootstrap, n, dtype=torch.float64), generator=generator)
    new_s, new = timed(lambda: _joint_update(p1, p2, target, k))
    old_s, old = timed(lambda: one_hot_contraction(p1, p2, target, k))
    boot_s, _ = timed(lambda: _joint_update(p1, p2, target, k, weights))
    print(f"K={k}, N={n}, one thread")
    ratio = old_s / new_s
    print(f"one-hot contraction {old_s:.3f} s, grouped by label {new_s:.4f} s: {ratio:.0f}x")
    print(f"largest difference {(new - old).abs().max().item():.1e}")
    print(
        f"bootstrap update, B={args.bootstrap}: {boot_s:.3f} s = "
        f"{boot_s / new_s:.1f} x the unweighted update"
    )
    state = 8 * k**3
    print(f"state: {state / 2**20:.1f} MiB, plus {args.bootstrap} x that for the replicates")


if __name__ == "__main__":
    main()
