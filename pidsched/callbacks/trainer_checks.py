"""Setup checks of Trainer features against a two-stage schedule (``PIDSchedulerCallback``).

Features that work with the schedule as they are (tested in ``tests/test_trainer_features.py``):
gradient accumulation, gradient clipping (a paused branch has no gradient, so clipping and
accumulation never touch it), mixed precision, ``ModelCheckpoint`` on any metric, several
validation dataloaders (the first one is probed; ``MultimodalClassifier`` logs it under the
plain ``val/...`` names) and resuming, at an epoch end or mid-epoch. What cannot work is refused
here, at setup, with what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import lightning
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DistributedSampler

__all__ = [
    "PYTHON_SPELLING",
    "Spelling",
    "check_probe_settings",
    "check_strategy",
    "check_trainer_features",
    "check_validation_loop",
    "padded_validation",
    "spawns_processes",
]


class Spelling:
    """How a setup error names the settings that fix it: as Python arguments, this class's
    spelling (``Trainer(check_val_every_n_epoch=2)``); ``pidsched-train`` subclasses it to name
    its command-line overrides (``trainer.check_val_every_n_epoch=2``)."""

    def trainer(self, name: str, value: Any) -> str:
        """The Trainer argument ``name`` set to ``value``."""
        return f"Trainer({name}={value!r})"

    def schedule(self, name: str, value: Any) -> str:
        """The ``PIDSchedulerCallback`` argument ``name`` set to ``value``."""
        return f"PIDSchedulerCallback({name}={value!r})"

    def stage_one_bound(self) -> str:
        """The setting that bounds stage 1 in epochs."""
        return "PIDController(max_unimodal_epochs=...)"

    def monitor(self, callback: Callback) -> str:
        """The setting of ``callback``'s monitored metric, as it is now."""
        return f"{type(callback).__name__}(monitor={callback.monitor!r})"  # type: ignore[attr-defined]


PYTHON_SPELLING = Spelling()


def check_strategy(trainer: Trainer, spelling: Spelling = PYTHON_SPELLING) -> None:
    """Refuse a strategy other than one device or DDP that allows unused parameters (a paused
    branch and the untrained fusion head have no gradient in stage 1)."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        # Lightning has no public accessor for the DDP constructor arguments.
        ddp_kwargs = lightning_internal(strategy, "_ddp_kwargs", "the DDP strategy's arguments")
        if not ddp_kwargs.get("find_unused_parameters", False):
            raise ValueError(
                "PIDSchedulerCallback pauses branches and trains no fusion head in stage 1, so "
                "DDP must allow unused parameters: use "
                f"{spelling.trainer('strategy', 'ddp_find_unused_parameters_true')}."
            )
    elif not isinstance(strategy, SingleDeviceStrategy):
        raise ValueError(
            f"PIDSchedulerCallback supports single-device and DDP training, not "
            f"{type(strategy).__name__}; use {spelling.trainer('strategy', 'auto')} on one "
            f"device or {spelling.trainer('strategy', 'ddp_find_unused_parameters_true')}."
        )


def spawns_processes(trainer: Trainer) -> bool:
    """Whether the fit runs in processes the caller spawns or forks (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``): callbacks then change only their copies in those
    processes, and the caller's objects keep their state from before the fit."""
    strategy = trainer.strategy
    if not isinstance(strategy, DDPStrategy):
        return False
    # Lightning has no public accessor for the start method ("popen": the script is re-run).
    start_method = lightning_internal(strategy, "_start_method", "how DDP starts its processes")
    return start_method != "popen"


def padded_validation(trainer: Trainer) -> tuple[int, int] | None:
    """``(repeated, dropped)`` samples of the probed (first) validation dataloader's distributed
    sampler, when it repeats or drops some to give every rank as many (``DistributedSampler``,
    as Lightning inserts it under DDP); None when the ranks see each sample exactly once."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or not isinstance(sampler.dataset, Sized):
        return None
    size = len(sampler.dataset)
    if sampler.total_size == size:
        return None
    return max(sampler.total_size - size, 0), max(size - sampler.total_size, 0)


def check_validation_loop(trainer: Trainer, pl_module: LightningModule) -> None:
    """Refuse a fit without validation data or without a ``validation_step`` (known only once
    ``fit`` has its dataloaders, so not part of :func:`check_probe_settings`)."""
    # Lightning exposes where validation data comes from only through the loop's data source.
    source = lightning_internal(
        trainer.fit_loop.epoch_loop.val_loop, "_data_source", "whether the fit has validation data"
    )
    if not source.is_defined() or not is_overridden("validation_step", pl_module):
        raise ValueError(
            "PIDSchedulerCallback measures PID on validation data, but this fit has no validation "
            "loop: give trainer.fit(..., val_dataloaders=...) or a datamodule with "
            "val_dataloader(), and a validation_step on the module (or use FixedController/"
            "JointController without measure=True, which measure nothing)."
        )


def check_probe_settings(
    trainer: Trainer, every_n: int, spelling: Spelling = PYTHON_SPELLING
) -> None:
    """Refuse validation settings under which a probe epoch (every ``every_n``) would not
    validate once, at the epoch's end, or a ``pid/`` monitor would miss its value."""
    if trainer.limit_val_batches == 0:
        raise ValueError(
            "PIDSchedulerCallback needs validation batches, but "
            f"{spelling.trainer('limit_val_batches', trainer.limit_val_batches)}; give it a "
            f"positive value, e.g. {spelling.trainer('limit_val_batches', 1.0)}."
        )
    # An int counts training batches (1: validate after every batch), however equal to 1.0.
    interval = trainer.val_check_interval
    if isinstance(interval, int) or interval != 1.0:
        raise ValueError(
            "PIDSchedulerCallback probes once per epoch, at its end: use "
            f"{spelling.trainer('val_check_interval', 1.0)} (a float: an int counts training "
            f"batches), got {interval!r}."
        )
    every_val = trainer.check_val_every_n_epoch
    if every_val is None or every_n % every_val != 0:
        raise ValueError(
            f"validation must run on every probe epoch: "
            f"{spelling.schedule('probe_every_n_epochs', every_n)} must be a multiple of "
            f"{spelling.trainer('check_val_every_n_epoch', every_val)}; e.g. "
            f"{spelling.trainer('check_val_every_n_epoch', 1)}."
        )
    _check_pid_monitors(trainer, every_n, spelling)


def _check_pid_monitors(trainer: Trainer, every_n: int, spelling: Spelling) -> None:
    """Refuse a checkpoint or early-stopping callback that monitors a ``pid/`` value when some
    validation epochs do not probe: Lightning fails on the first of them ("monitored key not
    found"), because ``pid/`` values are logged only on probe epochs."""
    every_val = trainer.check_val_every_n_epoch
    if every_n == every_val:
        return
    for callback in trainer.callbacks:
        if not isinstance(callback, (EarlyStopping, ModelCheckpoint)):
            continue
        monitor = callback.monitor
        if monitor is None or not monitor.startswith("pid/"):
            continue
        if isinstance(callback, EarlyStopping) and not callback.strict:
            continue  # a lenient EarlyStopping skips the epochs that lack its value
        raise ValueError(
            f"{spelling.monitor(callback)} monitors a value logged only on probe epochs (every "
            f"{every_n}), but validation runs every {every_val}: Lightning would stop at the "
            "first validation without a probe. Use "
            f"{spelling.trainer('check_val_every_n_epoch', every_n)} or "
            f"{spelling.schedule('probe_every_n_epochs', every_val)}."
        )


def lightning_internal(owner: Any, name: str, purpose: str) -> Any:
    """``owner.<name>``, a private Lightning attribute read for ``purpose``, or a clear error."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise RuntimeError(
            f"PIDSchedulerCallback reads Lightning's private `{type(owner).__name__}.{name}` to "
            f"check {purpose}, and Lightning {lightning.__version__} has no such attribute; "
            "install a Lightning version in the range pidsched supports (see its pyproject.toml)."
        ) from None


def check_trainer_features(
    trainer: Trainer,
    modality_names: Sequence[str],
    has_unimodal_stage: bool,
    spelling: Spelling = PYTHON_SPELLING,
) -> None:
    """Refuse Trainer features that defeat a schedule with a unimodal stage.

    ``EarlyStopping`` on a per-modality metric (``val/acc_<m>``, ``val/loss_<m>``, ...) would
    stop the fit while modality m is paused: a paused branch is frozen, so its validation
    metrics stay flat by design and the patience runs out in stage 1.

    Args:
        trainer: the trainer being set up.
        modality_names: the module's modality names.
        has_unimodal_stage: whether the schedule starts in the unimodal stage (pauses happen).
        spelling: how the message names the settings that fix it.

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
                f"{spelling.monitor(callback)} monitors a metric of modality "
                f"{monitored!r}, and while the schedule pauses {monitored!r} it stays flat "
                "by design, so early stopping would end the fit in stage 1. Bound stage 1 with "
                f"{spelling.stage_one_bound()} instead and early-stop, if at all, with a "
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
