"""MultimodalPID: the M-modality probe, against bivariate FastPIDs fed by hand."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from _lightning_helpers import UncertifiedFastPID

from pidsched.functional.multimodal import MultimodalPIDResult, one_vs_rest_inputs
from pidsched.metrics import ClusteredFastPID, FastPID, MultimodalPID

NUM_CLASSES = 3
TWO_TOL = 2e-7


def _logits(names, num_samples=200, seed=0):
    """Heads of decreasing strength about a shared label: ``({m: (N, K)}, target (N,))``."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(NUM_CLASSES, (num_samples,), generator=generator)
    onehot = torch.nn.functional.one_hot(target, NUM_CLASSES).float()
    values = {
        name: (2.0 - 0.6 * i) * onehot + torch.randn(num_samples, NUM_CLASSES, generator=generator)
        for i, name in enumerate(names)
    }
    return values, target


def test_two_modalities_are_one_fastpid():
    values, target = _logits(("a", "b"))
    metric = MultimodalPID(("a", "b"), NUM_CLASSES)
    metric.update(values, target)
    result = metric.compute()
    reference = FastPID(NUM_CLASSES)
    reference.update(values["a"], values["b"], target)
    expected = reference.compute()
    assert result.unique == {"a": expected.unique_1, "b": expected.unique_2}
    assert result.mutual_information_per_modality == {
        "a": expected.mutual_information_1,
        "b": expected.mutual_information_2,
    }
    for atom in ("redundancy", "synergy", "mutual_information", "gap"):
        assert torch.equal(getattr(result, atom), getattr(expected, atom))
    assert result.replicates is None and metric.tol == 1e-7 and metric.num_bootstrap == 0


def test_three_modalities_are_one_vs_rest_means():
    names = ("a", "b", "c")
    values, target = _logits(names)
    metric = MultimodalPID(names, NUM_CLASSES)
    for half in (slice(0, 100), slice(100, 200)):  # two updates accumulate like one
        metric.update({m: v[half] for m, v in values.items()}, target[half])
    result = metric.compute()

    # Both sides certified to the default tol of 1e-7 bits.
    expected = {}
    for name in names:
        # Independent rest: log of the others' mean softmax.
        rest = torch.stack([values[o].softmax(-1) for o in names if o != name]).mean(0).log()
        reference = FastPID(NUM_CLASSES)
        reference.update(values[name], rest, target)
        expected[name] = reference.compute()
    for name in names:
        assert result.unique[name] == pytest.approx(float(expected[name].unique_1), abs=TWO_TOL)
        assert result.mutual_information_per_modality[name] == pytest.approx(
            float(expected[name].mutual_information_1), abs=TWO_TOL
        )
    for atom in ("redundancy", "synergy", "mutual_information"):
        mean = sum(float(getattr(r, atom)) for r in expected.values()) / 3
        assert float(getattr(result, atom)) == pytest.approx(mean, abs=TWO_TOL)
    assert float(result.gap) == pytest.approx(max(float(r.gap) for r in expected.values()))
    assert result.unique["a"] > result.unique["c"]


def test_features_rest_is_the_others_side_by_side():
    features = {"a": torch.ones(5, 2), "b": 2 * torch.ones(5, 3), "c": 3 * torch.ones(5, 4)}
    pairs = one_vs_rest_inputs(features, ("a", "b", "c"), "features")
    assert [rest.shape[1] for _, rest in pairs] == [7, 6, 5]
    assert torch.equal(pairs[1][1], torch.cat([features["a"], features["c"]], dim=1))


def test_reset_keeps_the_warm_start():
    values, target = _logits(("a", "b", "c"))
    metric = MultimodalPID(("a", "b", "c"), NUM_CLASSES)
    assert metric.warm_start_state() == [None, None, None]
    metric.update(values, target)
    metric.compute()
    metric.reset()
    assert all(state is not None for state in metric.warm_start_state())
    # Restored into a fresh metric, the next solve starts from it.
    fresh = MultimodalPID(("a", "b", "c"), NUM_CLASSES)
    fresh.load_warm_start_state(metric.warm_start_state())
    fresh.load_warm_start_state([None])  # another number of pairs: ignored
    assert all(state is not None for state in fresh.warm_start_state())


def test_replicates_combine_replicate_by_replicate():
    names = ("a", "b", "c")
    values, target = _logits(names)
    factory = functools.partial(FastPID, num_bootstrap=32, seed=3)
    metric = MultimodalPID(names, NUM_CLASSES, factory)
    metric.update(values, target)
    result = metric.compute()
    assert metric.num_bootstrap == 32 and result.replicates.synergy.shape == (32,)
    # Replicate b is the mean of replicate b of each hand-fed pair (same seed: same resample).
    pair_synergy = []
    for first, rest in one_vs_rest_inputs(values, names, "logits"):
        pair = factory(num_classes=NUM_CLASSES)
        pair.update(first, rest, target)
        pair_synergy.append(pair.compute().replicates.synergy)
    torch.testing.assert_close(
        result.replicates.synergy, torch.stack(pair_synergy).mean(0), rtol=0, atol=TWO_TOL
    )
    assert metric.bootstrap_state() == [{"seed": 3, "draws": 1}] * 3
    low, high = result.interval(0.9)
    assert float(low.unique["b"]) <= float(high.unique["b"])


def test_two_modalities_give_the_bivariate_interval():
    values, target = _logits(("a", "b"))
    factory = functools.partial(FastPID, num_bootstrap=32)
    metric = MultimodalPID(("a", "b"), NUM_CLASSES, factory)
    metric.update(values, target)
    low, high = metric.compute().interval(0.8)
    reference = factory(num_classes=NUM_CLASSES)
    reference.update(values["a"], values["b"], target)
    expected_low, expected_high = reference.compute().interval(0.8)
    for end, expected in ((low, expected_low), (high, expected_high)):
        assert torch.equal(end.unique["a"], expected.unique_1)
        assert torch.equal(end.unique["b"], expected.unique_2)
        assert torch.equal(end.mutual_information_per_modality["b"], expected.mutual_information_2)
        for atom in ("redundancy", "synergy", "mutual_information"):
            assert torch.equal(getattr(end, atom), getattr(expected, atom))


def test_interval_needs_replicates_and_a_level_in_the_unit_interval():
    metric = MultimodalPID(("a", "b"), NUM_CLASSES)
    metric.update(*_logits(("a", "b")))
    result = metric.compute()
    with pytest.raises(ValueError, match="needs bootstrap replicates"):
        result.interval(0.9)
    # Replicates 0..100: q_lo = 5, q_hi = 95; the basic interval widened by 1.5 is
    # [max(0, theta - 1.5 (95 - theta)), theta - 1.5 (5 - theta)].
    replicates = dataclasses.replace(result, synergy=torch.arange(101.0, dtype=torch.float64))
    for theta, expected in ((60.0, (7.5, 142.5)), (10.0, (0.0, 17.5))):
        estimate = dataclasses.replace(
            result, synergy=torch.tensor(theta, dtype=torch.float64), replicates=replicates
        )
        low, high = estimate.interval(0.9)
        assert (float(low.synergy), float(high.synergy)) == pytest.approx(expected)
    for level in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="level"):
            estimate.interval(level)


def test_certified_needs_finite_atoms_and_a_gap_within_tol():
    zero, nan = torch.tensor(0.0), torch.tensor(float("nan"))
    result = MultimodalPIDResult(
        unique={"a": zero, "b": zero},
        redundancy=zero,
        synergy=zero,
        mutual_information=zero,
        mutual_information_per_modality={"a": zero, "b": zero},
        gap=torch.tensor(1e-6),
    )
    assert result.is_certified(1e-5)
    assert not result.is_certified(1e-7)
    assert not dataclasses.replace(result, gap=nan).is_certified(1e-5)
    assert not dataclasses.replace(result, synergy=nan).is_certified(1e-5)
    assert not dataclasses.replace(result, unique={"a": nan, "b": zero}).is_certified(1e-5)
    # The metric's tol is its pair metrics'.
    assert MultimodalPID(("a", "b"), NUM_CLASSES, UncertifiedFastPID).tol == 1e-5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"modality_names": ("a",)}, ValueError, "modality_names"),
        ({"modality_names": ("a", "a")}, ValueError, "modality_names"),
        # A string would be read as one modality per character.
        ({"modality_names": "ab"}, ValueError, "modality_names.*the string 'ab'"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"inputs": "probs"}, ValueError, "inputs"),
        ({"metric_factory": lambda num_classes: object()}, TypeError, "torchmetrics Metric"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"modality_names": ("a", "b"), "num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(error, match=match):
        MultimodalPID(**arguments)


def test_update_needs_every_modality():
    metric = MultimodalPID(("a", "b"), NUM_CLASSES)
    values, target = _logits(("a", "c"))
    with pytest.raises(ValueError, match=r"modalities \['a', 'b'\].*\['a', 'c'\]"):
        metric.update(values, target)


def test_forward_returns_the_batch_and_accumulates():
    names = ("a", "b", "c")
    values, target = _logits(names)
    metric = MultimodalPID(names, NUM_CLASSES)
    batch_results = []
    for half in (slice(0, 100), slice(100, 200)):
        batch_results.append(metric({m: v[half] for m, v in values.items()}, target[half]))
    for half, batch_result in zip((slice(0, 100), slice(100, 200)), batch_results, strict=True):
        alone = MultimodalPID(names, NUM_CLASSES)
        alone.update({m: v[half] for m, v in values.items()}, target[half])
        expected_batch = alone.compute()
        assert _bits(batch_result.unique) == pytest.approx(
            _bits(expected_batch.unique), abs=TWO_TOL
        )
        assert batch_result.synergy.item() == pytest.approx(
            expected_batch.synergy.item(), abs=TWO_TOL
        )
    whole = MultimodalPID(names, NUM_CLASSES)
    whole.update(values, target)
    expected = whole.compute()
    accumulated = metric.compute()
    assert _bits(accumulated.unique) == pytest.approx(_bits(expected.unique), abs=TWO_TOL)
    assert accumulated.synergy.item() == pytest.approx(expected.synergy.item(), abs=TWO_TOL)
    assert batch_results[0].synergy.item() != pytest.approx(expected.synergy.item(), abs=1e-4)


def _bits(per_modality):
    return {name: value.item() for name, value in per_modality.items()}


@pytest.mark.parametrize(
    ("inputs", "shapes", "match"),
    [
        (
            "logits",
            {"b": (50, 7)},
            r"`values\['b'\]` to be logits shaped \(N, 4\), but got \(50, 7\)",
        ),
        ("logits", {"b": (10, 4)}, r"`values\['b'\]` has 10 rows and `values\['a'\]` 50"),
        ("features", {"b": (50,)}, r"`values\['b'\]` to be features shaped \(N, D\)"),
        ("features", {"c": (10, 3)}, r"`values\['c'\]` has 10 rows and `values\['a'\]` 50"),
    ],
)
def test_three_modalities_with_bad_shapes_are_named(inputs, shapes, match):
    """With three modalities the others are combined before any pair metric checks them, and
    the errors came from torch.stack/torch.cat without a modality name."""
    factory = FastPID if inputs == "logits" else functools.partial(ClusteredFastPID, num_clusters=3)
    metric = MultimodalPID(("a", "b", "c"), 4, factory, inputs=inputs)
    width = 4 if inputs == "logits" else 3
    values = {name: torch.randn(shapes.get(name, (50, width))) for name in ("a", "b", "c")}
    with pytest.raises(ValueError, match=match):
        metric.update(values, torch.randint(0, 4, (50,)))
