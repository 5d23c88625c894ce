"""Keep a resumed run directory's saved config when the resuming command is rejected.

Hydra writes the command's composed config into ``<run dir>/.hydra/`` before ``pidsched-train``
checks it. For ``resume=<run dir>`` that directory is the earlier run's, so a resuming command
rejected with a :class:`~pidsched.cli.checks.ConfigError` (``resume`` and ``ckpt_path`` both
set, a misspelt key) replaced the run's record of how it was trained, which ``load_run`` and
``pidsched-report`` read, with the rejected command's. :class:`RunConfigBackup`, a Hydra
callback (``hydra.callbacks`` in ``conf/config.yaml``), reads the files before Hydra writes, and
:func:`restore_run_config` puts them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# The saved files of the run directory of this process's run, read before Hydra overwrote them:
# a Hydra callback and the task function share nothing else (the callback is built by Hydra).
_SAVED: dict[Path, bytes] = {}


class RunConfigBackup(Callback):
    """Reads ``<hydra.run.dir>/<hydra.output_subdir>/*.yaml`` before Hydra writes them (a single
    run; a sweep writes only into new job directories)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _SAVED.clear()
        subdir = config.hydra.output_subdir
        if subdir is None:
            return
        saved = Path(config.hydra.run.dir) / subdir
        if saved.is_dir():
            _SAVED.update({path: path.read_bytes() for path in saved.glob("*.yaml")})


def restore_run_config() -> None:
    """Put back the saved config files :class:`RunConfigBackup` read (nothing for a new run)."""
    for path, content in _SAVED.items():
        path.write_bytes(content)


def saved_run_config() -> tuple[dict[str, Any], list[str]] | None:
    """The run directory's saved composed config and command-line overrides, as the run was
    trained (read by :class:`RunConfigBackup` before Hydra overwrote them); None for a new run
    directory."""
    config = next((text for path, text in _SAVED.items() if path.name == "config.yaml"), None)
    if config is None:
        return None
    overrides = next((text for path, text in _SAVED.items() if path.name == "overrides.yaml"), b"")
    container = OmegaConf.to_container(OmegaConf.create(config.decode()), resolve=True)
    listed = OmegaConf.to_container(OmegaConf.create(overrides.decode() or "[]"))
    return container, [str(item) for item in listed]
