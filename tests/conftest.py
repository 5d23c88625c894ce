"""Shared pytest configuration.

Tests never touch the network: W&B is disabled unless a test opts into offline mode itself.
"""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _deterministic_seed():
    import torch

    torch.manual_seed(0)
    yield


def pytest_configure(config):
    import torch

    # The models under test are tiny: one intra-op thread avoids oversubscribing the 2 CI cores
    # (DDP tests run two processes), which made tiny fits ~10x slower.
    torch.set_num_threads(1)
