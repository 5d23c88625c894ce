"""Checks of plain Python arguments, shared by the solver's wrappers, the metrics and callbacks.

Each raises ``ValueError`` naming the argument, what it means and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable


def check_int_at_least(name: str, value: object, minimum: int, meaning: str) -> None:
    """Raise unless ``value`` is a Python int (not bool) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"Expected argument `{name}` ({meaning}) to be an integer >= {minimum}, "
            f"but got {value!r}."
        )


def check_tolerance_bits(name: str, value: object) -> None:
    """Raise unless ``value`` is a real number in (0, 1): a certified error bound in bits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(
            f"Expected argument `{name}` (the certified error bound of the PID atoms, bits) to "
            f"be a number in (0, 1), but got {value!r}; the solver's default is 1e-7."
        )


def check_num_bootstrap(value: object, meaning: str) -> None:
    """Raise unless ``value`` is 0 (no bootstrap) or an integer >= 2: an interval needs the
    quantiles of two or more replicates."""
    check_int_at_least("num_bootstrap", value, 0, meaning)
    if value == 1:
        raise ValueError(
            "Expected argument `num_bootstrap` to be 0 (no bootstrap) or at least 2 (an interval "
            "needs quantiles of two or more replicates), but got 1; use e.g. 64."
        )


def check_not_a_string(name: str, value: object, fix: str) -> None:
    """Raise when ``value``, meant as a collection of names, is one string: iterated, it would
    be its characters (``"audio"`` five modalities). ``fix`` says what to pass instead."""
    if isinstance(value, str):
        raise ValueError(
            f"Expected argument `{name}` to be a collection of names, but got the string "
            f"{value!r}; {fix}."
        )


def as_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """``value`` as a tuple of names: one string is one name (``tuple("audio")`` would be its
    characters, which is what a command line's ``data.views=audio`` gives otherwise)."""
    return (value,) if isinstance(value, str) else tuple(value)
