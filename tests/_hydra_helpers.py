"""Compose pidsched-train's config in-process, as the app does, for tests that call `train`."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict


def compose_run(overrides: list[str], run_dir: Path) -> DictConfig:
    """Compose ``config`` like ``pidsched-train`` does and register the Hydra runtime."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pidsched.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.name = "test"
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
