"""Multimodal models: the module protocol the callback needs, fusion heads, the classifier."""

from pidsched.models.fusion import (
    FUSIONS,
    ConcatFusion,
    FiLMFusion,
    GatedFusion,
    SumFusion,
    build_fusion,
)
from pidsched.models.multimodal import MultimodalClassifier
from pidsched.models.protocol import MultimodalModule, check_multimodal_module

__all__ = [
    "FUSIONS",
    "ConcatFusion",
    "FiLMFusion",
    "GatedFusion",
    "MultimodalClassifier",
    "MultimodalModule",
    "SumFusion",
    "build_fusion",
    "check_multimodal_module",
]
