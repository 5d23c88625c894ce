"""Every shipped config composes and runs one fast step (``trainer.fast_dev_run``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from _audiovisual_helpers import make_ave, make_cremad, make_kinetics_sounds
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from pidsched.cli.train import train

CONF = resources.files("pidsched.conf")
EXPERIMENTS = sorted(
    p.name.removesuffix(".yaml")
    for p in CONF.joinpath("experiment").iterdir()
    if p.name.endswith(".yaml")
)
SCHEDULES = sorted(
    p.name.removesuffix(".yaml")
    for p in CONF.joinpath("schedule").iterdir()
    if p.name.endswith(".yaml")
)
AUDIOVISUAL = {"cremad": make_cremad, "ave": make_ave, "kinetics_sounds": make_kinetics_sounds}
# Small enough for ResNet-18 on CPU in a second: 2 clips, 32 x 32 frames, no workers.
AUDIOVISUAL_OVERRIDES = [
    "data.batch_size=2",
    "data.image_size=32",
    "data.num_workers=0",
    "data.val_fraction=0.25",
    "cpu_threads=1",
]


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


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    GlobalHydra.instance().clear()


def test_the_expected_config_groups_exist():
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert {"data", "model", "schedule", "optimizer", "trainer", "logger", "experiment"} <= groups
    assert {"pid", "pid_paper", "mi", "fixed", "joint"} <= set(SCHEDULES)
    assert {"cremad", "ave", "kinetics_sounds", "mfeat", "synthetic_competition"} <= set(
        EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_fast_step(experiment, tmp_path):
    overrides = [
        f"experiment={experiment}",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
    ]
    if experiment in AUDIOVISUAL:
        root = AUDIOVISUAL[experiment](tmp_path / "data")
        overrides += [f"data.root={root}", *AUDIOVISUAL_OVERRIDES]
    summary = train(compose_run(overrides, tmp_path / "run"), tmp_path / "run")
    assert set(summary["test_acc"]) >= {"fused"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["schedule"] == "pid"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_runs_one_fast_step(schedule, tmp_path):
    overrides = [
        f"schedule={schedule}",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
    ]
    summary = train(compose_run(overrides, tmp_path), tmp_path)
    assert summary["schedule"] == schedule
    measured = schedule in ("pid", "mi")  # pid_paper probes every 5th epoch only
    assert (summary["final_pid"] is not None) == measured


@pytest.mark.parametrize(
    "overrides",
    [
        ["model/fusion=sum"],
        ["model/fusion=film"],
        ["model/fusion=gated"],
        ["optimizer=adamw"],
        ["optimizer=paper_sgd"],
        ["logger=tensorboard"],
        ["logger=wandb"],
        ["experiment=synthetic_pid", "model/fusion=gated"],
    ],
    ids=lambda o: " ".join(o),
)
def test_other_groups_run_one_fast_step(overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    overrides = [*overrides, "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false"]
    summary = train(compose_run(overrides, tmp_path), tmp_path)
    assert 0.0 <= summary["test_acc"]["fused"] <= 1.0


def test_trainer_and_seed_keys_reach_the_run(tmp_path):
    cfg = compose_run(["trainer.max_epochs=2", "seed=7", "trainer=ddp"], tmp_path)
    assert cfg.trainer.max_epochs == 2 and cfg.seed == 7
    assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"


def test_callback_arguments_a_schedule_does_not_set_can_be_added(tmp_path):
    # The documented way (docs/configuration.md) to reach the callback's other arguments.
    overrides = ["+schedule.probe_tol=1e-7", "+schedule.probe_buffer_size=1"]
    callback = instantiate(compose_run(overrides, tmp_path).schedule, num_classes=4)
    assert callback.probe_tol == 1e-7 and callback.probe_buffer_size == 1
    assert instantiate(compose_run([], tmp_path).schedule, num_classes=4).probe_tol == 1e-5


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pidsched.conf", version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True
        )
    assert cfg.hydra.launcher.gpus_per_node == 1
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
