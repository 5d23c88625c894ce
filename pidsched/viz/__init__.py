"""Pictures, W&B charts and history files of PID-scheduled runs.

Imported on first use (PEP 562): ``pidsched.viz.history`` (the history files) needs the standard
library only; the curves bring in matplotlib, the report callback Lightning and W&B.
"""

from typing import TYPE_CHECKING

from pidsched._lazy import lazy_exports

_EXPORTS = {
    "pidsched.viz.curves": ("CURVES_PNG_NAME", "PIDCurvesPlot", "PlottedSeries", "plot_pid_curves"),
    "pidsched.viz.history": (
        "HISTORY_CSV_NAME",
        "HISTORY_JSON_NAME",
        "RunHistory",
        "read_history_csv",
        "read_history_json",
        "write_history_csv",
        "write_history_json",
    ),
    "pidsched.viz.report_callback": ("PIDReportCallback", "write_run_report"),
    "pidsched.viz.wandb_logging": (
        "create_wandb_logger",
        "log_pid_report",
        "log_resolved_config",
        "resolve_wandb_mode",
    ),
}

__all__ = [
    "CURVES_PNG_NAME",
    "HISTORY_CSV_NAME",
    "HISTORY_JSON_NAME",
    "PIDCurvesPlot",
    "PIDReportCallback",
    "PlottedSeries",
    "RunHistory",
    "create_wandb_logger",
    "log_pid_report",
    "log_resolved_config",
    "plot_pid_curves",
    "read_history_csv",
    "read_history_json",
    "resolve_wandb_mode",
    "write_history_csv",
    "write_history_json",
    "write_run_report",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from pidsched.viz.curves import CURVES_PNG_NAME, PIDCurvesPlot, PlottedSeries, plot_pid_curves
    from pidsched.viz.history import (
        HISTORY_CSV_NAME,
        HISTORY_JSON_NAME,
        RunHistory,
        read_history_csv,
        read_history_json,
        write_history_csv,
        write_history_json,
    )
    from pidsched.viz.report_callback import PIDReportCallback, write_run_report
    from pidsched.viz.wandb_logging import (
        create_wandb_logger,
        log_pid_report,
        log_resolved_config,
        resolve_wandb_mode,
    )
