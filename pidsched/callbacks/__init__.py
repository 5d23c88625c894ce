"""Lightning callbacks: the PID-guided two-stage schedule and the OGM-GE baseline."""

from pidsched.callbacks.ogm_ge import OGMGECallback
from pidsched.callbacks.pid_scheduler import PIDSchedulerCallback, PIDScheduleWarning

__all__ = ["OGMGECallback", "PIDScheduleWarning", "PIDSchedulerCallback"]
