"""Trainer features with PIDSchedulerCallback: accumulation, clipping, several validation
dataloaders, EarlyStopping / ModelCheckpoint on per-modality metrics, mid-epoch resume."""

from __future__ import annotations

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
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from pidsched import PIDSchedulerCallback
from pidsched.controllers import Decision

# Pause "a" for epochs 1-2, train both in epoch 3, switch to the joint stage from epoch 4.
SCRIPT = {
    1: Decision(paused=frozenset({"a"})),
    3: Decision(paused=frozenset()),
    4: Decision(paused=frozenset(), switch=True),
}
MAX_EPOCHS = 5


class BranchRecorder(Callback):
    """Copies of branch ``a``, the fusion head and the stage at every training epoch's ends."""

    def __init__(self) -> None:
        self.starts: dict[int, dict] = {}
        self.ends: dict[int, dict] = {}

    def _record(self, pl_module: Any) -> dict:
        fusion = {k: v.detach().clone() for k, v in pl_module.fusion.state_dict().items()}
        return {"a": branch_state(pl_module, "a"), "fusion": fusion, "stage": pl_module.stage}

    def on_train_epoch_start(self, trainer, pl_module):
        self.starts[trainer.current_epoch] = self._record(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends[trainer.current_epoch] = self._record(pl_module)


def fit_scheduled(max_epochs: int = MAX_EPOCHS, val=None, callbacks=(), **trainer_kwargs):
    """Fit the tiny model under SCRIPT; return (callback, recorder, model, trainer)."""
    callback = PIDSchedulerCallback(NUM_CLASSES, ScriptedController(SCRIPT))
    recorder = BranchRecorder()
    model = make_model()
    trainer = make_trainer(max_epochs, [callback, recorder, *callbacks], **trainer_kwargs)
    train, default_val = loaders()
    trainer.fit(model, train, default_val if val is None else val)
    return callback, recorder, model, trainer


def assert_schedule_applied(recorder: BranchRecorder) -> None:
    """Paused "a" bit-for-bit frozen in epochs 1-2, trained again in 3; fusion trained in 4."""
    for epoch in (1, 2):
        assert_states_equal(recorder.starts[epoch]["a"], recorder.ends[epoch]["a"])
    assert_states_differ(recorder.starts[3]["a"], recorder.ends[3]["a"])
    assert_states_equal(recorder.starts[3]["fusion"], recorder.ends[3]["fusion"])
    assert recorder.starts[4]["stage"] == "joint"
    assert_states_differ(recorder.starts[4]["fusion"], recorder.ends[4]["fusion"])


@pytest.mark.parametrize(
    "trainer_kwargs",
    [
        {"accumulate_grad_batches": 2},
        {"gradient_clip_val": 0.05},
        {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"},
    ],
    ids=["accumulate-2", "clip-norm", "clip-value"],
)
def test_pausing_is_exact_with_accumulation_and_clipping(trainer_kwargs):
    callback, recorder, *_ = fit_scheduled(**trainer_kwargs)
    assert callback.switch_epoch == 4
    assert_schedule_applied(recorder)


def test_several_validation_dataloaders_probe_the_first():
    _, first_val = loaders()
    _, other_val = loaders(signal={"a": 0.1, "b": 0.1}, num_val=32)
    callback, recorder, _, trainer = fit_scheduled(val=[first_val, other_val])
    single, *_ = fit_scheduled(val=first_val)
    assert_schedule_applied(recorder)
    # The probes measured the first dataloader only: the same numbers as with it alone.
    assert [r["unique"] for r in callback.history] == [r["unique"] for r in single.history]
    assert callback.history[-1]["val_acc"] == single.history[-1]["val_acc"]
    metrics = trainer.callback_metrics
    assert "val/acc_fused" in metrics and "val/acc_fused/dataloader_idx_1" in metrics


def test_checkpoint_on_a_per_modality_metric_works(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc_b", mode="max")
    _, recorder, *_ = fit_scheduled(callbacks=[checkpoint], enable_checkpointing=True)
    assert_schedule_applied(recorder)
    assert checkpoint.best_model_path and checkpoint.best_model_score is not None


def test_early_stopping_on_a_per_modality_metric_is_refused_at_setup():
    stopping = EarlyStopping(monitor="val/acc_a", patience=1)
    said = r"EarlyStopping\(monitor='val/acc_a'\) monitors.*max_unimodal"
    with pytest.raises(ValueError, match=said):
        fit_scheduled(callbacks=[stopping])


def test_mid_epoch_resume_keeps_the_paused_branch_frozen(tmp_path):
    # 3 batches per epoch: step 4 is saved after the first batch of epoch 1 ("a" paused).
    saver = ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{epoch}-{step}"
    )
    reference, *_ = fit_scheduled(callbacks=[saver], enable_checkpointing=True)
    ckpt_path = tmp_path / "epoch=1-step=4.ckpt"
    assert ckpt_path.is_file()

    callback = PIDSchedulerCallback(NUM_CLASSES, ScriptedController(SCRIPT))
    recorder = BranchRecorder()
    model = make_model(seed=1)
    frozen = []

    class Spy(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                frozen.append(branch_state(pl_module, "a"))
                assert pl_module.paused == {"a"} and not pl_module.encoders["a"].training

    trainer = make_trainer(MAX_EPOCHS, [callback, recorder, Spy()])
    trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
    assert len(frozen) == 2  # the two batches left of epoch 1
    assert_states_equal(frozen[0], recorder.ends[1]["a"])
    assert_states_equal(frozen[0], recorder.ends[2]["a"])
    assert callback.switch_epoch == reference.switch_epoch == 4
    assert_states_differ(recorder.starts[3]["a"], recorder.ends[3]["a"])


def test_the_stage_is_saved_with_the_callback_not_the_module(tmp_path):
    # One owner of the schedule's state: the callback, which restores it on any module built on
    # the MultimodalModule protocol (the mid-epoch resume above relies on it).
    *_, trainer = fit_scheduled(max_epochs=2)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    checkpoint = torch.load(tmp_path / "x.ckpt", weights_only=True)
    (state,) = (v for k, v in checkpoint["callbacks"].items() if "PIDSchedulerCallback" in k)
    assert state["stage"] == "unimodal" and state["paused"] == ["a"]
    assert "pidsched_training_stage" not in checkpoint
