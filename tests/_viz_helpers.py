"""Fabricated probe histories in the documented record format (docs/architecture.md)."""

from __future__ import annotations

import math
from collections.abc import Container
from pathlib import Path
from typing import Any


def fabricated_history(
    modalities: tuple[str, ...] = ("audio", "video"),
    num_probes: int = 12,
    switch_epoch: int | None = 6,
    paused_epochs: dict[str, Container[int]] | None = None,
    probe_every: int = 1,
    offset: float = 0.0,
    interval_width: float | None = None,
    uncertified_epochs: Container[int] = (),
) -> list[dict[str, Any]]:
    """Probe records with smooth, distinct values so that tests can tell the series apart.

    Args:
        modalities: modality names, in order.
        num_probes: number of records.
        switch_epoch: first epoch recorded with stage "joint" (None: stage 1 throughout).
        paused_epochs: modality -> epochs at which the record lists it as paused.
        probe_every: epochs between probes.
        offset: added to every information value (bits), to tell runs apart.
        interval_width: when given, each probe has a 90 % ``interval`` of ``value -
            interval_width`` to ``value + 2 * interval_width`` (bits) for every atom, and a
            ``certified`` flag; None: records as written before bootstrap intervals existed.
        uncertified_epochs: epochs whose probe is recorded with ``certified: False``.
    """
    paused_epochs = paused_epochs if paused_epochs is not None else {modalities[0]: range(2, 4)}
    records = []
    for probe in range(num_probes):
        epoch = probe * probe_every
        unique = {
            name: round(offset + 0.1 * (index + 1) + 0.02 * probe * (index + 1), 6)
            for index, name in enumerate(modalities)
        }
        heads = {
            name: round(offset + 0.3 + 0.03 * probe + 0.01 * i, 6)
            for i, name in enumerate(modalities)
        }
        records.append(
            {
                "epoch": epoch,
                "stage": "joint"
                if switch_epoch is not None and epoch >= switch_epoch
                else "unimodal",
                "paused": [name for name in modalities if epoch in paused_epochs.get(name, ())],
                "unique": unique,
                "redundancy": round(offset + 0.2 + 0.01 * probe, 6),
                "synergy": round(offset + 0.05 + 0.3 * math.sin(probe / 4) ** 2, 6),
                "mutual_information": round(offset + 0.9 + 0.05 * probe, 6),
                "mutual_information_per_modality": {
                    name: round(offset + 0.4 + 0.02 * probe, 6) for name in modalities
                },
                "gap": 1e-8,
                "val_acc": {**heads, "fused": round(offset + 0.35 + 0.04 * probe, 6)},
            }
        )
        if interval_width is not None:
            records[-1]["certified"] = epoch not in uncertified_epochs
            records[-1]["interval"] = _interval(records[-1], interval_width)
    return records


def _interval(record: dict[str, Any], width: float) -> dict[str, Any]:
    """An asymmetric interval around each atom (low = value - width, high = value + 2 width)."""

    def around(value: float) -> list[float]:
        return [round(value - width, 6), round(value + 2 * width, 6)]

    return {
        "level": 0.9,
        "unique": {name: around(value) for name, value in record["unique"].items()},
        **{atom: around(record[atom]) for atom in ("redundancy", "synergy", "mutual_information")},
    }


def fit_tiny_pid_run(
    root: Path,
    loggers: Any = False,
    callbacks: tuple = (),
    max_epochs: int = 4,
    controller: Any = None,
) -> Any:
    """Fits a two-modality `MultimodalClassifier` with the real `PIDSchedulerCallback`.

    On 96 random samples, 3 classes, where "audio" carries a strong class signal and "video"
    a weak one; stage 1 ends by epoch 2 at the latest, so a fit of 4 epochs has both stages.

    ``controller`` replaces that run's `PIDController`.

    Returns:
        The `PIDSchedulerCallback` after the fit.
    """
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from pidsched.callbacks.pid_scheduler import PIDSchedulerCallback
    from pidsched.controllers import PIDController
    from pidsched.data.in_memory import MultimodalTensorDataset
    from pidsched.models.multimodal import MultimodalClassifier

    generator = torch.Generator().manual_seed(0)
    num_samples, num_classes = 96, 3
    target = torch.randint(0, num_classes, (num_samples,), generator=generator)
    signal = nn.functional.one_hot(target, 4).float()
    inputs = {
        "audio": torch.randn(num_samples, 4, generator=generator) + 2.0 * signal,
        "video": torch.randn(num_samples, 4, generator=generator) + 0.5 * signal,
    }
    loader = DataLoader(MultimodalTensorDataset(inputs, target), batch_size=32)
    model = MultimodalClassifier(
        {name: nn.Linear(4, 8) for name in inputs}, {name: 8 for name in inputs}, num_classes
    )
    scheduler = PIDSchedulerCallback(
        num_classes=num_classes,
        controller=controller or PIDController(min_unimodal_epochs=1, max_unimodal_epochs=3),
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        default_root_dir=root,
        logger=loggers,
        callbacks=[scheduler, *callbacks],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(model, loader, loader)
    return scheduler
