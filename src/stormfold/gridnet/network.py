"""The camera-grid network: a per-frame U-Net, a temporal-context U-Net and a 1×1 head.

Frames t−1, t, t+1 go through the *frame network* one by one (shared weights); the three
feature maps are concatenated along channels and go through the *context network*, whose
output a 1×1 convolution maps to the raw output channels of frame t (SPEC §10). At
inference each frame's features are computed once and reused by the three windows that
contain the frame (:meth:`GridNet.window_features`), so temporal context costs one context
network per frame, not three frame networks.

Both U-Nets are plain: per level two 3×3 convolutions with ELU, a strided 3×3 convolution
down, nearest-neighbour ×2 up followed by a 3×3 convolution, and skip connections by
concatenation. The frame side must be a multiple of 2^(levels − 1) (the engine pads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from stormfold.errors import UserError
from stormfold.modelfile import check_size

#: Raw output channels, in order (SPEC §10).
OUTPUTS = ("logit", "dx", "dy", "photons", "sigma_x", "sigma_y", "sigma_photons", "bg")
N_OUTPUTS = len(OUTPUTS)


#: Largest channel width at full resolution (doubled at each level below: 2048 at 4 levels).
MAX_WIDTH = 256


@dataclass
class ArchitectureConfig:
    """Shape of the network (stored in model.yaml).

    Attributes
    ----------
    arch : "gridnet"
    context_frames : {1, 3}
        Frames seen per prediction: 3 = t−1, t, t+1; 1 = frame t alone.
    frame_width : int
        Channels at full resolution of the frame network (doubled at each level below).
    context_width : int
        Channels at full resolution of the context network.
    levels : int
        Resolution levels of each U-Net (2 = one down-sampling).
    """

    arch: Literal["gridnet"] = "gridnet"
    context_frames: int = 3
    frame_width: int = 16
    context_width: int = 24
    levels: int = 2

    def validate(self) -> None:
        if self.context_frames not in (1, 3):
            raise UserError(f"architecture.context_frames must be 1 or 3, got {self.context_frames}")
        for name in ("frame_width", "context_width"):
            check_size(getattr(self, name), name, MAX_WIDTH, "architecture")
        if not 1 <= self.levels <= 4:
            raise UserError(f"architecture.levels must be in 1..4, got {self.levels}")

    @property
    def size_multiple(self) -> int:
        """Frame sides must be multiples of this (the engine pads)."""
        return 2 ** (self.levels - 1)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


class _Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(_conv(c_in, c_out), nn.ELU(), _conv(c_out, c_out), nn.ELU())


class UNet(nn.Module):
    """U-Net with ``levels`` resolutions; width doubles per level; output has ``width`` channels."""

    def __init__(self, c_in: int, width: int, levels: int):
        super().__init__()
        widths = [width * 2 ** i for i in range(levels)]
        self.enc = nn.ModuleList([_Block(c_in, widths[0])] +
                                 [_Block(widths[i], widths[i]) for i in range(1, levels)])
        self.down = nn.ModuleList([nn.Sequential(_conv(widths[i], widths[i + 1], stride=2), nn.ELU())
                                   for i in range(levels - 1)])
        self.up = nn.ModuleList([nn.Sequential(_conv(widths[i + 1], widths[i]), nn.ELU())
                                 for i in range(levels - 1)])
        self.dec = nn.ModuleList([_Block(2 * widths[i], widths[i]) for i in range(levels - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x)
            if i < len(self.down):
                skips.append(x)
                x = self.down[i](x)
        for i in reversed(range(len(self.dec))):
            x = self.up[i](F.interpolate(x, scale_factor=2, mode="nearest"))
            x = self.dec[i](torch.cat([x, skips[i]], dim=1))
        return x


class GridNet(nn.Module):
    """Frame network + context network + 1×1 head (raw outputs; see :mod:`.outputs`).

    Parameters
    ----------
    config : ArchitectureConfig
    """

    def __init__(self, config: ArchitectureConfig):
        super().__init__()
        self.config = config
        self.frame_net = UNet(1, config.frame_width, config.levels)
        self.context_net = UNet(config.context_frames * config.frame_width, config.context_width,
                                config.levels)
        self.head = nn.Conv2d(config.context_width, N_OUTPUTS, 1)
        # He initialisation: PyTorch's default conv init shrinks the signal by about √3 per
        # layer, which leaves ~20 stacked layers without normalisation with no gradient.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        self._init_head()

    def _init_head(self) -> None:
        """Start near a sensible prior: few detections (p ≈ 0.02), 2000 photons, position
        σ 0.3 px, photon σ 500, zero offsets and background correction. Without it the
        first hundreds of steps only learn these levels."""
        import math

        def softplus_inverse(v: float) -> float:
            return math.log(math.expm1(v))

        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.copy_(torch.tensor([-4.0, 0.0, 0.0, softplus_inverse(2.0),
                                               softplus_inverse(0.3), softplus_inverse(0.3),
                                               softplus_inverse(0.5), 0.0]))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame features: (n, rows, cols) normalised frames → (n, frame_width, rows, cols)."""
        return self.frame_net(frames[:, None])

    def window_features(self, features: torch.Tensor) -> torch.Tensor:
        """Context windows of consecutive frames' features.

        ``features`` holds n + context_frames − 1 consecutive frames (the caller pads the
        movie edges); the result has the n windows (n, context_frames·frame_width, rows, cols).
        """
        k = self.config.context_frames
        n = features.shape[0] - (k - 1)
        if n < 1:
            raise UserError(f"need at least {k} frames of features, got {features.shape[0]}")
        return torch.cat([features[i:i + n] for i in range(k)], dim=1)

    def head_from_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Raw outputs (n, 8, rows, cols) from context windows."""
        return self.head(self.context_net(windows))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw outputs of the middle frame of each sample.

        Parameters
        ----------
        frames : (batch, context_frames, rows, cols)
            Normalised frames t−1, t, t+1 (or frame t alone).
        """
        b, k, h, w = frames.shape
        if k != self.config.context_frames:
            raise UserError(f"the network sees {self.config.context_frames} frames per sample, "
                            f"got {k}")
        feats = self.features(frames.reshape(b * k, h, w)).reshape(b, k * self.config.frame_width,
                                                                     h, w)
        return self.head_from_windows(feats)


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def gflop_per_frame(model: GridNet, rows: int = 64, cols: int = 64) -> float:
    """Inference GFLOP per frame with per-frame feature reuse (frame net once + context net once).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add = 2 FLOP).
    """
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            feats = model.features(torch.zeros(1, rows, cols))
        frame_flop = counter.get_total_flops()
        counter = FlopCounterMode(display=False)
        with counter:
            model.head_from_windows(torch.zeros(1, cfg.context_frames * cfg.frame_width, rows, cols))
        context_flop = counter.get_total_flops()
    del feats
    return (frame_flop + context_flop) / 1e9


def summary(model: GridNet) -> str:
    """One line: architecture, parameters and GFLOP per 64×64 frame."""
    c = model.config
    return (f"gridnet: context {c.context_frames} frames, widths frame {c.frame_width} / context "
            f"{c.context_width}, {c.levels} levels; {count_parameters(model):,} parameters; "
            f"{gflop_per_frame(model):.2f} GFLOP per 64×64 frame (features reused across windows)")
