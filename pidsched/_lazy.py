"""Lazy package attributes (PEP 562), so importing one layer does not import the others.

``pidsched/__init__.py`` and the subpackages' ``__init__.py`` files name their public objects and
the module that defines each; the module is imported the first time the name is looked up. So
``import pidsched.functional`` costs torch only, while ``from pidsched import FastPID`` and
``pidsched.PIDController`` (Hydra's ``_target_``) still work. The layer rule this serves is in
``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package with lazy attributes.

    Args:
        package: the package's ``__name__``.
        exports: module path -> the public names it defines, e.g.
            ``{"pidsched.metrics": ("FastPID",)}``.
        submodules: subpackage names reachable as attributes (``pidsched.viz``) before anyone
            imported them.

    Returns:
        ``(__getattr__, __dir__)``: the first imports a name's module on first use and caches
        the object in the package's namespace; an unknown name raises ``AttributeError`` as a
        plain module would.
    """
    module_of = {name: module for module, names in exports.items() for name in names}
    subpackages = frozenset(submodules)
    namespace = sys.modules[package].__dict__  # the package being initialised

    def __getattr__(name: str) -> Any:
        if name in module_of:
            value = getattr(importlib.import_module(module_of[name]), name)
        elif name in subpackages:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of, *subpackages})

    return __getattr__, __dir__
