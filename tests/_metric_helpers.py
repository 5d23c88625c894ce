"""Data and comparisons shared by the metric tests (single process and DDP)."""

import dataclasses

import torch

from pidsched.functional import PIDResult

NUM_CLASSES = 4


def correlated_logits(num_samples: int, seed: int = 0):
    """Logits of two noisy heads that each see part of the label, and the labels.

    Returns:
        ``(logits_1 (N, 4), logits_2 (N, 4), target (N,))``.
    """
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(NUM_CLASSES, (num_samples,), generator=generator)
    signal = torch.nn.functional.one_hot(target, NUM_CLASSES).float()
    logits_1 = 2.0 * signal + torch.randn(num_samples, NUM_CLASSES, generator=generator)
    logits_2 = 1.0 * signal + torch.randn(num_samples, NUM_CLASSES, generator=generator)
    return logits_1, logits_2, target


def xor_features(num_samples: int, seed: int = 0, dim: int = 8, noise: float = 0.05):
    """Embeddings whose clusters carry one bit each; the label is the XOR of the two bits.

    Each modality's bit picks one of two random unit directions in ``R^dim``; samples are noisy
    multiples of that direction (L2 normalisation removes the scale). Only the pair of bits
    determines the label, so the PID is (almost) pure synergy of 1 bit.

    Returns:
        ``(features_1 (N, dim), features_2 (N, dim), target (N,))``.
    """
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(2, (2, num_samples), generator=generator)
    features = []
    for modality_bits in bits:
        directions = torch.nn.functional.normalize(torch.randn(2, dim, generator=generator), dim=1)
        scale = 1.0 + torch.rand(num_samples, 1, generator=generator)
        jitter = noise * torch.randn(num_samples, dim, generator=generator)
        features.append(scale * directions[modality_bits] + jitter)
    return features[0], features[1], bits[0] ^ bits[1]


def assert_same_result(actual: PIDResult, expected: PIDResult, atol: float = 1e-9) -> None:
    """Every information field of two results agrees within ``atol`` bits."""
    for field in dataclasses.fields(PIDResult):
        if field.name in ("iterations", "dual_1", "dual_2", "replicates"):
            continue
        if field.name == "gap":
            continue  # a certificate, not a quantity both solves must share
        torch.testing.assert_close(
            getattr(actual, field.name).cpu(),
            getattr(expected, field.name).cpu(),
            rtol=0,
            atol=atol,
            msg=lambda msg, name=field.name: f"{name}: {msg}",
        )
