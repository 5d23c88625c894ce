"""MultimodalClassifier, fusion heads and the MultimodalModule protocol check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _lightning_helpers import (
    FEATURE_DIM,
    NUM_CLASSES,
    branch_state,
    loaders,
    make_model,
    make_trainer,
    mlp_encoder,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import nn

from pidsched.models import (
    ConcatFusion,
    FiLMFusion,
    GatedFusion,
    MultimodalClassifier,
    MultimodalModule,
    PausableBranchesMixin,
    SumFusion,
    check_multimodal_module,
)


def _features(dims: dict[str, int], n: int = 5) -> dict[str, torch.Tensor]:
    return {name: torch.randn(n, dim) for name, dim in dims.items()}


@pytest.mark.parametrize("fusion", [ConcatFusion, SumFusion, FiLMFusion, GatedFusion])
def test_fusion_heads_accept_different_feature_widths(fusion):
    dims = {"audio": 7, "video": 3}
    head = fusion(dims, num_classes=4)
    logits = head(_features(dims))
    assert logits.shape == (5, 4)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_film_scales_and_shifts_the_second_modality_by_the_first():
    dims = {"a": 2, "b": 3}
    head = FiLMFusion(dims, num_classes=2)
    features = _features(dims)
    gamma, beta = head.film(features["a"]).chunk(2, dim=-1)
    expected = head.linear(gamma * features["b"] + beta)
    assert torch.equal(head(features), expected)


@pytest.mark.parametrize("fusion", [ConcatFusion, SumFusion])
def test_concat_and_sum_take_any_number_of_modalities(fusion):
    dims = {"a": 2, "b": 3, "c": 4}
    assert fusion(dims, num_classes=3)(_features(dims)).shape == (5, 3)


@pytest.mark.parametrize("fusion", [FiLMFusion, GatedFusion])
def test_film_and_gated_refuse_three_modalities(fusion):
    with pytest.raises(ValueError, match=r"exactly two modalities.*ConcatFusion"):
        fusion({"a": 2, "b": 3, "c": 4}, num_classes=3)


def test_the_fusion_module_given_is_the_one_used():
    dims = {"a": FEATURE_DIM, "b": FEATURE_DIM}
    fusion = SumFusion(dims, NUM_CLASSES)
    model = make_model(fusion=fusion)
    assert model.fusion is fusion
    assert isinstance(make_model().fusion, ConcatFusion)  # the default
    inputs, _ = _batch()
    torch.testing.assert_close(model(inputs), fusion(model.modality_features(inputs)))
    with pytest.raises(TypeError, match="`fusion` must be an nn"):
        make_model(fusion="sum")


@pytest.mark.parametrize(
    ("fusion", "match"),
    [
        # Built for two of the three modalities: the fused prediction ignored "c".
        (ConcatFusion({"a": FEATURE_DIM, "b": FEATURE_DIM}, NUM_CLASSES), r"modalities \['c'\]"),
        # Other class count: 12-way logits trained and failed only in the test metric.
        (SumFusion(dict.fromkeys("abc", FEATURE_DIM), 12), r"shape \(2, 12\).*num_classes=3"),
        (ConcatFusion({"p": 1, "q": 2, "r": 3}, NUM_CLASSES), "failed on features of sizes"),
        (ConcatFusion(dict.fromkeys("abc", FEATURE_DIM + 1), NUM_CLASSES), "failed on features"),
    ],
    ids=["ignores-a-modality", "other-classes", "other-names", "other-sizes"],
)
def test_a_fusion_head_that_does_not_fit_the_model_is_refused(fusion, match):
    with pytest.raises(ValueError, match=match):
        make_model(("a", "b", "c"), fusion=fusion)


def test_the_fusion_check_leaves_batchnorm_statistics_alone():
    head = ConcatFusion({"a": FEATURE_DIM, "b": FEATURE_DIM}, NUM_CLASSES)
    norm = nn.BatchNorm1d(NUM_CLASSES)
    fusion = nn.ModuleList([head, norm])
    fusion.forward = lambda features: norm(head(features))
    model = make_model(fusion=fusion)
    assert model.fusion.training and int(norm.num_batches_tracked) == 0
    assert torch.equal(norm.running_mean, torch.zeros(NUM_CLASSES))


def _batch(names=("a", "b"), n=8):
    torch.manual_seed(1)
    return {name: torch.randn(n, 6) for name in names}, torch.randint(0, NUM_CLASSES, (n,))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_stage_losses_follow_the_paper():
    model = make_model(unimodal_weight=0.6).eval()
    inputs, target = _batch()
    with torch.no_grad():
        ce = {n: F.cross_entropy(v, target) for n, v in model.modality_logits(inputs).items()}
        fused = F.cross_entropy(model(inputs), target)
    assert torch.allclose(model.validation_step((inputs, target), 0)["loss"], ce["a"] + ce["b"])
    model.set_training_stage("joint", frozenset())
    joint = model.validation_step((inputs, target), 0)["loss"]
    assert torch.allclose(joint, fused + 0.6 * (ce["a"] + ce["b"]))

    # Training with "a" paused: b's unimodal term (stage 1); the fused term plus b's (stage 2).
    model.train()
    model.set_training_stage("unimodal", {"a"})
    logits_b = model.heads["b"](model.encoders["b"](inputs["b"]))
    assert torch.allclose(
        model.training_step((inputs, target), 0), F.cross_entropy(logits_b, target)
    )
    model.set_training_stage("joint", {"a"})
    features = model.modality_features(inputs)
    expected = F.cross_entropy(model.fusion(features), target) + 0.6 * F.cross_entropy(
        model.heads["b"](features["b"]), target
    )
    assert torch.allclose(model.training_step((inputs, target), 0), expected)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_paused_branch_gets_no_gradient_and_stays_in_eval_mode():
    model = make_model()
    model.train()
    model.set_training_stage("unimodal", {"a"})
    model.train()  # a later train() call must not wake the paused branch
    assert not model.encoders["a"].training and not model.heads["a"].training
    assert model.encoders["b"].training
    running_mean = model.encoders["a"][1].running_mean.clone()
    loss = model.training_step(_batch(), 0)
    loss.backward()
    assert all(p.grad is None for p in model.encoders["a"].parameters())
    assert all(p.grad is None for p in model.heads["a"].parameters())
    assert all(p.grad is None for p in model.fusion.parameters())  # idle in stage 1
    assert all(p.grad is not None for p in model.encoders["b"].parameters())
    assert torch.equal(model.encoders["a"][1].running_mean, running_mean)

    model.zero_grad(set_to_none=True)
    model.set_training_stage("joint", {"a"})
    model.training_step(_batch(), 0).backward()
    assert all(p.grad is None for p in model.encoders["a"].parameters())
    assert all(p.grad is not None for p in model.fusion.parameters())

    model.set_training_stage("joint", frozenset())
    assert model.encoders["a"].training and model.heads["a"].training


def test_set_training_stage_rejects_bad_calls():
    model = make_model()
    with pytest.raises(ValueError, match="`stage`"):
        model.set_training_stage("fusion", frozenset())
    with pytest.raises(ValueError, match="not modalities"):
        model.set_training_stage("unimodal", {"z"})
    # A string is refused, not read as its characters (a single-letter name would pass).
    with pytest.raises(ValueError, match=r"the string 'a'; pass \{'a'\}"):
        model.set_training_stage("unimodal", "a")
    with pytest.raises(ValueError, match="every modality"):
        model.set_training_stage("unimodal", {"a", "b"})


def test_optimizers_per_stage_and_scheduler_on_the_stage_two_optimizer():
    model = make_model(
        stage1_optimizer={"name": "torch.optim.AdamW", "lr": 1e-3},
        stage2_optimizer={"name": "SGD", "lr": 0.1},
        stage2_scheduler={"name": "StepLR", "step_size": 3, "gamma": 0.5, "interval": "epoch"},
    )
    assert isinstance(model.configure_optimizers(), torch.optim.AdamW)
    model.set_training_stage("joint", frozenset())
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    scheduler = config["lr_scheduler"]
    assert scheduler["scheduler"].optimizer is config["optimizer"]
    assert scheduler["interval"] == "epoch" and scheduler["scheduler"].step_size == 3


def test_paper_default_optimizers():
    model = MultimodalClassifier(
        {"a": mlp_encoder(), "b": mlp_encoder()}, {"a": FEATURE_DIM, "b": FEATURE_DIM}, 3
    )
    stage1 = model.configure_optimizers()
    assert stage1.defaults["lr"] == 1e-2 and stage1.defaults["momentum"] == 0.9
    assert stage1.defaults["weight_decay"] == 1e-4
    model.set_training_stage("joint", frozenset())
    assert model.configure_optimizers().defaults["lr"] == 5e-4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"unimodal_weight": -1.0}, ValueError, "unimodal_weight"),
        ({"stage1_optimizer": "SGD"}, TypeError, "stage1_optimizer"),
        ({"stage2_optimizer": {"name": "Sgd"}}, ValueError, "stage2_optimizer.*torch.optim"),
        ({"stage2_scheduler": {"name": "nowhere.Step"}}, ValueError, "stage2_scheduler"),
        ({"feature_dims": {"a": 8}}, ValueError, "feature_dims"),
        ({"encoders": {"a": mlp_encoder()}}, ValueError, "at least two"),
        ({"encoders": {"a": "mlp", "b": "mlp"}}, TypeError, "encoders"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    arguments = {
        "encoders": {"a": mlp_encoder(), "b": mlp_encoder()},
        "feature_dims": {"a": FEATURE_DIM, "b": FEATURE_DIM},
        "num_classes": 3,
    }
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        MultimodalClassifier(**arguments)


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (
            ({"a": torch.randn(4, 6), "b": torch.randn(4, 6)}, torch.zeros(4), torch.zeros(4)),
            r"pairs \(inputs, target\).*got tuple of 3 \[dict",
        ),
        (torch.randn(4, 6), r"keys \['a', 'b'\].*got Tensor\(4, 6\)"),
        (
            [[torch.randn(4, 6), torch.randn(4, 6)], torch.zeros(4)],
            r"got \(list of 2 \[Tensor\(4, 6\), Tensor\(4, 6\)\], Tensor\(4,\)\)",
        ),
    ],
    ids=["three items", "a tensor", "a list of inputs"],
)
def test_batch_of_another_layout_says_what_is_expected(batch, match):
    with pytest.raises(ValueError, match=match):
        make_model().validation_step(batch, 0)


class _OwnModule(PausableBranchesMixin, nn.Module):
    """A module of a user's own that pauses through the mixin (BatchNorm encoders)."""

    def __init__(self) -> None:
        super().__init__()
        self.modality_names = ("a", "b")
        self.encoders = nn.ModuleDict({m: mlp_encoder() for m in self.modality_names})
        self.heads = nn.ModuleDict(
            {m: nn.Linear(FEATURE_DIM, NUM_CLASSES) for m in self.modality_names}
        )
        self.fusion = nn.Linear(2 * FEATURE_DIM, NUM_CLASSES)

    def training_loss(self, inputs, target):
        # The fused term reads the paused branch's features too: only the mixin's no-grad
        # forward keeps gradient (and so weight decay) away from that branch.
        features = self.branch_features(inputs)
        fused = self.fusion(torch.cat([features["a"], features["b"]], dim=-1))
        return F.cross_entropy(fused, target) + sum(
            F.cross_entropy(self.heads[m](features[m]), target) for m in self.trained_modalities()
        )


def _classifier_loss(model, inputs, target):
    return model.training_step((inputs, target), 0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize(
    ("make", "loss"),
    [(make_model, _classifier_loss), (_OwnModule, _OwnModule.training_loss)],
    ids=["MultimodalClassifier", "own module with the mixin"],
)
def test_a_paused_branch_does_not_move_under_weight_decay(make, loss):
    model = make()
    model.train()
    model.set_training_stage("joint", {"a"})  # the fused loss reads the paused branch
    model.train()
    frozen, trained = branch_state(model, "a"), branch_state(model, "b")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        loss(model, *_batch()).backward()
        optimizer.step()
    assert model.trained_modalities() == ["b"]
    # Parameters and BatchNorm statistics of the paused branch are bitwise unchanged.
    for key, value in branch_state(model, "a").items():
        assert torch.equal(value, frozen[key]), key
    assert any(not torch.equal(v, trained[k]) for k, v in branch_state(model, "b").items())
    model.set_training_stage("joint", frozenset())
    assert model.encoders["a"].training and model.trained_modalities() == ["a", "b"]


def test_batch_missing_a_modality_says_which():
    model = make_model()
    inputs, target = _batch(names=("a",))
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        model.validation_step((inputs, target), 0)


def test_protocol_check_lists_what_is_missing():
    class Plain(LightningModule):
        modality_names = ("a", "b")
        encoders = nn.ModuleDict({"a": nn.Identity(), "b": nn.Identity()})

    with pytest.raises(TypeError, match=r"missing: `heads`.*`num_classes`.*`modality_logits`"):
        check_multimodal_module(Plain())
    model = make_model()
    assert isinstance(model, MultimodalModule)
    check_multimodal_module(model, expected_names=["b", "a"], num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"data provides modalities \['a', 'c'\]"):
        check_multimodal_module(model, expected_names=["a", "c"])
    with pytest.raises(ValueError, match="num_classes=3 but 5 was expected"):
        check_multimodal_module(model, num_classes=5)


def test_hydra_style_arguments_become_plain_hyperparameters(tmp_path):
    config = OmegaConf.create(
        {
            "feature_dims": {"a": FEATURE_DIM, "b": FEATURE_DIM},
            "stage1_optimizer": {"name": "SGD", "lr": 0.05},
            "stage2_scheduler": {"name": "StepLR", "step_size": 2},
        }
    )
    model = MultimodalClassifier(
        {"a": mlp_encoder(), "b": mlp_encoder()},
        config.feature_dims,
        NUM_CLASSES,
        stage1_optimizer=config.stage1_optimizer,
        stage2_scheduler=config.stage2_scheduler,
    )
    assert type(model.hparams["stage1_optimizer"]) is dict
    assert "encoders" not in model.hparams
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    train, val = loaders()
    make_trainer(1, [checkpoint], enable_checkpointing=True).fit(model, train, val)
    # A checkpoint of plain values loads with the safe unpickler (the default of torch.load).
    loaded = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert loaded["hyper_parameters"]["stage2_scheduler"] == {"name": "StepLR", "step_size": 2}


def test_logs_loss_and_accuracy_per_head_and_fused():
    model = make_model()
    train, val = loaders()
    trainer = make_trainer(1)
    trainer.fit(model, train, val)
    logged = set(trainer.callback_metrics)
    for split in ("train", "val"):
        assert {f"{split}/loss", f"{split}/acc_a", f"{split}/acc_b", f"{split}/loss_a"} <= logged
    assert {"val/acc_fused", "val/loss_fused"} <= logged
    assert "train/acc_fused" not in logged  # the fusion head is idle in stage-1 training
    (results,) = trainer.test(model, val, verbose=False)
    assert {"test/loss", "test/acc_fused", "test/acc_a", "test/acc_b"} <= set(results)
    assert 0.0 <= results["test/acc_fused"] <= 1.0
