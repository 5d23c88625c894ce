"""Multimodal models: the module protocol the callback needs, fusion heads, the classifier."""

from pidsched.models.fusion import ConcatFusion, FiLMFusion, GatedFusion, SumFusion
from pidsched.models.multimodal import MultimodalClassifier
from pidsched.models.protocol import (
    MultimodalModule,
    PausableBranchesMixin,
    check_multimodal_module,
)

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
