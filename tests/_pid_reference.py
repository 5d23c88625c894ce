"""Independent reference PID solver, for the tests and ``benchmarks/solver.py`` (not shipped).

`broja_cvxpy` states the BROJA problem (docs/method.md, "Partial information decomposition")
directly as a convex program and hands it to a generic conic solver through CVXPY. It shares no code
with :func:`pidsched.functional.pid`, which is what makes it a useful oracle. CVXPY is a development
dependency (``pip install ".[dev]"``), which is why this module lives in ``tests/`` and not in the
wheel.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["broja_cvxpy"]


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _plugin_informations(p: np.ndarray) -> tuple[float, float, float, float]:
    """H(Y), I(X1;Y), I(X2;Y), I(X1X2;Y) in bits of a normalised joint ``p`` (K1, K2, Ky)."""
    h_y = _entropy_bits(p.sum((0, 1)))
    h_x1, h_x2 = _entropy_bits(p.sum((1, 2))), _entropy_bits(p.sum((0, 2)))
    h_x1x2 = _entropy_bits(p.sum(2))
    i_1 = h_x1 + h_y - _entropy_bits(p.sum(1))
    i_2 = h_x2 + h_y - _entropy_bits(p.sum(0))
    i_12 = h_x1x2 + h_y - _entropy_bits(p)
    return h_y, i_1, i_2, i_12


def broja_cvxpy(joint: np.ndarray, solver: str = "CLARABEL", **solver_options) -> dict[str, float]:
    """Solve one bivariate BROJA PID with CVXPY.

    Minimises ``sum q log(q / q(x1,x2))`` (= -H_q(Y|X1,X2), nats) over the cells where both pairwise
    marginals are positive, subject to ``q(x1,y) = p(x1,y)`` and ``q(x2,y) = p(x2,y)``.

    Args:
        joint: non-negative array ``(K1, K2, Ky)``; normalised here.
        solver: a CVXPY solver name able to handle exponential cones (``"CLARABEL"``, ``"SCS"``).
        **solver_options: passed to ``problem.solve``.

    Returns:
        Dict of floats in bits: ``unique_1, unique_2, redundancy, synergy, mutual_information``,
        plus ``status`` (the solver's word on the solve).

    Raises:
        ImportError: CVXPY is not installed.
    """
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("broja_cvxpy needs CVXPY: pip install 'pidsched[dev]'") from err

    p = np.asarray(joint, dtype=np.float64)
    p = p / p.sum()
    k1, k2, ky = p.shape
    p1, p2 = p.sum(1), p.sum(0)
    cells = np.argwhere((p1[:, None, :] > 0) & (p2[None, :, :] > 0))
    n = len(cells)
    pairs, pair_of_cell = np.unique(cells[:, 0] * k2 + cells[:, 1], return_inverse=True)
    # Sparse 0/1 maps: cell -> its (x1, y), (x2, y) marginal and its (x1, x2) pair.
    rows = np.arange(n)
    m1 = _incidence(cells[:, 0] * ky + cells[:, 2], rows, k1 * ky)
    m2 = _incidence(cells[:, 1] * ky + cells[:, 2], rows, k2 * ky)
    to_pair = _incidence(pair_of_cell, rows, len(pairs))

    q = cp.Variable(n, nonneg=True)
    pair_mass = to_pair @ q
    objective = cp.sum(cp.rel_entr(q, to_pair.T @ pair_mass))
    constraints = [m1 @ q == p1.reshape(-1), m2 @ q == p2.reshape(-1)]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=solver, **solver_options)

    h_y, i_1, i_2, i_12 = _plugin_informations(p)
    v = h_y + problem.value / math.log(2)  # min over Delta_p of I_q(X1X2;Y), bits
    return {
        "unique_1": v - i_2,
        "unique_2": v - i_1,
        "redundancy": i_1 + i_2 - v,
        "synergy": i_12 - v,
        "mutual_information": i_12,
        "status": problem.status,
    }


def _incidence(col_of_row: np.ndarray, rows: np.ndarray, num_cols: int):
    """A sparse matrix (num_cols, len(rows)) with a 1 at (col_of_row[i], rows[i])."""
    from scipy.sparse import csr_matrix

    return csr_matrix((np.ones(len(rows)), (col_of_row, rows)), shape=(num_cols, len(rows)))
