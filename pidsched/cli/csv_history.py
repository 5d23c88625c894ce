"""Keep a resumed run's ``metrics.csv``: the rows logged before its checkpoint are logged again.

Lightning's ``CSVLogger`` deletes ``<log dir>/metrics.csv`` when it starts writing, so a run
resumed into the same directory (``pidsched-train resume=<run dir>``) would keep only the epochs
after the interruption. :class:`KeepCSVHistory` reads the file before the logger starts and,
when the fit resumes, hands back to the logger the rows logged before the checkpoint. Later rows
(an epoch interrupted after the checkpoint, the interrupted run's test) are dropped: the resumed
fit logs them again.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

METRICS_FILE = "metrics.csv"


def read_metric_rows(path: Path) -> list[dict[str, int | float]]:
    """The rows of a ``metrics.csv`` in logging order, each with its non-empty columns parsed as
    numbers (``int`` where the text is an integer, as Lightning writes ``epoch`` and ``step``)."""
    with path.open(newline="") as file:
        return [
            {key: _number(text) for key, text in row.items() if text != ""}
            for row in csv.DictReader(file)
        ]


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)  # str(float) round-trips: the value is the one logged


class KeepCSVHistory(Callback):
    """Re-log, on a resumed fit, the ``metrics.csv`` rows the ``logger`` deletes when it starts.

    Construct it before anything is logged (the logger deletes the file at its first write, such
    as its hyperparameters) and give it to the ``Trainer``. The rows kept are those logged at a
    step below the checkpoint's ``global_step``: everything the fit logged up to the checkpoint,
    including what it logged after saving it for the same batch or epoch end (Lightning logs a
    batch's values after ``on_train_batch_end`` and an epoch's after ``on_train_epoch_end``, where
    checkpoints are saved), which the resumed fit does not log again. The ``step`` column counts
    the batches that stepped the optimiser: this holds for a module with one optimiser, as
    :class:`pidsched.MultimodalClassifier` has. Only global rank 0 writes, as the logger does.
    """

    def __init__(self, logger: CSVLogger) -> None:
        self._logger = logger
        path = Path(logger.log_dir) / METRICS_FILE
        self._rows = read_metric_rows(path) if path.is_file() else []

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        rows, self._rows = self._rows, []
        for row in rows:
            metrics = dict(row)
            step = metrics.pop("step", 0)
            if step < checkpoint["global_step"]:
                # The writer's own method: the logger's would prefix the names a second time.
                self._logger.experiment.log_metrics(metrics, step)
        self._logger.save()
