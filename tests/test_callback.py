"""PIDSchedulerCallback through a real Trainer: pausing, switching, probing, logging, bad setups."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import torch
from _lightning_helpers import (
    NUM_CLASSES,
    ScriptedController,
    assert_states_differ,
    assert_states_equal,
    branch_state,
    loaders,
    make_data,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader

from pidsched import (
    FastPID,
    FixedController,
    JointController,
    PIDController,
    PIDSchedulerCallback,
    PIDScheduleWarning,
)
from pidsched.controllers import Decision
from pidsched.metrics import ClusteredFastPID


class Recorder(Callback):
    """Copies of branch "a", its optimiser state and the module's modes, per epoch."""

    def __init__(self) -> None:
        self.end_state: list[dict[str, torch.Tensor]] = []
        self.end_momentum: list[list[torch.Tensor | None]] = []
        self.start_state: list[dict[str, torch.Tensor]] = []
        self.fusion: list[dict[str, torch.Tensor]] = []
        self.a_training: list[bool] = []
        self.optimizers: list[Any] = []
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start_state.append(branch_state(pl_module, "a"))
        self.optimizers.append(trainer.optimizers[0])
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.a_training.append(pl_module.encoders["a"].training)

    def on_train_epoch_end(self, trainer, pl_module):
        self.end_state.append(branch_state(pl_module, "a"))
        optimizer = trainer.optimizers[0]
        params = [*pl_module.encoders["a"].parameters(), *pl_module.heads["a"].parameters()]
        self.end_momentum.append(
            [
                None
                if "momentum_buffer" not in optimizer.state.get(p, {})
                else optimizer.state[p]["momentum_buffer"].clone()
                for p in params
            ]
        )
        self.fusion.append({k: v.clone() for k, v in pl_module.fusion.state_dict().items()})


def fit(controller, max_epochs, model=None, signal=None, extra_callbacks=(), **callback_kwargs):
    model = model or make_model()
    callback = PIDSchedulerCallback(NUM_CLASSES, controller, **callback_kwargs)
    recorder = Recorder()
    train, val = loaders(signal=signal)
    trainer = make_trainer(max_epochs, [callback, recorder, *extra_callbacks])
    trainer.fit(model, train, val)
    return trainer, callback, recorder


def test_pausing_is_bitwise_for_parameters_buffers_and_optimizer_state():
    # Decided after epochs 1 and 4 (counted from 1): "a" is paused in epochs 1-3 (from 0).
    script = {1: Decision(paused=frozenset({"a"})), 4: Decision()}
    _, callback, recorder = fit(ScriptedController(script, needs_measurements=False), 6)
    assert recorder.a_training == [True, False, False, False, True, True]
    for epoch in (1, 2, 3):
        assert_states_equal(recorder.end_state[epoch], recorder.end_state[0])
        momentum, before = recorder.end_momentum[epoch], recorder.end_momentum[0]
        assert all(torch.equal(m, b) for m, b in zip(momentum, before, strict=True))
    assert_states_differ(recorder.end_state[4], recorder.end_state[3])  # trains again
    # The BatchNorm running statistics are among the frozen tensors.
    assert "encoder.1.running_mean" in recorder.end_state[0]
    assert callback.stage == "unimodal" and callback.history == []


def test_switch_restores_the_peak_and_builds_the_stage_two_optimizer_and_scheduler():
    script = {1: Decision(peak=True), 2: Decision(), 3: Decision(switch=True)}
    model = make_model(
        stage2_optimizer={"name": "SGD", "lr": 0.04, "momentum": 0.9},
        stage2_scheduler={"name": "StepLR", "step_size": 1, "gamma": 0.5},
    )
    trainer, callback, recorder = fit(
        ScriptedController(script, needs_measurements=False), 6, model=model
    )
    assert callback.switch_epoch == 3 and callback.stage == "joint" and model.stage == "joint"
    assert callback.peak_epoch == 0
    # Stage 2 starts from the weights after epoch 0 (the peak), not those after epoch 2.
    assert_states_equal(recorder.start_state[3], recorder.end_state[0])
    assert_states_differ(recorder.start_state[3], recorder.end_state[2])
    # A new optimiser, carrying the scheduler that decays it: 0.04, 0.02, 0.01.
    assert recorder.optimizers[3] is not recorder.optimizers[2]
    assert recorder.optimizers[3] is recorder.optimizers[5] is trainer.optimizers[0]
    assert recorder.lrs[3:] == [0.04, 0.02, 0.01]
    (config,) = trainer.lr_scheduler_configs
    assert config.scheduler.optimizer is trainer.optimizers[0]
    # The fusion head is idle in stage 1 and trains in stage 2.
    assert_states_equal(recorder.fusion[2], recorder.fusion[0])
    assert_states_differ(recorder.fusion[3], recorder.fusion[2])


def test_without_peak_restore_stage_two_starts_from_the_last_weights():
    script = {1: Decision(peak=True), 3: Decision(switch=True)}
    _, callback, recorder = fit(
        ScriptedController(script, needs_measurements=False), 4, restore_peak=False
    )
    assert callback.switch_epoch == 3
    assert_states_equal(recorder.start_state[3], recorder.end_state[2])


def test_fixed_and_joint_controllers():
    _, callback, recorder = fit(FixedController(unimodal_epochs=2), 3)
    assert callback.switch_epoch == 2 and callback.history == []
    assert_states_equal(recorder.fusion[1], recorder.fusion[0])

    model = make_model(stage2_optimizer={"name": "SGD", "lr": 0.03})
    _, callback, recorder = fit(JointController(), 1, model=model)
    assert callback.stage == "joint" and callback.switch_epoch is None
    assert recorder.lrs == [0.03]  # the stage-2 optimiser from the first epoch
    assert_states_differ(recorder.fusion[0], dict(make_model().fusion.state_dict()))


def test_fast_modality_is_paused_on_a_competition_task():
    # "a" carries a strong label signal (learned in an epoch), "b" a weak one.
    controller = PIDController(min_unimodal_epochs=10, max_unimodal_epochs=10, max_switches=0)
    _, callback, recorder = fit(controller, 3, signal={"a": 3.0, "b": 0.5})
    first = callback.history[0]
    assert first["unique"]["a"] > 3 * max(first["unique"]["b"], 1e-3)
    assert callback.paused == {"a"}
    assert recorder.a_training == [True, False, False]
    assert [record["paused"] for record in callback.history] == [[], ["a"], ["a"]]
    assert callback.history[-1]["val_acc"]["a"] == first["val_acc"]["a"]  # frozen branch


def test_history_records_and_logged_metrics(tmp_path):
    controller = PIDController(min_unimodal_epochs=1, max_unimodal_epochs=2)
    model = make_model()
    callback = PIDSchedulerCallback(NUM_CLASSES, controller)
    train, val = loaders()
    trainer = make_trainer(3, [callback], logger=CSVLogger(tmp_path, name="run"))
    trainer.fit(model, train, val)

    assert [record["epoch"] for record in callback.history] == [0, 1, 2]
    assert [record["stage"] for record in callback.history] == ["unimodal", "unimodal", "joint"]
    record = callback.history[0]
    assert set(record) == {
        "epoch",
        "stage",
        "paused",
        "unique",
        "redundancy",
        "synergy",
        "mutual_information",
        "mutual_information_per_modality",
        "gap",
        "val_acc",
        "certified",
        "interval",
    }
    assert set(record["val_acc"]) == {"a", "b", "fused"}
    assert all(r["certified"] for r in callback.history)
    assert record["interval"] is None  # no bootstrap
    # The default metric solves to the callback's probe_tol and certifies it.
    assert callback.metric.tol == 1e-5
    assert max(record["gap"] for record in callback.history) <= 1e-5
    atoms = record["unique"]["a"] + record["unique"]["b"] + record["redundancy"] + record["synergy"]
    assert atoms == pytest.approx(record["mutual_information"], abs=1e-6)
    info = record["mutual_information_per_modality"]
    assert info["a"] == pytest.approx(record["unique"]["a"] + record["redundancy"], abs=1e-6)

    last = callback.history[-1]
    metrics = trainer.callback_metrics
    assert float(metrics["pid/synergy"]) == pytest.approx(last["synergy"])
    assert float(metrics["pid/unique_b"]) == pytest.approx(last["unique"]["b"])
    assert float(metrics["pid/stage"]) == 2.0 and float(metrics["pid/paused_a"]) == 0.0
    assert float(metrics["pid/certified"]) == 1.0
    assert "pid/synergy_low" not in metrics
    progress_bar = trainer.progress_bar_metrics
    assert {"pid/unique_a", "pid/unique_b", "pid/synergy"} <= set(progress_bar)
    assert "pid/redundancy" not in progress_bar

    rows = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    synergy_rows = [row for row in rows[1:] if row.split(",")[header.index("pid/synergy")]]
    assert len(synergy_rows) == 3  # once per probe, no per-step spam


def test_probe_every_n_epochs_and_the_epoch_budget_between_probes():
    controller = ScriptedController({})
    _, callback, _ = fit(controller, 4, probe_every_n_epochs=2)
    assert [record["epoch"] for record in callback.history] == [1, 3]
    # Probed epochs are decided with the probe, the others with None.
    assert controller.calls == [(1, False), (2, True), (3, False), (4, True)]


def test_three_modalities_are_measured_one_vs_rest():
    names = ("a", "b", "c")
    model = make_model(names)
    callback = PIDSchedulerCallback(NUM_CLASSES, PIDController())
    train, val = loaders(names, signal={"a": 3.0, "b": 1.0, "c": 0.3})
    make_trainer(1, [callback]).fit(model, train, val)
    (record,) = callback.history

    # Independent recomputation: modality m against log(mean of the others' softmax).
    model.eval()
    with torch.no_grad():
        batches = [(model.modality_logits(inputs), target) for inputs, target in val]
    for name in names:
        metric = FastPID(NUM_CLASSES)
        for logits, target in batches:
            others = [logits[o].softmax(-1) for o in names if o != name]
            metric.update(logits[name], torch.stack(others).mean(0).log(), target)
        result = metric.compute()
        # Both certified: the probe to probe_tol = 1e-5 bits, the reference to 1e-7.
        assert record["unique"][name] == pytest.approx(float(result.unique_1), abs=2e-5)
        informations = record["mutual_information_per_modality"]
        assert informations[name] == pytest.approx(float(result.mutual_information_1), abs=2e-5)
    assert record["unique"]["a"] > record["unique"]["c"]


def test_clustered_features_probe():
    factory = functools.partial(ClusteredFastPID, num_clusters=4, num_components=2)
    _, callback, _ = fit(ScriptedController({}), 1, metric_factory=factory, probe_inputs="features")
    (record,) = callback.history
    assert record["mutual_information"] >= 0.0 and record["gap"] < 1e-3


class CountingFastPID(FastPID):
    """FastPID that records the number of rows of every update."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.update_rows: list[int] = []

    def update(self, logits_1, logits_2, target):
        self.update_rows.append(int(target.shape[0]))
        super().update(logits_1, logits_2, target)


@pytest.mark.parametrize(
    ("buffer_size", "expected_rows"),
    [(1, [16] * 6 + [4]), (40, [48, 48, 4]), (4096, [100])],
)
def test_probe_buffer_batches_updates_without_changing_the_probe(buffer_size, expected_rows):
    """Buffered updates are bounded by the buffer (plus one batch) and measure the same joint."""
    train, val = loaders(num_val=100, batch_size=16)
    records, metrics = [], []
    for size in (1, buffer_size):
        callback = PIDSchedulerCallback(
            NUM_CLASSES,
            ScriptedController({}),
            metric_factory=CountingFastPID,
            probe_buffer_size=size,
        )
        make_trainer(2, [callback]).fit(make_model(), train, val)
        records.append(callback.history)
        metrics.append(callback.metric.pair_metrics[0])
    # Every probe (2 epochs) folds the whole validation set in; the last flush is at epoch end.
    assert metrics[1].update_rows == expected_rows * 2
    assert not callback._buffer
    for per_batch, buffered in zip(*records, strict=True):
        for key in ("redundancy", "synergy", "mutual_information"):
            assert buffered[key] == pytest.approx(per_batch[key], abs=1e-9)
        assert buffered["unique"] == pytest.approx(per_batch["unique"], abs=1e-9)


def test_warns_when_a_monitor_jumps_at_the_switch(tmp_path):
    with pytest.warns(PIDScheduleWarning, match="EarlyStopping monitors 'val/loss'"):
        fit(FixedController(1), 1, extra_callbacks=[EarlyStopping(monitor="val/loss")])
    checkpoint = ModelCheckpoint(monitor="val/acc_fused", mode="max", dirpath=tmp_path)
    trainer = make_trainer(
        1,
        [PIDSchedulerCallback(NUM_CLASSES, FixedController(1)), checkpoint],
        enable_checkpointing=True,
    )
    with pytest.warns(PIDScheduleWarning, match="ModelCheckpoint monitors 'val/acc_fused'"):
        trainer.fit(make_model(), *loaders())


@pytest.mark.parametrize("controller", [JointController(), FixedController(0)])
def test_no_monitor_jumps_without_a_stage_one(controller):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(controller, 1, extra_callbacks=[EarlyStopping(monitor="val/loss")])
    assert not [w for w in caught if "jumps at the stage switch" in str(w.message)]


def test_pid_monitors_need_a_probe_at_every_validation(tmp_path):
    callback = PIDSchedulerCallback(NUM_CLASSES, probe_every_n_epochs=2)
    checkpoint = ModelCheckpoint(monitor="pid/synergy", mode="max", dirpath=tmp_path)
    trainer = make_trainer(2, [callback, checkpoint], enable_checkpointing=True)
    monitored = r"ModelCheckpoint\(monitor='pid/synergy'\) monitors a value logged only on"
    fixes = (
        r"Trainer\(check_val_every_n_epoch=2\) or PIDSchedulerCallback\(probe_every_n_epochs=1\)"
    )
    with pytest.raises(ValueError, match=rf"{monitored}.*{fixes}"):
        trainer.fit(make_model(), *loaders())
    early = EarlyStopping(monitor="pid/synergy", mode="max")
    with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='pid/synergy'\) monitors"):
        make_trainer(2, [PIDSchedulerCallback(NUM_CLASSES, probe_every_n_epochs=2), early]).fit(
            make_model(), *loaders()
        )
    # Validation only on probe epochs, or a lenient EarlyStopping, is fine.
    checkpoint = ModelCheckpoint(monitor="pid/synergy", mode="max", dirpath=tmp_path)
    callback = PIDSchedulerCallback(NUM_CLASSES, probe_every_n_epochs=2)
    make_trainer(
        2, [callback, checkpoint], enable_checkpointing=True, check_val_every_n_epoch=2
    ).fit(make_model(), *loaders())
    assert checkpoint.best_model_score is not None and len(callback.history) == 1
    lenient = EarlyStopping(monitor="pid/synergy", mode="max", strict=False)
    make_trainer(2, [PIDSchedulerCallback(NUM_CLASSES, probe_every_n_epochs=2), lenient]).fit(
        make_model(), *loaders()
    )


# --- bad configurations ------------------------------------------------------------------------


def _fit_one_epoch(callback, model=None, **trainer_kwargs):
    model = model or make_model()
    make_trainer(1, [callback], **trainer_kwargs).fit(model, *loaders())


def test_no_validation_data_fails_at_setup():
    callback = PIDSchedulerCallback(NUM_CLASSES)
    train, _ = loaders()
    trainer = make_trainer(1, [callback])
    with pytest.raises(ValueError, match=r"no validation loop.*val_dataloaders"):
        trainer.fit(make_model(), train)
    with pytest.raises(ValueError, match="limit_val_batches"):
        make_trainer(1, [callback], limit_val_batches=0).fit(make_model(), *loaders())
    # Schedules that measure nothing need no validation data.
    make_trainer(1, [PIDSchedulerCallback(NUM_CLASSES, FixedController(1))]).fit(
        make_model(), train
    )


def test_probe_epochs_must_be_validation_epochs():
    with pytest.raises(ValueError, match="multiple of Trainer\\(check_val_every_n_epoch=2\\)"):
        _fit_one_epoch(
            PIDSchedulerCallback(NUM_CLASSES, probe_every_n_epochs=3), check_val_every_n_epoch=2
        )
    # 1 (an int) validates after every training batch, though 1 == 1.0.
    for interval in (0.5, 1):
        with pytest.raises(ValueError, match=rf"val_check_interval=1\.0.*got {interval}\."):
            _fit_one_epoch(PIDSchedulerCallback(NUM_CLASSES), val_check_interval=interval)


def test_an_empty_validation_loader_fails_at_the_first_probe_epoch():
    train, _ = loaders()
    empty = DataLoader(make_data(num_samples=0), batch_size=8)
    callback = PIDSchedulerCallback(
        NUM_CLASSES, PIDController(min_unimodal_epochs=1, max_unimodal_epochs=2)
    )
    with pytest.raises(RuntimeError, match=r"no validation batch.*dataloader is not empty"):
        make_trainer(3, [callback]).fit(make_model(), train, empty)
    assert callback.history == [] and callback.stage == "unimodal"


def test_num_classes_and_name_mismatches_fail_at_setup():
    with pytest.raises(ValueError, match="num_classes=3 but 4 was expected"):
        _fit_one_epoch(PIDSchedulerCallback(4))

    class NamedData(LightningDataModule):
        modality_names = ("audio", "video")

        def train_dataloader(self):
            return loaders()[0]

        def val_dataloader(self):
            return loaders()[1]

    trainer = make_trainer(1, [PIDSchedulerCallback(NUM_CLASSES)])
    with pytest.raises(ValueError, match=r"data provides modalities \['audio', 'video'\]"):
        trainer.fit(make_model(), datamodule=NamedData())


def test_module_without_the_protocol_fails_at_setup():
    class Plain(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)

        def training_step(self, batch, batch_idx):
            return self.layer(torch.ones(1, 2)).sum()

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match=r"does not implement.*missing: `modality_names`"):
        _fit_one_epoch(PIDSchedulerCallback(NUM_CLASSES), model=Plain())
    with pytest.raises(TypeError, match="modality_features"):
        _fit_one_epoch(
            PIDSchedulerCallback(
                NUM_CLASSES,
                metric_factory=ClusteredFastPID,
                probe_inputs="features",
            ),
            model=_without_features(),
        )


def _without_features():
    model = make_model()
    model.modality_features = None
    return model


def test_ddp_without_unused_parameters_fails_at_setup():
    # Only the setup hook runs: a real DDP fit would start a process group in the test process.
    def setup(strategy):
        callback = PIDSchedulerCallback(NUM_CLASSES, FixedController(1))
        callback.setup(make_trainer(1, [callback], strategy=strategy), make_model(), "fit")

    with pytest.raises(ValueError, match="strategy='ddp_find_unused_parameters_true'"):
        setup("ddp")
    setup("ddp_find_unused_parameters_true")
    setup(DDPStrategy(find_unused_parameters=True))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"controller": "pid"}, TypeError, "controller"),
        ({"probe_every_n_epochs": 0}, ValueError, "probe_every_n_epochs"),
        ({"discretization": "kmeans"}, ValueError, "discretization"),
        ({"probe_inputs": "features"}, ValueError, "metric_factory"),
        ({"probe_inputs": "embeddings"}, ValueError, "probe_inputs"),
        ({"metric_factory": FastPID, "discretization": "hard"}, ValueError, "metric_factory"),
        ({"metric_factory": 3}, TypeError, "metric_factory"),
        ({"probe_buffer_size": 0}, ValueError, "probe_buffer_size"),
        ({"probe_tol": 0}, ValueError, "probe_tol"),
        ({"metric_factory": FastPID, "probe_tol": 1e-7}, ValueError, "metric_factory"),
        ({"probe_buffer_size": 8.5}, ValueError, "probe_buffer_size"),
        ({"num_bootstrap": -1}, ValueError, "num_bootstrap"),
        ({"num_bootstrap": 1.5}, ValueError, "num_bootstrap"),
        ({"num_bootstrap": 1}, ValueError, "at least 2"),
        ({"metric_factory": FastPID, "num_bootstrap": 8}, ValueError, "metric_factory"),
        ({"interval_level": 1.0}, ValueError, "interval_level"),
        ({"interval_level": True}, ValueError, "interval_level"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(error, match=match):
        PIDSchedulerCallback(**arguments)


def test_metric_factory_must_build_a_metric():
    with pytest.raises(TypeError, match="torchmetrics Metric"):
        _fit_one_epoch(
            PIDSchedulerCallback(NUM_CLASSES, metric_factory=lambda num_classes: object())
        )
