r"""``PIDSchedulerCallback``: information-guided two-stage (unimodal -> joint) multimodal training.

Stage 1 ("unimodal") trains each modality branch as a unimodal classifier. After every
``probe_every_n_epochs`` training epochs the callback measures the partial information
decomposition (PID) of the branches' predictions about the label on the *validation* data and asks
a controller (:mod:`pidsched.controllers`) what to do: pause a branch that runs ahead, or end
stage 1. At the switch it restores the branch weights of the peak-synergy probe and the module
starts stage 2 ("joint"): fused training with its own optimiser and scheduler.

The callback decides and applies; it does no PID arithmetic (the metric does) and changes the
model only through the :class:`pidsched.models.MultimodalModule` protocol.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from pidsched._checks import check_int_at_least, check_num_bootstrap, check_tolerance_bits
from pidsched.callbacks.trainer_checks import (
    PYTHON_SPELLING,
    Spelling,
    check_probe_settings,
    check_strategy,
    check_trainer_features,
    check_validation_loop,
    padded_validation,
    spawns_processes,
)
from pidsched.controllers import Controller, Decision, PIDController, stage_one_budget
from pidsched.metrics.fastpid import FastPID
from pidsched.metrics.multimodal import SCALAR_ATOMS, MultimodalPID, MultimodalPIDResult
from pidsched.models.protocol import check_multimodal_module, modality_outputs
from pidsched.stages import STAGE_JOINT, STAGE_UNIMODAL

__all__ = ["PIDScheduleWarning", "PIDSchedulerCallback"]

_PROBE_INPUTS = ("logits", "features")
_DISCRETIZATIONS = ("soft", "hard")
# Classes above which the default exact probe (a K^3 joint) is warned about as slow.
_LARGE_EXACT_PROBE = 128
# The bootstrap generator's seed of the default metric: a fixed seed makes runs repeatable.
_BOOTSTRAP_SEED = 0


class PIDScheduleWarning(UserWarning):
    """A run configuration that works but probably does not do what was meant."""


_NO_PROBE_BATCHES = (
    "PIDSchedulerCallback probed but no validation batch reached it; check that the validation "
    "dataloader is not empty and `limit_val_batches` is not 0."
)


class PIDSchedulerCallback(Callback):
    """Two-stage multimodal training driven by PID measurements on the validation data.

    Each probe accumulates the metric over the first validation dataloader (all batches, every
    rank; the metric syncs across ranks), then the probe record is broadcast from rank 0 so every
    rank asks its controller the same question and gets the same answer. Decisions take effect at
    the start of the next training epoch. The probe is one
    :class:`~pidsched.metrics.MultimodalPID` metric: with two modalities the PID of (head 1,
    head 2; label), with M > 2 each modality m against the others' averaged softmax prediction
    (one-vs-rest; ``unique[m]`` is its uniqueness there, redundancy, synergy and mutual
    information are means over m).

    A probe is *certified* when its gap is finite and at most the metric's ``tol`` and every
    atom is finite. An uncertified probe is recorded (``"certified": False``) and logged, but no
    decision is taken on it: the controller is asked as on an unprobed epoch and a
    :class:`PIDScheduleWarning` says so. With ``num_bootstrap = B > 0`` every probe also carries
    B bootstrap replicates of each atom (passed to the controller, not stored) and their
    ``interval_level`` interval (stored in ``history``): the widened basic interval of
    :func:`~pidsched.functional.bootstrap.bootstrap_interval`, clamped at 0.

    Traps it warns about (:class:`PIDScheduleWarning`): ``max_epochs`` too small for stage 2 to
    start (at setup), a fit that ended in stage 1 (its fusion head is untrained), and a branch
    whose parameters or buffers changed during the first epoch it was paused (a module whose
    ``set_training_stage`` does not really freeze it).

    Pausing is real: a paused branch is in ``eval()``, runs without autograd and has no loss term,
    so its parameters, BatchNorm statistics and optimiser state stay bit-for-bit unchanged. Under
    DDP this needs ``strategy="ddp_find_unused_parameters_true"`` (checked at setup); with a
    spawned strategy (``ddp_spawn``) the schedule runs in the spawned processes and this object
    is not updated (a warning says so), and a validation sampler that pads the ranks' shares
    with repeated samples makes the probe count them twice (a warning says so too).

    At the switch the branch weights (encoders and unimodal heads) saved on the CPU at the
    peak-synergy probe are restored (``restore_peak=False`` keeps the last weights, as the paper's
    code did), the module is set to stage ``"joint"`` and ``trainer.strategy.setup_optimizers``
    builds the stage-2 optimiser and scheduler.

    Logged per probe through ``pl_module.log`` (any Lightning logger; monitorable):
    ``pid/unique_<m>``, ``pid/redundancy``, ``pid/synergy``, ``pid/mutual_information``,
    ``pid/stage`` (1 or 2), ``pid/paused_<m>`` (0 or 1), ``pid/certified`` (0 or 1) and, with
    bootstrap, ``pid/<atom>_low`` and ``pid/<atom>_high`` for ``unique_<m>``, ``redundancy``,
    ``synergy`` and ``mutual_information``; the U's and S also in the progress bar.

    Public state: ``stage`` and ``paused`` (what the next training epoch runs), ``history`` (one
    plain dict per probe, format in ``docs/architecture.md``), ``switch_epoch`` (first epoch of
    stage 2, None before) and ``peak_epoch`` (the epoch whose weights the switch restores). All
    of it, with the controller's state, the peak snapshot (one copy of the branch weights until
    the switch), the solver's warm starts and the bootstrap generators, is saved in checkpoints;
    a resumed fit continues the schedule where it stopped and repeats the uninterrupted run's
    probes and decisions. ``metric`` is the probe metric (built at setup, None before).

    Args:
        num_classes: K, the number of classes (checked against the module).
        controller: the decision rules; default :class:`~pidsched.controllers.PIDController`.
        probe_every_n_epochs: probe after every n-th training epoch (epochs n, 2n, ... counted
            from 1); validation must run on those epochs.
        restore_peak: restore the peak-synergy branch weights at the switch.
        discretization: ``"soft"`` (expected counts of softmax posteriors) or ``"hard"``
            (argmax counts) for the default :class:`~pidsched.metrics.fastpid.FastPID` metric.
        probe_tol: certified error bound (bits) of the default metric's PID solve. The
            controllers compare quantities of 1e-3 bits and more, so 1e-5 is exact for every
            decision and saves a Newton iteration or two per probe over the solver's 1e-7.
        metric_factory: builds the bivariate metric instead, called as
            ``metric_factory(num_classes=K)`` once per pair of the
            :class:`~pidsched.metrics.MultimodalPID` probe, e.g.
            ``functools.partial(ClusteredFastPID, num_clusters=20)``; its ``update`` takes
            ``(x_1, x_2, target)`` and its ``compute`` returns a ``PIDResult`` (certified against
            its ``tol`` attribute when it has one, else on finiteness alone).
        probe_inputs: ``"logits"`` (unimodal head outputs) or ``"features"`` (encoder outputs,
            needs ``metric_factory`` and the module's ``modality_features``).
        probe_buffer_size: validation samples held (detached, on their device) before they are
            folded into the metric in one ``update``. Small validation batches then cost one
            update (and one input check, a device sync on CUDA) per buffer instead of per batch;
            memory is bounded by this many rows of the probed outputs. 1 updates every batch.
        num_bootstrap: B, bootstrap replicates per probe of the default metric (0: none). A
            controller with ``needs_replicates`` needs B > 0.
        interval_level: nominal coverage of the recorded bootstrap intervals (widened basic
            intervals, :func:`~pidsched.functional.bootstrap.bootstrap_interval`).

    Raises:
        ValueError: an argument is out of range, or the controller needs replicates and
            ``num_bootstrap`` is 0 (at construction); the run is misconfigured (at setup: no
            validation data, ``val_check_interval`` other than 1.0, unsupported strategy, names or
            classes not matching, a ``ModelCheckpoint``/``EarlyStopping`` monitoring a ``pid/``
            value while some validation epochs do not probe); a validation batch is not
            ``(inputs: dict[str, Tensor], target: Tensor)`` (at the first probe).
        RuntimeError: this Lightning version lacks an internal attribute the setup checks read;
            a probe epoch's validation had no batches (an empty dataloader), at its end.
        TypeError: the module does not implement the protocol, or ``controller`` is not a
            :class:`~pidsched.controllers.Controller`.

    Example::

        >>> from pidsched.controllers import PIDController
        >>> callback = PIDSchedulerCallback(num_classes=6, controller=PIDController(max_switches=2))
        >>> callback.stage, callback.paused, callback.switch_epoch
        ('unimodal', frozenset(), None)
    """

    # 2: adds the metrics' warm starts. 3: adds the bootstrap generators' states.
    STATE_VERSION = 3

    def __init__(
        self,
        num_classes: int,
        controller: Controller | None = None,
        probe_every_n_epochs: int = 1,
        restore_peak: bool = True,
        discretization: str = "soft",
        probe_tol: float = 1e-5,
        metric_factory: Callable[..., Metric] | None = None,
        probe_inputs: str = "logits",
        probe_buffer_size: int = 4096,
        num_bootstrap: int = 0,
        interval_level: float = 0.9,
    ) -> None:
        _check_arguments(
            num_classes,
            controller,
            probe_every_n_epochs,
            discretization,
            probe_tol,
            metric_factory,
            probe_inputs,
            probe_buffer_size,
            num_bootstrap,
            interval_level,
        )
        self.num_classes = num_classes
        self.controller = controller if controller is not None else PIDController()
        self.probe_every_n_epochs = probe_every_n_epochs
        self.restore_peak = bool(restore_peak)
        self.discretization = discretization
        self.probe_tol = probe_tol
        self.metric_factory = metric_factory
        self.probe_inputs = probe_inputs
        self.probe_buffer_size = probe_buffer_size
        self.num_bootstrap = num_bootstrap
        self.interval_level = float(interval_level)

        self._stage = self.controller.initial_stage
        self._paused: frozenset[str] = frozenset()
        self._switch_pending = False
        self.switch_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self._peak_snapshot: dict[str, dict[str, Tensor]] | None = None
        self.peak_epoch: int | None = None

        self._module: LightningModule | None = None
        self._names: tuple[str, ...] = ()
        self.metric: MultimodalPID | None = None
        self._probing = False
        self._probe_batches = 0
        self._warned_padding = False  # once per fit: see _warn_if_padded
        self._checked_outside = False  # once per fit: on_before_optimizer_step
        # Validation outputs not yet folded into the metrics: (per-modality values, target).
        self._buffer: list[tuple[dict[str, Tensor], Tensor]] = []
        self._buffered_samples = 0
        # Metric states from a checkpoint loaded before setup built the metric.
        self._restored_metric_state: dict[str, Any] | None = None
        self._decided_epoch: int | None = None
        # Fingerprints of the branches paused in this epoch that were never checked before.
        self._pause_fingerprints: dict[str, Tensor] = {}
        self._pause_checked: set[str] = set()

    # --- public state ------------------------------------------------------------------------

    @property
    def stage(self) -> str:
        """``"unimodal"`` or ``"joint"``: the stage of the current (or next) training epoch."""
        return self._stage

    @property
    def paused(self) -> frozenset[str]:
        """Modalities paused in the current (or next) training epoch."""
        return self._paused

    @property
    @override
    def state_key(self) -> str:
        # One schedule per trainer: the key does not depend on the arguments, so a checkpoint
        # resumes even when e.g. the probe interval was changed.
        return type(self).__name__

    # --- setup and configuration checks ------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        check_multimodal_module(
            pl_module,
            expected_names=getattr(trainer.datamodule, "modality_names", None),
            num_classes=self.num_classes,
            require_features=self.probe_inputs == "features",
        )
        self.check_trainer(trainer, pl_module.modality_names)
        self._warned_padding = self._checked_outside = False
        if spawns_processes(trainer):
            rank_zero_warn(
                "This fit runs in spawned processes (Trainer(strategy='ddp_spawn...' or "
                "'ddp_fork'/'ddp_notebook')): the schedule runs correctly there, but this "
                "callback object keeps its state from before the fit (history, stage, "
                "switch_epoch stay unset after trainer.fit returns). Read the probes from the "
                "logger or the report callback's files, or use "
                "Trainer(strategy='ddp_find_unused_parameters_true').",
                category=PIDScheduleWarning,
            )
        if self.controller.needs_measurements:
            check_validation_loop(trainer, pl_module)
            self._names = tuple(pl_module.modality_names)
            self.metric = self._make_metric()
            self._restore_metric_state()
        if self._stage == STAGE_UNIMODAL:  # without a stage 1 nothing jumps
            _warn_on_jumping_monitors(trainer)
        _warn_if_stage_two_cannot_start(trainer, self.controller)
        self._module = pl_module
        # configure_optimizers runs after setup: the module must already be in its stage.
        pl_module.set_training_stage(self._stage, frozenset())

    def check_trainer(
        self,
        trainer: Trainer,
        modality_names: Sequence[str],
        spelling: Spelling = PYTHON_SPELLING,
    ) -> None:
        """Refuse Trainer settings this schedule cannot run with; ``setup`` calls it.

        It reads only what the Trainer was built with (strategy, validation settings,
        callbacks), so a program that builds the Trainer can check before it fits:
        ``pidsched-train`` does, with a ``spelling`` that names the command-line overrides.

        Args:
            trainer: the Trainer that will fit.
            modality_names: the module's modality names.
            spelling: how the messages name the settings that fix them.

        Raises:
            ValueError: a strategy other than single-device or DDP allowing unused parameters,
                an EarlyStopping on a per-modality metric while branches pause, or (for a
                controller that measures) validation settings under which some probe epoch
                would not validate, or a ``pid/`` monitor missing on validation epochs.
        """
        check_strategy(trainer, spelling)
        check_trainer_features(trainer, modality_names, self._stage == STAGE_UNIMODAL, spelling)
        if self.controller.needs_measurements:
            check_probe_settings(trainer, self.probe_every_n_epochs, spelling)

    def _make_metric(self) -> MultimodalPID:
        if self.metric_factory is None and self.num_classes > _LARGE_EXACT_PROBE:
            rank_zero_warn(
                f"The default probe solves a {self.num_classes} x {self.num_classes} x "
                f"{self.num_classes} joint per pair every probe epoch: about 5 s at 101 classes on "
                "one CPU thread, many minutes at 309. For this many classes probe clustered "
                "embeddings: PIDSchedulerCallback(metric_factory=functools.partial("
                "ClusteredFastPID, num_clusters=20), probe_inputs='features') (pidsched-train: "
                "schedule=pid_paper), with validation samples in the thousands "
                "(docs/method.md, 'Probe memory and cost per K').",
                category=PIDScheduleWarning,
            )
        if self.metric_factory is None:
            bootstrap = (
                {"num_bootstrap": self.num_bootstrap, "seed": _BOOTSTRAP_SEED}
                if self.num_bootstrap
                else {}
            )
            factory = functools.partial(
                FastPID, discretization=self.discretization, tol=self.probe_tol, **bootstrap
            )
        else:
            factory = self.metric_factory
        metric = MultimodalPID(self._names, self.num_classes, factory, inputs=self.probe_inputs)
        if getattr(self.controller, "needs_replicates", False) and metric.num_bootstrap == 0:
            raise ValueError(
                f"{type(self.controller).__name__} decides on bootstrap replicates, but "
                "`metric_factory` builds a metric without them; give it num_bootstrap > 0."
            )
        return metric

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A metric owned by a callback is not moved with the module.
        if self.metric is not None:
            self.metric.to(pl_module.device)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stage == STAGE_UNIMODAL:
            rank_zero_warn(
                f"The fit ended in stage 1 after {trainer.current_epoch} epochs: stage 2 never "
                "started, so the fusion head is untrained and fused metrics (val/acc_fused) mean "
                "nothing. Raise Trainer(max_epochs) or lower the controller's stage-1 budget.",
                category=PIDScheduleWarning,
            )

    # --- applying the schedule ---------------------------------------------------------------

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A fit resumed mid-epoch skips that epoch's on_train_epoch_start: the rest of the epoch
        # must train with the restored stage and paused set, whatever module holds the branches.
        # (Lightning's check for modules in eval mode runs before this hook.)
        pl_module.set_training_stage(self._stage, self._paused)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._switch_pending:
            self._start_joint_stage(trainer, pl_module)
        pl_module.set_training_stage(self._stage, self._paused)
        self._pause_fingerprints = {
            name: _branch_fingerprint(pl_module, name)
            for name in self._paused - self._pause_checked
        }

    def _start_joint_stage(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.restore_peak and self._peak_snapshot is not None:
            for part, state in self._peak_snapshot.items():
                getattr(pl_module, part).load_state_dict(state)
        self._stage = STAGE_JOINT
        self._paused = frozenset()
        self._switch_pending = False
        self._peak_snapshot = None
        self.switch_epoch = trainer.current_epoch
        pl_module.set_training_stage(STAGE_JOINT, frozenset())
        # Re-runs configure_optimizers: a fresh stage-2 optimiser with its own scheduler.
        trainer.strategy.setup_optimizers(trainer)

    def _apply_decision(self, decision: Decision, pl_module: LightningModule, epoch: int) -> None:
        if decision.peak and self.restore_peak:
            self._peak_snapshot = _branch_snapshot(pl_module)
            self.peak_epoch = epoch
        if decision.switch:
            self._switch_pending = True
        else:
            self._paused = decision.paused
        self._decided_epoch = epoch

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_paused_branches_did_not_change(pl_module, trainer.current_epoch)
        # Validation (and so any probe) has run by now; epochs without a probe still count
        # towards the controller's epoch budget.
        epoch = trainer.current_epoch
        if self._stage != STAGE_UNIMODAL or self._switch_pending or self._decided_epoch == epoch:
            return
        # Lightning skips a validation loop of no batches without a hook: the probe never ran.
        batches = trainer.num_val_batches
        if self._is_probe_epoch(trainer) and batches and sum(batches) == 0:
            raise RuntimeError(_NO_PROBE_BATCHES)
        self._apply_decision(self.controller.decide(epoch + 1, None), pl_module, epoch)

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._stage == STAGE_UNIMODAL and self._paused and not self._checked_outside:
            self._checked_outside = True
            _warn_on_trained_parameters_outside_branches(pl_module, self._paused)

    def _check_paused_branches_did_not_change(self, pl_module: LightningModule, epoch: int) -> None:
        """Warn, once per branch, when a branch changed during the first epoch it was paused."""
        changed = [
            name
            for name, before in self._pause_fingerprints.items()
            if not torch.equal(before, _branch_fingerprint(pl_module, name))
        ]
        self._pause_checked |= set(self._pause_fingerprints)
        self._pause_fingerprints = {}
        if changed:
            rank_zero_warn(
                f"Branch(es) {sorted(changed)} were paused in epoch {epoch} but their parameters "
                "or buffers changed: the module's set_training_stage does not really freeze a "
                "paused branch. Put its encoder and head in eval(), run them without autograd "
                "and drop their loss terms (see pidsched.models.MultimodalModule).",
                category=PIDScheduleWarning,
            )

    # --- probing -----------------------------------------------------------------------------

    def _is_probe_epoch(self, trainer: Trainer) -> bool:
        return (
            self.controller.needs_measurements
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.probe_every_n_epochs == 0
        )

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._probing = self._is_probe_epoch(trainer)
        if self._probing:
            self._warn_if_padded(trainer)
            self.metric.reset()
            self._probe_batches = 0
            self._buffer, self._buffered_samples = [], 0

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._probing or dataloader_idx != 0:
            return
        inputs, target = _split_batch(batch)
        values = self._modality_values(pl_module, outputs, inputs)
        self._buffer.append(({name: values[name].detach() for name in self._names}, target))
        self._buffered_samples += target.shape[0]
        self._probe_batches += 1
        if self._buffered_samples >= self.probe_buffer_size:
            self._update_metric()

    def _warn_if_padded(self, trainer: Trainer) -> None:
        """Warn once per fit when the ranks see some validation samples twice (or not at all):
        the synced probe then counts them so, and its PID is not that of the validation set."""
        if self._warned_padding:
            return
        padded = padded_validation(trainer)
        if padded is None:
            return
        self._warned_padding = True
        repeated, dropped = padded
        what = f"repeats {repeated}" if repeated else f"drops {dropped}"
        rank_zero_warn(
            f"The validation dataloader's DistributedSampler {what} of its samples so that "
            "every rank gets as many, and the synced probe counts them so: "
            "its PID is not exactly that of the validation set. Give the validation DataLoader "
            "sampler=lightning.pytorch.overrides.distributed.UnrepeatedDistributedSampler("
            "dataset, shuffle=False) (pidsched's data modules do), or a validation set whose "
            "size is a multiple of the world size.",
            category=PIDScheduleWarning,
        )

    def _update_metric(self) -> None:
        """Fold the buffered validation outputs into the metric in one update."""
        if not self._buffer:
            return
        batches, targets = zip(*self._buffer, strict=True)
        self._buffer, self._buffered_samples = [], 0
        values = {name: torch.cat([batch[name] for batch in batches]) for name in self._names}
        self.metric.update(values, torch.cat(targets))

    def _modality_values(
        self, pl_module: LightningModule, outputs: Any, inputs: Mapping[str, Tensor]
    ) -> Mapping[str, Tensor]:
        key = f"modality_{self.probe_inputs}"
        values = modality_outputs(outputs, key)
        if values is None:
            with torch.no_grad():
                values = getattr(pl_module, key)(inputs)
        if set(values) != set(self._names):
            raise ValueError(
                f"`{key}` returned modalities {sorted(values)} but the module's modality_names "
                f"are {sorted(self._names)}; make both use the same names."
            )
        return values

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._probing:
            return
        self._probing = False
        if self._probe_batches == 0:
            raise RuntimeError(_NO_PROBE_BATCHES)
        self._update_metric()
        # compute() and callback_metrics sync across ranks: every rank must call them.
        result = self.metric.compute()
        record = self._probe_record(trainer, result)
        replicates = None if result.replicates is None else _replicate_lists(result.replicates)
        # Every rank takes rank 0's record, so controllers on all ranks stay identical.
        record, replicates = trainer.strategy.broadcast((record, replicates), src=0)
        if self._stage == STAGE_UNIMODAL and not self._switch_pending:
            epoch = trainer.current_epoch
            probe = dict(record, replicates=replicates) if record["certified"] else None
            if probe is None:
                _warn_uncertified(record, self.metric.tol)
            self._apply_decision(self.controller.decide(epoch + 1, probe), pl_module, epoch)
        self.history.append(record)
        self._log_probe(pl_module, record)

    def _probe_record(self, trainer: Trainer, result: MultimodalPIDResult) -> dict[str, Any]:
        tol = self.metric.tol
        metrics = trainer.callback_metrics
        # With several validation dataloaders Lightning suffixes the first one's names, unless
        # the module logs them without the suffix (MultimodalClassifier does).
        keys = {
            name: next(
                (
                    key
                    for key in (f"val/acc_{name}", f"val/acc_{name}/dataloader_idx_0")
                    if key in metrics
                ),
                None,
            )
            for name in (*self._names, "fused")
        }
        val_acc = {name: float(metrics[key]) for name, key in keys.items() if key is not None}
        return {
            "epoch": trainer.current_epoch,
            "stage": self._stage,
            "paused": sorted(self._paused),
            **_atom_floats(result),
            "gap": float(result.gap),
            "val_acc": val_acc,
            "certified": result.is_certified(math.inf if tol is None else tol),
            "interval": None
            if result.replicates is None
            else _interval_record(result, self.interval_level),
        }

    def _log_probe(self, pl_module: LightningModule, record: Mapping[str, Any]) -> None:
        # The values are identical on every rank (broadcast): a "max" sync returns them exactly.
        def log(name: str, value: float, prog_bar: bool = False) -> None:
            pl_module.log(name, value, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")

        for name in self._names:
            log(f"pid/unique_{name}", record["unique"][name], prog_bar=True)
            log(f"pid/paused_{name}", float(name in record["paused"]))
        log("pid/redundancy", record["redundancy"])
        log("pid/synergy", record["synergy"], prog_bar=True)
        log("pid/mutual_information", record["mutual_information"])
        log("pid/stage", 1.0 if record["stage"] == STAGE_UNIMODAL else 2.0)
        log("pid/certified", float(record["certified"]))
        interval = record["interval"]
        if interval is not None:
            bounds = {f"unique_{name}": interval["unique"][name] for name in self._names}
            bounds.update({atom: interval[atom] for atom in SCALAR_ATOMS})
            for atom, (low, high) in bounds.items():
                log(f"pid/{atom}_low", low)
                log(f"pid/{atom}_high", high)

    # --- checkpointing -----------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        metric = self.metric
        return {
            "version": self.STATE_VERSION,
            "stage": self._stage,
            "paused": sorted(self._paused),
            "switch_pending": self._switch_pending,
            "switch_epoch": self.switch_epoch,
            "history": [dict(record) for record in self.history],
            "controller": self.controller.state_dict(),
            "peak_snapshot": self._peak_snapshot,
            "peak_epoch": self.peak_epoch,
            # The solver's warm starts and the bootstrap generators (one entry per pair metric):
            # without them a resumed probe starts cold or resamples differently, and may differ
            # from the uninterrupted one.
            "metric_warm_starts": [] if metric is None else metric.warm_start_state(),
            "metric_bootstrap": [] if metric is None else metric.bootstrap_state(),
            "pause_checked": sorted(self._pause_checked),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", 1)
        if version > self.STATE_VERSION:
            raise ValueError(
                f"this checkpoint was written by a newer pidsched (PIDSchedulerCallback state "
                f"version {version} > {self.STATE_VERSION}); upgrade pidsched to resume it."
            )
        self._stage = state_dict.get("stage", self.controller.initial_stage)
        self._paused = frozenset(state_dict.get("paused", ()))
        self._switch_pending = bool(state_dict.get("switch_pending", False))
        self.switch_epoch = state_dict.get("switch_epoch")
        self.history = [_upgrade_record(record) for record in state_dict.get("history", [])]
        self.controller.load_state_dict(state_dict.get("controller", {}))
        self._peak_snapshot = state_dict.get("peak_snapshot")
        self.peak_epoch = state_dict.get("peak_epoch")
        self._pause_checked = set(state_dict.get("pause_checked", ()))
        self._restored_metric_state = {
            "warm_starts": state_dict.get("metric_warm_starts"),
            "bootstrap": state_dict.get("metric_bootstrap"),
        }
        self._restore_metric_state()
        if self._module is not None:
            # The restored optimiser state belongs to this stage's optimiser, which
            # configure_optimizers builds next. Paused branches go to eval() at the next epoch
            # start (before that only validation runs, in eval() anyway), which also keeps
            # Lightning from warning about modules in eval mode at the start of training.
            self._module.set_training_stage(self._stage, frozenset())

    def _restore_metric_state(self) -> None:
        # Checkpoints are restored after setup built the metric; a state loaded earlier waits.
        if self._restored_metric_state is None or self.metric is None:
            return
        self.metric.load_warm_start_state(self._restored_metric_state["warm_starts"])
        self.metric.load_bootstrap_state(self._restored_metric_state["bootstrap"])
        self._restored_metric_state = None


def _check_arguments(
    num_classes: Any,
    controller: Any,
    probe_every_n_epochs: Any,
    discretization: Any,
    probe_tol: Any,
    metric_factory: Any,
    probe_inputs: Any,
    probe_buffer_size: Any,
    num_bootstrap: Any,
    interval_level: Any,
) -> None:
    check_int_at_least("num_classes", num_classes, 2, "the number of classes")
    if controller is not None and not isinstance(controller, Controller):
        raise TypeError(
            "`controller` must be a pidsched.controllers.Controller (e.g. PIDController()), "
            f"got {type(controller).__name__}."
        )
    check_int_at_least("probe_every_n_epochs", probe_every_n_epochs, 1, "training epochs per probe")
    if discretization not in _DISCRETIZATIONS:
        raise ValueError(
            f"`discretization` must be one of {_DISCRETIZATIONS}, got {discretization!r}."
        )
    if metric_factory is not None and not callable(metric_factory):
        raise TypeError("`metric_factory` must be callable as metric_factory(num_classes=K).")
    check_tolerance_bits("probe_tol", probe_tol)
    if metric_factory is not None and (discretization != "soft" or probe_tol != 1e-5):
        raise ValueError(
            "`discretization` and `probe_tol` configure the default FastPID metric; with "
            "`metric_factory` configure the metric there instead (e.g. FastPID(tol=...))."
        )
    if probe_inputs not in _PROBE_INPUTS:
        raise ValueError(f"`probe_inputs` must be one of {_PROBE_INPUTS}, got {probe_inputs!r}.")
    if probe_inputs == "features" and metric_factory is None:
        raise ValueError(
            "`probe_inputs='features'` needs a feature metric: pass e.g. "
            "metric_factory=functools.partial(ClusteredFastPID, num_clusters=20)."
        )
    check_int_at_least(
        "probe_buffer_size",
        probe_buffer_size,
        1,
        "validation samples held before one metric update; 1 updates on every batch",
    )
    check_num_bootstrap(num_bootstrap, "bootstrap replicates per probe")
    if metric_factory is not None and num_bootstrap != 0:
        raise ValueError(
            "`num_bootstrap` configures the default FastPID metric; with `metric_factory` "
            "configure the bootstrap there instead (e.g. FastPID(num_bootstrap=...))."
        )
    if (
        getattr(controller, "needs_replicates", False)
        and num_bootstrap == 0
        and metric_factory is None
    ):
        raise ValueError(
            f"{type(controller).__name__} decides on bootstrap replicates: give "
            "PIDSchedulerCallback(num_bootstrap=B) with B > 0 (e.g. 64)."
        )
    if (
        isinstance(interval_level, bool)
        or not isinstance(interval_level, (int, float))
        or not 0 < interval_level < 1
    ):
        raise ValueError(
            "Expected argument `interval_level` (the central probability of the bootstrap "
            f"intervals) to be a number in (0, 1), but got {interval_level!r}; e.g. 0.9."
        )


def _warn_on_jumping_monitors(trainer: Trainer) -> None:
    for callback in trainer.callbacks:
        if not isinstance(callback, (EarlyStopping, ModelCheckpoint)):
            continue
        monitor = callback.monitor
        if monitor is not None and (
            "loss" in monitor or "fused" in monitor or monitor == "pid/stage"
        ):
            rank_zero_warn(
                f"{type(callback).__name__} monitors {monitor!r}, which jumps at the stage switch: "
                "the fusion head is untrained in stage 1 and the loss gains the fused term in "
                "stage 2, so values before and after the switch are not comparable (early "
                "stopping may fire in stage 1, a stage-1 'best' may be kept). Monitor a "
                "per-modality accuracy, or select among stage-2 checkpoints.",
                category=PIDScheduleWarning,
            )


def _warn_if_stage_two_cannot_start(trainer: Trainer, controller: Controller) -> None:
    """Warn at setup when ``max_epochs`` ends the fit before stage 1 surely ends."""
    max_epochs = trainer.max_epochs
    budget = stage_one_budget(controller)
    if budget is None or max_epochs is None or max_epochs < 0 or max_epochs > budget.epochs:
        return
    if budget.exact:
        outcome = "stage 2 never starts"
    else:
        outcome = "stage 2 starts only if synergy drops or the pauses switch often enough first"
    rank_zero_warn(
        f"Trainer(max_epochs={max_epochs}) is not above the stage-1 budget of "
        f"{type(controller).__name__} ({budget.epochs} epochs): {outcome}, and without it the "
        "fusion head stays untrained. Raise max_epochs or lower the stage-1 budget.",
        category=PIDScheduleWarning,
    )


def _split_batch(batch: Any) -> tuple[Mapping[str, Tensor], Tensor]:
    """``(inputs, target)`` of a validation batch, or a ValueError naming the expected layout."""
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and isinstance(batch[0], Mapping)
        and isinstance(batch[1], Tensor)
    ):
        return batch[0], batch[1]
    layout = (
        f"a {type(batch).__name__} of {len(batch)} ({', '.join(type(b).__name__ for b in batch)})"
        if isinstance(batch, (tuple, list))
        else f"a {type(batch).__name__}"
    )
    raise ValueError(
        "PIDSchedulerCallback probes validation batches laid out as (inputs: dict[str, Tensor] "
        f"keyed by modality name, target: Tensor of labels), but got {layout}; make the "
        "validation dataloader yield that pair."
    )


def _atom_floats(result: MultimodalPIDResult) -> dict[str, Any]:
    """The history's atoms of a 0-d result as floats: per-modality dicts and scalars (bits)."""
    return {
        "unique": {name: float(value) for name, value in result.unique.items()},
        **{atom: float(getattr(result, atom)) for atom in SCALAR_ATOMS},
        "mutual_information_per_modality": {
            name: float(value) for name, value in result.mutual_information_per_modality.items()
        },
    }


def _interval_record(result: MultimodalPIDResult, level: float) -> dict[str, Any]:
    """``{"level", "unique": {m: [low, high]}, atom: [low, high]}`` of a bootstrapped result."""
    low, high = (_atom_floats(bound) for bound in result.interval(level))
    return {
        "level": level,
        "unique": {name: [low["unique"][name], high["unique"][name]] for name in low["unique"]},
        **{atom: [low[atom], high[atom]] for atom in SCALAR_ATOMS},
    }


def _replicate_lists(replicates: MultimodalPIDResult) -> dict[str, Any]:
    """The controller's replicates: every atom's ``(B,)`` tensor as a list of B floats."""

    def floats(values: Tensor) -> list[float]:
        return [float(value) for value in values.detach().cpu().tolist()]

    return {
        "unique": {name: floats(values) for name, values in replicates.unique.items()},
        **{atom: floats(getattr(replicates, atom)) for atom in SCALAR_ATOMS},
        "mutual_information_per_modality": {
            name: floats(values)
            for name, values in replicates.mutual_information_per_modality.items()
        },
    }


def _warn_uncertified(record: Mapping[str, Any], tol: float | None) -> None:
    bound = "finite" if tol is None else f"at most tol={tol:g} bits"
    rank_zero_warn(
        f"The PID probe of epoch {record['epoch']} is not certified (gap {record['gap']:.3g} "
        f"bits, needed {bound}, with finite atoms): it is recorded with certified=False and no "
        "decision is taken on it (the epoch counts as unprobed).",
        category=PIDScheduleWarning,
    )


def _upgrade_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A history record of an older checkpoint with the keys added since (version 3)."""
    # Older versions decided on every probe, i.e. treated each as certified.
    return {"certified": True, "interval": None, **record}


def _branch_parts(pl_module: LightningModule, name: str) -> tuple[torch.nn.Module, ...]:
    """Branch ``name`` as the protocol defines it: its encoder and its unimodal head, what a
    pause freezes and the peak snapshot holds."""
    return pl_module.encoders[name], pl_module.heads[name]


def _branch_fingerprint(pl_module: LightningModule, name: str) -> Tensor:
    """Sum and sum of squares (float64) of every parameter and buffer of branch ``name``."""
    tensors = [
        tensor for part in _branch_parts(pl_module, name) for tensor in part.state_dict().values()
    ]
    with torch.no_grad():
        return torch.stack(
            [
                statistic
                for tensor in tensors
                for statistic in (tensor.double().sum(), tensor.double().square().sum())
            ]
        )


def _warn_on_trained_parameters_outside_branches(
    pl_module: LightningModule, paused: frozenset[str]
) -> None:
    """Warn when, with ``paused`` branches, parameters outside the training branches'
    ``encoders[m]`` and ``heads[m]`` get gradients: a pause freezes (and the peak snapshot
    holds) only those two, so a paused branch that uses such a parameter (a shared stem, a
    learnable temperature) still changes, and nothing else would notice."""
    training = {
        id(parameter)
        for name in pl_module.modality_names
        if name not in paused
        for part in _branch_parts(pl_module, name)
        for parameter in part.parameters()
    }
    outside = [
        name
        for name, parameter in pl_module.named_parameters()
        if parameter.grad is not None and id(parameter) not in training
    ]
    if outside:
        shown = ", ".join(outside[:5]) + (
            f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        )
        rank_zero_warn(
            f"While {sorted(paused)} is paused, parameters outside the training branches' "
            f"encoders[m] and heads[m] get gradients: {shown}. A pause freezes, and the peak "
            "snapshot restores, only encoders[m] and heads[m]; if a paused branch uses these "
            "parameters it still changes. Move them into encoders[m]/heads[m] (one copy per "
            "branch) or freeze them in set_training_stage during stage 1.",
            category=PIDScheduleWarning,
        )


def _branch_snapshot(pl_module: LightningModule) -> dict[str, dict[str, Tensor]]:
    """CPU copies of the encoders' and unimodal heads' parameters and buffers."""
    return {
        part: {
            key: value.detach().cpu().clone()
            for key, value in getattr(pl_module, part).state_dict().items()
        }
        for part in ("encoders", "heads")
    }
