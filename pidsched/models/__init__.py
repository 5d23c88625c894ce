"""Multimodal models: the module protocol the callback needs, fusion heads, the classifier.

Imported on first use (PEP 562): ``pidsched.models.protocol`` and ``pidsched.models.fusion`` need
torch only; ``MultimodalClassifier`` brings in Lightning.
"""

from typing import TYPE_CHECKING

from pidsched._lazy import lazy_exports

_EXPORTS = {
    "pidsched.models.fusion": ("ConcatFusion", "FiLMFusion", "GatedFusion", "SumFusion"),
    "pidsched.models.multimodal": ("MultimodalClassifier",),
    "pidsched.models.protocol": (
        "MultimodalModule",
        "PausableBranchesMixin",
        "check_multimodal_module",
    ),
}

__all__ = [
    "ConcatFusion",
    "FiLMFusion",
    "GatedFusion",
    "MultimodalClassifier",
    "MultimodalModule",
    "PausableBranchesMixin",
    "SumFusion",
    "check_multimodal_module",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from pidsched.models.fusion import ConcatFusion, FiLMFusion, GatedFusion, SumFusion
    from pidsched.models.multimodal import MultimodalClassifier
    from pidsched.models.protocol import (
        MultimodalModule,
        PausableBranchesMixin,
        check_multimodal_module,
    )
