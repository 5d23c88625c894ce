"""``trainer.fit(torch.compile(model))`` with PIDSchedulerCallback: only the pure tensor pieces
are compiled, a bounded number of graphs per stage / paused set, none in steady-state epochs."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from _lightning_helpers import (
    NUM_CLASSES,
    ScriptedController,
    assert_states_equal,
    loaders,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch import Callback
from test_cli import run_two_stages
from test_trainer_features import SCRIPT, BranchRecorder, assert_schedule_applied

from pidsched import PIDSchedulerCallback

MAX_EPOCHS = 6


class CountingBackend:
    """A dynamo backend that runs the captured graph as is and counts compilations."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


class GraphsPerEpoch(Callback):
    def __init__(self, backend: CountingBackend) -> None:
        self.backend = backend
        self.after_epoch: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.after_epoch.append(self.backend.graphs)


def _fit(compiled: bool):
    torch._dynamo.reset()
    backend = CountingBackend()
    callback = PIDSchedulerCallback(NUM_CLASSES, ScriptedController(SCRIPT))
    recorder, graphs = BranchRecorder(), GraphsPerEpoch(backend)
    model = make_model()
    trainer = make_trainer(MAX_EPOCHS, [callback, recorder, graphs])
    # 100 samples: the last batch of each epoch is smaller, so a dynamic batch size is needed.
    train, val = loaders(num_train=100)
    trainer.fit(torch.compile(model, backend=backend) if compiled else model, train, val)
    return model, callback, recorder, graphs.after_epoch


@pytest.fixture(scope="module")
def runs():
    return _fit(compiled=True), _fit(compiled=False)


def test_the_schedule_applies_under_compile(runs):
    (_, callback, recorder, _), _ = runs
    assert callback.switch_epoch == 4
    assert_schedule_applied(recorder)


def test_graphs_are_bounded_and_steady_epochs_compile_nothing(runs):
    (_, _, _, after_epoch), _ = runs
    assert after_epoch[0] > 0  # the pieces really are compiled
    # Epoch 2 repeats epoch 1's paused set, epoch 3 trains like epoch 0, epoch 5 like epoch 4.
    assert after_epoch[2] == after_epoch[1]
    assert after_epoch[3] == after_epoch[2]
    assert after_epoch[5] == after_epoch[4]
    # Stage 2 adds the fusion head's training graphs, a few, no more.
    assert after_epoch[4] - after_epoch[3] <= 4
    assert after_epoch[-1] < torch._dynamo.config.recompile_limit * 2


def test_compiled_pieces_train_exactly_like_eager(runs):
    (compiled_model, compiled_cb, *_), (eager_model, eager_cb, *_) = runs
    assert compiled_cb.history == eager_cb.history
    assert_states_equal(compiled_model.state_dict(), eager_model.state_dict())


def test_compile_pieces_keeps_the_module_layout():
    model = make_model()
    keys = list(model.state_dict())
    assert model.compile_pieces(backend="eager") is model
    assert list(model.state_dict()) == keys
    inputs = {"a": torch.randn(4, 6), "b": torch.randn(4, 6)}
    model.eval()
    assert model(inputs).shape == (4, NUM_CLASSES)


@pytest.mark.slow
def test_the_app_compiles(tmp_path):
    summary = run_two_stages(tmp_path, "compile={backend:eager}")
    assert summary["switch_epoch"] == 1 and summary["test_acc"]["fused"] > 0.3
