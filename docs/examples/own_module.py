"""PIDSchedulerCallback on your own LightningModule, through the ``MultimodalModule`` protocol.

The module below is not a ``pidsched.MultimodalClassifier``: it only provides what the protocol
asks for (``modality_names``, ``encoders``, ``heads``, ``num_classes``, ``modality_logits`` and
``set_training_stage``) and honours the stage it is given. ``set_training_stage`` and the
freezing of paused branches come from ``pidsched.models.PausableBranchesMixin``, the same code
``MultimodalClassifier`` uses; the module's part is to build its losses from
``branch_features`` and ``trained_modalities``. Two views of a 4-class task: view
"sharp" shows the class clearly, view "faint" barely; stage 1 trains them as unimodal
classifiers (pausing "sharp" when it runs ahead), stage 2 trains the fused model.

Run it (CPU, a few seconds)::

    python docs/examples/own_module.py
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pidsched import PIDController, PIDSchedulerCallback
from pidsched.models import PausableBranchesMixin

NUM_CLASSES = 4
INPUT_DIM = 8
FEATURE_DIM = 16


class TwoViewClassifier(PausableBranchesMixin, L.LightningModule):
    """Late fusion of two MLP branches; implements ``pidsched.MultimodalModule``.

    The mixin gives ``set_training_stage(stage, paused)`` (it sets ``self.stage`` and
    ``self.paused``), keeps paused branches in ``eval()`` through ``train()`` calls, and
    ``branch_features`` runs a paused encoder without autograd.
    """

    def __init__(self, names: tuple[str, ...] = ("sharp", "faint")) -> None:
        super().__init__()
        # --- what the protocol asks for ---
        self.modality_names = names
        self.num_classes = NUM_CLASSES
        self.encoders = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(INPUT_DIM, FEATURE_DIM), nn.ReLU()) for m in names}
        )
        self.heads = nn.ModuleDict({m: nn.Linear(FEATURE_DIM, NUM_CLASSES) for m in names})
        # --- our own parts ---
        self.fusion = nn.Linear(FEATURE_DIM * len(names), NUM_CLASSES)

    def modality_logits(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.heads[m](f) for m, f in self.branch_features(inputs).items()}

    def training_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        # Paused encoders run without autograd; their heads' loss terms are left out, so no
        # parameter of a paused branch gets a gradient and none of them moves.
        features = self.branch_features(inputs)
        unimodal = sum(
            F.cross_entropy(self.heads[m](features[m]), target) for m in self.trained_modalities()
        )
        if self.stage == "unimodal":
            loss = unimodal
        else:
            fused = self.fusion(torch.cat([features[m] for m in self.modality_names], dim=-1))
            loss = F.cross_entropy(fused, target) + 0.6 * unimodal
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> dict:
        inputs, target = batch
        logits = self.modality_logits(inputs)
        for m, values in logits.items():
            self.log(f"val/acc_{m}", (values.argmax(-1) == target).float().mean())
        # Returning the logits lets the callback probe without running the branches again.
        return {"modality_logits": logits}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The callback re-runs this at the switch: build the optimiser of the current stage.
        lr = 0.05 if self.stage == "unimodal" else 0.01
        return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)


def two_view_data(num_samples: int, seed: int) -> list[tuple[dict[str, Tensor], Tensor]]:
    """Samples ``({"sharp": (8,), "faint": (8,)}, label)``: class signal 3.0 and 1.5."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (num_samples,), generator=generator)
    signal = F.pad(F.one_hot(target, NUM_CLASSES).float(), (0, INPUT_DIM - NUM_CLASSES))
    views = {
        m: strength * signal + torch.randn(num_samples, INPUT_DIM, generator=generator)
        for m, strength in (("sharp", 3.0), ("faint", 1.5))
    }
    return [({m: views[m][i] for m in views}, target[i]) for i in range(num_samples)]


def main(max_epochs: int = 8) -> PIDSchedulerCallback:
    """Train with the PID schedule and print one line per probe; return the callback."""
    L.seed_everything(0, verbose=False)
    schedule = PIDSchedulerCallback(
        num_classes=NUM_CLASSES,
        controller=PIDController(min_unimodal_epochs=1, max_unimodal_epochs=4),
    )
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        callbacks=[schedule],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train = DataLoader(two_view_data(512, seed=1), batch_size=64, shuffle=True)
    val = DataLoader(two_view_data(256, seed=2), batch_size=64)
    trainer.fit(TwoViewClassifier(), train, val)

    for record in schedule.history:
        unique = ", ".join(f"U[{m}] {u:.3f}" for m, u in record["unique"].items())
        print(
            f"epoch {record['epoch']} {record['stage']:8s} paused {record['paused']}: "
            f"{unique}, R {record['redundancy']:.3f}, S {record['synergy']:.3f} bits"
        )
    print(f"stage 2 started at epoch {schedule.switch_epoch}")
    return schedule


if __name__ == "__main__":
    main()
