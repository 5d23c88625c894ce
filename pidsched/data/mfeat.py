"""UCI Multiple Features (mfeat): six views of 2,000 handwritten digits, shipped with pidsched.

The arrays live in ``pidsched/data/mfeat.npz`` (CC BY 4.0; attribution and provenance in
``MFEAT_LICENSE.md`` beside it) and are checked against a SHA-256 checksum on every load. Any
subset of the six views becomes the modalities, in the order given; the split and the
standardisation are those of :mod:`pidsched.data.arrays`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from pidsched._checks import as_names
from pidsched.data.arrays import SPLIT_NAMES, standardized_splits
from pidsched.data.in_memory import (
    InMemoryMultimodalDataModule,
    MultimodalTensorDataset,
    check_split_fractions,
    stratified_split,
)

#: View name -> number of features, in the UCI order.
MFEAT_VIEWS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
MFEAT_NUM_CLASSES = 10
MFEAT_SHA256 = "2bd9fa4b95588f0d4107c87b1a1f659dfeb5b0ae7f0056d810826afd60e58ff8"
_MFEAT_FILE = "mfeat.npz"


def _check_views(views: str | Sequence[str]) -> tuple[str, ...]:
    views = as_names(views)
    unknown = [v for v in views if v not in MFEAT_VIEWS]
    if not views or unknown or len(set(views)) != len(views):
        raise ValueError(
            f"views={list(views)} must be distinct names from {list(MFEAT_VIEWS)}, at least one."
        )
    return views


def load_mfeat(views: Sequence[str] = tuple(MFEAT_VIEWS)) -> tuple[dict[str, Tensor], Tensor]:
    """Load the shipped mfeat arrays after verifying their checksum.

    Args:
        views: which views to return, by name (``fou fac kar pix zer mor``).

    Returns:
        ``({view: float32 (2000, D_view)}, labels int64 (2000,))``, unscaled.

    Raises:
        ValueError: on an unknown or repeated view name.
        OSError: if the shipped file does not match its SHA-256 checksum.
    """
    views = _check_views(views)
    payload = resources.files("pidsched.data").joinpath(_MFEAT_FILE).read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != MFEAT_SHA256:
        raise OSError(
            f"pidsched/data/{_MFEAT_FILE} has SHA-256 {digest}, expected {MFEAT_SHA256}: the "
            "file is damaged or was replaced; reinstall pidsched."
        )
    with np.load(io.BytesIO(payload)) as arrays:
        inputs = {v: torch.from_numpy(arrays[v].astype(np.float32)) for v in views}
        labels = torch.from_numpy(arrays["label"].astype(np.int64))
    return inputs, labels


class MFeatDataModule(InMemoryMultimodalDataModule):
    """UCI Multiple Features with a fixed stratified split and train-only standardisation.

    Args:
        views: the views that become modalities, in order (see :data:`MFEAT_VIEWS`).
        val_fraction: share of each class held out for validation.
        test_fraction: share of each class held out for the final test.
        seed: seed of the split (independent of the training seed, so every run sees the
            same split).
        batch_size: samples per batch.
        num_workers: dataloader worker processes.

    Example::

        dm = MFeatDataModule(views=("fou", "pix"))
        dm.setup()
        dm.input_shapes  # {'fou': (76,), 'pix': (240,)}
    """

    def __init__(
        self,
        views: Sequence[str] = ("fou", "pix"),
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.views = _check_views(views)
        self.fractions = (val_fraction, test_fraction)
        check_split_fractions(self.fractions)
        self.seed = seed
        self.modality_names = self.views
        self.modality_kinds = dict.fromkeys(self.views, "vector")
        self.input_shapes = {v: (MFEAT_VIEWS[v],) for v in self.views}
        self.num_classes = MFEAT_NUM_CLASSES

    @override
    def build_splits(self) -> dict[str, MultimodalTensorDataset]:
        inputs, labels = load_mfeat(self.views)
        parts = stratified_split(labels, self.fractions, self.seed)
        return standardized_splits(inputs, labels, dict(zip(SPLIT_NAMES, parts, strict=True)))
