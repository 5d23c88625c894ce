"""Synthetic tasks: shapes, splits, the ground-truth PID, and modality competition."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pidsched.data import CompetitionTask, PIDStructureTask, SyntheticDataModule
from pidsched.functional import pid


def test_splits_are_disjoint_stratified_and_fixed_by_seed():
    dm = SyntheticDataModule(CompetitionTask(num_classes=4), num_samples=1200, batch_size=50)
    dm.setup()
    sizes = {split: len(ds) for split, ds in dm.splits.items()}
    assert sum(sizes.values()) == 1200 and sizes["val"] == pytest.approx(200, abs=4)
    train_share = torch.bincount(dm.splits["train"].target) / sizes["train"]
    for split in ("val", "test"):
        share = torch.bincount(dm.splits[split].target, minlength=4) / sizes[split]
        assert torch.allclose(share, train_share, atol=0.02)  # class balance kept per split
    rows = {s: {tuple(x.tolist()) for x in ds.inputs["fast"]} for s, ds in dm.splits.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"]

    same = SyntheticDataModule(CompetitionTask(num_classes=4), num_samples=1200)
    other = SyntheticDataModule(CompetitionTask(num_classes=4), num_samples=1200, seed=1)
    same.setup()
    other.setup()
    assert torch.equal(same.splits["val"].inputs["slow"], dm.splits["val"].inputs["slow"])
    assert not torch.equal(other.splits["val"].inputs["slow"], dm.splits["val"].inputs["slow"])

    inputs, target = next(iter(dm.train_dataloader()))
    assert set(inputs) == {"fast", "slow"} and inputs["fast"].shape == (50, 32)
    assert target.shape == (50,) and target.dtype == torch.int64
    assert dm.input_shapes == {"fast": (32,), "slow": (32,)}
    assert dm.modality_kinds == {"fast": "vector", "slow": "vector"}


def _discrete_pid(task: PIDStructureTask, num_samples: int):
    """PID of (x1 code, x2 code; y) from noiseless samples: each distinct vector is one symbol."""
    inputs, target = task.sample(num_samples, torch.Generator().manual_seed(0))
    codes = [torch.unique(inputs[m], dim=0, return_inverse=True)[1] for m in task.modality_names]
    sizes = (int(codes[0].max()) + 1, int(codes[1].max()) + 1, task.num_classes)
    joint = torch.zeros(sizes, dtype=torch.float64)
    joint.index_put_(
        (codes[0], codes[1], target), torch.ones(num_samples, dtype=torch.float64), accumulate=True
    )
    return pid(joint)


@pytest.mark.parametrize("bits", [(1, 1, 1), (2, 0, 1), (0, 1, 0)])
def test_pid_task_ground_truth_matches_the_exact_solver(bits):
    redundant, unique, synergy = bits
    task = PIDStructureTask(redundant, unique, synergy, feature_dim=8, noise_std=0.0)
    result = _discrete_pid(task, 40_000)
    truth = task.ground_truth()
    assert task.num_classes == 2 ** truth["mutual_information"]
    assert float(result.unique_1) == pytest.approx(truth["unique"]["x1"], abs=0.02)
    assert float(result.unique_2) == pytest.approx(truth["unique"]["x2"], abs=0.02)
    assert float(result.redundancy) == pytest.approx(truth["redundancy"], abs=0.02)
    assert float(result.synergy) == pytest.approx(truth["synergy"], abs=0.02)


def test_competition_ground_truth_is_consistent():
    task = CompetitionTask(num_classes=8, fast_coverage=0.75)
    truth = task.ground_truth()
    assert truth["redundancy"] == pytest.approx(2.25)
    assert truth["unique"] == {"fast": 0.0, "slow": pytest.approx(0.75)}
    total = truth["redundancy"] + sum(truth["unique"].values()) + truth["synergy"]
    assert total == pytest.approx(truth["mutual_information"])


def test_slow_modality_has_no_linear_class_signal():
    # Opposite cluster pairs: class means of the slow input vanish, those of the fast do not.
    inputs, target = CompetitionTask().sample(8000, torch.Generator().manual_seed(0))
    for name, bound in (("slow", 0.5), ("fast", None)):
        means = torch.stack([inputs[name][target == k].mean(0) for k in range(8)])
        norms = means.norm(dim=1)
        if bound is None:
            assert bool((norms > 3.0).all())
        else:
            assert bool((norms < bound).all())


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"redundant_bits": 0, "unique_bits": 0, "synergy_bits": 0}, "at least one"),
        ({"feature_dim": 2}, "feature_dim"),
        # Accepted, then num_classes = 32.0 and a crash in torch.randn at setup.
        ({"unique_bits": 1.5}, "'unique_bits': 1.5.* must be non-negative integers"),
    ],
)
def test_pid_task_rejects_bad_arguments(arguments, match):
    with pytest.raises(ValueError, match=match):
        PIDStructureTask(**arguments)


class ThreeViews:
    """A task of a user's own: three modalities of different widths, label = argmax of view a."""

    modality_names = ("a", "b", "c")
    num_classes = 3

    def __init__(self, broken: bool = False) -> None:
        self.input_shapes = {"a": (3,), "b": (5,), "c": (2,)}
        self.broken = broken

    def sample(self, num_samples, generator):
        inputs = {
            m: torch.randn(num_samples, shape[0], generator=generator)
            for m, shape in self.input_shapes.items()
        }
        if self.broken:
            inputs["c"] = inputs["c"][:, :1]
        return inputs, inputs["a"].argmax(dim=1)


CPU = SimpleNamespace(root_device=torch.device("cpu"))


@pytest.mark.parametrize("world_size", [2, 3])
def test_under_ddp_each_evaluation_sample_reaches_exactly_one_rank(world_size):
    """Lightning's DistributedSampler pads every rank to an equal share with repeated samples,
    which the synced probe and accuracies counted twice (3e-4 bits off at 63 samples, 2 ranks)."""
    dm = SyntheticDataModule(CompetitionTask(num_classes=4), num_samples=1000, batch_size=16)
    dm.setup()
    assert len(dm.splits["val"]) % world_size != 0  # the case padding would change
    for split, loader_of in (("val", dm.val_dataloader), ("test", dm.test_dataloader)):
        shards = []
        for rank in range(world_size):
            dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, strategy=CPU)
            shards.append(list(loader_of().sampler))
        indices = sorted(i for shard in shards for i in shard)
        assert indices == list(range(len(dm.splits[split])))
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, strategy=CPU)
    assert dm.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"


def test_any_task_with_the_synthetic_task_members_is_served():
    dm = SyntheticDataModule(ThreeViews(), num_samples=300, batch_size=16)
    assert dm.modality_names == ("a", "b", "c") and dm.num_classes == 3
    assert dm.input_shapes == {"a": (3,), "b": (5,), "c": (2,)}
    inputs, target = next(iter(dm.train_dataloader()))
    assert {m: x.shape for m, x in inputs.items()} == {"a": (16, 3), "b": (16, 5), "c": (16, 2)}
    assert torch.equal(target, inputs["a"].argmax(dim=1))
    with pytest.raises(ValueError, match=r"ThreeViews.sample.*'c': \(300, 1\).*'c': \(300, 2\)"):
        SyntheticDataModule(ThreeViews(broken=True), num_samples=300).setup()


def test_datamodule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fast_coverage"):
        CompetitionTask(fast_coverage=0.0)
    with pytest.raises(TypeError, match=r"task=.*input_shapes.*SyntheticTask"):
        SyntheticDataModule(task="competition")
    with pytest.raises(ValueError, match="fractions"):
        SyntheticDataModule(val_fraction=0.6, test_fraction=0.5)


def _mlp(width: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())


def _train(dm: SyntheticDataModule, modalities: tuple[str, ...], epochs: int) -> dict[str, float]:
    """Late fusion trained with the fused CE only (plain joint training over ``modalities``).

    Linear probes on the *detached* encoder features measure what each encoder learned
    without feeding gradient back into it. Returns test accuracies of the probes and fusion.
    """
    torch.manual_seed(0)
    encoders = {"fast": _mlp(), "slow": _mlp()}
    fusion = nn.Linear(64 * len(modalities), dm.num_classes)
    probes = {m: nn.Linear(64, dm.num_classes) for m in encoders}
    trained = [p for m in modalities for p in encoders[m].parameters()]
    optimizer = torch.optim.SGD([*trained, *fusion.parameters()], lr=0.01, momentum=0.9)
    probe_optimizer = torch.optim.Adam([p for q in probes.values() for p in q.parameters()], 1e-2)
    for _ in range(epochs):
        for inputs, target in dm.train_dataloader():
            features = {m: encoders[m](inputs[m]) for m in encoders}
            loss = F.cross_entropy(fusion(torch.cat([features[m] for m in modalities], 1)), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            probe_loss = sum(
                F.cross_entropy(probes[m](f.detach()), target) for m, f in features.items()
            )
            probe_optimizer.zero_grad()
            probe_loss.backward()
            probe_optimizer.step()
    test = dm.splits["test"]
    with torch.no_grad():
        features = {m: encoders[m](test.inputs[m]) for m in encoders}
        fused = fusion(torch.cat([features[m] for m in modalities], 1))
    accuracy = {
        m: (probes[m](f).argmax(1) == test.target).float().mean().item()
        for m, f in features.items()
    }
    accuracy["fused"] = (fused.argmax(1) == test.target).float().mean().item()
    return accuracy


def test_plain_joint_training_under_uses_the_slow_modality():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny MLPs: one thread is fastest and immune to a busy machine
    try:
        dm = SyntheticDataModule(CompetitionTask(), num_samples=6000)
        dm.setup()
        joint = _train(dm, ("fast", "slow"), epochs=10)
        slow_alone = _train(dm, ("slow",), epochs=10)
    finally:
        torch.set_num_threads(threads)
    coverage_ceiling = 0.9 + 0.1 / 8  # best accuracy from the fast modality alone
    # Trained alone, the slow encoder learns its signal; trained jointly it stays far behind...
    assert slow_alone["slow"] > 0.7
    assert slow_alone["slow"] - joint["slow"] > 0.2
    # ...and the fused model gains almost nothing over the fast modality's ceiling, although
    # the slow modality could label the samples the fast one cannot.
    assert joint["fused"] < coverage_ceiling + 0.03
