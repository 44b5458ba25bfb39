"""Batched maximum-likelihood fit of a pixel-integrated Gaussian under Poisson noise.

Every region of interest (ROI) is a small square of pixels in *counts*: quantities whose
noise is Poisson (photo-electrons for a CCD/sCMOS; photo-electrons / 2 for an EMCCD, see
:mod:`stormfold.localize.classic.engine`). Gaussian read noise of variance γ (counts²) is
handled with the usual Poisson approximation (Huang et al., Nat. Methods 2013): the data
d + γ are treated as Poisson with mean μ + γ.

Model of ROI pixel (row i, column j), with the pixel spanning [j, j+1) × [i, i+1) in ROI
pixel coordinates::

    μ_ij = b + N · Ex_j · Ey_i,   Ex_j = ½(erf((j+1−x)/(√2σ)) − erf((j−x)/(√2σ)))

Parameters θ = (x, y, N, b, σ): position (px, ROI coordinates, origin at the ROI's top-left
corner), total counts N, background b (counts per pixel) and PSF σ (px).

The fit is Levenberg–Marquardt with Fisher scoring (the expected Hessian
I = Σ ∂μ ∂μᵀ / (μ + γ), i.e. iteratively reweighted least squares), vectorised over all
ROIs of a batch: at most ``iterations`` steps (a ROI stops once its steps are below a
tolerance), a damping factor per ROI that shrinks after an accepted step and grows after a
rejected one, and parameter bounds applied by clipping. The Cramér–Rao lower bound is
diag(I⁻¹) at the estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Parameter order of θ.
PARAMETERS = ("x", "y", "N", "b", "sigma")
X, Y, N, B, S = range(5)
_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _axis_profile(center: torch.Tensor, sigma: torch.Tensor, size: int, jacobian: bool):
    """Pixel-integrated 1-D Gaussian over pixels [k, k+1), k = 0..size−1.

    Returns E (n, size) and, with ``jacobian``, dE/dcenter and dE/dσ (n, size).
    """
    edges = torch.arange(size + 1, dtype=center.dtype, device=center.device)
    u = edges[None, :] - center[:, None]  # (n, size+1) distance of the pixel edges
    s = sigma[:, None]
    e = torch.erf(u / (_SQRT2 * s))
    profile = 0.5 * (e[:, 1:] - e[:, :-1])
    if not jacobian:
        return profile, None, None
    pdf = torch.exp(-0.5 * (u / s) ** 2) * (_INV_SQRT2PI / s)  # φ(u/σ)/σ at each edge
    d_center = pdf[:, :-1] - pdf[:, 1:]
    h = pdf * u / s
    d_sigma = h[:, :-1] - h[:, 1:]
    return profile, d_center, d_sigma


def gaussian_model(theta: torch.Tensor, size: int, jacobian: bool = True):
    """Expected counts of the ROI model and its Jacobian.

    Parameters
    ----------
    theta : (n, 5) tensor
        (x px, y px, N counts, b counts/px, σ px) per ROI, ROI pixel coordinates.
    size : int
        ROI side in pixels.
    jacobian : bool
        Also return ∂μ/∂θ.

    Returns
    -------
    mu : (n, size, size) tensor
        Expected counts per pixel, indexed [roi, row, col].
    jac : (n, 5, size, size) tensor or None
        ∂μ/∂θ in the order of :data:`PARAMETERS`.
    """
    x, y, n, b, s = theta.unbind(1)
    ex, dex, dsx = _axis_profile(x, s, size, jacobian)
    ey, dey, dsy = _axis_profile(y, s, size, jacobian)
    psf = ey[:, :, None] * ex[:, None, :]
    nn = n[:, None]
    mu = psf * nn[:, :, None] + b[:, None, None]
    if not jacobian:
        return mu, None
    # Every column of ∂μ/∂θ is a sum of outer products (row profile) ⊗ (column profile):
    # one batched outer product of stacked factors, written straight into the result.
    rows = torch.stack([nn * ey, nn * dey, nn * dsy, nn * ey], 1)  # (n, 4, size)
    cols = torch.stack([dex, ex, ex, dsx], 1)
    outer = rows[:, :, :, None] * cols[:, :, None, :]  # (n, 4, size, size)
    jac = torch.empty((theta.shape[0], 5, size, size), dtype=theta.dtype, device=theta.device)
    jac[:, :2] = outer[:, :2]
    jac[:, 2] = psf
    jac[:, 3] = 1.0
    torch.add(outer[:, 2], outer[:, 3], out=jac[:, 4])
    return mu, jac


def neg_log_likelihood_ratio(data: torch.Tensor, mu: torch.Tensor, gamma) -> torch.Tensor:
    """Poisson deviance / 2 per ROI: Σ (m − d) + d·log(d/m), with d = data + γ, m = μ + γ.

    Zero for a perfect fit; 2× this is asymptotically χ² with (pixels − parameters) degrees
    of freedom. Written as a ratio so float32 keeps its precision near the optimum.
    """
    d = (data + gamma).clamp_min(0)
    m = mu + gamma
    return ((m - d) + torch.xlogy(d, d / m)).flatten(1).sum(1)


def fisher_information(jac: torch.Tensor, mu: torch.Tensor, gamma) -> torch.Tensor:
    """I = Σ_pixels ∂μ ∂μᵀ / (μ + γ), (n, p, p); pixels that expect no counts at all
    (μ + γ = 0, e.g. far from every emitter without background or read noise) carry no
    information rather than 1/0."""
    jf = jac.flatten(2)
    lam = (mu + gamma).flatten(1)
    w = torch.where(lam > 0, 1.0 / lam.clamp_min(torch.finfo(lam.dtype).tiny), torch.zeros_like(lam))
    return torch.einsum("npk,nqk->npq", jf * w[:, None, :], jf)


@dataclass
class FitBounds:
    """Bounds on the parameters (applied by clipping after each step).

    Attributes
    ----------
    sigma_min_px, sigma_max_px : float
        Range of σ in pixels.
    margin_px : float
        x and y are kept in [−margin, size + margin] (ROI pixel coordinates).
    min_counts : float
        Smallest N.
    """

    sigma_min_px: float = 0.4
    sigma_max_px: float = 3.0
    margin_px: float = 0.0
    min_counts: float = 1.0


@dataclass
class FitResult:
    """Per-ROI estimates (tensors of length n).

    Attributes
    ----------
    theta : (n, 5)
        (x px, y px, N counts, b counts/px, σ px) in ROI coordinates.
    crlb : (n, 5)
        Cramér–Rao lower bound of the variance of each parameter (σ's entry is 0 when σ
        is fixed); NaN where the Fisher information is singular.
    nllr : (n,)
        Poisson deviance / 2 at the estimate (goodness of fit).
    hat : (n, size, size) or None
        Leverage h_kk = w_k ∂μ_kᵀ I⁻¹ ∂μ_k of each pixel (only with ``leverage=True``).
    mu : (n, size, size)
        Model at the estimate (counts, without γ).
    """

    theta: torch.Tensor
    crlb: torch.Tensor
    nllr: torch.Tensor
    mu: torch.Tensor
    hat: torch.Tensor | None = None


def initial_guess(rois: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                  sigma_px: float) -> torch.Tensor:
    """Starting values: background = median of the ROI's border pixels, counts = sum above
    it, position = centroid of the 3×3 pixels around the candidate, σ as given.

    Parameters
    ----------
    rois : (n, size, size) tensor of counts
    row, col : (n,) int tensors
        Candidate pixel inside the ROI (local maximum of the detection filter).
    sigma_px : float
        Initial σ in pixels.
    """
    n, size, _ = rois.shape
    border = torch.cat([rois[:, 0, :], rois[:, -1, :], rois[:, 1:-1, 0], rois[:, 1:-1, -1]], 1)
    b0 = border.median(dim=1).values
    above = (rois - b0[:, None, None]).clamp_min(0)
    n0 = above.flatten(1).sum(1).clamp_min(1.0)
    offsets = torch.arange(-1, 2, device=rois.device)
    rr = (row[:, None] + offsets[None, :]).clamp(0, size - 1)  # (n, 3)
    cc = (col[:, None] + offsets[None, :]).clamp(0, size - 1)
    idx = torch.arange(n, device=rois.device)[:, None, None]
    win = above[idx, rr[:, :, None], cc[:, None, :]]  # (n, 3, 3)
    mass = win.flatten(1).sum(1).clamp_min(1e-6)
    centres_r = (rr.to(rois.dtype) + 0.5)
    centres_c = (cc.to(rois.dtype) + 0.5)
    y0 = (win.sum(2) * centres_r).sum(1) / mass
    x0 = (win.sum(1) * centres_c).sum(1) / mass
    flat = mass <= 1e-6  # nothing above the background: start at the candidate pixel
    x0 = torch.where(flat, col.to(rois.dtype) + 0.5, x0)
    y0 = torch.where(flat, row.to(rois.dtype) + 0.5, y0)
    s0 = torch.full_like(x0, float(sigma_px))
    return torch.stack([x0, y0, n0, b0, s0], dim=1)


def _bounds(size: int, bounds: FitBounds, b_min: float, dtype, device):
    """Lower and upper bounds of θ as (5,) tensors."""
    lo = torch.tensor([-bounds.margin_px, -bounds.margin_px, bounds.min_counts, b_min,
                       bounds.sigma_min_px], dtype=dtype, device=device)
    hi = torch.tensor([size + bounds.margin_px, size + bounds.margin_px, math.inf, math.inf,
                       bounds.sigma_max_px], dtype=dtype, device=device)
    return lo, hi


def background_floor(gamma: float) -> float:
    """Lowest background b allowed: the model mean μ + γ must stay positive.

    With read noise (γ > 0) b may go somewhat below 0 so that a zero true background is
    estimated without bias; without it b stays just above 0.
    """
    return -0.5 * gamma if gamma > 0 else 1e-3


def fit_spots(rois: torch.Tensor, theta0: torch.Tensor, gamma: float = 0.0, iterations: int = 12,
              fit_sigma: bool = True, bounds: FitBounds | None = None,
              leverage: bool = False, tolerance: float = 1e-3) -> FitResult:
    """Maximum-likelihood fit of every ROI at once.

    Parameters
    ----------
    rois : (n, size, size) float tensor
        Data in counts (Poisson units; may be negative with read noise).
    theta0 : (n, 5) tensor
        Starting values (see :func:`initial_guess`).
    gamma : float
        Read-noise variance in counts² (0 for pure Poisson data).
    iterations : int
        Largest number of Levenberg–Marquardt iterations (each costs one model evaluation
        with and one without the Jacobian).
    fit_sigma : bool
        Fit σ (True) or keep it at ``theta0``'s value.
    bounds : FitBounds, optional
        Parameter bounds.
    leverage : bool
        Also return the leverage of every pixel (used by the calibration to correct
        residual variances for the degrees of freedom of the fit).
    tolerance : float
        A ROI stops iterating once an accepted step changes x, y, σ by less than this (px)
        and N, b by less than this fraction (0: always run ``iterations``).

    Returns
    -------
    FitResult
    """
    bounds = bounds or FitBounds()
    n, size, _ = rois.shape
    dtype, device = rois.dtype, rois.device
    b_min = background_floor(float(gamma))
    lo, hi = _bounds(size, bounds, b_min, dtype, device)
    theta = torch.maximum(torch.minimum(theta0.to(dtype), hi), lo)
    free = torch.ones(5, dtype=dtype, device=device)
    if not fit_sigma:
        free[S] = 0.0
    eye = torch.eye(5, dtype=dtype, device=device)
    # Fixed parameters: zero their gradient and Jacobian columns, unit diagonal.
    fixed_diag = eye * (1.0 - free)[None, :]
    d_all = (rois + gamma).clamp_min(0).flatten(1)
    theta_all, nllr_all = theta.clone(), torch.empty(n, dtype=dtype, device=device)
    # The iterations run on the active ROIs only: a ROI whose accepted step moved every
    # parameter by less than ``tolerance`` is done, and the active set is compacted when a
    # quarter of it is done (gathers cost, so not after every iteration).
    tol = torch.full((5,), float(tolerance), dtype=dtype, device=device)
    idx = torch.arange(n, device=device)
    data, d = rois, d_all
    lam = torch.full((n,), 1e-2, dtype=dtype, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    mu, jac = gaussian_model(theta, size)
    nllr = neg_log_likelihood_ratio(data, mu, gamma)
    for _ in range(iterations):
        if idx.numel() == 0:
            break
        w = (mu + gamma).flatten(1).reciprocal()
        jf = jac.flatten(2)
        if not fit_sigma:
            jf = jf * free[None, :, None]
        info = torch.bmm(jf * w[:, None, :], jf.transpose(1, 2)) + fixed_diag
        grad = torch.bmm(jf, (d * w - 1.0)[:, :, None])
        diag = torch.diagonal(info, dim1=1, dim2=2)
        damped = info + torch.diag_embed(lam[:, None] * diag)
        step, _info = torch.linalg.solve_ex(damped, grad)
        trial = torch.maximum(torch.minimum(theta + step[:, :, 0], hi), lo)
        # Only the model (no Jacobian) at the trial point: accept where the likelihood grows.
        mu_t, _ = gaussian_model(trial, size, jacobian=False)
        nllr_t = neg_log_likelihood_ratio(data, mu_t, gamma)
        ok = torch.isfinite(nllr_t) & (nllr_t <= nllr) & torch.isfinite(trial).all(1)
        scale = torch.ones_like(theta)
        scale[:, N:S] = theta[:, N:S].abs().clamp_min(1.0)  # relative for N and b
        done |= ok & ((trial - theta).abs() < tol * scale).all(1)
        theta = torch.where(ok[:, None], trial, theta)
        nllr = torch.where(ok, nllr_t, nllr)
        lam = torch.where(ok, lam * 0.1, lam * 10.0).clamp(1e-6, 1e6)
        if int(done.sum()) * 4 >= idx.numel():
            theta_all[idx], nllr_all[idx] = theta, nllr
            keep = ~done
            idx, theta, nllr, lam = idx[keep], theta[keep], nllr[keep], lam[keep]
            data, d = rois[idx], d_all[idx]
            done = done[keep]
        mu, jac = gaussian_model(theta, size)
    theta_all[idx], nllr_all[idx] = theta, nllr
    theta, nllr = theta_all, nllr_all
    mu, jac = gaussian_model(theta, size)
    m = mu + gamma
    jf = jac.flatten(2) * free[None, :, None]
    info = torch.bmm(jf * m.flatten(1).reciprocal()[:, None, :], jf.transpose(1, 2)) + fixed_diag
    inv, ok_inv = torch.linalg.inv_ex(info)
    crlb = torch.diagonal(inv, dim1=1, dim2=2) * free[None, :]
    crlb = torch.where((ok_inv == 0)[:, None] & (crlb >= 0), crlb, torch.full_like(crlb, math.nan))
    hat = None
    if leverage:
        # h_k = ∂μ_kᵀ I⁻¹ ∂μ_k / m_k: the fraction of pixel k's variance the fit absorbs.
        hat = (torch.einsum("npk,npq,nqk->nk", jf, inv, jf) / m.flatten(1)).reshape(n, size, size)
    return FitResult(theta=theta, crlb=crlb, nllr=nllr, mu=mu, hat=hat)
