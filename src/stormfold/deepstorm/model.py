"""The Deep-STORM network (Nehme et al. 2018), faithful to the original Keras model (SPEC §4).

Encoder: 3×3 convolution (no bias) + batch normalisation + ReLU with 32, 64, 128 and 512
channels, a 2×2 max-pool after each of the first three; decoder: nearest-neighbour ×2
upsampling then conv-BN-ReLU with 128, 64 and 32 channels; a linear 1×1 convolution to one
channel without bias. No skip connections. With the default channels it has 1,368,128
parameters counting the batch-norm running means and variances.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: Channels of the original network: encoder (3 pooled stages + bottleneck).
DEFAULT_CHANNELS = (32, 64, 128, 512)
#: Largest width of a model.yaml's channels (beyond it the network would not fit in memory).
MAX_CHANNELS = 2048
#: Side of the network input must be a multiple of this (three 2×2 max-pools).
SIZE_MULTIPLE = 8
#: Keras defaults translated to PyTorch: Keras momentum 0.99 ↔ PyTorch momentum 0.01.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


class ConvBNReLU(nn.Sequential):
    """3×3 'same' convolution without bias, batch normalisation (Keras defaults), ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM, eps=BN_EPS),
            nn.ReLU(inplace=True),
        )


class DeepSTORM(nn.Module):
    """Deep-STORM fully convolutional encoder–decoder.

    Parameters
    ----------
    channels : sequence of 4 int
        Encoder channels (c1, c2, c3, c4); the decoder mirrors them (c3, c2, c1). The
        default (32, 64, 128, 512) is the published network; smaller values give tiny
        models for tests.

    Notes
    -----
    Input: (batch, 1, rows, cols) normalised frames upsampled ×L by pixel replication on
    the fine grid, rows and cols multiples of 8. Output: same shape, the predicted spike
    map (linear, not clamped) at ``target_scale``.
    """

    def __init__(self, channels: Sequence[int] = DEFAULT_CHANNELS):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"channels must be 4 positive integers, got {channels}")
        c1, c2, c3, c4 = channels
        self.channels = channels
        self.enc1 = ConvBNReLU(1, c1)
        self.enc2 = ConvBNReLU(c1, c2)
        self.enc3 = ConvBNReLU(c2, c3)
        self.enc4 = ConvBNReLU(c3, c4)
        self.dec3 = ConvBNReLU(c4, c3)
        self.dec2 = ConvBNReLU(c3, c2)
        self.dec1 = ConvBNReLU(c2, c1)
        self.out = nn.Conv2d(c1, 1, 1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras-equivalent initialisation: orthogonal kernels (gain 1), BN γ = 1, β = 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight, gain=1.0)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder–decoder up to the last 32-channel feature map (before the 1×1 output)."""
        x = self.pool(self.enc1(x))
        x = self.pool(self.enc2(x))
        x = self.pool(self.enc3(x))
        x = self.enc4(x)
        x = self.dec3(self.up(x))
        x = self.dec2(self.up(x))
        return self.dec1(self.up(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def count_parameters(model: nn.Module, include_bn_statistics: bool = True) -> int:
    """Number of trainable parameters, plus BN running means and variances if asked
    (Keras counts those as non-trainable parameters; ``num_batches_tracked`` is not one)."""
    n = sum(p.numel() for p in model.parameters())
    if include_bn_statistics:
        n += sum(b.numel() for name, b in model.named_buffers()
                 if name.endswith(("running_mean", "running_var")))
    return n


def build_model(architecture: dict) -> DeepSTORM:
    """The network described by the ``architecture`` mapping of a model.yaml."""
    return DeepSTORM(channels=architecture.get("channels", DEFAULT_CHANNELS))
