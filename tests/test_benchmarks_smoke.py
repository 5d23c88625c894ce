"""The benchmark scripts' smallest modes still run and report what docs/ quotes from them.

The scripts start together in a module fixture (each is mostly process start-up), and
each test waits for its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``{name: (returncode, output, out_dir)}`` of every benchmark's smoke mode, run at once."""
    out = tmp_path_factory.mktemp("benchmarks")
    commands = {
        "schedules": [
            "schedules.py",
            "--quick",
            "--schedules",
            "joint,pid",
            "--out",
            str(out / "schedules"),
        ],
        "overhead": ["overhead.py", "--quick"],
        "solver": [
            "solver.py",
            "--sizes",
            "6x6x6",
            "--batched-sizes",
            "6x6x6",
            "--quick",
            "--peers",
            "adam",
            "--probes",
            "8x8x8:1,4x4x12",
        ],
        "spectrum": ["newton_spectrum.py", "--sizes", "4"],
        "warm_starts": ["warm_starts.py", "--quick"],
    }
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    processes = {
        name: subprocess.Popen(
            [sys.executable, str(BENCHMARKS / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for name, (script, *args) in commands.items()
    }
    results = {}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=TIMEOUT_S)
        results[name] = (process.returncode, output, out / name)
    return results


def successful_output(finished, name: str) -> str:
    returncode, output, _ = finished[name]
    assert returncode == 0, output[-4000:]
    return output


def test_schedules_quick_reports_a_paired_table(finished):
    output = successful_output(finished, "schedules")
    results = json.loads((finished["schedules"][2] / "results.json").read_text())["results"]

    assert {r["schedule"] for r in results} == {"joint", "pid"}
    for row in results:
        (seed,) = row["seeds"].values()
        assert 0.0 <= seed["acc"] <= 1.0 and 0.0 <= seed["macro_f1"] <= 1.0
        assert "pidsched-train -m" in row["command"] and "seed=0" in row["command"]
    # The pid row is paired with joint on the same seed: its difference is printed.
    pid_line = next(line for line in output.splitlines() if line.startswith("| pid |"))
    by_schedule = {r["schedule"]: r["seeds"]["0"] for r in results}
    difference = 100 * (by_schedule["pid"]["acc"] - by_schedule["joint"]["acc"])
    assert f"| {difference:.2f} |" in pid_line
    assert "command: python" in output and "total wall time" in output


def test_schedules_reprints_saved_results(finished, capsys, monkeypatch):
    successful_output(finished, "schedules")
    spec = importlib.util.spec_from_file_location("schedules", BENCHMARKS / "schedules.py")
    schedules = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the script is executed.
    monkeypatch.setitem(sys.modules, "schedules", schedules)
    spec.loader.exec_module(schedules)

    schedules.main(["--report-from", str(finished["schedules"][2] / "results.json")])

    printed = capsys.readouterr().out
    assert "### quick" in printed and "| pid |" in printed and "sum of row times" in printed
    assert "Pooled over all settings and seeds" in printed


def test_overhead_quick_measures_both_arms(finished):
    output = successful_output(finished, "overhead")

    assert "| quick | 1 |" in output
    assert "on_validation_epoch_end" in output
    assert "quick: the callback's hooks cost" in output and "end to end" in output
    # The parts table: every part was timed (a solve and eight log calls per probe).
    (parts,) = [
        line
        for line in output.splitlines()
        if line.startswith("| quick |") and line.count("|") == 7
    ]
    solve, logging, update, _, total = (float(cell) for cell in parts.split("|")[2:7])
    assert solve > 0 and logging > 0 and update > 0 and solve + logging + update <= total


def test_solver_quick_compares_with_adam(finished):
    output = successful_output(finished, "solver")

    rows = [line for line in output.splitlines() if line.startswith("| 6x6x6 |")]
    # One row in the single-solve table (with the Adam peer's columns), one in the batched one.
    assert len(rows) == 2 and "adam time" in output
    assert "not run" not in rows[0]


def test_solver_quick_times_both_kinds_of_probe(finished):
    output = successful_output(finished, "solver")
    probes = [line for line in output.splitlines() if line.startswith(("| 8x8x8 |", "| 4x4x12 |"))]
    assert len(probes) == 2
    assert probes[0].endswith("| 1 s |") and probes[1].endswith("| - |")  # the goal column


def test_newton_spectrum_prints_the_three_preconditioners(finished):
    output = successful_output(finished, "spectrum")
    (row,) = [line for line in output.splitlines() if line.startswith("| 4x4x4 |")]
    assert row.count("[") == 3  # D blocks, S blocks pinned, S blocks with the gauge free


@pytest.mark.parametrize("spec", ["10x10", "8x8x0", "8x8x8:fast"])
def test_solver_names_a_bad_probe_spec(spec, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.syspath_prepend(str(BENCHMARKS.parent / "tests"))
    solver_benchmark = importlib.import_module("solver")
    with pytest.raises(SystemExit):
        solver_benchmark.parse_args(["--probes", spec])
    assert f"argument --probes: {spec!r} is not K1xK2xKy" in capsys.readouterr().err


def test_warm_starts_quick_compares_both_kinds_of_next_solve(finished):
    output = successful_output(finished, "warm_starts")
    rows = [line.split("|")[1:-1] for line in output.splitlines() if line.startswith("| 4 |")]
    assert [row[1].strip() for row in rows] == ["moved by 0.1", "bootstrap"]
    for _, _, cold, warm, ratio in rows:
        # "ms (iterations)" each, and the ratio of their sums.
        assert float(cold.split()[0]) > 0 and float(warm.split()[0]) > 0 and float(ratio) > 0


def test_many_classes_times_an_exact_probe():
    script = str(BENCHMARKS / "many_classes.py")
    done = subprocess.run(
        [sys.executable, script, "exact", "8", "200"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"K=8 N=200: compute \S+ s, \d+ iterations, gap \S+ bits\n", done.stdout)
