"""Tiny real models, data and trainers for the model and callback tests (CPU, seconds each)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pidsched.controllers import Controller, Decision
from pidsched.functional.pid import PIDResult
from pidsched.metrics import FastPID
from pidsched.models import MultimodalClassifier

NUM_CLASSES = 3
INPUT_DIM = 6
FEATURE_DIM = 8


class DictDataset(Dataset):
    """``(inputs: {modality: (D,)}, target)`` samples from stacked tensors."""

    def __init__(self, inputs: Mapping[str, Tensor], target: Tensor) -> None:
        self.inputs = dict(inputs)
        self.target = target

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], Tensor]:
        return {name: values[index] for name, values in self.inputs.items()}, self.target[index]


def mlp_encoder(in_dim: int = INPUT_DIM, out_dim: int = FEATURE_DIM, hidden: int = 16) -> nn.Module:
    """Linear -> BatchNorm -> ReLU -> Linear (BatchNorm so that pausing must keep its buffers)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
    )


def make_model(
    names: Sequence[str] = ("a", "b"), seed: int = 0, **kwargs: Any
) -> MultimodalClassifier:
    """A MultimodalClassifier with one MLP encoder per name, seeded for reproducible weights."""
    torch.manual_seed(seed)
    kwargs.setdefault(
        "stage1_optimizer", {"name": "SGD", "lr": 0.2, "momentum": 0.9, "weight_decay": 1e-3}
    )
    kwargs.setdefault(
        "stage2_optimizer", {"name": "SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-3}
    )
    return MultimodalClassifier(
        {name: mlp_encoder() for name in names},
        {name: FEATURE_DIM for name in names},
        NUM_CLASSES,
        **kwargs,
    )


def make_data(
    names: Sequence[str] = ("a", "b"),
    num_samples: int = 96,
    signal: Mapping[str, float] | None = None,
    seed: int = 0,
) -> DictDataset:
    """Labels in K classes; modality m sees ``signal[m] * onehot(y)`` (padded) plus unit noise.

    A large signal makes a modality learnable fast and its head confident; a small one makes it
    slow. Default: every modality has signal 1.5.
    """
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (num_samples,), generator=generator)
    onehot = nn.functional.one_hot(target, NUM_CLASSES).float()
    padded = torch.cat([onehot, torch.zeros(num_samples, INPUT_DIM - NUM_CLASSES)], dim=1)
    inputs = {}
    for name in names:
        strength = 1.5 if signal is None else signal[name]
        noise = torch.randn(num_samples, INPUT_DIM, generator=generator)
        inputs[name] = strength * padded + noise
    return DictDataset(inputs, target)


def loaders(
    names: Sequence[str] = ("a", "b"),
    signal: Mapping[str, float] | None = None,
    num_train: int = 96,
    num_val: int = 64,
    batch_size: int = 32,
) -> tuple[DataLoader, DataLoader]:
    """Unshuffled train and validation loaders (unshuffled: a resumed run sees the same order)."""
    train = make_data(names, num_train, signal, seed=1)
    val = make_data(names, num_val, signal, seed=2)
    return DataLoader(train, batch_size=batch_size), DataLoader(val, batch_size=batch_size)


def make_trainer(max_epochs: int, callbacks: Sequence[Any] = (), **kwargs: Any) -> Trainer:
    """A quiet deterministic CPU trainer."""
    seed_everything(0, verbose=False)
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "deterministic": True,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return Trainer(callbacks=list(callbacks), **options)


class ScriptedController(Controller):
    """Stage-1 decisions read from a script ``{epochs_completed: Decision}`` (default: no change).

    Records every call as ``(epochs_completed, probe is not None)`` and every probe it was given
    in ``probes`` (not checkpointed).
    """

    def __init__(
        self,
        script: Mapping[int, Decision],
        needs_measurements: bool = True,
        needs_replicates: bool = False,
    ) -> None:
        self.script = dict(script)
        self.needs_measurements = needs_measurements
        self.needs_replicates = needs_replicates
        self.calls: list[tuple[int, bool]] = []
        self.probes: list[Mapping[str, Any]] = []
        self.paused: frozenset[str] = frozenset()

    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        self.calls.append((epochs_completed, probe is not None))
        if probe is not None:
            self.probes.append(probe)
        decision = self.script.get(epochs_completed, Decision(paused=self.paused))
        self.paused = decision.paused
        return decision

    def state_dict(self) -> dict[str, Any]:
        return {"paused": sorted(self.paused), "calls": [list(call) for call in self.calls]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.paused = frozenset(state_dict["paused"])
        self.calls = [tuple(call) for call in state_dict["calls"]]


class UncertifiedFastPID(FastPID):
    """FastPID whose computes number ``uncertified`` (counted from 0) report a gap of 0.5 bits."""

    def __init__(self, num_classes: int, uncertified: Collection[int] = ()) -> None:
        super().__init__(num_classes, tol=1e-5)
        self.uncertified = set(uncertified)
        self.computes = 0

    def compute(self) -> PIDResult:
        result = super().compute()
        self.computes += 1
        if self.computes - 1 in self.uncertified:
            return dataclasses.replace(result, gap=torch.tensor(0.5, dtype=torch.float64))
        return result


def branch_state(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Copies of every parameter and buffer of modality ``name``'s encoder and head."""
    state = {
        f"encoder.{k}": v.detach().clone() for k, v in model.encoders[name].state_dict().items()
    }
    state.update(
        {f"head.{k}": v.detach().clone() for k, v in model.heads[name].state_dict().items()}
    )
    return state


def assert_states_equal(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> None:
    """Bitwise equality of two name -> tensor mappings."""
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def assert_states_differ(first: Mapping[str, Tensor], second: Mapping[str, Tensor]) -> None:
    """At least one tensor changed."""
    assert any(not torch.equal(first[key], second[key]) for key in first)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run torch on one thread: tiny models are slower with more, badly so on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
