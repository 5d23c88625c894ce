"""The coverage benchmark's smallest mode runs and prints the table docs/method.md quotes."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"


def test_coverage_benchmark_smoke_run_prints_its_table(capsys):
    spec = importlib.util.spec_from_file_location("coverage_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small = ["--repetitions", "3", "--sizes", "80", "--bootstrap", "10"]
    module.main([*small, "--reference-samples", "2000"])
    printed = capsys.readouterr().out
    assert "N = 80" in printed
    for row in ("bootstrap_interval", "percentile", "basic, c = 1 ", "basic, c = 1.25"):
        assert f"| {row}" in printed
    # The population U2 of the garbled channel is exactly 0 by construction.
    assert "unique_2 -0.0000" in printed or "unique_2 0.0000" in printed
