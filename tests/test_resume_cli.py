"""``pidsched-train resume=<run dir>`` / ``ckpt_path=...``: an interrupted run, continued through
the installed command, writes what the uninterrupted run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _lightning_helpers import loaders, make_model, make_trainer
from lightning.pytorch import Callback
from omegaconf import OmegaConf
from test_cli import QUIET, run_command

from pidsched.cli.csv_history import read_metric_rows
from pidsched.cli.train import (
    compile_arguments,
    last_checkpoint,
    resume_checkpoint,
    resumed_run_dir,
)

MAX_EPOCHS = 6
# The default experiment, small: stage 1 ends at epoch 3 at the latest (its budget).
SMALL = [
    "stage1_max_epochs=3",
    "schedule.controller.min_unimodal_epochs=1",
    "data.num_samples=1500",
    "callbacks.report=null",
    *QUIET,
]


def _outputs(run_dir: Path) -> tuple[dict, dict]:
    """pid_history.json and summary.json, with the run directory's path taken out."""
    history = json.loads((run_dir / "pid_history.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text().replace(str(run_dir), "RUN"))
    return history, summary


def _metrics_csv(run_dir: Path) -> list[dict]:
    return read_metric_rows(run_dir / "csv" / "metrics.csv")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_command(
        [f"hydra.run.dir={run_dir}", f"trainer.max_epochs={MAX_EPOCHS}", *SMALL], run_dir.parent
    )
    history, summary = _outputs(run_dir)
    metrics = _metrics_csv(run_dir)
    # The interruption points below fall where the test means them to.
    assert summary["switch_epoch"] == 3
    assert [r["stage"] for r in history["records"]] == ["unimodal"] * 3 + ["joint"] * 3
    return history, summary, metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first_epochs", "how"),
    [(2, "resume"), (5, "ckpt_path")],
    ids=["interrupted-in-stage-1", "interrupted-in-stage-2"],
)
def test_a_resumed_run_writes_what_the_uninterrupted_run_writes(
    uninterrupted, tmp_path, first_epochs, how
):
    run_dir = tmp_path / "run"
    run_command(
        [f"hydra.run.dir={run_dir}", f"trainer.max_epochs={first_epochs}", *SMALL], tmp_path
    )
    first_history, _ = _outputs(run_dir)
    assert len(first_history["records"]) == first_epochs  # really stopped early

    target = (
        f"resume={run_dir}" if how == "resume" else f"ckpt_path={run_dir}/checkpoints/last.ckpt"
    )
    # No hydra.run.dir: the resumed run finds its directory from resume/ckpt_path alone.
    run_command([target, f"trainer.max_epochs={MAX_EPOCHS}", *SMALL], tmp_path)
    history, summary = _outputs(run_dir)
    expected_history, expected_summary, expected_metrics = uninterrupted
    assert history == expected_history
    assert summary == expected_summary
    # metrics.csv too: the first run's epochs are kept (Lightning's CSVLogger deletes the file
    # when it starts), its test rows are not, and every value is the one logged.
    metrics = _metrics_csv(run_dir)
    assert {row["epoch"] for row in metrics} == set(range(MAX_EPOCHS + 1))  # + the test's
    assert metrics == expected_metrics
    assert Path(summary["checkpoint"].replace("RUN", str(run_dir))).is_file()
    assert not (tmp_path / "outputs").exists()  # nothing written elsewhere
    assert "resume=" in (run_dir / ".hydra" / "overrides.yaml").read_text() or how == "ckpt_path"


def test_the_run_directory_comes_from_resume_or_the_checkpoint(tmp_path):
    assert resumed_run_dir("/runs/a", None, "fresh") == "/runs/a"
    assert resumed_run_dir(None, "/runs/b/checkpoints/last.ckpt", "fresh") == "/runs/b"
    assert resumed_run_dir(None, "/elsewhere/my.ckpt", "fresh") == "fresh"
    assert resumed_run_dir(None, None, "fresh") == "fresh"


def test_resume_errors_say_what_to_do(tmp_path):
    cfg = OmegaConf.create({"resume": str(tmp_path), "ckpt_path": None})
    with pytest.raises(FileNotFoundError, match=r"checkpoints/last\.ckpt"):
        resume_checkpoint(cfg, tmp_path)
    both = OmegaConf.create({"resume": str(tmp_path), "ckpt_path": "x.ckpt"})
    with pytest.raises(ValueError, match="not both"):
        resume_checkpoint(both, tmp_path)
    assert (
        resume_checkpoint(OmegaConf.create({"resume": None, "ckpt_path": None}), tmp_path) is None
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    assert resume_checkpoint(cfg, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")


def test_a_rejected_resume_keeps_the_runs_saved_config(tmp_path):
    """Hydra writes the command's config into the run's .hydra/ before the command is checked;
    a rejected resume used to leave its own there, which load_run then rebuilt the run from."""
    run_dir = tmp_path / "run"
    saved = run_dir / ".hydra"
    saved.mkdir(parents=True)
    originals = {name: f"# the run's {name}\n" for name in ("config", "hydra", "overrides")}
    for name, text in originals.items():
        (saved / f"{name}.yaml").write_text(text)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_text("x")
    both = [f"resume={run_dir}", f"ckpt_path={run_dir}/checkpoints/last.ckpt", "seed=7"]
    rejected = run_command(both, tmp_path, returncode=2)
    assert "not both" in rejected.stderr
    assert {name: (saved / f"{name}.yaml").read_text() for name in originals} == originals


def test_a_resume_that_changes_what_is_trained_is_refused(tmp_path):
    """resume=<run dir> with other data or schedule overrides continued the run on them, and
    rewrote its .hydra/config.yaml as if the whole run had been trained so."""
    run_dir = tmp_path / "run"
    first = ["data.num_samples=300", "trainer.limit_train_batches=2", "callbacks.report=null"]
    run_command([f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", *first, *QUIET], tmp_path)
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    changed = ["data.num_samples=400", "schedule=joint", "trainer.limit_train_batches=2"]
    rejected = run_command(
        [f"resume={run_dir}", "trainer.max_epochs=2", *changed, *QUIET], tmp_path, returncode=2
    )
    message = rejected.stderr.strip().splitlines()[-1]
    assert "data.num_samples (300 -> 400)" in message
    assert "schedule.controller._target_ (pidsched.PIDController -> pidsched.JointController)" in (
        message
    )
    assert "data.num_samples=300" in message and "change only trainer.max_epochs" in message
    assert (run_dir / ".hydra" / "config.yaml").read_text() == saved
    # The same overrides with more epochs resume: test_a_resumed_run_writes_what_the_...


def test_compile_key():
    assert compile_arguments(False) is None and compile_arguments(None) is None
    assert compile_arguments(True) == {}
    assert compile_arguments(OmegaConf.create({"backend": "eager"})) == {"backend": "eager"}
    with pytest.raises(TypeError, match="compile"):
        compile_arguments("yes")


def test_last_ckpt_is_written_at_the_end_of_every_epoch(tmp_path):
    """A fit that dies in its third epoch leaves the second's last.ckpt to resume from (with
    Lightning 2.6's save_last=True and save_top_k=0 it appeared only when the fit ended)."""

    class Crash(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("interrupted")

    checkpoints = tmp_path / "checkpoints"
    trainer = make_trainer(5, [last_checkpoint(checkpoints), Crash()], enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(make_model(), *loaders())
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 1
