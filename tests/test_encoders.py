"""MLP and ResNet-18 encoders."""

from __future__ import annotations

import pytest
import torch

from pidsched.models.encoders import MLPEncoder, ResNet18Encoder


def test_mlp_shapes_and_layers():
    encoder = MLPEncoder(input_dim=10, hidden_dims=(32, 16), output_dim=8, dropout=0.1)
    assert encoder(torch.randn(5, 10)).shape == (5, 8)
    linear_widths = [
        (m.in_features, m.out_features) for m in encoder.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert linear_widths == [(10, 32), (32, 16), (16, 8)]
    assert encoder.output_dim == 8
    linear = MLPEncoder(input_dim=4, hidden_dims=(), output_dim=3)
    assert len(linear.net) == 1


@pytest.mark.parametrize(
    "arguments",
    [{"input_dim": 0}, {"input_dim": 4, "hidden_dims": (0,)}, {"input_dim": 4, "dropout": 1.0}],
)
def test_mlp_rejects_bad_arguments(arguments):
    with pytest.raises(ValueError):
        MLPEncoder(**arguments)


def test_audio_resnet_takes_one_channel_spectrograms():
    encoder = ResNet18Encoder(in_channels=1, output_dim=24)
    assert encoder.net.conv1.in_channels == 1
    out = encoder(torch.randn(2, 1, 257, 188))
    assert out.shape == (2, 24) and encoder.output_dim == 24
    out.sum().backward()
    assert encoder.net.conv1.weight.grad is not None


def test_visual_resnet_folds_frames_and_averages_over_time():
    encoder = ResNet18Encoder(in_channels=3, output_dim=16).eval()
    frames = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        pooled = encoder(frames)
        per_frame = torch.stack([encoder(frames[:, t]) for t in range(3)], dim=1)
    assert pooled.shape == (2, 16)
    assert torch.allclose(pooled, per_frame.mean(dim=1), atol=1e-5)


def test_resnet_is_randomly_initialised():
    torch.manual_seed(0)
    first = ResNet18Encoder(3, 8).net.conv1.weight
    torch.manual_seed(1)
    second = ResNet18Encoder(3, 8).net.conv1.weight
    assert not torch.equal(first, second)


def test_resnet_rejects_bad_input_rank():
    with pytest.raises(ValueError, match="expected"):
        ResNet18Encoder(3, 8)(torch.randn(3, 64, 64))
