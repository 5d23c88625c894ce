"""The installed ``pidsched-train`` command, end to end in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _audiovisual_helpers import make_cremad
from _hydra_helpers import compose_run
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from pidsched.cli.checks import (
    ENCODER_FOR_KIND,
    EXIT_CONFIG_ERROR,
    ConfigError,
    check_group_nodes,
    null_group_message,
)
from pidsched.cli.selection import JointStageCheckpoint
from pidsched.cli.train import (
    build_encoders,
    config_groups,
    format_summary,
    group_options,
    train,
)
from pidsched.cli.train import main as train_main
from pidsched.data import MFeatDataModule

COMMAND = shutil.which("pidsched-train") or str(Path(sys.executable).with_name("pidsched-train"))
QUIET = ["trainer.enable_progress_bar=false"]
# A short run with both stages: one unimodal epoch, then two joint ones.
TWO_STAGES = [
    "trainer.max_epochs=3",
    "stage1_max_epochs=1",
    "schedule.controller.min_unimodal_epochs=0",
    "data.num_samples=900",
    "callbacks.report=null",
    *QUIET,
]
# The smallest run that still fits, selects and tests: for commands that only need to start.
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.report=null",
    *QUIET,
]
CONF = Path(__file__).resolve().parents[1] / "conf"


def run_command(
    args: list[str], cwd: Path, timeout: int = 300, returncode: int = 0, warn: bool = False
) -> subprocess.CompletedProcess:
    """``pidsched-train args`` in ``cwd``; Python's warnings are silenced unless ``warn``."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="default" if warn else "ignore")
    result = subprocess.run(
        [COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == returncode, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_two_stages(tmp_path: Path, *overrides: str) -> dict:
    """Run ``TWO_STAGES`` with ``overrides`` in ``tmp_path / "run"``; its ``summary.json``."""
    run_dir = tmp_path / "run"
    run_command([f"hydra.run.dir={run_dir}", *overrides, *TWO_STAGES], tmp_path)
    return json.loads((run_dir / "summary.json").read_text())


def test_the_command_is_installed():
    assert Path(COMMAND).exists(), "pidsched-train is not installed: pip install -e ."


@pytest.mark.slow
def test_default_experiment_end_to_end(tmp_path):
    """The default experiment with a reduced epoch budget: both stages, selection, test."""
    run_dir = tmp_path / "run"
    result = run_command(
        [
            f"hydra.run.dir={run_dir}",
            "trainer.max_epochs=4",
            "stage1_max_epochs=2",
            "schedule.controller.min_unimodal_epochs=1",
            *QUIET,
        ],
        cwd=tmp_path,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    history = json.loads((run_dir / "pid_history.json").read_text())

    assert summary["schedule"] == "pid"
    assert summary["switch_epoch"] is not None and 1 <= summary["switch_epoch"] <= 2
    # Selected on validation among joint-stage epochs only, and that checkpoint was tested.
    assert summary["switch_epoch"] <= summary["selected_epoch"] <= 3
    assert "val/acc_fused" in summary["selection_reason"]
    assert Path(summary["checkpoint"]).name == f"best-epoch={summary['selected_epoch']:03d}.ckpt"
    assert set(summary["test_acc"]) == {"fast", "slow", "fused"}
    assert summary["final_pid"]["epoch"] == 3 and set(summary["final_pid"]["unique"]) == {
        "fast",
        "slow",
    }
    assert [r["epoch"] for r in history["records"]] == [0, 1, 2, 3]
    assert {r["stage"] for r in history["records"]} == {"unimodal", "joint"}
    for name in (
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
        "pid_history.csv",
        "pid_curves.png",
        ".hydra/config.yaml",
    ):
        assert (run_dir / name).is_file(), name
    assert "pidsched-train summary" in result.stdout and "switch epoch" in result.stdout
    metrics_header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "pid/synergy" in metrics_header and "val/acc_fused" in metrics_header


@pytest.mark.slow
def test_multirun_writes_one_directory_per_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_command(
        [
            "-m",
            "schedule=joint,fixed",
            "seed=0,1",
            f"hydra.sweep.dir={sweep_dir}",
            "trainer.max_epochs=2",
            "stage1_max_epochs=1",
            "trainer.limit_train_batches=5",
            "callbacks.report=null",
            *QUIET,
        ],
        cwd=tmp_path,
    )
    summaries = sorted(sweep_dir.glob("*/summary.json"))
    assert len(summaries) == 4
    jobs = {(s["schedule"], s["seed"]) for s in map(json.loads, map(Path.read_text, summaries))}
    assert jobs == {("joint", 0), ("joint", 1), ("fixed", 0), ("fixed", 1)}
    # One directory per job, named by its number: override values may be paths or many.
    assert sorted(p.parent.name for p in summaries) == ["0", "1", "2", "3"]
    # The summary and the history file agree on when stage 2 began: at once for joint (no
    # stage 1), after the one fixed unimodal epoch for fixed.
    for path in summaries:
        summary = json.loads(path.read_text())
        history = json.loads((path.parent / "pid_history.json").read_text())
        expected = {"joint": 0, "fixed": 1}[summary["schedule"]]
        assert summary["switch_epoch"] == history["switch_epoch"] == expected
        assert summary["stage2_reached"] is True
        # The baselines probe too (curves and a picture to compare), deciding nothing.
        assert [record["epoch"] for record in history["records"]] == [0, 1]
        assert summary["final_pid"]["epoch"] == 1


def test_a_baseline_probes_unless_measure_is_off(tmp_path):
    measured = train(compose_run(["schedule=joint", *TINY], tmp_path / "on"), tmp_path / "on")
    assert measured["final_pid"] is not None and measured["final_pid"]["epoch"] == 0
    off = ["schedule=joint", "schedule.controller.measure=false", *TINY]
    assert train(compose_run(off, tmp_path / "off"), tmp_path / "off")["final_pid"] is None


@pytest.mark.ddp
def test_ddp_with_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "run"
    result = run_command(
        [
            f"hydra.run.dir={run_dir}",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=3",
            "stage1_max_epochs=1",
            "schedule.controller.min_unimodal_epochs=0",
            "trainer.limit_train_batches=10",
            "trainer.log_every_n_steps=5",
            *QUIET,
        ],
        cwd=tmp_path,
        timeout=400,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["switch_epoch"] == 1
    assert summary["selected_epoch"] in (1, 2)
    assert len(json.loads((run_dir / "pid_history.json").read_text())["records"]) == 3
    assert result.stdout.count("pidsched-train summary") == 1  # rank zero only
    assert not list(tmp_path.glob("outputs"))  # no stray run directories from rank 1


def test_missing_encoder_is_named():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pidsched.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=mfeat"])
    with pytest.raises(ValueError, match=r"modality 'fou' \(kind 'vector'\)"):
        build_encoders({"audio": cfg.model.encoder.vector}, MFeatDataModule())
    GlobalHydra.instance().clear()


def checked_composition(overrides: list[str]) -> None:
    """Compose ``overrides`` as ``pidsched-train`` does and run its group-node check."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="pidsched.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
            check_group_nodes(cfg, cfg.hydra.runtime.choices, group_options)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.fusion=film", "model/fusion=film (options: concat, film, gated, sum)"),
        (
            "model.encoder.vector=resnet18_audio",
            "model/encoder@model.encoder.vector=resnet18_audio (options: mlp, resnet18_audio, "
            "resnet18_visual)",
        ),
        ("model.fusion=attention", "model/fusion=<one of concat, film, gated, sum>"),
    ],
)
def test_a_group_option_set_as_a_key_names_the_slash_override(override, named):
    with pytest.raises(ConfigError) as caught:
        checked_composition([override])
    key = override.split("=")[0]
    assert str(caught.value).startswith(f"{override} sets the key {key} to a plain value")
    assert named in str(caught.value)


def test_group_choices_and_values_below_them_pass_the_group_node_check():
    checked_composition([])
    checked_composition(["model/fusion=film", "model.encoder.vector.output_dim=8", "data=mfeat"])
    checked_composition(["~logger", "callbacks.report=null"])


def test_name_entries_win_over_kind_entries():
    spec = {"_target_": "pidsched.models.encoders.MLPEncoder", "hidden_dims": [8], "output_dim": 4}
    encoders = build_encoders(
        {"vector": spec, "mor": {**spec, "output_dim": 2}}, MFeatDataModule(views=("fou", "mor"))
    )
    assert encoders["fou"].output_dim == 4 and encoders["mor"].output_dim == 2
    assert encoders["fou"].input_dim == 76 and encoders["mor"].input_dim == 6


def test_selection_ignores_stage_one_and_says_why(tmp_path):
    def save_checkpoint(path, weights_only):
        assert weights_only is False  # the whole checkpoint: callbacks and optimisers too
        Path(path).write_text("checkpoint")

    scheduler = SimpleNamespace(stage="unimodal")
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=0,
        callback_metrics={},
        state=SimpleNamespace(fn="fit"),
        save_checkpoint=save_checkpoint,
    )
    selection = JointStageCheckpoint(tmp_path, scheduler)
    for epoch, stage, acc in [
        (0, "unimodal", 0.99),
        (1, "joint", 0.6),
        (2, "joint", 0.8),
        (3, "joint", 0.7),
    ]:
        scheduler.stage, trainer.current_epoch = stage, epoch
        trainer.callback_metrics = {"val/acc_fused": torch.tensor(acc)}
        selection.on_validation_end(trainer, None)
    assert selection.best_epoch == 2 and selection.joint_epochs == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["best-epoch=002.ckpt"]
    assert "0.8000 among the 3 joint-stage epochs 1-3" in selection.reason()

    restored = JointStageCheckpoint(tmp_path, scheduler)
    restored.load_state_dict(selection.state_dict())
    assert restored.reason() == selection.reason()
    assert restored.best_path == selection.best_path

    # A copied run directory resumes with its own checkpoint and never deletes the original's.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("copy"))
    moved = JointStageCheckpoint(copy, scheduler)
    moved.load_state_dict(selection.state_dict())
    assert moved.best_path == str(copy / "best-epoch=002.ckpt")
    scheduler.stage, trainer.current_epoch = "joint", 4
    trainer.callback_metrics = {"val/acc_fused": torch.tensor(0.9)}
    moved.on_validation_end(trainer, None)
    assert sorted(p.name for p in copy.iterdir()) == ["best-epoch=004.ckpt"]
    assert (tmp_path / "best-epoch=002.ckpt").is_file()


def test_summary_table_reports_what_was_asked():
    table = format_summary(
        {
            "schedule": "pid_paper",
            "switch_epoch": None,
            "selected_epoch": None,
            "selection_reason": "no epoch was trained in the joint stage",
            "test_acc": {"a": 0.5, "b": 0.25, "fused": 0.75},
            "final_pid": None,
            "run_dir": "/r",
        }
    )
    assert "a 0.5000 | b 0.2500 | fused 0.7500" in table
    assert "not measured (no probe in this run)" in table and "none (stage 1 never ended)" in table
    assert "untrained" not in table  # a summary without stage2_reached says nothing about it


def test_summary_table_marks_an_untrained_fusion_head():
    summary = {
        "schedule": "pid",
        "switch_epoch": None,
        "stage2_reached": False,
        "selected_epoch": None,
        "selection_reason": "no epoch was trained in the joint stage",
        "test_acc": {"a": 0.5, "b": 0.25, "fused": 0.0875},
        "final_pid": None,
        "run_dir": "/r",
    }
    assert "fused 0.0875  (fused: an untrained head, stage 2 never started)" in format_summary(
        summary
    )
    assert "untrained" not in format_summary({**summary, "stage2_reached": True})


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory):
    return make_cremad(tmp_path_factory.mktemp("cremad"), clips_per_class=4, test_per_class=1)


def overrides_named_in(message: str, pattern: str) -> list[str]:
    """The overrides matching ``pattern`` that an error message tells the user to add."""
    return re.findall(pattern, message)


# (arguments that cannot run, the overrides the message must name, the pattern to take them
# from the message, arguments that make a follow-up run cheap)
CONFIG_ERRORS = {
    "one view": (
        ["experiment=mfeat", "data.views=[fou]"],
        ["data.views=[fou,pix]"],
        r"data\.views=\[fou,pix\]",
        ["schedule=joint"],
    ),
    "film with three views": (
        ["experiment=mfeat", "data.views=[fou,pix,kar]", "model/fusion=film"],
        ["model/fusion=concat"],
        r"model/fusion=concat",
        ["schedule=joint"],
    ),
    "audio-visual data without their encoders": (
        ["data=cremad", "data.root={cremad}", "data.image_size=32", "data.num_workers=0"],
        [
            "+model/encoder@model.encoder.audio=resnet18_audio",
            "+model/encoder@model.encoder.visual=resnet18_visual",
        ],
        r"\+model/encoder@model\.encoder\.\w+=\w+",
        ["schedule=joint", "data.batch_size=4"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_errors_speak_cli_and_their_fix_works(case, tmp_path, cremad_root):
    """One message, no traceback, exit status 2; then the named overrides, added, run."""
    bad, named, pattern, cheap = CONFIG_ERRORS[case]
    bad = [arg.format(cremad=cremad_root) for arg in bad]
    failed = run_command(
        [*bad, f"hydra.run.dir={tmp_path / 'bad'}", *TINY],
        cwd=tmp_path,
        returncode=EXIT_CONFIG_ERROR,
    )
    output = failed.stdout + failed.stderr
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
    message = next(line for line in failed.stderr.splitlines() if "error:" in line)
    assert message.startswith("pidsched-train: error: ")
    for override in named:
        assert override in message
    assert "fusion='" not in message  # Python keyword syntax is not a command-line override

    fix = overrides_named_in(message, pattern)
    run_dir = tmp_path / "fixed"
    run_command([*bad, *fix, *cheap, f"hydra.run.dir={run_dir}", *TINY], cwd=tmp_path)
    assert (run_dir / "summary.json").is_file()


@pytest.mark.slow
def test_a_group_option_set_as_a_key_fails_in_cli_terms_and_its_fix_runs(tmp_path):
    """``model.fusion=film``: one message, exit status 2; the override it names, given instead,
    trains with the FiLM head."""
    failed = run_command(
        ["model.fusion=film", f"hydra.run.dir={tmp_path / 'bad'}", *TINY],
        cwd=tmp_path,
        returncode=EXIT_CONFIG_ERROR,
    )
    assert "Traceback" not in failed.stderr and "HYDRA_FULL_ERROR" not in failed.stderr
    message = failed.stderr.strip().splitlines()[-1]
    fix = re.search(r"instead: (\S+) \(options", message).group(1)
    assert fix == "model/fusion=film"
    run_dir = tmp_path / "fixed"
    fixed = run_command([fix, "schedule=joint", f"hydra.run.dir={run_dir}", *TINY], cwd=tmp_path)
    composed = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert composed.model.fusion._target_ == "pidsched.models.fusion.FiLMFusion"
    assert (run_dir / "summary.json").is_file()
    # The selected checkpoint is saved whole, and says so: no Lightning line about weights_only.
    assert (run_dir / "checkpoints" / "best-epoch=000.ckpt").is_file()
    assert "weights_only" not in fixed.stdout + fixed.stderr


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            ["data=arrays", "data.path={missing}"],
            r"^the settings data\.\* were rejected: `path`=.* set data\.path to an existing",
        ),
        (
            ["resume={missing}"],
            r"^the settings resume, ckpt_path were rejected: cannot resume: .*last\.ckpt does "
            "not exist",
        ),
        (["compile=yes"], r"^the settings compile were rejected: `compile` must be true, false"),
        # Lightning's TypeError (a traceback) for a misspelt key; a crash in the stage-2 check.
        (
            ["+trainer.max_epoch=2"],
            r"^the settings trainer\.\* were rejected: .*unexpected keyword argument 'max_epoch'",
        ),
        (["trainer.max_epochs=two"], r"^trainer\.max_epochs=two is not an integer"),
        # OGM-GE scales per-modality shares of the fused logits: a traceback at the first step.
        (
            ["schedule=ogm_ge", "model/fusion=film"],
            r"^schedule=ogm_ge .* model/fusion=film does not have; use model/fusion=concat or",
        ),
    ],
)
def test_missing_paths_and_bad_run_settings_are_config_errors(overrides, said, tmp_path):
    """Raised before training as ConfigError, which pidsched-train prints as one message with
    exit status 2 (they used to end it with a traceback, or with Hydra's quoted one-liner)."""
    missing = tmp_path / "missing"
    cfg = compose_run([override.format(missing=missing) for override in overrides], tmp_path)
    with pytest.raises(ConfigError, match=said):
        train(cfg, tmp_path)


ES = "lightning.pytorch.callbacks.EarlyStopping"
CKPT = "lightning.pytorch.callbacks.ModelCheckpoint"


@pytest.mark.parametrize(
    ("overrides", "said", "fix"),
    [
        (
            ["trainer.check_val_every_n_epoch=2"],
            r"^validation must run on every probe epoch: schedule\.probe_every_n_epochs=1 must be "
            r"a multiple of trainer\.check_val_every_n_epoch=2; e\.g\. (\S+)\.$",
            "trainer.check_val_every_n_epoch=1",
        ),
        # A key the trainer config lacks is fixed by adding it, with '+'.
        (
            ["+trainer.val_check_interval=5"],
            r"once per epoch, at its end: use (\S+) \(a float: an int counts training batches\), "
            r"got 5\.$",
            "+trainer.val_check_interval=1.0",
        ),
        (
            ["trainer.limit_val_batches=0"],
            r"needs validation batches, but trainer\.limit_val_batches=0; give it a positive "
            r"value, e\.g\. (\S+)\.$",
            "trainer.limit_val_batches=1.0",
        ),
        (
            [
                "schedule.probe_every_n_epochs=2",
                f"+callbacks.ck._target_={CKPT}",
                "+callbacks.ck.monitor=pid/synergy",
                "trainer.max_epochs=2",
            ],
            r"^callbacks\.ck\.monitor=pid/synergy monitors a value logged only on probe epochs "
            r"\(every 2\), but validation runs every 1: .* Use (\S+) or "
            r"schedule\.probe_every_n_epochs=1\.$",
            "trainer.check_val_every_n_epoch=2",
        ),
        (
            [f"+callbacks.es._target_={ES}", "+callbacks.es.monitor=val/acc_slow"],
            r"^callbacks\.es\.monitor=val/acc_slow monitors a metric of modality 'slow'.* Bound "
            r"stage 1 with stage1_max_epochs=\.\.\. instead",
            None,
        ),
        # Spawned processes return no callback state: the summary said stage 2 never started.
        (
            ["trainer.devices=2", "+trainer.strategy=ddp_spawn_find_unused_parameters_true"],
            r"^trainer\.strategy=ddp_spawn_find_unused_parameters_true runs the fit in spawned "
            r"processes, .* use \+trainer\.strategy=ddp_find_unused_parameters_true\.$",
            None,
        ),
        (
            ["+trainer.strategy=ddp"],
            r"DDP must allow unused parameters: use \+trainer\.strategy="
            r"ddp_find_unused_parameters_true\.$",
            None,
        ),
    ],
)
def test_schedule_setup_errors_name_overrides_and_the_fix_runs(overrides, said, fix, tmp_path):
    """The schedule's Trainer checks run before the fit and speak the command line: they used
    to be tracebacks from inside trainer.fit, in Python's terms (Trainer(...=...))."""
    with pytest.raises(ConfigError, match=said) as refused:
        train(compose_run([*TINY, *overrides], tmp_path / "bad"), tmp_path / "bad")
    assert "Trainer(" not in str(refused.value) and "Callback(" not in str(refused.value)
    if fix is None:
        return
    assert re.search(said, str(refused.value)).group(1) == fix
    key = fix.lstrip("+").split("=")[0]
    fixed = [o for o in overrides if o.lstrip("+").split("=")[0] != key] + [fix]
    summary = train(compose_run([*TINY, *fixed], tmp_path / "fixed"), tmp_path / "fixed")
    assert summary["final_epoch"] >= 0


def test_a_selection_monitor_validation_never_logs_fails_in_the_first_epoch(tmp_path):
    """Checked at the first validation, inside stage 1, as a ConfigError naming the logged
    metrics (it was a KeyError at the first joint-stage validation, after all of stage 1)."""
    overrides = [
        "selection.monitor=val/acc_fuse",
        "trainer.max_epochs=20",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "callbacks.report=null",
        "trainer.enable_progress_bar=false",
    ]
    with pytest.raises(
        ConfigError,
        match=r"^selection\.monitor=val/acc_fuse is not a metric .*"
        r"val/acc_fused, .*selection\.monitor=val/acc_fused\.$",
    ):
        train(compose_run(overrides, tmp_path), tmp_path)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # no epoch finished


@pytest.mark.slow
def test_an_incomplete_data_root_is_said_in_lines_with_exit_status_2(tmp_path):
    """The data module's expected layout and missing paths, as lines, not Hydra's quoted repr."""
    failed = run_command(
        [
            "data=cremad",
            f"data.root={tmp_path}",
            "+model/encoder@model.encoder.audio=resnet18_audio",
            "+model/encoder@model.encoder.visual=resnet18_visual",
            f"hydra.run.dir={tmp_path / 'run'}",
            *TINY,
        ],
        cwd=tmp_path,
        returncode=EXIT_CONFIG_ERROR,
    )
    assert "Traceback" not in failed.stderr and "HYDRA_FULL_ERROR" not in failed.stderr
    lines = failed.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("pidsched-train: error: "))
    assert "the settings data.* were rejected" in lines[first]
    assert "Missing:" in lines[first:] and f"  - {tmp_path / 'train.csv'}" in lines[first:]
    assert lines[-1].startswith("(`pidsched-train --cfg job`")


def test_encoder_hints_name_shipped_options():
    for kind, option in ENCODER_FOR_KIND.items():
        assert (CONF / "model" / "encoder" / f"{option}.yaml").is_file(), kind


@pytest.mark.slow
def test_stage_two_out_of_reach_is_warned_and_marked(tmp_path):
    """A budget that ends inside stage 1: a warning before training, the summary marked; the
    warning's own shorter-stage-1 override then reaches stage 2."""
    short = ["experiment=mfeat", "trainer.max_epochs=2", *TINY[1:]]
    run_dir = tmp_path / "short"
    result = run_command([*short, f"hydra.run.dir={run_dir}"], cwd=tmp_path, warn=True)
    output = result.stdout + result.stderr
    warning = next(line for line in output.splitlines() if "stage-1 budget" in line)
    assert "trainer.max_epochs>20" in warning
    # Said once, in the command line's terms: the callback's Python-syntax warnings of the same
    # thing (at setup and at the end of the fit) are left out.
    assert output.count("stage-1 budget") == 1
    assert "Trainer(max_epochs" not in output and "The fit ended in stage 1" not in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stage2_reached"] is False and summary["switch_epoch"] is None
    assert "untrained head, stage 2 never started" in result.stdout

    fix = re.search(r"\(e\.g\. (stage1_max_epochs=[^)]*)\)", warning).group(1).split()
    run_dir = tmp_path / "fixed"
    result = run_command([*short, *fix, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stage2_reached"] is True and summary["switch_epoch"] == 1
    assert "stage-1 budget" not in result.stdout + result.stderr


def test_config_error_is_a_value_error_naming_every_missing_encoder():
    with pytest.raises(ConfigError, match=r"'fou' \(kind 'vector'\), 'pix'"):
        build_encoders({}, MFeatDataModule())
    assert issubclass(ConfigError, ValueError)


def test_a_config_group_set_to_null_names_its_removal_and_the_removal_runs(
    tmp_path, monkeypatch, capsys
):
    """``logger=null`` ended in Hydra's traceback ("Config group override must be a string or a
    list. Got NoneType"); now one message naming ``~logger`` and the options, exit status 2."""
    monkeypatch.setattr(sys, "argv", ["pidsched-train", "logger=null", *TINY])
    with pytest.raises(SystemExit) as exit_info:
        train_main()  # the console entry: refused before Hydra composes anything
    assert exit_info.value.code == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err.strip() == (
        "pidsched-train: error: logger=null sets the config group logger to null, which Hydra "
        "cannot do; remove it with ~logger or choose one of its options: logger=<option> "
        "(options: csv, tensorboard, wandb)."
    )
    summary = train(compose_run(["~logger", *TINY], tmp_path), tmp_path)
    assert summary["final_epoch"] == 0 and not list(tmp_path.rglob("metrics.csv"))


def test_null_group_messages_cover_nested_groups_and_leave_keys_alone():
    groups = config_groups()
    assert groups["model/fusion"] == ["concat", "film", "gated", "sum"]
    nested = null_group_message(["+model/encoder@model.encoder.audio=null"], groups)
    assert "remove it with ~model/encoder@model.encoder.audio or" in nested
    # Keys (not groups) may be null: callbacks.report=null removes a callback.
    assert null_group_message(["callbacks.report=null", "resume=null"], groups) is None
