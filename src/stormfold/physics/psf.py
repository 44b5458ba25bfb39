"""Gaussian point-spread functions: width conversions, pixel-integrated profiles, and the one
Gaussian-kernel function every module uses (simulation, forward operators, the classical
detector's filters, Deep-STORM's target blur)."""
from __future__ import annotations

import math
import sys

import numpy as np
from scipy.special import erf as _scipy_erf

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # ≈ 2.3548


def sigma_from_fwhm(fwhm: float) -> float:
    """Gaussian standard deviation from its full width at half maximum (same unit)."""
    return float(fwhm) / FWHM_PER_SIGMA


def fwhm_from_sigma(sigma: float) -> float:
    """Full width at half maximum of a Gaussian of standard deviation ``sigma`` (same unit)."""
    return float(sigma) * FWHM_PER_SIGMA


def sigma_from_optics(wavelength_nm: float, numerical_aperture: float) -> float:
    """Approximate Gaussian PSF σ in nm, σ ≈ 0.21·λ/NA (Zhang et al. 2007).

    This is an optimistic lower bound: aberrations widen real PSFs, so check it against
    σ fitted on the user's data (``stormfold calibrate``).
    """
    return 0.21 * float(wavelength_nm) / float(numerical_aperture)


def _erf(x):
    # torch tensors keep autograd (a learnable σ); everything else goes through scipy. torch is
    # only looked up, never imported here, so the numpy simulator does not pay for it.
    torch = sys.modules.get("torch")
    if torch is not None and torch.is_tensor(x):
        return torch.erf(x)
    return _scipy_erf(x)


def integrated_gaussian_1d(edges_lo, edges_hi, mu, sigma):
    """Fraction of a 1-D Gaussian's mass inside each interval [lo, hi).

    All arguments broadcast together and share one length unit; numpy arrays or torch
    tensors (differentiable in ``sigma``).
    ``0.5·(erf((hi − μ)/(√2σ)) − erf((lo − μ)/(√2σ)))``.
    """
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    return 0.5 * (_erf((edges_hi - mu) * scale) - _erf((edges_lo - mu) * scale))


def gaussian_kernel_1d(sigma_px, radius: int, integrated: bool = True, normalize: bool = True):
    """1-D Gaussian on the integer offsets −radius … radius (σ in pixels), as a torch tensor.

    Parameters
    ----------
    sigma_px : float or 0-d torch.Tensor
        Standard deviation in pixels. A tensor keeps its dtype, device and autograd (the
        learnable σ of the forward operators); a float gives float64.
    radius : int
        Half-width of the support.
    integrated : bool
        True: each tap is the Gaussian's mass over its pixel [t − ½, t + ½) (the PSF of a
        pixelated detector); False: the Gaussian sampled at t (``fspecial('gaussian')``).
    normalize : bool
        Divide by the sum, so the kernel has mass 1 despite the truncation.
    """
    import torch

    sigma = sigma_px if torch.is_tensor(sigma_px) else torch.tensor(float(sigma_px),
                                                                    dtype=torch.float64)
    offsets = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    if integrated:
        k = integrated_gaussian_1d(offsets - 0.5, offsets + 0.5, 0.0, sigma)
    else:
        k = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return k / k.sum() if normalize else k


def integrated_gaussian_windows(x_px: np.ndarray, y_px: np.ndarray, sigma_px: np.ndarray,
                                radius_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-emitter windows of a pixel-integrated Gaussian PSF (unit total mass).

    Parameters
    ----------
    x_px, y_px : (n,) float
        Emitter positions in camera pixels, origin at the top-left corner of pixel (0, 0)
        (so the centre of pixel c is c + 0.5).
    sigma_px : (n,) float
        PSF standard deviation in pixels.
    radius_px : int
        Half-width of the square window; choose ≥ 4σ so the truncation is negligible.

    Returns
    -------
    weights : (n, w, w) float64
        Fraction of each emitter's photons in each window pixel, w = 2·radius_px + 1,
        indexed [emitter, row, col].
    row0, col0 : (n,) int
        Camera row and column of the window's top-left pixel.
    """
    x_px = np.asarray(x_px, dtype=np.float64)
    y_px = np.asarray(y_px, dtype=np.float64)
    sigma_px = np.broadcast_to(np.asarray(sigma_px, dtype=np.float64), x_px.shape)
    offsets = np.arange(2 * radius_px + 1)
    col0 = np.floor(x_px).astype(np.int64) - radius_px
    row0 = np.floor(y_px).astype(np.int64) - radius_px
    cols = col0[:, None] + offsets[None, :]
    rows = row0[:, None] + offsets[None, :]
    wx = integrated_gaussian_1d(cols, cols + 1.0, x_px[:, None], sigma_px[:, None])
    wy = integrated_gaussian_1d(rows, rows + 1.0, y_px[:, None], sigma_px[:, None])
    return wy[:, :, None] * wx[:, None, :], row0, col0


def render_emitters(shape: tuple[int, int, int], frame: np.ndarray, x_px: np.ndarray,
                    y_px: np.ndarray, photons: np.ndarray, sigma_px: np.ndarray,
                    truncate_sigma: float = 4.0) -> np.ndarray:
    """Expected photon images of point emitters with a pixel-integrated Gaussian PSF.

    Vectorised over emitters: each emitter contributes a (2R+1)² window, R = ⌈truncate·σ_max⌉,
    and windows are accumulated with one ``bincount``; parts of windows outside the image
    are dropped (photons that fall off the sensor).

    Parameters
    ----------
    shape : (n_frames, n_rows, n_cols)
    frame : (n,) int
        Frame index of each emitter (0-based, relative to the returned stack).
    x_px, y_px : (n,) float
        Positions in camera pixels (pixel-corner origin, SPEC §1).
    photons : (n,) float
        Total photons of each emitter in its frame.
    sigma_px : (n,) float
        PSF σ of each emitter in pixels.

    Returns
    -------
    (n_frames, n_rows, n_cols) float64 expected photons per pixel.
    """
    n_frames, n_rows, n_cols = shape
    out = np.zeros(n_frames * n_rows * n_cols, dtype=np.float64)
    frame = np.asarray(frame, dtype=np.int64)
    if frame.size == 0:
        return out.reshape(shape)
    sigma_px = np.broadcast_to(np.asarray(sigma_px, dtype=np.float64), frame.shape)
    radius = int(np.ceil(truncate_sigma * float(sigma_px.max()))) + 1
    # Bound the temporary (n, w, w) array: render in slices of emitters.
    w = 2 * radius + 1
    step = max(1, 4_000_000 // (w * w))
    offsets = np.arange(w)
    for start in range(0, frame.size, step):
        sl = slice(start, start + step)
        weights, row0, col0 = integrated_gaussian_windows(x_px[sl], y_px[sl], sigma_px[sl], radius)
        weights *= np.asarray(photons, dtype=np.float64)[sl, None, None]
        rows = row0[:, None, None] + offsets[None, :, None]
        cols = col0[:, None, None] + offsets[None, None, :]
        inside = (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
        flat = (frame[sl, None, None] * n_rows + rows) * n_cols + cols
        out += np.bincount(flat[inside], weights=weights[inside], minlength=out.size)
    return out.reshape(shape)
