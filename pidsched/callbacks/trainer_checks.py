"""Setup checks of Trainer features against a two-stage schedule (``PIDSchedulerCallback``).

Features that work with the schedule as they are (tested in ``tests/test_trainer_features.py``):
gradient accumulation, gradient clipping (a paused branch has no gradient, so clipping and
accumulation never touch it), mixed precision, ``ModelCheckpoint`` on any metric, several
validation dataloaders (the first one is probed; ``MultimodalClassifier`` logs it under the
plain ``val/...`` names) and resuming, at an epoch end or mid-epoch. What cannot work is refused
here, at setup, with what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping

__all__ = ["check_trainer_features"]


def check_trainer_features(
    trainer: Trainer, modality_names: Sequence[str], has_unimodal_stage: bool
) -> None:
    """Refuse Trainer features that defeat a schedule with a unimodal stage.

    ``EarlyStopping`` on a per-modality metric (``val/acc_<m>``, ``val/loss_<m>``, ...) would
    stop the fit while modality m is paused: a paused branch is frozen, so its validation
    metrics stay flat by design and the patience runs out in stage 1.

    Args:
        trainer: the trainer being set up.
        modality_names: the module's modality names.
        has_unimodal_stage: whether the schedule starts in the unimodal stage (pauses happen).

    Raises:
        ValueError: an ``EarlyStopping`` monitors a per-modality metric in a schedule that
            pauses branches.
    """
    if not has_unimodal_stage:
        return
    for callback in trainer.callbacks:
        if not isinstance(callback, EarlyStopping):
            continue
        monitored = _monitored_modality(callback.monitor, modality_names)
        if monitored is not None:
            raise ValueError(
                f"EarlyStopping monitors {callback.monitor!r}, a metric of modality "
                f"{monitored!r}: while the schedule pauses {monitored!r} that metric stays flat "
                "by design, so early stopping would end the fit in stage 1. Bound stage 1 with "
                "the controller instead (PIDController(max_unimodal_epochs=...), "
                "stage1_max_epochs in pidsched-train) and early-stop, if at all, with a "
                "JointController schedule or on a metric of every branch."
            )


def _monitored_modality(monitor: str | None, modality_names: Sequence[str]) -> str | None:
    """The modality whose metric ``monitor`` is (``.../<quantity>_<m>``), else None."""
    if not monitor:
        return None
    last = monitor.split("/dataloader_idx_")[0].rsplit("/", 1)[-1]
    for name in modality_names:
        if last.endswith(f"_{name}"):
            return name
    return None
