"""``KeepCSVHistory``: a fit resumed into the same CSV log directory keeps the rows logged before
its checkpoint (Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it starts), logs the rest
once, and says so where a checkpoint does not record where it stood."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from pidsched.cli.csv_history import KeepCSVHistory, read_metric_rows

STEPS_PER_EPOCH = 8


class LoggingModel(BoringModel):
    """Logs its loss every step and, per epoch, a validation value."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/loss", out["loss"])
        return out

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("val/x", out["x"])
        return out

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        data = torch.randn(STEPS_PER_EPOCH, 32, generator=generator)
        return torch.utils.data.DataLoader(data, batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(2, 32), batch_size=1)


def _fit(log_dir, max_epochs, callbacks=(), ckpt_path=None, with_history=True):
    seed_everything(0)
    logger = CSVLogger(log_dir, name="csv", version="")
    keep = [KeepCSVHistory(logger)] if with_history else []
    trainer = Trainer(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=[*callbacks, *keep],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.logger.log_hyperparams({"lr": 0.1})  # the logger's first write deletes metrics.csv
    trainer.fit(LoggingModel(), ckpt_path=ckpt_path)
    return read_metric_rows(tmp_csv(log_dir))


def tmp_csv(log_dir):
    return log_dir / "csv" / "metrics.csv"


def _steps(rows):
    return [(row.get("epoch"), row["step"], tuple(sorted(row))) for row in rows]


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch")
@pytest.mark.filterwarnings("ignore:Experiment logs directory")
def test_a_fit_resumed_mid_epoch_keeps_the_rows_before_its_checkpoint(tmp_path):
    first, uninterrupted = tmp_path / "first", tmp_path / "uninterrupted"
    saved_at = STEPS_PER_EPOCH + 3  # in the second epoch
    checkpoint = ModelCheckpoint(
        dirpath=first / "ckpt", every_n_train_steps=saved_at, save_top_k=-1, filename="mid"
    )
    interrupted_rows = _fit(first, 2, [checkpoint])
    resumed = _fit(first, 2, ckpt_path=first / "ckpt" / "mid.ckpt")

    expected = _fit(uninterrupted, 2)
    # Every row once, in order: none lost, none logged twice.
    assert _steps(resumed) == _steps(expected) == _steps(interrupted_rows)
    before = [row for row in interrupted_rows if row["step"] < saved_at]
    assert len(before) > STEPS_PER_EPOCH  # the first epoch and part of the second
    # Those rows are the first run's, value for value (the resumed epoch restarts its data).
    assert resumed[: len(before)] == before


@pytest.mark.filterwarnings("ignore:Experiment logs directory")
def test_rows_from_the_checkpoints_step_on_are_dropped_and_the_rest_kept_exactly(tmp_path):
    rows = [
        {"epoch": 0, "step": 3, "val/x": 0.1},  # floats written by str() read back exactly
        {"epoch": 1, "step": 7, "val/x": 0.25, "train/loss": 1 / 3},
        {"epoch": 2, "step": 8, "test/acc": 0.5},  # the interrupted run's test, at the last step
        {"epoch": 2, "step": 9, "train/loss": 0.125},  # an epoch interrupted: logged again
    ]
    writer = CSVLogger(tmp_path, name="csv", version="")
    for row in rows:
        metrics = dict(row)
        writer.log_metrics(metrics, step=metrics.pop("step"))
    writer.save()
    assert read_metric_rows(tmp_csv(tmp_path)) == rows

    logger = CSVLogger(tmp_path, name="csv", version="")
    keep = KeepCSVHistory(logger)
    logger.log_hyperparams({"lr": 0.1})
    assert not tmp_csv(tmp_path).exists()  # what Lightning does; the callback holds the rows
    keep.on_load_checkpoint(None, None, {"epoch": 2, "global_step": 8})
    assert read_metric_rows(tmp_csv(tmp_path)) == rows[:2]
