"""PIDSchedulerCallback on your own LightningModule, through the ``MultimodalModule`` protocol.

The module below is not a ``pidsched.MultimodalClassifier``: it only provides what the protocol
asks for (``modality_names``, ``encoders``, ``heads``, ``num_classes``, ``modality_logits`` and
``set_training_stage``) and honours the stage it is given. Two views of a 4-class task: view
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

NUM_CLASSES = 4
INPUT_DIM = 8
FEATURE_DIM = 16


class TwoViewClassifier(L.LightningModule):
    """Late fusion of two MLP branches; implements ``pidsched.MultimodalModule``."""

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
        self.stage = "unimodal"
        self.paused: frozenset[str] = frozenset()

    def modality_logits(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.heads[m](self.encoders[m](inputs[m])) for m in self.modality_names}

    def set_training_stage(self, stage: str, paused: frozenset[str]) -> None:
        # The callback calls this before every epoch; the next configure_optimizers call
        # (re-run by the callback at the switch) must build the optimiser of `stage`.
        self.stage, self.paused = stage, frozenset(paused)
        self.train(self.training)

    def train(self, mode: bool = True) -> TwoViewClassifier:
        # A paused branch stays in eval() (no dropout, no BatchNorm updates) while training.
        super().train(mode)
        for m in self.paused:
            self.encoders[m].eval()
            self.heads[m].eval()
        return self

    def training_step(self, batch: tuple[dict[str, Tensor], Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        features = {}
        for m in self.modality_names:
            # A paused branch runs without autograd, so none of its parameters moves.
            with torch.set_grad_enabled(m not in self.paused):
                features[m] = self.encoders[m](inputs[m])
        trained = [m for m in self.modality_names if m not in self.paused]
        unimodal = sum(F.cross_entropy(self.heads[m](features[m]), target) for m in trained)
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
