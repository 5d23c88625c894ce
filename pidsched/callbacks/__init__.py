"""Lightning callbacks: the PID-guided two-stage schedule and the OGM-GE baseline.

Imported on first use (PEP 562): ``pidsched.callbacks.ogm_ge`` alone does not load the schedule.
"""

from typing import TYPE_CHECKING

from pidsched._lazy import lazy_exports

_EXPORTS = {
    "pidsched.callbacks.ogm_ge": ("OGMGECallback",),
    "pidsched.callbacks.pid_scheduler": ("PIDScheduleWarning", "PIDSchedulerCallback"),
}

__all__ = ["OGMGECallback", "PIDScheduleWarning", "PIDSchedulerCallback"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from pidsched.callbacks.ogm_ge import OGMGECallback
    from pidsched.callbacks.pid_scheduler import PIDSchedulerCallback, PIDScheduleWarning
