"""``MultimodalClassifier``: a late-fusion LightningModule with one unimodal head per modality.

Each modality m has a branch: ``encoders[m]`` (inputs -> features ``(N, D_m)``) and a linear
head ``heads[m]`` (features -> logits ``(N, K)``); a fusion head maps all features to fused
logits. The module trains in one of two stages, set from outside through
:meth:`MultimodalClassifier.set_training_stage` (it knows nothing about PID):

- ``"unimodal"``: loss = sum over trained branches of CE(head_m); the fusion head is idle.
- ``"joint"``: loss = CE(fused) + ``unimodal_weight`` x sum over trained branches of CE(head_m).

A paused branch is in ``eval()`` (BatchNorm neither normalises with batch statistics nor updates
its running statistics), runs without autograd and contributes no loss, so its parameters get no
gradient at all: optimisers skip them (no momentum, no weight decay) and DDP with
``find_unused_parameters=True`` keeps them in sync. The pausing itself is
:class:`pidsched.models.PausableBranchesMixin`, shared with users' own modules.

The fusion head is a module built from the feature sizes and the number of classes, like the
encoders (``pidsched-train`` instantiates ``model.fusion`` with ``feature_dims`` and
``num_classes``); the test split's macro-F1 of every head comes from torchmetrics inside
``test_step``. A trained run is reloaded with :func:`pidsched.cli.reload.load_run`.

The module knows nothing of schedules: :class:`pidsched.callbacks.PIDSchedulerCallback` keeps the
stage and paused set in its own checkpoint state and applies them, also on a fit resumed
mid-epoch. ``trainer.fit(torch.compile(model))`` (or
:meth:`MultimodalClassifier.compile_pieces`) compiles only the pure tensor pieces - encoders,
heads, fusion head - and keeps the steps, their logging and the stage state in Python.

Batches are ``(inputs: dict[str, Tensor], target: Tensor)`` with integer targets ``(N,)``.
Optimiser and scheduler settings are plain dicts (Hydra-friendly, stored in the checkpoint's
hyperparameters): ``{"name": "SGD", "lr": 0.01, ...}`` where ``name`` is a class in
``torch.optim`` (or ``torch.optim.lr_scheduler``) or a dotted import path; a scheduler dict may
also hold Lightning's ``interval``, ``frequency`` and ``monitor`` keys.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.compile import to_uncompiled
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassF1Score
from typing_extensions import override

from pidsched._checks import check_int_at_least
from pidsched.models.fusion import ConcatFusion, SumFusion
from pidsched.models.protocol import PausableBranchesMixin
from pidsched.stages import STAGE_JOINT, STAGE_UNIMODAL

__all__ = ["STAGE1_OPTIMIZER", "STAGE2_OPTIMIZER", "MultimodalClassifier"]

# The paper's settings (docs/method.md, "The released code").
STAGE1_OPTIMIZER: dict[str, Any] = {
    "name": "SGD",
    "lr": 1e-2,
    "momentum": 0.9,
    "weight_decay": 1e-4,
}
STAGE2_OPTIMIZER: dict[str, Any] = {
    "name": "SGD",
    "lr": 5e-4,
    "momentum": 0.9,
    "weight_decay": 1e-4,
}
_LIGHTNING_SCHEDULER_KEYS = ("interval", "frequency", "monitor")


def _plain(value: Any) -> Any:
    """Copy mappings and sequences (e.g. OmegaConf containers) into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _resolve_class(name: str, namespace: Any, argument: str) -> type:
    if "." in name:
        module_name, _, attribute = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            raise ValueError(f"`{argument}`: cannot import {name!r}.") from None
    if not hasattr(namespace, name):
        raise ValueError(
            f"`{argument}`: {name!r} is not in {namespace.__name__}; "
            "give a class name from there or a dotted import path."
        )
    return getattr(namespace, name)


def _check_spec(argument: str, spec: Any, namespace: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise TypeError(
            f"`{argument}` must be a dict like {{'name': 'SGD', 'lr': 0.01}}, got {spec!r}."
        )
    spec = _plain(spec)
    _resolve_class(spec["name"], namespace, argument)
    return spec


def build_optimizer(spec: Mapping[str, Any], params: Iterable[Tensor]) -> torch.optim.Optimizer:
    """Build an optimiser from ``{"name": ..., **kwargs}`` over ``params``."""
    kwargs = {key: value for key, value in spec.items() if key != "name"}
    return _resolve_class(spec["name"], torch.optim, "optimizer")(params, **kwargs)


def build_scheduler(spec: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Build a Lightning scheduler config from ``{"name": ..., interval?, frequency?, monitor?,
    **kwargs}`` attached to ``optimizer``."""
    kwargs = {
        key: value
        for key, value in spec.items()
        if key != "name" and key not in _LIGHTNING_SCHEDULER_KEYS
    }
    scheduler_class = _resolve_class(spec["name"], torch.optim.lr_scheduler, "scheduler")
    config = {"scheduler": scheduler_class(optimizer, **kwargs)}
    config.update({key: spec[key] for key in _LIGHTNING_SCHEDULER_KEYS if key in spec})
    return config


class _SampleMean(Metric):
    """Mean of per-batch values weighted by their batch sizes, over an epoch and every rank.

    torchmetrics' ``MeanMetric`` either drops NaNs (hiding a diverged loss) or, with
    ``nan_strategy="disable"``, ignores the weights (torchmetrics 1.9); this keeps both.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        # float32 as Lightning's own means (float64 is not on every accelerator).
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, batch_size: int) -> None:
        """Add a batch's mean ``value`` (0-d) over ``batch_size`` samples."""
        self.total += value.detach().float() * batch_size
        self.count += batch_size

    def compute(self) -> Tensor:
        """The mean over every sample (NaN when a value was)."""
        return self.total / self.count


class MultimodalClassifier(PausableBranchesMixin, LightningModule):
    """Late-fusion classifier with per-modality branches, trained in two stages.

    Implements :class:`pidsched.models.MultimodalModule`. Logs, per split ``train``/``val``/
    ``test``: ``<split>/loss`` (the stage's loss; in val/test with every branch),
    ``<split>/loss_<m>``, ``<split>/acc_<m>``, ``<split>/loss_fused``, ``<split>/acc_fused``
    (in training the fused head is evaluated in stage 2 only), and ``test/macro_f1_<m>``,
    ``test/macro_f1_fused`` (torchmetrics ``MulticlassF1Score``, macro over the classes seen).

    Args:
        encoders: ``{modality: nn.Module}`` mapping inputs to features ``(N, feature_dims[m])``;
            its order is the modality order.
        feature_dims: ``{modality: D_m}``, the same names as ``encoders``.
        num_classes: K >= 2.
        fusion: the fusion head, a module mapping ``{m: (N, D_m)}`` to logits ``(N, K)``, e.g.
            ``SumFusion(feature_dims, num_classes)`` (:mod:`pidsched.models.fusion`); None
            builds ``ConcatFusion(feature_dims, num_classes)``. Like the encoders it is not a
            hyperparameter: reload a run with :func:`pidsched.cli.reload.load_run`.
        unimodal_weight: weight of each unimodal CE in the stage-2 loss (0.6 in the paper).
        stage1_optimizer: stage-1 optimiser dict; None = SGD lr 1e-2, momentum 0.9, wd 1e-4.
        stage2_optimizer: stage-2 optimiser dict; None = SGD lr 5e-4, momentum 0.9, wd 1e-4.
        stage2_scheduler: stage-2 scheduler dict attached to the stage-2 optimiser, e.g.
            ``{"name": "StepLR", "step_size": 70, "gamma": 0.1}``; None keeps the lr constant.

    Raises:
        TypeError: ``encoders`` is not a mapping of modules, ``fusion`` is not a module, or an
            optimiser dict is malformed.
        ValueError: names do not match, a size is out of range, a class name is unknown, or
            ``fusion`` does not map every modality's features to ``(N, num_classes)`` logits.

    Example::

        >>> from torch import nn
        >>> model = MultimodalClassifier(
        ...     {"audio": nn.Linear(8, 4), "video": nn.Linear(6, 4)}, {"audio": 4, "video": 4}, 3
        ... )
        >>> inputs = {"audio": torch.randn(5, 8), "video": torch.randn(5, 6)}
        >>> model(inputs).shape, model.modality_logits(inputs)["audio"].shape
        (torch.Size([5, 3]), torch.Size([5, 3]))
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        feature_dims: Mapping[str, int],
        num_classes: int,
        fusion: nn.Module | None = None,
        unimodal_weight: float = 0.6,
        stage1_optimizer: Mapping[str, Any] | None = None,
        stage2_optimizer: Mapping[str, Any] | None = None,
        stage2_scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _check_encoders(encoders, feature_dims)
        check_int_at_least("num_classes", num_classes, 2, "the number of classes")
        if not unimodal_weight >= 0:
            raise ValueError(f"`unimodal_weight` must be >= 0, got {unimodal_weight!r}.")
        # Plain values only, so that checkpoints load with torch.load(weights_only=True).
        feature_dims = {name: int(feature_dims[name]) for name in encoders}
        stage1_optimizer = _check_spec("stage1_optimizer", stage1_optimizer, torch.optim)
        stage2_optimizer = _check_spec("stage2_optimizer", stage2_optimizer, torch.optim)
        stage2_scheduler = _check_spec(
            "stage2_scheduler", stage2_scheduler, torch.optim.lr_scheduler
        )
        if fusion is not None and not isinstance(fusion, nn.Module):
            raise TypeError(
                f"`fusion` must be an nn.Module such as ConcatFusion(feature_dims, num_classes) "
                f"(pidsched.models.fusion), or None for concat; got {fusion!r}."
            )
        self.save_hyperparameters(ignore=["encoders", "fusion"])

        self.modality_names: tuple[str, ...] = tuple(encoders)
        self.num_classes = num_classes
        self.unimodal_weight = float(unimodal_weight)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.heads = nn.ModuleDict(
            {name: nn.Linear(feature_dims[name], num_classes) for name in self.modality_names}
        )
        self.fusion = ConcatFusion(feature_dims, num_classes) if fusion is None else fusion
        _check_fusion(self.fusion, feature_dims, num_classes)
        # Created on first use, per logged name and dataloader (see _epoch_mean); their states
        # are not persistent, so checkpoints do not change.
        self._epoch_means = nn.ModuleDict()
        self.test_macro_f1 = nn.ModuleDict(
            {
                head: MulticlassF1Score(num_classes, average="macro")
                for head in (*self.modality_names, "fused")
            }
        )
        self.stage1_optimizer = stage1_optimizer or dict(STAGE1_OPTIMIZER)
        self.stage2_optimizer = stage2_optimizer or dict(STAGE2_OPTIMIZER)
        self.stage2_scheduler = stage2_scheduler
        self.stage = STAGE_UNIMODAL
        self.paused: frozenset[str] = frozenset()
        # Compiled callables of the pure tensor pieces (see compile_pieces); empty = eager.
        self._compiled: dict[tuple[str, str], Callable[..., Tensor]] = {}

    # --- the MultimodalModule protocol -------------------------------------------------------

    def modality_features(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Encoder features ``{m: (N, D_m)}`` for every modality."""
        return self.branch_features(inputs)

    def modality_logits(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Unimodal logits ``{m: (N, K)}`` for every modality."""
        features = self.modality_features(inputs)
        return {name: self._classify(name, features[name]) for name in self.modality_names}

    def modality_contributions(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's additive share of the fused logits ``{m: (N, K)}``; they sum to them.

        Defined for the additive fusion heads (what OGM-GE needs): ``concat`` gives modality m
        the columns of the fused linear layer that read its features plus the bias split evenly
        over the M modalities (OGM-GE's ``bias / 2`` for two); ``sum`` gives modality m its own
        linear layer, bias included.

        Args:
            features: encoder features ``{m: (N, D_m)}``, e.g. from :meth:`modality_features`.

        Raises:
            TypeError: the fusion head is not additive (``film``, ``gated``).
        """
        if isinstance(self.fusion, SumFusion):
            return {name: self.fusion.linears[name](features[name]) for name in self.modality_names}
        if not isinstance(self.fusion, ConcatFusion):
            raise TypeError(
                f"per-modality contributions need an additive fusion head (concat or sum), got "
                f"{type(self.fusion).__name__}; build the model with ConcatFusion or SumFusion "
                "(model/fusion=concat or sum)."
            )
        linear = self.fusion.linear
        widths = [self.hparams["feature_dims"][name] for name in self.fusion.names]
        bias_share = linear.bias / len(widths)
        return {
            name: F.linear(features[name], weight, bias_share)
            for name, weight in zip(
                self.fusion.names, linear.weight.split(widths, dim=1), strict=True
            )
        }

    # --- torch.compile: the pure tensor pieces only --------------------------------------------

    def compile_pieces(self, **compile_kwargs: Any) -> MultimodalClassifier:
        """Compile each encoder, each unimodal head and the fusion head with ``torch.compile``.

        Only these pure tensor functions are compiled; the training, validation and test steps
        (logging, the stage and the paused set) stay Python. A piece is compiled once per
        mode it runs in (train/eval, with/without autograd, then a dynamic batch size) and not
        again when the stage or the paused set changes, so steady-state epochs recompile
        nothing. Parameters, buffers and ``state_dict`` keys are those of the eager module.

        ``trainer.fit(torch.compile(model))`` ends up here too: at setup the module takes the
        compiler Lightning wrapped its steps with off the steps and puts it on these pieces.

        Args:
            compile_kwargs: ``torch.compile`` arguments, e.g. ``backend="inductor"``,
                ``mode="max-autotune"``.

        Returns:
            ``self``.
        """
        self._compile_with(lambda module: torch.compile(module, **compile_kwargs))
        return self

    def _compile_with(self, compiler: Callable[[nn.Module], Callable[..., Tensor]]) -> None:
        self._compiled = {("fusion", ""): compiler(self.fusion)}
        for name in self.modality_names:
            self._compiled["encoders", name] = compiler(self.encoders[name])
            self._compiled["heads", name] = compiler(self.heads[name])

    @override
    def setup(self, stage: str) -> None:
        # Lightning compiles the whole steps of a torch.compile'd module; with python state and
        # self.log inside they recompile until dynamo's limit and fall back to eager. Move the
        # compiler onto the pure pieces instead (Lightning keeps it only in _compiler_ctx; were it
        # renamed, a compiled module would just keep Lightning's whole-step compilation).
        context = getattr(self, "_compiler_ctx", None)
        if context is not None:
            to_uncompiled(self)
            self._compile_with(context["dynamo_ctx"])

    @override
    def encode_modality(self, name: str, x: Tensor) -> Tensor:
        return self._compiled.get(("encoders", name), self.encoders[name])(x)

    def _classify(self, name: str, features: Tensor) -> Tensor:
        return self._compiled.get(("heads", name), self.heads[name])(features)

    def _fuse(self, features: Mapping[str, Tensor]) -> Tensor:
        return self._compiled.get(("fusion", ""), self.fusion)(features)

    # --- forward and losses ------------------------------------------------------------------

    @override
    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Fused logits ``(N, K)``."""
        return self._fuse(self.modality_features(inputs))

    def _evaluate(self, batch: Any, split: str, dataloader_idx: int = 0) -> dict[str, Any]:
        inputs, target = _unpack_batch(batch, self.modality_names)
        training = split == "train"
        trained = self.trained_modalities() if training else list(self.modality_names)
        # Stage-1 training needs neither the paused branches nor the fusion head.
        needs_all = not training or self.stage == STAGE_JOINT
        features = self.branch_features(inputs, self.modality_names if needs_all else trained)
        logits = {name: self._classify(name, features[name]) for name in features}
        fused = self._fuse(features) if needs_all else None

        losses = {name: F.cross_entropy(logits[name], target) for name in logits}
        loss = sum(losses[name] for name in trained)
        if self.stage == STAGE_JOINT:
            losses["fused"] = F.cross_entropy(fused, target)
            loss = losses["fused"] + self.unimodal_weight * loss
        elif fused is not None:
            losses["fused"] = F.cross_entropy(fused, target)
        predictions = dict(logits, fused=fused) if fused is not None else logits
        self._log_split(split, loss, losses, predictions, target, dataloader_idx)
        return {
            "loss": loss,
            "modality_logits": logits,
            "modality_features": features,
            "fused_logits": fused,
        }

    def _log_split(
        self,
        split: str,
        loss: Tensor,
        losses: Mapping[str, Tensor],
        predictions: Mapping[str, Tensor],
        target: Tensor,
        dataloader_idx: int = 0,
    ) -> None:
        batch_size = target.shape[0]
        # The first dataloader keeps the plain names (the callback probes it, selection and
        # monitors read them); Lightning suffixes the others with "/dataloader_idx_<i>".
        suffixed = dataloader_idx != 0
        values = {f"{split}/loss_{name}": value for name, value in losses.items()}
        values.update(
            {
                f"{split}/acc_{name}": (logits.argmax(dim=-1) == target).float().mean()
                for name, logits in predictions.items()
            }
        )
        values[f"{split}/loss"] = loss
        if split == "train":
            for name, value in values.items():
                self.log(name, value, batch_size=batch_size, prog_bar=name == "train/loss")
            return
        for name, value in values.items():
            attribute = self._epoch_mean(name, dataloader_idx)
            self._epoch_means[attribute].update(value, batch_size)
            self.log(
                name,
                self._epoch_means[attribute],
                on_step=False,
                on_epoch=True,
                prog_bar=name == f"{split}/loss",
                add_dataloader_idx=suffixed,
                # Lightning looks metric attributes up once; these are created as they come.
                metric_attribute=f"_epoch_means.{attribute}",
            )

    def _epoch_mean(self, name: str, dataloader_idx: int) -> str:
        """The key in ``_epoch_means`` of the sample-weighted mean over the epoch of a
        validation or test value ``name``.

        A torchmetrics metric logged as an object, so that under DDP the epoch's value
        is the mean over every sample of every rank, exactly: Lightning's own mean of logged
        tensors divides by the ranks' mean batch count as an integer (64 for shares of 65 and
        64 samples), which is not exact when evaluation samples are not repeated to pad the
        ranks' shares (pidsched's data modules do not repeat them, so that the PID probe counts
        each sample once).
        """
        key = f"{name}@{dataloader_idx}".replace(".", "_")
        if key not in self._epoch_means:
            self._epoch_means[key] = _SampleMean().to(self.device)
        return key

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "train")["loss"]

    @override
    def validation_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """Return the loss and the per-modality logits and features (reused by the callback).

        With several validation dataloaders the first one logs ``val/...`` (the one the
        callback probes), the others ``val/.../dataloader_idx_<i>``.
        """
        return self._evaluate(batch, "val", dataloader_idx)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Log the test losses and accuracies, and accumulate every head's macro-F1."""
        outputs = self._evaluate(batch, "test")
        target = batch[1]
        heads = dict(outputs["modality_logits"], fused=outputs["fused_logits"])
        for head, logits in heads.items():
            metric = self.test_macro_f1[head]
            metric.update(logits.argmax(dim=-1), target)
            # Logged as a Metric object: Lightning computes it over the whole split (synced
            # across ranks) at the end of the test epoch, not as a mean of batch scores.
            self.log(f"test/macro_f1_{head}", metric, on_step=False, on_epoch=True)

    @override
    def configure_optimizers(self) -> Any:
        """The optimiser (and, in stage 2, the scheduler) of the current stage."""
        if self.stage == STAGE_UNIMODAL:
            return build_optimizer(self.stage1_optimizer, self.parameters())
        optimizer = build_optimizer(self.stage2_optimizer, self.parameters())
        if self.stage2_scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": build_scheduler(self.stage2_scheduler, optimizer),
        }


def _check_encoders(encoders: Any, feature_dims: Any) -> None:
    if not isinstance(encoders, Mapping) or not all(
        isinstance(encoder, nn.Module) for encoder in encoders.values()
    ):
        raise TypeError("`encoders` must be a mapping {modality name: nn.Module}.")
    if len(encoders) < 2:
        raise ValueError(f"`encoders` needs at least two modalities, got {list(encoders)}.")
    if not isinstance(feature_dims, Mapping) or set(feature_dims) != set(encoders):
        raise ValueError(
            f"`feature_dims` must give one size per encoder {sorted(encoders)}, "
            f"got {feature_dims!r}."
        )
    for name, dim in feature_dims.items():
        check_int_at_least(f"feature_dims[{name!r}]", dim, 1, "the encoder's output size")


class _ReadRecorder(Mapping[str, Tensor]):
    """Features ``{m: Tensor}`` that remember which modalities a fusion head read."""

    def __init__(self, values: Mapping[str, Tensor]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Tensor:
        self.read.add(name)
        return self._values[name]

    def __iter__(self):
        self.read.update(self._values)  # items() and values() go through here
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _check_fusion(fusion: nn.Module, feature_dims: Mapping[str, int], num_classes: int) -> None:
    """Fuse two rows of zero features once: the head must read every modality and return
    ``(2, num_classes)`` logits. A head built for other modalities or sizes otherwise trained
    silently (a concat head of two of three modalities ignored the third; one of 12 classes for
    10 failed only at test, in a metric).

    Raises:
        ValueError: the head fails on the features, ignores a modality or returns another shape.
    """
    parameter = next(fusion.parameters(), None)
    like = {} if parameter is None else {"device": parameter.device, "dtype": parameter.dtype}
    features = _ReadRecorder(
        {name: torch.zeros(2, dim, **like) for name, dim in feature_dims.items()}
    )
    fix = (
        "build it from the model's feature_dims and num_classes, e.g. "
        "ConcatFusion(feature_dims, num_classes)"
    )
    was_training = fusion.training
    fusion.eval()  # BatchNorm statistics must not see the zeros
    try:
        with torch.no_grad():
            logits = fusion(features)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"`fusion` ({type(fusion).__name__}) failed on features of sizes "
            f"{dict(feature_dims)}: {error!r}; {fix}."
        ) from error
    finally:
        fusion.train(was_training)
    ignored = sorted(set(feature_dims) - features.read)
    if ignored:
        raise ValueError(
            f"`fusion` ({type(fusion).__name__}) does not read the modalities {ignored}: the fused "
            f"prediction would ignore them; {fix}."
        )
    shape = tuple(getattr(logits, "shape", ()))
    if shape != (2, num_classes):
        raise ValueError(
            f"`fusion` ({type(fusion).__name__}) returned shape {shape} for 2 samples, expected "
            f"(2, num_classes={num_classes}) logits; {fix}."
        )


def _unpack_batch(batch: Any, names: Iterable[str]) -> tuple[Mapping[str, Tensor], Tensor]:
    """Split ``(inputs, target)`` and check that ``inputs`` holds every modality.

    Raises:
        ValueError: the batch is not a pair ``(dict, target)``, or a modality is missing; the
            message says what the batch was and which layout is expected.
    """
    names = list(names)
    layout = (
        f"batches must be pairs (inputs, target): inputs a dict {{modality: Tensor (N, ...)}} "
        f"with keys {names}, target a Tensor (N,) of class indices"
    )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            f"{layout}; got {_describe_batch(batch)}. Make the dataset return "
            "({modality: sample}, label) per sample (pidsched.data.MultimodalTensorDataset does)."
        )
    inputs, target = batch
    if not isinstance(inputs, Mapping) or not isinstance(target, Tensor):
        raise ValueError(f"{layout}; got ({_describe_batch(inputs)}, {_describe_batch(target)}).")
    missing = set(names) - set(inputs)
    if missing:
        raise ValueError(
            f"the batch has modalities {sorted(inputs)} but the model needs {sorted(names)}; "
            f"missing {sorted(missing)}. Build the model with the data's modality names."
        )
    return inputs, target


def _describe_batch(value: Any) -> str:
    """A short description of a batch (or part of one) for error messages."""
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return "dict(" + ", ".join(f"{k}={_describe_batch(v)}" for k, v in value.items()) + ")"
    if isinstance(value, (tuple, list)):
        parts = ", ".join(_describe_batch(v) for v in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"{type(value).__name__} of {len(value)} [{parts}{more}]"
    return type(value).__name__
