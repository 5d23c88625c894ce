"""OGMGECallback: the released OGM-GE rule, applied to the right encoder, in the right epochs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _lightning_helpers import (
    FEATURE_DIM,
    NUM_CLASSES,
    loaders,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch import Callback, LightningModule
from torch import nn

from pidsched import FixedController, JointController, OGMGECallback, PIDSchedulerCallback
from pidsched.callbacks.ogm_ge import (
    discrepancy_ratios,
    modulate_gradients,
    modulation_coefficients,
)
from pidsched.models.fusion import ConcatFusion, FiLMFusion, SumFusion

STRONG = {"a": 3.0, "b": 0.3}


class GradientSpy(Callback):
    """Records, per optimiser step, the epoch, each encoder's gradients and (once) the model."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {
            name: [p.grad.clone() for p in pl_module.encoders[name].parameters()]
            for name in pl_module.modality_names
        }
        self.steps.append(
            {"epoch": trainer.current_epoch, "grads": grads, "batch": self.batch, "model": None}
        )
        if len(self.steps) == 1:
            self.steps[0]["model"] = copy.deepcopy(pl_module)


def fit_one_batch_per_epoch(
    ogm: OGMGECallback, max_epochs: int = 1, controller=None, **model_kwargs
):
    """Joint training of the tiny model (or ``controller``'s schedule); spies record gradients
    before and after OGM-GE."""
    before, after = GradientSpy(), GradientSpy()
    schedule = PIDSchedulerCallback(NUM_CLASSES, controller=controller or JointController())
    trainer = make_trainer(
        max_epochs, [schedule, before, ogm, after], limit_train_batches=1, limit_val_batches=0
    )
    train, _ = loaders(signal=STRONG)
    trainer.fit(make_model(unimodal_weight=0.0, **model_kwargs), train)
    return before.steps, after.steps


def released_scores(model, batch) -> dict[str, float]:
    """The released script's lines: ``out_m = z_m @ W[:, slice_m].T + b / 2`` and the summed
    softmax of the true class, written out again here for two concatenated modalities."""
    inputs, label = batch
    z = {name: model.encoders[name](inputs[name]) for name in ("a", "b")}
    weight, bias = model.fusion.linear.weight, model.fusion.linear.bias
    out_a = z["a"] @ weight[:, :FEATURE_DIM].T + bias / 2
    out_b = z["b"] @ weight[:, FEATURE_DIM:].T + bias / 2
    softmax = nn.Softmax(dim=1)
    return {
        "a": sum(softmax(out_a)[i][label[i]] for i in range(len(label))).item(),
        "b": sum(softmax(out_b)[i][label[i]] for i in range(len(label))).item(),
    }


# --- the rule -------------------------------------------------------------------------------


def test_coefficients_follow_equation_10_by_hand():
    ratios = discrepancy_ratios(torch.tensor([30.0, 10.0]))
    torch.testing.assert_close(ratios, torch.tensor([3.0, 1 / 3]))
    coefficients = modulation_coefficients(ratios, alpha=0.1)
    torch.testing.assert_close(coefficients, torch.tensor([1 - math.tanh(0.3), 1.0]))
    # Three modalities: each against the mean of the others; a tie (ratio 1) is not modulated.
    ratios = discrepancy_ratios(torch.tensor([6.0, 2.0, 4.0]))
    torch.testing.assert_close(ratios, torch.tensor([2.0, 0.4, 1.0]))
    coefficients = modulation_coefficients(ratios, alpha=0.8)
    torch.testing.assert_close(coefficients, torch.tensor([1 - math.tanh(1.6), 1.0, 1.0]))


def test_a_vanishing_score_gives_finite_ratios():
    for scores in ([5.0, 0.0], [0.0, 0.0]):
        ratios = discrepancy_ratios(torch.tensor(scores))
        assert torch.isfinite(ratios).all()
        assert torch.isfinite(modulation_coefficients(ratios, alpha=0.1)).all()
    assert modulation_coefficients(discrepancy_ratios(torch.tensor([5.0, 0.0])), 0.1)[0] == 0


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_contributions_sum_to_the_fused_logits(fusion):
    dims = dict.fromkeys(("a", "b", "c"), FEATURE_DIM)
    head = {"concat": ConcatFusion, "sum": SumFusion}[fusion](dims, NUM_CLASSES)
    model = make_model(names=("a", "b", "c"), fusion=head)
    features = {name: torch.randn(5, FEATURE_DIM) for name in ("a", "b", "c")}
    contributions = model.modality_contributions(features)
    assert {name: c.shape for name, c in contributions.items()} == {
        name: (5, NUM_CLASSES) for name in ("a", "b", "c")
    }
    torch.testing.assert_close(sum(contributions.values()), model.fusion(features))
    if fusion == "concat":
        linear = model.fusion.linear
        expected_b = (
            features["b"] @ linear.weight[:, FEATURE_DIM : 2 * FEATURE_DIM].T + linear.bias / 3
        )
        torch.testing.assert_close(contributions["b"], expected_b)


def test_contributions_refuse_non_additive_fusion():
    model = make_model(fusion=FiLMFusion(dict.fromkeys(("a", "b"), FEATURE_DIM), NUM_CLASSES))
    features = {name: torch.randn(2, FEATURE_DIM) for name in ("a", "b")}
    with pytest.raises(TypeError, match="additive fusion head"):
        model.modality_contributions(features)


# --- applied in training ----------------------------------------------------------------------


def test_leading_encoder_scaled_by_the_released_coefficient_other_untouched():
    ogm = OGMGECallback(alpha=0.5, noise=False)
    before, after = fit_one_batch_per_epoch(ogm)

    scores = released_scores(before[0]["model"], before[0]["batch"])
    leader, follower = sorted(scores, key=scores.get, reverse=True)
    ratio = scores[leader] / scores[follower]
    assert ratio > 1.01  # a clear leader, so the check below is not about a tie
    expected = 1 - math.tanh(0.5 * ratio)
    assert float(ogm.last_ratios[leader]) == pytest.approx(ratio, rel=1e-5)
    assert float(ogm.last_coefficients[leader]) == pytest.approx(expected, rel=1e-5)
    assert float(ogm.last_coefficients[follower]) == 1.0
    for raw, modulated in zip(before[0]["grads"][leader], after[0]["grads"][leader], strict=True):
        torch.testing.assert_close(modulated, expected * raw)
    for raw, modulated in zip(
        before[0]["grads"][follower], after[0]["grads"][follower], strict=True
    ):
        assert torch.equal(modulated, raw)


def test_ge_noise_goes_to_every_encoder_and_depends_only_on_seed_and_step():
    ogms = [OGMGECallback(alpha=0.5, seed=seed) for seed in (3, 3, 4)]
    runs = [fit_one_batch_per_epoch(ogm) for ogm in ogms]
    noise = []
    for (before, after), ogm in zip(runs, ogms, strict=True):
        (follower,) = [m for m, k in ogm.last_coefficients.items() if k == 1]
        (raw, *_), (modulated, *_) = before[0]["grads"][follower], after[0]["grads"][follower]
        noise.append(modulated - raw)  # coefficient 1 for the follower: the difference is noise
        assert not torch.equal(modulated, raw)
    assert torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[0], noise[2])


def test_noise_std_matches_the_unmodulated_gradient_std():
    encoder = nn.Linear(200, 100)
    grads = [torch.randn(100, 200) * 0.05, torch.randn(100) * 2.0]
    for parameter, grad in zip(encoder.parameters(), grads, strict=True):
        parameter.grad = grad.clone()
    coefficient = torch.tensor(0.25)
    modulate_gradients(encoder, coefficient, torch.Generator().manual_seed(0))

    for parameter, grad in zip(encoder.parameters(), grads, strict=True):
        noise = parameter.grad - coefficient * grad
        expected_std = grad.std().item() + 1e-8
        # 20,000 (and 100) draws: the sample std is within 3 % (30 %) with room to spare.
        tolerance = 0.03 if noise.numel() > 1000 else 0.3
        assert noise.std().item() == pytest.approx(expected_std, rel=tolerance)
        assert abs(noise.mean().item()) < 4 * expected_std / math.sqrt(noise.numel())


def _modulated_by_epoch(before, after) -> dict[int, bool]:
    """Whether OGM-GE changed any encoder gradient, per epoch of one-step epochs."""
    return {
        step["epoch"]: any(
            not torch.equal(raw, modulated)
            for name in ("a", "b")
            for raw, modulated in zip(step["grads"][name], post["grads"][name], strict=True)
        )
        for step, post in zip(before, after, strict=True)
    }


def test_outside_the_epoch_window_gradients_are_untouched():
    ogm = OGMGECallback(alpha=0.5, modulation_starts=1, modulation_ends=1)
    before, after = fit_one_batch_per_epoch(ogm, max_epochs=3)
    changed = _modulated_by_epoch(before, after)
    assert changed == {0: False, 1: True, 2: False}


def test_a_two_stage_schedule_is_modulated_in_its_joint_stage_only():
    """Stage 1 trains no fusion head: OGM-GE scaled unimodal gradients by contributions of that
    untrained head (and touched paused encoders)."""
    ogm = OGMGECallback(alpha=0.5)
    before, after = fit_one_batch_per_epoch(ogm, max_epochs=3, controller=FixedController(2))
    changed = _modulated_by_epoch(before, after)
    assert changed == {0: False, 1: False, 2: True}


# --- bad arguments and modules ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"alpha": True}, TypeError, "alpha"),
        ({"alpha": "0.1"}, TypeError, "alpha"),
        ({"alpha": 0.1, "modulation_starts": -1}, ValueError, "modulation_starts"),
        ({"alpha": 0.1, "modulation_starts": 1.5}, ValueError, "modulation_starts"),
        ({"alpha": 0.1, "modulation_starts": 5, "modulation_ends": 4}, ValueError, "_ends"),
        ({"alpha": 0.1, "noise": 1}, TypeError, "noise"),
        ({"alpha": 0.1, "seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        OGMGECallback(**kwargs)


def test_a_module_without_contributions_is_refused_at_fit_start():
    class Plain(LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 2)

        def training_step(self, batch, batch_idx):
            return F.mse_loss(self.layer(batch[0]), batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = make_trainer(1, [OGMGECallback(alpha=0.1)])
    with pytest.raises(TypeError, match="modality_contributions"):
        trainer.fit(Plain(), torch.utils.data.DataLoader([(torch.zeros(2),)]))


class WeightDump(Callback):
    """Each rank saves its final parameters and OGM-GE's last coefficients."""

    def __init__(self, out_dir) -> None:
        self.out_dir = out_dir

    def setup(self, trainer, pl_module, stage):
        torch.set_num_threads(1)  # a fresh process: tiny models run faster on one thread

    def on_fit_end(self, trainer, pl_module):
        (ogm,) = [c for c in trainer.callbacks if isinstance(c, OGMGECallback)]
        dump = {
            # Parameters only: BatchNorm running statistics are per rank under DDP anyway.
            "weights": {k: v.detach().clone() for k, v in pl_module.named_parameters()},
            "coefficients": {k: float(v) for k, v in ogm.last_coefficients.items()},
        }
        torch.save(dump, self.out_dir / f"rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_two_ranks_apply_the_same_modulation_and_noise(tmp_path):
    schedule = PIDSchedulerCallback(NUM_CLASSES, controller=JointController())
    trainer = make_trainer(
        2,
        [schedule, OGMGECallback(alpha=0.5), WeightDump(tmp_path)],
        devices=2,
        strategy="ddp_spawn_find_unused_parameters_true",
        limit_val_batches=0,
    )
    train, _ = loaders(signal=STRONG)
    trainer.fit(make_model(unimodal_weight=0.0), train)

    dumps = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert dumps[0]["coefficients"] == dumps[1]["coefficients"]
    assert min(dumps[0]["coefficients"].values()) < 1  # something was modulated
    for key, value in dumps[0]["weights"].items():
        assert torch.equal(value, dumps[1]["weights"][key]), key


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_ogm_ge_under_compile_matches_eager(precision):
    """The encoders' forward hooks still capture the features inside the compiled pieces."""
    import torch._dynamo

    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        ogm = OGMGECallback(alpha=0.5)
        schedule = PIDSchedulerCallback(NUM_CLASSES, JointController())
        trainer = make_trainer(2, [schedule, ogm], precision=precision)
        model = make_model()
        trainer.fit(torch.compile(model, backend="eager") if compiled else model, *loaders())
        runs.append((ogm.last_coefficients, model.state_dict()))
    (eager_k, eager_state), (compiled_k, compiled_state) = runs
    assert any(float(k) < 1 for k in eager_k.values())  # something was modulated
    assert compiled_k == eager_k
    for key, value in eager_state.items():
        assert torch.equal(compiled_state[key], value), key
