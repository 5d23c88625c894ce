"""``pidsched-report``: redraw one run's PID curves, or overlay several runs in one figure.

Usage::

    pidsched-report outputs/2025-06-01/10-00-00                 # -> that run's pid_curves.png
    pidsched-report multirun/2025-06-01/10-00-00 -o sweep.png   # every job of a sweep, overlaid
    pidsched-report runs/pid runs/joint -o compare.png           # chosen runs, overlaid

Each RUN_DIR is a run directory holding ``pid_history.json`` (written by ``pidsched-train`` /
`PIDReportCallback`), that file itself, or a directory with such run directories below it (a
Hydra multirun sweep). Runs are labelled by their Hydra overrides (``.hydra/overrides.yaml``)
without those shared by all runs, else by their paths. Probes with bootstrap intervals are drawn
with bands; probes that were not certified (no decision was taken on them) with hollow markers,
and their count is printed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from pidsched.viz.curves import CURVES_PNG_NAME, plot_pid_curves
from pidsched.viz.history import (
    HISTORY_CSV_NAME,
    HISTORY_JSON_NAME,
    RunHistory,
    is_certified,
    read_history_csv,
    read_history_json,
)

OVERLAY_PNG_NAME = "pid_curves_overlay.png"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``pidsched-report``."""
    parser = argparse.ArgumentParser(
        prog="pidsched-report",
        description=(
            "Draw how the unique, redundant and synergistic information (bits) of the "
            "modalities moved during training, from the pid_history.json of one run, or "
            "overlay several runs (e.g. the jobs of a multirun sweep) in one figure."
        ),
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        type=Path,
        help=f"run directory with {HISTORY_JSON_NAME}, the file itself, or a sweep directory",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help=(
            f"PNG to write (default: RUN_DIR/{CURVES_PNG_NAME} for one run, "
            f"./{OVERLAY_PNG_NAME} for several)"
        ),
    )
    parser.add_argument("--title", help="first line of the figure title")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pidsched-report``; returns the exit status (argument errors exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        history_files = find_history_files(args.run_dirs)
        labels = run_labels([path.parent for path in history_files])
        histories = {label: _read(path) for label, path in zip(labels, history_files, strict=True)}
        output = args.output or _default_output(history_files)
        plot = plot_pid_curves(histories, output, title=args.title)
    except ValueError as error:
        parser.error(str(error))
    except OSError as error:  # the picture cannot be written there (-o under a file, no rights)
        parser.error(f"cannot write the picture: {error}")
    print(f"pidsched-report: wrote {plot.path} ({len(histories)} run(s): {', '.join(histories)})")
    for label, history in histories.items():
        epochs = uncertified_epochs(history)
        if epochs:
            print(
                f"pidsched-report: {label}: {len(epochs)} probe(s) not certified, no decision "
                f"taken on them (hollow markers): epochs {', '.join(map(str, epochs))}"
            )
    return 0


def uncertified_epochs(history: RunHistory) -> list[int]:
    """The epochs of the run's probes recorded with ``certified: False``."""
    return [record["epoch"] for record in history.records if not is_certified(record)]


def find_history_files(paths: Sequence[Path]) -> list[Path]:
    """The ``pid_history.json`` of each path: a run directory (or its ``pid_history.csv``
    where the JSON is missing), the file (JSON or CSV), or a sweep below it.

    Raises:
        ValueError: for a path that does not exist or has no history file at or below it.
    """
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path} does not exist.")
        if path.is_file():
            found = [path]
        elif (path / HISTORY_JSON_NAME).is_file():
            found = [path / HISTORY_JSON_NAME]
        elif (path / HISTORY_CSV_NAME).is_file():  # a run directory with only the CSV copy
            found = [path / HISTORY_CSV_NAME]
        else:
            found = sorted(path.rglob(HISTORY_JSON_NAME), key=_natural_key)
        if not found:
            raise ValueError(
                f"{path} holds no {HISTORY_JSON_NAME}, neither directly nor in a run directory "
                "below it. Pass a run directory written by pidsched-train (it holds "
                f"{HISTORY_JSON_NAME}, written at the end of fit by PIDReportCallback) or a "
                "multirun sweep directory containing such runs."
            )
        files.extend(found)
    return list(dict.fromkeys(files))


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """A short, distinct legend label for each run directory.

    The Hydra overrides of each run (e.g. ``schedule=pid seed=1``) minus those common to all
    runs; runs without overrides, or whose labels would collide, use their path relative to
    the runs' common directory.
    """
    overrides = [_hydra_overrides(run_dir) for run_dir in run_dirs]
    shared = set.intersection(*(set(o) for o in overrides)) if len(run_dirs) > 1 else set()
    labels = [" ".join(o for o in run if o not in shared) for run in overrides]
    if any(not label for label in labels) or len(set(labels)) < len(labels):
        labels = _path_labels(run_dirs)
    return labels


def _path_labels(run_dirs: Sequence[Path]) -> list[str]:
    resolved = [run_dir.resolve() for run_dir in run_dirs]
    if len(resolved) == 1:
        return [resolved[0].name or str(resolved[0])]
    common = Path(os.path.commonpath(resolved))
    return [str(path.relative_to(common)) or path.name for path in resolved]


def _hydra_overrides(run_dir: Path) -> list[str]:
    overrides_file = run_dir / HYDRA_OVERRIDES
    if not overrides_file.is_file():
        return []
    overrides = yaml.safe_load(overrides_file.read_text()) or []
    return [str(item) for item in overrides]


def _read(path: Path) -> RunHistory:
    read = read_history_csv if path.suffix.lower() == ".csv" else read_history_json
    try:
        return read(path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"cannot read the probe history {path}: {error}") from error


def _default_output(history_files: Sequence[Path]) -> Path:
    if len(history_files) == 1:
        return history_files[0].parent / CURVES_PNG_NAME
    return Path(OVERLAY_PNG_NAME)


def _natural_key(path: Path) -> list[object]:
    # Multirun job directories are numbered 0, 1, ..., 10: sort 2 before 10.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]
