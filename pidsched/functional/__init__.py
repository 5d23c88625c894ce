"""Pure PyTorch PID mathematics: the BROJA solver and the discretisations that feed it."""

from pidsched.functional.bootstrap import bootstrap_interval, bootstrap_weights
from pidsched.functional.discretize import (
    cluster_features,
    joint_from_features,
    joint_from_logits,
    kmeans,
    pca_project,
)
from pidsched.functional.pid import PIDResult, pid

__all__ = [
    "PIDResult",
    "bootstrap_interval",
    "bootstrap_weights",
    "cluster_features",
    "joint_from_features",
    "joint_from_logits",
    "kmeans",
    "pca_project",
    "pid",
]
