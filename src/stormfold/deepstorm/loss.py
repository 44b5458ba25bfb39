"""Deep-STORM loss and target blur (SPEC §4).

``loss = mean((target − g∗ŝ)²) + mean(|ŝ|)`` with ŝ the network output and g the 7×7
sampled Gaussian (σ = 1 fine pixel) normalised to sum 1 and then multiplied by 2, applied
with zero 'same' padding as in the original Keras code. Because g has mass 2 while each
target emitter has mass ``target_scale``, the spike of an isolated emitter converges to
about ``target_scale / 2``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stormfold.physics.psf import gaussian_kernel_1d

LOSS_KERNEL_SIZE = 7
LOSS_SIGMA_PX = 1.0
LOSS_FILTER_GAIN = 2.0


def gaussian_kernel_2d(size: int = LOSS_KERNEL_SIZE,
                       sigma_px: float = LOSS_SIGMA_PX) -> torch.Tensor:
    """Sampled 2-D Gaussian on a size×size grid centred on the middle pixel, sum 1 (float32).

    Same as MATLAB's ``fspecial('gaussian', size, sigma)`` used by the original code.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    g1 = gaussian_kernel_1d(sigma_px, size // 2, integrated=False, normalize=False)
    g2 = torch.outer(g1, g1)
    return (g2 / g2.sum()).float()


def blur(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """'same' 2-D correlation with zero padding of (n, rows, cols) or (n, 1, rows, cols) maps."""
    squeeze = maps.ndim == 3
    x = maps[:, None] if squeeze else maps
    k = kernel.to(device=x.device, dtype=x.dtype)[None, None]
    out = F.conv2d(x, k, padding=kernel.shape[-1] // 2)
    return out[:, 0] if squeeze else out


class DeepStormLoss(nn.Module):
    """Blurred-L2 + L1 loss of Deep-STORM.

    Parameters
    ----------
    size : int
        Side of the Gaussian filter (7).
    sigma_px : float
        Its σ in fine pixels (1).
    filter_gain : float
        Multiplier after normalising the filter to sum 1 (2).
    """

    def __init__(self, size: int = LOSS_KERNEL_SIZE, sigma_px: float = LOSS_SIGMA_PX,
                 filter_gain: float = LOSS_FILTER_GAIN):
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel_2d(size, sigma_px) * filter_gain)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``prediction`` ŝ against ``target`` (same shape, (n, 1, rows, cols))."""
        prediction = prediction.float()
        blurred = blur(prediction, self.kernel)
        return torch.mean((target.float() - blurred) ** 2) + torch.mean(torch.abs(prediction))
