"""What a probe records, logs and hands the controller: certification and bootstrap intervals."""

from __future__ import annotations

import functools

import pytest
from _lightning_helpers import (
    NUM_CLASSES,
    ScriptedController,
    UncertifiedFastPID,
    loaders,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)

from pidsched import PIDController, PIDSchedulerCallback, PIDScheduleWarning


def _fit(controller, max_epochs, **callback_kwargs):
    callback = PIDSchedulerCallback(NUM_CLASSES, controller, **callback_kwargs)
    trainer = make_trainer(max_epochs, [callback])
    trainer.fit(make_model(), *loaders())
    return trainer, callback


def test_an_uncertified_probe_is_recorded_and_logged_but_not_decided_on():
    controller = ScriptedController({})
    factory = functools.partial(UncertifiedFastPID, uncertified={1})
    with pytest.warns(PIDScheduleWarning, match="epoch 1 is not certified.*no decision") as caught:
        trainer, callback = _fit(controller, 3, metric_factory=factory)
    certify = [w for w in caught if "not certified" in str(w.message)]
    assert len(certify) == 1  # once per uncertified probe
    assert [record["certified"] for record in callback.history] == [True, False, True]
    assert callback.history[1]["gap"] == 0.5
    # Epoch 2 (counted from 1) is asked as an unprobed epoch: the probe never reaches it.
    assert controller.calls == [(1, True), (2, False), (3, True)]
    assert [probe["epoch"] for probe in controller.probes] == [0, 2]
    assert float(trainer.callback_metrics["pid/certified"]) == 1.0


def test_bootstrap_replicates_go_to_the_controller_and_intervals_to_the_history():
    controller = ScriptedController({}, needs_replicates=True)
    trainer, callback = _fit(controller, 2, num_bootstrap=16, interval_level=0.8)
    assert len(controller.probes) == 2
    for probe, record in zip(controller.probes, callback.history, strict=True):
        replicates = probe["replicates"]
        assert "replicates" not in record  # not stored
        assert {key: probe[key] for key in record} == record
        assert set(replicates["unique"]) == {"a", "b"}
        assert all(len(values) == 16 for values in replicates["unique"].values())
        assert len(replicates["synergy"]) == len(replicates["mutual_information"]) == 16
        assert set(replicates["mutual_information_per_modality"]) == {"a", "b"}
        interval = record["interval"]
        assert interval["level"] == 0.8
        # Independent check: the basic interval from the 10 % and 90 % order statistics.
        for atom in ("redundancy", "synergy", "mutual_information"):
            expected = _basic_interval(record[atom], replicates[atom], 0.8)
            assert interval[atom] == pytest.approx(expected, abs=1e-12)
        for name in ("a", "b"):
            expected = _basic_interval(record["unique"][name], replicates["unique"][name], 0.8)
            assert interval["unique"][name] == pytest.approx(expected, abs=1e-12)
    metrics = trainer.callback_metrics
    last = callback.history[-1]["interval"]
    assert float(metrics["pid/synergy_low"]) == pytest.approx(last["synergy"][0])
    assert float(metrics["pid/unique_b_high"]) == pytest.approx(last["unique"]["b"][1])
    assert float(metrics["pid/mutual_information_high"]) == pytest.approx(
        last["mutual_information"][1]
    )


def _basic_interval(estimate, values, level):
    """``[max(0, 2 theta - q_hi), max(0, 2 theta - q_lo)]``, quantiles interpolated linearly."""
    ordered = sorted(values)

    def quantile(q):
        position = q * (len(ordered) - 1)
        below = int(position)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (position - below) * (ordered[above] - ordered[below])

    low_q, high_q = quantile((1 - level) / 2), quantile((1 + level) / 2)
    return [max(0.0, 2 * estimate - high_q), max(0.0, 2 * estimate - low_q)]


def test_a_controller_that_needs_replicates_needs_bootstrap():
    with pytest.raises(ValueError, match="num_bootstrap=B"):
        PIDSchedulerCallback(NUM_CLASSES, ScriptedController({}, needs_replicates=True))
    # With a metric_factory the metric decides, checked when it is built at setup.
    callback = PIDSchedulerCallback(
        NUM_CLASSES,
        ScriptedController({}, needs_replicates=True),
        metric_factory=UncertifiedFastPID,
    )
    with pytest.raises(ValueError, match="without them; give it num_bootstrap"):
        make_trainer(1, [callback]).fit(make_model(), *loaders())


def test_the_pid_controller_does_not_pause_on_an_uncertified_probe():
    # Certified, the first probe pauses the dominant "a" for epoch 1 (test_callback.py's
    # competition task); uncertified, it is ignored and only the second probe pauses "a".
    controller = PIDController(min_unimodal_epochs=10, max_unimodal_epochs=10, max_switches=0)
    factory = functools.partial(UncertifiedFastPID, uncertified={0})
    callback = PIDSchedulerCallback(NUM_CLASSES, controller, metric_factory=factory)
    with pytest.warns(PIDScheduleWarning, match="epoch 0 is not certified"):
        make_trainer(2, [callback]).fit(make_model(), *loaders(signal={"a": 3.0, "b": 0.5}))
    assert [record["paused"] for record in callback.history] == [[], []]
    assert callback.paused == frozenset({"a"})
    assert controller.peak_synergy == callback.history[1]["synergy"]
