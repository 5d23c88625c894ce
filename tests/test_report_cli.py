"""The run report: PIDReportCallback's files after a real fit, and `pidsched-report` redrawing
one run or overlaying a sweep from saved histories (checked on the data drawn, not pixels)."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
from _viz_helpers import fabricated_history, fit_tiny_pid_run
from lightning.pytorch.demos.boring_classes import BoringModel

import pidsched.cli.report as report_cli
from pidsched.viz import (
    PIDReportCallback,
    RunHistory,
    read_history_csv,
    write_history_json,
    write_run_report,
)
from pidsched.viz.curves import plot_pid_curves
from pidsched.viz.history import write_history_csv


@pytest.fixture
def drawn(monkeypatch):
    """Records every `PIDCurvesPlot` that `pidsched-report` draws."""
    plots = []

    def recording_plot(*args, **kwargs):
        plots.append(plot_pid_curves(*args, **kwargs))
        return plots[-1]

    monkeypatch.setattr(report_cli, "plot_pid_curves", recording_plot)
    return plots


def _write_run(run_dir, overrides=None, **history_options):
    run = RunHistory.from_records(fabricated_history(**history_options))
    write_history_json(run, run_dir / "pid_history.json")
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {override}\n" for override in overrides)
        )
    return run


def test_callback_writes_the_history_and_picture_and_the_cli_redraws_them(tmp_path, drawn):
    run_dir = tmp_path / "run"
    report = PIDReportCallback()
    scheduler = fit_tiny_pid_run(run_dir, callbacks=(report,))

    assert scheduler.history and scheduler.switch_epoch is not None
    assert set(report.report_paths) == {"json", "csv", "png"}
    assert all(path.parent == run_dir for path in report.report_paths.values())
    document = json.loads((run_dir / "pid_history.json").read_text())
    assert document["records"] == RunHistory.from_callback(scheduler).records
    assert document["switch_epoch"] == scheduler.switch_epoch
    assert document["final_epoch"] == 3
    assert read_history_csv(run_dir / "pid_history.csv").records == document["records"]

    (run_dir / "pid_curves.png").unlink()
    assert report_cli.main([str(run_dir)]) == 0
    (plot,) = drawn
    assert plot.path == run_dir / "pid_curves.png" and plot.path.is_file()
    assert plot.switch_epochs == {"run": scheduler.switch_epoch}
    synergy = plot.get("synergy", "run", "synergy")
    assert synergy.epochs == tuple(record["epoch"] for record in scheduler.history)
    assert synergy.values == pytest.approx([record["synergy"] for record in scheduler.history])
    audio = plot.get("unique", "run", "audio").values
    assert audio == pytest.approx([record["unique"]["audio"] for record in scheduler.history])


def test_callback_without_a_scheduler_fails_at_setup_with_a_fix(tmp_path):
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, logger=False, callbacks=[PIDReportCallback()]
    )
    with pytest.raises(ValueError, match=r"Trainer\(callbacks=\[PIDSchedulerCallback"):
        trainer.fit(BoringModel())


def test_callback_arguments_are_checked():
    with pytest.raises(TypeError, match="output_dir"):
        PIDReportCallback(output_dir=3)
    with pytest.raises(TypeError, match="config"):
        PIDReportCallback(config=["seed=0"])


def test_an_empty_history_still_writes_the_files_but_no_picture(tmp_path):
    with pytest.warns(UserWarning, match="No PID probe was recorded"):
        paths = write_run_report(RunHistory.from_records([]), tmp_path)
    assert set(paths) == {"json", "csv"}
    assert json.loads(paths["json"].read_text())["records"] == []
    assert not (tmp_path / "pid_curves.png").exists()


def test_a_schedule_that_never_probes_writes_its_empty_history_without_a_warning(tmp_path, recwarn):
    from pidsched.controllers import JointController

    report = PIDReportCallback(output_dir=tmp_path)
    fit_tiny_pid_run(tmp_path, callbacks=(report,), max_epochs=1, controller=JointController())
    assert not [w for w in recwarn if "No PID probe" in str(w.message)]
    assert json.loads(report.report_paths["json"].read_text())["records"] == []
    assert "png" not in report.report_paths


def test_cli_overlays_every_job_of_a_sweep_labelled_by_its_overrides(tmp_path, drawn):
    sweep = tmp_path / "multirun" / "2025-06-01" / "10-00-00"
    runs = {}
    for job, (schedule, seed) in enumerate([("pid", 0), ("pid", 1), ("joint", 0), ("joint", 1)]):
        job_dir = sweep / str(10 if job == 3 else job)
        job_dir.mkdir(parents=True)
        overrides = [f"schedule={schedule}", f"seed={seed}", "trainer.max_epochs=12"]
        runs[f"schedule={schedule} seed={seed}"] = _write_run(
            job_dir, overrides, offset=0.05 * job, switch_epoch=0 if schedule == "joint" else 6
        )

    output = tmp_path / "sweep.png"
    assert report_cli.main([str(sweep), "-o", str(output)]) == 0
    (plot,) = drawn
    assert plot.path == output and output.is_file()
    # Jobs in numeric order (10 after 2); overrides shared by all jobs are left out.
    assert list(plot.switch_epochs) == list(runs)
    for label, run in runs.items():
        values = plot.get("redundancy", label, "redundancy").values
        assert values == tuple(record["redundancy"] for record in run.records)
    assert plot.switch_epochs["schedule=joint seed=1"] == 0


def test_cli_labels_runs_without_overrides_by_their_paths(tmp_path, drawn, monkeypatch):
    _write_run(tmp_path / "pid" / "run")
    _write_run(tmp_path / "joint" / "run", switch_epoch=0)
    monkeypatch.chdir(tmp_path)
    history_file = tmp_path / "joint" / "run" / "pid_history.json"
    assert report_cli.main([str(tmp_path / "pid" / "run"), str(history_file)]) == 0
    (plot,) = drawn
    assert list(plot.switch_epochs) == ["pid/run", "joint/run"]
    assert plot.path.resolve() == tmp_path / "pid_curves_overlay.png"


def test_cli_explains_a_directory_without_a_history(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main([str(tmp_path / "empty")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "holds no pid_history.json" in error and "pidsched-train" in error


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.write_text("{not json"), "cannot read the probe history"),
    ],
)
def test_cli_reports_missing_or_unreadable_histories(tmp_path, capsys, setup, message):
    path = tmp_path / "pid_history.json"
    setup(path)
    with pytest.raises(SystemExit):
        report_cli.main([str(path)])
    assert message in capsys.readouterr().err


def test_cli_draws_bands_and_names_the_uncertified_probes(tmp_path, drawn, capsys):
    _write_run(tmp_path, interval_width=0.01, uncertified_epochs={3, 5})
    assert report_cli.main([str(tmp_path)]) == 0
    (plot,) = drawn
    assert plot.get("synergy", tmp_path.name, "synergy").has_band
    out = capsys.readouterr().out
    assert "2 probe(s) not certified" in out and "epochs 3, 5" in out


def test_cli_reads_the_csv_history_when_given_or_when_it_is_all_there_is(tmp_path, drawn):
    """It read every file as JSON ("Expecting value: line 1 column 1") and refused a run
    directory holding only pid_history.csv."""
    run = _write_run(tmp_path, interval_width=0.01)
    write_history_csv(run, tmp_path / "pid_history.csv")
    (tmp_path / "pid_history.json").unlink()
    assert report_cli.main([str(tmp_path / "pid_history.csv"), "-o", str(tmp_path / "a.png")]) == 0
    assert report_cli.main([str(tmp_path), "-o", str(tmp_path / "b.png")]) == 0
    first, second = drawn
    assert (
        first.get("synergy", tmp_path.name, "synergy").values
        == second.get("synergy", tmp_path.name, "synergy").values
    )
    assert len(first.get("synergy", tmp_path.name, "synergy").values) == 12


def test_cli_reports_a_picture_it_cannot_write_without_a_traceback(tmp_path, capsys):
    _write_run(tmp_path)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main([str(tmp_path), "-o", str(tmp_path / "a_file" / "x.png")])
    assert exit_info.value.code == 2
    assert "cannot write the picture" in capsys.readouterr().err
