"""Alternating I-projections for BROJA (admUI, Banerjee et al. 2018), a benchmark peer.

Per label, scale the pair distribution ``r(x1, x2)`` onto ``p(x1 | y)`` and ``p(x2 | y)`` (Sinkhorn
sweeps), then set ``r = sum_y p(y) q(x1, x2 | y)``; repeat. The coupling
``q(x1, x2, y) = p(y) q(x1, x2 | y)`` converges to the BROJA optimum at a linear rate. Runs until
a wall-clock budget is spent, so that it can be compared with FastPID at equal time.
"""

from __future__ import annotations

import math
import time

import torch

LN2 = math.log(2.0)


def admui_pid(
    joint: torch.Tensor, seconds: float, sweeps: int = 10
) -> tuple[dict[str, torch.Tensor], int]:
    """PID atoms (bits) of one joint ``(K1, K2, Ky)`` after ``seconds`` of alternating
    I-projections, and the number of outer iterations run."""
    p = joint.to(torch.float64)
    p = p / p.sum()
    p1, p2 = p.sum(1), p.sum(0)
    py = p1.sum(0)
    label = py > 0
    c1 = p1[:, label] / py[label]
    c2 = p2[:, label] / py[label]
    weight = py[label]
    r = p.sum(-1)
    deadline = time.perf_counter() + seconds
    outer = 0
    while True:
        q = r[..., None].expand(*r.shape, int(label.sum())).clone()
        for _ in range(sweeps):
            q = q * (c1 / q.sum(1).clamp_min(1e-300))[:, None, :]
            q = q * (c2 / q.sum(0).clamp_min(1e-300))[None, :, :]
        outer += 1
        if time.perf_counter() >= deadline:
            break
        r = (q * weight).sum(-1)
    q = q * weight
    pair = q.sum(-1)
    h_cond = -(torch.special.xlogy(q, q).sum() - torch.special.xlogy(pair, pair).sum())
    h_y = -torch.special.xlogy(py, py).sum()
    v = (h_y - h_cond) / LN2
    i_1, i_2 = _mi(p1) / LN2, _mi(p2) / LN2
    i_12 = _mi(p.flatten(0, 1)) / LN2
    atoms = {
        "unique_1": v - i_2,
        "unique_2": v - i_1,
        "redundancy": i_1 + i_2 - v,
        "synergy": i_12 - v,
    }
    return atoms, outer


def _mi(pxy: torch.Tensor) -> torch.Tensor:
    px, py = pxy.sum(-1, keepdim=True), pxy.sum(-2, keepdim=True)
    return torch.special.xlogy(pxy, pxy / (px * py).clamp_min(1e-300)).sum()
