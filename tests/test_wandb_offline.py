"""U/R/S in experiment loggers: an offline W&B run (files on disk, never the network), the
choice of W&B mode, and the per-probe scalars in Lightning's CSV and TensorBoard loggers."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
import wandb
from _viz_helpers import fabricated_history, fit_tiny_pid_run
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import pidsched.viz.wandb_logging as wandb_logging
from pidsched.viz import PIDReportCallback, RunHistory, create_wandb_logger, resolve_wandb_mode
from pidsched.viz.history import history_columns
from pidsched.viz.wandb_logging import history_table, information_chart, print_sync_hint

MODALITIES = ("audio", "video")
PID_SCALARS = {
    *(f"pid/unique_{name}" for name in MODALITIES),
    *(f"pid/paused_{name}" for name in MODALITIES),
    "pid/redundancy",
    "pid/synergy",
    "pid/mutual_information",
    "pid/stage",
}


@pytest.fixture
def wandb_sandbox(tmp_path, monkeypatch):
    """Keeps W&B's files in tmp_path, and afterwards stops its service process and restores
    every environment variable (wandb.init itself sets WANDB_SERVICE)."""
    saved_environment = dict(os.environ)
    for variable, folder in [
        ("WANDB_DIR", "wandb_dir"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_DATA_DIR", "wandb_data"),
    ]:
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / folder))
    yield tmp_path
    wandb.finish()
    wandb.teardown()
    os.environ.clear()
    os.environ.update(saved_environment)


@pytest.fixture
def no_wandb_credentials(tmp_path, monkeypatch):
    """No WANDB_MODE, no API key, an empty netrc: as on a fresh machine."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no.netrc"))


def _forbid_network(*args, **kwargs):
    raise AssertionError("the W&B server must not be contacted without an API key")


# --- choosing the mode ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["disabled", "offline", "online"])
def test_wandb_mode_set_by_the_user_wins(monkeypatch, mode):
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setattr(wandb_logging, "wandb_server_reachable", _forbid_network)
    assert resolve_wandb_mode() == mode


def test_without_an_api_key_runs_are_offline_and_the_network_is_not_tried(
    no_wandb_credentials, monkeypatch
):
    monkeypatch.setattr(wandb_logging, "wandb_server_reachable", _forbid_network)
    assert resolve_wandb_mode() == "offline"


@pytest.mark.parametrize(("reachable", "mode"), [(False, "offline"), (True, "online")])
def test_with_an_api_key_the_mode_follows_the_connection(
    no_wandb_credentials, monkeypatch, reachable, mode
):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(wandb_logging, "wandb_server_reachable", lambda: reachable)
    assert resolve_wandb_mode() == mode


def test_an_api_key_in_netrc_counts_as_configured(no_wandb_credentials, tmp_path, monkeypatch):
    assert not wandb_logging.wandb_api_key_configured()
    netrc_file = tmp_path / "no.netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {'1' * 40}\n")
    netrc_file.chmod(0o600)
    assert wandb_logging.wandb_api_key_configured()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not wandb_logging.wandb_api_key_configured()


def test_server_reachability_is_a_plain_tcp_connect(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert wandb_logging.wandb_server_reachable(timeout_s=1.0)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")  # now closed
    assert not wandb_logging.wandb_server_reachable(timeout_s=1.0)


def test_create_wandb_logger_goes_offline_and_says_so(no_wandb_credentials, capsys):
    logger = create_wandb_logger(project="pidsched-test")
    assert logger._wandb_init["mode"] == "offline"
    assert "wandb sync" in capsys.readouterr().out
    explicit = create_wandb_logger(project="pidsched-test", mode="disabled")
    assert explicit._wandb_init["mode"] == "disabled"


def test_create_wandb_logger_leaves_a_set_wandb_mode_to_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert "mode" not in create_wandb_logger(project="pidsched-test")._wandb_init


def test_disabled_runs_print_no_sync_hint(wandb_sandbox, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    print_sync_hint(create_wandb_logger(project="pidsched-test"))
    assert "wandb sync" not in capsys.readouterr().out


# --- what goes into W&B --------------------------------------------------------------------


def test_information_chart_marks_the_stage_switch_between_the_probes():
    run = RunHistory.from_records(fabricated_history(num_probes=5, switch_epoch=3))
    table = information_chart(run).table
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.data]
    switch = [row for row in rows if row["lineKey"].startswith("stage switch")]
    assert [row["step"] for row in switch] == [2.5, 2.5]
    assert switch[0]["lineVal"] == 0.0 and switch[1]["lineVal"] > 0
    synergy = [row["lineVal"] for row in rows if row["lineKey"] == "synergy (bits)"]
    assert synergy == [record["synergy"] for record in run.records]
    keys = {row["lineKey"] for row in rows}
    assert {"unique information of audio (bits)", "redundancy (bits)"} <= keys
    assert not any("interval" in key for key in keys)


def test_information_chart_and_table_carry_the_interval_ends_and_certified():
    records = fabricated_history(num_probes=4, interval_width=0.01, uncertified_epochs={2})
    run = RunHistory.from_records(records)
    table = information_chart(run).table
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.data]
    low = [row["lineVal"] for row in rows if row["lineKey"] == "synergy: 90% interval low (bits)"]
    high = [r["lineVal"] for r in rows if r["lineKey"] == "synergy: 90% interval high (bits)"]
    assert low == [round(r["synergy"] - 0.01, 6) for r in records]
    assert high == [round(r["synergy"] + 0.02, 6) for r in records]
    history = history_table(run)
    assert {"certified", "unique_low/audio", "unique_high/video"} <= set(history.columns)
    certified = history.columns.index("certified")
    assert [row[certified] for row in history.data] == [True, True, False, True]


@pytest.mark.slow
def test_offline_run_holds_chart_history_table_picture_and_config(
    wandb_sandbox, monkeypatch, capsys
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = create_wandb_logger(save_dir=wandb_sandbox, project="pidsched-test")
    config = {"seed": 7, "schedule": {"name": "pid", "uniqueness_ratio": 3.0}}
    report = PIDReportCallback(config=config)
    scheduler = fit_tiny_pid_run(wandb_sandbox / "run", loggers=logger, callbacks=(report,))
    history = RunHistory.from_callback(scheduler)

    run = logger.experiment
    sync_dir = Path(run.sync_dir)
    assert run.offline
    assert run.config["seed"] == 7 and run.config["schedule"]["uniqueness_ratio"] == 3.0
    # The per-probe scalars reached W&B through pl_module.log: the last probe is the summary.
    assert run.summary["pid/synergy"] == pytest.approx(history.records[-1]["synergy"])
    assert run.summary["pid/stage"] == 2.0
    wandb.finish()

    assert sync_dir.is_relative_to(wandb_sandbox)
    assert len(list(sync_dir.glob("run-*.wandb"))) == 1
    tables = sync_dir / "files" / "media" / "table" / "pid"
    (history_file,) = tables.glob("history_table_*.table.json")
    table = json.loads(history_file.read_text())
    columns, rows = history_columns(history)
    assert table["columns"] == columns
    assert table["data"] == [[row.get(column) for column in columns] for row in rows]
    assert "unique/audio" in columns and "paused/video" in columns

    (chart_file,) = tables.glob("information_chart_table_*.table.json")
    chart = json.loads(chart_file.read_text())
    switch_steps = [step for step, key, _ in chart["data"] if key.startswith("stage switch")]
    assert switch_steps == [scheduler.switch_epoch - 0.5] * 2
    assert len(list((sync_dir / "files" / "media" / "images" / "pid").glob("curves_*.png"))) == 1
    assert (wandb_sandbox / "run" / "pid_curves.png").is_file()
    assert f"wandb sync {sync_dir}" in capsys.readouterr().out


# --- any Lightning logger ------------------------------------------------------------------


def test_csv_and_tensorboard_loggers_receive_every_pid_scalar(tmp_path):
    csv_logger = CSVLogger(tmp_path, name="csv")
    tensorboard_logger = TensorBoardLogger(tmp_path, name="tensorboard")
    scheduler = fit_tiny_pid_run(tmp_path, loggers=[csv_logger, tensorboard_logger])
    history = scheduler.history
    assert {record["stage"] for record in history} == {"unimodal", "joint"}

    with (Path(csv_logger.log_dir) / "metrics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert set(rows[0]) >= PID_SCALARS
    probes = [row for row in rows if row["pid/synergy"]]
    assert [int(row["epoch"]) for row in probes] == [record["epoch"] for record in history]
    for name in MODALITIES:
        logged = [float(row[f"pid/unique_{name}"]) for row in probes]
        assert logged == pytest.approx([record["unique"][name] for record in history], abs=1e-6)
        paused = [float(row[f"pid/paused_{name}"]) for row in probes]
        assert paused == [float(name in record["paused"]) for record in history]
    stages = [float(row["pid/stage"]) for row in probes]
    assert stages == [1.0 if record["stage"] == "unimodal" else 2.0 for record in history]

    events = EventAccumulator(tensorboard_logger.log_dir)
    events.Reload()
    assert set(events.Tags()["scalars"]) >= PID_SCALARS
    synergy = [event.value for event in events.Scalars("pid/synergy")]
    assert synergy == pytest.approx([record["synergy"] for record in history], abs=1e-6)
