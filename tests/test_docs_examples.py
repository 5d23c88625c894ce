"""The examples shown in the documentation run, print what the pages say, and render."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


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


def fenced_blocks(markdown: str, language: str) -> list[str]:
    """The bodies of the ``` fences of ``language`` in ``markdown``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def test_readme_example_prints_what_the_readme_shows(capsys):
    readme = (ROOT / "README.md").read_text()
    code = next(block for block in fenced_blocks(readme, "python") if "pid(xor)" in block)
    shown = readme.split(code, 1)[1]
    expected = fenced_blocks(shown, "text")[0]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == expected


def page_text(html_file: Path) -> str:
    """The visible text of a built page: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_file.read_text()))


@pytest.mark.slow
def test_built_user_guide_shows_the_complete_example(tmp_path):
    """The strict site build includes docs/examples/own_module.py into the user guide whole."""
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        check=True,
        timeout=300,
    )
    text = page_text(site / "user-guide" / "index.html")
    example = (EXAMPLES / "own_module.py").read_text()
    missing = [line for line in example.splitlines() if line.strip() and line not in text]
    assert not missing, f"the user guide's example lacks {len(missing)} lines, e.g. {missing[:3]}"
    assert "--8<--" not in text
