"""Image-quality metrics of a reconstruction against a reference image (SPEC §7).

- :func:`psnr`: peak signal-to-noise ratio in dB.
- :func:`ssim`: structural similarity (Wang et al. 2004) with a Gaussian window,
  σ = 1.5 pixels, K1 = 0.01, K2 = 0.03. Same conventions as scikit-image's
  ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``:
  the window is truncated at 3.5σ (11 × 11 pixels), the image is extended by
  reflection, and the SSIM map is averaged after cropping 5 pixels from each edge.
- :func:`nrmse`: by default √mean((estimate − reference)²), the SPEC's definition (the
  plain RMSE, in image units); optional normalisations make it scale-free.

All functions take 2D images; stacks (…, H, W) are treated as a batch of 2D images and
the metric is computed over the whole stack (SSIM: the mean of the per-pixel maps of all
images; the window never mixes images).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from stormfold.errors import UserError

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TRUNCATE = 3.5


def _image(image: np.ndarray, which: str, name: str) -> np.ndarray:
    """``image`` as float64, refusing what has no single real value per pixel."""
    array = np.asarray(image)
    if array.dtype.kind == "c":
        raise UserError(f"{name}: the {which} image is complex (dtype {array.dtype}): give its "
                        f"real part or magnitude")
    if array.dtype.kind not in "biuf":
        raise UserError(f"{name}: the {which} image must hold real numbers, got dtype "
                        f"{array.dtype}")
    array = array.astype(np.float64, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise UserError(f"{name}: the {which} image has {bad} of {array.size} pixel(s) NaN or "
                        f"infinite")
    return array


def _pair(reference: np.ndarray, estimate: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    ref = _image(reference, "reference", name)
    est = _image(estimate, "estimate", name)
    if ref.shape != est.shape:
        raise UserError(f"{name}: images differ in shape: reference {ref.shape}, "
                        f"estimate {est.shape}")
    if ref.size == 0:
        raise UserError(f"{name}: empty images")
    return ref, est


def _data_range(ref: np.ndarray, data_range: float | None, name: str) -> float:
    if data_range is None:
        data_range = float(ref.max() - ref.min())
        if not data_range > 0:
            raise UserError(f"{name}: the reference image is constant; give data_range")
        return data_range
    data_range = float(data_range)
    if not np.isfinite(data_range) or data_range <= 0:
        raise UserError(f"{name}: data_range must be a positive number, got {data_range}")
    return data_range


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio 10·log10(R² / MSE), in dB.

    Parameters
    ----------
    reference, estimate : array_like
        Images of the same shape (any units; the same for both).
    data_range : float, optional
        Peak value R, in image units. Default: max − min of ``reference``.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the images are identical.
    """
    ref, est = _pair(reference, estimate, "psnr")
    r = _data_range(ref, data_range, "psnr")
    mse = float(np.mean((est - ref) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(r * r / mse))


def ssim_map(reference: np.ndarray, estimate: np.ndarray,
             data_range: float | None = None) -> np.ndarray:
    """Per-pixel SSIM map (uncropped), same shape as the inputs; see :func:`ssim`."""
    ref, est = _pair(reference, estimate, "ssim")
    if ref.ndim < 2:
        raise UserError(f"ssim: expected 2D images (or a stack), got shape {ref.shape}")
    r = _data_range(ref, data_range, "ssim")
    sigma = (0.0,) * (ref.ndim - 2) + (SSIM_SIGMA, SSIM_SIGMA)

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(ref), blur(est)
    vx = blur(ref * ref) - ux * ux
    vy = blur(est * est) - uy * uy
    vxy = blur(ref * est) - ux * uy
    c1 = (SSIM_K1 * r) ** 2
    c2 = (SSIM_K2 * r) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(reference: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004), Gaussian window σ = 1.5 px.

    Local means, variances and covariance are Gaussian-weighted (σ = 1.5 pixels,
    truncated at 3.5σ, reflecting boundaries); K1 = 0.01, K2 = 0.03,
    C1 = (K1·R)², C2 = (K2·R)². The SSIM map is averaged after cropping 5 pixels (the
    window's half-width) from each edge, as scikit-image does.

    Parameters
    ----------
    reference, estimate : array_like, shape (H, W) or (..., H, W)
        Images of the same shape; a stack is filtered image by image.
    data_range : float, optional
        Dynamic range R, in image units. Default: max − min of ``reference``.

    Returns
    -------
    float
        Mean SSIM, at most 1 (1 for identical images).

    Raises
    ------
    UserError
        Shapes differ, an image is smaller than 11 × 11 pixels, or the reference is
        constant and no ``data_range`` is given.
    """
    ref = np.asarray(reference)
    win = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
    if ref.ndim >= 2 and min(ref.shape[-2:]) < win:
        raise UserError(f"ssim: images must be at least {win} × {win} pixels, "
                        f"got {ref.shape[-2:]}")
    s = ssim_map(reference, estimate, data_range)
    pad = (win - 1) // 2
    return float(s[..., pad:s.shape[-2] - pad, pad:s.shape[-1] - pad].mean())


def nrmse(reference: np.ndarray, estimate: np.ndarray, normalization: str | None = None) -> float:
    """Root-mean-square difference √mean((estimate − reference)²), optionally normalised.

    Parameters
    ----------
    reference, estimate : array_like
        Images of the same shape.
    normalization : {None, "range", "mean", "euclidean"}
        ``None`` (default, the SPEC's definition): no normalisation, the result is in
        image units. ``"range"``: divided by max − min of the reference; ``"mean"``: by
        the mean of the reference; ``"euclidean"``: by √mean(reference²) (as
        scikit-image's ``normalized_root_mse``).

    Returns
    -------
    float
        The (normalised) RMSE.
    """
    ref, est = _pair(reference, estimate, "nrmse")
    rmse = float(np.sqrt(np.mean((est - ref) ** 2)))
    if normalization is None:
        return rmse
    if normalization == "range":
        den = float(ref.max() - ref.min())
    elif normalization == "mean":
        den = float(ref.mean())
    elif normalization == "euclidean":
        den = float(np.sqrt(np.mean(ref * ref)))
    else:
        raise UserError(f"nrmse: unknown normalization {normalization!r} "
                        f"(use None, range, mean or euclidean)")
    if den == 0:
        raise UserError(f"nrmse: cannot normalise by {normalization}: it is 0 for the reference")
    return rmse / den
