"""LightningDataModules for pidsched.

Every DataModule yields batches ``(inputs: dict[str, Tensor], target: Tensor)`` and, from its
constructor on, reports ``modality_names``, ``modality_kinds`` (``"vector"``, ``"audio"`` or
``"visual"``, which the app uses to pick an encoder), ``input_shapes`` (per-sample shape of
each modality) and ``num_classes``.
"""

from pidsched.data.arrays import ArraysDataModule, read_arrays
from pidsched.data.audiovisual import (
    AudioVisualDataModule,
    AVEDataModule,
    CremaDDataModule,
    KineticsSoundsDataModule,
)
from pidsched.data.in_memory import InMemoryMultimodalDataModule, MultimodalTensorDataset
from pidsched.data.mfeat import MFEAT_VIEWS, MFeatDataModule, load_mfeat
from pidsched.data.synthetic import (
    CompetitionTask,
    PIDStructureTask,
    SyntheticDataModule,
    SyntheticTask,
)

__all__ = [
    "MFEAT_VIEWS",
    "AVEDataModule",
    "ArraysDataModule",
    "AudioVisualDataModule",
    "CompetitionTask",
    "CremaDDataModule",
    "InMemoryMultimodalDataModule",
    "KineticsSoundsDataModule",
    "MFeatDataModule",
    "MultimodalTensorDataset",
    "PIDStructureTask",
    "SyntheticDataModule",
    "SyntheticTask",
    "load_mfeat",
    "read_arrays",
]
