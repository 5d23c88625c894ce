"""Model selection on validation, restricted to epochs trained in the joint stage.

The fusion head is untrained during stage 1, so a fused-accuracy "best" from stage 1 would be
meaningless (and ``PIDSchedulerCallback`` warns about a ``ModelCheckpoint`` monitoring such a
quantity). :class:`JointStageCheckpoint` keeps one checkpoint: the joint-stage epoch with the
best validation value of ``monitor``. The test split is never looked at.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from pidsched.cli.checks import ConfigError

JOINT_STAGE = "joint"


class JointStageCheckpoint(Callback):
    """Saves the checkpoint of the best joint-stage epoch by a validation metric.

    Args:
        dirpath: directory of the checkpoint file ``best-epoch=<E>.ckpt``.
        scheduler: the run's ``PIDSchedulerCallback`` (anything with a ``stage`` attribute):
            its stage during an epoch's validation is the stage that epoch trained in.
        monitor: a validation metric logged by the module, e.g. ``"val/acc_fused"``.
        mode: ``"max"`` or ``"min"``.

    Attributes:
        best_epoch: the selected epoch, or None before any joint-stage validation.
        best_score: its ``monitor`` value.
        best_path: its checkpoint file.
        joint_epochs: the joint-stage epochs that were validated, in order.

    Raises:
        ValueError: ``mode`` is neither ``"max"`` nor ``"min"``.
        ConfigError: (a ``ValueError``, during fit) ``monitor`` was not logged in the first
            validation of the fit.

    Example::

        scheduler = PIDSchedulerCallback(num_classes=8)
        selection = JointStageCheckpoint("checkpoints", scheduler)
        Trainer(callbacks=[scheduler, selection]).fit(model, datamodule)
        trainer.test(model, datamodule, ckpt_path=selection.best_path)
    """

    STATE_VERSION = 1

    def __init__(
        self,
        dirpath: str | Path,
        scheduler: Any,
        monitor: str = "val/acc_fused",
        mode: str = "max",
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r} must be 'max' or 'min'.")
        self.dirpath = Path(dirpath)
        self.scheduler = scheduler
        self.monitor = monitor
        self.mode = mode
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.best_path: str | None = None
        self.joint_epochs: list[int] = []

    @property
    @override
    def state_key(self) -> str:
        return type(self).__name__

    def _improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # Checked from the first validation on, stage 1 included: a misspelt monitor fails after
        # one epoch, not after the whole of stage 1.
        if self.monitor not in trainer.callback_metrics:
            raise ConfigError(
                f"selection.monitor={self.monitor} is not a metric validation logs; logged: "
                f"{', '.join(sorted(trainer.callback_metrics))}. Set selection.monitor to one of "
                "them, e.g. selection.monitor=val/acc_fused."
            )
        if self.scheduler.stage != JOINT_STAGE:
            return
        epoch = trainer.current_epoch
        self.joint_epochs.append(epoch)
        score = float(trainer.callback_metrics[self.monitor])
        if not self._improves(score):
            return
        previous = self.best_path
        self.best_epoch, self.best_score = epoch, score
        self.best_path = str(self.dirpath / f"best-epoch={epoch:03d}.ckpt")
        # Every rank calls save_checkpoint (it synchronises); only rank zero writes files. A full
        # checkpoint (callbacks and optimisers too), said explicitly: Lightning 2.6 logs a line
        # at every save that leaves weights_only unset.
        trainer.save_checkpoint(self.best_path, weights_only=False)
        if previous and previous != self.best_path and trainer.is_global_zero:
            Path(previous).unlink(missing_ok=True)

    def reason(self) -> str:
        """One sentence saying which epoch was selected and why."""
        if self.best_epoch is None:
            return (
                "no epoch was trained in the joint stage, so no checkpoint was selected; the "
                "final weights were tested"
            )
        first, last = self.joint_epochs[0], self.joint_epochs[-1]
        best = "highest" if self.mode == "max" else "lowest"
        return (
            f"{best} {self.monitor} = {self.best_score:.4f} among the "
            f"{len(self.joint_epochs)} joint-stage epochs {first}-{last} (validation split)"
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "best_path": self.best_path,
            "joint_epochs": list(self.joint_epochs),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_epoch = state_dict.get("best_epoch")
        self.best_score = state_dict.get("best_score")
        # The file's name, in this run's checkpoint directory: a run directory copied or moved
        # since must neither read nor delete the original's checkpoint.
        best_path = state_dict.get("best_path")
        self.best_path = None if best_path is None else str(self.dirpath / Path(best_path).name)
        self.joint_epochs = list(state_dict.get("joint_epochs", []))
