"""Reload a finished ``pidsched-train`` run: the model from its config, weights from a checkpoint.

``MultimodalClassifier.load_from_checkpoint`` cannot rebuild a run's model on its own: the
encoders and the fusion head are modules built by the app, not hyperparameters. The run
directory holds everything needed instead: ``.hydra/config.yaml`` (the composed config),
``.hydra/hydra.yaml`` (the directory the run was launched from, against which relative data
paths resolve) and ``checkpoints/`` (the validation-selected checkpoint named in
``summary.json``, and ``last.ckpt``).

Example::

    from pidsched.cli.reload import load_run

    model, datamodule = load_run("outputs/2026-12-01/21-00-00")
    trainer = lightning.Trainer(logger=False)
    trainer.test(model, datamodule=datamodule)  # the summary's test metrics again
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pidsched.cli.train import CHECKPOINT_DIRNAME, SUMMARY_NAME, build_model

__all__ = ["load_run"]

LAST_CHECKPOINT = "last.ckpt"


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _checkpoint_path(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """The checkpoint file: as given (a path, or a name inside ``checkpoints/``), else the one
    ``summary.json`` selected, else ``checkpoints/last.ckpt``."""
    directory = run_dir / CHECKPOINT_DIRNAME
    if checkpoint is None:
        summary = run_dir / SUMMARY_NAME
        selected = json.loads(summary.read_text()).get("checkpoint") if summary.is_file() else None
        # The run directory may have moved since: look the file up by name beside it.
        path = directory / (Path(selected).name if selected else LAST_CHECKPOINT)
    else:
        path = Path(checkpoint)
        path = path if path.is_file() else directory / path
    if not path.is_file():
        found = sorted(p.name for p in directory.glob("*.ckpt")) if directory.is_dir() else []
        raise FileNotFoundError(
            f"`checkpoint`: {str(path)!r} is not a file; {str(directory)!r} holds {found}. "
            "Pass checkpoint= one of these names or a path to a .ckpt file."
        )
    return path


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None
) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Rebuild a ``pidsched-train`` run's model and data module and load its trained weights.

    The data module and the model are built from ``<run_dir>/.hydra/config.yaml`` exactly as the
    run built them (the data module in the run's launch directory, so a relative ``data.path``
    or ``data.root`` means what it meant then); the weights come from ``checkpoint``. The model
    is returned in ``eval()`` mode, on the CPU.

    Args:
        run_dir: the run directory (the one holding ``summary.json`` and ``.hydra/``).
        checkpoint: None for the validation-selected checkpoint named in ``summary.json`` (or
            ``last.ckpt`` when there is none); else a file name inside ``checkpoints/`` such as
            ``"last.ckpt"``, or a path.

    Returns:
        ``(model, datamodule)``; call ``datamodule.setup()`` (or pass it to a ``Trainer``)
        before reading its splits.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``.hydra/config.yaml``, or the checkpoint is
            missing (the message lists the checkpoints found).
    """
    run_dir = Path(run_dir).resolve()
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"`run_dir`: {str(config_path)!r} does not exist; pass the directory of a "
            "pidsched-train run (it holds summary.json, .hydra/ and checkpoints/)."
        )
    cfg = OmegaConf.load(config_path)
    checkpoint_path = _checkpoint_path(run_dir, checkpoint)
    hydra_path = run_dir / ".hydra" / "hydra.yaml"
    launch_dir = (
        Path(OmegaConf.load(hydra_path).hydra.runtime.cwd) if hydra_path.is_file() else Path.cwd()
    )
    with _working_directory(launch_dir):
        datamodule = instantiate(cfg.data)
    model = build_model(cfg.model, datamodule)
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    return model.eval(), datamodule
