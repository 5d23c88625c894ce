"""torchmetrics metrics that estimate PID from model outputs during training."""

from pidsched.metrics.fastpid import ClusteredFastPID, FastPID

__all__ = ["ClusteredFastPID", "FastPID"]
