"""FastPID solver speed and accuracy against its peers, measured in one run.

Peers: CVXPY with Clarabel, CVXPY with SCS (each handed the whole BROJA exponential-cone program,
build time included, as a user pays it), and the released code's Adam + Sinkhorn scheme
(``benchmarks/adam_sinkhorn.py``). For each size it prints the median wall time of each solver,
the ratio peer / FastPID, and the largest atom error against the exact reference: FastPID itself
at ``tol=1e-9`` bits, whose certificate makes it exact to that bound.

Batched rows time FastPID on a batch of 256 distributions and report the per-distribution cost as
a fraction of a single solve of the same size.

    python benchmarks/solver.py                       # the full table of docs/benchmarks.md
    python benchmarks/solver.py --sizes 6x6x6 --quick # a smoke run
    python benchmarks/solver.py --device cuda --peers none
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The CVXPY reference is test code (CVXPY is a development dependency), kept in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _pid_reference import broja_cvxpy
from adam_sinkhorn import adam_sinkhorn_pid
from admui import admui_pid
from solver_fuzz import soft_probe_joint

from pidsched.functional import pid

ATOMS = ("unique_1", "unique_2", "redundancy", "synergy")
DEFAULT_SIZES = "6x6x6,10x10x10,20x20x6,20x20x28,20x20x20,50x50x50"
# CVXPY peers above this many cells take minutes to hours per solve (20x20x20 took ~70 s with
# Clarabel here); they are run once instead of `repeats` times, and skipped beyond the limit.
REFERENCE_TOL = 1e-9  # bits; float64 rounding stalls certificates near 1e-10 at 50x50x50
CVXPY_REPEAT_LIMIT = 2_000
CVXPY_CELL_LIMIT = 12_000
# Probes of many classes, as the metrics accumulate them (issue 10's goals, seconds at tol 1e-5).
DEFAULT_PROBES = "101x101x101:5,20x20x309:2"
PROBE_TOL = 1e-5


def probe_specs(text: str) -> list[str]:
    """``--probes``: comma list of ``K1xK2xKy`` or ``K1xK2xKy:goal_seconds`` ('' for none)."""
    specs = [spec for spec in text.split(",") if spec]
    for spec in specs:
        size, _, goal = spec.partition(":")
        try:
            ok = len(size.split("x")) == 3 and all(int(k) > 0 for k in size.split("x"))
            ok = ok and (not goal or float(goal) > 0)
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(
                f"{spec!r} is not K1xK2xKy or K1xK2xKy:goal_seconds, e.g. 101x101x101:5"
            )
    return specs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of K1xK2xKy")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per solver (median)")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the batched rows")
    parser.add_argument(
        "--batched-sizes", default="6x6x6,10x10x10,20x20x6,20x20x20", help="sizes timed batched"
    )
    parser.add_argument(
        "--peers",
        default="clarabel,scs,adam,admui",
        help="comma list of clarabel, scs, adam, admui, or none",
    )
    parser.add_argument("--device", default="cpu", help="device of the FastPID solves")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: like-for-like with the single-threaded conic solvers)",
    )
    parser.add_argument(
        "--probes",
        type=probe_specs,
        default=DEFAULT_PROBES,
        help="comma list of K1xK2xKy[:goal seconds] soft probes solved at tol 1e-5 ('' for none)",
    )
    parser.add_argument("--quick", action="store_true", help="1 repeat, batch 16 (smoke test)")
    parser.add_argument(
        "--scaling",
        default=None,
        metavar="KS",
        help="instead of the tables: time, iterations and peak memory of K^3 cubes, e.g. 8,16,32",
    )
    parser.add_argument("--scaling-method", default="auto", help="method of the --scaling solves")
    return parser.parse_args(argv)


def random_joint(shape, rng: np.random.Generator, batch: int | None = None) -> torch.Tensor:
    """Dirichlet(0.5) distributions: dense, with the boundary optima BROJA typically has."""
    cells = int(np.prod(shape))
    sample = rng.dirichlet(np.full(cells, 0.5), size=batch or 1).reshape((batch or 1), *shape)
    joint = torch.from_numpy(sample)
    return joint if batch else joint[0]


def timed(fn, repeats: int, synchronize=lambda: None):
    times, result = [], None
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        result = fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def max_error(result, reference) -> float:
    return max(
        float((torch.as_tensor(result[a]).cpu() - reference[a].cpu()).abs().max()) for a in ATOMS
    )


def as_atoms(result) -> dict[str, torch.Tensor]:
    return {a: getattr(result, a) for a in ATOMS}


def single_row(shape, args, generator, peers, device, sync) -> dict:
    joint = random_joint(shape, generator)
    reference = as_atoms(pid(joint, tol=REFERENCE_TOL))
    cells = int(np.prod(shape))
    on_device = joint.to(device)
    pid(on_device)  # warm-up (allocator, kernels)
    ours_time, ours = timed(lambda: pid(on_device), args.repeats, sync)
    row = {
        "size": "x".join(map(str, shape)),
        "fastpid_s": ours_time,
        "fastpid_err": max_error(as_atoms(ours), reference),
        "fastpid_iters": ours.iterations,
        "fastpid_gap": float(ours.gap),
    }
    for path in ("dense", "iterative"):
        path_time, path_result = timed(lambda m=path: pid(on_device, method=m), args.repeats, sync)
        row[path] = (path_time, path_result.iterations)
    for peer in peers:
        if peer == "admui":
            # Alternating I-projections given twice FastPID's time: if it is still less accurate,
            # FastPID is at least 2x faster at equal accuracy.
            peer_atoms, outer = admui_pid(joint, seconds=2 * ours_time)
            row[peer] = (2 * ours_time, max_error(peer_atoms, reference), outer)
            continue
        if peer in ("clarabel", "scs") and cells > CVXPY_CELL_LIMIT:
            row[peer] = None
            continue
        if peer == "adam":
            fn = lambda: adam_sinkhorn_pid(joint)  # noqa: E731
        else:
            fn = lambda peer=peer: broja_cvxpy(joint.numpy(), solver=peer.upper())  # noqa: E731
        repeats = 1 if (peer != "adam" and cells > CVXPY_REPEAT_LIMIT) else args.repeats
        peer_time, peer_result = timed(fn, repeats)
        peer_atoms = {a: torch.as_tensor(peer_result[a]) for a in ATOMS}
        row[peer] = (peer_time, max_error(peer_atoms, reference))
    return row


def batched_row(shape, args, generator, device, sync) -> dict:
    joints = random_joint(shape, generator, batch=args.batch).to(device)
    pid(joints[:2])
    batch_time, result = timed(lambda: pid(joints), max(1, args.repeats - 1), sync)
    single_time, _ = timed(lambda: pid(joints[0]), args.repeats, sync)
    reference = as_atoms(pid(joints.cpu(), tol=REFERENCE_TOL))
    return {
        "size": "x".join(map(str, shape)),
        "batch": args.batch,
        "per_dist_s": batch_time / args.batch,
        "single_s": single_time,
        "fraction": batch_time / args.batch / single_time,
        "err": max_error(as_atoms(result), reference),
        "iters": result.iterations,
    }


def probe_joint(shape, rng: np.random.Generator, num_samples: int = 4096) -> torch.Tensor:
    """A soft probe as the metrics accumulate it, for ``shape = (K1, K2, Ky)``: a cube is
    :func:`solver_fuzz.soft_probe_joint` (two 90 %-right classifiers, logit margin 4); with
    ``K1, K2 < Ky`` it is the clustered probe (``ClusteredFastPID``): each modality's soft
    assignment of the same samples to ``K1`` (``K2``) clusters, the cluster of a class being
    ``class mod K``, blurred by unit logit noise."""
    k1, k2, ky = shape
    if k1 == k2 == ky:
        return soft_probe_joint(ky, 4.0, rng, num_samples) / num_samples
    y = rng.integers(ky, size=num_samples)
    probs = []
    for k in (k1, k2):
        logits = rng.normal(size=(num_samples, k))
        logits[np.arange(num_samples), y % k] += 3.0
        probs.append(torch.softmax(torch.from_numpy(logits), dim=-1))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y), ky).double()
    return torch.einsum("ni,nj,ny->ijy", probs[0], probs[1], onehot) / num_samples


def probe_row(spec: str, args, generator) -> dict:
    """One many-class probe: ``spec`` is ``K1xK2xKy`` or ``K1xK2xKy:goal_seconds``."""
    size, _, goal = spec.partition(":")
    shape = tuple(int(k) for k in size.split("x"))
    joint = probe_joint(shape, generator)
    seconds, result = timed(lambda: pid(joint, tol=PROBE_TOL), args.repeats)
    return {
        "size": size,
        "seconds": seconds,
        "iterations": result.iterations,
        "gap": float(result.gap),
        "goal_s": float(goal) if goal else None,
    }


def print_probes(rows) -> None:
    print(f"| soft probe (tol {PROBE_TOL:g} bits) | time | iters | certified gap | goal |")
    print("|---|---|---|---|---|")
    for row in rows:
        goal = "-" if row["goal_s"] is None else f"{row['goal_s']:g} s"
        print(
            f"| {row['size']} | {fmt_time(row['seconds'])} | {row['iterations']} | "
            f"{row['gap']:.1e} | {goal} |"
        )


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def print_tables(rows, batched_rows, peers, device) -> None:
    header = ["size", f"FastPID ({device})", "iters", "err (bits)", "dense", "iterative"]
    for peer in peers:
        if peer == "admui":
            header += ["admui err at 2x FastPID's time (outer its)"]
            continue
        header += [f"{peer} time", f"{peer}/FastPID", f"{peer} err"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [
            row["size"],
            fmt_time(row["fastpid_s"]),
            str(row["fastpid_iters"]),
            f"{row['fastpid_err']:.1e}",
        ]
        for path in ("dense", "iterative"):
            path_time, iters = row[path]
            cells.append(f"{fmt_time(path_time)} ({iters} it)")
        for peer in peers:
            if peer == "admui":
                _, err, outer = row[peer]
                cells.append(f"{err:.1e} ({outer})")
                continue
            if row.get(peer) is None:
                cells += ["not run", "-", "-"]
            else:
                peer_time, err = row[peer]
                cells += [fmt_time(peer_time), f"{peer_time / row['fastpid_s']:.0f}x", f"{err:.1e}"]
        print("| " + " | ".join(cells) + " |")
    if batched_rows:
        print()
        print(
            "| size | batch | per distribution | single solve | per-dist / single | err (bits) "
            "| iters |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in batched_rows:
            print(
                f"| {row['size']} | {row['batch']} | {fmt_time(row['per_dist_s'])} | "
                f"{fmt_time(row['single_s'])} | {row['fraction']:.3f} | {row['err']:.1e} | "
                f"{row['iters']} |"
            )


def cuda_column(sizes, batch_sizes, batch: int = 256, repeats: int = 3) -> list[dict]:
    """FastPID on CUDA: one row per size of ``sizes`` (single solves) and of ``batch_sizes``
    (batches of ``batch``), each a dict with ``size``, ``batch`` (1 for single solves),
    ``seconds`` (median per call), ``per_dist_s``, ``iterations``, ``gap`` (largest, bits) and
    ``err`` (largest atom error against a CPU solve at ``REFERENCE_TOL``). Sizes are tuples or
    ``"KxKxK"`` strings. Needs ``torch.cuda.is_available()``."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_column needs a CUDA device; torch.cuda.is_available() is False")
    generator = np.random.default_rng(0)
    rows = []
    for sizes_of_kind, count in ((sizes, None), (batch_sizes, batch)):
        for size in sizes_of_kind:
            shape = tuple(int(k) for k in size.split("x")) if isinstance(size, str) else size
            joint = random_joint(shape, generator, batch=count)
            on_gpu = joint.cuda()
            pid(on_gpu)  # warm-up
            seconds, result = timed(lambda j=on_gpu: pid(j), repeats, torch.cuda.synchronize)
            reference = as_atoms(pid(joint, tol=REFERENCE_TOL))
            rows.append(
                {
                    "size": "x".join(map(str, shape)),
                    "batch": count or 1,
                    "seconds": seconds,
                    "per_dist_s": seconds / (count or 1),
                    "iterations": result.iterations,
                    "gap": float(result.gap.max()),
                    "err": max_error(as_atoms(result), reference),
                }
            )
    return rows


_SCALING_PROBE = """
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from pidsched.functional import pid
k, method, tol = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rng = np.random.default_rng(0)
joint = torch.from_numpy(rng.dirichlet(np.full(k ** 3, 0.5)).reshape(k, k, k))
start = time.perf_counter()
result = pid(joint, tol=tol, method=method)
seconds = time.perf_counter() - start
print(json.dumps({"k": k, "seconds": seconds, "iterations": result.iterations,
                  "gap": float(result.gap),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scaling_rows(ks, method: str = "auto", tol: float = 1e-5) -> list[dict]:
    """One fresh process per cube ``K^3`` (so that its peak resident memory is its own)."""
    rows = []
    for k in ks:
        out = subprocess.run(
            [sys.executable, "-c", _SCALING_PROBE, str(k), method, str(tol)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"# done K={k}", file=sys.stderr, flush=True)
    return rows


def print_scaling(rows, method: str) -> None:
    print(f"| K (K^3 cube, tol 1e-5 bits, method {method}) | time | iterations | gap | peak RSS |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['k']} | {fmt_time(row['seconds'])} | {row['iterations']} | "
            f"{row['gap']:.1e} | {row['peak_mib']:.0f} MiB |"
        )
    if len(rows) > 1:
        slope = np.polyfit(np.log([r["k"] for r in rows]), np.log([r["seconds"] for r in rows]), 1)[
            0
        ]
        print(f"\nfitted log-log slope of time against K: {slope:.2f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.scaling:
        print(f"# command: python benchmarks/solver.py {' '.join(sys.argv[1:])}".rstrip())
        ks = [int(k) for k in args.scaling.split(",")]
        print_scaling(scaling_rows(ks, args.scaling_method), args.scaling_method)
        return
    if args.quick:
        args.repeats, args.batch = 1, 16
    peers = [] if args.peers == "none" else args.peers.split(",")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    print(f"# command: python benchmarks/solver.py {' '.join(sys.argv[1:])}".rstrip())
    rows = []
    for size in args.sizes.split(","):
        shape = tuple(int(k) for k in size.split("x"))
        rows.append(single_row(shape, args, generator, peers, device, sync))
        print(f"# done {size}", file=sys.stderr, flush=True)
    batched_rows = []
    for size in args.batched_sizes.split(",") if args.batch > 1 else []:
        shape = tuple(int(k) for k in size.split("x"))
        batched_rows.append(batched_row(shape, args, generator, device, sync))
        print(f"# done batched {size}", file=sys.stderr, flush=True)
    print_tables(rows, batched_rows, peers, device)
    probes = args.probes if device.type == "cpu" else []
    if probes:
        print()
        print_probes([probe_row(spec, args, generator) for spec in probes])
    if torch.cuda.is_available() and device.type != "cuda":
        print("\n| size | batch | CUDA per call | per distribution | iters | gap | err |")
        print("|---|---|---|---|---|---|---|")
        for row in cuda_column(args.sizes.split(","), args.batched_sizes.split(",")):
            print(
                f"| {row['size']} | {row['batch']} | {fmt_time(row['seconds'])} | "
                f"{fmt_time(row['per_dist_s'])} | {row['iterations']} | {row['gap']:.1e} | "
                f"{row['err']:.1e} |"
            )


if __name__ == "__main__":
    main()
