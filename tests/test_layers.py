"""The layer rule of docs/architecture.md holds, and the lazy package attributes behave.

The rule is read from the table under "## Layer rule", so the page and this test cannot drift
apart: every import statement of the package (outside ``if TYPE_CHECKING:``) is checked against
its file's row, and fresh interpreters check what importing the pure layers actually loads.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pidsched"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ALLOWED_EVERYWHERE = ("typing_extensions", "pidsched._lazy")
LAZY_PACKAGES = (
    "pidsched",
    "pidsched.callbacks",
    "pidsched.data",
    "pidsched.models",
    "pidsched.viz",
)


def layer_rules() -> dict[str, tuple[str, ...]]:
    """``{path relative to the repository: allowed imports}`` from the page's layer table."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Layer rule", 1)[1].split("\n## ", 1)[0]
    rules = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`pidsched"):
            continue
        allowed = tuple(re.findall(r"`([^`]+)`", cells[1]))
        for path in re.findall(r"`([^`]+)`", cells[0]):
            rules[path] = allowed
    return rules


def rule_for(path: str, rules: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    """The most specific row covering ``path``: the file's own row, else its deepest folder's."""
    matches = [key for key in rules if key == path or (key.endswith("/") and path.startswith(key))]
    return rules[max(matches, key=len)] if matches else None


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(tree: ast.AST, module: str) -> set[str]:
    """Absolute names of every module imported in ``tree``, at any depth, not type-only ones."""
    found = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if is_type_checking_block(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module)
        pending.extend(ast.iter_child_nodes(node))
    return found


def is_allowed(imported: str, allowed: tuple[str, ...]) -> bool:
    top = imported.split(".")[0]
    if top in sys.stdlib_module_names or "*" in allowed:
        return True
    for entry in (*allowed, *ALLOWED_EVERYWHERE):
        if entry.startswith("pidsched"):
            if imported == entry or imported.startswith(f"{entry}."):
                return True
        elif top == entry:
            return True
    return False


def package_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py"))


def module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_the_table_names_the_layers():
    rules = layer_rules()
    assert rule_for("pidsched/functional/pid.py", rules) == (
        "torch",
        "pidsched._checks",
        "pidsched.functional",
    )
    assert rule_for("pidsched/viz/history.py", rules) == ()
    assert rule_for("pidsched/cli/train.py", rules) == ("*",)


def test_the_checker_catches_a_lightning_import_in_a_pure_layer():
    """The scan sees imports in functions and relative imports, and skips type-only ones."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import matplotlib\n"
        "def f():\n    import lightning.pytorch\n"
        "from .discretize import joint_from_logits\n"
    )
    found = imported_modules(ast.parse(source), "pidsched.functional.pid")
    assert found == {"typing", "lightning.pytorch", "pidsched.functional.discretize"}
    allowed = rule_for("pidsched/functional/pid.py", layer_rules())
    assert [m for m in sorted(found) if not is_allowed(m, allowed)] == ["lightning.pytorch"]


@pytest.mark.parametrize("path", package_files())
def test_every_import_follows_the_layer_rule(path):
    allowed = rule_for(path, layer_rules())
    assert allowed is not None, f"{path} has no row in the layer table of docs/architecture.md"
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    forbidden = sorted(
        m for m in imported_modules(tree, module_name(path)) if not is_allowed(m, allowed)
    )
    assert not forbidden, (
        f"{path} imports {forbidden}, outside its layer {allowed} (docs/architecture.md, "
        "Layer rule): move the code to a layer that may import them, or change the rule there."
    )


def modules_loaded_by(statement: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of ``candidates`` a fresh interpreter has in ``sys.modules`` after ``statement``."""
    script = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in {candidates!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


HEAVY = ("lightning", "pytorch_lightning", "torchmetrics", "matplotlib", "wandb", "hydra")


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import pidsched", ("torch", *HEAVY)),
        ("import pidsched.controllers", ("torch", *HEAVY)),
        ("import pidsched.functional, pidsched.controllers", HEAVY),
        ("import pidsched.models.protocol, pidsched.viz.history", HEAVY),
    ],
)
def test_pure_layers_import_without_lightning(statement, absent):
    assert modules_loaded_by(statement, absent) == []


def test_the_checker_of_loaded_modules_sees_what_was_imported():
    assert modules_loaded_by("import hydra", HEAVY) == ["hydra"]  # hydra: the quickest of HEAVY


def lazy_exports(package: str) -> dict[str, str]:
    """``{public name: defining module}`` of a lazy package."""
    exports = importlib.import_module(package)._EXPORTS
    return {name: module for module, names in exports.items() for name in names}


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_names_resolve_to_their_modules(package):
    module = importlib.import_module(package)
    exports = lazy_exports(package)
    assert set(module.__all__) - {"__version__"} == set(exports)
    for name, defining in exports.items():
        assert getattr(module, name) is getattr(importlib.import_module(defining), name)
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_type_checkers_see_the_same_names(package):
    """The ``if TYPE_CHECKING:`` imports (what IDEs and type checkers read) match ``_EXPORTS``."""
    path = PACKAGE.parent / package.replace(".", "/") / "__init__.py"
    block = next(node for node in ast.parse(path.read_text()).body if is_type_checking_block(node))
    seen = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == lazy_exports(package)


def test_hydra_targets_and_plain_imports_still_work():
    from hydra.utils import get_class

    import pidsched
    from pidsched import FastPID, PIDController

    assert get_class("pidsched.PIDController") is PIDController
    assert get_class("pidsched.PIDSchedulerCallback") is pidsched.callbacks.PIDSchedulerCallback
    assert FastPID.__module__ == "pidsched.metrics.fastpid"
    assert pidsched.viz.history.RunHistory is not None
