"""Modality encoders: an MLP for feature vectors and ResNet-18 for spectrograms and frames.

Every encoder maps one modality's batch to features ``(N, output_dim)`` and exposes
``output_dim``, which is what :class:`pidsched.MultimodalClassifier` needs as that modality's
feature dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn
from torchvision.models import resnet18


class MLPEncoder(nn.Module):
    """Feed-forward encoder for vector modalities.

    ``Linear -> ReLU -> Dropout`` per hidden layer, then a linear projection to
    ``output_dim`` features.

    Args:
        input_dim: features per sample ``D``.
        hidden_dims: widths of the hidden layers (may be empty: a linear encoder).
        output_dim: features produced per sample.
        dropout: dropout probability after each hidden layer.

    Example::

        encoder = MLPEncoder(input_dim=76, hidden_dims=(128,), output_dim=64)
        encoder(torch.randn(8, 76)).shape  # torch.Size([8, 64])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (128,),
        output_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [input_dim, *hidden_dims, output_dim]
        if any(int(w) != w or w < 1 for w in widths):
            raise ValueError(
                f"input_dim={input_dim}, hidden_dims={list(hidden_dims)} and "
                f"output_dim={output_dim} must all be positive integers."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must lie in [0, 1).")
        layers: list[nn.Module] = []
        for width_in, width_out in pairwise(widths[:-1]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(widths[-2], widths[-1]))
        self.net = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.output_dim = output_dim

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``(N, input_dim)`` vectors into ``(N, output_dim)`` features."""
        return self.net(x)


class ResNet18Encoder(nn.Module):
    """ResNet-18 trunk (torchvision, random init) with a projection to ``output_dim``.

    Audio spectrograms come as images ``(N, 1, F, T)`` (``in_channels=1``). Video comes as
    frame stacks ``(N, T, 3, H, W)``: the frames are folded into the batch, encoded one by
    one, and their features averaged over time - the usual late temporal pooling of the
    audio-visual lineage.

    Args:
        in_channels: channels of one image (1 for a spectrogram, 3 for an RGB frame).
        output_dim: features produced per sample (the 512 -> ``output_dim`` projection).

    Example::

        audio = ResNet18Encoder(in_channels=1, output_dim=64)
        audio(torch.randn(2, 1, 257, 188)).shape  # torch.Size([2, 64])
        visual = ResNet18Encoder(in_channels=3, output_dim=64)
        visual(torch.randn(2, 3, 3, 224, 224)).shape  # torch.Size([2, 64])
    """

    def __init__(self, in_channels: int = 3, output_dim: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or output_dim < 1:
            raise ValueError(
                f"in_channels={in_channels} and output_dim={output_dim} must be positive."
            )
        # weights=None: trained from scratch, as in the method; nothing is downloaded.
        self.net = resnet18(weights=None, num_classes=output_dim)
        if in_channels != 3:
            self.net.conv1 = nn.Conv2d(
                in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False
            )
        self.in_channels = in_channels
        self.output_dim = output_dim

    def forward(self, x: Tensor) -> Tensor:
        """Encode images ``(N, C, H, W)`` or frame stacks ``(N, T, C, H, W)``.

        Returns:
            Features ``(N, output_dim)``; for frame stacks, the mean over the ``T`` frames.
        """
        if x.dim() == 4:
            return self.net(x)
        if x.dim() == 5:
            batch, frames = x.shape[:2]
            features = self.net(x.flatten(0, 1))
            return features.view(batch, frames, -1).mean(dim=1)
        raise ValueError(
            f"expected (N, C, H, W) images or (N, T, C, H, W) frames, got shape {tuple(x.shape)}."
        )
