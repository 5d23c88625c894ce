"""Resuming a two-stage fit from a checkpoint gives the same decisions and weights."""

from __future__ import annotations

import pytest
import torch
from _lightning_helpers import (
    NUM_CLASSES,
    assert_states_equal,
    loaders,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch.callbacks import ModelCheckpoint

from pidsched import PIDController, PIDSchedulerCallback

MAX_EPOCHS = 7
BOOTSTRAP = 16
SIGNAL = {"a": 3.0, "b": 0.5}  # "a" dominates at once, so it is paused from epoch 1


def _run(checkpoint_dir, ckpt_path=None, **callback_kwargs):
    controller = PIDController(min_unimodal_epochs=4, max_unimodal_epochs=4, max_switches=0)
    callback = PIDSchedulerCallback(NUM_CLASSES, controller, **callback_kwargs)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    model = make_model(stage2_scheduler={"name": "StepLR", "step_size": 1, "gamma": 0.7})
    trainer = make_trainer(MAX_EPOCHS, [callback, checkpoint], enable_checkpointing=True)
    trainer.fit(model, *loaders(signal=SIGNAL), ckpt_path=ckpt_path)
    return trainer, callback, model


def _decisions(callback):
    return [(r["epoch"], r["stage"], r["paused"]) for r in callback.history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run that leaves a checkpoint after every epoch."""
    checkpoint_dir = tmp_path_factory.mktemp("checkpoints")
    trainer, callback, model = _run(checkpoint_dir)
    # The interruption points below are where the test means them to be.
    assert _decisions(callback)[:5] == [
        (0, "unimodal", []),
        (1, "unimodal", ["a"]),
        (2, "unimodal", ["a"]),
        (3, "unimodal", ["a"]),
        (4, "joint", []),
    ]
    assert callback.switch_epoch == 4
    return checkpoint_dir, trainer, callback, model


@pytest.mark.parametrize(
    "epoch", [1, 5], ids=["interrupted-while-a-is-paused", "interrupted-in-stage-2"]
)
def test_resume_gives_the_same_decisions_and_weights(reference, epoch, tmp_path):
    checkpoint_dir, trainer, callback, model = reference
    resumed_trainer, resumed, resumed_model = _run(
        tmp_path, ckpt_path=checkpoint_dir / f"epoch={epoch}.ckpt"
    )
    assert _decisions(resumed) == _decisions(callback)
    assert resumed.switch_epoch == callback.switch_epoch == 4
    assert resumed.stage == "joint" and resumed_model.stage == "joint"
    # The checkpoint carries the solver's warm start, so the resumed probes are the same solves.
    assert resumed.history == callback.history
    assert_states_equal(resumed_model.state_dict(), model.state_dict())
    optimizer, expected_optimizer = resumed_trainer.optimizers[0], trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == expected_optimizer.param_groups[0]["lr"]
    for param, expected_param in zip(resumed_model.parameters(), model.parameters(), strict=True):
        state, expected_state = optimizer.state[param], expected_optimizer.state[expected_param]
        assert state.keys() == expected_state.keys()
        for key in state:
            assert torch.equal(state[key], expected_state[key])


def test_checkpoint_state_is_versioned_plain_and_loads_safely(reference):
    checkpoint_dir, *_ = reference
    checkpoint = torch.load(checkpoint_dir / "epoch=2.ckpt", weights_only=True)
    state = checkpoint["callbacks"]["PIDSchedulerCallback"]
    assert state["version"] == PIDSchedulerCallback.STATE_VERSION
    assert state["stage"] == "unimodal" and state["paused"] == ["a"]
    assert state["switch_epoch"] is None and len(state["history"]) == 3
    assert set(state["peak_snapshot"]) == {"encoders", "heads"}
    assert all(t.device.type == "cpu" for t in state["peak_snapshot"]["encoders"].values())
    (warm,) = state["metric_warm_starts"]
    assert set(warm) == {"dual_1", "dual_2", "pair_mass"}
    assert warm["pair_mass"].shape == (NUM_CLASSES, NUM_CLASSES)

    # An older state without the newer keys still loads (defaults), a newer version is refused.
    callback = PIDSchedulerCallback(NUM_CLASSES)
    callback.load_state_dict({"stage": "joint", "switch_epoch": 3})
    assert callback.stage == "joint" and callback.paused == frozenset() and callback.history == []
    with pytest.raises(ValueError, match="newer pidsched"):
        callback.load_state_dict({"version": PIDSchedulerCallback.STATE_VERSION + 1})


@pytest.fixture(scope="module")
def bootstrap_reference(tmp_path_factory):
    """An uninterrupted run whose probes draw bootstrap replicates."""
    checkpoint_dir = tmp_path_factory.mktemp("bootstrap_checkpoints")
    _, callback, _ = _run(checkpoint_dir, num_bootstrap=BOOTSTRAP)
    assert all(record["interval"] is not None for record in callback.history)
    return checkpoint_dir, callback


def test_resume_with_bootstrap_repeats_the_intervals(bootstrap_reference, tmp_path):
    checkpoint_dir, callback = bootstrap_reference
    ckpt = checkpoint_dir / "epoch=1.ckpt"  # mid stage 1, "a" paused
    _, resumed, _ = _run(tmp_path / "resumed", ckpt_path=ckpt, num_bootstrap=BOOTSTRAP)
    assert resumed.history == callback.history

    # The checkpoint's bootstrap state is what makes them equal: without it they differ.
    checkpoint = torch.load(ckpt, weights_only=True)
    state = checkpoint["callbacks"]["PIDSchedulerCallback"]
    (bootstrap_state,) = state.pop("metric_bootstrap")
    assert bootstrap_state == {"seed": 0, "draws": 2}  # one update per probe, two probes
    torch.save(checkpoint, tmp_path / "without_bootstrap.ckpt")
    _, cold, _ = _run(
        tmp_path / "cold",
        ckpt_path=tmp_path / "without_bootstrap.ckpt",
        num_bootstrap=BOOTSTRAP,
    )
    assert cold.history[:2] == callback.history[:2]  # restored from the checkpoint
    assert cold.history[2]["interval"] != callback.history[2]["interval"]


def test_a_version_2_state_loads_with_the_new_history_keys(reference):
    _, _, callback, _ = reference
    state = callback.state_dict()
    old_history = [
        {k: v for k, v in record.items() if k not in ("certified", "interval")}
        for record in state["history"]
    ]
    del state["metric_bootstrap"], state["pause_checked"]
    loaded = PIDSchedulerCallback(NUM_CLASSES)
    loaded.load_state_dict({**state, "version": 2, "history": old_history})
    assert [r["certified"] for r in loaded.history] == [True] * len(old_history)
    assert all(r["interval"] is None for r in loaded.history)
    assert loaded.stage == callback.stage and loaded.switch_epoch == callback.switch_epoch
