"""``pidsched-train``: the Hydra app that trains a multimodal classifier with a PID schedule.

Composes the configs shipped as ``pidsched.conf`` (the top-level ``conf/`` of the repository),
then: seeds everything, builds the data module, one encoder per modality, the
:class:`pidsched.MultimodalClassifier`, the schedule callback and the logger; fits; selects the
checkpoint on validation only (best joint-stage epoch, :mod:`pidsched.cli.selection`); tests
that checkpoint once (accuracy and macro-F1 of every head); prints a short summary and writes
``summary.json`` and ``pid_history.json`` into the run directory.

Examples::

    pidsched-train
    pidsched-train experiment=mfeat schedule=joint trainer.max_epochs=20 seed=1
    pidsched-train -m schedule=pid,joint seed=0,1,2
    pidsched-train trainer.max_epochs=300 resume=outputs/2026-01-01/10-00-00   # continue a run

A resumed run (``resume=<run dir>``, or ``ckpt_path=<run dir>/checkpoints/last.ckpt``) takes
the same overrides as the run it continues (``trainer.max_epochs`` may grow): it fits on from
``last.ckpt`` (written at the end of every epoch) in the same run directory, and the schedule,
history, selected checkpoint and summary are those the uninterrupted run would have written.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import lightning as L
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import nn

from pidsched.callbacks import PIDSchedulerCallback, PIDScheduleWarning
from pidsched.callbacks.trainer_checks import spawns_processes
from pidsched.cli.checks import (
    EXIT_CONFIG_ERROR,
    CommandLineSpelling,
    ConfigError,
    added_keys,
    check_fusion,
    check_group_nodes,
    check_modality_count,
    check_ogm_ge_fusion,
    check_resumed_settings,
    checked_max_epochs,
    missing_encoder_message,
    null_group_message,
    settings_of,
    stage_two_warning,
)
from pidsched.cli.csv_history import KeepCSVHistory
from pidsched.cli.run_config import restore_run_config, saved_run_config
from pidsched.cli.selection import JOINT_STAGE, JointStageCheckpoint
from pidsched.viz.history import HISTORY_JSON_NAME, RunHistory, write_history_json

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+; annotations only
    from importlib.resources.abc import Traversable

SUMMARY_NAME = "summary.json"
# The callback's own warnings that stage 2 is out of reach (regular expressions matched at the
# start of a message), which a run that warned in command-line terms leaves out.
STAGE_TWO_WARNINGS = (
    r"Trainer\(max_epochs=\d+\) is not above the stage-1 budget",
    r"The fit ended in stage 1",
)
CHECKPOINT_DIRNAME = "checkpoints"
LAST_CHECKPOINT_NAME = "last.ckpt"


def resumed_run_dir(resume: str | None, ckpt_path: str | None, fresh: str) -> str:
    """The run directory: ``resume``, the run directory of ``ckpt_path``, else ``fresh``.

    ``ckpt_path`` names its run directory when it lies in ``<run dir>/checkpoints/``; another
    checkpoint file resumes into the ``fresh`` directory. Hydra resolves ``hydra.run.dir`` with
    this (resolver ``pidsched_run_dir``), so the logger, ``.hydra/`` and the summary of a
    resumed run land beside the first run's files.
    """
    if resume:
        return str(resume)
    if ckpt_path and Path(ckpt_path).parent.name == CHECKPOINT_DIRNAME:
        return str(Path(ckpt_path).parent.parent)
    return fresh


OmegaConf.register_new_resolver("pidsched_run_dir", resumed_run_dir, replace=True)


def last_checkpoint(checkpoint_dir: Path) -> ModelCheckpoint:
    """The callback that writes ``<checkpoint_dir>/last.ckpt`` at the end of every training epoch,
    after the schedule's epoch-end decision, so a fit interrupted anywhere resumes from the last
    finished epoch.

    ``save_last=True`` with ``save_top_k=0`` would not do: Lightning 2.6 writes ``last`` only at
    a step where a top-k checkpoint was saved, so that file appeared only when the fit ended. One
    top-k checkpoint without a monitor, named ``last``, is the latest epoch's; without a version
    counter it overwrites the file, also in a copied run directory that already holds one.
    """
    return ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=Path(LAST_CHECKPOINT_NAME).stem,
        monitor=None,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint a run resumes from (``resume`` or ``ckpt_path``), None for a new run.

    Raises:
        ValueError: both ``resume`` and ``ckpt_path`` are set.
        FileNotFoundError: the checkpoint does not exist.
    """
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if resume and ckpt_path:
        raise ValueError(
            f"give either resume=<run dir> or ckpt_path=<checkpoint file>, not both (got "
            f"resume={resume} and ckpt_path={ckpt_path})."
        )
    if not resume and not ckpt_path:
        return None
    path = Path(ckpt_path) if ckpt_path else run_dir / CHECKPOINT_DIRNAME / LAST_CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: {path} does not exist. resume=<run dir> needs "
            f"<run dir>/{CHECKPOINT_DIRNAME}/{LAST_CHECKPOINT_NAME}, written after every epoch "
            "of a pidsched-train run; ckpt_path= takes any Lightning checkpoint file."
        )
    return str(path)


def compile_arguments(value: Any) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from the ``compile`` key (false, true or a dict).

    Raises:
        TypeError: ``compile`` is neither a bool nor a mapping.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return {str(key): item for key, item in value.items()}
    raise TypeError(
        f"`compile` must be true, false or torch.compile arguments such as "
        f"compile={{backend:inductor,mode:max-autotune}}; got {value!r}."
    )


log = logging.getLogger("pidsched-train")


def build_encoders(encoder_cfg: Mapping[str, Any], datamodule: Any) -> dict[str, nn.Module]:
    """One encoder per modality of ``datamodule``, from ``model.encoder``.

    ``model.encoder`` maps a modality *name* or a modality *kind* (``vector``, ``audio``,
    ``visual``; ``datamodule.modality_kinds``) to an encoder config; a name entry wins over a
    kind entry. Vector encoders get ``input_dim`` from ``datamodule.input_shapes``.

    Raises:
        ConfigError: (a ``ValueError``) some modality has neither a name nor a kind entry; the
            message gives the override that adds one for each such kind.
    """
    kinds = datamodule.modality_kinds
    missing = {
        name: kinds[name]
        for name in datamodule.modality_names
        if name not in encoder_cfg and kinds[name] not in encoder_cfg
    }
    if missing:
        raise ConfigError(missing_encoder_message(missing, encoder_cfg))
    encoders = {}
    for name in datamodule.modality_names:
        kind = kinds[name]
        spec = encoder_cfg.get(name, encoder_cfg.get(kind))
        extra = {"input_dim": datamodule.input_shapes[name][0]} if kind == "vector" else {}
        with settings_of(f"model.encoder.{name if name in encoder_cfg else kind}.*"):
            encoders[name] = instantiate(spec, **extra)
    return encoders


def build_model(model_cfg: DictConfig, datamodule: Any) -> L.LightningModule:
    """The ``model`` config instantiated with encoders, fusion and classes from the data.

    The encoders come from ``model.encoder`` (:func:`build_encoders`); the fusion head is
    ``model.fusion`` (a ``_target_`` config) instantiated with the encoders' ``feature_dims``
    and the data's ``num_classes``; every other key of ``model`` goes to the model's constructor.
    """
    encoders = build_encoders(model_cfg.get("encoder", {}), datamodule)
    feature_dims = {name: int(encoder.output_dim) for name, encoder in encoders.items()}
    num_classes = int(datamodule.num_classes)
    fusion_cfg = model_cfg.get("fusion")
    model_args = OmegaConf.masked_copy(
        model_cfg, [k for k in model_cfg if k not in ("encoder", "fusion")]
    )
    with settings_of("model.*"):
        fusion = (
            None
            if fusion_cfg is None
            else instantiate(fusion_cfg, feature_dims=feature_dims, num_classes=num_classes)
        )
        make_model = instantiate(model_args, _partial_=True, _convert_="all")
        return make_model(
            encoders=encoders, feature_dims=feature_dims, num_classes=num_classes, fusion=fusion
        )


def build_extra_callbacks(callbacks_cfg: Mapping[str, Any] | None) -> dict[str, Callback]:
    """The ``callbacks`` config (name -> config with ``_target_``), instantiated in order:
    name -> callback.

    This is where callbacks beyond the schedule and the checkpoints join the run, e.g. the
    report callback of :mod:`pidsched.viz` (``pid_history.csv``, ``pid_curves.png``, W&B charts).
    A ``null`` entry is skipped, so ``callbacks.report=null`` removes one.
    """
    return {name: instantiate(c) for name, c in (callbacks_cfg or {}).items() if c is not None}


def check_schedule_settings(
    scheduler: PIDSchedulerCallback,
    trainer: L.Trainer,
    trainer_cfg: Mapping[str, Any],
    modality_names: Sequence[str],
    extra_callbacks: Mapping[str, Callback],
) -> None:
    """The schedule's Trainer checks (:meth:`PIDSchedulerCallback.check_trainer`) before the
    fit, their messages naming the overrides that fix them: a :class:`ConfigError`, where
    ``trainer.fit`` would have raised them with a traceback in Python's terms."""
    added = added_keys(HydraConfig.get().overrides.task)
    spelling = CommandLineSpelling(
        trainer_keys=[key for key in trainer_cfg if f"trainer.{key}" not in added],
        monitor_keys={cb: f"callbacks.{name}.monitor" for name, cb in extra_callbacks.items()},
    )
    try:
        scheduler.check_trainer(trainer, modality_names, spelling)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if spawns_processes(trainer):
        # The summary, the selection and the history are read from the callbacks after the
        # fit, and spawned processes return none of their state.
        raise ConfigError(
            f"trainer.strategy={trainer_cfg.get('strategy')} runs the fit in spawned processes, "
            "which return neither the schedule nor the checkpoint selection to pidsched-train "
            "(its summary would say stage 2 never started); use "
            f"{spelling.trainer('strategy', 'ddp_find_unused_parameters_true')}."
        )


def final_pid(history: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last probe's decomposition (bits), or None when nothing was measured."""
    if not history:
        return None
    record = history[-1]
    keys = ("epoch", "stage", "unique", "redundancy", "synergy", "mutual_information")
    return {key: record[key] for key in keys if key in record}


def test_accuracies(metrics: Mapping[str, float], modality_names: tuple[str, ...]) -> dict:
    """``{modality: acc, ..., "fused": acc}`` from ``trainer.test`` metrics (``test/acc_*``)."""
    return {
        head: float(metrics[f"test/acc_{head}"])
        for head in (*modality_names, "fused")
        if f"test/acc_{head}" in metrics
    }


def test_macro_f1(metrics: Mapping[str, float], modality_names: tuple[str, ...]) -> dict:
    """``{modality: macro-F1, ..., "fused": macro-F1}`` from ``trainer.test`` metrics.

    The model computes them in ``test_step`` (``test/macro_f1_<head>``, torchmetrics over the
    whole test split, synced across ranks), on the same checkpoint as the accuracies.
    """
    return {
        head: float(metrics[f"test/macro_f1_{head}"])
        for head in (*modality_names, "fused")
        if f"test/macro_f1_{head}" in metrics
    }


def _switch_epoch(scheduler: Any) -> int | None:
    """First epoch of stage 2: 0 for a schedule without stage 1 (joint from the start).

    ``summary.json`` and ``pid_history.json`` both take it from here, so they agree.
    """
    if scheduler.controller.initial_stage == JOINT_STAGE:
        return 0
    return scheduler.switch_epoch


def stage2_reached(switch_epoch: int | None, final_epoch: int) -> bool:
    """Whether any epoch up to ``final_epoch`` trained in stage 2 (so the fusion head learned)."""
    return switch_epoch is not None and switch_epoch <= final_epoch


@rank_zero_only
def warn(message: str) -> None:
    """A warning on the console and in the run's log (once, on rank zero)."""
    log.warning(message)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The short table printed at the end of a run."""
    accuracy = " | ".join(f"{head} {acc:.4f}" for head, acc in summary["test_acc"].items())
    if not summary.get("stage2_reached", True):
        accuracy += "  (fused: an untrained head, stage 2 never started)"
    pid = summary["final_pid"]
    if pid is None:
        pid_line = "not measured (no probe in this run)"
    else:
        unique = " | ".join(f"U[{m}] {u:.3f}" for m, u in pid["unique"].items())
        pid_line = (
            f"epoch {pid['epoch']}: {unique} | R {pid['redundancy']:.3f} | S {pid['synergy']:.3f}"
        )
    switch = summary["switch_epoch"]
    rows = [
        ("schedule", summary["schedule"]),
        ("switch epoch", "none (stage 1 never ended)" if switch is None else str(switch)),
        ("selected epoch", f"{summary['selected_epoch']}  ({summary['selection_reason']})"),
        ("test accuracy", accuracy),
        ("final PID (bits)", pid_line),
        ("run directory", summary["run_dir"]),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(["", "pidsched-train summary", *lines, ""])


def group_options(group: str) -> list[str]:
    """The options of a config group (``"model/fusion"`` -> ``["concat", "film", ...]``) on the
    app's search path; empty outside a Hydra run."""
    hydra_instance = GlobalHydra.instance()
    if not hydra_instance.is_initialized():
        return []
    return hydra_instance.config_loader().get_group_options(group)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one experiment from a composed config; return the summary (also written to disk)."""
    check_group_nodes(cfg, HydraConfig.get().runtime.choices, group_options)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    L.seed_everything(cfg.seed, workers=True)

    with settings_of("resume, ckpt_path"):
        ckpt_path = resume_checkpoint(cfg, run_dir)
    saved = saved_run_config()
    if ckpt_path is not None and saved is not None:
        check_resumed_settings(saved[0], OmegaConf.to_container(cfg, resolve=True), saved[1])
    with settings_of("compile"):
        compile_kwargs = compile_arguments(cfg.get("compile"))
    with settings_of("data.*"):
        datamodule = instantiate(cfg.data)
    check_modality_count(datamodule)
    check_fusion(cfg.model, datamodule)
    check_ogm_ge_fusion(cfg)
    model = build_model(cfg.model, datamodule)
    with settings_of("schedule.*"):
        scheduler = instantiate(cfg.schedule, num_classes=int(datamodule.num_classes))
    schedule_name = HydraConfig.get().runtime.choices.get("schedule", "custom")
    warning = stage_two_warning(
        scheduler.controller,
        checked_max_epochs(cfg.trainer.get("max_epochs")),
        cfg.get("stage1_max_epochs"),
        schedule_name,
    )
    if warning:
        warn(warning)
    checkpoint_dir = run_dir / CHECKPOINT_DIRNAME
    with settings_of("selection.*"):
        selection = JointStageCheckpoint(checkpoint_dir, scheduler, **cfg.selection)
    last = last_checkpoint(checkpoint_dir)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    extra_callbacks = build_extra_callbacks(cfg.get("callbacks"))
    callbacks = [scheduler, selection, last, *extra_callbacks.values()]
    if isinstance(logger, CSVLogger):
        # Reads a resumed run's metrics.csv before the logger deletes it (log_hyperparams below).
        callbacks.append(KeepCSVHistory(logger))
    with settings_of("trainer.*"):  # a misspelt key (+trainer.max_epoch=2) or a bad value
        trainer = L.Trainer(
            **OmegaConf.to_container(cfg.trainer, resolve=True),
            default_root_dir=str(run_dir),
            callbacks=callbacks,
            logger=logger,
        )
    check_schedule_settings(
        scheduler, trainer, cfg.trainer, datamodule.modality_names, extra_callbacks
    )
    if logger:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    # Lightning's way to compile; the module then compiles only its pure tensor pieces.
    fitted = model if compile_kwargs is None else torch.compile(model, **compile_kwargs)
    with warnings.catch_warnings():
        if warning:
            # Said above in the command line's terms; the callback says it again in Python's,
            # at setup (Trainer(max_epochs=...)) and at the end of the fit (the summary marks it).
            for said in STAGE_TWO_WARNINGS:
                warnings.filterwarnings("ignore", message=said, category=PIDScheduleWarning)
        trainer.fit(fitted, datamodule=datamodule, ckpt_path=ckpt_path)
    # trainer.test restores the selected checkpoint, callback states included, so everything
    # the summary reports about the fit is read before it.
    final_epoch = max(trainer.current_epoch - 1, 0)
    history = RunHistory.from_records(
        scheduler.history, switch_epoch=_switch_epoch(scheduler), final_epoch=final_epoch
    )
    summary = {
        "schedule": schedule_name,
        "seed": int(cfg.seed),
        "selected_epoch": selection.best_epoch,
        "selection_reason": selection.reason(),
        "selection_monitor": selection.monitor,
        "selection_score": selection.best_score,
        "checkpoint": selection.best_path,
        "switch_epoch": history.switch_epoch,
        "stage2_reached": stage2_reached(history.switch_epoch, final_epoch),
        "final_epoch": final_epoch,
        "final_pid": final_pid(history.records),
        "run_dir": str(run_dir),
    }
    # Tested once, on the validation-selected checkpoint (final weights if there is none).
    test_metrics = trainer.test(model, datamodule=datamodule, ckpt_path=selection.best_path)[0]
    summary["test_acc"] = test_accuracies(test_metrics, tuple(datamodule.modality_names))
    summary["test_macro_f1"] = test_macro_f1(test_metrics, tuple(datamodule.modality_names))
    if trainer.is_global_zero:
        write_history_json(history, run_dir / HISTORY_JSON_NAME)
        (run_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary))
    return summary


def main() -> None:
    """Console entry point ``pidsched-train``: :func:`run` under Hydra.

    A config that cannot run ends the command with its :class:`ConfigError` message (the
    override that fixes it) on standard error, no traceback, and exit status 2; so does a
    config group set to ``null`` (``logger=null``), which Hydra itself would end with a
    traceback.
    """
    message = null_group_message(sys.argv[1:], config_groups())
    if message:
        fail(message)
    run()


def config_groups() -> dict[str, list[str]]:
    """pidsched's config groups (``"model/fusion"``) and their options, read from the installed
    ``conf/`` (:func:`group_options` needs a Hydra run, which a ``null`` group never starts)."""
    groups: dict[str, list[str]] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(("_", ".")):
                group = f"{prefix}{entry.name}"
                groups[group] = sorted(
                    item.name.removesuffix(".yaml")
                    for item in entry.iterdir()
                    if item.name.endswith(".yaml")
                )
                walk(entry, f"{group}/")

    walk(importlib.resources.files("pidsched.conf"), "")
    return groups


@hydra.main(version_base="1.3", config_path="pkg://pidsched.conf", config_name="config")
def run(cfg: DictConfig) -> float | None:
    """One ``pidsched-train`` run (or sweep job) of the composed config ``cfg``.

    Returns:
        The validation score of the selected checkpoint (for Hydra sweepers; never a test
        number, so a sweep cannot select on the test split).
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return train(cfg, run_dir)["selection_score"]
    except MissingMandatoryValue as error:
        restore_run_config()
        fail(f"{error.full_key} has no value; set it on the command line: {error.full_key}=...")
    except ConfigError as error:
        restore_run_config()  # a rejected resume leaves the run's own record of its config
        fail(str(error))


def fail(message: str) -> None:
    """End ``pidsched-train`` with a configuration error: one message, exit status 2."""
    print(f"pidsched-train: error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG_ERROR)


if __name__ == "__main__":
    main()
