"""Stage controllers: the decision rules of the two-stage schedule, as pure logic on plain values.

A controller is asked once per probe (and, without measurements, once per finished training
epoch) what to do next: which modality branches to pause and whether to end stage 1
("unimodal") and start stage 2 ("joint"). It never touches a model; ``PIDSchedulerCallback``
applies its decisions. Keeping the rules here lets them be tested on scripted measurement
sequences and lets one callback run the method, its ablation and the classic baselines:

- :class:`PIDController`: the paper's rule on each modality's unique information (the default).
- :class:`MIController`: the same rule on each modality's mutual information I(X_m;Y).
- :class:`FixedController`: a fixed number of unimodal epochs, then joint; measures nothing.
- :class:`JointController`: plain joint training from the first epoch; measures nothing.

A probe is the history record documented in ``docs/architecture.md``: a mapping with at least
``"unique"`` and ``"mutual_information_per_modality"`` (``{modality: bits}``) and ``"synergy"``
(bits).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

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
        needs_measurements: whether :meth:`decide` uses probes; when False the callback never
            measures PID (no validation pass is needed for the schedule).
        initial_stage: the stage of the first training epoch.
    """

    needs_measurements: ClassVar[bool]

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


def _check_non_negative_int(name: str, value: Any) -> int:
    check_int_at_least(name, value, 0, "a count of epochs or switches")
    return value


def _check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


class _RatioController(Controller):
    """The paper's stage-1 rules on a per-modality information signal (bits).

    Pause rule: modality m is paused for the next epoch when its signal exceeds ``ratio`` times
    the smallest signal among the other modalities (each clamped below at ``floor`` so that a
    zero does not divide by zero); it trains again as soon as the ratio falls back. With two
    modalities this is exactly "if U1/U2 > 3 pause modality 1, if U2/U1 > 3 pause modality 2".
    The weakest modality can never be paused, so some branch always trains.

    End of stage 1, whichever comes first:
    - synergy below ``synergy_drop`` x its peak so far, once ``min_unimodal_epochs`` have passed;
    - ``max_switches`` pause switches (a switch is a probe whose paused set is non-empty and
      differs from the previous one; 0 disables this rule);
    - ``max_unimodal_epochs`` training epochs.
    """

    needs_measurements: ClassVar[bool] = True
    signal_key: ClassVar[str]

    def __init__(
        self,
        ratio: float,
        floor: float,
        synergy_drop: float,
        min_unimodal_epochs: int,
        max_switches: int,
        max_unimodal_epochs: int,
        *,
        ratio_name: str,
        floor_name: str,
    ) -> None:
        self.ratio = _check_positive_float(ratio_name, ratio)
        if self.ratio < 1.0:
            raise ValueError(
                f"`{ratio_name}` must be >= 1 (a dominance factor), got {ratio!r}; "
                "use e.g. 3.0 as in the paper."
            )
        self.floor = _check_positive_float(floor_name, floor)
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
        self.paused: frozenset[str] = frozenset()
        self.peak_synergy: float | None = None
        self.switches = 0

    def _signal(self, probe: Mapping[str, Any]) -> dict[str, float]:
        try:
            signal = probe[self.signal_key]
        except KeyError:
            raise ValueError(
                f"{type(self).__name__} needs probe[{self.signal_key!r}] ({{modality: bits}}); "
                f"the probe has keys {sorted(probe)}."
            ) from None
        if len(signal) < 2:
            raise ValueError(
                f"probe[{self.signal_key!r}] must hold at least two modalities, got {dict(signal)}."
            )
        return {name: float(value) for name, value in signal.items()}

    def _dominant(self, signal: Mapping[str, float]) -> frozenset[str]:
        clamped = {name: max(value, self.floor) for name, value in signal.items()}
        dominant = set()
        for name, value in clamped.items():
            weakest_other = min(v for other, v in clamped.items() if other != name)
            if value > self.ratio * weakest_other:
                dominant.add(name)
        return frozenset(dominant)

    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        """Apply the pause and end-of-stage rules (see the class docstring).

        Args:
            epochs_completed: training epochs finished so far.
            probe: this epoch's history record, or None when the epoch was not probed (then only
                ``max_unimodal_epochs`` can end the stage and the paused set is kept).

        Returns:
            The decision for the next epoch.
        """
        _check_non_negative_int("epochs_completed", epochs_completed)
        out_of_epochs = epochs_completed >= self.max_unimodal_epochs
        if probe is None:
            return Decision(paused=self.paused, switch=out_of_epochs)

        paused = self._dominant(self._signal(probe))
        if paused and paused != self.paused:
            self.switches += 1
        self.paused = paused

        synergy = float(probe["synergy"])
        is_peak = not math.isnan(synergy) and (
            self.peak_synergy is None or synergy > self.peak_synergy
        )
        if is_peak:
            self.peak_synergy = synergy
        synergy_dropped = (
            epochs_completed >= self.min_unimodal_epochs
            and self.peak_synergy is not None
            and synergy < self.synergy_drop * self.peak_synergy
        )
        too_many_switches = self.max_switches > 0 and self.switches >= self.max_switches
        switch = out_of_epochs or synergy_dropped or too_many_switches
        return Decision(paused=paused, switch=switch, peak=is_peak)

    def state_dict(self) -> dict[str, Any]:
        """Return ``{"paused": [names], "peak_synergy": bits | None, "switches": int}``."""
        return {
            "paused": sorted(self.paused),
            "peak_synergy": self.peak_synergy,
            "switches": self.switches,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        self.paused = frozenset(state_dict.get("paused", ()))
        peak = state_dict.get("peak_synergy")
        self.peak_synergy = None if peak is None else float(peak)
        self.switches = int(state_dict.get("switches", 0))


class PIDController(_RatioController):
    """The paper's controller: pause a branch whose unique information dominates.

    Signal: ``probe["unique"]`` (U_m in bits; for more than two modalities the uniqueness of m
    against the others' averaged prediction).

    Pause rule: modality m is paused for the next epoch when U_m exceeds ``uniqueness_ratio``
    times the smallest uniqueness among the other modalities (each clamped below at
    ``uniqueness_floor`` bits); it trains again when the ratio falls back. For two modalities
    this is the paper's "if U1/U2 > 3 drop modality 1's loss".

    End of stage 1, whichever comes first: synergy below ``synergy_drop`` x its peak once
    ``min_unimodal_epochs`` have passed; ``max_switches`` pause switches (a probe whose paused set
    is non-empty and differs from the previous one); ``max_unimodal_epochs`` epochs.

    Args:
        uniqueness_ratio: dominance factor (>= 1) that pauses a modality.
        uniqueness_floor: bits below which a uniqueness counts as this value.
        synergy_drop: fraction (0, 1] of the peak synergy below which stage 1 ends.
        min_unimodal_epochs: epochs before the synergy rule may end stage 1.
        max_switches: pause switches that end stage 1; 0 disables this rule.
        max_unimodal_epochs: epochs after which stage 1 ends regardless.

    Raises:
        ValueError: an argument is out of range.

    Example::

        >>> controller = PIDController()
        >>> probe = {"unique": {"audio": 0.9, "video": 0.1}, "synergy": 0.2}
        >>> controller.decide(1, probe)
        Decision(paused=frozenset({'audio'}), switch=False, peak=True)
    """

    signal_key: ClassVar[str] = "unique"

    def __init__(
        self,
        uniqueness_ratio: float = 3.0,
        uniqueness_floor: float = 1e-3,
        synergy_drop: float = 0.8,
        min_unimodal_epochs: int = 5,
        max_switches: int = 2,
        max_unimodal_epochs: int = 200,
    ) -> None:
        super().__init__(
            uniqueness_ratio,
            uniqueness_floor,
            synergy_drop,
            min_unimodal_epochs,
            max_switches,
            max_unimodal_epochs,
            ratio_name="uniqueness_ratio",
            floor_name="uniqueness_floor",
        )


class MIController(_RatioController):
    """The paper's MI-based ablation: the PID controller's rules on I(X_m;Y) instead of U_m.

    Signal: ``probe["mutual_information_per_modality"]`` (bits). Only the pause signal differs
    from :class:`PIDController`; stage 1 still ends on the synergy drop, the switch count or
    the epoch budget.

    Args:
        mi_ratio: dominance factor (>= 1) that pauses a modality.
        mi_floor: bits below which a mutual information counts as this value.
        synergy_drop: fraction (0, 1] of the peak synergy below which stage 1 ends.
        min_unimodal_epochs: epochs before the synergy rule may end stage 1.
        max_switches: pause switches that end stage 1; 0 disables this rule.
        max_unimodal_epochs: epochs after which stage 1 ends regardless.

    Raises:
        ValueError: an argument is out of range.

    Example::

        >>> controller = MIController()
        >>> probe = {"mutual_information_per_modality": {"a": 0.1, "b": 0.5}, "synergy": 0.2}
        >>> controller.decide(1, probe).paused
        frozenset({'b'})
    """

    signal_key: ClassVar[str] = "mutual_information_per_modality"

    def __init__(
        self,
        mi_ratio: float = 3.0,
        mi_floor: float = 1e-3,
        synergy_drop: float = 0.8,
        min_unimodal_epochs: int = 5,
        max_switches: int = 2,
        max_unimodal_epochs: int = 200,
    ) -> None:
        super().__init__(
            mi_ratio,
            mi_floor,
            synergy_drop,
            min_unimodal_epochs,
            max_switches,
            max_unimodal_epochs,
            ratio_name="mi_ratio",
            floor_name="mi_floor",
        )


class FixedController(Controller):
    """Unimodal training for a fixed number of epochs, then joint training; measures nothing.

    Args:
        unimodal_epochs: stage-1 epochs; 0 starts joint training at once.

    Raises:
        ValueError: ``unimodal_epochs`` is not a non-negative int.

    Example::

        >>> FixedController(unimodal_epochs=2).decide(2, None).switch
        True
    """

    needs_measurements: ClassVar[bool] = False

    def __init__(self, unimodal_epochs: int) -> None:
        self.unimodal_epochs = _check_non_negative_int("unimodal_epochs", unimodal_epochs)

    @property
    def initial_stage(self) -> str:
        """``"joint"`` when ``unimodal_epochs == 0``, else ``"unimodal"``."""
        return STAGE_JOINT if self.unimodal_epochs == 0 else STAGE_UNIMODAL

    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        """Switch once ``unimodal_epochs`` epochs are done; never pause (``probe`` is ignored)."""
        _check_non_negative_int("epochs_completed", epochs_completed)
        return Decision(switch=epochs_completed >= self.unimodal_epochs)


class JointController(Controller):
    """Plain joint training from the first epoch (the usual baseline); measures nothing.

    Example::

        >>> JointController().initial_stage
        'joint'
    """

    needs_measurements: ClassVar[bool] = False

    @property
    def initial_stage(self) -> str:
        """Always ``"joint"``."""
        return STAGE_JOINT

    def decide(self, epochs_completed: int, probe: Mapping[str, Any] | None) -> Decision:
        """Never called by the callback (there is no stage 1); stays joint."""
        return Decision(switch=True)
