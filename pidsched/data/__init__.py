"""LightningDataModules for pidsched.

Every DataModule yields batches ``(inputs: dict[str, Tensor], target: Tensor)`` and, from its
constructor on, reports ``modality_names``, ``modality_kinds`` (``"vector"``, ``"audio"`` or
``"visual"``, which the app uses to pick an encoder), ``input_shapes`` (per-sample shape of
each modality) and ``num_classes``.

Imported on first use (PEP 562): the shipped and synthetic data do not load the audio-visual
readers (SciPy, Pillow, torchvision).
"""

from typing import TYPE_CHECKING

from pidsched._lazy import lazy_exports

_EXPORTS = {
    "pidsched.data.arrays": ("ArraysDataModule", "read_arrays"),
    "pidsched.data.audiovisual": (
        "AVEDataModule",
        "AudioVisualDataModule",
        "CremaDDataModule",
        "KineticsSoundsDataModule",
    ),
    "pidsched.data.in_memory": (
        "InMemoryMultimodalDataModule",
        "MultimodalDataModule",
        "MultimodalTensorDataset",
    ),
    "pidsched.data.mfeat": ("MFEAT_VIEWS", "MFeatDataModule", "load_mfeat"),
    "pidsched.data.synthetic": (
        "CompetitionTask",
        "PIDStructureTask",
        "SyntheticDataModule",
        "SyntheticTask",
    ),
}

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
    "MultimodalDataModule",
    "MultimodalTensorDataset",
    "PIDStructureTask",
    "SyntheticDataModule",
    "SyntheticTask",
    "load_mfeat",
    "read_arrays",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from pidsched.data.arrays import ArraysDataModule, read_arrays
    from pidsched.data.audiovisual import (
        AudioVisualDataModule,
        AVEDataModule,
        CremaDDataModule,
        KineticsSoundsDataModule,
    )
    from pidsched.data.in_memory import (
        InMemoryMultimodalDataModule,
        MultimodalDataModule,
        MultimodalTensorDataset,
    )
    from pidsched.data.mfeat import MFEAT_VIEWS, MFeatDataModule, load_mfeat
    from pidsched.data.synthetic import (
        CompetitionTask,
        PIDStructureTask,
        SyntheticDataModule,
        SyntheticTask,
    )
