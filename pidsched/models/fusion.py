"""Fusion heads: per-modality features ``{name: (N, D_m)}`` -> fused class logits ``(N, K)``.

The four heads of the OGM-GE lineage that the paper's code uses, with consistent dimensions
(the released FiLM and gated heads mixed up feature and class sizes). Each is built as
``Head(feature_dims, num_classes)``; ``pidsched-train`` instantiates ``model.fusion`` (a Hydra
``_target_``, ``conf/model/fusion/``) that way, so a head of your own with the same constructor
plugs in as ``model.fusion._target_=my_package.MyFusion``:

- ``concat``: one linear layer on the concatenated features; any number of modalities.
- ``sum``: a sum of one linear layer per modality; any number of modalities.
- ``film``: the first modality produces a per-feature scale and shift (FiLM) of the second's
  features, then a linear layer; exactly two modalities.
- ``gated``: both modalities projected to a common width; a sigmoid gate from the first
  modality multiplies the second's projection, then a linear layer; exactly two modalities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConcatFusion", "FiLMFusion", "GatedFusion", "SumFusion"]


class ConcatFusion(nn.Module):
    """Linear classifier on the concatenation of all modality features (in ``names`` order).

    Args:
        feature_dims: ``{name: D_m}``.
        num_classes: K.
    """

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.names = list(feature_dims)
        self.linear = nn.Linear(sum(feature_dims.values()), num_classes)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse ``{name: (N, D_m)}`` into logits ``(N, K)``."""
        return self.linear(torch.cat([features[name] for name in self.names], dim=-1))


class SumFusion(nn.Module):
    """Sum of one linear classifier per modality.

    Args:
        feature_dims: ``{name: D_m}``.
        num_classes: K.
    """

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.linears = nn.ModuleDict(
            {name: nn.Linear(dim, num_classes) for name, dim in feature_dims.items()}
        )

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse ``{name: (N, D_m)}`` into logits ``(N, K)``."""
        return sum(linear(features[name]) for name, linear in self.linears.items())


def _two_names(kind: str, feature_dims: Mapping[str, int]) -> Sequence[str]:
    names = list(feature_dims)
    if len(names) != 2:
        raise ValueError(
            f"{kind} conditions one modality on another and is defined for exactly two "
            f"modalities, got {len(names)} ({names}); use ConcatFusion or SumFusion instead "
            "(model/fusion=concat or sum)."
        )
    return names


class FiLMFusion(nn.Module):
    """FiLM: ``linear(gamma(z_a) * z_b + beta(z_a))`` with ``gamma, beta`` of width ``D_b``.

    Args:
        feature_dims: ``{a: D_a, b: D_b}``; the first modality conditions the second.
        num_classes: K.

    Raises:
        ValueError: not exactly two modalities.
    """

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.conditioner, self.conditioned = _two_names("FiLMFusion", feature_dims)
        width = feature_dims[self.conditioned]
        self.film = nn.Linear(feature_dims[self.conditioner], 2 * width)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse ``{a: (N, D_a), b: (N, D_b)}`` into logits ``(N, K)``."""
        gamma, beta = self.film(features[self.conditioner]).chunk(2, dim=-1)
        return self.linear(gamma * features[self.conditioned] + beta)


class GatedFusion(nn.Module):
    """Gated: ``linear(sigmoid(P_a z_a) * P_b z_b)``, both projections ``max(D_a, D_b)`` wide.

    Args:
        feature_dims: ``{a: D_a, b: D_b}``; the first modality gates the second.
        num_classes: K.

    Raises:
        ValueError: not exactly two modalities.
    """

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        self.gate_name, self.value_name = _two_names("GatedFusion", feature_dims)
        width = max(feature_dims.values())
        self.gate = nn.Linear(feature_dims[self.gate_name], width)
        self.value = nn.Linear(feature_dims[self.value_name], width)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fuse ``{a: (N, D_a), b: (N, D_b)}`` into logits ``(N, K)``."""
        gate = torch.sigmoid(self.gate(features[self.gate_name]))
        return self.linear(gate * self.value(features[self.value_name]))
