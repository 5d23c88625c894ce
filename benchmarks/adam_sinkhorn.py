"""The released code's PID solver as a benchmark peer (docs/method.md, "The released code").

Start from the conditionally independent coupling ``q0 = p(x1,y) p(x2,y) / p(y)``; optimise logits
of ``q`` with Adam (lr 0.1); each step takes a softmax, then 10 Sinkhorn sweeps onto the two
pairwise marginals, and minimises ``-H_q(Y|X1,X2)``; stop after 2000 steps or when ``q`` moves by
less than 1e-5. Batched over leading dims so that it gets the same batching advantage as ours.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def _sinkhorn(q: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, sweeps: int) -> torch.Tensor:
    for _ in range(sweeps):
        q = q * (p1 / q.sum(-2).clamp_min(1e-300)).unsqueeze(-2)
        q = q * (p2 / q.sum(-3).clamp_min(1e-300)).unsqueeze(-3)
    return q


def _conditional_entropy(q: torch.Tensor) -> torch.Tensor:
    pair = q.sum(-1)
    joint_term = torch.special.xlogy(q, q).sum((-3, -2, -1))
    return -(joint_term - torch.special.xlogy(pair, pair).sum((-2, -1)))


def adam_sinkhorn_pid(
    joint: torch.Tensor, steps: int = 2000, lr: float = 0.1, sweeps: int = 10, tol: float = 1e-5
) -> dict[str, torch.Tensor]:
    """PID atoms (bits) of ``joint`` ``(..., K1, K2, Ky)`` by the released code's scheme."""
    p = joint.to(torch.float64)
    p = p / p.sum((-3, -2, -1), keepdim=True)
    p1, p2 = p.sum(-2), p.sum(-3)
    py = p1.sum(-2)
    q0 = p1.unsqueeze(-2) * p2.unsqueeze(-3) / py.clamp_min(1e-300)[..., None, None, :]
    logits = torch.log(q0.clamp_min(1e-300)).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    previous = None
    for _ in range(steps):
        flat = torch.softmax(logits.flatten(-3), dim=-1).reshape(logits.shape)
        q = _sinkhorn(flat, p1, p2, sweeps)
        loss = -_conditional_entropy(q).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        # The first projection reproduces q0 exactly; convergence is judged between updates.
        if previous is not None and (q.detach() - previous).abs().max() < tol:
            break
        previous = q.detach()
    with torch.no_grad():
        q = _sinkhorn(torch.softmax(logits.flatten(-3), -1).reshape(logits.shape), p1, p2, sweeps)
        h_y = -torch.special.xlogy(py, py).sum(-1)
        v = (h_y - _conditional_entropy(q)) / LN2
        i_1 = _mutual_information(p1) / LN2
        i_2 = _mutual_information(p2) / LN2
        i_12 = _mutual_information(p.flatten(-3, -2)) / LN2
    return {
        "unique_1": v - i_2,
        "unique_2": v - i_1,
        "redundancy": i_1 + i_2 - v,
        "synergy": i_12 - v,
    }


def _mutual_information(pxy: torch.Tensor) -> torch.Tensor:
    """I(X;Y) in nats of a joint ``(..., Kx, Ky)``."""
    px, py = pxy.sum(-1, keepdim=True), pxy.sum(-2, keepdim=True)
    ratio = pxy / (px * py).clamp_min(1e-300)
    return torch.special.xlogy(pxy, ratio).sum((-2, -1))
