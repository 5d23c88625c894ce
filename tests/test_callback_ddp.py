"""PIDSchedulerCallback under DDP: 2 CPU processes (gloo, ddp_spawn) decide and train alike."""

from __future__ import annotations

import os

import pytest
import torch
from _lightning_helpers import (
    NUM_CLASSES,
    assert_states_differ,
    assert_states_equal,
    branch_state,
    loaders,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch import Callback

from pidsched import PIDController, PIDSchedulerCallback

WORLD_SIZE = 2


class RankDump(Callback):
    """Each rank saves its schedule, its branch "a" after every epoch and its final weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.a_states: list[dict[str, torch.Tensor]] = []

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)  # a fresh process: tiny models run faster on one thread

    def on_train_epoch_end(self, trainer, pl_module):
        self.a_states.append(branch_state(pl_module, "a"))

    def on_fit_end(self, trainer, pl_module):
        (schedule,) = [c for c in trainer.callbacks if isinstance(c, PIDSchedulerCallback)]
        dump = {
            "history": schedule.history,
            "switch_epoch": schedule.switch_epoch,
            "a_states": self.a_states,
            "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        }
        torch.save(dump, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


@pytest.mark.ddp
def test_two_ranks_make_identical_decisions_and_keep_identical_weights(tmp_path):
    controller = PIDController(min_unimodal_epochs=3, max_unimodal_epochs=3, max_switches=0)
    callback = PIDSchedulerCallback(NUM_CLASSES, controller)
    trainer = make_trainer(
        5,
        [callback, RankDump(str(tmp_path))],
        devices=WORLD_SIZE,
        strategy="ddp_spawn_find_unused_parameters_true",
    )
    trainer.fit(make_model(), *loaders(signal={"a": 3.0, "b": 0.5}))

    dumps = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    decisions = [[(r["epoch"], r["stage"], r["paused"]) for r in d["history"]] for d in dumps]
    assert (
        decisions[0]
        == decisions[1]
        == [
            (0, "unimodal", []),
            (1, "unimodal", ["a"]),
            (2, "unimodal", ["a"]),
            (3, "joint", []),
            (4, "joint", []),
        ]
    )
    assert dumps[0]["history"] == dumps[1]["history"]  # rank 0's probe is broadcast
    assert dumps[0]["switch_epoch"] == dumps[1]["switch_epoch"] == 3
    assert_states_equal(dumps[0]["weights"], dumps[1]["weights"])
    for dump in dumps:
        # Paused in epochs 1 and 2: bit-for-bit unchanged on every rank despite the DDP sync.
        assert_states_equal(dump["a_states"][1], dump["a_states"][0])
        assert_states_equal(dump["a_states"][2], dump["a_states"][0])
        assert_states_differ(dump["a_states"][4], dump["a_states"][2])
