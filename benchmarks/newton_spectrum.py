"""Why the iterative Newton path converges: spectra of its preconditioned Schur systems.

For a Dirichlet(0.5) cube K x K x K, the dense solve's Newton matrices are captured, and at its
last Newton step the Schur complement ``S = D - C^T A^{-1} C`` onto ``b`` is formed densely. It
prints the extreme eigenvalues of ``S`` preconditioned by D's diagonal blocks (the first
iterative path) and by S's own diagonal blocks, with the gauge pinned at one cell per label (as
the dense path does) and left free (the iterative path: spectrum beyond the per-label null
vectors), and the preconditioned CG steps each needs to a relative residual of 1e-6 from a random
right-hand side (docs/method.md, "The iterative path").

    python benchmarks/newton_spectrum.py            # K = 10, 16, 24
    python benchmarks/newton_spectrum.py --sizes 8
"""

from __future__ import annotations

import argparse
import importlib

import numpy as np
import torch

solver = importlib.import_module("pidsched.functional.pid")


def newton_matrices(k: int, seed: int = 1) -> list[tuple]:
    """``(cond, pair_mass, mass_per_slack, prob)`` of every Newton step of a dense solve."""
    rng = np.random.default_rng(seed)
    joint = torch.from_numpy(rng.dirichlet(np.full(k**3, 0.5)).reshape(k, k, k))
    captured, original = [], solver._factorise_newton

    def capture(cond, pair_mass, mass_per_slack, prob):
        captured.append((cond.clone(), pair_mass.clone(), mass_per_slack.clone(), prob))
        return original(cond, pair_mass, mass_per_slack, prob)

    solver._factorise_newton = capture
    try:
        solver.pid(joint, tol=1e-8, method="dense")
    finally:
        solver._factorise_newton = original
    return captured


def full_newton_matrix(cond, pair_mass, mass_per_slack) -> torch.Tensor:
    """The Newton matrix in ``(a, b)``, ``(K1 + K2) Ky`` square: per pair ``(x1, x2)`` the block
    ``Q diag(r) + (Q/s - Q) r r^T`` on the four ``(a(x1) | b(x2))`` blocks."""
    cond, q, kappa = cond[0], pair_mass[0], (mass_per_slack - pair_mass)[0]
    k1, k2, ky = cond.shape
    blocks = q[..., None, None] * torch.diag_embed(cond) + kappa[..., None, None] * (
        cond[..., :, None] * cond[..., None, :]
    )  # (K1, K2, Ky, Ky)
    matrix = torch.zeros((k1 + k2) * ky, (k1 + k2) * ky, dtype=cond.dtype)
    for x1 in range(k1):
        rows = slice(x1 * ky, (x1 + 1) * ky)
        matrix[rows, rows] += blocks[x1].sum(0)
        for x2 in range(k2):
            cols = slice((k1 + x2) * ky, (k1 + x2 + 1) * ky)
            matrix[rows, cols] += blocks[x1, x2]
            matrix[cols, rows] += blocks[x1, x2]
    for x2 in range(k2):
        cols = slice((k1 + x2) * ky, (k1 + x2 + 1) * ky)
        matrix[cols, cols] += blocks[:, x2].sum(0)
    return matrix


def preconditioned_spectrum(matrix: torch.Tensor, preconditioner: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``P^{-1/2} M P^{-1/2}`` (ascending)."""
    factor = torch.linalg.cholesky(preconditioner)
    half = torch.linalg.solve_triangular(factor, matrix, upper=False)
    whole = torch.linalg.solve_triangular(factor, half.mT, upper=False)
    return torch.linalg.eigvalsh((whole + whole.mT) / 2)


def cg_steps(matrix, rhs, apply_inverse, project=lambda v: v, tol: float = 1e-6) -> int:
    """Preconditioned CG steps to ``|r| <= tol |rhs|`` (2,000 at most)."""
    x, residual = torch.zeros_like(rhs), rhs.clone()
    z = project(apply_inverse(residual))
    direction, rz = z.clone(), residual @ z
    for step in range(2000):
        if residual.norm() <= tol * rhs.norm():
            return step
        product = project(matrix @ direction)
        alpha = rz / (direction @ product)
        x, residual = x + alpha * direction, residual - alpha * product
        z = project(apply_inverse(residual))
        rz_next = residual @ z
        direction, rz = z + (rz_next / rz) * direction, rz_next
    return 2000


def row(k: int) -> dict:
    cond, pair_mass, mass_per_slack, prob = newton_matrices(k)[-1]
    k1, k2, ky = cond.shape[1:]
    matrix = full_newton_matrix(cond, pair_mass, mass_per_slack)
    n_a = k1 * ky
    a, c, d = matrix[:n_a, :n_a], matrix[:n_a, n_a:], matrix[n_a:, n_a:]
    schur = d - c.mT @ torch.linalg.solve(a, c)  # every b free: the gauge is a null space
    same_x2 = (torch.arange(k2 * ky)[:, None] // ky) == (torch.arange(k2 * ky)[None, :] // ky)
    pinned = prob.free_b[0].flatten().bool()
    s_pin, mask_pin = schur[pinned][:, pinned], same_x2[pinned][:, pinned]
    spectrum_d = preconditioned_spectrum(s_pin, (d[pinned][:, pinned]) * mask_pin)
    spectrum_s = preconditioned_spectrum(s_pin, s_pin * mask_pin)
    spectrum_free = preconditioned_spectrum(schur, schur * same_x2)[ky:]  # beyond the null space
    labels = torch.nn.functional.one_hot(torch.arange(k2 * ky) % ky, ky).to(schur.dtype)

    def project(v):
        return v - labels @ ((labels.mT @ v) / labels.sum(0))

    generator = torch.Generator().manual_seed(0)
    rhs = torch.randn(k2 * ky, generator=generator, dtype=schur.dtype)
    blocks_pin, blocks_free = torch.linalg.inv(s_pin * mask_pin), torch.linalg.inv(schur * same_x2)
    return {
        "size": f"{k}x{k}x{k}",
        "d": (float(spectrum_d[0]), float(spectrum_d[-1])),
        "s": (float(spectrum_s[0]), float(spectrum_s[-1])),
        "free": (float(spectrum_free[0]), float(spectrum_free[-1])),
        "cg_d": cg_steps(
            s_pin, rhs[pinned], lambda r: torch.linalg.solve(d[pinned][:, pinned] * mask_pin, r)
        ),
        "cg_s": cg_steps(s_pin, rhs[pinned], lambda r: blocks_pin @ r),
        "cg_free": cg_steps(schur, project(rhs), lambda r: blocks_free @ r, project),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,16,24", help="comma list of K (K^3 cubes)")
    args = parser.parse_args(argv)
    print(
        "| size | D blocks, pinned | S blocks, pinned | S blocks, gauge free | "
        "CG steps to 1e-6 (D / S pinned / S free) |"
    )
    print("|---|---|---|---|---|")
    for k in map(int, args.sizes.split(",")):
        r = row(k)
        spans = " | ".join(f"[{low:.1e}, {high:.1f}]" for low, high in (r["d"], r["s"], r["free"]))
        print(f"| {r['size']} | {spans} | {r['cg_d']} / {r['cg_s']} / {r['cg_free']} |")


if __name__ == "__main__":
    main()
