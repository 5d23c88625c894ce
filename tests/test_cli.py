"""The installed ``pidsched-train`` command, end to end in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from pidsched.cli.selection import JointStageCheckpoint
from pidsched.cli.train import build_encoders, format_summary
from pidsched.data import MFeatDataModule

COMMAND = shutil.which("pidsched-train") or str(Path(sys.executable).with_name("pidsched-train"))
QUIET = ["trainer.enable_progress_bar=false"]


def run_command(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_command_is_installed():
    assert Path(COMMAND).exists(), "pidsched-train is not installed: pip install -e ."


@pytest.mark.slow
def test_default_experiment_end_to_end(tmp_path):
    """The default experiment with a reduced epoch budget: both stages, selection, test."""
    run_dir = tmp_path / "run"
    result = run_command(
        [
            f"hydra.run.dir={run_dir}",
            "trainer.max_epochs=4",
            "stage1_max_epochs=2",
            "schedule.controller.min_unimodal_epochs=1",
            *QUIET,
        ],
        cwd=tmp_path,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    history = json.loads((run_dir / "pid_history.json").read_text())

    assert summary["schedule"] == "pid"
    assert summary["switch_epoch"] is not None and 1 <= summary["switch_epoch"] <= 2
    # Selected on validation among joint-stage epochs only, and that checkpoint was tested.
    assert summary["switch_epoch"] <= summary["selected_epoch"] <= 3
    assert "val/acc_fused" in summary["selection_reason"]
    assert Path(summary["checkpoint"]).name == f"best-epoch={summary['selected_epoch']:03d}.ckpt"
    assert set(summary["test_acc"]) == {"fast", "slow", "fused"}
    assert summary["final_pid"]["epoch"] == 3 and set(summary["final_pid"]["unique"]) == {
        "fast",
        "slow",
    }
    assert [r["epoch"] for r in history["records"]] == [0, 1, 2, 3]
    assert {r["stage"] for r in history["records"]} == {"unimodal", "joint"}
    for name in (
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
        "pid_history.csv",
        "pid_curves.png",
        ".hydra/config.yaml",
    ):
        assert (run_dir / name).is_file(), name
    assert "pidsched-train summary" in result.stdout and "switch epoch" in result.stdout
    metrics_header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "pid/synergy" in metrics_header and "val/acc_fused" in metrics_header


@pytest.mark.slow
def test_multirun_writes_one_directory_per_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_command(
        [
            "-m",
            "schedule=joint,fixed",
            "seed=0,1",
            f"hydra.sweep.dir={sweep_dir}",
            "trainer.max_epochs=2",
            "stage1_max_epochs=1",
            "trainer.limit_train_batches=5",
            "callbacks.report=null",
            *QUIET,
        ],
        cwd=tmp_path,
    )
    summaries = sorted(sweep_dir.glob("*/summary.json"))
    assert len(summaries) == 4
    jobs = {(s["schedule"], s["seed"]) for s in map(json.loads, map(Path.read_text, summaries))}
    assert jobs == {("joint", 0), ("joint", 1), ("fixed", 0), ("fixed", 1)}
    assert len({p.parent for p in summaries}) == 4


@pytest.mark.ddp
def test_ddp_with_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "run"
    result = run_command(
        [
            f"hydra.run.dir={run_dir}",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=3",
            "stage1_max_epochs=1",
            "schedule.controller.min_unimodal_epochs=0",
            "trainer.limit_train_batches=10",
            "trainer.log_every_n_steps=5",
            *QUIET,
        ],
        cwd=tmp_path,
        timeout=400,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["switch_epoch"] == 1
    assert summary["selected_epoch"] in (1, 2)
    assert len(json.loads((run_dir / "pid_history.json").read_text())["records"]) == 3
    assert result.stdout.count("pidsched-train summary") == 1  # rank zero only
    assert not list(tmp_path.glob("outputs"))  # no stray run directories from rank 1


def test_missing_encoder_is_named():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pidsched.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=mfeat"])
    with pytest.raises(ValueError, match=r"modality 'fou' \(kind 'vector'\)"):
        build_encoders({"audio": cfg.model.encoder.vector}, MFeatDataModule())
    GlobalHydra.instance().clear()


def test_name_entries_win_over_kind_entries():
    spec = {"_target_": "pidsched.models.encoders.MLPEncoder", "hidden_dims": [8], "output_dim": 4}
    encoders = build_encoders(
        {"vector": spec, "mor": {**spec, "output_dim": 2}}, MFeatDataModule(views=("fou", "mor"))
    )
    assert encoders["fou"].output_dim == 4 and encoders["mor"].output_dim == 2
    assert encoders["fou"].input_dim == 76 and encoders["mor"].input_dim == 6


def test_selection_ignores_stage_one_and_says_why(tmp_path):
    def save_checkpoint(path):
        Path(path).write_text("checkpoint")

    scheduler = SimpleNamespace(stage="unimodal")
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=0,
        callback_metrics={},
        state=SimpleNamespace(fn="fit"),
        save_checkpoint=save_checkpoint,
    )
    selection = JointStageCheckpoint(tmp_path, scheduler)
    for epoch, stage, acc in [
        (0, "unimodal", 0.99),
        (1, "joint", 0.6),
        (2, "joint", 0.8),
        (3, "joint", 0.7),
    ]:
        scheduler.stage, trainer.current_epoch = stage, epoch
        trainer.callback_metrics = {"val/acc_fused": torch.tensor(acc)}
        selection.on_validation_end(trainer, None)
    assert selection.best_epoch == 2 and selection.joint_epochs == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["best-epoch=002.ckpt"]
    assert "0.8000 among the 3 joint-stage epochs 1-3" in selection.reason()

    restored = JointStageCheckpoint(tmp_path, scheduler)
    restored.load_state_dict(selection.state_dict())
    assert restored.reason() == selection.reason()


def test_summary_table_reports_what_was_asked():
    table = format_summary(
        {
            "schedule": "pid_paper",
            "switch_epoch": None,
            "selected_epoch": None,
            "selection_reason": "no epoch was trained in the joint stage",
            "test_acc": {"a": 0.5, "b": 0.25, "fused": 0.75},
            "final_pid": None,
            "run_dir": "/r",
        }
    )
    assert "a 0.5000 | b 0.2500 | fused 0.7500" in table
    assert "not measured (no probe in this run)" in table and "none (stage 1 never ended)" in table
