"""Macro-F1 of every head: computed in ``test_step``, reported in ``pidsched-train``'s summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _hydra_helpers import compose_run
from _lightning_helpers import NUM_CLASSES, make_model, make_trainer
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from pidsched.cli.reload import load_run
from pidsched.cli.train import train
from pidsched.data import MultimodalTensorDataset


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


def _imbalanced_split(num_samples: int = 50) -> MultimodalTensorDataset:
    generator = torch.Generator().manual_seed(0)
    # Class 0 dominates, so macro-F1 and accuracy part ways.
    target = torch.multinomial(
        torch.tensor([0.7, 0.2, 0.1]), num_samples, True, generator=generator
    )
    inputs = {name: torch.randn(num_samples, 6, generator=generator) for name in ("a", "b")}
    inputs["a"][:, :NUM_CLASSES] += 2.0 * torch.nn.functional.one_hot(target, NUM_CLASSES)
    return MultimodalTensorDataset(inputs, target)


@pytest.mark.parametrize("batch_size", [7, 200])
def test_test_step_macro_f1_is_over_the_whole_split_for_every_head(batch_size):
    split = _imbalanced_split()
    model = make_model().eval()
    (results,) = make_trainer(1).test(
        model, DataLoader(split, batch_size=batch_size), verbose=False
    )

    with torch.no_grad():
        heads = dict(model.modality_logits(split.inputs), fused=model(split.inputs))
    target = split.target.numpy()
    for head, logits in heads.items():
        predicted = logits.argmax(-1).numpy()
        reference = reference_macro_f1(predicted, target, NUM_CLASSES)
        # Batches of 7 give the same score: the metric is not a mean of batch scores.
        assert results[f"test/macro_f1_{head}"] == pytest.approx(reference, abs=1e-6), head
    assert results["test/macro_f1_a"] != pytest.approx(results["test/acc_a"], abs=1e-3)


def test_reference_macro_f1_differs_from_accuracy_under_class_imbalance():
    # 9 of class 0 predicted right, the single class-1 sample wrong: accuracy 0.9, but
    # macro-F1 averages F1(0) = 18/19 with F1(1) = 0.
    predicted, target = np.zeros(10, dtype=int), np.array([0] * 9 + [1])
    assert reference_macro_f1(predicted, target, 2) == pytest.approx((18 / 19) / 2)


@pytest.mark.slow
def test_summary_macro_f1_matches_the_selected_checkpoint(tmp_path):
    overrides = [
        "data.num_samples=600",
        "data.task.num_classes=4",
        "schedule=fixed",
        "stage1_max_epochs=1",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
    ]
    cfg = compose_run(overrides, tmp_path)
    summary = train(cfg, tmp_path)
    # What pidsched-train writes before the job runs, so that load_run can rebuild the model.
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")

    model, datamodule = load_run(tmp_path)  # the checkpoint named in summary.json
    datamodule.setup()
    test = datamodule.splits["test"]
    with torch.no_grad():
        heads = dict(model.modality_logits(test.inputs), fused=model(test.inputs))
    assert list(summary["test_macro_f1"]) == list(heads) == ["fast", "slow", "fused"]
    for head, logits in heads.items():
        predicted = logits.argmax(-1).numpy()
        reference = reference_macro_f1(predicted, test.target.numpy(), 4)
        assert summary["test_macro_f1"][head] == pytest.approx(reference, abs=1e-6), head
