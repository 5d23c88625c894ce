"""The complete examples shown in the documentation run and do what the pages say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_module_example_runs_the_pid_schedule(capsys):
    schedule = load_example("own_module").main()

    stages = [record["stage"] for record in schedule.history]
    # One probe per epoch; stage 1 first, then the switch the user guide describes.
    assert [record["epoch"] for record in schedule.history] == list(range(8))
    assert stages[0] == "unimodal" and stages[-1] == "joint"
    assert schedule.switch_epoch == stages.index("joint")
    # The clear view runs ahead and is paused while the faint one catches up.
    assert any(record["paused"] == ["sharp"] for record in schedule.history)
    printed = capsys.readouterr().out
    assert f"stage 2 started at epoch {schedule.switch_epoch}" in printed
    assert printed.count("bits\n") == len(schedule.history)
