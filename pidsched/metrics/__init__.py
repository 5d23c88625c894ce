"""torchmetrics metrics that estimate PID from model outputs during training."""

from pidsched.metrics.fastpid import ClusteredFastPID, FastPID
from pidsched.metrics.multimodal import MultimodalPID

__all__ = ["ClusteredFastPID", "FastPID", "MultimodalPID"]
