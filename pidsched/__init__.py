"""pidsched: information-guided two-stage multimodal training schedules for PyTorch Lightning.

The public names below are imported on first use (PEP 562), so ``import pidsched.functional``
or ``import pidsched.controllers`` does not load Lightning, torchmetrics or matplotlib; see the
layer rule in ``docs/architecture.md``.
"""

from typing import TYPE_CHECKING

from pidsched._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "pidsched.callbacks": ("OGMGECallback", "PIDScheduleWarning", "PIDSchedulerCallback"),
    "pidsched.controllers": ("FixedController", "JointController", "MIController", "PIDController"),
    "pidsched.metrics": ("ClusteredFastPID", "FastPID"),
    "pidsched.models": ("MultimodalClassifier", "MultimodalModule", "check_multimodal_module"),
}
_SUBPACKAGES = ("callbacks", "cli", "controllers", "data", "functional", "metrics", "models", "viz")

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBPACKAGES)

if TYPE_CHECKING:  # what static tools (type checkers, IDEs, the API docs) see
    from pidsched.callbacks import OGMGECallback, PIDSchedulerCallback, PIDScheduleWarning
    from pidsched.controllers import FixedController, JointController, MIController, PIDController
    from pidsched.metrics import ClusteredFastPID, FastPID
    from pidsched.models import MultimodalClassifier, MultimodalModule, check_multimodal_module
