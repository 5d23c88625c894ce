"""The textbook distributions of ORACLES.md with their exact PID values (bits)."""

from __future__ import annotations

import itertools

import torch

_T = 0.311278  # h(1/4) - 1/2


def _uniform(shape, support):
    p = torch.zeros(shape, dtype=torch.float64)
    for cell in support:
        p[cell] = 1.0
    return p / p.sum()


def _weighted(shape, weights):
    p = torch.zeros(shape, dtype=torch.float64)
    for cell, w in weights.items():
        p[cell] = w
    return p


def _rdnunqxor():
    p = torch.zeros(8, 8, 16, dtype=torch.float64)
    for r, u1, u2, a, c in itertools.product((0, 1), repeat=5):
        p[4 * r + 2 * u1 + a, 4 * r + 2 * u2 + c, 8 * r + 4 * u1 + 2 * u2 + (a ^ c)] += 1 / 32
    return p


def _liang(op):
    support = []
    for a, c in itertools.product((0, 1), repeat=2):
        support.append((2 * a + c, c, op(a, c)))
    return _uniform((4, 2, 2), support)


# name -> (joint, (I1, I2, I12, U1, U2, R, S))
ORACLES = {
    "XOR": (
        _uniform((2, 2, 2), [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]),
        (0, 0, 1, 0, 0, 0, 1),
    ),
    "AND": (
        _uniform((2, 2, 2), [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 1)]),
        (_T, _T, 0.811278, 0, 0, _T, 0.5),
    ),
    "OR": (
        _uniform((2, 2, 2), [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)]),
        (_T, _T, 0.811278, 0, 0, _T, 0.5),
    ),
    "RDN": (_uniform((2, 2, 2), [(0, 0, 0), (1, 1, 1)]), (1, 1, 1, 0, 0, 1, 0)),
    "UNQ1": (
        _uniform((2, 2, 2), [(0, 0, 0), (0, 1, 0), (1, 0, 1), (1, 1, 1)]),
        (1, 0, 1, 1, 0, 0, 0),
    ),
    "UNQ2": (
        _uniform((2, 2, 2), [(0, 0, 0), (0, 1, 1), (1, 0, 0), (1, 1, 1)]),
        (0, 1, 1, 0, 1, 0, 0),
    ),
    "COPY": (
        _uniform((2, 2, 4), [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3)]),
        (1, 1, 2, 1, 1, 0, 0),
    ),
    "SUM": (
        _uniform((2, 2, 3), [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2)]),
        (0.5, 0.5, 1.5, 0, 0, 0.5, 1),
    ),
    "RDNXOR": (
        _uniform(
            (4, 4, 4),
            [
                (0, 0, 0),
                (0, 1, 1),
                (1, 0, 1),
                (1, 1, 0),
                (2, 2, 2),
                (2, 3, 3),
                (3, 2, 3),
                (3, 3, 2),
            ],
        ),
        (1, 1, 2, 0, 0, 1, 1),
    ),
    "RDNUNQXOR": (_rdnunqxor(), (2, 2, 4, 1, 1, 1, 1)),
    "XORAND": (
        _uniform((2, 2, 3), [(0, 0, 0), (0, 1, 2), (1, 0, 2), (1, 1, 1)]),
        (0.5, 0.5, 1.5, 0, 0, 0.5, 1),
    ),
    "reduced_or": (
        _weighted((2, 2, 2), {(0, 0, 0): 0.5, (0, 1, 1): 0.25, (1, 0, 1): 0.25}),
        (_T, _T, 1, 0, 0, _T, 0.688722),
    ),
    "rand": (
        _weighted(
            (2, 2, 2),
            {
                (0, 0, 0): 0.25,
                (0, 1, 0): 0.125,
                (0, 1, 1): 0.125,
                (1, 0, 0): 0.125,
                (1, 0, 1): 0.125,
                (1, 1, 1): 0.25,
            },
        ),
        (0.188722, 0.188722, 0.5, 0, 0, 0.188722, _T),
    ),
    "imperfect_rdn": (
        _weighted((2, 2, 2), {(0, 0, 0): 0.499, (0, 1, 0): 0.001, (1, 1, 1): 0.5}),
        (1, 0.989590, 1, 0.010410, 0, 0.989590, 0),
    ),
    "pwu": (
        _uniform((3, 3, 3), [(0, 1, 1), (0, 2, 2), (1, 0, 1), (2, 0, 2)]),
        (0.5, 0.5, 1, 0, 0, 0.5, 0.5),
    ),
    "dup": (
        _uniform((2, 2, 3), [(0, 0, 0), (0, 0, 1), (1, 1, 1), (1, 1, 2)]),
        (0.5, 0.5, 0.5, 0, 0, 0.5, 0),
    ),
    "diff": (
        _uniform((2, 2, 2), [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 1)]),
        (_T, _T, 0.5, 0.188722, 0.188722, 0.122556, 0),
    ),
    "boom": (
        _uniform((3, 3, 3), [(0, 0, 1), (0, 0, 2), (0, 2, 0), (1, 2, 1), (2, 0, 2), (2, 1, 2)]),
        (0.666667, 0.666667, 1.125815, 0.333333, 0.333333, 0.333333, 0.125815),
    ),
    "NULL": (_uniform((2, 2, 2), list(itertools.product((0, 1), repeat=3))), (0, 0, 0, 0, 0, 0, 0)),
    "redundant_and_unique1": (_liang(lambda a, c: a & c), (0.811278, _T, 0.811278, 0.5, 0, _T, 0)),
    "redundant_or_unique1": (_liang(lambda a, c: a | c), (0.811278, _T, 0.811278, 0.5, 0, _T, 0)),
    "redundant_xor_unique1": (_liang(lambda a, c: a ^ c), (1, 0, 1, 1, 0, 0, 0)),
}
