"""Controller rules on scripted probe sequences (pure logic, no Lightning)."""

from __future__ import annotations

import math

import pytest

from pidsched.controllers import (
    Decision,
    FixedController,
    JointController,
    MIController,
    PIDController,
)


def probe(unique: dict[str, float], synergy: float, mi: dict[str, float] | None = None) -> dict:
    """A history record with the keys controllers read."""
    return {
        "unique": unique,
        "synergy": synergy,
        "mutual_information_per_modality": mi if mi is not None else dict(unique),
    }


def run(controller, probes):
    """Feed probes after epochs 1, 2, ...; return the decisions."""
    return [controller.decide(epoch, p) for epoch, p in enumerate(probes, start=1)]


def test_pause_the_dominant_modality_and_unpause_when_the_ratio_returns():
    controller = PIDController(min_unimodal_epochs=100, max_unimodal_epochs=100, max_switches=0)
    decisions = run(
        controller,
        [
            probe({"a": 0.2, "b": 0.1}, 0.1),  # ratio 2: nobody paused
            probe({"a": 0.4, "b": 0.1}, 0.1),  # ratio 4: a paused
            probe({"a": 0.31, "b": 0.1}, 0.1),  # 3.1 > 3: still paused
            probe({"a": 0.3, "b": 0.1}, 0.1),  # exactly 3 is not "exceeds": unpaused
            probe({"a": 0.1, "b": 0.5}, 0.1),  # b dominates
        ],
    )
    assert [d.paused for d in decisions] == [
        frozenset(),
        {"a"},
        {"a"},
        frozenset(),
        {"b"},
    ]
    assert not any(d.switch for d in decisions)


def test_floor_avoids_division_by_zero_uniqueness():
    controller = PIDController(floor=0.01, max_switches=0)
    assert controller.decide(1, probe({"a": 0.0, "b": 0.0}, 0.0)).paused == frozenset()
    assert controller.decide(2, probe({"a": 0.02, "b": 0.0}, 0.0)).paused == frozenset()
    assert controller.decide(3, probe({"a": 0.04, "b": 0.0}, 0.0)).paused == {"a"}


def test_two_pause_switches_end_stage_one():
    controller = PIDController(max_switches=2)
    decisions = run(
        controller,
        [
            probe({"a": 0.9, "b": 0.1}, 0.1),  # switch 1 (a)
            probe({"a": 0.9, "b": 0.1}, 0.1),  # same set: not a switch
            probe({"a": 0.2, "b": 0.2}, 0.1),  # unpausing is not a switch
            probe({"a": 0.1, "b": 0.9}, 0.1),  # switch 2 (b): stage 1 ends
        ],
    )
    assert [d.switch for d in decisions] == [False, False, False, True]
    assert controller.switches == 2


def test_synergy_drop_ends_stage_one_only_after_min_epochs_and_marks_peaks():
    controller = PIDController(synergy_drop=0.8, min_unimodal_epochs=3, max_switches=0)
    even = {"a": 0.1, "b": 0.1}
    decisions = run(
        controller,
        [
            probe(even, 0.5),
            probe(even, 0.3),
            probe(even, 0.45),
            probe(even, 0.6),
            probe(even, 0.47),
        ],
    )
    # epoch 2: 0.3 < 0.8 * 0.5 but before min_unimodal_epochs; epoch 3: 0.45 >= 0.4;
    # epoch 4: new peak 0.6; epoch 5: 0.47 < 0.48 -> switch.
    assert [d.switch for d in decisions] == [False, False, False, False, True]
    assert [d.peak for d in decisions] == [True, False, False, True, False]
    assert controller.peak_synergy == 0.6


def test_epoch_budget_ends_stage_one_with_or_without_a_probe():
    controller = PIDController(min_unimodal_epochs=1, max_unimodal_epochs=3, max_switches=0)
    controller.decide(1, probe({"a": 0.9, "b": 0.1}, 0.2))
    unprobed = controller.decide(2, None)
    assert unprobed == Decision(paused=frozenset({"a"}), switch=False, peak=False)
    assert controller.decide(3, None).switch


def test_nan_synergy_is_never_a_peak_nor_a_drop():
    controller = PIDController(min_unimodal_epochs=0, max_switches=0)
    first = controller.decide(1, probe({"a": 0.1, "b": 0.1}, math.nan))
    assert not first.peak and not first.switch
    assert controller.decide(2, probe({"a": 0.1, "b": 0.1}, 0.2)).peak


def test_more_than_two_modalities_pause_against_the_weakest_and_never_all():
    controller = PIDController(max_switches=0)
    decision = controller.decide(1, probe({"a": 1.0, "b": 0.9, "c": 0.1}, 0.1))
    assert decision.paused == {"a", "b"}
    decision = controller.decide(2, probe({"a": 1.0, "b": 0.2, "c": 0.25}, 0.1))
    assert decision.paused == {"a"}
    # However the values fall, the weakest modality always trains.
    decision = controller.decide(3, probe({"a": 5.0, "b": 5.0, "c": 0.0}, 0.1))
    assert "c" not in decision.paused


def test_mi_controller_uses_mutual_information_not_uniqueness():
    controller = MIController(max_switches=0)
    decision = controller.decide(1, probe({"a": 0.9, "b": 0.1}, 0.1, mi={"a": 0.5, "b": 0.4}))
    assert decision.paused == frozenset()
    decision = controller.decide(2, probe({"a": 0.1, "b": 0.1}, 0.1, mi={"a": 0.1, "b": 0.5}))
    assert decision.paused == {"b"}


def test_state_round_trip_continues_identically():
    script = [
        probe({"a": 0.9, "b": 0.1}, 0.4),
        probe({"a": 0.2, "b": 0.2}, 0.5),
        probe({"a": 0.1, "b": 0.9}, 0.3),
        probe({"a": 0.1, "b": 0.9}, 0.35),
    ]
    reference = PIDController(min_unimodal_epochs=0, max_switches=3)
    expected = run(reference, script)

    first = PIDController(min_unimodal_epochs=0, max_switches=3)
    run(first, script[:2])
    resumed = PIDController(min_unimodal_epochs=0, max_switches=3)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.decide(epoch, p) for epoch, p in enumerate(script[2:], start=3)] == expected[2:]
    assert resumed.state_dict() == reference.state_dict()
    assert isinstance(resumed.state_dict()["paused"], list)


def test_fixed_and_joint_controllers_measure_nothing():
    fixed = FixedController(unimodal_epochs=2)
    assert not fixed.needs_measurements and fixed.initial_stage == "unimodal"
    assert [fixed.decide(epoch, None).switch for epoch in (1, 2)] == [False, True]
    assert FixedController(unimodal_epochs=0).initial_stage == "joint"
    assert not JointController.needs_measurements
    assert JointController().initial_stage == "joint"
    assert PIDController.needs_measurements and MIController.needs_measurements


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 0.5}, "ratio"),
        ({"floor": 0.0}, "floor"),
        ({"synergy_drop": 1.5}, "synergy_drop"),
        ({"max_switches": -1}, "max_switches"),
        ({"max_unimodal_epochs": 0}, "JointController"),
        ({"min_unimodal_epochs": 9, "max_unimodal_epochs": 3}, "must not exceed"),
        ({"min_unimodal_epochs": 1.5}, "min_unimodal_epochs"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PIDController(**kwargs)


def test_bad_probe_and_fixed_arguments():
    with pytest.raises(ValueError, match="mutual_information_per_modality"):
        MIController().decide(1, {"unique": {"a": 1.0, "b": 0.0}, "synergy": 0.0})
    with pytest.raises(ValueError, match="at least two"):
        PIDController().decide(1, probe({"a": 1.0}, 0.0))
    with pytest.raises(ValueError, match="unimodal_epochs"):
        FixedController(unimodal_epochs=-1)
