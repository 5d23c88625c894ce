"""What ``PIDSchedulerCallback`` needs from a LightningModule, a check naming what is missing,
and :class:`PausableBranchesMixin`, the one implementation of pausing a branch.

``MultimodalClassifier`` implements the protocol through the mixin. Users with their own
LightningModule implement it too, best with the same mixin (pausing is easy to get subtly wrong:
a branch left in ``train()`` moves its BatchNorm statistics, a detached output alone still lets
weight decay move it); nothing else about their module is assumed except the batch layout
``(inputs: dict[str, Tensor], target: Tensor)`` of the validation data that the callback probes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from typing_extensions import Self

from pidsched.stages import STAGE_UNIMODAL, STAGES

__all__ = ["STAGES", "MultimodalModule", "PausableBranchesMixin", "check_multimodal_module"]


@runtime_checkable
class MultimodalModule(Protocol):
    """The interface the callback drives.

    Attributes:
        modality_names: modality names, in the order used everywhere (history, logging).
        encoders: one encoder per modality name.
        heads: one unimodal classification head per modality name (the encoder and its head
            form the modality's branch, which is paused and snapshotted as a unit).
        num_classes: K, the number of classes.

    Optional, only for probing on encoder features (``probe_inputs="features"``)::

        def modality_features(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]: ...  # (N, D_m)

    ``validation_step`` may return ``{"modality_logits": ..., "modality_features": ...}`` so that
    the callback reuses them instead of running the branches again.
    """

    modality_names: Sequence[str]
    encoders: nn.ModuleDict
    heads: nn.ModuleDict
    num_classes: int

    def modality_logits(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-modality class logits, shape ``(N, K)`` each, keyed by modality name."""
        ...

    def set_training_stage(self, stage: str, paused: frozenset[str]) -> None:
        """Set what is trained: stage ``"unimodal"`` or ``"joint"``; ``paused`` branches are in
        ``eval()``, their outputs detached and their loss terms dropped; in ``"joint"`` the next
        ``configure_optimizers`` call returns the stage-2 optimiser and scheduler."""
        ...


def _missing_members(module: object, require_features: bool) -> list[str]:
    members = {
        "modality_names": "a sequence of modality names",
        "encoders": "an nn.ModuleDict with one encoder per modality",
        "heads": "an nn.ModuleDict with one unimodal head per modality",
        "num_classes": "the number of classes (int)",
        "modality_logits": "a method inputs -> {modality: (N, K) logits}",
        "set_training_stage": "a method (stage, paused) -> None",
    }
    if require_features:
        members["modality_features"] = "a method inputs -> {modality: (N, D) features}"
    problems = []
    for name, what in members.items():
        value = getattr(module, name, None)
        if value is None:
            problems.append(f"`{name}`: {what}")
        elif name in (
            "modality_logits",
            "set_training_stage",
            "modality_features",
        ) and not callable(value):
            problems.append(f"`{name}` must be callable ({what})")
        elif name in ("encoders", "heads") and not isinstance(value, nn.ModuleDict):
            problems.append(f"`{name}` must be an nn.ModuleDict, got {type(value).__name__}")
    return problems


def _name_problems(
    module: object, expected_names: Collection[str] | None, num_classes: int | None
) -> list[str]:
    names = list(module.modality_names)
    problems = []
    if len(names) < 2 or len(set(names)) != len(names):
        problems.append(f"`modality_names` must hold at least two distinct names, got {names}")
    for attribute in ("encoders", "heads"):
        keys = sorted(getattr(module, attribute).keys())
        if keys != sorted(names):
            problems.append(
                f"`{attribute}` keys {keys} must equal `modality_names` {sorted(names)}"
            )
    if expected_names is not None and sorted(expected_names) != sorted(names):
        problems.append(
            f"the data provides modalities {sorted(expected_names)} but the model has "
            f"{sorted(names)}; build the model with one encoder per data modality"
        )
    if num_classes is not None and module.num_classes != num_classes:
        problems.append(
            f"the model has num_classes={module.num_classes} but {num_classes} was expected; "
            "pass the same num_classes to the model, the callback and the data"
        )
    return problems


def check_multimodal_module(
    module: object,
    expected_names: Collection[str] | None = None,
    num_classes: int | None = None,
    *,
    require_features: bool = False,
) -> None:
    """Check that ``module`` implements :class:`MultimodalModule`; list everything that is wrong.

    Args:
        module: the LightningModule to check.
        expected_names: modality names the data provides (None skips this check).
        num_classes: the number of classes expected (None skips this check).
        require_features: also require ``modality_features`` (probing on encoder features).

    Raises:
        TypeError: a member of the protocol is missing or has the wrong type.
        ValueError: the names or the number of classes do not match.

    Example::

        >>> check_multimodal_module(object())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: object does not implement pidsched.models.MultimodalModule; missing: ...
    """
    missing = _missing_members(module, require_features)
    if missing:
        raise TypeError(
            f"{type(module).__name__} does not implement pidsched.models.MultimodalModule; "
            f"missing: {'; '.join(missing)}. "
            "Use pidsched.MultimodalClassifier or add these members."
        )
    problems = _name_problems(module, expected_names, num_classes)
    if problems:
        raise ValueError(f"{type(module).__name__} does not fit the run: {'; '.join(problems)}.")


def check_stage(stage: str, paused: Collection[str], names: Sequence[str]) -> frozenset[str]:
    """Validate a ``set_training_stage`` call and return ``paused`` as a frozenset.

    Raises:
        ValueError: unknown stage, unknown paused names, or every branch paused in stage 1.
    """
    if stage not in STAGES:
        raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
    # Its own check, not _checks.check_not_a_string: the protocol layer imports only torch and
    # pidsched.stages (docs/architecture.md, Layer rule).
    if isinstance(paused, str):
        raise ValueError(
            f"Expected argument `paused` to be a collection of names, but got the string "
            f"{paused!r}; pass {{{paused!r}}} to pause that branch."
        )
    paused = frozenset(paused)
    unknown = paused - set(names)
    if unknown:
        raise ValueError(f"`paused` names {sorted(unknown)} are not modalities {list(names)}.")
    if stage == STAGE_UNIMODAL and paused == set(names):
        raise ValueError("`paused` holds every modality: stage 1 would train nothing.")
    return paused


def modality_outputs(outputs: object, key: str) -> Mapping[str, Tensor] | None:
    """Return ``outputs[key]`` when a step returned a mapping holding it, else None."""
    if isinstance(outputs, Mapping) and isinstance(outputs.get(key), Mapping):
        return outputs[key]
    return None


class PausableBranchesMixin:
    """``set_training_stage`` and everything a paused branch needs, for any ``nn.Module``.

    Put it before the LightningModule base (``class Mine(PausableBranchesMixin,
    L.LightningModule)``); the module must have ``modality_names``, ``encoders`` and ``heads``.
    The mixin keeps ``stage`` and ``paused`` and guarantees the protocol's freezing:

    - a paused branch (``encoders[m]`` and ``heads[m]``) is in ``eval()`` and stays there
      through ``train()`` calls, so dropout is off and BatchNorm statistics do not move;
    - :meth:`branch_features` runs a paused encoder without autograd while training, so none
      of its parameters gets a gradient (optimisers then skip them: no momentum, no weight
      decay). The module's loss must also leave out the paused heads' terms, e.g. by summing
      over :meth:`trained_modalities` only.

    Example::

        class TwoViews(PausableBranchesMixin, L.LightningModule):
            def training_step(self, batch, batch_idx):
                inputs, target = batch
                features = self.branch_features(inputs)
                return sum(
                    F.cross_entropy(self.heads[m](features[m]), target)
                    for m in self.trained_modalities()
                )
    """

    stage: str = STAGE_UNIMODAL
    paused: frozenset[str] = frozenset()

    def set_training_stage(self, stage: str, paused: Iterable[str] = frozenset()) -> None:
        """Set the stage (``"unimodal"`` or ``"joint"``) and the paused branches.

        Paused branches are put in ``eval()`` now and stay there through ``train()`` calls.
        The next ``configure_optimizers`` call should build the optimiser of ``stage``.

        Raises:
            ValueError: unknown stage or names, or every branch paused in stage 1.
        """
        self.paused = check_stage(stage, paused, self.modality_names)
        self.stage = stage
        self.train(self.training)

    def train(self, mode: bool = True) -> Self:
        """Like ``nn.Module.train`` but paused branches stay in ``eval()``."""
        super().train(mode)
        for name in self.paused:
            self.encoders[name].eval()
            self.heads[name].eval()
        return self

    def trained_modalities(self) -> list[str]:
        """The modalities whose branches train now: all of them unless paused (in order)."""
        return [name for name in self.modality_names if name not in self.paused]

    def branch_features(
        self, inputs: Mapping[str, Tensor], names: Iterable[str] | None = None
    ) -> dict[str, Tensor]:
        """Encoder features ``{m: (N, D_m)}`` for ``names`` (default: every modality).

        While training, a paused encoder runs under ``torch.no_grad()``: its features are
        constants, and its parameters get no gradient from any loss built on them.
        """
        features = {}
        for name in self.modality_names if names is None else names:
            frozen = self.training and name in self.paused
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                features[name] = self.encode_modality(name, inputs[name])
        return features

    def encode_modality(self, name: str, x: Tensor) -> Tensor:
        """``encoders[name](x)``: one modality's features ``(N, D_m)``; a module may override it
        (``MultimodalClassifier`` runs its compiled encoder here)."""
        return self.encoders[name](x)
