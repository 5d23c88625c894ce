"""``MultimodalPID``: the probe of M >= 2 modalities as one torchmetrics metric.

It holds one bivariate metric (default :class:`~pidsched.metrics.FastPID`) per pair of
:func:`pidsched.functional.multimodal.one_vs_rest_inputs`: one for two modalities, one per
modality (m against the rest) beyond. ``update`` takes every modality's outputs at once and
``compute`` returns one :class:`~pidsched.functional.multimodal.MultimodalPIDResult`. The wrapper
holds no state of its own: each pair metric syncs its own states across ranks in its
``compute``, so DDP works as for a single ``FastPID``. The maths lives in
:mod:`pidsched.functional.multimodal`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.wrappers.abstract import WrapperMetric
from typing_extensions import override

from pidsched._checks import check_int_at_least, check_not_a_string
from pidsched.functional.multimodal import (
    SCALAR_ATOMS,
    MultimodalPIDResult,
    combine_pair_results,
    one_vs_rest_inputs,
    pair_count,
)
from pidsched.metrics.fastpid import FastPID

# MultimodalPIDResult and SCALAR_ATOMS are what compute() returns: the callback reads them here.
__all__ = ["SCALAR_ATOMS", "MultimodalPID", "MultimodalPIDResult"]

_INPUTS = ("logits", "features")


class MultimodalPID(WrapperMetric):
    """PID of M >= 2 modalities' outputs about the label (bits), one-vs-rest beyond two.

    As input to ``update``:

    - ``values`` (``dict[str, Tensor]``): ``{m: (N, K) logits}`` for ``inputs="logits"``, or
      ``{m: (N, D_m) features}`` for ``inputs="features"``; exactly the ``modality_names``.
    - ``target`` (:class:`~torch.Tensor`): ``(N,)`` integer labels in ``[0, K)``.

    As output of ``compute``: a :class:`~pidsched.functional.multimodal.MultimodalPIDResult` of
    0-d tensors (bits): ``unique {m}``, ``redundancy``, ``synergy``, ``mutual_information``,
    ``mutual_information_per_modality {m}``, ``gap`` and, when the pair metrics bootstrap,
    ``replicates`` of batch shape ``(B,)`` (replicate b combines replicate b of every pair).

    Args:
        modality_names: the modality names in order (at least two, distinct).
        num_classes: K, the number of classes.
        metric_factory: builds each bivariate metric as ``metric_factory(num_classes=K)``; its
            ``update`` takes ``(x_1, x_2, target)`` and its ``compute`` returns a ``PIDResult``.
            Default :class:`~pidsched.metrics.FastPID`.
        inputs: ``"logits"`` or ``"features"`` (how the rest of a modality is formed).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Raises:
        ValueError: fewer than two or repeated names, K < 2 or an unknown ``inputs``.
        TypeError: ``metric_factory`` does not build a torchmetrics ``Metric``.

    Example::

        >>> import functools, torch
        >>> from pidsched.metrics import FastPID
        >>> hard = functools.partial(FastPID, discretization="hard")
        >>> metric = MultimodalPID(("a", "b", "c"), num_classes=2, metric_factory=hard)
        >>> target = torch.tensor([0, 1, 0, 1])
        >>> knows = 9.0 * torch.nn.functional.one_hot(target, 2).float()
        >>> metric.update({"a": knows, "b": knows, "c": torch.zeros(4, 2)}, target)
        >>> result = metric.compute()
        >>> {m: round(u.item(), 3) for m, u in result.unique.items()}
        {'a': 0.0, 'b': 0.0, 'c': 0.0}
        >>> round(result.redundancy.item(), 3), round(result.mutual_information.item(), 3)
        (0.667, 1.0)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        modality_names: Sequence[str],
        num_classes: int,
        metric_factory: Callable[..., Metric] | None = None,
        inputs: str = "logits",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_not_a_string(
            "modality_names", modality_names, "pass a tuple such as ('audio', 'video')"
        )
        names = tuple(modality_names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(
                f"Expected argument `modality_names` to hold at least two distinct names, "
                f"but got {list(names)}."
            )
        check_int_at_least("num_classes", num_classes, 2, "the number of classes")
        if inputs not in _INPUTS:
            raise ValueError(f"Expected argument `inputs` in {_INPUTS}, but got {inputs!r}.")
        self.modality_names = names
        self.num_classes = num_classes
        self.inputs = inputs
        factory = FastPID if metric_factory is None else metric_factory
        self.pair_metrics = nn.ModuleList(
            [_build(factory, num_classes) for _ in range(pair_count(len(names)))]
        )

    @property
    def tol(self) -> float | None:
        """The pair metrics' certified error bound (bits); None when they declare none."""
        tols = [getattr(metric, "tol", None) for metric in self.pair_metrics]
        return None if None in tols else max(tols)

    @property
    def num_bootstrap(self) -> int:
        """B, the bootstrap replicates of each pair metric (0 without bootstrap)."""
        return int(getattr(self.pair_metrics[0], "num_bootstrap", 0))

    @override
    def update(self, values: Mapping[str, Tensor], target: Tensor) -> None:
        """Fold one batch of every modality's outputs into the pair metrics."""
        for metric, (first, second) in self._pair_inputs(values):
            metric.update(first, second, target)

    @override
    def forward(self, values: Mapping[str, Tensor], target: Tensor) -> MultimodalPIDResult:
        """Fold one batch into the pair metrics, as :meth:`update`, and return the PID of that
        batch alone (each pair metric's ``forward``: torchmetrics' ``metric(...)`` contract)."""
        pairs = self._pair_inputs(values)
        return self._combine([metric(first, second, target) for metric, (first, second) in pairs])

    @override
    def compute(self) -> MultimodalPIDResult:
        """Compute (and, under DDP, sync) every pair metric and combine their results."""
        return self._combine([metric.compute() for metric in self.pair_metrics])

    def _pair_inputs(self, values: Mapping[str, Tensor]) -> list[tuple[Metric, tuple[Tensor, ...]]]:
        """Each pair metric with its ``(x_1, x_2)`` of ``values``, after checking the names."""
        if set(values) != set(self.modality_names):
            raise ValueError(
                f"Expected `values` to hold the modalities {list(self.modality_names)}, but got "
                f"{sorted(values)}."
            )
        self._check_shapes(values)
        pairs = one_vs_rest_inputs(values, self.modality_names, self.inputs)
        return list(zip(self.pair_metrics, pairs, strict=True))

    def _check_shapes(self, values: Mapping[str, Tensor]) -> None:
        """Every modality's values a 2-D tensor of the same N (logits: ``(N, K)``). With three
        or more modalities they are combined before a pair metric checks them, and the error
        came from ``torch.stack`` without a modality name."""
        first = self.modality_names[0]
        for name in self.modality_names:
            value = values[name]
            width = f"(N, {self.num_classes})" if self.inputs == "logits" else "(N, D)"
            if (
                not isinstance(value, Tensor)
                or value.ndim != 2
                or (self.inputs == "logits" and value.shape[1] != self.num_classes)
            ):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"Expected `values[{name!r}]` to be {self.inputs} shaped {width}, but got "
                    f"{got}."
                )
            if value.shape[0] != values[first].shape[0]:
                raise ValueError(
                    f"Expected every modality's values to hold the same samples, but "
                    f"`values[{name!r}]` has {value.shape[0]} rows and `values[{first!r}]` "
                    f"{values[first].shape[0]}."
                )

    def _combine(self, results: list[Any]) -> MultimodalPIDResult:
        """One result of the pair metrics' results (and of their replicates, where all have)."""
        pair_replicates = [getattr(result, "replicates", None) for result in results]
        replicates = (
            None
            if any(r is None for r in pair_replicates)
            else combine_pair_results(self.modality_names, pair_replicates)
        )
        return combine_pair_results(self.modality_names, results, replicates)

    @override
    def reset(self) -> None:
        """Reset every pair metric (their warm starts and bootstrap generators are kept)."""
        for metric in self.pair_metrics:
            metric.reset()
        super().reset()

    # --- checkpoint state (plain values and CPU tensors, one entry per pair metric) ----------

    def warm_start_state(self) -> list[Any]:
        """The pair metrics' solver warm starts (None for a metric without one)."""
        return [_call(metric, "warm_start_state") for metric in self.pair_metrics]

    def load_warm_start_state(self, states: Sequence[Any] | None) -> None:
        """Restore :meth:`warm_start_state`; a list of another length (other M) is ignored."""
        _load_each(self.pair_metrics, "load_warm_start_state", states)

    def bootstrap_state(self) -> list[Any]:
        """The pair metrics' bootstrap generator states (None for a metric without one)."""
        return [_call(metric, "bootstrap_state") for metric in self.pair_metrics]

    def load_bootstrap_state(self, states: Sequence[Any] | None) -> None:
        """Restore :meth:`bootstrap_state`; a list of another length (other M) is ignored."""
        _load_each(self.pair_metrics, "load_bootstrap_state", states)


def _build(factory: Callable[..., Metric], num_classes: int) -> Metric:
    metric = factory(num_classes=num_classes)
    if not isinstance(metric, Metric):
        raise TypeError(
            f"`metric_factory` must return a torchmetrics Metric, got {type(metric).__name__}."
        )
    return metric


def _call(metric: Metric, method: str) -> Any:
    return getattr(metric, method)() if hasattr(metric, method) else None


def _load_each(metrics: nn.ModuleList, method: str, states: Sequence[Any] | None) -> None:
    if states is None or len(states) != len(metrics):
        return
    for metric, state in zip(metrics, states, strict=True):
        if state is not None and hasattr(metric, method):
            getattr(metric, method)(state)
