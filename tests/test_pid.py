"""The BROJA solver against textbook values, an independent CVXPY solve and its own certificate."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from _pid_oracles import ORACLES
from _pid_reference import broja_cvxpy

from pidsched.functional import PIDResult, pid

ATOMS = ("unique_1", "unique_2", "redundancy", "synergy")
TOL = 1e-7  # bits, the solver's default


@pytest.fixture(autouse=True, params=["dense", "iterative"])
def newton_path(request, monkeypatch):
    """Every test runs on both Newton paths: ``method="auto"`` is routed to the one under test,
    with no rescue on the other path (tests/test_pid_paths.py tests that)."""
    solver = importlib.import_module("pidsched.functional.pid")
    monkeypatch.setattr(
        solver,
        "_choose_method",
        lambda method, shape: request.param if method == "auto" else method,
    )
    monkeypatch.setattr(solver, "_rescue", lambda method, shape: ())
    return request.param


def _atoms(result: PIDResult) -> np.ndarray:
    return np.array([getattr(result, name).detach().cpu().numpy() for name in ATOMS])


def _random_joint(shape, concentration=0.5) -> torch.Tensor:
    alpha = torch.full((int(np.prod(shape)),), concentration, dtype=torch.float64)
    sample = torch.distributions.Dirichlet(alpha).sample()
    return sample.reshape(shape)


def _sample_histogram(shape, num_samples, seed) -> torch.Tensor:
    """Counts of a few samples from a random distribution: many zero cells, rows and labels."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(int(np.prod(shape)), 0.3))
    counts = rng.multinomial(num_samples, probs).reshape(shape)
    return torch.tensor(counts, dtype=torch.float64)


# ---------------------------------------------------------------------------- textbook oracles


@pytest.mark.parametrize("name", list(ORACLES))
def test_oracle_values(name):
    joint, (i_1, i_2, i_12, u_1, u_2, red, syn) = ORACLES[name]
    result = pid(joint)
    expected = {"unique_1": u_1, "unique_2": u_2, "redundancy": red, "synergy": syn}
    for atom, value in expected.items():
        # The table is rounded to 6 decimals (error <= 5e-7); the solver must be within 1e-6.
        assert getattr(result, atom).item() == pytest.approx(value, abs=1e-6), atom
    assert result.mutual_information_1.item() == pytest.approx(i_1, abs=1e-6)
    assert result.mutual_information_2.item() == pytest.approx(i_2, abs=1e-6)
    assert result.mutual_information.item() == pytest.approx(i_12, abs=1e-6)
    assert 0 < result.gap.item() <= TOL
    assert (_atoms(result) >= -result.gap.item()).all()


@pytest.mark.parametrize("name", ["XOR", "RDN", "UNQ1", "UNQ2", "COPY", "RDNXOR", "RDNUNQXOR"])
def test_gap_bounds_true_error_on_exact_integer_oracles(name):
    joint, (_, _, _, u_1, u_2, red, syn) = ORACLES[name]
    result = pid(joint)
    error = np.abs(_atoms(result) - np.array([u_1, u_2, red, syn])).max()
    assert error <= result.gap.item()


def test_null_is_exactly_zero():
    result = pid(ORACLES["NULL"][0])
    assert np.abs(_atoms(result)).max() < 1e-11


def test_unq2_is_not_swapped():
    result = pid(ORACLES["UNQ2"][0])
    assert result.unique_2.item() == pytest.approx(1.0, abs=1e-7)
    assert result.unique_1.item() == pytest.approx(0.0, abs=1e-7)


def test_and_beats_the_released_codes_starting_point():
    # docs/method.md, "The released code": the conditionally independent coupling gives R 0.08
    # on AND; the optimum is 0.311.
    result = pid(ORACLES["AND"][0])
    assert result.redundancy.item() == pytest.approx(0.311278, abs=1e-6)


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("seed", range(4))
def test_identities_and_symmetries(seed):
    torch.manual_seed(seed)
    joint = _random_joint((4, 5, 3))
    result = pid(joint)
    gap = result.gap.item()
    assert result.unique_1 + result.redundancy == pytest.approx(result.mutual_information_1.item())
    assert result.unique_2 + result.redundancy == pytest.approx(result.mutual_information_2.item())
    total = result.unique_1 + result.unique_2 + result.redundancy + result.synergy
    assert total.item() == pytest.approx(result.mutual_information.item(), abs=1e-12)
    assert (_atoms(result) >= -gap).all()

    swapped = pid(joint.transpose(0, 1))
    assert swapped.unique_1.item() == pytest.approx(result.unique_2.item(), abs=2 * TOL)
    assert swapped.unique_2.item() == pytest.approx(result.unique_1.item(), abs=2 * TOL)
    assert swapped.redundancy.item() == pytest.approx(result.redundancy.item(), abs=2 * TOL)
    assert swapped.synergy.item() == pytest.approx(result.synergy.item(), abs=2 * TOL)

    relabelled = joint[torch.randperm(4)][:, torch.randperm(5)][:, :, torch.randperm(3)]
    assert _atoms(pid(relabelled)) == pytest.approx(_atoms(result), abs=2 * TOL)


def test_unnormalised_and_float32_input_is_normalised():
    joint = _random_joint((3, 3, 2))
    expected = _atoms(pid(joint))
    assert _atoms(pid(joint * 1234.5)) == pytest.approx(expected, abs=2 * TOL)
    float32 = pid(joint.float())
    assert float32.synergy.dtype == torch.float64
    assert _atoms(float32) == pytest.approx(expected, abs=1e-6)


def test_float32_results_are_the_float64_solve_rounded():
    # A joint whose Newton matrices, factorised in float32 arithmetic, raised a LinAlgError at the
    # default tol (it did on 90 of 200 random 2-8-class joints): the solve runs in float64 and
    # only the returned information is float32; the duals keep float64 for warm starts.
    generator = torch.Generator().manual_seed(3)
    shape = [int(k) for k in torch.randint(2, 9, (3,), generator=generator)]
    joint = torch.rand(*shape, generator=generator, dtype=torch.float64) ** 3
    exact = pid(joint)
    rounded = pid(joint, dtype=torch.float32)
    for name in (*ATOMS, "mutual_information", "gap"):
        value = getattr(rounded, name)
        assert value.dtype == torch.float32, name
        assert value == getattr(exact, name).float(), name
    assert rounded.gap <= TOL
    assert rounded.dual_1.dtype == torch.float64
    assert torch.equal(rounded.pair_mass, exact.pair_mass)


# ---------------------------------------------------------------------------- against CVXPY


CVXPY_CASES = [
    ("dense 6x6x6", lambda: _random_joint((6, 6, 6))),
    ("dense 3x7x4 (K1 != K2)", lambda: _random_joint((3, 7, 4))),
    ("peaked 10x10x10", lambda: _random_joint((10, 10, 10), concentration=0.05)),
    # The largest Clarabel solves in test time (about 6 s on the shared CI machine; 20x20x20
    # takes a minute).
    ("dense 14x12x8", lambda: _random_joint((14, 12, 8))),
    ("histogram 8x8x5 of 40 samples", lambda: _sample_histogram((8, 8, 5), 40, seed=1)),
    ("histogram 10x6x6 of 25 samples", lambda: _sample_histogram((10, 6, 6), 25, seed=2)),
    ("zero-mass label and row", lambda: _zero_label_and_row()),
]


def _zero_label_and_row() -> torch.Tensor:
    joint = _random_joint((5, 4, 4))
    joint[:, :, 2] = 0.0  # a label nobody has
    joint[3] = 0.0  # a symbol of X1 that never occurs
    return joint


@pytest.mark.parametrize("name,make", CVXPY_CASES, ids=[c[0] for c in CVXPY_CASES])
def test_random_distributions_match_cvxpy(name, make):
    torch.manual_seed(0)
    joint = make()
    result = pid(joint)
    reference = broja_cvxpy(joint.numpy(), solver="CLARABEL")
    ours = _atoms(result)
    theirs = np.array([reference[a] for a in ATOMS])
    # Clarabel's own accuracy is ~1e-7 bits here; ours is certified below TOL.
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert result.gap.item() <= TOL
    assert (ours >= -result.gap.item()).all()


# ---------------------------------------------------------------------------- certificate


def _independent_gap_check(joint: torch.Tensor, result: PIDResult) -> float:
    """Re-derive an upper and a lower bound on V with numpy only; returns their difference (bits).

    Lower: the returned duals must be feasible (checked here), so g(a, b) <= min f.
    Upper: the coupling q = Q softmax(a + b), iteratively scaled onto the marginals (IPF), is in
    Delta_p up to 1e-13, so f(q) >= min f.
    """
    p = joint.numpy() / joint.numpy().sum()
    p1, p2 = p.sum(1), p.sum(0)
    a, b = result.dual_1.numpy(), result.dual_2.numpy()
    cells = a[:, None, :] + b[None, :, :]
    allowed = (p1[:, None, :] > 0) & (p2[None, :, :] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cells = np.where(allowed, cells, -np.inf)
        shift = cells.max(-1, keepdims=True)
        shift = np.where(np.isfinite(shift), shift, 0.0)
        lse = np.log(np.exp(cells - shift).sum(-1)) + shift[..., 0]
    assert np.all(lse[allowed.any(-1)] <= 1e-12), "returned duals are infeasible"
    lower = np.where(p1 > 0, a * p1, 0).sum() + np.where(p2 > 0, b * p2, 0).sum()

    cond = np.where(allowed, np.exp(cells - lse[..., None]), 0.0)
    q = result.pair_mass.numpy()[..., None] * cond + 1e-300 * allowed
    for _ in range(5000):
        q *= np.where(p1 > 0, p1 / np.maximum(q.sum(1), 1e-300), 0)[:, None, :]
        q *= np.where(p2 > 0, p2 / np.maximum(q.sum(0), 1e-300), 0)[None, :, :]
        if np.abs(q.sum(1) - p1).max() < 1e-14:
            break
    pair = q.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = (
            np.where(q > 0, q * np.log(q), 0).sum()
            - np.where(pair > 0, pair * np.log(pair), 0).sum()
        )
    return (upper - lower) / math.log(2)


@pytest.mark.parametrize("shape", [(6, 6, 6), (12, 9, 7)])
def test_certificate_is_reproduced_independently(shape):
    torch.manual_seed(3)
    joint = _random_joint(shape)
    result = pid(joint)
    independent = _independent_gap_check(joint, result)
    assert independent <= TOL * 1.5
    assert result.gap.item() <= TOL


@pytest.mark.slow
def test_50x50x50_is_exact_and_certified():
    torch.manual_seed(4)
    joint = _random_joint((50, 50, 50))
    result = pid(joint)
    assert result.gap.item() <= TOL
    assert _independent_gap_check(joint, result) <= TOL * 1.5
    assert (_atoms(result) >= -result.gap.item()).all()


def test_tolerance_is_honoured():
    torch.manual_seed(5)
    joint = _random_joint((5, 5, 5))
    loose, tight = pid(joint, tol=1e-3), pid(joint, tol=1e-10)
    assert loose.gap.item() <= 1e-3
    assert tight.gap.item() <= 1e-10
    assert np.abs(_atoms(loose) - _atoms(tight)).max() <= loose.gap.item() + tight.gap.item()
    assert loose.iterations < tight.iterations


def test_max_iter_warns_and_reports_the_larger_gap():
    torch.manual_seed(6)
    with pytest.warns(RuntimeWarning, match="max_iter=1"):
        result = pid(_random_joint((6, 6, 6)), max_iter=1)
    assert result.gap.item() > TOL
    # No tiny cells, so five attempts of 1 iteration each: the scaled-merit solve, the plain one,
    # the alternating projections, the polish and the dual ascent (max_iter bounds their rounds,
    # steps and sweeps too).
    assert result.iterations == 5


# ---------------------------------------------------------------------------- batching, warm start


def test_batched_equals_looped():
    torch.manual_seed(7)
    joints = torch.stack([_random_joint((4, 4, 3)) for _ in range(6)]).reshape(2, 3, 4, 4, 3)
    joints[0, 1] = ORACLES["AND"][0].new_zeros(4, 4, 3)
    joints[0, 1, :2, :2, :2] = ORACLES["AND"][0]  # a boundary optimum inside the batch
    batched = pid(joints)
    assert batched.synergy.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            single = pid(joints[i, j])
            for atom in ATOMS:
                assert getattr(batched, atom)[i, j].item() == pytest.approx(
                    getattr(single, atom).item(), abs=2 * TOL
                )
    assert (batched.gap <= TOL).all()


@pytest.mark.parametrize(
    ("method", "budget", "per_distribution"),
    [
        ("dense", "_CHUNK_BYTES", 4 * 3 * 3 * 3 * 8),
        ("iterative", "_ITERATIVE_CHUNK_BYTES", 4 * 3 * 3 * 8),
    ],
)
def test_large_batches_are_solved_in_chunks_with_the_same_result(
    monkeypatch, method, budget, per_distribution
):
    # Each path sizes its chunks by its own temporaries: the dense path's (K1, K2, Ky, Ky), the
    # iterative path's (K1, K2, Ky) cells.
    solver = importlib.import_module("pidsched.functional.pid")
    torch.manual_seed(12)
    joints = torch.stack([_random_joint((4, 3, 3)) for _ in range(5)])
    whole = pid(joints, method=method)
    monkeypatch.setattr(solver, budget, 2 * per_distribution)  # two distributions a chunk
    sizes = []
    solve = solver._solve_dual
    monkeypatch.setattr(
        solver, "_solve_dual", lambda p, *args: sizes.append(len(p)) or solve(p, *args)
    )
    chunked = pid(joints, warm_start=whole, method=method)
    assert sizes == [2, 2, 1]
    assert _atoms(chunked) == pytest.approx(_atoms(whole), abs=2 * TOL)
    assert (chunked.gap <= TOL).all()


def test_chunks_are_cache_sized_on_the_cpu_and_larger_on_an_accelerator():
    # On a GPU a chunk costs its kernel launches, not cache misses: CPU-sized chunks would run a
    # batch of 4,096 at 20^3 as 256 chunks one after another.
    solver = importlib.import_module("pidsched.functional.pid")
    batch = torch.Size((4096, 20, 20, 20))
    sizes = {
        (method, device): solver._chunk_size(batch, 8, method, torch.device(device))
        for method in ("dense", "iterative")
        for device in ("cpu", "cuda")
    }
    assert sizes == {
        ("dense", "cpu"): 6,
        ("dense", "cuda"): 419,
        ("iterative", "cpu"): 16,
        ("iterative", "cuda"): 1048,
    }
    # From 16 labels the dense path's term-by-term S builds a (K1, K2, K2, Ky) factor too, which
    # is the larger temporary when the smaller source has more symbols than there are labels.
    wide = torch.Size((4096, 40, 30, 16))
    assert solver._chunk_size(wide, 8, "dense", torch.device("cpu")) == 8 * 2**20 // (
        40 * 30 * 16 * 8 * 30
    )


def test_finished_distributions_leave_the_batch_and_keep_their_place(monkeypatch):
    # A batch runs as long as its slowest member; a row that has certified must stop costing
    # Newton steps, and its result must come back in its own place.
    solver = importlib.import_module("pidsched.functional.pid")
    torch.manual_seed(14)
    independent = torch.einsum(
        "i,j,y->ijy", *(torch.rand(5, dtype=torch.float64) for _ in range(3))
    )
    joints = torch.stack([_random_joint((5, 5, 5)), independent, _random_joint((5, 5, 5))])
    joints[2, :, :, 0] *= 1e-6  # a nearly empty label: more iterations than the others
    sizes = []
    factorise = solver._factorise_newton
    monkeypatch.setattr(
        solver,
        "_factorise_newton",
        lambda cond, *rest: sizes.append(len(cond)) or factorise(cond, *rest),
    )
    batched = pid(joints, method="dense")
    assert sizes[0] == 3 and sizes[-1] < 3 and sizes == sorted(sizes, reverse=True)
    monkeypatch.setattr(solver, "_factorise_newton", factorise)
    for i, joint in enumerate(joints):
        single = pid(joint, method="dense")
        for name in (*ATOMS, "gap"):
            assert getattr(batched, name)[i].item() == pytest.approx(
                getattr(single, name).item(), abs=1e-12
            )
        assert torch.allclose(batched.pair_mass[i], single.pair_mass, atol=1e-12)
    assert (batched.gap <= TOL).all()


def test_a_singular_newton_block_is_ridged_alone(monkeypatch):
    # A batch shares one factorisation call: a ridge for one near-singular matrix used to be
    # added to every matrix of the batch, perturbing the other distributions' Newton steps (the
    # batched benchmark then needed 16 instead of 9 iterations and left one gap above tol).
    solver = importlib.import_module("pidsched.functional.pid")
    torch.manual_seed(13)
    factor = torch.randn(3, 5, 5, dtype=torch.float64)
    matrices = factor @ factor.mT + 5 * torch.eye(5, dtype=torch.float64)
    matrices[1] = torch.ones(5, 5, dtype=torch.float64)  # rank one: Cholesky fails
    chol = solver._cholesky(matrices)
    for i in (0, 2):
        assert torch.equal(chol[i], torch.linalg.cholesky(matrices[i]))
    ridged = chol[1] @ chol[1].mT
    assert torch.allclose(ridged, matrices[1], atol=1e-10) and torch.isfinite(chol[1]).all()


def test_warm_start_matches_cold_start_in_fewer_iterations():
    torch.manual_seed(8)
    joint = _random_joint((8, 8, 6))
    previous = pid(joint)
    drifted = joint * (1 + 0.02 * torch.rand_like(joint))  # one epoch later
    cold, warm = pid(drifted), pid(drifted, warm_start=previous)
    assert _atoms(warm) == pytest.approx(_atoms(cold), abs=2 * TOL)
    assert warm.gap.item() <= TOL
    assert warm.iterations < cold.iterations


@pytest.mark.parametrize("shape", [(8, 8, 6), (4, 6, 3)])
def test_warm_start_on_an_unchanged_joint_certifies_without_a_newton_step(shape):
    # The previous optimum is still optimal: the start is pulled only ~1e-9 into the interior,
    # so the first certificate already proves it (a fixed 1e-2 pull cost 3 iterations).
    torch.manual_seed(10)
    joint = _random_joint(shape)
    joint[0, 0] = 0.0  # a vacuous pair and cells outside the support
    previous = pid(joint, tol=1e-9)  # well inside the default tolerance
    again = pid(joint, warm_start=previous)
    assert again.iterations == 0
    assert again.gap.item() <= TOL
    assert _atoms(again) == pytest.approx(_atoms(previous), abs=2 * TOL)


def test_warm_start_survives_a_changed_support():
    torch.manual_seed(9)
    joint = _random_joint((5, 5, 4))
    previous = pid(joint)
    changed = joint.clone()
    changed[:, :, 1] = 0.0
    warm = pid(changed, warm_start=previous)
    assert _atoms(warm) == pytest.approx(_atoms(pid(changed)), abs=2 * TOL)


@pytest.mark.parametrize("seed", range(6))
def test_warm_start_from_an_unrelated_distribution_still_certifies(seed):
    # A warm start far from the new optimum must neither diverge nor return an uncertified value
    # (a first version without a merit line search returned S ~ 7e15 bits here).
    torch.manual_seed(seed)
    previous = pid(_random_joint((3, 3, 3), concentration=2.0))
    joint = _random_joint((3, 3, 3), concentration=2.0)
    warm = pid(joint, warm_start=previous)
    assert warm.gap.item() <= TOL
    assert _atoms(warm) == pytest.approx(_atoms(pid(joint)), abs=2 * TOL)


# ---------------------------------------------------------------------------- gradients


def _value_and_gradient_check(joint):
    def atoms(j):
        result = pid(j, tol=1e-11)
        return result.unique_1, result.unique_2, result.redundancy, result.synergy

    return torch.autograd.gradcheck(atoms, (joint,), eps=1e-6, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("seed", range(2))
def test_gradcheck_at_interior_points(seed):
    torch.manual_seed(seed)
    joint = (_random_joint((3, 3, 3), concentration=5.0) + 0.01).requires_grad_(True)
    assert _value_and_gradient_check(joint)


def test_gradient_is_the_envelope_theorem_dual():
    torch.manual_seed(10)
    joint = _random_joint((3, 4, 2), concentration=5.0).requires_grad_(True)
    result = pid(joint)
    (grad,) = torch.autograd.grad(result.synergy, joint)
    # S = I(X1X2;Y) - V: moving mass must change S at the rate the finite difference shows.
    direction = torch.randn_like(joint) * 1e-4
    shifted = pid((joint + direction).detach()).synergy - pid((joint - direction).detach()).synergy
    assert (grad * direction).sum().item() * 2 == pytest.approx(shifted.item(), rel=1e-3, abs=1e-9)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "joint,match",
    [
        (torch.tensor([[[0.5, float("nan")], [0.1, 0.1]]] * 2), "NaN or Inf"),
        (torch.tensor([[[0.5, float("inf")], [0.1, 0.1]]] * 2), "NaN or Inf"),
        (-torch.ones(2, 2, 2), "negative"),
        (torch.zeros(2, 2, 2), "zero total mass"),
        (torch.ones(2, 2), "at least 3 dims"),
    ],
)
def test_bad_joint_is_rejected(joint, match):
    with pytest.raises(ValueError, match=match) as info:
        pid(joint)
    assert "`joint`" in str(info.value)


def test_an_empty_batch_gives_empty_results():
    """As torch's reductions do: (0, K1, K2, Ky) in, atoms of shape (0,) out, gradients too; the
    metric's bootstrap solves such a batch when no replicate drew a sample."""
    joint = torch.rand(0, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    result = pid(joint)
    assert result.synergy.shape == result.gap.shape == (0,) and result.iterations == 0
    assert result.dual_1.shape == (0, 3, 2) and result.pair_mass.shape == (0, 3, 4)
    result.synergy.sum().backward()
    assert joint.grad.shape == joint.shape
    assert pid(torch.rand(2, 0, 3, 4, 2), warm_start=None).unique_1.shape == (2, 0)
    again = pid(joint.detach(), warm_start=result)
    assert again.redundancy.shape == (0,)


def test_zero_mass_inside_a_batch_is_rejected():
    joints = torch.rand(3, 2, 2, 2, dtype=torch.float64)
    joints[1] = 0
    with pytest.raises(ValueError, match="zero total mass"):
        pid(joints)


def test_bad_arguments_are_rejected():
    joint = _random_joint((2, 2, 2))
    with pytest.raises(ValueError, match="`tol`"):
        pid(joint, tol=0)
    for max_iter in (0, 2.5, True):
        with pytest.raises(ValueError, match="`max_iter`"):
            pid(joint, max_iter=max_iter)
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        with pytest.raises(ValueError, match=r"`dtype` must be one of torch\.float64"):
            pid(joint, dtype=dtype)
    with pytest.raises(ValueError, match="`warm_start`"):
        pid(_random_joint((3, 2, 2)), warm_start=pid(joint))
    with pytest.raises(TypeError, match="`joint`"):
        pid(np.ones((2, 2, 2)))


def test_as_dict_needs_a_single_result():
    result = pid(ORACLES["XOR"][0])
    values = result.as_dict()
    assert values["synergy"] == pytest.approx(1.0)
    assert set(ATOMS) <= values.keys()
    with pytest.raises(ValueError, match="single result"):
        pid(torch.stack([ORACLES["XOR"][0]] * 2)).as_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(11)
    joint = _random_joint((3, 8, 8, 6))
    on_gpu = pid(joint.cuda())
    assert on_gpu.synergy.device.type == "cuda"
    assert _atoms(on_gpu) == pytest.approx(_atoms(pid(joint)), abs=2 * TOL)
