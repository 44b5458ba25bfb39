"""Candidate detection for single-emitter fitting, vectorised over a batch of frames.

1. Band-pass: difference of Gaussians, G(σ₁) − G(σ₂) with σ₁ the expected PSF σ and
   σ₂ = ``ratio``·σ₁. The smaller Gaussian is (close to) the matched filter of the spot;
   subtracting the larger one removes the local background.
2. Noise: per frame, the robust standard deviation 1.4826·MAD of the filtered image over
   the darkest 10 % of the pixels (ranked by the wider Gaussian, i.e. the gaps between
   spots), so the estimate measures the background noise even when spots cover most of
   the frame.
3. Candidates: pixels that are the maximum of their 3×3 neighbourhood in the filtered image
   and exceed ``threshold`` × noise.
4. ROIs: a ``size`` × ``size`` window centred on each candidate, shifted inwards at the
   image border so it always lies inside the frame.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stormfold.physics.psf import gaussian_kernel_1d

MAD_TO_STD = 1.4826


def gaussian_kernel(sigma_px: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian sampled at integer offsets, truncated at 3σ (at least ±1)."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    k = gaussian_kernel_1d(float(sigma_px), radius, integrated=False)
    return k.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma_px: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n, n) matrix M with M @ v = v blurred by :func:`gaussian_kernel`, reflecting borders
    (v[−k] = v[k]; the kernel is folded back as often as needed for short vectors)."""
    k = gaussian_kernel(sigma_px, torch.float64)
    r = k.numel() // 2
    j = torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]  # (n, 2r+1) source index
    if n > 1:
        period = 2 * (n - 1)
        j = j.remainder(period)
        j = torch.where(j > n - 1, period - j, j)
    else:
        j = torch.zeros_like(j)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, j, k.expand(n, -1).clone())
    return m.to(dtype=dtype, device=device)


def gaussian_blur(frames: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) frames with reflecting borders.

    Applied as two matrix products with banded blur matrices (much faster than a 1-D
    convolution on the CPU for camera-sized frames).
    """
    _, h, w = frames.shape
    mh = _blur_matrix(h, float(sigma_px), frames.dtype, frames.device)
    mw = _blur_matrix(w, float(sigma_px), frames.dtype, frames.device)
    return mh @ (frames @ mw.T)


def band_pass(frames: torch.Tensor, sigma_px: float, ratio: float = 2.5,
              return_smooth: bool = False):
    """Difference of Gaussians G(σ) − G(ratio·σ) of (B, H, W) frames (same units).

    With ``return_smooth`` also returns G(ratio·σ), the local background level.
    """
    wide = gaussian_blur(frames, ratio * sigma_px)
    dog = gaussian_blur(frames, sigma_px) - wide
    return (dog, wide) if return_smooth else dog


def robust_noise(filtered: torch.Tensor, smooth: torch.Tensor | None = None,
                 dark_fraction: float = 0.1) -> torch.Tensor:
    """Per-image robust noise of band-passed images: 1.4826·MAD, (B,) for (B, H, W).

    With ``smooth`` (the images blurred at the band-pass's larger scale), only the
    ``dark_fraction`` of pixels where ``smooth`` is lowest enter the MAD: the gaps between
    spots, whose band-pass values are noise. Without it all pixels are used, which
    overestimates the noise as soon as spots cover a sizeable part of the frame.
    """
    flat = filtered.flatten(1)
    if smooth is not None:
        k = min(flat.shape[1], max(16, int(round(dark_fraction * flat.shape[1]))))
        idx = smooth.flatten(1).topk(k, dim=1, largest=False).indices
        flat = flat.gather(1, idx)
    med = flat.median(dim=1).values
    return MAD_TO_STD * (flat - med[:, None]).abs().median(dim=1).values


def band_pass_noise_gain(sigma_px: float, ratio: float = 2.5) -> float:
    """Standard deviation of :func:`band_pass` applied to unit white noise (away from the
    border): ‖G(σ) − G(ratio·σ)‖₂ of the 2-D kernel, from the separable 1-D kernels."""
    a = gaussian_kernel(sigma_px, torch.float64)
    b = gaussian_kernel(ratio * sigma_px, torch.float64)
    pad = (b.numel() - a.numel()) // 2
    a = torch.nn.functional.pad(a, (pad, pad))
    aa, bb, ab = float(a @ a), float(b @ b), float(a @ b)
    return math.sqrt(aa * aa - 2.0 * ab * ab + bb * bb)


#: Detection cut floor in units of the frame dtype's eps × the frame's mean level: 16 × the
#: largest rounding residue of the band-pass filter on a constant frame.
ROUNDING_FLOOR = 64.0


@dataclass
class Candidates:
    """Candidate emitters in a batch (int64 tensors of length n, except ``score``).

    ``frame`` is the index in the batch; ``row``, ``col`` the candidate pixel; ``score``
    the filtered value divided by the frame's noise (a signal-to-noise ratio).
    """

    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    score: torch.Tensor

    def __len__(self) -> int:
        return int(self.frame.numel())


def local_maxima(filtered: torch.Tensor, threshold: torch.Tensor) -> Candidates:
    """Pixels that are the maximum of their 3×3 neighbourhood and exceed ``threshold``.

    Parameters
    ----------
    filtered : (B, H, W) tensor
    threshold : (B,) tensor
        Per-frame threshold in the units of ``filtered``.
    """
    pooled = F.max_pool2d(filtered[:, None], 3, stride=1, padding=1)[:, 0]
    is_max = (filtered >= pooled) & (filtered > threshold[:, None, None])
    f, r, c = torch.nonzero(is_max, as_tuple=True)
    return Candidates(f, r, c, filtered[f, r, c])


def local_noise_scale(smooth: torch.Tensor, gamma: float,
                      dark_fraction: float = 0.1) -> torch.Tensor:
    """Per-pixel factor on the frame's noise (taken in its darkest pixels) for the local
    background: √((level + γ) / (dark level + γ)) ≥ 1, with level the wide blur in counts
    (Poisson variance = mean, plus the read-noise variance γ). Where the background is high
    (a step, a cell) a spot must stand out of its own noise, not of the darkest region's."""
    flat = smooth.flatten(1)
    k = min(flat.shape[1], max(16, int(round(dark_fraction * flat.shape[1]))))
    dark = flat.topk(k, dim=1, largest=False).values.median(dim=1).values
    gamma = max(float(gamma), 1.0)  # rounding alone is 1/12 count²; 1 keeps dark frames sane
    ratio = (smooth.clamp_min(0) + gamma) / (dark.clamp_min(0)[:, None, None] + gamma)
    return ratio.sqrt().clamp_min(1.0)


def detect(frames: torch.Tensor, sigma_px: float, threshold: float, ratio: float = 2.5,
           noise: torch.Tensor | None = None, gamma: float | None = None) -> Candidates:
    """Candidate emitters in (B, H, W) frames.

    Parameters
    ----------
    frames : (B, H, W) float tensor
        Frames in any linear unit (photons, counts or ADU above the baseline).
    sigma_px : float
        Expected PSF σ in pixels (width of the matched filter).
    threshold : float
        Detection threshold in multiples of the robust noise of the filtered frame.
    ratio : float
        σ₂/σ₁ of the difference of Gaussians.
    noise : (B,) tensor, optional
        Noise of the filtered frames to use instead of the per-frame MAD.

    Returns
    -------
    Candidates
        With ``score`` = filtered value / noise.
    """
    filtered, smooth = band_pass(frames, sigma_px, ratio, return_smooth=True)
    if noise is None:
        noise = robust_noise(filtered, smooth)
    noise = noise.clamp_min(torch.finfo(frames.dtype).tiny)
    # Filtering a constant frame leaves rounding residue (≤ 4 eps × its level, measured); with
    # a zero noise estimate any of it would pass the threshold, so the cut never falls below
    # ROUNDING_FLOOR eps × the frame's mean level (far below any real noise).
    floor = ROUNDING_FLOOR * torch.finfo(frames.dtype).eps * frames.abs().mean(dim=(1, 2))
    if gamma is None:
        cand = local_maxima(filtered, torch.maximum(threshold * noise, floor))
        cand.score = cand.score / noise[cand.frame]
        return cand
    local = noise[:, None, None] * local_noise_scale(smooth, gamma)
    cand = local_maxima(filtered / local, torch.full_like(noise, float(threshold)))
    keep = filtered[cand.frame, cand.row, cand.col] > floor[cand.frame]
    return Candidates(cand.frame[keep], cand.row[keep], cand.col[keep], cand.score[keep])


def extract_rois(frames: torch.Tensor, frame: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                 size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``size`` × ``size`` windows around candidates, kept inside the frame.

    Returns
    -------
    rois : (n, size, size) tensor
    row0, col0 : (n,) int64 tensors
        Frame row and column of each window's top-left pixel.
    """
    _, h, w = frames.shape
    half = size // 2
    row0 = (row - half).clamp(0, h - size)
    col0 = (col - half).clamp(0, w - size)
    offsets = torch.arange(size, device=frames.device)
    rr = row0[:, None] + offsets[None, :]
    cc = col0[:, None] + offsets[None, :]
    rois = frames[frame[:, None, None], rr[:, :, None], cc[:, None, :]]
    return rois, row0, col0
