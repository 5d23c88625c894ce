"""Exact, certified, batched and differentiable bivariate PID (BROJA definition).

Notation (docs/method.md, "Partial information decomposition"). A joint distribution ``p`` is a
tensor shaped ``(..., K1, K2, Ky)``: source 1 symbol ``x1``, source 2 symbol ``x2``, label ``y``;
leading dims are a batch. Its pairwise marginals are ``p1 = p(x1, y)`` shaped ``(..., K1, Ky)`` and
``p2 = p(x2, y)`` shaped ``(..., K2, Ky)``.

BROJA needs ``V(p) = min_{q in Delta_p} I_q(X1,X2;Y) = H(Y) + min_{q in Delta_p} f(q)`` with
``f(q) = sum q log q(y|x1,x2)``. We solve its Lagrange dual,

    max_{a, b}  g(a, b) = sum a * p1 + sum b * p2
    s.t.        L(x1, x2) = logsumexp_y (a(x1, y) + b(x2, y)) <= 0   for every pair (x1, x2),

with a primal-dual interior point method (Mehrotra predictor-corrector) whose unknowns are the
``(K1 + K2) Ky`` duals, one slack ``s = -L`` and one multiplier ``Q(x1, x2)`` per pair; the
multipliers are the optimal coupling's pair masses ``q*(x1, x2)``. Each iteration solves one
Newton system in the duals, reduced by a Schur complement onto the smaller source's ``K Ky``
duals: factorised densely (``method="dense"``, ``O((K Ky)^3)``) or by conjugate gradients,
matrix-free and preconditioned by the Schur complement's own diagonal blocks
(``method="iterative"``, ``O(K1 K2 Ky^2)`` per Newton step, see :class:`_IterativeNewton`); a
merit line search on the KKT residual globalises the steps. 5 to 12 iterations from a cold start.

Why the dual: zero pairs of the optimal coupling are merely inactive constraints (first-order
primal schemes, like the released code's Adam + Sinkhorn, crawl towards them), a previous
solution is a warm start for the next, slightly different ``p``, and the optimal duals are the
gradient of ``V`` (envelope theorem).

Certificate. ``g(a, b) <= min f <= f(q)`` for every feasible ``(a, b)`` and every ``q`` exactly in
``Delta_p``. We take ``q = Q(x1, x2) softmax_y(a + b)``, round it per label exactly onto the two
marginals (Altschuler, Weed and Rigollet 2017, Algorithm 2), and shift the rows of ``a`` and the
columns of ``b`` onto the feasible set (:func:`_make_feasible`). ``gap = f(q) - g(a, b)`` bounds
the error of ``V``, hence of every atom, which is ``V`` plus exact plug-in informations.

Structural zeros are removed before solving: a cell with ``p1(x1, y) = 0`` or ``p2(x2, y) = 0`` is
zero in every ``q`` of ``Delta_p``, so its exponential is dropped from the constraints (its dual
variable is ``-inf``); labels of zero mass drop out entirely. One dual variable per label is fixed,
removing the gauge ``a(., y) + c, b(., y) - c`` that leaves everything unchanged.

Tiny masses. Cells whose marginal mass is positive but below ``_TINY_MASS`` (softmax
probabilities of confident classifiers, 1e-17) are removed before the solve and the certificate
is recomputed for the original ``p`` with the duals extended to them (:func:`_solve_robustly`);
where that misses ``tol`` the cells below ``_SMALL_MASS`` are removed, and where that misses too
the original ``p`` is solved directly; a distribution that every interior-point attempt leaves
above ``tol`` is refined by alternating I-projections, whose Sinkhorn scalings are duals exact on
tiny cells (:func:`_project_alternately`), then polished by Levenberg-Marquardt on its
optimality conditions, which has no barrier (:func:`_polish`), and last its certificate's dual is
raised by coordinate ascent (:func:`_ascend_dual`). A solve that never reaches a
certificate (``max_iter``) certifies its last point or the cold start: ``gap`` is always finite
and a true bound.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from pidsched._checks import check_int_at_least

__all__ = ["PIDResult", "normalise_joint", "pid"]

LN2 = math.log(2.0)
# Rounding allowance (nats) added to every certificate: the bound is exact arithmetic on float64
# values, each carrying a relative error near 1e-16.
_FLOAT_SLACK = 1e-12
_WARM_MAX_ITER = 30  # iterations a warm start may take before the solve is redone cold
_WARM_SLACK = 1e-2  # at most how far (nats) a warm start is pulled into the constraints' interior
_WARM_SLACK_MIN = 1e-9  # ... and at least
_MAX_HALVINGS = 30  # step halvings of the merit line search
_NEVER_ACCEPTED = 0.5**_MAX_HALVINGS  # the step factor of a line search that never accepted
_SHORT_STEP = 1.0 / 64  # a line search cut below this step also tries the plain Newton direction
_CHUNK_BYTES = 8 * 2**20  # batch chunk of the dense path: bytes of one (K1, K2, Ky, Ky) temporary
_ITERATIVE_CHUNK_BYTES = 2**20  # ... of the iterative path: bytes of one (K1, K2, Ky) cell tensor
_ACCELERATOR_CHUNK_SCALE = 64  # both budgets are this many times larger off the CPU (_chunk_size)
_CACHE_BYTES = 2**19  # bytes of S blocks accumulated at a time by _coupled_blocks (fit in L2)
_STALL_LIMIT = 8  # certificates without progress after which a solve stops short of tol
_CERTIFY_FROM = 100.0  # certificates are computed once the duality measure is below this x tol
_STUCK_STEP, _STUCK_LIMIT = 1e-9, 5  # a solve stops after 5 primal steps in a row below 1e-9
_MAX_CG = 200  # conjugate-gradient iterations per Newton solve of the iterative path
_REUSE_CG_STEPS = 16  # CG steps (both solves) up to which a Newton step's preconditioner is reused
_DENSE_FALLBACK_DUALS = 1_024  # ... above which a missed CG keeps its inexact step (no fallback)
_CG_STEPS_PER_FACTORISATION = 0.0075  # per multiply-add per cell: CG steps costing a factorisation
_SINGLE_CG_STEP_COST = 4  # ... that many times fewer in a single solve (a CG step's fixed cost)
_BROADCAST_MAX_BLOCKS = 2**18  # preconditioner entries a distribution up to which it is broadcast
_CG_FORCING_FLOOR = 1e-10  # smallest relative CG residual asked for
_PREDICTOR_LOOSENESS = 100.0  # the predictor's CG forcing is this times the corrector's ...
_PREDICTOR_FORCING = 0.1  # ... and at most this
_CG_CHECK, _CG_STALL = 50, 0.9  # CG stops where 50 steps cut the squared residual by < 10 %
METHODS = ("auto", "dense", "iterative")
DTYPES = (torch.float64, torch.float32)  # dtypes pid() returns (it solves in float64)
_MAX_DUAL_MOVE = 40.0  # nats a dual variable may move in one Newton step
_TINY_MASS = 1e-11  # marginal mass below which a cell is removed before solving (recertified)
_SMALL_MASS = 1e-8  # ... and in a last attempt, where neither that nor the direct solve certified
_DENSE_MAX_DUALS = 400  # reduced duals up to which "auto" factorises densely (20x20x20) ...
_BATCH_DENSE_MAX_DUALS = 121  # ... and in a batch of at least _BATCH distributions (11x11x11)
_BATCH = 4
_TERMWISE_SCHUR_MIN_LABELS = 16  # Ky from which S is formed term by term, not as W^T W
_TERMWISE_RATE = 3  # ... whose multiply-adds take 3x a large product's (measured: 5 against 16 G/s)
_RIDGE = 1e-15  # relative ridge on the Newton blocks' diagonals: bounds steps along flat directions
_FEASIBILITY_SWEEPS = 2  # c-transform rounds of the certificate's dual shift (_make_feasible)
_BALANCE_SWEEPS = 30  # Sinkhorn sweeps of a pruned solve's or a polished point's q (_balanced)
_POLISH_STEPS = 100  # Levenberg-Marquardt steps of the last attempt on a missed tol (_polish)
_POLISH_DAMPING = (1e-6, 1e8, 1e-14)  # its first damping, the largest tried, the smallest
_POLISH_MAX_UNKNOWNS = 600  # (K1 + K2) Ky + K1 K2 up to which it runs: a step is a dense QR
_PROJECTION_ROUNDS = 30  # alternating I-projection rounds on a missed tol (_project_alternately)
_PROJECTION_SWEEPS = 20  # Sinkhorn sweeps per round
_PROJECTION_FLOOR = 1e-6  # pair mass added to each valid pair (times the independent coupling's)
_ASCENT_SWEEPS = 5  # coordinate-ascent sweeps over the duals of a missed tol (_ascend_dual)
_ASCENT_MOVES = 2.0 ** torch.arange(3, -7, -1)  # nats a dual is moved by, each way, per trial
_ASCENT_MAX_WORK = 2**24  # duals x cells up to which it runs (24 classes): a sweep costs 20 x that

# The PIDResult fields that hold information (bits), the atoms and the mutual informations.
INFORMATION_FIELDS = (
    "unique_1",
    "unique_2",
    "redundancy",
    "synergy",
    "mutual_information",
    "mutual_information_1",
    "mutual_information_2",
)
# Every PIDResult field in bits: the information and the certificate.
BITS_FIELDS = (*INFORMATION_FIELDS, "gap")


@dataclass
class PIDResult:
    """Partial information decomposition of one or a batch of joint distributions.

    Every tensor has the batch shape of the input (0-d for a single distribution) and is in bits,
    except the dual variables (nats).

    Attributes:
        unique_1: U1, information about Y only X1 has.
        unique_2: U2, information about Y only X2 has.
        redundancy: R, information both have.
        synergy: S, information only the pair has.
        mutual_information: I(X1, X2; Y) = U1 + U2 + R + S.
        mutual_information_1: I(X1; Y) = U1 + R.
        mutual_information_2: I(X2; Y) = U2 + R.
        gap: certified upper bound on the error of every atom.
        iterations: Newton iterations the solve took (the largest in the batch), summed over its
            attempts (a distribution that misses ``tol`` is solved again, see ``max_iter``); the
            last attempts add their projection rounds, polish steps and ascent sweeps.
        dual_1: optimal dual variables ``a`` shaped ``(..., K1, Ky)`` (``-inf`` on zero cells);
            pass the result as ``warm_start`` to the next solve.
        dual_2: optimal dual variables ``b`` shaped ``(..., K2, Ky)``.
        pair_mass: the optimal coupling's ``q*(x1, x2)`` shaped ``(..., K1, K2)`` (the multipliers
            of the dual constraints; zero where the constraint is inactive).
        replicates: bootstrap replicates of this result with a leading batch dim ``(B, ...)``
            (set by the metrics' ``num_bootstrap``), or None; see :meth:`interval`.
    """

    unique_1: Tensor
    unique_2: Tensor
    redundancy: Tensor
    synergy: Tensor
    mutual_information: Tensor
    mutual_information_1: Tensor
    mutual_information_2: Tensor
    gap: Tensor
    iterations: int
    dual_1: Tensor | None = None
    dual_2: Tensor | None = None
    pair_mass: Tensor | None = None
    replicates: PIDResult | None = None

    def interval(self, level: float = 0.9) -> tuple[PIDResult, PIDResult]:
        """Bootstrap interval ``(low, high)`` of every atom at nominal coverage ``level`` (bits),
        from :attr:`replicates`; see :func:`pidsched.functional.bootstrap_interval`.

        Raises:
            ValueError: If there are no replicates or ``level`` is not in (0, 1).
        """
        from pidsched.functional.bootstrap import bootstrap_interval  # it imports PIDResult

        if self.replicates is None:
            raise ValueError(
                "This PIDResult has no `replicates`; construct FastPID or ClusteredFastPID with "
                "num_bootstrap=B (e.g. 200) to get bootstrap replicates and an interval."
            )
        return bootstrap_interval(self, self.replicates, level)

    def as_dict(self) -> dict[str, float]:
        """The scalar fields as python floats (bits), for logging a single (0-d) result."""
        out: dict[str, float] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("dual") or field.name in ("pair_mass", "replicates"):
                continue
            if isinstance(value, Tensor):
                if value.dim() != 0:
                    raise ValueError(
                        f"as_dict() needs a single result, got batch shape {tuple(value.shape)}; "
                        "index the tensors instead"
                    )
                value = value.item()
            out[field.name] = float(value)
        return out


def normalise_joint(joint: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Validate a joint tensor ``(..., K1, K2, Ky)`` and normalise each distribution to sum 1.

    Raises:
        TypeError: ``joint`` is not a floating-point or integer tensor.
        ValueError: fewer than 3 dims, NaN/Inf or negative entries, or a distribution of zero mass.
    """
    if not isinstance(joint, Tensor):
        raise TypeError(f"`joint` must be a torch.Tensor, got {type(joint).__name__}")
    if joint.dim() < 3:
        raise ValueError(
            f"`joint` must be shaped (..., K1, K2, Ky) with at least 3 dims, got shape "
            f"{tuple(joint.shape)}"
        )
    if joint.is_complex() or joint.dtype == torch.bool:
        raise TypeError(f"`joint` must hold real counts or probabilities, got dtype {joint.dtype}")
    p = joint.to(dtype)
    if not torch.isfinite(p).all():
        raise ValueError("`joint` contains NaN or Inf; pass finite non-negative counts")
    if (p < 0).any():
        raise ValueError("`joint` has negative entries; pass counts or probabilities (>= 0)")
    total = p.sum((-3, -2, -1), keepdim=True)
    if (total <= 0).any():
        raise ValueError(
            "`joint` has a distribution of zero total mass; accumulate data before computing PID"
        )
    return p / total


def pid(
    joint: Tensor,
    *,
    tol: float = 1e-7,
    max_iter: int = 200,
    warm_start: PIDResult | None = None,
    dtype: torch.dtype = torch.float64,
    method: str = "auto",
) -> PIDResult:
    """Bivariate BROJA partial information decomposition of ``joint``.

    Args:
        joint: non-negative tensor ``(..., K1, K2, Ky)`` of counts or probabilities; each
            distribution over the last three dims is normalised. Differentiable.
        tol: requested bound (bits) on the error of every atom; the returned ``gap`` certifies it.
        max_iter: Newton iterations at most per attempt; a distribution that misses ``tol`` is
            solved again (tiny cells pruned where there are any, then with a scaled merit, then
            by alternating I-projections, a polish without a barrier and a dual ascent: see
            docs/method.md, "Hard joints"), and one that misses
            it after every attempt warns and reports its smallest certified gap.
        warm_start: a previous result for distributions of the same shape; its dual variables start
            the solve (they stay feasible whatever the new ``p``), which saves most iterations when
            ``p`` changed little.
        dtype: dtype of the returned tensors, float64 (default) or float32. The solve always runs
            in float64: float32's resolution (1e-7 relative) is the scale of the tolerance itself,
            and solved in float32, the Newton matrices of small random joints failed to factorise
            at ``tol=1e-7`` (tests/test_pid.py's float32 test holds one). float32 results are the
            float64 ones rounded, so their error is ``gap`` plus that rounding (a relative 6e-8).
        method: how each Newton system is solved. ``"dense"`` factorises the Schur complement onto
            the smaller source's ``K Ky`` duals (``O((K Ky)^3)`` per iteration); ``"iterative"``
            runs preconditioned conjugate gradients on it matrix-free (``O(K1 K2 Ky)`` per CG
            step, tens of steps per Newton system, ``O(K1 K2 Ky^2)`` to build the
            preconditioner); ``"auto"`` (default) takes the dense path up to 400 reduced duals
            (20x20x20, where it is faster; up to 121 in a batch of at least 4, which shares the
            iterative path's per-operation cost) and the iterative one above, which turns dense
            for the rest of a solve once a Newton step's CG steps cost more than a dense
            factorisation would (up to 1,024 reduced duals: late Newton systems are the worst
            conditioned); it solves a distribution that misses ``tol`` on the dense path again
            on the iterative one (the two round differently near float64's limit), and one that
            misses it on the iterative path again on the dense one up to 1,024 reduced duals.
            Both certify ``gap``.

    Returns:
        A :class:`PIDResult` of tensors with the batch shape, in bits. Gradients with respect to
        ``joint`` come from the optimal dual variables (envelope theorem), not from unrolling.

    Raises:
        ValueError: bad ``joint`` (see :func:`normalise_joint`), ``tol <= 0``, ``max_iter`` not an
            integer >= 1, ``dtype`` not float64 or float32, a ``warm_start`` of another shape, or
            ``method`` not one of ``"auto"``, ``"dense"``, ``"iterative"``.

    Example::

        >>> xor = torch.zeros(2, 2, 2)
        >>> for x1 in (0, 1):
        ...     for x2 in (0, 1):
        ...         xor[x1, x2, x1 ^ x2] = 0.25
        >>> round(pid(xor).synergy.item(), 6)
        1.0
    """
    if not tol > 0:
        raise ValueError(f"`tol` must be a positive number of bits, got {tol}")
    check_int_at_least("max_iter", max_iter, 1, "Newton iterations per attempt")
    if dtype not in DTYPES:
        raise ValueError(
            f"`dtype` must be one of {', '.join(map(str, DTYPES))} (the dtype of the returned "
            f"atoms; the solve runs in float64), got {dtype!r}"
        )
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    p = normalise_joint(joint, torch.float64)
    *batch, k1, k2, ky = p.shape
    warm = _warm_duals(warm_start, p.shape)

    flat = p.detach().reshape(-1, k1, k2, ky)
    if len(flat):
        path = _choose_method(method, p.shape)
        solution = _solve_robustly(
            flat, tol * LN2, max_iter, warm, path, _rescue(method, p.shape), method == "auto"
        )
    else:  # an empty batch: empty results, as torch's reductions give
        solution = _DualSolution.empty(flat)
    a = solution.a.reshape(*batch, k1, ky)
    b = solution.b.reshape(*batch, k2, ky)

    p1, p2 = p.sum(-2), p.sum(-3)
    h_y = _entropy(p.sum((-3, -2)), dims=1)
    # g(a, b) is linear in p with (a, b) held fixed: autograd of this expression *is* the envelope
    # theorem's gradient of V, because (a, b) is optimal.
    v = (h_y + _dual_objective(a, b, p1, p2)) / LN2
    i_1 = _mutual_information(p1, h_y) / LN2
    i_2 = _mutual_information(p2, h_y) / LN2
    i_12 = _mutual_information(p.flatten(-3, -2), h_y) / LN2

    gap = (solution.gap / LN2).reshape(batch)
    if (gap > tol).any():
        warnings.warn(
            f"pid: {int((gap > tol).sum())} distribution(s) stopped with a certified gap up to "
            f"{gap.max().item():.3g} bits > tol={tol:g}, at max_iter={max_iter} or where float64 "
            "rounding stalls the certificate (below ~1e-10 bits); raise max_iter or tol",
            RuntimeWarning,
            stacklevel=2,
        )
    return _as_dtype(
        PIDResult(
            unique_1=v - i_2,
            unique_2=v - i_1,
            redundancy=i_1 + i_2 - v,
            synergy=i_12 - v,
            mutual_information=i_12,
            mutual_information_1=i_1,
            mutual_information_2=i_2,
            gap=gap,
            iterations=solution.iterations,
            dual_1=a,
            dual_2=b,
            pair_mass=solution.pair_mass.reshape(*batch, k1, k2),
        ),
        dtype,
    )


def _as_dtype(result: PIDResult, dtype: torch.dtype) -> PIDResult:
    """``result`` with its information fields and ``gap`` (bits) in ``dtype``; the duals and pair
    masses stay float64, the precision a warm start from them needs."""
    if dtype == result.gap.dtype:
        return result
    return replace(result, **{name: getattr(result, name).to(dtype) for name in BITS_FIELDS})


def _choose_method(method: str, shape: torch.Size) -> str:
    """The Newton path for joints of ``shape (..., K1, K2, Ky)``: dense up to
    ``_DENSE_MAX_DUALS`` reduced duals, iterative above; in a batch of at least ``_BATCH``
    distributions, dense only up to ``_BATCH_DENSE_MAX_DUALS``.

    A batch shares the iterative path's per-operation cost (tens of small tensor operations per
    CG step) among its members, but not the dense path's, whose flops are each distribution's
    own. Batched, the adaptive iterative path of ``"auto"`` (it turns dense where CG costs more
    than a factorisation, :func:`_cg_budget`) wins from 12^3 (144 reduced duals) and ties at
    11^3, so dense is kept up to 121. Batches of 256 Dirichlet(0.5) joints and of 65 bootstrap
    replicates of a soft probe, one thread, three rounds, ms a distribution, dense against
    adaptive: 10^3 2.7-2.9 / 3.0-3.1 and 2.9-3.2 / 2.9-3.0; 11^3 4.5-4.7 / 4.5-4.6 and 4.3-5.0 /
    4.5-4.9; 12^3 5.2-5.6 / 4.6-4.7 and 5.0-5.5 / 5.2-5.4; 14^3 11.0-11.6 / 9.5-9.8 and
    10.7-11.3 / 8.7-9.0; 16^3 26.6-26.8 / 14.1-14.4 and 23.5-23.9 / 17.1-17.6. Single solves
    stay dense up to 400.
    """
    if method != "auto":
        return method
    largest = _BATCH_DENSE_MAX_DUALS if math.prod(shape[:-3]) >= _BATCH else _DENSE_MAX_DUALS
    return "dense" if _reduced_duals(shape) <= largest else "iterative"


def _reduced_duals(shape: torch.Size) -> int:
    """``min(K1, K2) Ky`` of joints shaped ``(..., K1, K2, Ky)``: the size of the Schur complement
    every Newton step solves."""
    *_, k1, k2, ky = shape
    return min(k1, k2) * ky


def _dense_affordable(shape: torch.Size) -> bool:
    """Whether a dense factorisation of joints shaped ``(..., K1, K2, Ky)`` is affordable as a
    fallback or rescue: up to ``_DENSE_FALLBACK_DUALS`` reduced duals."""
    return _reduced_duals(shape) <= _DENSE_FALLBACK_DUALS


def _rescue(method: str, shape: torch.Size) -> tuple[str, ...]:
    """The other Newton path, on which ``"auto"`` solves again a distribution that misses ``tol``
    on its own (near float64's limit the two stall at different points: docs/method.md, "Hard
    joints"), where that path is affordable: the dense one up to ``_DENSE_FALLBACK_DUALS``
    reduced duals. A forced ``method`` keeps to its path."""
    if method != "auto":
        return ()
    if _choose_method(method, shape) == "dense":
        return ("iterative",)
    return ("dense",) if _dense_affordable(shape) else ()


def _solve_robustly(
    p: Tensor,
    tol: float,
    max_iter: int,
    warm: tuple[Tensor, Tensor, Tensor] | None,
    method: str,
    rescue: tuple[str, ...] = (),
    adaptive: bool = False,
) -> _DualSolution:
    """Solve with the cells of tiny marginal mass removed, certify on the original ``p``.

    A marginal cell below ``_TINY_MASS`` (e.g. a softmax probability of 1e-17) makes the Newton
    matrices singular in float64 long before the certificate is reached. The solve runs on ``p``
    with those cells zeroed; the duals are then extended to the removed cells
    (:func:`_extend_duals`) and the certificate is recomputed for the original ``p``, so it stays
    a true bound. Where that bound misses ``tol`` (the removed mass mattered), cells below
    ``_SMALL_MASS`` are removed instead. Where that misses too, the original ``p`` is solved with
    the line search's merit weighing each pair's residual ``L + s`` by ``sqrt(Q)``, and last with
    the plain merit; where those miss too, each Newton path of ``rescue`` makes the same two
    attempts; then the best point so far is refined by alternating I-projections
    (:func:`_project_alternately`), polished (:func:`_polish`, up to ``_POLISH_MAX_UNKNOWNS``
    unknowns) and last its dual is raised by coordinate ascent (:func:`_ascend_dual`, up to
    ``_ASCENT_MAX_WORK`` duals times cells: a 23-class soft probe of margin 20 that every other
    attempt left at 2.9e-6 bits certified 5.6e-7 after 6.5 s of it).
    Each distribution keeps its best certificate of all attempts. With ``adaptive`` (``"auto"``)
    the attempts on ``method`` are adaptive (:class:`_Path`); those on the ``rescue`` paths keep
    to their path, because they are there to round differently.

    Why the scaled merit: on a peaked joint (one cell near 1, the rest near 1e-7) the plain merit
    is ruled by the residuals of pairs of mass 1e-7, whose ``L`` is very curved along the Newton
    direction, and its steps are cut to 1e-4 while the peak's marginal stays 1e-4 off; the scaled
    merit lets those steps through. It is not the first attempt where there are tiny cells to
    prune, because on a few joints it accepts a large violation on a pair of tiny mass (one
    certified only 0.3 bits); on a joint with no such cell the pruned attempts do not run, and it
    is the first solve. It comes before the plain direct solve because that one is the slow one
    on confident probes: on a 30-class probe of logit margin 20 (marginal masses of 1e-10) at
    ``tol=1e-7`` the plain solve runs to ``max_iter`` (200 iterations, 13 s), the scaled one
    stops after 54 (5 s).
    """

    def on_path(path: _Path, target: float = tol, iterations: int = max_iter):
        return lambda q, w: _solve_in_chunks(q, target, iterations, w, path)

    def pruned_at(mass: float, share: float = 1.0, iterations: int = max_iter):
        def solve(q: Tensor, w) -> _DualSolution | None:
            pruned = _without_tiny_cells(q, mass)
            if pruned is None:
                return None
            path = _Path(method, adaptive=adaptive)
            return _recertify(q, on_path(path, tol * share, iterations)(pruned, w))

        return solve

    # Cells below _TINY_MASS cost ~1e-9 bits in the extended certificate, so that solve may use
    # all of tol. Cells below _SMALL_MASS cost up to ~1e-5 bits: that solve aims at tol / 4 to
    # leave the extension room, and gets at most 50 iterations (a rescue, not the main solve).
    solution = pruned_at(_TINY_MASS)(p, warm)
    attempts = [pruned_at(_SMALL_MASS, 0.25, min(max_iter, 50))]
    # The rescue paths are not adaptive: they are there to round differently from the first.
    for newton, turns in ((method, adaptive), *((other, False) for other in rescue)):
        attempts += [
            on_path(_Path(newton, scaled_merit=True, adaptive=turns)),
            on_path(_Path(newton, adaptive=turns)),
        ]
    for attempt in attempts:
        solution = attempt(p, warm) if solution is None else _retry(solution, p, tol, attempt, warm)

    def refining(refine: Callable[[Tensor, _DualSolution, float, int], _DualSolution]):
        # _retry calls this before it changes `solution`: the rows refined are those it retries.
        return lambda q, _: refine(q, solution.rows(solution.gap > tol), tol, max_iter)

    refinements = [_project_alternately]
    *_, k1, k2, ky = p.shape
    if (k1 + k2) * ky + k1 * k2 <= _POLISH_MAX_UNKNOWNS:
        refinements.append(_polish)
    if (k1 + k2) * ky * k1 * k2 * ky <= _ASCENT_MAX_WORK:
        refinements.append(_ascend_dual)
    for refine in refinements:
        solution = _retry(solution, p, tol, refining(refine), warm)
    return solution


def _retry(
    solution: _DualSolution,
    p: Tensor,
    tol: float,
    solve: Callable[[Tensor, tuple | None], _DualSolution | None],
    warm: tuple[Tensor, Tensor, Tensor] | None,
) -> _DualSolution:
    """Solve again (``solve(p_missed, warm_missed)``, or ``None`` for no other attempt) the
    distributions whose gap misses ``tol``; keep whichever certificate is smaller."""
    missed = solution.gap > tol
    if not bool(missed.any()):
        return solution
    other = solve(p[missed], None if warm is None else tuple(w[missed] for w in warm))
    if other is None:
        return solution
    better = torch.zeros_like(missed)
    better[missed] = other.gap < solution.gap[missed]
    chosen = better[missed]
    solution.replace_rows(better, other.rows(chosen))
    solution.iterations += other.iterations
    return solution


def _without_tiny_cells(p: Tensor, mass: float) -> Tensor | None:
    """``p (B, K1, K2, Ky)`` with every cell whose ``p(x1, y)`` or ``p(x2, y)`` is positive but
    below ``mass`` set to 0 (then renormalised); ``None`` where there is no such cell."""
    p1, p2 = p.sum(2), p.sum(1)
    tiny_1, tiny_2 = (p1 > 0) & (p1 < mass), (p2 > 0) & (p2 < mass)
    if not bool(tiny_1.any() | tiny_2.any()):
        return None
    removed = tiny_1[:, :, None, :] | tiny_2[:, None, :, :]
    pruned = p.masked_fill(removed, 0.0)
    total = pruned.sum((1, 2, 3), keepdim=True)
    # A distribution made only of tiny cells keeps them all (it is then a scaled ordinary one).
    return torch.where(total > 0, pruned / total.clamp_min(1e-300), p)


def _extend_duals(a: Tensor, b: Tensor, p1: Tensor, p2: Tensor) -> tuple[Tensor, Tensor]:
    """Finite duals for the cells a pruned solve left at ``-inf`` although their mass is positive.

    ``a(x1, y) = log p(y | x1) - max_x2 b(x2, y)``, then
    ``b(x2, y) = log p(y | x2) - max_x1 a(x1, y)``, so each new term ``exp(a + b)`` of a pair
    constraint is at most the removed cell's conditional. The conditional, not the joint mass
    ``p(x1, y)``: the new cell adds ``a p(x1, y)`` to ``g`` and costs about the row's mass
    ``p(x1)`` times ``exp(a + max b)`` in the row shift that restores feasibility, and that
    trade-off peaks at ``a = log(p(x1, y) / p(x1)) - max b``. It cut the certified gap of the
    fuzz's worst confident soft probe from 1.1e-5 to 7.5e-6 bits.
    """
    finite_b = torch.where(torch.isfinite(b), b, -math.inf).amax(1, keepdim=True)
    top_b = torch.where(torch.isfinite(finite_b), finite_b, 0.0)
    missing_a = (p1 > 0) & ~torch.isfinite(a)
    cond_1 = p1 / p1.sum(-1, keepdim=True).clamp_min(1e-300)
    a = torch.where(missing_a, torch.log(cond_1.clamp_min(1e-300)) - top_b, a)
    finite_a = torch.where((p1 > 0) & torch.isfinite(a), a, -math.inf).amax(1, keepdim=True)
    top_a = torch.where(torch.isfinite(finite_a), finite_a, 0.0)
    missing_b = (p2 > 0) & ~torch.isfinite(b)
    cond_2 = p2 / p2.sum(-1, keepdim=True).clamp_min(1e-300)
    b = torch.where(missing_b, torch.log(cond_2.clamp_min(1e-300)) - top_a, b)
    return a, b


def _recertify(p: Tensor, solution: _DualSolution) -> _DualSolution:
    """The certificate of a pruned solve's point, for the original ``p`` (duals extended)."""
    prob = _Problem.from_joint(p)
    a, b = _extend_duals(solution.a, solution.b, prob.p1, prob.p2)
    a = a.masked_fill(prob.p1 <= 0, -math.inf)
    b = b.masked_fill(prob.p2 <= 0, -math.inf)
    a_feasible, b_feasible, gap = _certify(a, b, solution.pair_mass, prob, _BALANCE_SWEEPS)
    return _DualSolution(a_feasible, b_feasible, solution.pair_mass, gap, solution.iterations)


# --------------------------------------------------------------------------------------------------
# Information-theoretic helpers (nats)


def _entropy(p: Tensor, dims: int) -> Tensor:
    """Shannon entropy (nats) over the last ``dims`` dims; ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(tuple(range(-dims, 0)))


def _mutual_information(joint_xy: Tensor, h_y: Tensor) -> Tensor:
    """``I(X;Y) = H(X) + H(Y) - H(X,Y)`` (nats) of a joint ``(..., Kx, Ky)``, label last, given
    ``H(Y)`` (shared by the three informations of a result)."""
    return _entropy(joint_xy.sum(-1), dims=1) + h_y - _entropy(joint_xy, dims=2)


def _masked_dot(dual: Tensor, marginal: Tensor) -> Tensor:
    """``sum dual * marginal`` over the last two dims, skipping cells of zero mass (dual = -inf)."""
    return torch.where(marginal > 0, dual, 0.0).mul(marginal).sum((-2, -1))


def _warm_duals(
    warm_start: PIDResult | None, shape: torch.Size
) -> tuple[Tensor, Tensor, Tensor] | None:
    if warm_start is None:
        return None
    if warm_start.dual_1 is None or warm_start.dual_2 is None or warm_start.pair_mass is None:
        raise ValueError("`warm_start` carries no dual variables; pass a result returned by pid()")
    *batch, k1, k2, ky = shape
    if warm_start.dual_1.shape != (*batch, k1, ky) or warm_start.dual_2.shape != (*batch, k2, ky):
        raise ValueError(
            f"`warm_start` is for distributions shaped {tuple(warm_start.dual_1.shape[:-2])} x "
            f"({warm_start.dual_1.shape[-2]}, {warm_start.dual_2.shape[-2]}, "
            f"{warm_start.dual_1.shape[-1]}), but `joint` has shape {tuple(shape)}; pass a result "
            "of the same shape or none"
        )
    return (
        warm_start.dual_1.detach().reshape(-1, k1, ky),
        warm_start.dual_2.detach().reshape(-1, k2, ky),
        warm_start.pair_mass.detach().reshape(-1, k1, k2),
    )


# --------------------------------------------------------------------------------------------------
# The interior point solver. Batched tensors: a (B, K1, Ky), b (B, K2, Ky), pairs (B, K1, K2).


@dataclass
class _Problem:
    """A batch of normalised joints with their supports, fixed for the whole solve.

    Vacuous pairs (no cell in the support) keep ``Q = 0``, ``s = 1`` and zero residuals throughout,
    so most of the iteration needs no masking; ``full`` (every cell in the support, the usual case
    for soft-discretised joints) skips the little that remains.
    """

    p: Tensor  # (B, K1, K2, Ky)
    p1: Tensor  # (B, K1, Ky)
    p2: Tensor  # (B, K2, Ky)
    allowed: Tensor  # (B, K1, K2, Ky) bool: cells that may carry mass in Delta_p
    valid: Tensor  # (B, K1, K2) bool: pairs whose constraint is not vacuous
    full: bool  # every cell allowed (so every pair valid)
    free_b: Tensor  # (B, K2, Ky) 0/1: the duals of b the Newton step moves (not gauge, not -inf)
    frozen_a: Tensor | None  # (B, K1, Ky, Ky) identity on the a duals outside the support
    frozen_b: Tensor  # (B, Ky, Ky, K2) identity on the frozen b duals, Schur-diagonal layout
    keep_bb: Tensor  # (B, Ky, Ky, K2) free_b(x2, y) free_b(x2, y'): the entries of D kept
    num_pairs: Tensor  # (B,) number of pair constraints, m in the duality measure mu = Q.s / m

    @classmethod
    def from_joint(cls, p: Tensor) -> _Problem:
        p1, p2 = p.sum(2), p.sum(1)
        m1, m2 = p1 > 0, p2 > 0
        allowed = m1[:, :, None, :] & m2[:, None, :, :]
        valid = allowed.any(-1)
        free_b = (m2 & ~_gauge_cells(p2)).to(p.dtype)
        full = bool(allowed.all())
        frozen_a = None if full else torch.diag_embed((~m1).to(p.dtype))
        # Schur-diagonal layout (y, y', x2) of the b-b blocks: see _factorise_newton.
        frozen_b = torch.diag_embed(1 - free_b).permute(0, 2, 3, 1)
        keep_bb = (free_b[..., :, None] * free_b[..., None, :]).permute(0, 2, 3, 1)
        num_pairs = valid.sum((1, 2)).to(p.dtype)
        return cls(p, p1, p2, allowed, valid, full, free_b, frozen_a, frozen_b, keep_bb, num_pairs)

    def rows(self, mask: Tensor) -> _Problem:
        """The distributions selected by ``mask (B,)``, bool or an index."""
        values = (getattr(self, field.name) for field in fields(self))
        return _Problem(*(v[mask] if isinstance(v, Tensor) else v for v in values))

    def on_pairs(self, values: Tensor) -> Tensor:
        """``values (B, K1, K2)`` with vacuous pairs set to 0."""
        return values if self.full else torch.where(self.valid, values, 0.0)


@dataclass
class _DualSolution:
    a: Tensor
    b: Tensor
    pair_mass: Tensor  # (B, K1, K2) optimal q(x1, x2)
    gap: Tensor  # (B,) certified, nats
    iterations: int

    @staticmethod
    def empty(p: Tensor) -> _DualSolution:
        """The solution of an empty batch ``p (0, K1, K2, Ky)``."""
        _, k1, k2, ky = p.shape
        return _DualSolution(
            p.new_zeros(0, k1, ky),
            p.new_zeros(0, k2, ky),
            p.new_zeros(0, k1, k2),
            p.new_zeros(0),
            0,
        )

    def rows(self, mask: Tensor) -> _DualSolution:
        """The distributions selected by ``mask (B,)``."""
        return _DualSolution(
            self.a[mask], self.b[mask], self.pair_mass[mask], self.gap[mask], self.iterations
        )

    def copy(self) -> _DualSolution:
        """A copy of every tensor, with no ``iterations`` of its own: the start of a
        refinement that keeps each distribution's best certificate."""
        return _DualSolution(
            self.a.clone(), self.b.clone(), self.pair_mass.clone(), self.gap.clone(), 0
        )

    def replace_rows(self, mask: Tensor, other: _DualSolution) -> None:
        """Overwrite the distributions selected by ``mask (B,)`` with ``other``'s, one per
        selected distribution, in order (``iterations`` is left to the caller)."""
        for name in ("a", "b", "pair_mass", "gap"):
            getattr(self, name)[mask] = getattr(other, name)


@dataclass(frozen=True)
class _Path:
    """How a solve's Newton steps are taken: ``method`` (``"dense"`` or ``"iterative"``, see
    :func:`pid`); ``scaled_merit``, whether the line search weighs each pair's residual
    ``L + s`` by ``sqrt(Q)`` (:func:`_solve_robustly` explains when); ``adaptive``, whether the
    iterative path turns dense where its CG steps cost more than a factorisation
    (:func:`_cg_budget`; ``method="auto"``)."""

    method: str
    scaled_merit: bool = False
    adaptive: bool = False


def _gauge_cells(p2: Tensor) -> Tensor:
    """One cell (x2*, y) per label of positive mass whose b is held at 0 (removes the gauge)."""
    best = p2.argmax(1, keepdim=True)
    cells = torch.zeros_like(p2, dtype=torch.bool).scatter_(1, best, True)
    return cells & (p2.sum(1, keepdim=True) > 0)


def _dual_objective(a: Tensor, b: Tensor, p1: Tensor, p2: Tensor) -> Tensor:
    """``g(a, b) = sum a * p1 + sum b * p2`` (nats) over the last two dims of each."""
    return _masked_dot(a, p1) + _masked_dot(b, p2)


def _make_feasible(a: Tensor, b: Tensor, lse: Tensor, prob: _Problem) -> tuple[Tensor, Tensor]:
    """The duals shifted onto the feasible set by a row shift ``alpha(x1)`` of ``a`` and a column
    shift ``beta(x2)`` of ``b`` (constant in ``y``), given the pair constraints ``L`` (``lse``).

    Any shifts with ``alpha(x1) + beta(x2) >= L(x1, x2)`` on every valid pair make ``(a - alpha,
    b - beta)`` feasible, at a cost ``sum alpha p(x1) + sum beta p(x2)`` to ``g``: the cheapest are
    a transport problem's dual. Alternating c-transforms from ``beta = 0``, ``alpha = max_x2 (L -
    beta)`` then ``beta = max_x1 (L - alpha)``, never raise that cost and keep every row's largest
    constraint at exactly 0; the first alone is the plain row shift. The second pays where the
    violations sit in a column: a pruned solve's duals extended to its removed cells
    (:func:`_extend_duals`) raise every pair of the columns they touch, and a row shift pays for
    each of those pairs once per row.
    """
    pairs = lse.masked_fill(~prob.valid, -math.inf)
    beta = torch.zeros_like(pairs[:, :1, :])
    for _ in range(_FEASIBILITY_SWEEPS):
        alpha = _finite_or_zero((pairs - beta).amax(2, keepdim=True))
        beta = _finite_or_zero((pairs - alpha).amax(1, keepdim=True))
    # The last alpha is the best response to the last beta: every row ends tight.
    alpha = _finite_or_zero((pairs - beta).amax(2, keepdim=True))
    return a - alpha, b - beta.transpose(1, 2)


def _finite_or_zero(shift: Tensor) -> Tensor:
    """``shift`` with the ``-inf`` of rows or columns without a valid pair set to 0."""
    return torch.where(torch.isfinite(shift), shift, 0.0)


def _fix_gauge(a: Tensor, b: Tensor, prob: _Problem) -> tuple[Tensor, Tensor]:
    gauge = _gauge_cells(prob.p2)
    offset = torch.where(gauge, b, 0.0).sum(1, keepdim=True)  # b(x2*, y), 0 for empty labels
    return a + offset, b - offset


def _cold_start(prob: _Problem) -> tuple[Tensor, Tensor]:
    """Duals of the conditionally independent coupling ``q(y|x1,x2) ~ p(y|x1) p(y|x2) / p(y)``."""
    p1, p2 = prob.p1, prob.p2
    py = p1.sum(1, keepdim=True)
    log_cond_1 = torch.log(p1 / p1.sum(-1, keepdim=True).clamp_min(1e-300))
    log_cond_2 = torch.log(p2 / p2.sum(-1, keepdim=True).clamp_min(1e-300))
    a = log_cond_1.masked_fill(p1 <= 0, -math.inf)
    b = (log_cond_2 - torch.log(py.clamp_min(1e-300))).masked_fill(p2 <= 0, -math.inf)
    return a, b


def _warm_point(warm: tuple[Tensor, Tensor], prob: _Problem) -> tuple[Tensor, Tensor]:
    """Previous duals where finite and still allowed; cold-start values elsewhere."""
    wa, wb = (w.to(prob.p) for w in warm)
    usable_a, usable_b = torch.isfinite(wa) & (prob.p1 > 0), torch.isfinite(wb) & (prob.p2 > 0)
    if prob.full and bool(usable_a.all() & usable_b.all()):
        return wa, wb
    cold_a, cold_b = _cold_start(prob)
    return torch.where(usable_a, wa, cold_a), torch.where(usable_b, wb, cold_b)


def _primal_value(q: Tensor) -> Tensor:
    """``f(q) = sum q log q(y|x1,x2) = -H_q(Y|X1,X2)`` in nats."""
    pair = q.sum(-1)
    return torch.special.xlogy(q, q).sum((1, 2, 3)) - torch.special.xlogy(pair, pair).sum((1, 2))


def _pair_conditionals(a: Tensor, b: Tensor, prob: _Problem) -> tuple[Tensor, Tensor]:
    """Pair constraint ``L (B, K1, K2)`` (0 on vacuous pairs) and ``r = softmax_y(a + b)``
    ``(B, K1, K2, Ky)`` (0 on vacuous pairs and outside the support)."""
    cells = a[:, :, None, :] + b[:, None, :, :]
    if prob.full:
        lse = torch.logsumexp(cells, dim=-1)
        return lse, torch.exp(cells - lse[..., None])
    cells = cells.masked_fill(~prob.allowed, -math.inf)
    lse = torch.where(prob.valid, torch.logsumexp(cells, dim=-1), 0.0)
    cond = torch.where(prob.valid[..., None], torch.exp(cells - lse[..., None]), 0.0)
    return lse, cond


@dataclass
class _PairBlocks:
    """The blocks both Newton factorisations share, for ``M = [[A, C], [C^T, D]]`` in ``(a, b)``:
    ``A``'s blocks factorised, and ``C`` kept matrix-free. Every ``(x1, x2)`` block of ``C`` is
    ``Q diag(r) + kappa r r^T`` (``kappa = Q / s - Q``), so ``C v`` and ``C^T w`` are one pass
    over the pairs each."""

    cond: Tensor  # (B, K1, K2, Ky) r
    mass_cond: Tensor  # (B, K1, K2, Ky) Q r
    kappa: Tensor  # (B, K1, K2) Q / s - Q
    chol_a: Tensor  # (B, K1, Ky, Ky) A's blocks, factorised

    # Every contraction below is a broadcast product and a sum over the (K1, K2, Ky) cells: one
    # streaming pass each. As einsum or batched matrix products they ran as many tiny
    # matrix-vector products (and copies into their layouts), 3x slower per CG step at 20^3.

    def _through(self, v: Tensor) -> Tensor:
        """``r(x1, x2) . v(x2)`` for ``v`` shaped like ``b``: ``(B, K1, K2)``."""
        return (self.cond * v[:, None]).sum(-1)

    def _through_t(self, w: Tensor) -> Tensor:
        """``r(x1, x2) . w(x1)`` for ``w`` shaped like ``a``: ``(B, K1, K2)``."""
        return (self.cond * w[:, :, None]).sum(-1)

    def _coupling(self, v: Tensor, through: Tensor | None = None) -> Tensor:
        """``C v`` for ``v`` shaped like ``b``: ``(B, K1, Ky)``; ``through``: ``_through(v)``."""
        weight = self.kappa * (self._through(v) if through is None else through)
        return torch.addcmul(self.mass_cond * v[:, None], self.cond, weight[..., None]).sum(2)

    def _coupling_t(self, w: Tensor, weight: Tensor | None = None) -> Tensor:
        """``C^T w`` for ``w`` shaped like ``a``: ``(B, K2, Ky)``. ``weight`` (pairs) replaces
        ``kappa * _through_t(w)`` in the rank-one part."""
        weight = self.kappa * self._through_t(w) if weight is None else weight
        return torch.addcmul(self.mass_cond * w[:, :, None], self.cond, weight[..., None]).sum(1)

    def _solve_a(self, rhs: Tensor) -> Tensor:
        """``A^{-1} rhs`` for ``rhs`` shaped like ``a``."""
        # Triangular solves, not an explicit inverse: A's blocks carry the active pairs' huge
        # curvature, and an inverse loses the accuracy the last Newton steps need.
        return _cholesky_solve(self.chol_a, rhs[..., None])[..., 0]


@dataclass
class _NewtonFactor(_PairBlocks):
    """Factorisation of the Newton matrix ``M = [[A, C], [C^T, D]]`` in ``(a, b)``.

    ``A`` (the ``a``-``a`` part) and ``D`` are block diagonal, one ``Ky x Ky`` block per symbol;
    ``A`` is eliminated by its blocks' factors, and the Schur complement ``S = D - C^T A^{-1} C``
    onto the ``K2 Ky`` duals of ``b`` is formed and factorised densely: ``C^T A^{-1} C`` as
    ``W^T W`` (:func:`_whitened_coupling`, ``W`` kept for the solves) below
    ``_TERMWISE_SCHUR_MIN_LABELS`` labels, term by term (:func:`_coupled_schur`) from there on.
    """

    free_b: Tensor  # (B, K2, Ky) 0/1: the duals of b the step moves (C's other columns are 0)
    chol_s: Tensor  # (B, K2 Ky, K2 Ky)
    whitened: Tensor | None  # W = L^{-1} C (B, K1 Ky, K2 Ky) where S was formed as D - W^T W

    def solve(self, rhs_a: Tensor, rhs_b: Tensor) -> tuple[Tensor, Tensor]:
        """``M^{-1} (rhs_a, rhs_b)`` for right-hand sides shaped like ``a`` and ``b``; ``rhs_b``
        is 0 off ``free_b``, and so is ``db``."""
        if self.whitened is None:
            reduced = (rhs_b - self._coupling_t(self._solve_a(rhs_a))) * self.free_b
            db = _cholesky_solve(self.chol_s, reduced.reshape(len(reduced), -1, 1))
            db = db.reshape(rhs_b.shape)
            return self._solve_a(rhs_a - self._coupling(db)), db
        # With W at hand, C^T A^{-1} rhs_a = W^T L^{-1} rhs_a: fewer operations than C
        # matrix-free, which counts in small single solves (10 % at 10^3).
        bsz, k1, ky, _ = self.chol_a.shape
        u = torch.linalg.solve_triangular(self.chol_a, rhs_a[..., None], upper=False)
        u = u.reshape(bsz, k1 * ky, 1)
        db = _cholesky_solve(
            self.chol_s, torch.baddbmm(rhs_b.reshape(bsz, -1, 1), self.whitened.mT, u, alpha=-1)
        )
        da = torch.linalg.solve_triangular(
            self.chol_a.mT,
            torch.baddbmm(u, self.whitened, db, alpha=-1).reshape(bsz, k1, ky, 1),
            upper=True,
        )
        return da.reshape(bsz, k1, ky), db.reshape(rhs_b.shape)


def _factorise_newton(
    cond: Tensor,
    pair_mass: Tensor,
    mass_per_slack: Tensor,
    prob: _Problem,
    chol_a: Tensor | None = None,
) -> _NewtonFactor:
    """Factorise ``W + J^T diag(Q / s) J``, the Newton matrix in ``(a, b)``; ``chol_a``: ``A``'s
    blocks already factorised (:func:`_factorised_a_blocks`) for this point, as the iterative
    path's factor holds them when its CG falls back here.

    Per pair, in ``c = a(x1) + b(x2)``, the block is ``Q diag(r) + (Q/s - Q) r r^T``: the Hessian of
    ``Q L`` plus the slack's Gauss-Newton term. It is summed onto the ``(a(x1), a(x1))``,
    ``(b(x2), b(x2))`` and ``(a(x1), b(x2))`` blocks. Frozen variables get an identity row.
    """
    bsz, _, k2, ky = cond.shape
    kappa = mass_per_slack - pair_mass
    weighted = kappa[..., None] * cond  # kappa r; 0 on vacuous pairs
    mass_cond = pair_mass[..., None] * cond
    if chol_a is None:
        chol_a = _factorised_a_blocks(weighted, cond, mass_cond, prob)
    whitened = None
    if _forms_s_termwise(ky):
        schur = _coupled_schur(cond, mass_cond, weighted, chol_a, prob.free_b).neg_()
    else:
        whitened = _whitened_coupling(cond, mass_cond, weighted, chol_a, prob.free_b)
        schur = torch.matmul(whitened.mT, whitened).neg_().view(bsz, k2, ky, k2, ky)
    # D's blocks D[x2][y, y'] sit on the diagonal (x2, x2) of S; the view (y, y', x2) reaches them
    # without an index copy.
    d_blocks = _d_blocks(weighted, cond, mass_cond.sum(1)).permute(0, 2, 3, 1)
    d_blocks = torch.addcmul(prob.frozen_b, d_blocks, prob.keep_bb)
    _add_ridge(d_blocks, dims=(1, 2))
    schur.diagonal(dim1=1, dim2=3).add_(d_blocks)
    chol_s = _cholesky(schur.view(bsz, k2 * ky, k2 * ky))
    return _NewtonFactor(cond, mass_cond, kappa, chol_a, prob.free_b, chol_s, whitened)


def _forms_s_termwise(ky: int) -> bool:
    """Whether the dense path forms ``C^T A^{-1} C`` term by term (:func:`_coupled_schur`) rather
    than as ``W^T W`` (:func:`_whitened_coupling`) for joints of ``ky`` labels."""
    return ky >= _TERMWISE_SCHUR_MIN_LABELS


def _whitened_coupling(
    cond: Tensor, mass_cond: Tensor, weighted: Tensor, chol_a: Tensor, free_b: Tensor
) -> Tensor:
    """``W = L^{-1} C`` ``(B, K1 Ky, K2 Ky)``, ``L`` the factors of ``A``'s blocks and ``C``'s
    columns outside ``free_b`` cleared, so that ``C^T A^{-1} C = W^T W``: one matrix product of
    ``K1 Ky (K2 Ky)^2`` multiply-adds, the cheaper way below ``_TERMWISE_SCHUR_MIN_LABELS``."""
    bsz, k1, k2, ky = cond.shape
    # C's pair blocks are symmetric, so block[x1, x2, y', y] = C[(x1, y), (x2, y')] is also the
    # layout of C^T's (x2, y') rows per x1: the triangular solve from the right reads it and
    # writes W in the (x1 y, x2 y') layout the product W^T W needs, with no transposing copy
    # (those copies took half the factorisation's time in a batch).
    free = free_b[:, None]
    block = (weighted * free)[..., :, None] * cond[..., None, :]
    block.diagonal(dim1=-2, dim2=-1).add_(mass_cond * free)
    w = torch.linalg.solve_triangular(
        chol_a.mT, block.view(bsz, k1, k2 * ky, ky), upper=True, left=False
    )
    return w.mT.reshape(bsz, k1 * ky, k2 * ky)


def _coupled_schur(
    cond: Tensor, mass_cond: Tensor, weighted: Tensor, chol_a: Tensor, free_b: Tensor
) -> Tensor:
    """``C^T A^{-1} C`` with ``C``'s columns outside ``free_b`` cleared: ``(B, K2, Ky, K2, Ky)``,
    in ``O(K1 K2^2 Ky^2)`` multiply-adds where ``W^T W`` (``W = L^{-1} C``) takes
    ``O(K1 K2^2 Ky^3)``: a factor ``Ky / 2`` fewer.

    With ``C_p = Q R + kappa r r^T`` (``R = diag(r)``) for the pairs ``p = (x1, x2)`` and
    ``p' = (x1, x2')``, ``G = A_x1^{-1}``, ``u = G r``, ``m = Q r`` and ``w = kappa r``,

        C_p^T G C_p' = Q Q' R G R' + Q kappa' (R u') r'^T + kappa Q' r (R' u)^T
                       + kappa kappa' (r^T G r') r r'^T,

    and each term is, entry ``(y, y')``, a sum over ``x1`` of products of per-pair factors: the
    first two are ``sum_x1 m(y) [G(y, y') m'(y') + u'(y) w'(y')]``, a matrix product over ``x1``
    per label ``y``, and the last two ``sum_x1 w(y) [u(y') m'(y') + (r^T G r') w'(y')]``, one per
    symbol ``x2``.
    """
    bsz, k1, k2, ky = cond.shape
    free = free_b[:, None]  # clears C's columns: every term carries m or w on both sides
    m, w = mass_cond * free, weighted * free
    # v = L^{-1} r and u = L^{-T} v = G r by triangular solves, and r^T G r' = v . v': the kappa
    # terms cancel D's kappa r r^T (kappa reaches 1e10 near the optimum), which an explicit
    # inverse is not accurate enough for. G itself multiplies only Q's, which stay bounded.
    v = torch.linalg.solve_triangular(chol_a, cond.transpose(2, 3), upper=False)  # (B,K1,Ky,K2)
    u = torch.linalg.solve_triangular(chol_a.mT, v, upper=True)
    through = torch.matmul(v.mT, v)  # (B, K1, K2, K2): r(x1, x2)^T G r(x1, x2')
    inverse = torch.cholesky_inverse(chol_a)  # (B, K1, Ky, Ky)
    # First two terms, per label y: factors laid out (B, y, x1, x2', y'). The products are
    # written into contiguous buffers: left to itself, the broadcast picked a layout from its
    # strided operands that made the product read it 4x slower.
    right = torch.mul(
        inverse.transpose(1, 2)[:, :, :, None, :],
        m[:, None],
        out=m.new_empty((bsz, ky, k1, k2, ky)),
    ).addcmul_(u.permute(0, 2, 1, 3)[..., None], w[:, None])
    by_label = torch.matmul(m.permute(0, 3, 2, 1), right.view(bsz, ky, k1, k2 * ky))
    # Last two, per symbol x2: factors laid out (B, x2, x1, x2', y').
    right = torch.mul(
        u.permute(0, 3, 1, 2)[:, :, :, None, :], m[:, None], out=m.new_empty((bsz, k2, k1, k2, ky))
    ).addcmul_(through.transpose(1, 2)[..., None], w[:, None])
    by_symbol = torch.matmul(w.permute(0, 2, 3, 1), right.view(bsz, k2, k1, k2 * ky))
    by_symbol += by_label.transpose(1, 2)  # (B, x2, y, x2' y')
    return by_symbol.view(bsz, k2, ky, k2, ky)


def _factorised_a_blocks(
    weighted: Tensor, cond: Tensor, mass_cond: Tensor, prob: _Problem
) -> Tensor:
    """Cholesky factors of ``A``'s blocks ``sum_x2 (kappa r r^T + Q diag(r))``, one per ``x1``:
    ``(B, K1, Ky, Ky)``, from ``weighted = kappa r`` and ``mass_cond = Q r`` ``(B, K1, K2, Ky)``;
    identity on the frozen duals, with the relative ridge of :func:`_add_ridge`."""
    a_blocks = torch.einsum("bijy,bijz->biyz", weighted, cond)
    a_blocks.diagonal(dim1=-2, dim2=-1).add_(mass_cond.sum(2))
    if prob.frozen_a is not None:
        a_blocks = a_blocks + prob.frozen_a
    return _cholesky(_add_ridge(a_blocks))


def _d_blocks(weighted: Tensor, cond: Tensor, diagonal: Tensor) -> Tensor:
    """``D``'s blocks ``sum_x1 kappa r r^T`` plus ``diagonal`` ``(B, K2, Ky)`` on their diagonals
    (``sum_x1 Q r``, and the iterative path's ridge): ``(B, K2, Ky, Ky)``."""
    d_blocks = torch.einsum("bijy,bijz->bjyz", weighted, cond)
    d_blocks.diagonal(dim1=-2, dim2=-1).add_(diagonal)
    return d_blocks


@dataclass
class _IterativeNewton(_PairBlocks):
    """The Newton matrix ``M = [[A, C], [C^T, D]]`` in ``(a, b)`` kept matrix-free.

    ``A`` is eliminated exactly (its ``Ky x Ky`` blocks, one per ``x1``, are factorised), and the
    Schur complement ``S = D - C^T A^{-1} C`` onto ``b`` is solved by conjugate gradients with
    ``C`` applied matrix-free (:class:`_PairBlocks`), so a CG step costs ``O(K1 K2 Ky + K1 Ky^2)``
    instead of the dense path's ``O((K2 Ky)^3)`` per Newton step.

    Two choices make CG converge in tens of steps where the interior point's matrices span 1e10
    (docs/method.md, "The iterative path"):

    - The preconditioner is ``S``'s own diagonal blocks (one per ``x2``, ``O(K1 K2 Ky^2)`` to
      form), not ``D``'s: an active pair's huge curvature ``Q / s`` sits in both ``C`` and ``D``
      and cancels in ``S``, so ``D`` misjudges every direction an active constraint allows.
    - The gauge ``a(., y) + c, b(., y) - c`` is left free rather than pinned at one cell per label:
      pinning makes ``b(., y) = c`` away from the pinned cell a near-null direction (one per label,
      eigenvalues near 1e-4 after preconditioning). CG runs on the consistent singular system,
      projected off the exact null vectors (constant ``b(., y)``), and the solution is pinned
      afterwards, which changes no cell ``a + b``.
    """

    d_diagonal: Tensor  # (B, K2, Ky) the mass part of D's blocks, sum_x1 Q r, plus D's ridge
    s_inverse: Tensor  # (B, K2, Ky, Ky) S's diagonal blocks, inverted (the preconditioner)
    allowed_a: Tensor  # (B, K1, Ky) 0/1
    allowed_b: Tensor  # (B, K2, Ky) 0/1
    gauge: Tensor  # (B, K2, Ky) 0/1: the cell per label whose db the dense path holds at 0
    per_label: Tensor  # (B, 1, Ky) number of allowed b cells per label (at least 1)
    forcing: Tensor  # (B,) relative residual at which CG stops
    max_cg: int
    dense: Callable[[], _NewtonFactor] | None  # exact factorisation where affordable
    guess: Tensor | None = None  # the previous solve's db: a close start for the corrector
    cg_iterations: int = 0
    fallback: _NewtonFactor | None = None

    # Contractions are streaming passes over the cells, as in _PairBlocks; the exception is
    # _precondition's product with large S blocks (see there).

    def _project(self, v: Tensor) -> Tensor:
        """``v`` (shaped like ``b``) minus its per-label mean over the allowed cells: off ``S``'s
        null vectors, so rounding cannot accumulate along them."""
        v = v * self.allowed_b
        return v - self.allowed_b * (v.sum(1, keepdim=True) / self.per_label)

    def _schur(self, v: Tensor) -> Tensor:
        """``S v = D v - C^T A^{-1} C v`` in one pass over the pairs: every pair block
        ``H = Q R + kappa r r^T`` sits in both ``D`` and ``C``, so with ``u = A^{-1} C v``,
        ``S v = sum_x1 H (v(x2) - u(x1))``; ``D``'s blocks are never read (at 101^3 they are
        one 8 MB pass of the ten a CG step makes)."""
        through = self._through(v)
        u = self._solve_a(self._coupling(v, through))
        rank_one = self.kappa * (through - self._through_t(u))
        return self._project(self.d_diagonal * v + self._coupling_t(-u, rank_one))

    def _precondition(self, r: Tensor) -> Tensor:
        """``S``'s inverted diagonal blocks times ``r`` (shaped like ``b``), projected."""
        if self.s_inverse[0].numel() > _BROADCAST_MAX_BLOCKS:
            # Blocks this long (K2 Ky^2 above 2^18: 20x20x309, 101^3) are multiplied faster by
            # einsum's batched products than through the broadcast's (B, K2, Ky, Ky) temporary:
            # 2x at 20x20x309, 1.2x at 101^3 (per product). Shorter ones, however many a batch
            # holds, are not: 0.28 against 0.15 ms for a chunk of 16 at 20^3.
            return self._project(torch.einsum("bjyz,bjz->bjy", self.s_inverse, r))
        return self._project((self.s_inverse * r[:, :, None, :]).sum(-1))

    def solve(self, rhs_a: Tensor, rhs_b: Tensor) -> tuple[Tensor, Tensor]:
        """``M^{-1} (rhs_a, rhs_b)`` with ``db = 0`` on the gauge cells, up to the relative
        residual ``forcing`` on the Schur system. ``rhs_b`` may be 0 on the gauge cells (the dense
        path drops their equations): their entries follow from the system's consistency,
        ``sum_x1 rhs_a(x1, y) = sum_x2 rhs_b(x2, y)``."""
        if self.fallback is not None:
            return self.fallback.solve(rhs_a, rhs_b)
        missing = rhs_a.sum(1, keepdim=True) - (rhs_b * (1 - self.gauge)).sum(1, keepdim=True)
        rhs_b = rhs_b * (1 - self.gauge) + self.gauge * missing
        u = self._solve_a(rhs_a)
        db, converged = self._conjugate_gradients(self._project(rhs_b - self._coupling_t(u)))
        if not converged and self.dense is not None:
            # An inexact step that misses its forcing term may stall the interior point; the
            # exact one keeps the iteration count of the dense path.
            self.fallback = self.dense()
            return self.fallback.solve(rhs_a, rhs_b * (1 - self.gauge))
        self.guess = db
        da = self._solve_a(rhs_a - self._coupling(db)) * self.allowed_a
        # Pin the gauge like the dense path: db = 0 on each label's gauge cell.
        shift = (db * self.gauge).sum(1, keepdim=True)
        return da + shift * self.allowed_a, (db - shift) * self.allowed_b

    def _conjugate_gradients(self, rhs: Tensor) -> tuple[Tensor, bool]:
        """Preconditioned CG on ``S x = rhs``, batched; each distribution stops at its own
        residual ``forcing * |rhs|`` (its later updates are multiplied by 0). Returns ``x`` and
        whether every distribution reached its residual."""
        dims = (1, 2)
        x = torch.zeros_like(rhs) if self.guess is None else self._project(self.guess)
        residual = rhs - self._schur(x) if self.guess is not None else rhs.clone()
        target = (self.forcing * rhs.norm(dim=dims)).square()
        z = self._precondition(residual)
        direction = z.clone()
        rz = (residual * z).sum(dims)
        checkpoint = residual.square().sum(dims)
        for step in range(self.max_cg):
            norm = residual.square().sum(dims)
            active = norm > target
            if step % _CG_CHECK == 0 and step:
                # Rounding in S v (the active pairs' curvature reaches 1e10) puts a floor under
                # the residual; where it has stopped falling, more steps are wasted.
                active = active & (norm < _CG_STALL * checkpoint)
                checkpoint = torch.where(active, norm, checkpoint)
            if not bool(active.any()):
                break
            s_dir = self._schur(direction)
            curvature = (direction * s_dir).sum(dims)
            alpha = torch.where(active & (curvature > 0), rz / curvature.clamp_min(1e-300), 0.0)
            x = x + alpha[:, None, None] * direction
            residual = residual - alpha[:, None, None] * s_dir
            z = self._precondition(residual)
            rz_next = (residual * z).sum(dims)
            beta = rz_next / rz.clamp_min(1e-300)
            direction = z + beta[:, None, None] * direction
            rz = rz_next
            self.cg_iterations += 1
        converged = not bool((residual.square().sum(dims) > target).any())
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), converged


def _iterative_newton(
    cond: Tensor,
    pair_mass: Tensor,
    mass_per_slack: Tensor,
    prob: _Problem,
    forcing: Tensor,
    preconditioner: Tensor | None = None,
    max_cg: int = _MAX_CG,
) -> _IterativeNewton:
    """Factorise the blocks of ``A`` and of ``S``'s block diagonal (see :class:`_IterativeNewton`;
    the matrix is that of :func:`_factorise_newton`). ``preconditioner``: the inverted S blocks of
    an earlier Newton step, used instead of building them (``O(K1 K2 Ky^2)``); ``max_cg``: CG
    steps per solve before it falls back to the dense factorisation (where affordable)."""
    kappa = mass_per_slack - pair_mass
    mass_cond = pair_mass[..., None] * cond
    weighted = kappa[..., None] * cond
    chol_a = _factorised_a_blocks(weighted, cond, mass_cond, prob)
    allowed_b = (prob.p2 > 0).to(cond.dtype)
    mass_b = mass_cond.sum(1)
    # D's ridge (see _add_ridge) on the diagonal sum_x1 (Q r + kappa r^2); 0 outside the support.
    ridge_b = _RIDGE * (mass_b + (weighted * cond).sum(1))
    if preconditioner is None:
        keep = allowed_b[..., :, None] * allowed_b[..., None, :]
        frozen = torch.diag_embed(1 - allowed_b)
        d_blocks = _d_blocks(weighted, cond, mass_b + ridge_b)
        schur_blocks = (d_blocks - _coupled_blocks(cond, mass_cond, kappa, chol_a)) * keep
        preconditioner = torch.cholesky_inverse(_cholesky(schur_blocks + frozen))
    gauge = allowed_b - prob.free_b  # free_b is the allowed cells less one gauge cell per label
    affordable = _dense_affordable(cond.shape)
    return _IterativeNewton(
        cond,
        mass_cond,
        kappa,
        chol_a,
        mass_b + ridge_b,
        preconditioner,
        (prob.p1 > 0).to(cond.dtype),
        allowed_b,
        gauge,
        allowed_b.sum(1, keepdim=True).clamp_min(1.0),
        forcing,
        max_cg,
        (lambda: _factorise_newton(cond, pair_mass, mass_per_slack, prob, chol_a))
        if affordable
        else None,
    )


def _cg_budget(prob: _Problem) -> int | None:
    """CG steps per Newton step (its two solves together) that cost about as much as one dense
    factorisation of the Schur complement; None where that factorisation is not affordable
    (above ``_DENSE_FALLBACK_DUALS`` reduced duals).

    A CG step is a few tens of memory-bound passes over the ``K1 K2 Ky`` cells, a factorisation
    :func:`_factorisation_work` multiply-adds at matrix-product speed, so the budget is
    ``_CG_STEPS_PER_FACTORISATION`` times the work per cell; measured on batches of 65 at 12^3 to
    28^3 (docs/benchmarks.md, "Batched solves"). A single solve's CG step also pays its tens of
    operations' fixed cost alone, which a batch shares: on single probes of 16 to 31 classes the
    best budget was ``_SINGLE_CG_STEP_COST`` times smaller. ``K2 <= K1`` here (see _solve_dual).
    """
    if not _dense_affordable(prob.p.shape):
        return None
    bsz, k1, k2, ky = prob.p.shape
    steps = _CG_STEPS_PER_FACTORISATION * _factorisation_work(k1, k2, ky) / (k1 * k2 * ky)
    return max(1, round(steps if bsz >= _BATCH else steps / _SINGLE_CG_STEP_COST))


def _factorisation_work(k1: int, k2: int, ky: int) -> float:
    """Multiply-adds of one dense Newton factorisation (:func:`_factorise_newton`), in units of a
    large matrix product's: forming ``C^T A^{-1} C`` (``K1 K2^2 Ky^3`` as ``W^T W``; from
    ``_TERMWISE_SCHUR_MIN_LABELS`` labels ``2 K1 K2^2 Ky^2`` term by term, whose products contract
    over only ``K1`` and run ``_TERMWISE_RATE`` times slower per multiply-add) and its Cholesky
    factorisation, ``(K2 Ky)^3 / 3``."""
    if _forms_s_termwise(ky):
        forming = _TERMWISE_RATE * 2 * k1 * k2**2 * ky**2
    else:
        forming = k1 * k2**2 * ky**3
    return forming + (k2 * ky) ** 3 / 3


def _coupled_blocks(cond: Tensor, mass_cond: Tensor, kappa: Tensor, chol_a: Tensor) -> Tensor:
    """The diagonal blocks of ``C^T A^{-1} C``: ``(B, K2, Ky, Ky)``, summed over ``x1`` of
    ``C_p A_x1^{-1} C_p`` with ``C_p = Q R + kappa r r^T`` and ``R = diag(r)``, i.e.

        Q^2 R A^{-1} R + Q kappa (R u r^T + r u^T R) + kappa^2 (r . u) r r^T,   u = A^{-1} r.

    The rank-one terms are matrix products over ``x1``; the first is elementwise in
    ``(y, y')`` and is accumulated one ``x1`` at a time (``O(K1 K2 Ky^2)`` work, one
    ``(K2, Ky, Ky)`` temporary).
    """
    # u by triangular solves: the kappa^2 (r . u) term cancels D's kappa r r^T (kappa reaches
    # 1e10 near the optimum), which an explicit inverse is not accurate enough for.
    u = _cholesky_solve(chol_a, cond.transpose(2, 3)).transpose(2, 3)  # (B, K1, K2, Ky)
    # The first term stays bounded (A^{-1} <= diag(q(x1, .))^{-1}): an explicit inverse will do.
    a_inverse = torch.cholesky_inverse(chol_a)
    through = (cond * u).sum(-1)  # r . u, (B, K1, K2)
    mixed = torch.einsum("bijy,bijz->bjyz", (mass_cond * kappa[..., None]) * u, cond)
    blocks = mixed + mixed.transpose(-2, -1)
    blocks += torch.einsum("bijy,bijz->bjyz", (kappa.square() * through)[..., None] * cond, cond)
    # One x1 at a time, accumulated in place (a three-operand einsum would run it as many tiny
    # batched products), over a few x2 at a time: the blocks being summed then stay in cache for
    # all x1 instead of streaming the whole (B, K2, Ky, Ky) tensor through memory K1 times.
    bsz, k1, k2, ky = cond.shape
    width = max(1, _CACHE_BYTES // (bsz * ky * ky * cond.element_size()))
    for start in range(0, k2, width):
        part = blocks[:, start : start + width]
        masses = mass_cond[:, :, start : start + width]  # (B, K1, width, Ky)
        for x1 in range(k1):
            mass = masses[:, x1]
            part.addcmul_(mass[..., :, None] * a_inverse[:, x1, None], mass[..., None, :])
    return blocks


def _add_ridge(blocks: Tensor, dims: tuple[int, int] = (-2, -1)) -> Tensor:
    """Scale the diagonal (over ``dims``) of the Newton matrix's ``A`` or ``D`` blocks by
    ``1 + _RIDGE``, in place; returns ``blocks``.

    Where the optimal duals are not unique, the Newton matrix has directions whose curvature
    vanishes with the pair masses of inactive pairs while the active pairs' curvature ``Q / s``
    grows: X2 a copy of X1 has the direction ``a(x, .) + t, b(x, .) - t``, with curvature near
    1e-11 against 1e10 elsewhere, and float64 then returned dual steps past the 40-nat cap and
    pair-mass steps of 1e22 (the interior point stalled, gaps up to 2.4e-4 bits). A ridge relative
    to each diagonal entry, just above float64's resolution, bounds the step along such a direction
    and changes the others by about 1e-15.
    """
    blocks.diagonal(dim1=dims[0], dim2=dims[1]).mul_(1 + _RIDGE)
    return blocks


def _cholesky(matrix: Tensor) -> Tensor:
    chol, info = torch.linalg.cholesky_ex(matrix)
    failed = info > 0
    if failed.any():
        # Near-singular in float64 (pairs of vanishing mass): a relative ridge keeps it definite.
        # Only the failed matrices get it: the others' Newton steps stay exact.
        singular = matrix[failed]
        diagonal = singular.diagonal(dim1=-2, dim2=-1)
        # Relative to each row's own diagonal: rows of tiny mass (1e-8 against 1) would drown in
        # a ridge scaled by the largest diagonal entry.
        floor = 1e-30 * diagonal.abs().amax(-1, keepdim=True)
        ridge = 1e-12 * diagonal.abs() + floor
        chol[failed] = torch.linalg.cholesky_ex(singular + torch.diag_embed(ridge))[0]
    return chol


def _cholesky_solve(chol: Tensor, rhs: Tensor) -> Tensor:
    """``M^{-1} rhs`` for ``M = chol chol^T`` and ``rhs`` ``(B, n, 1)``, by two triangular solves
    (a batched ``cholesky_solve`` with one right-hand side is several times slower on CPU)."""
    half = torch.linalg.solve_triangular(chol, rhs, upper=False)
    return torch.linalg.solve_triangular(chol.mT, half, upper=True)


def _to_dual_space(pair_values: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
    """``J^T v``: pair values ``(B, K1, K2)`` weighted by ``r`` and summed onto ``(a, b)``."""
    weighted = pair_values[..., None] * cond
    return weighted.sum(2), weighted.sum(1)


def _to_pair_space(da: Tensor, db: Tensor, cond: Tensor) -> Tensor:
    """``J dx``: the change of each pair constraint along a dual direction ``(da, db)``."""
    return ((da[:, :, None, :] + db[:, None, :, :]) * cond).sum(-1)


def _boundary_ratio(value: Tensor, change: Tensor, prob: _Problem) -> Tensor:
    """Per pair, the step at which ``value + step * change`` reaches 0 (huge where it never does:
    a positive value over 1e-300, or infinite on vacuous pairs)."""
    ratio = value / (-change).clamp_min(1e-300)
    return ratio if prob.full else ratio.masked_fill(~prob.valid, math.inf)


def _step_to_boundary(ratio: Tensor, keep: Tensor | float = 0.01) -> Tensor:
    """Largest step in (0, 1] keeping every value above ``keep`` times itself, given the
    :func:`_boundary_ratio` ``(B, K1, K2)``; ``keep`` is a float or one per distribution."""
    return ((1 - keep) * ratio.amin((1, 2))).clamp(max=1.0)


def _newton_step(
    factor,
    residual_dual,
    residual_pair,
    complementarity,
    cond,
    pair_mass,
    slack,
    mass_per_slack,
    prob,
):
    """Solve the primal-dual Newton system for ``(da, db, dQ, ds)`` given the factorised matrix.

    ``residual_dual = J^T Q - p`` (a pair of tensors shaped like ``a`` and ``b``),
    ``residual_pair = L + s``, ``complementarity = Q s - target``; all three are 0 on vacuous pairs.
    """
    h = (pair_mass * residual_pair - complementarity) / slack
    ha, hb = _to_dual_space(h, cond)
    da, db = factor.solve(-(residual_dual[0] + ha), -(residual_dual[1] + hb) * prob.free_b)
    # A cell whose conditional r is tiny (1e-50 where its marginal is 1e-9) has almost no
    # curvature, and Newton would move its dual by ~1e40 nats, forcing a vanishing step on every
    # other variable. Cap each dual's move; the pair updates below stay consistent with it.
    da, db = da.clamp(-_MAX_DUAL_MOVE, _MAX_DUAL_MOVE), db.clamp(-_MAX_DUAL_MOVE, _MAX_DUAL_MOVE)
    # dQ = (Q (J dx + L + s) - complementarity) / s = h + (Q / s) J dx
    dq = torch.addcmul(h, mass_per_slack, _to_pair_space(da, db, cond))
    ds = torch.addcmul(complementarity, slack, dq).div_(pair_mass).neg_()
    return da, db, dq, prob.on_pairs(ds)


def _round_to_marginals(q: Tensor, prob: _Problem) -> Tensor:
    """Move ``q`` exactly onto ``Delta_p``: per label, shrink rows, shrink columns, then add the
    rank-one correction of the remaining marginal deficits (Altschuler et al. 2017, Alg. 2)."""
    plan = q.permute(0, 3, 1, 2)  # (B, Ky, K1, K2)
    row_target, col_target = prob.p1.transpose(1, 2), prob.p2.transpose(1, 2)
    rows = plan.sum(-1)
    plan = (
        plan * torch.where(rows > row_target, row_target / rows.clamp_min(1e-300), 1.0)[..., None]
    )
    cols = plan.sum(-2)
    plan = (
        plan
        * torch.where(cols > col_target, col_target / cols.clamp_min(1e-300), 1.0)[..., None, :]
    )
    row_deficit = (row_target - plan.sum(-1)).clamp_min(0.0)
    col_deficit = (col_target - plan.sum(-2)).clamp_min(0.0)
    total = row_deficit.sum(-1).clamp_min(1e-300)[..., None, None]
    plan = plan + row_deficit[..., :, None] * col_deficit[..., None, :] / total
    return plan.permute(0, 2, 3, 1)


def _certificate(
    a: Tensor,
    b: Tensor,
    pair_mass: Tensor,
    lse: Tensor,
    cond: Tensor,
    prob: _Problem,
    balance: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Feasible duals ``(a, b)`` (shifted onto the constraint boundary, :func:`_make_feasible`)
    and the certified gap (nats): ``f(q) - g(a, b)`` with ``q = Q r`` rounded exactly onto
    ``Delta_p``; ``lse`` and ``cond`` are ``L`` and ``r`` at ``(a, b)``. With ``balance`` > 0,
    ``q`` is also balanced onto the marginals by that many Sinkhorn sweeps before its rounding
    (:func:`_balanced`), and each distribution keeps the smaller of the two primal values."""
    primal = _primal_bound(pair_mass[..., None] * cond, prob, balance)
    a_feasible, b_feasible = _make_feasible(a, b, lse, prob)
    gap = primal - _dual_objective(a_feasible, b_feasible, prob.p1, prob.p2)
    return a_feasible, b_feasible, gap.clamp_min(0.0) + _FLOAT_SLACK


def _primal_bound(q: Tensor, prob: _Problem, balance: int = 0) -> Tensor:
    """``(B,)`` an upper bound on ``V`` (nats): ``f`` of ``q (B, K1, K2, Ky)`` rounded onto
    ``Delta_p``, and with ``balance`` > 0 the smaller of that and ``f`` of ``q`` balanced by that
    many Sinkhorn sweeps before its rounding (:func:`_balanced`)."""
    primal = _primal_value(_round_to_marginals(q, prob))
    if balance:
        primal = torch.minimum(
            primal, _primal_value(_round_to_marginals(_balanced(q, prob, balance), prob))
        )
    return primal


def _balanced(q: Tensor, prob: _Problem, sweeps: int) -> Tensor:
    """``q (B, K1, K2, Ky)`` scaled per label onto its row marginals ``p1`` and column marginals
    ``p2`` by ``sweeps`` alternating Sinkhorn sweeps (iterative proportional fitting).

    The rank-one correction of :func:`_round_to_marginals` spreads each label's remaining deficit
    as a product of its row and column deficits, which is crude where ``q`` misses whole cells:
    a pruned solve's point, whose removed cells carry almost no mass in ``Q r``. Scaling moves
    mass within the rows and columns that have it instead; on a confident 10-class soft probe of
    the fuzz (case 10743) 30 sweeps took the certificate from 6.2e-6 to 1.7e-6 bits.
    """
    for _ in range(sweeps):
        rows = q.sum(2, keepdim=True)
        q = q * torch.where(rows > 0, prob.p1[:, :, None] / rows.clamp_min(1e-300), 0.0)
        cols = q.sum(1, keepdim=True)
        q = q * torch.where(cols > 0, prob.p2[:, None] / cols.clamp_min(1e-300), 0.0)
    return q


def _kkt_merit(residual_dual, residual_pair, complementarity=None) -> Tensor:
    """Squared norm of the perturbed KKT residual, per distribution (frozen duals excluded: their
    residuals are 0 outside the support and masked on the gauge cells); without
    ``complementarity``, of the feasibility residuals alone."""
    dual_a, dual_b = residual_dual
    pair = residual_pair.square()
    if complementarity is not None:
        pair = pair + complementarity.square()
    return dual_a.square().sum((1, 2)) + dual_b.square().sum((1, 2)) + pair.sum((1, 2))


def _residuals(a, b, slack, pair_mass, prob) -> tuple[Tensor, ...]:
    """``(L, r, (J^T Q - p1, J^T Q - p2), L + s)`` at a point; see :func:`_newton_step`."""
    lse, cond = _pair_conditionals(a, b, prob)
    on_a, on_b = _to_dual_space(pair_mass, cond)
    residual_dual = (on_a - prob.p1, (on_b - prob.p2) * prob.free_b)
    return lse, cond, residual_dual, prob.on_pairs(lse + slack)


def _take_step(a, b, slack, pair_mass, da, db, ds, dq, primal_step, dual_step):
    # Frozen duals, vacuous pairs and finished distributions have zero change or zero step, so
    # the plain update leaves them as they are (-inf + 0 stays -inf).
    primal, dual = primal_step[:, None, None], dual_step[:, None, None]
    return a + primal * da, b + primal * db, slack + primal * ds, pair_mass + dual * dq


def _reordered(direction: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """:func:`_newton_step`'s ``(da, db, dq, ds)`` in :func:`_take_step`'s order ``(da, db, ds,
    dq)``."""
    da, db, dq, ds = direction
    return da, db, ds, dq


def _line_search(current, direction, keep, centre, merit, prob, weight):
    """Backtracking on the perturbed KKT merit along a Newton ``direction`` ``(da, db, ds, dq)``.

    The full step first goes as far towards the boundary as keeps ``keep`` (per distribution) of
    every slack and pair mass; each distribution then halves its step until its merit (with the
    complementarity target ``centre``, pair residuals multiplied by ``weight``) falls below
    ``merit``, at most ``_MAX_HALVINGS`` times. Returns the new point
    ``(a, b, slack, pair_mass)``, its residuals (``None`` where some distribution never
    decreased), the primal step taken ``(B,)`` and the factor the halvings cut it by ``(B,)``.
    """
    slack, pair_mass = current[2:]
    ds, dq = direction[2:]
    primal_step = _step_to_boundary(_boundary_ratio(slack, ds, prob), keep)
    dual_step = _step_to_boundary(_boundary_ratio(pair_mass, dq, prob), keep)
    scale = torch.ones_like(primal_step)
    trial = _take_step(*current, *direction, primal_step, dual_step)
    point = _residuals(*trial, prob)
    # Only the distributions still halving are stepped and evaluated again: in a batch most
    # accept the first step, and a few need ten halvings or more.
    pending = torch.arange(len(scale), device=scale.device)
    rows = (trial, point, prob, centre, weight, merit)
    for _ in range(_MAX_HALVINGS):
        rows_trial, rows_point, rows_prob, rows_centre, rows_weight, rows_merit = rows
        trial_merit = _kkt_merit(
            rows_point[2],
            rows_point[3] * rows_weight,
            rows_prob.on_pairs(rows_trial[3] * rows_trial[2] - rows_centre),
        )
        trial_merit = torch.nan_to_num(trial_merit, nan=math.inf)
        accepted = trial_merit <= (1 - 1e-4 * scale[pending]) * rows_merit
        if accepted.all():
            return trial, point, primal_step * scale, scale
        halving = ~accepted
        everyone = bool(halving.all())  # e.g. a single solve: no row copies (p is 8 MB at 101^3)
        pending = pending[halving]
        scale[pending] *= 0.5
        if not everyone:
            rows_prob = rows_prob.rows(halving)
            rows_centre, rows_merit = rows_centre[halving], rows_merit[halving]
            if not isinstance(rows_weight, float):
                rows_weight = rows_weight[halving]
        rows_trial = _take_step(
            *(t[pending] for t in (*current, *direction)),
            (primal_step * scale)[pending],
            (dual_step * scale)[pending],
        )
        rows_point = _residuals(*rows_trial, rows_prob)
        if len(pending) == len(scale):
            trial, point = rows_trial, rows_point
        else:
            _put_rows(trial, pending, rows_trial)
            _put_rows(point, pending, rows_point)
        rows = (rows_trial, rows_point, rows_prob, rows_centre, rows_weight, rows_merit)
    return trial, None, primal_step * scale, scale


def _put_rows(target: tuple, index: Tensor, rows: tuple) -> None:
    """Write ``rows`` (tensors, or tuples of them, for the distributions at ``index``) into
    ``target``'s tensors of the same structure, in place."""
    for whole, part in zip(target, rows, strict=True):
        if isinstance(whole, tuple):
            _put_rows(whole, index, part)
        else:
            whole[index] = part


def _chunk_size(shape: torch.Size, element_size: int, method: str, device: torch.device) -> int:
    """Distributions per chunk of a batch of ``shape (B, K1, K2, Ky)`` on ``method``'s path.

    On the CPU a chunk's Newton temporaries stay near ``_CHUNK_BYTES`` (the dense path's
    (K1, K2, Ky, Ky) blocks) or ``_ITERATIVE_CHUNK_BYTES`` (the iterative path's (K1, K2, Ky)
    cells, which it never builds as blocks: sized like the dense path its chunks were Ky times
    smaller than needed to share a CG step's tens of operations, 39 against 34 ms a distribution at
    20^3): one huge batch is memory-bound and slower per distribution than several cache-sized
    ones. Elsewhere (CUDA) a chunk costs its kernel launches and host synchronisations, about the
    same whatever its size, so the budgets are ``_ACCELERATOR_CHUNK_SCALE`` times larger: 1,024
    distributions a chunk at 20^3 instead of 16. A dense factorisation then holds three tensors
    the size of the blocks (the blocks or the term-by-term factors, ``W`` or a second factor,
    and S), so a chunk's peak is a few GiB: about 4 GiB at 20^3 and 7 GiB at 32^3 where the
    adaptive path turns dense (by the tensors' sizes). Not measured on a GPU yet (none was
    lent): ``benchmarks/gpu_check.py`` times it.
    """
    _, k1, k2, ky = shape
    scale = 1 if device.type == "cpu" else _ACCELERATOR_CHUNK_SCALE
    cells = k1 * k2 * ky * element_size
    if method == "dense":
        # The term-by-term S (_coupled_schur) also builds a (K1, K2, K2, Ky) factor (K2 <= K1).
        width = max(ky, min(k1, k2)) if _forms_s_termwise(ky) else ky
        return max(1, scale * _CHUNK_BYTES // (cells * width))
    return max(1, scale * _ITERATIVE_CHUNK_BYTES // cells)


def _solve_in_chunks(
    p: Tensor, tol: float, max_iter: int, warm: tuple[Tensor, Tensor, Tensor] | None, path: _Path
) -> _DualSolution:
    """Solve a batch in chunks of :func:`_chunk_size` distributions."""
    bsz = p.shape[0]
    chunk = _chunk_size(p.shape, p.element_size(), path.method, p.device)
    if bsz <= chunk:
        return _solve_dual(p, tol, max_iter, warm, path)
    parts = [
        _solve_dual(
            p[start : start + chunk],
            tol,
            max_iter,
            None if warm is None else tuple(w[start : start + chunk] for w in warm),
            path,
        )
        for start in range(0, bsz, chunk)
    ]
    return _DualSolution(
        *(
            torch.cat([getattr(part, name) for part in parts])
            for name in ("a", "b", "pair_mass", "gap")
        ),
        iterations=max(part.iterations for part in parts),
    )


def _solve_dual(
    p: Tensor, tol: float, max_iter: int, warm: tuple[Tensor, Tensor, Tensor] | None, path: _Path
) -> _DualSolution:
    """Solve, warm-started where given; a warm start that fails to certify is redone cold.

    The Newton matrix is reduced onto the duals of source 2, so the sources are swapped first when
    source 2 has more symbols (the smaller reduced system is the cheaper one).
    """
    if p.shape[2] > p.shape[1]:
        swapped_warm = None if warm is None else (warm[1], warm[0], warm[2].transpose(1, 2))
        swapped = _solve_dual(p.transpose(1, 2), tol, max_iter, swapped_warm, path)
        return _DualSolution(
            swapped.b, swapped.a, swapped.pair_mass.transpose(1, 2), swapped.gap, swapped.iterations
        )
    # A warm start that needs many iterations started far from the new optimum: cut it short.
    solution = _interior_point(
        p, tol, min(max_iter, _WARM_MAX_ITER) if warm else max_iter, warm, path
    )
    failed = solution.gap > tol
    if warm is None or not failed.any():
        return solution
    cold = _interior_point(p[failed], tol, max_iter, None, path)
    solution.replace_rows(failed, cold)
    solution.iterations += cold.iterations
    return solution


def _interior_point(
    p: Tensor, tol: float, max_iter: int, warm: tuple[Tensor, Tensor, Tensor] | None, path: _Path
) -> _DualSolution:
    """Primal-dual interior point (Mehrotra predictor-corrector) on the dual problem.

    Unknowns: duals ``(a, b)``, pair masses ``Q >= 0`` (the multipliers, i.e. the primal
    ``q(x1, x2)``) and slacks ``s = -L >= 0``. ``p`` is ``(B, K1, K2, Ky)``, normalised.
    """
    prob = _Problem.from_joint(p)
    bsz, k1, _ = prob.p1.shape
    m = prob.num_pairs.clamp_min(1.0)
    if warm is None:
        # The conditionally independent coupling: its duals and pair masses satisfy the
        # stationarity equations exactly; only the pair constraints are violated.
        a, b, pair_mass = _cold_point(prob)
        lse, _ = _pair_conditionals(a, b, prob)
        slack = (-lse).clamp_min(1.0)
    else:
        a, b = _fix_gauge(*_warm_point(warm[:2], prob), prob)
        pair_mass = prob.on_pairs(warm[2].to(p))
        lse, cond = _pair_conditionals(a, b, prob)
        # The previous optimum misses the new marginals by about as much as p moved: pull the
        # start that far (at most _WARM_SLACK) into the interior. An unchanged p then certifies
        # at once, and a moved one gets room for the constraints that change activity.
        rows, cols = _to_dual_space(pair_mass, cond)
        moved = (rows - prob.p1).abs().sum((1, 2)) + ((cols - prob.p2) * prob.free_b).abs().sum(
            (1, 2)
        )
        interior = moved.clamp(_WARM_SLACK_MIN, _WARM_SLACK)[:, None, None]
        slack = torch.maximum(-lse, interior)
        pair_mass = torch.maximum(pair_mass, interior / (k1 * prob.p2.shape[1]))
    pair_mass = torch.where(prob.valid, pair_mass, 0.0)
    slack = torch.where(prob.valid, slack, 1.0)

    done = torch.zeros(bsz, dtype=torch.bool, device=p.device)
    best_a, best_b, best_q = a.clone(), b.clone(), pair_mass.clone()
    best_gap = torch.full((bsz,), math.inf, dtype=p.dtype, device=p.device)
    stalled = torch.zeros(bsz, dtype=torch.long, device=p.device)
    stuck = torch.zeros(bsz, dtype=torch.long, device=p.device)
    any_done = False  # a Python copy of done.any()
    index = torch.arange(bsz, device=p.device)  # each row's place in the batch given
    finished: list[tuple[Tensor, ...]] = []  # (index, a, b, pair_mass, gap) of rows that left
    iterations = 0
    point = None  # (L, r, residuals) at the current point when the line search computed them
    reusable = None  # the iterative path's preconditioner, while it keeps CG short
    method = path.method
    budget = _cg_budget(prob) if path.adaptive and method == "iterative" else None
    while True:
        lse, cond, residual_dual, residual_pair = point or _residuals(a, b, slack, pair_mass, prob)
        complementarity = pair_mass * slack
        mu = complementarity.sum((1, 2)) / m
        # Certificates from 100x tol on: cheap next to a Newton step, and a degenerate joint
        # (X2 a copy of X1) can break down just short of tol, keeping only what it certified.
        if (mu * m <= _CERTIFY_FROM * tol).any():
            a_feasible, b_feasible, gap = _certificate(a, b, pair_mass, lse, cond, prob)
            better = (gap < best_gap) & ~done
            best_a = torch.where(better[:, None, None], a_feasible, best_a)
            best_b = torch.where(better[:, None, None], b_feasible, best_b)
            best_q = torch.where(better[:, None, None], pair_mass, best_q)
            # Below ~1e-10 the certificate meets float64 rounding and stops improving: give up on
            # a distribution whose gap has not shrunk by 10 % in _STALL_LIMIT certificates.
            progress = gap < 0.9 * best_gap
            stalled = torch.where(progress, 0, stalled + (mu * m <= tol).long())
            best_gap = torch.where(better, gap, best_gap)
            done = done | (best_gap <= tol) | (stalled >= _STALL_LIMIT)
            any_done = bool(done.any())
        if any_done and bool(done.all()):
            break
        if any_done:
            # A finished distribution leaves the batch: a batch runs as long as its slowest
            # member, and at 20x20x6 one joint of 256 took 27 iterations against a median of 10.
            finished.append(
                _settle(
                    index[done],
                    best_a[done],
                    best_b[done],
                    best_q[done],
                    best_gap[done],
                    (a[done], b[done], pair_mass[done]),
                    prob.p[done],
                )
            )
            keep = ~done
            index, a, b, slack, pair_mass, stalled, stuck = (
                t[keep] for t in (index, a, b, slack, pair_mass, stalled, stuck)
            )
            best_a, best_b, best_q, best_gap = (t[keep] for t in (best_a, best_b, best_q, best_gap))
            lse, cond, residual_pair, complementarity, mu = (
                t[keep] for t in (lse, cond, residual_pair, complementarity, mu)
            )
            residual_dual = tuple(t[keep] for t in residual_dual)
            reusable = None if reusable is None else reusable[keep]
            prob = prob.rows(keep)
            m = prob.num_pairs.clamp_min(1.0)
            done, any_done = done[keep], False
        if iterations >= max_iter:
            break
        iterations += 1

        mass_per_slack = pair_mass / slack
        if method == "dense":
            factor = _factorise_newton(cond, pair_mass, mass_per_slack, prob)
        else:
            forcing = _kkt_merit(residual_dual, residual_pair, complementarity).sqrt()
            forcing = (1e-2 * forcing).clamp(_CG_FORCING_FLOOR, 1e-3)
            factor = _iterative_newton(
                cond, pair_mass, mass_per_slack, prob, forcing, reusable, budget or _MAX_CG
            )
        args = (cond, pair_mass, slack, mass_per_slack, prob)
        # Predictor: the affine direction towards complementarity 0. It only sets the centring
        # and the corrector's second-order term, so CG may solve it 100x more loosely (at most
        # 0.1): on the 101^3 probe that cut its CG steps from 124 to 50, iterations unchanged.
        if method != "dense":
            factor.forcing = (forcing * _PREDICTOR_LOOSENESS).clamp(max=_PREDICTOR_FORCING)
        _, _, dq, ds = _newton_step(factor, residual_dual, residual_pair, complementarity, *args)
        if method != "dense":
            factor.forcing = forcing
        step = _step_to_boundary(
            torch.minimum(_boundary_ratio(pair_mass, dq, prob), _boundary_ratio(slack, ds, prob))
        )[:, None, None]
        mu_affine = ((pair_mass + step * dq) * (slack + step * ds)).sum((1, 2)) / m
        centring = (mu_affine / mu).clamp(0.0, 1.0) ** 3
        # Corrector: aim at centring * mu, with the predictor's second-order term.
        centre = (centring * mu)[:, None, None]
        centred = prob.on_pairs(complementarity - centre)
        da, db, dq, ds = _newton_step(
            factor, residual_dual, residual_pair, torch.addcmul(centred, dq, ds), *args
        )
        # Keeping 1 % of the way to the boundary is safe far from the optimum, but near it the
        # multipliers of inactive pairs head to 0 and a fixed 1 % would make the last iterations
        # converge only linearly (100x each); keeping mu instead restores Newton's fast rate.
        # The floor 1e-8 stops a value from shrinking by more than 1e8 in one step, which would
        # only make the next Newton matrix singular in float64.
        # While the point is still infeasible (a residual above mu), keep that much instead: a
        # degenerate joint (X2 a copy of X1) otherwise drives mu to 1e-9 with the marginals 3e-3
        # off, and the singular Newton matrices that follow never restore feasibility.
        infeasible = _kkt_merit(residual_dual, residual_pair).sqrt()
        keep = torch.maximum(mu, infeasible).clamp(min=1e-8, max=0.01)
        if method != "dense":
            # Early Newton steps change the matrix little relative to what CG absorbs: while the
            # two solves took few CG steps, the next step keeps this preconditioner.
            short = factor.fallback is None and factor.cg_iterations <= _REUSE_CG_STEPS
            reusable = factor.s_inverse if short and reusable is None else None
            over_budget = budget is not None and (
                factor.fallback is not None or factor.cg_iterations > budget
            )
            if over_budget:
                # CG cost more than a factorisation, and the Newton matrices only grow worse
                # conditioned as mu falls (the active pairs' curvature Q / s grows): the
                # remaining steps factorise.
                method, reusable, budget = "dense", None, None

        # Globalisation: L is nonlinear, so a full step can overshoot far from the optimum (warm
        # starts on a changed p, peaked distributions). Halve both steps until the KKT residual
        # with the centring target decreases.
        current = (a, b, slack, pair_mass)
        # A scaled merit weighs each pair's residual L + s by sqrt(Q): see _solve_robustly.
        weight = pair_mass.sqrt() if path.scaled_merit else 1.0
        merit = _kkt_merit(residual_dual, residual_pair * weight, centred)
        trial, point, primal_step, halved = _line_search(
            current, (da, db, ds, dq), keep, centre, merit, prob, weight
        )
        # A line search that never decreased the merit moved the point by at most 2^-30 of a step,
        # so the next iteration would repeat it: such a distribution is stuck at once.
        failed = halved <= _NEVER_ACCEPTED
        cut = halved < _SHORT_STEP
        if bool(cut.any()):
            # Mehrotra's second-order term makes the corrector no exact Newton direction, so it
            # need not decrease the merit: on peaked joints (one cell near 1, the rest near 1e-7)
            # it was cut to 1e-4 of a step for 190 iterations running. The plain centred Newton
            # direction is a descent direction of the merit; take it where it goes further.
            plain = _newton_step(factor, residual_dual, residual_pair, centred, *args)
            plain_trial, _, plain_step, plain_halved = _line_search(
                current, _reordered(plain), keep, centre, merit, prob, weight
            )
            further = cut & (plain_step > primal_step)
            trial = tuple(
                torch.where(further.view(-1, *[1] * (t.dim() - 1)), pt, t)
                for t, pt in zip(trial, plain_trial, strict=True)
            )
            point = None
            primal_step = torch.where(further, plain_step, primal_step)
            failed = failed & (plain_halved <= _NEVER_ACCEPTED)
        a, b, slack, pair_mass = trial
        # A Newton matrix singular in float64 gives primal steps of 1e-11 that never recover (the
        # pair masses alone keep moving, then overflow): stop a distribution stuck like that
        # instead of running it to max_iter.
        stuck = torch.where(primal_step < _STUCK_STEP, stuck + 1, 0)
        stuck = torch.where(failed, _STUCK_LIMIT, stuck)
        if bool((stuck >= _STUCK_LIMIT).any()):
            done = done | (stuck >= _STUCK_LIMIT)
            any_done = True
    finished.append(_settle(index, best_a, best_b, best_q, best_gap, (a, b, pair_mass), prob.p))
    rows, *solution = (torch.cat(parts) for parts in zip(*finished, strict=True))
    order = torch.argsort(rows)
    return _DualSolution(*(t[order] for t in solution), iterations)


def _settle(
    index: Tensor,
    best_a: Tensor,
    best_b: Tensor,
    best_q: Tensor,
    best_gap: Tensor,
    last: tuple[Tensor, Tensor, Tensor],
    p: Tensor,
) -> tuple[Tensor, ...]:
    """A finished row's ``(index, a, b, pair_mass, gap)``. Never certified (``max_iter`` or a
    stall came first, ``best_gap`` infinite): certify its ``last`` point ``(a, b, Q)``, or, where
    that is not finite, the cold start of its joint ``p``; either is a finite, true bound."""
    uncertified = ~torch.isfinite(best_gap)
    if bool(uncertified.any()):
        prob = _Problem.from_joint(p)
        for point_a, point_b, point_q in (last, _cold_point(prob)):
            point_a, point_b, gap = _certify(point_a, point_b, point_q, prob)
            better = uncertified & (gap < best_gap)
            best_a = torch.where(better[:, None, None], point_a, best_a)
            best_b = torch.where(better[:, None, None], point_b, best_b)
            best_q = torch.where(better[:, None, None], point_q, best_q)
            best_gap = torch.where(better, gap, best_gap)
    return index, best_a, best_b, best_q, best_gap


def _cold_point(prob: _Problem) -> tuple[Tensor, Tensor, Tensor]:
    """Duals and pair masses of the conditionally independent coupling (always finite)."""
    a, b = _fix_gauge(*_cold_start(prob), prob)
    pair_mass = prob.p1[:, :, None, :] * prob.p2[:, None, :, :]
    pair_mass = (pair_mass / prob.p1.sum(1).clamp_min(1e-300)[:, None, None, :]).sum(-1)
    return a, b, pair_mass


def _certify(
    a: Tensor, b: Tensor, pair_mass: Tensor, prob: _Problem, balance: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_certificate` at any point; a non-finite gap (NaN duals) becomes ``inf``."""
    lse, cond = _pair_conditionals(a, b, prob)
    a_feasible, b_feasible, gap = _certificate(
        a, b, prob.on_pairs(pair_mass), lse, cond, prob, balance
    )
    return a_feasible, b_feasible, torch.nan_to_num(gap, nan=math.inf)


# --------------------------------------------------------------------------------------------------
# Alternating I-projections: the dual read off a Sinkhorn scaling, without a barrier.


def _project_alternately(
    p: Tensor, solution: _DualSolution, tol: float, max_iter: int
) -> _DualSolution:
    """Refine a missed ``solution`` of ``p (B, K1, K2, Ky)`` by alternating I-projections
    (admUI), certifying the duals of each projection, for at most ``max_iter`` rounds; ``tol``
    (nats) ends a distribution's rounds once it certifies, and ``iterations`` of the result counts
    the rounds.

    A round scales the pair masses ``Q (x1, x2)`` onto ``Delta_p``: per label, Sinkhorn finds
    ``q(x1, x2, y) = Q(x1, x2) exp(a(x1, y) + b(x2, y))`` with the marginals of ``p``
    (:func:`_scale_onto_marginals`). The scaling's logarithms ``(a, b)`` *are* duals, and this
    ``q`` is the primal point that belongs to them (its conditional is ``softmax_y(a + b)``), so
    the certificate is left with only the pair term ``sum Q e^L (-L)``, ``L = log sum_y e^(a + b)``;
    the next round's ``Q`` is ``q``'s pair marginal ``Q e^L``, which moves mass off the pairs
    that term charges. Sinkhorn works on ratios, so a cell of mass 1e-9 is scaled as exactly as
    one of mass 1: on peaked joints (one cell near 1, the rest near 1e-8) the interior point's
    duals of the tiny cells stay nats off (their pairs keep ``Q`` near 1e-8 at ``L`` near -14:
    1.6e-6 bits on joint 3266 of the fuzz), and one round took that to 1.4e-7 bits, ten to
    2.5e-8. Each pair keeps at least ``_PROJECTION_FLOOR`` times its mass in the independent
    coupling, because a pruned solve's ``Q`` is exactly 0 on pairs whose mass ``Delta_p`` needs,
    and Sinkhorn cannot scale a zero. The rounds converge linearly, so a distribution stops once
    ``_STALL_LIMIT`` rounds in a row cut its gap by less than 10 %; each keeps its best
    certificate.
    """
    prob = _Problem.from_joint(p)
    *_, independent = _cold_point(prob)
    floored = solution.pair_mass.clamp_min(0.0) + _PROJECTION_FLOOR * independent
    log_mass = torch.log(floored).masked_fill(~prob.valid, -math.inf)
    b = torch.where((prob.p2 > 0) & torch.isfinite(solution.b), solution.b, 0.0)
    best = solution.copy()
    stalled = torch.zeros_like(best.gap, dtype=torch.long)
    for _ in range(min(max_iter, _PROJECTION_ROUNDS)):
        moving = (best.gap > tol) & (stalled < _STALL_LIMIT)
        if not bool(moving.any()):
            break
        best.iterations += 1
        a, b = _scale_onto_marginals(log_mass, b, prob, _PROJECTION_SWEEPS)
        lse, _ = _pair_conditionals(a, b, prob)
        pair_mass = prob.on_pairs(torch.exp(log_mass + lse))
        a_feasible, b_feasible, gap = _certify(a, b, pair_mass, prob)
        stalled = torch.where(gap < 0.9 * best.gap, 0, stalled + 1)
        better = moving & (gap < best.gap)
        best.replace_rows(
            better, _DualSolution(a_feasible, b_feasible, pair_mass, gap, 0).rows(better)
        )
        log_mass = log_mass + lse
        log_mass = log_mass - torch.logsumexp(log_mass.flatten(1), 1)[:, None, None]
    return best


def _scale_onto_marginals(
    log_mass: Tensor, b: Tensor, prob: _Problem, sweeps: int
) -> tuple[Tensor, Tensor]:
    """Sinkhorn in the log domain: ``(a, b)`` with ``q = exp(log_mass(x1, x2) + a(x1, y) +
    b(x2, y))`` on the marginals ``p1``, ``p2`` after ``sweeps`` sweeps from ``b``; ``log_mass``
    ``(B, K1, K2)`` is ``-inf`` on vacuous pairs, ``a`` and ``b`` are ``-inf`` outside the
    support. The last sweep sets ``b``, so the ``p2`` marginals hold exactly."""
    log_p1, log_p2 = torch.log(prob.p1), torch.log(prob.p2)
    for _ in range(sweeps):
        incoming = torch.logsumexp(log_mass[..., None] + b[:, None], dim=2)
        a = torch.where(prob.p1 > 0, log_p1 - incoming, -math.inf)
        incoming = torch.logsumexp(log_mass[..., None] + a[:, :, None], dim=1)
        b = torch.where(prob.p2 > 0, log_p2 - incoming, -math.inf)
    return a, b


# --------------------------------------------------------------------------------------------------
# Dual ascent: the certificate's own dual value, maximised one dual variable at a time.


def _ascend_dual(p: Tensor, solution: _DualSolution, tol: float, max_iter: int) -> _DualSolution:
    """Raise the certified dual value of a missed ``solution`` of ``p (B, K1, K2, Ky)`` by
    coordinate ascent, for at most ``max_iter`` sweeps; the primal side (``Q``, with its balanced
    and rounded ``q``) is kept, so ``gap`` falls by what the dual gains. ``tol`` (nats) ends a
    distribution's sweeps once it certifies; ``iterations`` of the result counts the sweeps.

    The function maximised is the certificate's own: ``g`` at the duals shifted onto the feasible
    set (:func:`_make_feasible`), concave and exact whatever the point. Each sweep tries, for one
    dual variable at a time, every move of ``_ASCENT_MOVES`` either way (all of them as one batch)
    and keeps the best that raises it. The interior point leaves the duals of tiny cells nats off
    where their marginals are below its float64 resolution; on a pruned solve's point, they are
    the extended duals (:func:`_extend_duals`), each set alone by a formula. On the two confident
    10-class soft probes of the fuzz that every other attempt left above 1e-6 bits (cases 10438
    and 10662: 2.0e-6 and 2.6e-6), it took the certificate to 4.0e-7 and 7.1e-7 bits.
    A distribution stops once a sweep cuts its gap by less than 10 %: coordinate ascent stalls
    where the feasibility shift has a kink (a row's largest pair constraint changes pair), so it
    is a last refinement near the optimum, not a solver (from optimal duals each moved by up to
    0.5 nat, a 4x3x5 joint's gap went from 0.095 to 0.016 nats).
    """
    prob = _Problem.from_joint(p)
    bsz, k1, k2, ky = p.shape
    moves = _ASCENT_MOVES.to(p)
    moves = torch.cat([moves, -moves])
    trials = _Problem.from_joint(p.repeat_interleave(len(moves), 0))
    _, cond = _pair_conditionals(solution.a, solution.b, prob)
    primal = _primal_bound(solution.pair_mass[..., None] * cond, prob, _BALANCE_SWEEPS)
    a, b = solution.a, solution.b  # replaced, never changed in place
    *_, value = _feasible_duals(a, b, prob)
    best = solution.copy()
    for _ in range(min(max_iter, _ASCENT_SWEEPS)):
        moving = best.gap > tol
        if not bool(moving.any()):
            break
        best.iterations += 1
        for index in range((k1 + k2) * ky):
            trial_a = a.repeat_interleave(len(moves), 0)
            trial_b = b.repeat_interleave(len(moves), 0)
            if index < k1 * ky:
                trial_a.view(-1, k1 * ky)[:, index] += moves.repeat(bsz)
            else:
                trial_b.view(-1, k2 * ky)[:, index - k1 * ky] += moves.repeat(bsz)
            *_, trial_value = _feasible_duals(trial_a, trial_b, trials)
            trial_value = trial_value.view(bsz, len(moves))
            trial_value = torch.nan_to_num(trial_value, nan=-math.inf)
            top, choice = trial_value.max(1)
            better = moving & (top > value)
            chosen = torch.arange(bsz, device=p.device) * len(moves) + choice
            a = torch.where(better[:, None, None], trial_a[chosen], a)
            b = torch.where(better[:, None, None], trial_b[chosen], b)
            value = torch.where(better, top, value)
        a_feasible, b_feasible, _ = _feasible_duals(a, b, prob)
        gap = torch.nan_to_num((primal - value).clamp_min(0.0) + _FLOAT_SLACK, nan=math.inf)
        progress = gap < 0.9 * best.gap
        better = moving & (gap < best.gap)
        candidate = _DualSolution(a_feasible, b_feasible, solution.pair_mass, gap, 0)
        best.replace_rows(better, candidate.rows(better))
        if not bool((progress & (best.gap > tol)).any()):
            break
    return best


def _feasible_duals(a: Tensor, b: Tensor, prob: _Problem) -> tuple[Tensor, Tensor, Tensor]:
    """``(a, b)`` shifted onto the feasible set (:func:`_make_feasible`) and their dual value
    ``g`` ``(B,)`` in nats."""
    lse, _ = _pair_conditionals(a, b, prob)
    a_feasible, b_feasible = _make_feasible(a, b, lse, prob)
    return a_feasible, b_feasible, _dual_objective(a_feasible, b_feasible, prob.p1, prob.p2)


# --------------------------------------------------------------------------------------------------
# Polish: Levenberg-Marquardt on the optimality conditions, without a barrier.


def _polish(p: Tensor, solution: _DualSolution, tol: float, max_iter: int) -> _DualSolution:
    """Polish a missed interior-point ``solution`` of ``p (B, K1, K2, Ky)`` by Levenberg-Marquardt
    on the optimality conditions, for at most ``max_iter`` steps; ``tol`` (nats) ends a
    distribution's polish once it certifies.

    At the optimum the marginals hold, ``sum_x2 Q r = p1`` and ``sum_x1 Q r = p2``, and every
    pair is complementary: ``Q >= 0``, ``s = -L >= 0``, ``Q s = 0``. With the Fischer-Burmeister
    function ``phi(Q, s) = Q + s - sqrt(Q^2 + s^2)``, zero exactly on those, the conditions are
    one square system of equations in ``(a, b, Q)`` (:func:`_optimality_residual`), solved without
    guessing which pairs are active, like an LP solver's crossover. It needs no barrier, so its
    Jacobian carries no ``Q / s`` (1e10 and more near the optimum): on peaked joints (one cell
    near 1, the rest near 1e-8) the interior point's Newton matrices lose the tiny cells'
    marginals to that term's cancellation and stall microbits short of ``tol``. The Jacobian is
    singular there too (X2 a copy of X1, pairs whose ``Q`` and ``L`` both vanish), so the steps
    are damped least squares (Levenberg-Marquardt), the damping falling tenfold after a step
    that reduces the residual and rising tenfold after one that does not. Every point is
    certified like any other; each distribution keeps its best certificate, so a step that goes
    astray costs only time. ``iterations`` of the result counts the steps.
    """
    prob = _Problem.from_joint(p)
    a, b = _fix_gauge(solution.a, solution.b, prob)
    pair_mass = solution.pair_mass.clone()  # stepped in place, row by row
    best = solution.copy()
    residual = _optimality_residual(a, b, pair_mass, prob)
    norm = residual.square().sum(1)
    damping = torch.full_like(norm, _POLISH_DAMPING[0])
    for _ in range(min(max_iter, _POLISH_STEPS)):
        moving = (best.gap > tol) & (damping <= _POLISH_DAMPING[1])
        if not bool(moving.any()):
            break
        best.iterations += 1
        # Only the moving rows are stepped: a step is a dense least-squares solve of up to
        # _POLISH_MAX_UNKNOWNS unknowns, and a row that certified or gave up has no use for it.
        rows = moving.nonzero()[:, 0]
        sub = prob.rows(rows)
        point = (a[rows], b[rows], pair_mass[rows])
        jacobian = _optimality_jacobian(*point, sub)
        trial = _split_step(_damped_step(jacobian, residual[rows], damping[rows]), *point)
        trial_residual = _optimality_residual(*trial, sub)
        trial_norm = torch.nan_to_num(trial_residual.square().sum(1), nan=math.inf)
        accepted = trial_norm < norm[rows]
        taken = rows[accepted]
        for current, moved in zip((a, b, pair_mass), trial, strict=True):
            current[taken] = moved[accepted]
        residual[taken] = trial_residual[accepted]
        norm[taken] = trial_norm[accepted]
        damping[rows] = torch.where(
            accepted, (damping[rows] / 10).clamp_min(_POLISH_DAMPING[2]), damping[rows] * 10
        )
        # Only the rows whose step was taken have a new point to certify.
        moved_to = prob.rows(taken)
        feasible_q = moved_to.on_pairs(pair_mass[taken].clamp_min(0.0))
        a_feasible, b_feasible, gap = _certify(
            a[taken], b[taken], feasible_q, moved_to, _BALANCE_SWEEPS
        )
        better = gap < best.gap[taken]
        improved = torch.zeros_like(moving)
        improved[taken[better]] = True
        best.replace_rows(
            improved, _DualSolution(a_feasible, b_feasible, feasible_q, gap, 0).rows(better)
        )
    return best


def _split_step(
    step: Tensor, a: Tensor, b: Tensor, pair_mass: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The point ``(a, b, Q)`` moved by ``step (B, n)``, each dual by at most ``_MAX_DUAL_MOVE``."""
    da, db, dq = step.split([a[0].numel(), b[0].numel(), pair_mass[0].numel()], dim=1)
    return (
        a + da.reshape(a.shape).clamp(-_MAX_DUAL_MOVE, _MAX_DUAL_MOVE),
        b + db.reshape(b.shape).clamp(-_MAX_DUAL_MOVE, _MAX_DUAL_MOVE),
        pair_mass + dq.reshape(pair_mass.shape),
    )


def _damped_step(jacobian: Tensor, residual: Tensor, damping: Tensor) -> Tensor:
    """The Levenberg-Marquardt ``step (B, n)``: least squares on ``jacobian step = -residual``
    plus ``damping (B,) |step|^2``, in variables scaled to unit largest Jacobian column (the
    dual of a cell of mass 1e-8 moves its marginal 1e8 times less than one of mass 1). Columns
    only: scaled rows would make the step descend a residual other than the one the damping is
    steered by."""
    scale = 1 / jacobian.abs().amax(1).clamp_min(1e-300)
    scaled = jacobian * scale[:, None, :]
    identity = torch.eye(jacobian.shape[-1], dtype=jacobian.dtype, device=jacobian.device)
    ridge = damping.sqrt()[:, None, None] * identity
    augmented = torch.cat([scaled, ridge], dim=1)
    rhs = torch.cat([-residual, torch.zeros_like(residual)], dim=1)
    # gelsy: rank-revealing, so a damping of 1e-14 on a singular Jacobian still gives the
    # minimum-norm step.
    solution = torch.linalg.lstsq(augmented, rhs[..., None], driver="gelsy").solution[..., 0]
    return torch.nan_to_num(scale * solution, nan=0.0, posinf=0.0, neginf=0.0)


def _optimality_residual(a: Tensor, b: Tensor, pair_mass: Tensor, prob: _Problem) -> Tensor:
    """``(B, (K1 + K2) Ky + K1 K2)``: the marginal residuals ``sum_x2 Q r - p1`` and
    ``sum_x1 Q r - p2`` (0 on frozen and gauge duals), then per pair the Fischer-Burmeister
    residual ``phi(Q, -L)`` (``Q`` on vacuous pairs)."""
    lse, cond = _pair_conditionals(a, b, prob)
    rows, cols = _to_dual_space(pair_mass, cond)
    on_a = (rows - prob.p1) * (prob.p1 > 0)
    on_b = (cols - prob.p2) * prob.free_b
    on_pairs = torch.where(prob.valid, pair_mass - lse - torch.hypot(pair_mass, lse), pair_mass)
    return torch.cat([on_a.flatten(1), on_b.flatten(1), on_pairs.flatten(1)], dim=1)


def _optimality_jacobian(a: Tensor, b: Tensor, pair_mass: Tensor, prob: _Problem) -> Tensor:
    """A generalised Jacobian of :func:`_optimality_residual` in ``(a, b, Q)``: ``(B, n, n)``
    with ``n = (K1 + K2) Ky + K1 K2``.

    Per pair, ``Q r`` has the derivative ``H = Q (diag r - r r^T)`` in ``c = a(x1) + b(x2)`` and
    ``r`` in ``Q``; ``phi(Q, -L)`` has ``1 - Q / h`` in ``Q`` and ``-(1 + L / h) r`` in ``c``,
    ``h = sqrt(Q^2 + L^2)`` (at ``h = 0``, where ``phi`` has no derivative, that of
    ``Q = -L``). A frozen or gauge dual and a vacuous pair get an identity row.
    """
    bsz, k1, k2, ky = prob.p.shape
    lse, cond = _pair_conditionals(a, b, prob)
    mass_cond = pair_mass[..., None] * cond
    hessian = torch.diag_embed(mass_cond) - mass_cond[..., :, None] * cond[..., None, :]
    n_a, n_b = k1 * ky, k2 * ky
    n_dual = n_a + n_b
    jacobian = cond.new_zeros(bsz, n_dual + k1 * k2, n_dual + k1 * k2)
    # (x1, y) rows, (x2, y') columns: H of pair (x1, x2); its transpose for (x2, y) rows.
    coupling = hessian.permute(0, 1, 3, 2, 4).reshape(bsz, n_a, n_b)
    jacobian[:, :n_a, n_a:n_dual] = coupling
    jacobian[:, n_a:n_dual, :n_a] = coupling.mT
    # Block diagonals: H summed over the other source.
    on_a = jacobian[:, :n_a, :n_a].view(bsz, k1, ky, k1, ky).diagonal(dim1=1, dim2=3)
    on_a.copy_(hessian.sum(2).permute(0, 2, 3, 1))
    on_b = jacobian[:, n_a:n_dual, n_a:n_dual].view(bsz, k2, ky, k2, ky)
    on_b.diagonal(dim1=1, dim2=3).copy_(hessian.sum(1).permute(0, 2, 3, 1))
    # d(Q r)/dQ: r at the (x1, y) row and the (x2, y) row of pair (x1, x2)'s column.
    q_columns = jacobian[:, :n_dual, n_dual:].view(bsz, n_dual, k1, k2)
    q_columns[:, :n_a].view(bsz, k1, ky, k1, k2).diagonal(dim1=1, dim2=3).copy_(
        cond.permute(0, 3, 2, 1)
    )
    q_columns[:, n_a:].view(bsz, k2, ky, k1, k2).diagonal(dim1=1, dim2=4).copy_(
        cond.permute(0, 3, 1, 2)
    )
    # phi's rows: dL/dc = r is the transpose of those r entries.
    h = torch.hypot(pair_mass, lse)
    kink = h <= 0
    by_mass = torch.where(kink, 0.0, 1 - pair_mass / h.clamp_min(1e-300))
    by_lse = torch.where(kink, -1.0, -1 - lse / h.clamp_min(1e-300))
    jacobian[:, n_dual:, :n_dual] = jacobian[:, :n_dual, n_dual:].mT * by_lse.reshape(bsz, -1, 1)
    jacobian[:, n_dual:, n_dual:].diagonal(dim1=1, dim2=2).copy_(by_mass.flatten(1))
    fixed = torch.cat(
        [(prob.p1 <= 0).flatten(1), (prob.free_b <= 0).flatten(1), (~prob.valid).flatten(1)],
        dim=1,
    )
    jacobian = jacobian.masked_fill(fixed[..., None], 0.0)
    jacobian.diagonal(dim1=1, dim2=2).add_(fixed.to(jacobian.dtype))
    return jacobian
