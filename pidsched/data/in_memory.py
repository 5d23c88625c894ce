"""In-memory multimodal datasets: the dataset, the stratified split and the shared DataModule.

The synthetic and mfeat DataModules hold every sample as a tensor; this module gives them one
dataset type and one split rule. :class:`MultimodalDataModule` is the one dataloader base of
every pidsched DataModule, these and the audio-visual ones. Batches are
``(inputs: dict[str, Tensor], target: Tensor)``, the layout every pidsched model reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from typing_extensions import override

#: Modality kinds a DataModule reports, one per modality; the app picks an encoder per kind.
MODALITY_KINDS = ("vector", "audio", "visual")


class MultimodalTensorDataset(Dataset):
    """Samples ``(inputs, target)`` from one tensor per modality and a label tensor.

    Args:
        inputs: modality name -> tensor ``(N, ...)``; all share the first dimension.
        target: integer labels ``(N,)``.

    Raises:
        ValueError: if a modality has a different number of samples than ``target``.
    """

    def __init__(self, inputs: Mapping[str, Tensor], target: Tensor) -> None:
        for name, tensor in inputs.items():
            if tensor.shape[0] != target.shape[0]:
                raise ValueError(
                    f"inputs[{name!r}] has {tensor.shape[0]} samples but target has "
                    f"{target.shape[0]}; pass tensors with the same first dimension."
                )
        self.inputs = dict(inputs)
        self.target = target

    def __len__(self) -> int:
        return self.target.shape[0]

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], Tensor]:
        return {name: t[index] for name, t in self.inputs.items()}, self.target[index]


def check_split_fractions(fractions: Sequence[float]) -> None:
    """Raise ``ValueError`` unless each held-out fraction is in (0, 1) and they sum below 1."""
    if any(not 0.0 < f < 1.0 for f in fractions) or sum(fractions) >= 1.0:
        raise ValueError(
            f"held-out fractions {list(fractions)} must each lie in (0, 1) and sum to less "
            "than 1 so that the training split keeps samples."
        )


def stratified_split(target: Tensor, fractions: Sequence[float], seed: int) -> list[Tensor]:
    """Split sample indices into parts that keep each class's share, reproducibly.

    Each class's indices are shuffled with ``seed`` and cut by ``fractions``; the remainder
    after all fractions is the first part (the training split, by convention of the callers).

    Args:
        target: integer labels ``(N,)``.
        fractions: the share of each class for parts 2, 3, ...; their sum must be < 1.
        seed: seed of the shuffle; the same seed gives the same split.

    Returns:
        ``len(fractions) + 1`` sorted index tensors that partition ``range(N)``.

    Raises:
        ValueError: if a fraction is not in (0, 1) or the fractions sum to 1 or more.
    """
    check_split_fractions(fractions)
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for label in torch.unique(target):
        members = torch.nonzero(target == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        start = 0
        for part, fraction in enumerate(fractions, start=1):
            size = round(fraction * members.numel())
            parts[part].append(members[start : start + size])
            start += size
        parts[0].append(members[start:])
    return [torch.sort(torch.cat(p)).values for p in parts]


class EpochShuffleSampler(RandomSampler):
    """A random order per epoch that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every training epoch, so a fit resumed at epoch E
    draws the same order for E as the uninterrupted fit did (a plain ``RandomSampler`` draws
    from the global RNG, whose state a checkpoint does not hold). Under DDP Lightning replaces
    it, being a ``RandomSampler``, by its ``DistributedSampler``, which is seeded the same way.

    Args:
        data_source: the dataset.
        seed: the base seed (``torch.initial_seed()``, i.e. the run's ``seed_everything``, when
            None).
    """

    def __init__(self, data_source: Dataset, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = torch.initial_seed() if seed is None else int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Restart the order at ``epoch``'s permutation."""
        self.generator = torch.Generator().manual_seed((self.seed + epoch) % 2**63)


class MultimodalDataModule(L.LightningDataModule, ABC):
    """The dataloaders every pidsched DataModule shares: one base for in-memory and file data.

    Subclasses implement :meth:`split_dataset` and set ``modality_names``, ``modality_kinds``,
    ``input_shapes`` and ``num_classes`` in their constructor, so a model can be built before
    ``setup`` runs. Training batches are shuffled by :class:`EpochShuffleSampler` (resumable);
    validation and test batches keep the split's order.

    Args:
        batch_size: samples per batch for every split.
        num_workers: dataloader worker processes (0 loads in the main process); workers persist
            across epochs when there are any.
        pin_memory: page-locked batches for faster host-to-GPU copies; None (default) pins
            exactly when the trainer runs on a CUDA device.

    Raises:
        ValueError: ``batch_size`` < 1 or ``num_workers`` < 0.
    """

    modality_names: tuple[str, ...]
    modality_kinds: dict[str, str]
    input_shapes: dict[str, tuple[int, ...]]
    num_classes: int

    def __init__(
        self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool | None = None
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer.")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be 0 or more.")
        if pin_memory is not None and not isinstance(pin_memory, bool):
            raise TypeError(f"pin_memory must be true, false or null (auto), got {pin_memory!r}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    @abstractmethod
    def split_dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""

    def _pins_memory(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _loader(self, split: str) -> DataLoader:
        dataset = self.split_dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self._sampler(split, dataset),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pins_memory(),
        )

    def _sampler(self, split: str, dataset: Dataset) -> Sampler | None:
        """The training split's per-epoch shuffle; under DDP, evaluation splits shard each
        sample to exactly one rank. Lightning's default DistributedSampler would pad them with
        repeated samples to an equal share per rank, and the synced PID probe, accuracies and
        test metrics would count those twice."""
        if split == "train":
            return EpochShuffleSampler(dataset)
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        return UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class InMemoryMultimodalDataModule(MultimodalDataModule):
    """Base for DataModules whose splits are tensors held in memory.

    Subclasses implement :meth:`build_splits`; the dataloaders are
    :class:`MultimodalDataModule`'s (same arguments).
    """

    def __init__(
        self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool | None = None
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        self.splits: dict[str, MultimodalTensorDataset] = {}

    @abstractmethod
    def build_splits(self) -> dict[str, MultimodalTensorDataset]:
        """Return the ``"train"``, ``"val"`` and ``"test"`` datasets."""

    @override
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.build_splits()

    @override
    def split_dataset(self, split: str) -> Dataset:
        self.setup()
        return self.splits[split]
