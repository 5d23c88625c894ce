"""Weights & Biases extras for a PID-scheduled run, offline-capable and rank-zero only.

The per-probe scalars (``pid/unique_<modality>``, ``pid/synergy``, ...) already reach W&B
through ``pl_module.log`` like any Lightning logger. This module adds what a scalar logger
cannot show:

- one line chart of the unique information of each modality, the redundancy and the synergy
  over epochs, with the stage switch drawn as a vertical line (``wandb.plot.line_series``);
  where probes carry bootstrap intervals, the band's two ends are drawn as their own lines
  (``<quantity> low`` / ``high``: a line series has no fill);
- a table of the probe history (one row per probe, the columns of ``pid_history.csv``,
  including the interval ends and ``certified``);
- the report picture ``pid_curves.png`` and the resolved Hydra config.

Without an API key or without network, runs are offline by default (``WANDB_MODE`` wins when
set) and the command to upload them later (``wandb sync <dir>``) is printed.

Example::

    logger = create_wandb_logger(project="pidsched")   # offline when no key / no network
    schedule = PIDSchedulerCallback(num_classes=10)
    trainer = Trainer(logger=logger, callbacks=[schedule, PIDReportCallback()])
"""

from __future__ import annotations

import math
import netrc
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import wandb
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from pidsched.viz.curves import collect_series
from pidsched.viz.history import RunHistory, history_columns

DEFAULT_WANDB_URL = "https://api.wandb.ai"
REACHABILITY_TIMEOUT_S = 2.0

CHART_KEY = "pid/information_chart"
TABLE_KEY = "pid/history_table"
IMAGE_KEY = "pid/curves"
CHART_PANELS = ("unique", "redundancy", "synergy")


def resolve_wandb_mode() -> str:
    """The W&B mode a new run should use.

    Returns:
        ``WANDB_MODE`` when it is set (``"online"``, ``"offline"``, ``"disabled"``, ...);
        otherwise ``"online"`` if an API key is configured and the W&B server answers, else
        ``"offline"``. The server is only contacted when a key exists.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if wandb_api_key_configured() and wandb_server_reachable():
        return "online"
    return "offline"


def wandb_api_key_configured() -> bool:
    """Whether ``WANDB_API_KEY`` is set or a netrc file (``NETRC`` or ``~/.netrc``, as
    ``wandb login`` writes it) holds a password for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        entry = netrc.netrc(netrc_path).authenticators(_wandb_host())
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def wandb_server_reachable(timeout_s: float = REACHABILITY_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the W&B host (``WANDB_BASE_URL``) opens within ``timeout_s``."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((_wandb_host(), port), timeout=timeout_s):
            return True
    except OSError:
        return False


def create_wandb_logger(**kwargs: Any) -> WandbLogger:
    """A `WandbLogger` that runs offline when W&B cannot be reached (see `resolve_wandb_mode`).

    Use it where ``WandbLogger`` would be used, e.g. as the ``_target_`` of a Hydra logger config.

    Args:
        **kwargs: `WandbLogger` / ``wandb.init`` arguments. An explicit ``offline`` or ``mode``
            is respected as given.
    """
    if "offline" not in kwargs and "mode" not in kwargs and not os.environ.get("WANDB_MODE"):
        mode = resolve_wandb_mode()
        if mode == "offline":
            _print_rank_zero(
                "W&B: no API key or no connection to the W&B server, so this run is logged "
                "offline. Upload it later with `wandb sync <run dir>` (printed at the end)."
            )
        kwargs["mode"] = mode
    return WandbLogger(**kwargs)


@rank_zero_only
def log_resolved_config(logger: WandbLogger, config: Mapping[str, Any]) -> None:
    """Stores the run's configuration in the W&B run config.

    Args:
        logger: the run's `WandbLogger`.
        config: the resolved configuration as plain containers, e.g.
            ``OmegaConf.to_container(cfg, resolve=True)``.

    Raises:
        TypeError: if ``config`` is not a mapping.
    """
    if not isinstance(config, Mapping):
        raise TypeError(
            "`config` must be a mapping such as OmegaConf.to_container(cfg, resolve=True), "
            f"got {type(config).__name__}."
        )
    logger.experiment.config.update(dict(config), allow_val_change=True)


def information_chart(history: RunHistory) -> Any:
    """A W&B line chart: unique information per modality, redundancy and synergy (bits) per
    epoch, and the stage switch as a vertical line.

    Returns:
        A ``wandb.plot.line_series`` custom chart, ready for ``run.log``.
    """
    xs: list[list[float]] = []
    ys: list[list[float]] = []
    keys: list[str] = []

    def add(epochs: tuple[int, ...], values: tuple[float, ...], key: str) -> None:
        recorded = [not math.isnan(value) for value in values]
        xs.append([x for x, keep in zip(epochs, recorded, strict=True) if keep])
        ys.append([y for y, keep in zip(values, recorded, strict=True) if keep])
        keys.append(key)

    level = _interval_level(history)
    for line in collect_series({"run": history}):
        if line.panel not in CHART_PANELS:
            continue
        what = f"unique information of {line.name}" if line.panel == "unique" else line.name
        add(line.epochs, line.values, f"{what} (bits)")
        if line.has_band:
            add(line.epochs, line.lows, f"{what}: {level} interval low (bits)")
            add(line.epochs, line.highs, f"{what}: {level} interval high (bits)")
    title = "Information about the label per probe (bits)"
    if history.switch_epoch is not None and ys:
        # line_series has no vertical rule: a two-point series draws one, half an epoch before
        # the first stage-2 epoch, between the last stage-1 probe and the first stage-2 probe.
        top = max(max(series) for series in ys)
        boundary = history.switch_epoch - 0.5
        xs.append([boundary, boundary])
        ys.append([0.0, top])
        keys.append(f"stage switch: stage 2 from epoch {history.switch_epoch}")
        title += f"; stage 2 starts at epoch {history.switch_epoch}"
    return wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=title, xname="epoch")


def _interval_level(history: RunHistory) -> str:
    """``"90%"`` (the records' interval level) or ``"bootstrap"`` when it is not one value."""
    levels = {
        record["interval"].get("level")
        for record in history.records
        if isinstance(record.get("interval"), Mapping)
    }
    level = next(iter(levels)) if len(levels) == 1 else None
    return f"{level:.0%}" if isinstance(level, (int, float)) else "bootstrap"


def history_table(history: RunHistory) -> wandb.Table:
    """The probe history as a W&B table: one row per probe, columns as in ``pid_history.csv``."""
    columns, rows = history_columns(history)
    return wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])


@rank_zero_only
def log_pid_report(
    logger: WandbLogger, history: RunHistory, curves_png: str | Path | None = None
) -> None:
    """Logs the information chart, the probe-history table and the report picture to W&B.

    Args:
        logger: the run's `WandbLogger`.
        history: the run's probe history.
        curves_png: ``pid_curves.png`` to attach as an image, if it was drawn.
    """
    payload: dict[str, Any] = {TABLE_KEY: history_table(history)}
    if history.records:
        payload[CHART_KEY] = information_chart(history)
    if curves_png is not None:
        payload[IMAGE_KEY] = wandb.Image(str(curves_png), caption="pid_curves.png")
    logger.experiment.log(payload)


@rank_zero_only
def print_sync_hint(logger: WandbLogger) -> None:
    """Prints how to upload an offline run (``wandb sync <dir>``); silent for online runs."""
    run = logger.experiment
    if getattr(run, "offline", False) and not getattr(run, "disabled", False):
        _print_rank_zero(
            f"W&B ran offline; its files are in {run.sync_dir}.\n"
            f"Upload them when online with:  wandb sync {run.sync_dir}"
        )


@rank_zero_only
def _print_rank_zero(message: str) -> None:
    print(message, flush=True)


def _wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)).hostname or ""
