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
    StageOneBudget,
    stage_one_budget,
)


def probe(unique: dict[str, float], synergy: float, mi: dict[str, float] | None = None) -> dict:
    """A history record with the keys controllers read."""
    return {
        "unique": unique,
        "synergy": synergy,
        "mutual_information_per_modality": mi if mi is not None else dict(unique),
    }


def paper_rules(**kwargs) -> PIDController:
    """The paper's rules exactly (point estimates, a decision on every probe), any defaults."""
    return PIDController(**{"confidence": None, "persistence": 1, **kwargs})


def run(controller, probes):
    """Feed probes after epochs 1, 2, ...; return the decisions."""
    return [controller.decide(epoch, p) for epoch, p in enumerate(probes, start=1)]


def test_pause_the_dominant_modality_and_unpause_when_the_ratio_returns():
    controller = paper_rules(min_unimodal_epochs=100, max_unimodal_epochs=100, max_switches=0)
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
    controller = paper_rules(floor=0.01, max_switches=0)
    assert controller.decide(1, probe({"a": 0.0, "b": 0.0}, 0.0)).paused == frozenset()
    assert controller.decide(2, probe({"a": 0.02, "b": 0.0}, 0.0)).paused == frozenset()
    assert controller.decide(3, probe({"a": 0.04, "b": 0.0}, 0.0)).paused == {"a"}


def test_two_pause_switches_end_stage_one():
    controller = paper_rules(max_switches=2)
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
    controller = paper_rules(synergy_drop=0.8, min_unimodal_epochs=3, max_switches=0)
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
    controller = paper_rules(min_unimodal_epochs=1, max_unimodal_epochs=3, max_switches=0)
    controller.decide(1, probe({"a": 0.9, "b": 0.1}, 0.2))
    unprobed = controller.decide(2, None)
    assert unprobed == Decision(paused=frozenset({"a"}), switch=False, peak=False)
    assert controller.decide(3, None).switch


def test_nan_synergy_is_never_a_peak_nor_a_drop():
    controller = paper_rules(min_unimodal_epochs=0, max_switches=0)
    first = controller.decide(1, probe({"a": 0.1, "b": 0.1}, math.nan))
    assert not first.peak and not first.switch
    assert controller.decide(2, probe({"a": 0.1, "b": 0.1}, 0.2)).peak


def test_more_than_two_modalities_pause_against_the_weakest_and_never_all():
    controller = paper_rules(max_switches=0)
    decision = controller.decide(1, probe({"a": 1.0, "b": 0.9, "c": 0.1}, 0.1))
    assert decision.paused == {"a", "b"}
    decision = controller.decide(2, probe({"a": 1.0, "b": 0.2, "c": 0.25}, 0.1))
    assert decision.paused == {"a"}
    # However the values fall, the weakest modality always trains.
    decision = controller.decide(3, probe({"a": 5.0, "b": 5.0, "c": 0.0}, 0.1))
    assert "c" not in decision.paused


def test_mutual_information_signal_uses_mutual_information_not_uniqueness():
    controller = paper_rules(signal="mutual_information", max_switches=0)
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
    reference = paper_rules(min_unimodal_epochs=0, max_switches=3)
    expected = run(reference, script)

    first = paper_rules(min_unimodal_epochs=0, max_switches=3)
    run(first, script[:2])
    resumed = paper_rules(min_unimodal_epochs=0, max_switches=3)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.decide(epoch, p) for epoch, p in enumerate(script[2:], start=3)] == expected[2:]
    assert resumed.state_dict() == reference.state_dict()
    assert isinstance(resumed.state_dict()["paused"], list)


def test_fixed_and_joint_controllers_measure_only_when_asked():
    fixed = FixedController(unimodal_epochs=2)
    assert not fixed.needs_measurements and fixed.initial_stage == "unimodal"
    assert [fixed.decide(epoch, None).switch for epoch in (1, 2)] == [False, True]
    assert FixedController(unimodal_epochs=0).initial_stage == "joint"
    assert not JointController().needs_measurements
    assert JointController().initial_stage == "joint"
    assert PIDController.needs_measurements
    # measure=True records the curves; the decisions ignore the probes all the same.
    measured = FixedController(unimodal_epochs=2, measure=True)
    assert measured.needs_measurements and JointController(measure=True).needs_measurements
    some_probe = probe({"a": 1.0, "b": 0.0}, 0.5)
    assert [measured.decide(epoch, some_probe) for epoch in (1, 2)] == [
        fixed.decide(epoch, None) for epoch in (1, 2)
    ]
    for make in (lambda: JointController(measure="yes"), lambda: FixedController(1, measure=1)):
        with pytest.raises(TypeError, match="`measure` must be True or False"):
            make()


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
        ({"signal": "uniqueness"}, "signal"),
        ({"confidence": 0.0}, "confidence"),
        ({"confidence": 1.5}, "confidence"),
        ({"confidence": True}, "confidence"),
        ({"persistence": 0}, "persistence"),
        ({"persistence": 2.0}, "persistence"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PIDController(**kwargs)


def test_bad_probe_and_fixed_arguments():
    with pytest.raises(ValueError, match="mutual_information_per_modality"):
        controller = PIDController(signal="mutual_information")
        controller.decide(1, {"unique": {"a": 1.0, "b": 0.0}, "synergy": 0.0})
    with pytest.raises(ValueError, match="at least two"):
        PIDController().decide(1, probe({"a": 1.0}, 0.0))
    with pytest.raises(ValueError, match="unimodal_epochs"):
        FixedController(unimodal_epochs=-1)


def test_mi_controller_is_a_deprecated_alias_mapping_the_old_names():
    with pytest.warns(FutureWarning, match="signal='mutual_information'"):
        old = MIController(mi_ratio=2.0, mi_floor=0.01, max_switches=0)
    new = PIDController(signal="mutual_information", ratio=2.0, floor=0.01, max_switches=0)
    assert isinstance(old, PIDController)
    assert vars(old) == vars(new)
    script = [probe({"a": 0.1, "b": 0.1}, 0.1, mi={"a": 0.1, "b": 0.25}), probe(*NEUTRAL)]
    assert run(old, script) == run(new, script)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="not both"):
        MIController(mi_ratio=2.0, ratio=3.0)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="always uses"):
        MIController(signal="unique")


NEUTRAL = ({"a": 0.1, "b": 0.1}, 0.1)
# fou+zer's first unpaused epochs (issue 11): U_zer / U_fou goes 0.15, 0.38, 0.76, 0.92, 1.03
# while the slower branch catches up; only the first probe clears the ratio 3.
CATCHING_UP = [
    probe({"fou": 1.0, "zer": r}, 0.1 + 0.01 * i)
    for i, r in enumerate([0.15, 0.38, 0.76, 0.92, 1.03])
]


@pytest.mark.parametrize(("persistence", "first_pause"), [(1, 0), (2, None), (3, None)])
def test_persistence_ignores_a_branch_that_merely_learns_first(persistence, first_pause):
    controller = PIDController(persistence=persistence)
    paused = [d.paused for d in run(controller, CATCHING_UP)]
    pauses = [i for i, p in enumerate(paused) if p]
    assert (pauses[0] if pauses else None) == first_pause
    # With persistence 1 the pause flips off at once; nothing ever counts as a switch later.
    assert controller.switches == (1 if persistence == 1 else 0)


def test_persistence_delays_pausing_but_not_training_again():
    controller = PIDController(
        persistence=3, max_switches=0, min_unimodal_epochs=100, max_unimodal_epochs=100
    )
    strong_a = probe({"a": 0.9, "b": 0.1}, 0.1)
    script = (
        [strong_a] * 3 + [probe(*NEUTRAL)] + [strong_a] * 2 + [probe(*NEUTRAL)] + [strong_a] * 4
    )
    decisions = run(controller, script)
    assert [bool(d.paused) for d in decisions] == [
        False, False, True,  # paused from the third consecutive probe on which a dominates
        False,  # trains again as soon as a no longer dominates
        False, False,  # the streak starts again from zero
        False,
        False, False, True, True,
    ]  # fmt: skip


def test_persistence_counts_each_modality_separately():
    controller = PIDController(persistence=2, max_switches=0)
    # a and b dominate c by turns: neither is a candidate twice in a row, so nothing pauses.
    both = probe({"a": 0.9, "b": 0.8, "c": 0.1}, 0.1)
    only_a = probe({"a": 0.9, "b": 0.2, "c": 0.1}, 0.1)
    assert [d.paused for d in run(controller, [both, only_a, both])] == [
        frozenset(),
        {"a"},
        {"a"},
    ]
    assert controller.state_dict()["candidate_streaks"] == {"a": 3, "b": 1}


def test_unprobed_epochs_neither_count_nor_break_a_streak():
    controller = PIDController(persistence=2, max_switches=0)
    strong_a = probe({"a": 0.9, "b": 0.1}, 0.1)
    assert controller.decide(1, strong_a).paused == frozenset()
    assert controller.decide(2, None).paused == frozenset()
    assert controller.decide(3, strong_a).paused == {"a"}


def test_persistence_needs_consecutive_synergy_drops():
    controller = PIDController(persistence=2, min_unimodal_epochs=0, max_switches=0)
    synergies = [0.5, 0.3, 0.45, 0.3, 0.3]  # drops below 0.4 at probes 2, 4, 5
    decisions = run(controller, [probe(NEUTRAL[0], s) for s in synergies])
    assert [d.switch for d in decisions] == [False, False, False, False, True]


def with_replicates(record: dict, unique: dict[str, list[float]], synergy: list[float]) -> dict:
    """``record`` as the callback passes it with bootstrap: the replicates of each atom."""
    return dict(
        record,
        replicates={
            "unique": unique,
            "synergy": synergy,
            "mutual_information_per_modality": unique,
        },
    )


@pytest.mark.parametrize(
    ("clearing", "confidence", "paused"),
    [(9, 0.9, True), (8, 0.9, False), (5, 0.5, True), (10, 1.0, True), (9, 1.0, False)],
)
def test_confidence_pauses_only_on_the_share_of_replicates_that_clears(
    clearing, confidence, paused
):
    # 10 replicates: `clearing` of them have U_a / U_b = 4 > 3, the rest 2; the point estimate
    # always clears, so only the replicates decide.
    ratios = [4.0] * clearing + [2.0] * (10 - clearing)
    record = with_replicates(
        probe({"a": 0.4, "b": 0.1}, 0.1),
        {"a": [0.1 * r for r in ratios], "b": [0.1] * 10},
        [0.1] * 10,
    )
    controller = PIDController(confidence=confidence, persistence=1, max_switches=0)
    assert controller.needs_replicates
    assert bool(controller.decide(1, record).paused) == paused


def test_confidence_counts_a_synergy_drop_only_on_the_share_of_replicates():
    controller = PIDController(confidence=0.8, persistence=1, min_unimodal_epochs=0, max_switches=0)
    even = {"a": [0.1] * 5, "b": [0.1] * 5}
    controller.decide(1, with_replicates(probe(NEUTRAL[0], 0.5), even, [0.5] * 5))
    # Point estimate 0.3 < 0.8 x 0.5, but only 3 of 5 replicates are below 0.4: no drop.
    weak = with_replicates(probe(NEUTRAL[0], 0.3), even, [0.3, 0.3, 0.3, 0.45, 0.5])
    assert not controller.decide(2, weak).switch
    strong = with_replicates(probe(NEUTRAL[0], 0.3), even, [0.3, 0.3, 0.3, 0.35, 0.5])
    assert controller.decide(3, strong).switch


def test_confidence_never_pauses_every_modality():
    # Each replicate spares its own weakest modality, but which one flips between replicates:
    # with c = 0.5 both cleared their share and every branch was paused (then the fit crashed).
    record = with_replicates(
        probe({"a": 0.2, "b": 0.1}, 0.1), {"a": [0.4, 0.1], "b": [0.1, 0.4]}, [0.1, 0.1]
    )
    controller = PIDController(confidence=0.5, persistence=1, max_switches=0)
    assert controller.decide(1, record).paused == {"a"}  # b is the point estimate's weakest
    three = with_replicates(
        probe({"a": 0.3, "b": 0.2, "c": 0.1}, 0.1),
        {"a": [1.0, 0.1, 0.1], "b": [0.1, 1.0, 0.1], "c": [0.1, 0.1, 1.0]},
        [0.1] * 3,
    )
    controller = PIDController(confidence=0.3, persistence=1, max_switches=0)
    assert controller.decide(1, three).paused == {"a", "b"}


@pytest.mark.parametrize("order", ["abc", "acb", "bca"])
def test_a_nan_replicate_counts_against_pausing_whatever_the_order(order):
    values, point = {"a": 1.0, "b": math.nan, "c": 0.1}, {"a": 1.0, "b": 0.5, "c": 0.1}
    record = with_replicates(
        probe({name: point[name] for name in order}, 0.1),
        {name: [values[name]] for name in order},
        [0.1],
    )
    controller = PIDController(confidence=1.0, persistence=1, max_switches=0)
    assert controller.decide(1, record).paused == frozenset()


def test_shares_are_counted_exactly():
    # 0.55 * 100 is 55.00000000000001: 55 clearing replicates of 100 missed c = 0.55.
    ratios = [4.0] * 55 + [2.0] * 45
    record = with_replicates(
        probe({"a": 0.4, "b": 0.1}, 0.1),
        {"a": [0.1 * r for r in ratios], "b": [0.1] * 100},
        [0.1] * 100,
    )
    controller = PIDController(confidence=0.55, persistence=1, max_switches=0)
    assert controller.decide(1, record).paused == {"a"}
    dropping = PIDController(confidence=0.55, persistence=1, min_unimodal_epochs=0, max_switches=0)
    even = {"a": [0.1] * 100, "b": [0.1] * 100}
    dropping.decide(1, with_replicates(probe(NEUTRAL[0], 0.5), even, [0.5] * 100))
    synergies = [0.1] * 55 + [0.5] * 45
    assert dropping.decide(2, with_replicates(probe(NEUTRAL[0], 0.1), even, synergies)).switch


def test_no_synergy_is_no_peak_to_drop_from():
    # pid() gives about -3e-16 bits of synergy where there is none; 0.8 x that is above it.
    controller = paper_rules(min_unimodal_epochs=0, max_switches=0)
    controller.decide(1, probe(NEUTRAL[0], -3e-16))
    assert not controller.decide(2, probe(NEUTRAL[0], -3e-16)).switch
    assert not controller.decide(3, probe(NEUTRAL[0], 0.0)).switch


def test_confidence_without_replicates_says_how_to_get_them():
    assert not PIDController().needs_replicates
    assert not FixedController(unimodal_epochs=1).needs_replicates
    with pytest.raises(ValueError, match="num_bootstrap"):
        PIDController(confidence=0.9).decide(1, dict(probe(*NEUTRAL), replicates=None))


def test_persistence_state_round_trip_resumes_mid_streak():
    script = [probe({"a": 0.9, "b": 0.1}, 0.5)] * 2 + [probe({"a": 0.9, "b": 0.1}, 0.3)] * 3
    reference = PIDController(persistence=3, min_unimodal_epochs=0, max_switches=0)
    expected = run(reference, script)
    first = PIDController(persistence=3, min_unimodal_epochs=0, max_switches=0)
    run(first, script[:3])
    resumed = PIDController(persistence=3, min_unimodal_epochs=0, max_switches=0)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.decide(e, p) for e, p in enumerate(script[3:], start=4)] == expected[3:]
    assert expected[-1].switch and expected[2].paused == {"a"}
    # A state saved before the streaks existed still loads.
    old = PIDController()
    old.load_state_dict({"paused": ["a"], "peak_synergy": 0.2, "switches": 1})
    assert old.paused == {"a"} and old.candidate_streaks == {"a": 1} and old.drop_streak == 0


def compose_schedule(schedule: str):
    """The ``schedule`` node of ``pidsched-train``'s config with ``schedule=<schedule>``."""
    hydra = pytest.importorskip("hydra")
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with hydra.initialize_config_module(config_module="pidsched.conf", version_base="1.3"):
            return hydra.compose(config_name="config", overrides=[f"schedule={schedule}"]).schedule
    finally:
        GlobalHydra.instance().clear()


def test_pid_paper_keeps_the_papers_rules_exactly():
    from hydra.utils import instantiate

    controller = instantiate(compose_schedule("pid_paper").controller)
    assert type(controller) is PIDController and controller.signal == "unique"
    assert (controller.ratio, controller.floor, controller.synergy_drop) == (3.0, 0.001, 0.8)
    assert (controller.confidence, controller.persistence) == (None, 1)
    assert (controller.min_unimodal_epochs, controller.max_switches) == (0, 2)
    assert not controller.needs_replicates


def test_pid_needs_persistence_and_mi_differs_from_it_only_in_the_signal():
    from hydra.utils import instantiate

    pid, mi = compose_schedule("pid"), compose_schedule("mi")
    # docs/results.md: persistence without the bootstrap's cost.
    assert (pid.controller.confidence, pid.controller.persistence) == (None, 3)
    assert pid.num_bootstrap == 0
    assert mi.controller.signal == "mutual_information"
    assert {**mi.controller, "signal": "unique"} == dict(pid.controller)
    assert {k: v for k, v in mi.items() if k != "controller"} == {
        k: v for k, v in pid.items() if k != "controller"
    }
    controller = instantiate(pid.controller)
    assert type(controller) is PIDController and not controller.needs_replicates


def test_pid_evidence_adds_the_bootstrap_share_to_pid():
    from hydra.utils import instantiate

    pid, evidence = compose_schedule("pid"), compose_schedule("pid_evidence")
    assert (evidence.controller.confidence, evidence.controller.persistence) == (0.9, 3)
    assert evidence.num_bootstrap == 50
    assert {**evidence.controller, "confidence": None} == dict(pid.controller)
    assert instantiate(evidence.controller).needs_replicates


def test_stage_one_budget_of_each_controller():
    """The one budget both the callback's setup warning and pidsched-train's check read."""
    assert stage_one_budget(PIDController(max_unimodal_epochs=12)) == StageOneBudget(
        "max_unimodal_epochs", 12, False
    )
    with pytest.warns(FutureWarning, match="deprecated"):
        mi = MIController(max_unimodal_epochs=7)
    assert stage_one_budget(mi) == ("max_unimodal_epochs", 7, False)
    assert stage_one_budget(FixedController(4)) == ("unimodal_epochs", 4, True)
    assert stage_one_budget(FixedController(0)) is None  # joint from the first epoch
    assert stage_one_budget(JointController()) is None
