"""Configurations that run but do not do what was meant: each is warned about or refused."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from _lightning_helpers import (
    NUM_CLASSES,
    DictDataset,
    ScriptedController,
    loaders,
    make_data,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler

from pidsched import FixedController, PIDController, PIDSchedulerCallback, PIDScheduleWarning
from pidsched.callbacks.trainer_checks import padded_validation, spawns_processes
from pidsched.controllers import Decision
from pidsched.models import MultimodalClassifier


def _schedule_warnings(caught, text):
    return [w for w in caught if issubclass(w.category, PIDScheduleWarning) and text in str(w)]


@pytest.mark.parametrize(
    ("controller", "max_epochs", "match"),
    [
        (FixedController(unimodal_epochs=2), 2, "stage 2 never starts"),
        (PIDController(min_unimodal_epochs=1, max_unimodal_epochs=3), 2, "starts only if"),
        (PIDController(min_unimodal_epochs=1, max_unimodal_epochs=2), 2, "starts only if"),
    ],
    ids=["fixed-at-budget", "pid-below-budget", "pid-at-budget"],
)
def test_max_epochs_that_cannot_reach_stage_two_warn_at_setup(controller, max_epochs, match):
    callback = PIDSchedulerCallback(NUM_CLASSES, controller)
    trainer = make_trainer(max_epochs, [callback])
    with pytest.warns(PIDScheduleWarning, match=f"max_epochs={max_epochs}.*{match}"):
        callback.setup(trainer, make_model(), "fit")


def test_max_epochs_beyond_the_budget_do_not_warn():
    pid = PIDController(min_unimodal_epochs=1, max_unimodal_epochs=2)
    for controller in (FixedController(unimodal_epochs=2), pid):
        callback = PIDSchedulerCallback(NUM_CLASSES, controller)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback.setup(make_trainer(3, [callback]), make_model(), "fit")
        assert not _schedule_warnings(caught, "max_epochs")


def test_a_fit_that_ends_in_stage_one_warns_and_leaves_switch_epoch_none():
    callback = PIDSchedulerCallback(NUM_CLASSES, FixedController(unimodal_epochs=2))
    with pytest.warns(PIDScheduleWarning, match="stage 2 never started.*fusion head"):
        make_trainer(2, [callback]).fit(make_model(), *loaders())
    assert callback.switch_epoch is None
    # Reaching stage 2 gives no such warning.
    callback = PIDSchedulerCallback(NUM_CLASSES, FixedController(unimodal_epochs=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(2, [callback]).fit(make_model(), *loaders())
    assert callback.switch_epoch == 1 and not _schedule_warnings(caught, "never started")


class LeakyPauseModel(MultimodalClassifier):
    """A user module whose set_training_stage ignores ``paused``: paused branches still train."""

    def set_training_stage(self, stage, paused):
        super().set_training_stage(stage, frozenset())


@pytest.mark.parametrize("leaky", [True, False], ids=["leaky-module", "real-pause"])
def test_a_paused_branch_that_changes_is_named_once(leaky):
    # "a" is paused in epochs 1-3 (decided after epoch 1, counted from 1).
    script = {1: Decision(paused=frozenset({"a"}))}
    model = make_model(names=("a", "b"))
    if leaky:
        model.__class__ = LeakyPauseModel
    callback = PIDSchedulerCallback(NUM_CLASSES, ScriptedController(script, False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(4, [callback]).fit(model, *loaders())
    leaks = _schedule_warnings(caught, "were paused in epoch")
    if leaky:
        (leak,) = leaks  # once, at the first paused epoch, naming the branch
        assert "['a'] were paused in epoch 1" in str(leak.message)
    else:
        assert leaks == []


class RecordBatchModel(MultimodalClassifier):
    """Validation batches are ``{"inputs": ..., "target": ...}`` records, not (dict, target)."""

    def validation_step(self, batch, batch_idx):
        return super().validation_step((batch["inputs"], batch["target"]), batch_idx)


class RecordDataset(DictDataset):
    def __getitem__(self, index):
        inputs, target = super().__getitem__(index)
        return {"inputs": inputs, "target": target}


def test_validation_batches_of_another_layout_fail_with_the_expected_layout():
    data = make_data(num_samples=32)
    val = DataLoader(RecordDataset(data.inputs, data.target), batch_size=16)
    model = make_model()
    model.__class__ = RecordBatchModel
    callback = PIDSchedulerCallback(NUM_CLASSES, ScriptedController({}))
    with pytest.raises(ValueError, match=r"laid out as \(inputs: dict.*got a dict"):
        make_trainer(1, [callback]).fit(model, loaders()[0], val)


def test_missing_lightning_internals_fail_with_a_clear_error():
    strategy = DDPStrategy(find_unused_parameters=True)
    del strategy._ddp_kwargs
    callback = PIDSchedulerCallback(NUM_CLASSES, FixedController(1))
    with pytest.raises(RuntimeError, match=r"private `DDPStrategy._ddp_kwargs`.*supports"):
        callback.setup(make_trainer(1, [callback], strategy=strategy), make_model(), "fit")


def test_a_validation_sampler_that_repeats_samples_is_warned_about_once():
    """Under DDP, Lightning's DistributedSampler pads the ranks' shares with repeated samples,
    and the synced probe counted them twice (3e-4 bits off at 63 samples on 2 ranks)."""
    train, val = loaders(num_val=63)
    padded = DataLoader(
        val.dataset,
        batch_size=32,
        sampler=DistributedSampler(val.dataset, num_replicas=2, rank=0, shuffle=False),
    )
    callback = PIDSchedulerCallback(NUM_CLASSES, PIDController(min_unimodal_epochs=5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(2, [callback]).fit(make_model(), train, padded)
    said = [str(w.message) for w in caught if "DistributedSampler repeats 1 of" in str(w.message)]
    assert len(said) == 1 and "UnrepeatedDistributedSampler" in said[0]


def test_padded_validation_counts_repeated_and_dropped_samples():
    dataset = list(range(63))

    def trainer_with(sampler):
        return SimpleNamespace(val_dataloaders=[DataLoader(dataset, sampler=sampler)])

    pad = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=False)
    drop = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=False, drop_last=True)
    exact = UnrepeatedDistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)
    assert padded_validation(trainer_with(pad)) == (1, 0)
    assert padded_validation(trainer_with(drop)) == (0, 1)
    assert padded_validation(trainer_with(exact)) is None
    assert padded_validation(trainer_with(None)) is None


def test_a_spawned_fit_is_warned_about_and_recognised():
    """ddp_spawn runs the schedule in spawned processes: the caller's callback was left with
    an empty history and stage 1, silently."""
    callback = PIDSchedulerCallback(NUM_CLASSES, FixedController(1))
    spawn = make_trainer(1, [callback], devices=2, strategy="ddp_spawn_find_unused_parameters_true")
    assert spawns_processes(spawn)
    with pytest.warns(PIDScheduleWarning, match="spawned processes.*not updated|stay unset"):
        callback.setup(spawn, make_model(), "fit")
    script = make_trainer(1, devices=2, strategy="ddp_find_unused_parameters_true")
    assert not spawns_processes(script) and not spawns_processes(make_trainer(1))


def test_an_exact_probe_of_many_classes_is_warned_about():
    """A 309-class default probe did not finish in 10 minutes, silently (stop 28's QA)."""
    big = PIDSchedulerCallback(129, PIDController())
    with pytest.warns(PIDScheduleWarning, match=r"129 x 129 x 129 joint.*ClusteredFastPID"):
        big._names = ("a", "b")
        big._make_metric()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = PIDSchedulerCallback(128, PIDController())
        small._names = ("a", "b")
        small._make_metric()


class SharedTemperatureModel(MultimodalClassifier):
    """Both heads' logits divided by one learnable temperature, outside encoders and heads:
    the unpaused branch's loss trains it, and the paused branch's predictions move with it."""

    def _classify(self, name, features):
        return super()._classify(name, features) / self.log_temperature.exp()


def test_parameters_outside_the_branches_trained_during_a_pause_are_warned_about():
    pause_a = {1: Decision(paused=frozenset({"a"}))}
    plain = make_model()
    shared = make_model()
    shared.__class__ = SharedTemperatureModel
    shared.log_temperature = torch.nn.Parameter(torch.zeros(()))
    for model, expected in ((plain, 0), (shared, 1)):
        callback = PIDSchedulerCallback(NUM_CLASSES, ScriptedController(pause_a))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(3, [callback]).fit(model, *loaders())
        said = [str(w.message) for w in caught if "outside the training branches" in str(w.message)]
        assert len(said) == expected
    assert "log_temperature" in said[0] and "['a'] is paused" in said[0]


def test_val_acc_is_read_under_the_first_dataloaders_suffixed_names():
    """With several validation dataloaders Lightning names a module's val/acc_<m> of the first
    one val/acc_<m>/dataloader_idx_0, and the records' val_acc stayed empty, silently."""
    callback = PIDSchedulerCallback(NUM_CLASSES, PIDController())
    callback._names = ("a", "b")
    callback.metric = callback._make_metric()
    _, target = make_data(num_samples=64)[:]
    callback.metric.update({name: torch.randn(64, NUM_CLASSES) for name in "ab"}, target)
    logged = {
        "val/acc_a/dataloader_idx_0": torch.tensor(0.5),
        "val/acc_b": torch.tensor(0.25),
        "val/acc_fused/dataloader_idx_1": torch.tensor(0.9),  # another dataloader's
    }
    trainer = SimpleNamespace(callback_metrics=logged, current_epoch=0)
    record = callback._probe_record(trainer, callback.metric.compute())
    assert record["val_acc"] == {"a": 0.5, "b": 0.25}
