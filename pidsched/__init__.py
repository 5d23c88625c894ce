"""pidsched: information-guided two-stage multimodal training schedules for PyTorch Lightning."""

from pidsched.callbacks import OGMGECallback, PIDSchedulerCallback, PIDScheduleWarning
from pidsched.controllers import FixedController, JointController, MIController, PIDController
from pidsched.metrics import ClusteredFastPID, FastPID
from pidsched.models import MultimodalClassifier, MultimodalModule, check_multimodal_module

__version__ = "0.1.0"

__all__ = [
    "ClusteredFastPID",
    "FastPID",
    "FixedController",
    "JointController",
    "MIController",
    "MultimodalClassifier",
    "MultimodalModule",
    "OGMGECallback",
    "PIDController",
    "PIDScheduleWarning",
    "PIDSchedulerCallback",
    "__version__",
    "check_multimodal_module",
]
