"""Schedule comparison: test accuracy and macro-F1 of every schedule, paired with joint training.

For each setting (the synthetic competition task, five UCI mfeat view pairs and one three-view
mfeat setting) and each schedule (joint training, joint training on the fused loss alone,
fixed two-stage, OGM-GE, the MI controller, the paper's settings ``pid_paper``, pidsched's
default ``pid``, and the four candidates for that default: ``pid_point`` (point estimates, a
decision on every probe), ``pid_conf`` (``confidence``), ``pid_persist`` (``persistence``) and
``pid_conf_persist`` (both)), ``pidsched-train`` runs one Hydra multirun over the seeds in a
subprocess with one CPU thread, ``--jobs`` rows at a time (the seven original schedules took
13-34 min for the whole table on 2 cores; choose rows with ``--settings``/``--schedules``).
Every number is the validation-selected checkpoint's, tested once (``summary.json``). The
paired difference to joint training compares runs with the same seed: the same initialisation,
shuffling and data split.

    python benchmarks/schedules.py                    # the full table of docs/results.md
    python benchmarks/schedules.py --settings synthetic,fou+zer --seeds 3
    python benchmarks/schedules.py --settings fou+zer,zer+mor --seeds 3 \
        --schedules joint,pid_point,pid_conf,pid_persist,pid_conf_persist
    python benchmarks/schedules.py --quick            # a smoke run: one setting, one seed
    python benchmarks/schedules.py --report-from a/results.json b/results.json  # re-print

Runs go to ``benchmarks/runs/`` (git-ignored by the ``.gitignore`` written there); the aggregate
lands in ``results.json`` beside them and the tables are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

RUNS_DIR = Path(__file__).resolve().parent / "runs"
# Table rows: a schedule config of conf/schedule/, or a name with the overrides it stands for.
SCHEDULES = (
    "joint",
    "joint_fused",
    "fixed",
    "ogm_ge",
    "mi",
    "pid_paper",
    "pid",
    *("pid_point", "pid_conf", "pid_persist", "pid_conf_persist"),
)
# The evidence options of PIDController tried as candidates for the default (issue 11).
CONFIDENCE = 0.9  # share of bootstrap replicates a pause or a synergy drop must hold on
PERSISTENCE = 3  # consecutive probes a pause change or a synergy drop must hold on
NUM_BOOTSTRAP = 50  # replicates per probe for the confidence variants


def pid_variant(confidence: float | None, persistence: int) -> tuple[str, ...]:
    """``schedule=pid`` with the controller's evidence options set explicitly."""
    return (
        "schedule=pid",
        f"schedule.controller.confidence={'null' if confidence is None else confidence}",
        f"schedule.controller.persistence={persistence}",
        # Replicates only where the controller reads them: they cost a solve each.
        f"++schedule.num_bootstrap={0 if confidence is None else NUM_BOOTSTRAP}",
    )


SCHEDULE_OVERRIDES = {
    # Joint training on the fused loss alone (no unimodal terms): the loss OGM-GE trains with,
    # and the usual setting in which modality competition is reported.
    "joint_fused": ("schedule=joint", "model.unimodal_weight=0"),
    # The candidates for pidsched's default, independent of what conf/schedule/pid.yaml ships:
    # the point-estimate rules (the default before issue 11), confidence only, persistence
    # only, both.
    "pid_point": pid_variant(None, 1),
    "pid_conf": pid_variant(CONFIDENCE, 1),
    "pid_persist": pid_variant(None, PERSISTENCE),
    "pid_conf_persist": pid_variant(CONFIDENCE, PERSISTENCE),
}
BASELINE = "joint"
# Switches every row off the things the table does not read: curves, loggers, progress bars.
QUIET_OVERRIDES = (
    "callbacks.report=null",
    "~logger",
    "trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
)
# Smoke runs have one unimodal epoch, fewer than the controllers' default minimum.
QUICK_SCHEDULE_OVERRIDES = {
    name: ("schedule.controller.min_unimodal_epochs=1",)
    for name in ("mi", "pid", "pid_point", "pid_conf", "pid_persist", "pid_conf_persist")
}


@dataclass(frozen=True)
class Setting:
    """One data setting: its ``pidsched-train`` overrides and epoch budget."""

    overrides: tuple[str, ...]
    max_epochs: int
    stage1_max_epochs: int


def mfeat(*views: str) -> Setting:
    """An mfeat setting over ``views``: 30 epochs, at most 15 of them unimodal (fits the hour)."""
    return Setting(("experiment=mfeat", f"data.views=[{','.join(views)}]"), 30, 15)


SETTINGS: dict[str, Setting] = {
    # The default experiment, unchanged: 30 epochs, at most 15 unimodal.
    "synthetic": Setting(("experiment=synthetic_competition",), 30, 15),
    "pix+mor": mfeat("pix", "mor"),
    "fou+zer": mfeat("fou", "zer"),
    "kar+mor": mfeat("kar", "mor"),
    "fac+zer": mfeat("fac", "zer"),
    "zer+mor": mfeat("zer", "mor"),
    # Three weak views, where fusion has the most to add.
    "fou+zer+mor": mfeat("fou", "zer", "mor"),
}
QUICK_SETTING = Setting(("experiment=synthetic_competition", "data.num_samples=600"), 2, 1)


@dataclass(frozen=True)
class Row:
    """One table row: a schedule on a setting, all seeds in one ``pidsched-train -m`` process."""

    setting: str
    schedule: str
    command: tuple[str, ...]
    run_dir: Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma list of settings")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="comma list")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per row")
    parser.add_argument("--jobs", type=int, default=2, help="rows run at once (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: new one)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: one small setting, one seed, 2 epochs"
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        nargs="+",
        help="print the tables of earlier runs' results.json files (later files win) and exit",
    )
    args = parser.parse_args(argv)
    args.settings = args.settings.split(",")
    args.schedules = args.schedules.split(",")
    for name in args.settings:
        if name not in SETTINGS:
            parser.error(f"unknown setting {name!r}; choose from {','.join(SETTINGS)}")
    for name in args.schedules:
        if name not in SCHEDULES:
            parser.error(f"unknown schedule {name!r}; choose from {','.join(SCHEDULES)}")
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1")
    if args.quick:
        args.settings, args.seeds = ["quick"], 1
    return args


def prepare_run_dir(out: Path | None, prefix: str) -> Path:
    """``out``, or a fresh ``benchmarks/runs/<prefix>-<time>``; created, and git-ignored there."""
    out = out or RUNS_DIR / f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve().is_relative_to(RUNS_DIR):
        # runs/ ignores itself, so no repository-wide .gitignore entry is needed.
        (RUNS_DIR / ".gitignore").write_text("*\n")
    return out


def train_command() -> str:
    """The installed ``pidsched-train`` (beside this interpreter when not on PATH)."""
    return shutil.which("pidsched-train") or str(Path(sys.executable).with_name("pidsched-train"))


def build_row(setting_name: str, schedule: str, seeds: int, out: Path, quick: bool) -> Row:
    """The ``pidsched-train -m`` command of one row, its seeds in one sweep directory."""
    setting = QUICK_SETTING if quick else SETTINGS[setting_name]
    run_dir = out / setting_name / schedule
    command = (
        train_command(),
        "-m",
        *setting.overrides,
        *SCHEDULE_OVERRIDES.get(schedule, (f"schedule={schedule}",)),
        f"trainer.max_epochs={setting.max_epochs}",
        f"stage1_max_epochs={setting.stage1_max_epochs}",
        *(QUICK_SCHEDULE_OVERRIDES.get(schedule, ()) if quick else ()),
        *QUIET_OVERRIDES,
        f"seed={','.join(str(seed) for seed in range(seeds))}",
        f"hydra.sweep.dir={run_dir}",
        "hydra.sweep.subdir=seed${seed}",
    )
    return Row(setting_name, schedule, command, run_dir)


def run_row(row: Row) -> dict:
    """Run one row; return its wall time (s), exit status and the per-seed summaries."""
    # One thread per process: two rows share the two cores without oversubscription.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="disabled")
    env["PYTHONWARNINGS"] = "ignore"
    row.run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(row.run_dir / "train.log", "w") as log:
        status = subprocess.run(row.command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall_s = time.perf_counter() - start
    summaries = [
        json.loads(path.read_text()) for path in sorted(row.run_dir.glob("seed*/summary.json"))
    ]
    print(
        f"[{row.setting} / {row.schedule}] {wall_s:.0f} s, exit {status.returncode}, "
        f"{len(summaries)} runs: {shlex.join(row.command)}",
        flush=True,
    )
    return {
        "setting": row.setting,
        "schedule": row.schedule,
        "command": shlex.join(row.command),
        "returncode": status.returncode,
        "wall_s": wall_s,
        "seeds": {summary["seed"]: seed_result(summary) for summary in summaries},
    }


def seed_result(summary: dict) -> dict:
    """The numbers one run contributes to the table (fused head; fractions, not %)."""
    return {
        "acc": summary["test_acc"]["fused"],
        "macro_f1": summary["test_macro_f1"]["fused"],
        "switch_epoch": summary["switch_epoch"],
        "selected_epoch": summary["selected_epoch"],
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value)."""
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), spread


def paired_differences(row: dict, baseline: dict, key: str) -> list[float]:
    """``row - baseline`` of ``key`` for every seed both rows have (same seed, same split)."""
    common = sorted(set(row["seeds"]) & set(baseline["seeds"]))
    return [row["seeds"][s][key] - baseline["seeds"][s][key] for s in common]


def percent(values: list[float]) -> str:
    """``mean ± std`` in percent (points for differences)."""
    if not values:
        return "n/a"
    mean, spread = mean_std([100 * v for v in values])
    return f"{mean:.2f}" if math.isnan(spread) else f"{mean:.2f} ± {spread:.2f}"


def wins_losses(differences: list[float]) -> str:
    """``wins/ties/losses`` over seeds."""
    wins = sum(d > 0 for d in differences)
    losses = sum(d < 0 for d in differences)
    return f"{wins}/{len(differences) - wins - losses}/{losses}"


def switch_epochs(row: dict) -> str:
    """The seeds' switch epochs (first joint epoch; ``-`` where stage 1 never ended)."""
    epochs = [row["seeds"][s]["switch_epoch"] for s in sorted(row["seeds"])]
    return " ".join("-" if e is None else str(e) for e in epochs)


def setting_table(rows: list[dict]) -> str:
    """The Markdown table of one setting, one line per schedule."""
    baseline = next((r for r in rows if r["schedule"] == BASELINE), None)
    lines = [
        "| schedule | test acc (%) | Δ acc vs joint (pp) | W/T/L | macro-F1 (%) "
        "| Δ F1 vs joint (pp) | switch epochs | row time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        values = [row["seeds"][s] for s in sorted(row["seeds"])]
        cells = [row["schedule"], percent([v["acc"] for v in values]), "-", "-"]
        cells += [percent([v["macro_f1"] for v in values]), "-"]
        if baseline is not None and row is not baseline:
            acc_diff = paired_differences(row, baseline, "acc")
            cells[2:4] = [percent(acc_diff), wins_losses(acc_diff)]
            cells[5] = percent(paired_differences(row, baseline, "macro_f1"))
        cells += [switch_epochs(row), f"{row['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overview_table(results: list[dict], settings: list[str], schedules: list[str]) -> str:
    """Mean paired Δ accuracy (pp) per setting and schedule, with the seeds' wins/ties/losses."""
    by_key = {(r["setting"], r["schedule"]): r for r in results}
    others = [s for s in schedules if s != BASELINE]
    lines = [
        "| setting | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for setting in settings:
        baseline = by_key.get((setting, BASELINE))
        cells = []
        for schedule in others:
            row = by_key.get((setting, schedule))
            diff = paired_differences(row, baseline, "acc") if baseline and row else []
            mean = f"{statistics.fmean(diff) * 100:+.2f}" if diff else "n/a"
            cells.append(f"{mean} ({wins_losses(diff)})")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled_differences(
    results: list[dict], settings: list[str], schedule: str, baseline: str, key: str
) -> list[float]:
    """Paired differences ``schedule - baseline`` of ``key`` over every setting and seed."""
    by_key = {(r["setting"], r["schedule"]): r for r in results}
    differences = []
    for setting in settings:
        row, base = by_key.get((setting, schedule)), by_key.get((setting, baseline))
        if row and base:
            differences += paired_differences(row, base, key)
    return differences


def pooled_table(results: list[dict], settings: list[str], schedules: list[str]) -> str:
    """Every setting and seed pooled: paired Δ vs joint (and vs fused-only joint training)."""
    fused_only = "joint_fused" if "joint_fused" in schedules else None
    lines = [
        "| schedule | Δ acc vs joint (pp) | W/T/L | Δ macro-F1 vs joint (pp) "
        "| Δ acc vs joint_fused (pp) | W/T/L |",
        "|---|---|---|---|---|---|",
    ]
    for schedule in (s for s in schedules if s != BASELINE):
        acc = pooled_differences(results, settings, schedule, BASELINE, "acc")
        f1 = pooled_differences(results, settings, schedule, BASELINE, "macro_f1")
        cells = [schedule, _signed(acc), wins_losses(acc), _signed(f1, spread=False), "-", "-"]
        if fused_only and schedule != fused_only:
            versus = pooled_differences(results, settings, schedule, fused_only, "acc")
            cells[4:6] = [_signed(versus), wins_losses(versus)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _signed(values: list[float], spread: bool = True) -> str:
    """``+mean ± std`` in points (``+mean`` alone without ``spread``)."""
    if not values:
        return "n/a"
    mean, std = mean_std([100 * v for v in values])
    if not spread or math.isnan(std):
        return f"{mean:+.2f}"
    return f"{mean:+.2f} ± {std:.2f}"


def report(results: list[dict], settings: list[str], schedules: list[str]) -> str:
    """All tables as Markdown: one per setting, then the overview."""
    parts = []
    for setting in settings:
        rows = [
            r for s in schedules for r in results if r["setting"] == setting and r["schedule"] == s
        ]
        parts.append(f"### {setting}\n\n{setting_table(rows)}")
    parts.append(
        "### Overview: mean paired Δ test accuracy vs joint (pp), (W/T/L over seeds)\n\n"
        + overview_table(results, settings, schedules)
    )
    pairs = len(pooled_differences(results, settings, schedules[-1], BASELINE, "acc"))
    parts.append(
        f"Pooled over all settings and seeds ({pairs} pairs; the spread is the std of the paired "
        "differences, which mixes settings):\n\n" + pooled_table(results, settings, schedules)
    )
    return "\n\n".join(parts)


def merged_results(paths: list[Path]) -> list[dict]:
    """The rows of several ``results.json`` files, a later file's row replacing an earlier one."""
    rows = {}
    for path in paths:
        for row in json.loads(path.read_text())["results"]:
            rows[row["setting"], row["schedule"]] = row
    return list(rows.values())


def in_order(names: set[str], order: list[str]) -> list[str]:
    """``names`` in ``order``, unknown names (e.g. the smoke run's ``quick``) last."""
    return sorted(names, key=lambda name: order.index(name) if name in order else len(order))


def print_saved_report(paths: list[Path]) -> None:
    """The tables of earlier runs, settings and schedules in this script's order."""
    results = merged_results(paths)
    settings = in_order({r["setting"] for r in results}, list(SETTINGS))
    schedules = in_order({r["schedule"] for r in results}, list(SCHEDULES))
    print(report(results, settings, schedules))
    row_s = sum(r["wall_s"] for r in results)
    print(f"\nsum of row times {row_s:.0f} s ({row_s / 60:.1f} min, rows ran 2 at a time)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_from:
        print_saved_report(args.report_from)
        return 0
    out = prepare_run_dir(args.out, "schedules")
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(f"runs in {out}; {args.jobs} rows at a time, 1 thread each", flush=True)
    # The largest rows first, so the two workers finish together.
    order = sorted(args.settings, key=lambda s: s != "synthetic")
    rows = [build_row(st, sc, args.seeds, out, args.quick) for st in order for sc in args.schedules]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_row, rows))
    total_s = time.perf_counter() - start

    (out / "results.json").write_text(
        json.dumps({"results": results, "total_s": total_s}, indent=2)
    )
    print()
    print(report(results, args.settings, args.schedules))
    print(f"\ntotal wall time {total_s:.0f} s ({total_s / 60:.1f} min); results: {out}")
    failed = [f"{r['setting']}/{r['schedule']}" for r in results if r["returncode"] != 0]
    if failed:
        print(f"FAILED rows (see their train.log): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
