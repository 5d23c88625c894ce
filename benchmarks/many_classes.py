"""What a probe of many classes costs and how biased it is at few samples per cell.

    python benchmarks/many_classes.py bias            # clustered probes of label-free features
    python benchmarks/many_classes.py exact 309 750   # one exact K^3 FastPID probe (K, samples)

``bias`` feeds ``ClusteredFastPID`` features that carry no information about the labels: every
atom's true value is 0 bits, so what it reports is plug-in bias (K = 309 at 750 and 5,000
samples, K = 100 at 600). ``exact`` times one ``FastPID`` compute on soft logits of a 90 %- and a
60 %-right classifier (margin 4), one thread; at K = 309 it did not certify within 590 s at stop
28 (docs/method.md, "Probe memory and cost per K").
"""

from __future__ import annotations

import sys
import time

import torch

from pidsched import ClusteredFastPID, FastPID


def null_bias() -> None:
    generator = torch.Generator().manual_seed(0)
    for k, n in ((309, 750), (309, 5000), (100, 600)):
        y = torch.randint(0, k, (n,), generator=generator)
        metric = ClusteredFastPID(num_classes=k, tol=1e-5)
        x1, x2 = (torch.randn(n, 64, generator=generator) for _ in range(2))
        metric.update(x1, x2, y)
        r = metric.compute()
        print(
            f"K={k} N={n}: I(X1,X2;Y) {float(r.mutual_information):.3f} U1 "
            f"{float(r.unique_1):.3f} U2 {float(r.unique_2):.3f} R {float(r.redundancy):.3f} "
            f"S {float(r.synergy):.3f} bits (all 0 in truth)"
        )


def exact_probe(k: int, n: int) -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=generator)

    def logits(accuracy: float, margin: float = 4.0) -> torch.Tensor:
        right = torch.rand(n, generator=generator) < accuracy
        predicted = torch.where(right, y, torch.randint(0, k, (n,), generator=generator))
        z = torch.randn(n, k, generator=generator)
        z[torch.arange(n), predicted] += margin
        return z

    metric = FastPID(num_classes=k, tol=1e-5)
    metric.update(logits(0.9), logits(0.6), y)
    start = time.perf_counter()
    result = metric.compute()
    print(
        f"K={k} N={n}: compute {time.perf_counter() - start:.1f} s, {result.iterations} "
        f"iterations, gap {float(result.gap):.1e} bits"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["bias"]:
        null_bias()
    elif sys.argv[1:2] == ["exact"] and len(sys.argv) == 4:
        exact_probe(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(__doc__)
