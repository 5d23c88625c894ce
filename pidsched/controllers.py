"""Stage controllers: the decision rules of the two-stage schedule, as pure logic on plain values.

A controller is asked once per probe (and, without measurements, once per finished training
epoch) what to do next: which modality branches to pause and whether to end stage 1
("unimodal") and start stage 2 ("joint"). It never touches a model; ``PIDSchedulerCallback``
applies its decisions. Keeping the rules here lets them be tested on scripted measurement
sequences and lets one callback run the method, its ablation and the classic baselines:

- :class:`PIDController`: the paper's rule on each modality's unique information (the default),
  or with ``signal="mutual_information"`` on I(X_m;Y) (the paper's MI ablation); optional
  evidence rules (``confidence`` on bootstrap replicates, ``persistence`` over probes).
- :class:`MIController`: deprecated alias of ``PIDController(signal="mutual_information")``.
- :class:`FixedController`: a fixed number of unimodal epochs, then joint; it measures only
  when asked (``measure=True``, to record the curves).
- :class:`JointController`: plain joint training from the first epoch; likewise.

A probe is the history record documented in ``docs/architecture.md``: a mapping with at least
``"unique"`` and ``"mutual_information_per_modality"`` (``{modality: bits}``) and ``"synergy"``
(bits), plus ``"replicates"`` (bootstrap replicates of the same quantities, or None) for
controllers that need them.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from pidsched._checks import check_int_at_least
from pidsched.stages import STAGE_JOINT, STAGE_UNIMODAL

__all__ = [
    "STAGE_JOINT",
    "STAGE_UNIMODAL",
    "Controller",
    "Decision",
    "FixedController",
    "JointController",
    "MIController",
    "PIDController",
    "StageOneBudget",
    "stage_one_budget",
]


@dataclass(frozen=True)
class Decision:
    """What a controller asks for after one probe or one finished epoch.

    Attributes:
        paused: modality branches to keep paused during the next training epoch.
        switch: end stage 1 now; stage 2 ("joint") starts with the next training epoch.
        peak: this probe has the highest synergy seen so far (the callback snapshots the
            branch weights so that they can be restored at the switch).
    """

    paused: frozenset[str] = frozenset()
    switch: bool = False
    peak: bool = False


class Controller(ABC):
    """Decision rules for stage 1. Subclasses hold their state as plain Python values.

    Attributes:
        needs_measurements: whether the callback probes (measures PID on the validation data
            and records the curves); when False it never measures (no validation pass is needed
            for the schedule). The baselines decide without probes and measure only when asked
            (``measure=True``), to record the curves.
        needs_replicates: whether :meth:`decide` needs the probe's bootstrap replicates; the
            callback then requires ``num_bootstrap > 0``.
        initial_stage: the stage of the first training epoch.
    """

    # Plain attributes, so that a subclass may set them per instance or compute them.
    needs_measurements: bool
    needs_replicates: bool = False

    @property
    def initial_stage(self) -> str:
        """The stage of the first training epoch: ``"unimodal"`` unless overridden."""
        return STAGE_UNIMODAL

    @abstractmethod
    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        """Decide after a training epoch of stage 1.

        Args:
            epochs_completed: training epochs finished so far (1 after the first epoch).
            probe: this epoch's measurement, or None when the epoch was not probed.

        Returns:
            The decision to apply at the start of the next training epoch.
        """

    def state_dict(self) -> dict[str, Any]:
        """Return the controller's state as plain Python values (empty when stateless)."""
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # noqa: B027
        """Restore the state returned by :meth:`state_dict` (stateless controllers ignore it)."""


class StageOneBudget(NamedTuple):
    """A controller's stage-1 epoch budget.

    Attributes:
        attribute: the controller's argument that sets it (``max_unimodal_epochs``,
            ``unimodal_epochs``).
        epochs: the budget, in training epochs.
        exact: True when stage 1 always lasts that long (:class:`FixedController`), False when it
            is the most it may last (the rule-based controllers may end it earlier).
    """

    attribute: str
    epochs: int
    exact: bool


def stage_one_budget(controller: Controller) -> StageOneBudget | None:
    """The stage-1 budget of ``controller``; None without stage 1 or without a known budget (a
    custom controller with neither ``max_unimodal_epochs`` nor ``unimodal_epochs``)."""
    if controller.initial_stage != STAGE_UNIMODAL:
        return None
    if hasattr(controller, "max_unimodal_epochs"):
        return StageOneBudget("max_unimodal_epochs", int(controller.max_unimodal_epochs), False)
    if hasattr(controller, "unimodal_epochs"):
        return StageOneBudget("unimodal_epochs", int(controller.unimodal_epochs), True)
    return None


def _check_non_negative_int(name: str, value: Any) -> int:
    check_int_at_least(name, value, 0, "a count of epochs or switches")
    return value


def _check_measure(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`measure` must be True or False, got {value!r}.")
    return value


def _check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


def _check_confidence(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(
            f"`confidence` (the share of bootstrap replicates a decision must hold on) must be "
            f"None or a number in (0, 1], got {value!r}; e.g. 0.9."
        )
    return float(value)


# The probe key of each pause signal ({modality: bits}).
SIGNAL_KEYS = {
    "unique": "unique",
    "mutual_information": "mutual_information_per_modality",
}


def _share_at_least(count: int, total: int, share: float) -> bool:
    """``count`` of ``total`` is at least ``share`` of them, exactly: ``0.55 * 100`` is
    55.00000000000001 in floating point, and 55 of 100 then missed a share of 0.55."""
    return total > 0 and count >= math.ceil(share * total - 1e-9 * total)


class PIDController(Controller):
    """The paper's stage-1 rules on a per-modality information signal, optionally on evidence.

    Signal (``signal``): ``"unique"`` reads ``probe["unique"]`` (U_m in bits; for more than two
    modalities the uniqueness of m against the others' averaged prediction), the paper's
    controller; ``"mutual_information"`` reads ``probe["mutual_information_per_modality"]``
    (I(X_m;Y) in bits), the paper's MI ablation. Nothing else differs between the two.

    Pause rule: modality m is a pause candidate when its signal exceeds ``ratio`` times the
    smallest signal among the other modalities (each clamped below at ``floor`` bits so that a
    zero does not divide by zero). With two modalities this is exactly "if U1/U2 > 3 pause
    modality 1, if U2/U1 > 3 pause modality 2". The weakest modality is never a candidate, so
    some branch always trains (with ``confidence``, the weakest by the point estimate). A signal
    that is NaN pauses nothing.

    End of stage 1, whichever comes first:

    - synergy below ``synergy_drop`` x its peak so far, once ``min_unimodal_epochs`` have passed
      (a peak of zero or less, rounding of no synergy, is none to drop from);
    - ``max_switches`` pause switches (a switch is a change of the paused set to a non-empty set
      different from the previous one; 0 disables this rule);
    - ``max_unimodal_epochs`` training epochs.

    Evidence options (both off by default: the paper's rules exactly):

    - ``confidence`` c: the ratio rule and the synergy drop are judged on the probe's bootstrap
      replicates (``probe["replicates"]``, see ``docs/architecture.md``) instead of the point
      estimate: m is a candidate only when it clears the ratio in at least a share c of the
      replicates, and a synergy drop counts only when replicate synergy is below
      ``synergy_drop`` x peak in at least a share c of them (the peak is the point estimates'
      running maximum). Needs the callback's ``num_bootstrap > 0`` (``needs_replicates``).
    - ``persistence`` k: a modality is paused only once it was a candidate on k consecutive
      probes, and a synergy drop ends stage 1 only once it held on k consecutive probes;
      unprobed epochs neither count nor break a streak. A paused modality trains again as soon
      as it is no longer a candidate: training every branch is the default that needs no
      evidence. This keeps early learning speed (one branch merely learning first) from being
      read as dominance.

    Args:
        signal: ``"unique"`` or ``"mutual_information"``.
        ratio: dominance factor (>= 1) that pauses a modality.
        floor: bits below which a signal counts as this value.
        synergy_drop: fraction (0, 1] of the peak synergy below which stage 1 ends.
        min_unimodal_epochs: epochs before the synergy rule may end stage 1.
        max_switches: pause switches that end stage 1; 0 disables this rule.
        max_unimodal_epochs: epochs after which stage 1 ends regardless.
        confidence: None (decide on the point estimate) or the share in (0, 1] of bootstrap
            replicates a pause or a synergy drop must hold on.
        persistence: consecutive probes (>= 1) a pause or a synergy drop must hold on.

    Raises:
        ValueError: an argument is out of range.

    Example::

        >>> controller = PIDController()
        >>> probe = {"unique": {"audio": 0.9, "video": 0.1}, "synergy": 0.2}
        >>> controller.decide(1, probe)
        Decision(paused=frozenset({'audio'}), switch=False, peak=True)
    """

    needs_measurements = True

    def __init__(
        self,
        signal: str = "unique",
        ratio: float = 3.0,
        floor: float = 1e-3,
        synergy_drop: float = 0.8,
        min_unimodal_epochs: int = 5,
        max_switches: int = 2,
        max_unimodal_epochs: int = 200,
        confidence: float | None = None,
        persistence: int = 1,
    ) -> None:
        if signal not in SIGNAL_KEYS:
            raise ValueError(
                f"`signal` must be one of {sorted(SIGNAL_KEYS)}, got {signal!r}: 'unique' is "
                "the paper's controller, 'mutual_information' its MI ablation."
            )
        self.signal = signal
        self.ratio = _check_positive_float("ratio", ratio)
        if self.ratio < 1.0:
            raise ValueError(
                f"`ratio` must be >= 1 (a dominance factor), got {ratio!r}; "
                "use e.g. 3.0 as in the paper."
            )
        self.floor = _check_positive_float("floor", floor)
        self.synergy_drop = _check_positive_float("synergy_drop", synergy_drop)
        if self.synergy_drop > 1.0:
            raise ValueError(
                f"`synergy_drop` must be in (0, 1] (a fraction of the peak), got {synergy_drop!r}."
            )
        self.min_unimodal_epochs = _check_non_negative_int(
            "min_unimodal_epochs", min_unimodal_epochs
        )
        self.max_switches = _check_non_negative_int("max_switches", max_switches)
        self.max_unimodal_epochs = _check_non_negative_int(
            "max_unimodal_epochs", max_unimodal_epochs
        )
        if self.max_unimodal_epochs < 1:
            raise ValueError(
                "`max_unimodal_epochs` must be >= 1; use JointController to skip stage 1."
            )
        if self.min_unimodal_epochs > self.max_unimodal_epochs:
            raise ValueError(
                f"`min_unimodal_epochs` ({min_unimodal_epochs}) must not exceed "
                f"`max_unimodal_epochs` ({max_unimodal_epochs})."
            )
        self.confidence = _check_confidence(confidence)
        check_int_at_least(
            "persistence", persistence, 1, "consecutive probes a decision must hold on"
        )
        self.persistence = persistence
        self.paused: frozenset[str] = frozenset()
        self.peak_synergy: float | None = None
        self.switches = 0
        # Persistence state: per modality, the consecutive probes on which it was a pause
        # candidate (absent: 0); the consecutive probes with a synergy drop.
        self.candidate_streaks: dict[str, int] = {}
        self.drop_streak = 0

    @property
    def needs_replicates(self) -> bool:
        """True when ``confidence`` is set: decisions read the probe's bootstrap replicates."""
        return self.confidence is not None

    @property
    def signal_key(self) -> str:
        """The probe key of the signal: ``"unique"`` or ``"mutual_information_per_modality"``."""
        return SIGNAL_KEYS[self.signal]

    def _signal(self, probe: Mapping[str, Any]) -> dict[str, float]:
        try:
            signal = probe[self.signal_key]
        except KeyError:
            raise ValueError(
                f"{type(self).__name__}(signal={self.signal!r}) needs probe[{self.signal_key!r}] "
                f"({{modality: bits}}); the probe has keys {sorted(probe)}."
            ) from None
        if len(signal) < 2:
            raise ValueError(
                f"probe[{self.signal_key!r}] must hold at least two modalities, got {dict(signal)}."
            )
        return {name: float(value) for name, value in signal.items()}

    def _replicates(self, probe: Mapping[str, Any]) -> Mapping[str, Any]:
        replicates = probe.get("replicates")
        if replicates is None:
            raise ValueError(
                f"{type(self).__name__}(confidence={self.confidence}) decides on bootstrap "
                "replicates but probe['replicates'] is missing or None; give "
                "PIDSchedulerCallback `num_bootstrap` > 0, or set `confidence=None`."
            )
        return replicates

    def _clamped(self, signal: Mapping[str, float]) -> dict[str, float]:
        """Each signal clamped below at ``floor`` bits, so that a zero does not divide by zero."""
        return {name: max(value, self.floor) for name, value in signal.items()}

    def _dominant(self, signal: Mapping[str, float]) -> frozenset[str]:
        if any(math.isnan(value) for value in signal.values()):
            # No ratio is known: nothing is paused (NaN comparisons would depend on dict order).
            return frozenset()
        clamped = self._clamped(signal)
        dominant = set()
        for name, value in clamped.items():
            weakest_other = min(v for other, v in clamped.items() if other != name)
            if value > self.ratio * weakest_other:
                dominant.add(name)
        return frozenset(dominant)

    def _candidates(self, probe: Mapping[str, Any], names: list[str]) -> frozenset[str]:
        """The modalities that clear the ratio rule on this probe (see the class docstring)."""
        if self.confidence is None:
            return self._dominant(self._signal(probe))
        per_modality = self._replicates(probe).get(self.signal_key)
        if per_modality is None or set(per_modality) != set(names):
            raise ValueError(
                f"probe['replicates'][{self.signal_key!r}] must map each of {names} to a list "
                f"of replicate values (bits), got {per_modality!r}."
            )
        columns = [[float(v) for v in per_modality[name]] for name in names]
        counts = dict.fromkeys(names, 0)
        for values in zip(*columns, strict=True):
            # A replicate with a NaN pauses nothing (_dominant): it counts against pausing.
            for name in self._dominant(dict(zip(names, values, strict=True))):
                counts[name] += 1
        total = len(columns[0])
        candidates = {n for n in names if _share_at_least(counts[n], total, self.confidence)}
        # Each replicate spares its own weakest modality, but the weakest can differ between
        # replicates, so every modality could clear its share: the point estimate's weakest
        # always trains.
        point = self._clamped(self._signal(probe))
        return frozenset(candidates - {min(names, key=point.__getitem__)})

    def _synergy_dropped(self, probe: Mapping[str, Any], synergy: float) -> bool:
        """This probe's synergy is below ``synergy_drop`` x peak (point or replicate share)."""
        if self.peak_synergy is None or self.peak_synergy <= 0:
            # No synergy to drop from; a peak of -3e-16 bits (rounding) made 0.8 x peak exceed
            # the peak, so an unchanged synergy read as a drop.
            return False
        threshold = self.synergy_drop * self.peak_synergy
        if self.confidence is None:
            return synergy < threshold
        replicates = [float(v) for v in self._replicates(probe).get("synergy", ())]
        if not replicates:
            raise ValueError(
                "probe['replicates']['synergy'] must be a non-empty list of replicate synergies "
                f"(bits) when `confidence` is set, got {self._replicates(probe).get('synergy')!r}."
            )
        below = sum(value < threshold for value in replicates)
        return _share_at_least(below, len(replicates), self.confidence)

    def _persistent_paused(self, candidates: frozenset[str]) -> frozenset[str]:
        """The candidates that have been candidates on ``persistence`` consecutive probes."""
        self.candidate_streaks = {
            name: self.candidate_streaks.get(name, 0) + 1 for name in sorted(candidates)
        }
        return frozenset(
            name for name, streak in self.candidate_streaks.items() if streak >= self.persistence
        )

    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        """Apply the pause and end-of-stage rules (see the class docstring).

        Args:
            epochs_completed: training epochs finished so far.
            probe: this epoch's history record (with ``"replicates"`` when ``confidence`` is
                set), or None when the epoch was not probed or its probe is not certified (then
                only ``max_unimodal_epochs`` can end the stage and the paused set is kept).

        Returns:
            The decision for the next epoch.

        Raises:
            ValueError: the probe lacks the signal, or the replicates ``confidence`` needs.
        """
        _check_non_negative_int("epochs_completed", epochs_completed)
        out_of_epochs = epochs_completed >= self.max_unimodal_epochs
        if probe is None:
            return Decision(paused=self.paused, switch=out_of_epochs)

        names = list(self._signal(probe))
        paused = self._persistent_paused(self._candidates(probe, names))
        if paused and paused != self.paused:
            self.switches += 1
        self.paused = paused

        synergy = float(probe["synergy"])
        is_peak = not math.isnan(synergy) and (
            self.peak_synergy is None or synergy > self.peak_synergy
        )
        # Judged against the peak before this probe; a new peak is never a drop.
        dropped = (
            not is_peak
            and epochs_completed >= self.min_unimodal_epochs
            and self._synergy_dropped(probe, synergy)
        )
        self.drop_streak = self.drop_streak + 1 if dropped else 0
        if is_peak:
            self.peak_synergy = synergy
        synergy_ended = self.drop_streak >= self.persistence
        too_many_switches = self.max_switches > 0 and self.switches >= self.max_switches
        switch = out_of_epochs or synergy_ended or too_many_switches
        return Decision(paused=paused, switch=switch, peak=is_peak)

    def state_dict(self) -> dict[str, Any]:
        """Return the decision state as plain values (names sorted, bits, counts)."""
        return {
            "paused": sorted(self.paused),
            "peak_synergy": self.peak_synergy,
            "switches": self.switches,
            "candidate_streaks": dict(sorted(self.candidate_streaks.items())),
            "drop_streak": self.drop_streak,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict` (older states lack the streaks)."""
        self.paused = frozenset(state_dict.get("paused", ()))
        peak = state_dict.get("peak_synergy")
        self.peak_synergy = None if peak is None else float(peak)
        self.switches = int(state_dict.get("switches", 0))
        # A state saved before persistence existed: its paused set had held for one probe.
        streaks = state_dict.get("candidate_streaks", dict.fromkeys(self.paused, 1))
        self.candidate_streaks = {str(name): int(streak) for name, streak in streaks.items()}
        self.drop_streak = int(state_dict.get("drop_streak", 0))


class MIController(PIDController):
    """Deprecated: ``PIDController(signal="mutual_information", ...)``, the paper's MI ablation.

    Builds exactly that controller and emits a ``FutureWarning``. The old argument names
    ``mi_ratio`` and ``mi_floor`` are still accepted for old configs and mean ``ratio`` and
    ``floor``; every other argument is :class:`PIDController`'s.

    Raises:
        ValueError: an old name is given together with its new name, or an argument is out of
            range.
    """

    def __init__(
        self,
        *,
        mi_ratio: float | None = None,
        mi_floor: float | None = None,
        **kwargs: Any,
    ) -> None:
        warnings.warn(
            "MIController is deprecated; use PIDController(signal='mutual_information') "
            "(schedule=mi) instead.",
            FutureWarning,
            stacklevel=2,
        )
        for old, new, value in (("mi_ratio", "ratio", mi_ratio), ("mi_floor", "floor", mi_floor)):
            if value is None:
                continue
            if new in kwargs:
                raise ValueError(f"Give `{new}` or the deprecated `{old}`, not both.")
            kwargs[new] = value
        if kwargs.get("signal", "mutual_information") != "mutual_information":
            raise ValueError(
                f"MIController always uses signal='mutual_information', got "
                f"signal={kwargs['signal']!r}; use PIDController for other signals."
            )
        kwargs["signal"] = "mutual_information"
        super().__init__(**kwargs)


class FixedController(Controller):
    """Unimodal training for a fixed number of epochs, then joint training.

    Args:
        unimodal_epochs: stage-1 epochs; 0 starts joint training at once.
        measure: probe like the PID schedules (every ``probe_every_n_epochs``) and record the
            U/R/S curves, deciding nothing on them; False (the default) measures nothing.

    Raises:
        ValueError: ``unimodal_epochs`` is not a non-negative int.
        TypeError: ``measure`` is not a bool.

    Example::

        >>> FixedController(unimodal_epochs=2).decide(2, None).switch
        True
    """

    def __init__(self, unimodal_epochs: int, measure: bool = False) -> None:
        self.unimodal_epochs = _check_non_negative_int("unimodal_epochs", unimodal_epochs)
        self.needs_measurements = _check_measure(measure)

    @property
    def initial_stage(self) -> str:
        """``"joint"`` when ``unimodal_epochs == 0``, else ``"unimodal"``."""
        return STAGE_JOINT if self.unimodal_epochs == 0 else STAGE_UNIMODAL

    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        """Switch once ``unimodal_epochs`` epochs are done; never pause (``probe`` is ignored)."""
        _check_non_negative_int("epochs_completed", epochs_completed)
        return Decision(switch=epochs_completed >= self.unimodal_epochs)


class JointController(Controller):
    """Plain joint training from the first epoch (the usual baseline).

    Args:
        measure: probe like the PID schedules (every ``probe_every_n_epochs``) and record the
            U/R/S curves of joint training, deciding nothing on them; False (the default)
            measures nothing.

    Raises:
        TypeError: ``measure`` is not a bool.

    Example::

        >>> JointController().initial_stage
        'joint'
    """

    def __init__(self, measure: bool = False) -> None:
        self.needs_measurements = _check_measure(measure)

    @property
    def initial_stage(self) -> str:
        """Always ``"joint"``."""
        return STAGE_JOINT

    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        """Never called by the callback (there is no stage 1); stays joint."""
        return Decision(switch=True)
