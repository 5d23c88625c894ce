"""PIDReportCallback: at the end of fit, write a run's probe history and its picture.

Add it next to `PIDSchedulerCallback`. When fit ends it takes the scheduler's probe history
and writes, into ``output_dir`` (default ``trainer.default_root_dir``, the run directory):

- ``pid_history.json`` and ``pid_history.csv`` (see `pidsched.viz.history`);
- ``pid_curves.png`` (see `pidsched.viz.curves.plot_pid_curves`);

and, for each `WandbLogger` among ``trainer.loggers``, logs the information chart, the history
table and the picture, and prints how to ``wandb sync`` an offline run. Given the resolved
config, it also stores it in the W&B run config when fit starts. Only global rank zero writes
or logs anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from pidsched.viz.curves import CURVES_PNG_NAME, plot_pid_curves
from pidsched.viz.history import (
    HISTORY_CSV_NAME,
    HISTORY_JSON_NAME,
    RunHistory,
    write_history_csv,
    write_history_json,
)
from pidsched.viz.wandb_logging import log_pid_report, log_resolved_config, print_sync_hint


class PIDReportCallback(Callback):
    """Writes ``pid_history.json``, ``pid_history.csv`` and ``pid_curves.png`` when fit ends.

    Args:
        output_dir: directory for the three files; None uses ``trainer.default_root_dir``.
        config: the run's resolved configuration as plain containers (e.g.
            ``OmegaConf.to_container(cfg, resolve=True)``), stored in every W&B run's config
            at fit start; None stores nothing.
        run_label: name of the run in the picture's title; None uses the output directory's
            name.

    Attributes:
        report_paths: file kind (``"json"``, ``"csv"``, ``"png"``) -> path written by the last
            fit (empty before; no ``"png"`` when no probe was recorded).

    Raises:
        TypeError: if ``output_dir`` is not a path or ``config`` not a mapping.
        ValueError: at setup, if ``trainer.callbacks`` holds no `PIDSchedulerCallback`.

    Example::

        trainer = Trainer(callbacks=[PIDSchedulerCallback(num_classes=10), PIDReportCallback()])
        trainer.fit(model, datamodule)
        # -> <default_root_dir>/pid_history.json, pid_history.csv, pid_curves.png
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        config: Mapping[str, Any] | None = None,
        run_label: str | None = None,
    ) -> None:
        if output_dir is not None and not isinstance(output_dir, (str, Path)):
            raise TypeError(
                f"`output_dir` must be a path or None (the trainer's default_root_dir), got "
                f"{type(output_dir).__name__}."
            )
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(
                "`config` must be a mapping such as OmegaConf.to_container(cfg, resolve=True), "
                f"got {type(config).__name__}."
            )
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.config = dict(config) if config is not None else None
        self.run_label = run_label
        self.report_paths: dict[str, Path] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            find_scheduler_callback(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.config is None or not trainer.is_global_zero:
            return
        for logger in _wandb_loggers(trainer):
            log_resolved_config(logger, self.config)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        scheduler = find_scheduler_callback(trainer)
        # current_epoch has already moved past the last epoch trained when fit ends.
        history = RunHistory.from_callback(scheduler, final_epoch=max(trainer.current_epoch - 1, 0))
        output_dir = self.output_dir or Path(trainer.default_root_dir)
        # Baselines with measure=False probe nothing: an empty history is what they write.
        measured = getattr(scheduler.controller, "needs_measurements", True)
        self.report_paths = write_run_report(
            history,
            output_dir,
            run_label=self.run_label or output_dir.resolve().name,
            warn_if_empty=measured,
        )
        for logger in _wandb_loggers(trainer):
            log_pid_report(logger, history, self.report_paths.get("png"))
            print_sync_hint(logger)


def write_run_report(
    history: RunHistory, output_dir: str | Path, run_label: str = "run", warn_if_empty: bool = True
) -> dict[str, Path]:
    """Writes the history files and, when there is a probe, the picture into ``output_dir``.

    ``warn_if_empty`` warns when the history holds no probe (off for schedules that never probe).

    Returns:
        ``{"json": path, "csv": path, "png": path}`` (no ``"png"`` for an empty history).
    """
    output_dir = Path(output_dir)
    paths = {
        "json": write_history_json(history, output_dir / HISTORY_JSON_NAME),
        "csv": write_history_csv(history, output_dir / HISTORY_CSV_NAME),
    }
    if history.records:
        paths["png"] = plot_pid_curves({run_label: history}, output_dir / CURVES_PNG_NAME).path
    elif warn_if_empty:
        rank_zero_warn(
            f"No PID probe was recorded, so {CURVES_PNG_NAME} was not drawn; probes happen at "
            "the end of validation epochs (check limit_val_batches and probe_every_n_epochs)."
        )
    return paths


def find_scheduler_callback(trainer: pl.Trainer) -> Any:
    """The `PIDSchedulerCallback` among ``trainer.callbacks``.

    Recognised by what this module reads from it, its ``history`` and ``switch_epoch``
    attributes, so that `pidsched.viz` does not depend on the callbacks layer.

    Raises:
        ValueError: if there is none.
    """
    for callback in trainer.callbacks:
        if hasattr(callback, "history") and hasattr(callback, "switch_epoch"):
            return callback
    raise ValueError(
        "PIDReportCallback draws the probe history of a PIDSchedulerCallback, but "
        "trainer.callbacks has none. Add one: "
        "Trainer(callbacks=[PIDSchedulerCallback(...), PIDReportCallback()])."
    )


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
