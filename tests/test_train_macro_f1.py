"""Macro-F1 in ``pidsched-train``'s summary: every head, scored on the test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

# The module, not the function: pytest would collect a `test_*` name imported into this file.
from pidsched.cli import train as train_cli

NUM_CLASSES = 4


class LogitsAreInputs(nn.Module):
    """A stand-in classifier whose modality logits are its inputs; fused = their sum."""

    num_classes = NUM_CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def modality_logits(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"a": inputs["a"], "b": inputs["b"]}

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return inputs["a"] + inputs["b"]


class OnlyTestSplit:
    """A data module with only a test split, in batches of ``(inputs, target)``."""

    def __init__(self, inputs: dict[str, Tensor], target: Tensor, batch_size: int) -> None:
        rows = [({k: v[i] for k, v in inputs.items()}, target[i]) for i in range(len(target))]
        self.loader = DataLoader(rows, batch_size=batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.loader


def reference_macro_f1(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in ``predicted`` or ``target`` of 2TP / (2TP + FP + FN)."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((predicted == c) & (target == c))
        fp = np.sum((predicted == c) & (target != c))
        fn = np.sum((predicted != c) & (target == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


@pytest.mark.parametrize("batch_size", [7, 200])
def test_macro_f1_matches_a_reference_for_every_head(batch_size):
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, NUM_CLASSES, (50,), generator=generator)
    inputs = {name: torch.randn(50, NUM_CLASSES, generator=generator) for name in ("a", "b")}
    # Head "a" is mostly right, so the heads' scores differ and a mix-up would show.
    inputs["a"][torch.arange(40), target[:40]] += 4.0

    scores = train_cli.test_macro_f1(LogitsAreInputs(), OnlyTestSplit(inputs, target, batch_size))

    assert list(scores) == ["a", "b", "fused"]
    expected = {
        "a": inputs["a"].argmax(-1),
        "b": inputs["b"].argmax(-1),
        "fused": (inputs["a"] + inputs["b"]).argmax(-1),
    }
    for head, predicted in expected.items():
        reference = reference_macro_f1(predicted.numpy(), target.numpy(), NUM_CLASSES)
        assert scores[head] == pytest.approx(reference, abs=1e-6), head
    assert scores["a"] > scores["b"]


def test_macro_f1_differs_from_accuracy_under_class_imbalance():
    # 9 of class 0 predicted right, the single class-1 sample predicted wrong:
    # accuracy 0.9, but macro-F1 averages F1(0) = 18/19 with F1(1) = 0.
    target = torch.tensor([0] * 9 + [1])
    logits = torch.zeros(10, 2)
    logits[:, 0] = 1.0
    inputs = {"a": logits, "b": torch.zeros(10, 2)}

    class TwoClasses(LogitsAreInputs):
        num_classes = 2

    scores = train_cli.test_macro_f1(TwoClasses(), OnlyTestSplit(inputs, target, 4))

    assert scores["a"] == pytest.approx((18 / 19) / 2)
