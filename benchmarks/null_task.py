"""Null task: two modalities exchangeable by construction, where no branch should ever be paused.

Both modalities observe the same class signal through the same projection, each with its own
independent Gaussian noise, so neither carries information the other lacks: their unique
informations are equal in distribution and any pause is a false alarm. For each controller
variant and seed the script fits two identical small MLP branches with `PIDSchedulerCallback`
and reports how many epochs a branch was paused, how many pause switches the controller
counted and when stage 1 ended.

    python benchmarks/null_task.py                     # 10 seeds, every variant that can run
    python benchmarks/null_task.py --seeds 3 --variants point,persist

Variants (``PIDController`` options; the others are the defaults of ``schedule=pid``):
``point`` (point estimates, a decision on every probe: the rules before issue 11),
``persist`` (``persistence=3``), ``conf`` (``confidence=0.9`` on bootstrap replicates) and
``conf_persist`` (both). The confidence variants need a callback with ``num_bootstrap``; where
the installed callback has none they are reported as not run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pidsched.callbacks.pid_scheduler import PIDSchedulerCallback
from pidsched.controllers import PIDController
from pidsched.data.in_memory import MultimodalTensorDataset, stratified_split
from pidsched.models.encoders import MLPEncoder
from pidsched.models.multimodal import MultimodalClassifier

MODALITIES = ("left", "right")
NUM_CLASSES = 4
FEATURE_DIM = 8
NUM_SAMPLES = 1600
# Per-feature noise std against a unit class signal: both branches reach ~70 % alone.
NOISE_STD = 1.5
MAX_EPOCHS = 12
STAGE1_MAX_EPOCHS = 10
NUM_BOOTSTRAP = 50
VARIANTS = {
    "point": {"confidence": None, "persistence": 1},
    "conf": {"confidence": 0.9, "persistence": 1},
    "persist": {"confidence": None, "persistence": 3},
    "conf_persist": {"confidence": 0.9, "persistence": 3},
}


def exchangeable_modalities(seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """``NUM_SAMPLES`` samples: the same class signal in both modalities, independent noise.

    Returns:
        ``({"left": (N, D), "right": (N, D)}, target (N,))``.
    """
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,), generator=generator)
    projection = torch.randn(NUM_CLASSES, FEATURE_DIM, generator=generator)
    signal = torch.nn.functional.one_hot(target, NUM_CLASSES).float() @ projection
    inputs = {
        name: signal + NOISE_STD * torch.randn(NUM_SAMPLES, FEATURE_DIM, generator=generator)
        for name in MODALITIES
    }
    return inputs, target


def loaders(seed: int) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders of a stratified 75/25 split."""
    inputs, target = exchangeable_modalities(seed)
    train, val = stratified_split(target, [0.25], seed)
    subset = [
        MultimodalTensorDataset({n: x[idx] for n, x in inputs.items()}, target[idx])
        for idx in (train, val)
    ]
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(subset[0], batch_size=64, shuffle=True, generator=generator),
        DataLoader(subset[1], batch_size=256),
    )


def bootstrap_supported() -> bool:
    """Whether the installed callback takes ``num_bootstrap`` (branch ``callback``)."""
    return "num_bootstrap" in inspect.signature(PIDSchedulerCallback).parameters


def run_one(variant: str, seed: int) -> dict:
    """One fit; return its paused epochs, pause switches and stage-2 start."""
    import lightning.pytorch as pl

    pl.seed_everything(seed, verbose=False)
    model = MultimodalClassifier(
        {name: MLPEncoder(FEATURE_DIM, (32,), 16) for name in MODALITIES},
        dict.fromkeys(MODALITIES, 16),
        NUM_CLASSES,
    )
    options = VARIANTS[variant]
    controller = PIDController(max_unimodal_epochs=STAGE1_MAX_EPOCHS, **options)
    extra = {"num_bootstrap": NUM_BOOTSTRAP} if options["confidence"] is not None else {}
    scheduler = PIDSchedulerCallback(NUM_CLASSES, controller=controller, **extra)
    trainer = pl.Trainer(
        max_epochs=MAX_EPOCHS,
        logger=False,
        callbacks=[scheduler],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        deterministic=True,
    )
    train, val = loaders(seed)
    trainer.fit(model, train, val)
    # A record's `paused` is the set that trained during its epoch.
    paused_epochs = sum(
        bool(record["paused"]) for record in scheduler.history if record["stage"] == "unimodal"
    )
    return {
        "variant": variant,
        "seed": seed,
        "paused_epochs": paused_epochs,
        "pause_switches": controller.switches,
        "switch_epoch": scheduler.switch_epoch,
        "final_val_acc": scheduler.history[-1]["val_acc"].get("fused"),
    }


def table(results: list[dict], variants: list[str], seeds: int) -> str:
    """Markdown: per variant, the seeds' paused epochs, pause switches and switch epochs."""
    lines = [
        "| variant | paused epochs per seed | mean | seeds with a pause | pause switches per seed "
        "| switch epochs |",
        "|---|---|---|---|---|---|",
    ]
    for variant in variants:
        rows = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not rows:
            lines.append(f"| {variant} | not run (callback without num_bootstrap) | | | | |")
            continue
        paused = [r["paused_epochs"] for r in rows]
        switches = " ".join(str(r["pause_switches"]) for r in rows)
        epochs = " ".join(
            str(r["switch_epoch"]) if r["switch_epoch"] is not None else "-" for r in rows
        )
        lines.append(
            f"| {variant} | {' '.join(map(str, paused))} | {statistics.fmean(paused):.1f} "
            f"| {sum(p > 0 for p in paused)}/{len(rows)} | {switches} | {epochs} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.seeds < 1:
        parser.error(f"unknown variants {unknown} (choose from {list(VARIANTS)}) or --seeds < 1")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"command: python {' '.join(sys.argv)}", flush=True)
    runnable = [v for v in variants if VARIANTS[v]["confidence"] is None or bootstrap_supported()]
    results, start = [], time.perf_counter()
    for variant in runnable:
        for seed in range(args.seeds):
            results.append(run_one(variant, seed))
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{table(results, variants, args.seeds)}")
    print(f"\n{time.perf_counter() - start:.0f} s for {len(results)} fits")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
