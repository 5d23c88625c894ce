"""Checks of a composed ``pidsched-train`` config, said in the command line's own terms.

A config that cannot run raises :class:`ConfigError` before training starts; ``pidsched-train``
prints its message, which names the override that fixes it (``data.views=[fou,pix]``,
``model/fusion=concat``), without a traceback and exits with status 2. A config that runs but
cannot do what the schedule is for (stage 2 out of reach of the epoch budget) gets a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pidsched.callbacks.trainer_checks import Spelling
from pidsched.controllers import stage_one_budget
from pidsched.data.mfeat import MFEAT_VIEWS, MFeatDataModule

EXIT_CONFIG_ERROR = 2
# The model/encoder option that suits each modality kind (conf/model/encoder/<option>.yaml).
ENCODER_FOR_KIND = {"vector": "mlp", "audio": "resnet18_audio", "visual": "resnet18_visual"}
FUSIONS_OF_ANY_COUNT = ("concat", "sum")
# The fusion options whose fused logits are a sum of per-modality shares (what OGM-GE scales).
ADDITIVE_FUSIONS = ("concat", "sum")


class ConfigError(ValueError):
    """A composed config that cannot run; the message names the override that fixes it."""


# How pidsched's constructors reject their arguments: a bad value, or a path that is not there
# (a data root, an arrays file, a checkpoint to resume from).
REJECTIONS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)


@contextmanager
def settings_of(keys: str) -> Iterator[None]:
    """Turn a constructor's rejection of its arguments (:data:`REJECTIONS`) into a
    :class:`ConfigError`.

    pidsched's constructors raise ``ValueError``/``TypeError`` naming the bad argument, or
    ``FileNotFoundError`` naming the missing path and what it should hold (Hydra wraps them in
    ``InstantiationException``, and prints a multi-line message as one quoted line); the message
    adds ``keys``, the config keys the arguments came from (``data.*``), so the fix is one
    override away. Other errors propagate.
    """
    try:
        yield
    except ConfigError:
        raise
    except InstantiationException as error:
        if not isinstance(error.__cause__, REJECTIONS):
            raise
        raise ConfigError(rejection(keys, error.__cause__)) from None
    except REJECTIONS as error:
        raise ConfigError(rejection(keys, error)) from None


def rejection(keys: str, error: Exception) -> str:
    said = str(error)
    # A multi-line message (a data root's expected layout) gets the hint on a line of its own.
    separator = "\n" if "\n" in said else " "
    return (
        f"the settings {keys} were rejected: {said}{separator}"
        "(`pidsched-train --cfg job` prints the composed config)."
    )


class CommandLineSpelling(Spelling):
    """The schedule's setup errors in ``pidsched-train``'s terms: ``trainer.<name>=<value>``
    (``+trainer.<name>=<value>`` for a key the trainer config does not define),
    ``schedule.<name>=<value>``, ``stage1_max_epochs=...`` and, for the callbacks the config
    built, ``<key>=<monitor>``.

    Args:
        trainer_keys: the keys of the trainer config a plain override can set (not those the
            command line added with ``+``).
        monitor_keys: callback -> config key of its monitor, e.g. ``callbacks.stop.monitor``.
    """

    def __init__(self, trainer_keys: Collection[str], monitor_keys: Mapping[Any, str]) -> None:
        self.trainer_keys = frozenset(trainer_keys)
        self.monitor_keys = {id(callback): key for callback, key in monitor_keys.items()}

    def trainer(self, name: str, value: Any) -> str:
        plus = "" if name in self.trainer_keys else "+"
        return f"{plus}trainer.{name}={override_value(value)}"

    def schedule(self, name: str, value: Any) -> str:
        return f"schedule.{name}={override_value(value)}"

    def stage_one_bound(self) -> str:
        return "stage1_max_epochs=..."

    def monitor(self, callback: Any) -> str:
        key = self.monitor_keys.get(id(callback))
        return super().monitor(callback) if key is None else f"{key}={callback.monitor}"


def null_group_message(args: Sequence[str], groups: Mapping[str, Sequence[str]]) -> str | None:
    """The error for a command-line override that sets a config group to ``null``
    (``logger=null``, ``+model/encoder@model.encoder.audio=null``), else None: Hydra refuses it
    with a traceback; the group is removed with ``~group`` or set to one of its options."""
    for arg in args:
        key, equals, value = arg.partition("=")
        group = key.lstrip("+").split("@")[0]
        if equals and value == "null" and group in groups:
            removal = "~" + key.lstrip("+")
            options = ", ".join(groups[group])
            return (
                f"{arg} sets the config group {group} to null, which Hydra cannot do; remove it "
                f"with {removal} or choose one of its options: {group}=<option> "
                f"(options: {options})."
            )
    return None


# Settings a resumed run may change: how long it trains and how it reports, not what it trains.
RESUMABLE_CHANGES = (
    "resume",
    "ckpt_path",
    "trainer.max_epochs",
    "trainer.enable_progress_bar",
    "cpu_threads",
)


def check_resumed_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any], saved_overrides: Sequence[str]
) -> None:
    """Refuse a resume whose composed config differs from the run's saved one outside
    :data:`RESUMABLE_CHANGES`: the run would continue on other data, another schedule or
    model, and its record (``.hydra/config.yaml``, which ``load_run`` rebuilds it from) would
    describe settings most of it never had.

    Raises:
        ConfigError: naming each differing key with both values, and the run's own overrides.
    """
    old, new = _flat(saved), _flat(current)
    changed = [
        f"{key} ({_shown(old, key)} -> {_shown(new, key)})"
        for key in sorted(set(old) | set(new))
        if old.get(key, _ABSENT) != new.get(key, _ABSENT) and not key.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        kept = [item for item in saved_overrides if not item.lstrip("+~").startswith("resume")]
        raise ConfigError(
            "a resumed run continues with the settings it was trained with, but this command "
            f"changes {', '.join(changed)}. Give the run's own overrides again "
            f"({' '.join(kept) or 'none'}) and change only trainer.max_epochs."
        )


_ABSENT = object()


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested config container (lists are values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(flat: Mapping[str, Any], key: str) -> str:
    return "unset" if key not in flat else override_value(flat[key])


def added_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys that command-line ``overrides`` add (``+key=value``, ``++key=value``):
    absent from the primary config, so a fix must add them too."""
    return {item.lstrip("+").split("=", 1)[0] for item in overrides if item.startswith("+")}


def override_value(value: Any) -> str:
    """``value`` as a command-line override writes it (``null``, ``true``, ``1.0``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def views_override(views: Sequence[str]) -> str:
    """``data.views=[a,b]``: the override that selects ``views``."""
    return f"data.views=[{','.join(views)}]"


def two_views_like(datamodule: Any) -> str:
    """A two-view ``data.views`` override that keeps the first chosen view.

    The second view is taken from the default pair (fou, pix) first, then from the rest.
    """
    first = list(datamodule.modality_names)[:1]
    candidates = ("fou", "pix", *MFEAT_VIEWS)
    return views_override([*first, *[view for view in candidates if view not in first]][:2])


def data_setting(datamodule: Any) -> str:
    """How the user chose the modalities: the views override, or the data module's names."""
    if isinstance(datamodule, MFeatDataModule):
        return views_override(datamodule.modality_names)
    return f"the data module's modalities {list(datamodule.modality_names)}"


def check_group_nodes(
    cfg: Any, choices: Mapping[str, str | None], options_of: Callable[[str], Sequence[str]]
) -> None:
    """Raise where a dotted override put a plain value in place of a config group's config.

    ``model.fusion=film`` sets the key ``model.fusion`` to the string ``"film"``, and Hydra only
    fails later, on instantiating a string, with a message that names neither the key nor the
    fix. A group's option is chosen with its slash path (``model/fusion=film``, or
    ``model/encoder@model.encoder.vector=mlp`` for a group placed at another key).

    Args:
        cfg: the composed config.
        choices: Hydra's ``runtime.choices``, defaults-list entry (``group`` or
            ``group@package``) -> chosen option; Hydra's own groups (``hydra/...``) are skipped.
        options_of: the options of a group (``"model/fusion"`` -> ``["concat", ...]``), listed in
            the message; an empty list leaves them out.
    """
    for entry, choice in choices.items():
        group, _, package = entry.partition("@")
        if choice is None or group.split("/")[0] == "hydra":
            continue
        key = package or group.replace("/", ".")
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or OmegaConf.is_config(value) or isinstance(value, Mapping):
            continue
        options = list(options_of(group))
        if not options or str(value) in options:
            fix = f"choose the option with a slash instead: {entry}={value}"
            fix += f" (options: {', '.join(options)})" if options else ""
        else:
            fix = f"{value} is none of its options; choose one with a slash: {entry}=" + (
                f"<one of {', '.join(options)}>"
            )
        raise ConfigError(
            f"{key}={value} sets the key {key} to a plain value, but {key} holds the config "
            f"chosen from the group {group}; {fix}."
        )


def check_modality_count(datamodule: Any) -> None:
    """Raise unless the data gives at least two modalities (stage 1 pauses one of several)."""
    names = list(datamodule.modality_names)
    if len(names) >= 2:
        return
    fix = (
        f"Name two or more views, e.g. {two_views_like(datamodule)}."
        if isinstance(datamodule, MFeatDataModule)
        else "Use a data module with two or more modalities."
    )
    raise ConfigError(
        f"{data_setting(datamodule)} gives {len(names)} modality; pidsched trains two or more "
        f"(it pauses one while the others catch up). {fix}"
    )


def check_fusion(model_cfg: Mapping[str, Any], datamodule: Any) -> None:
    """Raise unless ``model.fusion`` (a ``_target_`` config) takes the data's modalities.

    The head is built once on 1-wide features, so the test is the fusion module's own rule.
    """
    fusion_cfg = model_cfg.get("fusion")
    if fusion_cfg is None:
        return
    names = list(datamodule.modality_names)
    try:
        instantiate(fusion_cfg, feature_dims=dict.fromkeys(names, 1), num_classes=2)
    except InstantiationException as error:
        if not isinstance(error.__cause__, ValueError):
            raise
        choices = " or ".join(f"model/fusion={name}" for name in FUSIONS_OF_ANY_COUNT)
        two = (
            f", or two views, e.g. {two_views_like(datamodule)}"
            if isinstance(datamodule, MFeatDataModule)
            else ""
        )
        raise ConfigError(
            f"model/fusion={fusion_option(fusion_cfg)} cannot fuse the {len(names)} modalities "
            f"of {data_setting(datamodule)}; {choices} fuse any number. Use one of them{two}."
        ) from None


def check_ogm_ge_fusion(cfg: Mapping[str, Any]) -> None:
    """Raise when the OGM-GE callback is configured with a fusion head that is not additive: it
    splits the fused logits into per-modality contributions, which only concat and sum have
    (it failed at the first training step, with a traceback)."""
    callbacks = cfg.get("callbacks") or {}
    fusion_cfg = cfg["model"].get("fusion")
    if callbacks.get("ogm_ge") is None or fusion_cfg is None:
        return
    option = fusion_option(fusion_cfg)
    if option not in ADDITIVE_FUSIONS:
        choices = " or ".join(f"model/fusion={name}" for name in ADDITIVE_FUSIONS)
        raise ConfigError(
            f"schedule=ogm_ge modulates each modality's additive share of the fused logits, "
            f"which model/fusion={option} does not have; use {choices}."
        )


def fusion_option(fusion_cfg: Mapping[str, Any]) -> str:
    """The ``model/fusion`` option a fusion config came from (``film``), else its ``_target_``."""
    target = str(fusion_cfg.get("_target_", ""))
    shipped = {
        "pidsched.models.fusion.ConcatFusion": "concat",
        "pidsched.models.fusion.SumFusion": "sum",
        "pidsched.models.fusion.FiLMFusion": "film",
        "pidsched.models.fusion.GatedFusion": "gated",
    }
    return shipped.get(target, target)


def missing_encoder_message(missing: Mapping[str, str], encoder_cfg: Mapping[str, Any]) -> str:
    """The error for modalities (``{name: kind}``) that no ``model.encoder`` entry covers."""
    kinds = sorted(set(missing.values()))
    additions = " ".join(
        f"+model/encoder@model.encoder.{kind}={ENCODER_FOR_KIND.get(kind, '<option>')}"
        for kind in kinds
    )
    described = ", ".join(f"{name!r} (kind {kind!r})" for name, kind in missing.items())
    return (
        f"no encoder for modality {described}; model.encoder has {sorted(encoder_cfg)}. "
        f"Add one per kind: {additions} (options are the files of conf/model/encoder/; a "
        f"modality name instead of the kind sets that modality alone)."
    )


def checked_max_epochs(max_epochs: Any) -> int | None:
    """``trainer.max_epochs`` when it is an integer or unset; a :class:`ConfigError` otherwise
    (``trainer.max_epochs=two`` crashed the stage-2 check with a TypeError)."""
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int)):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} is not an integer; set e.g. trainer.max_epochs=30 "
            "(or trainer.max_epochs=-1 with trainer.max_steps for no epoch limit)."
        )
    return max_epochs


def stage_two_warning(
    controller: Any, max_epochs: int | None, stage1_max_epochs: int | None, schedule: str
) -> str | None:
    """A warning when ``trainer.max_epochs`` leaves stage 2 out of reach, else None.

    Args:
        controller: the schedule's controller.
        max_epochs: ``trainer.max_epochs`` (None or -1: unbounded).
        stage1_max_epochs: the config's ``stage1_max_epochs``, the key the schedules read
            their stage-1 budget from.
        schedule: the schedule option, for the message.
    """
    budget = stage_one_budget(controller)
    if budget is None or max_epochs is None or max_epochs < 0:
        return None
    attribute, epochs, exact = budget
    if max_epochs > epochs:
        return None
    key = "stage1_max_epochs" if stage1_max_epochs == epochs else f"schedule.controller.{attribute}"
    reach = (
        f"schedule={schedule} trains exactly {key}={epochs} unimodal epochs, so stage 2 never "
        "starts"
        if exact
        else f"schedule={schedule} may train up to {key}={epochs} unimodal epochs, so stage 2 "
        "starts only if its rule ends stage 1 early"
    )
    fixes = [f"trainer.max_epochs>{epochs} (e.g. trainer.max_epochs={epochs + 1})"]
    shorter = shorter_stage_one(controller, key, max_epochs - 1)
    if shorter:
        fixes.append(f"{key}<{max_epochs} (e.g. {shorter})")
    return (
        f"trainer.max_epochs={max_epochs} is at most the stage-1 budget: {reach}; without stage "
        "2 the fusion head is never trained and the fused test accuracy is that of an untrained "
        f"head. Set {', or '.join(fixes)}."
    )


def shorter_stage_one(controller: Any, key: str, epochs: int) -> str | None:
    """Overrides that cap stage 1 at ``epochs`` epochs, or None where no budget that short exists.

    A rule-based stage 1 needs at least one epoch and ``min_unimodal_epochs`` within the budget.
    """
    minimum = getattr(controller, "min_unimodal_epochs", None)
    if minimum is None:
        return f"{key}={epochs}" if epochs >= 0 else None
    if epochs < 1:
        return None
    if minimum <= epochs:
        return f"{key}={epochs}"
    return f"{key}={epochs} schedule.controller.min_unimodal_epochs={epochs}"
