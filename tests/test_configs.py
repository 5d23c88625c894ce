"""Every shipped config composes, runs one fast step (``trainer.fast_dev_run``) and takes effect."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
from _audiovisual_helpers import make_ave, make_cremad, make_kinetics_sounds
from _hydra_helpers import compose_run
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from pidsched.cli import train as train_cli
from pidsched.cli.train import train
from pidsched.models.fusion import ConcatFusion, FiLMFusion, GatedFusion, SumFusion

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


@pytest.fixture
def built_models(monkeypatch):
    """The models ``train`` builds, recorded so that a test can inspect what a config made."""
    models = []

    def recording_build_model(*args, **kwargs):
        models.append(train_cli.build_model.__wrapped__(*args, **kwargs))
        return models[-1]

    recording_build_model.__wrapped__ = train_cli.build_model
    monkeypatch.setattr(train_cli, "build_model", recording_build_model)
    return models


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
    cfg = compose_run(overrides, tmp_path / "run")
    modalities = list(instantiate(cfg.data).modality_names)
    summary = train(cfg, tmp_path / "run")
    # Every head of the experiment's data is tested, accuracy and macro-F1 alike.
    assert list(summary["test_acc"]) == [*modalities, "fused"]
    assert list(summary["test_macro_f1"]) == [*modalities, "fused"]
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
    # pid_paper probes every 5th epoch; the baselines probe (deciding nothing) for the curves.
    measured = schedule in ("pid", "pid_evidence", "mi", "fixed", "joint", "ogm_ge")
    assert (summary["final_pid"] is not None) == measured


# One epoch of one batch per split; unlike fast_dev_run it keeps the configured logger.
ONE_BATCH_EPOCH = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


def _fusion_is(expected):
    def check(model, run_dir):
        assert type(model.fusion) is expected

    return check


def _optimizer_is(expected, stage2_lr):
    def check(model, run_dir):
        # One epoch stays in stage 1: the trainer holds the stage-1 optimiser.
        assert type(model.trainer.optimizers[0]) is expected
        assert model.hparams["stage2_optimizer"]["lr"] == stage2_lr

    return check


def _logger_wrote(expected, pattern):
    def check(model, run_dir):
        assert type(model.trainer.logger) is expected
        if pattern is not None:
            assert list(run_dir.glob(pattern)), f"no {pattern} in {sorted(run_dir.rglob('*'))}"

    return check


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (["model/fusion=sum"], _fusion_is(SumFusion)),
        (["model/fusion=film"], _fusion_is(FiLMFusion)),
        (["model/fusion=gated"], _fusion_is(GatedFusion)),
        ([], _fusion_is(ConcatFusion)),
        (["optimizer=adamw"], _optimizer_is(torch.optim.AdamW, 1e-3)),
        (["optimizer=paper_sgd"], _optimizer_is(torch.optim.SGD, 5e-4)),
        ([], _logger_wrote(CSVLogger, "csv/metrics.csv")),
        (["logger=tensorboard"], _logger_wrote(TensorBoardLogger, "tensorboard/events.out.*")),
        # WANDB_MODE=disabled writes no files; the offline files are tests/test_wandb_offline.py's.
        (["logger=wandb"], _logger_wrote(WandbLogger, None)),
        (["experiment=synthetic_pid", "model/fusion=gated"], _fusion_is(GatedFusion)),
    ],
    ids=[
        "fusion=sum",
        "fusion=film",
        "fusion=gated",
        "fusion default",
        "optimizer=adamw",
        "optimizer=paper_sgd",
        "logger default",
        "logger=tensorboard",
        "logger=wandb",
        "synthetic_pid gated",
    ],
)
def test_other_groups_take_effect(overrides, check, tmp_path, monkeypatch, built_models):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    train(compose_run([*overrides, *ONE_BATCH_EPOCH], tmp_path), tmp_path)
    (model,) = built_models
    check(model, tmp_path)


def test_a_fusion_head_is_chosen_by_its_target(tmp_path, built_models):
    # Any class built as Head(feature_dims, num_classes) plugs in the same way.
    overrides = [
        "model.fusion._target_=pidsched.models.fusion.SumFusion",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
    ]
    train(compose_run(overrides, tmp_path), tmp_path)
    (model,) = built_models
    assert type(model.fusion) is SumFusion
    assert set(model.fusion.linears) == {"fast", "slow"}  # built with the data's modalities


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
