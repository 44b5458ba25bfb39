"""Expected SOFI cumulants of a simulated blinking movie (the variance-domain model, SPEC §6).

Derivation (the simulator of SPEC §2 with blinking kinetics, no bleaching, no drift)
-------------------------------------------------------------------------------------
Pixel p of frame t holds, in photons, F_t(p) = λ_t(p) + n_t(p) with the noise-free signal

    λ_t(p) = Σ_e I_{e,t}·g_e(p) + b(p),        I_{e,t} = N_{e,t}·f_{e,t},

where g_e(p) is the pixel-integrated Gaussian PSF of fluorophore e (fraction of its photons
in pixel p), b the background, N_{e,t} ~ max(Normal(μ, s), 0) the photons of a frame
(independent across frames) and f_{e,t} ∈ [0, 1] the fraction of frame t that e spends ON.
The ON/OFF state s(u) is a stationary two-state Markov process with mean dwell times
t_on, t_off (frames): P(ON) = p = t_on/(t_on + t_off), rate k = 1/t_on + 1/t_off,
Cov(s(u), s(u+τ)) = p(1 − p)·e^{−k|τ|}. Integrating over frames, f_t = ∫_t^{t+1} s(u) du has

    E f = p,
    Var f = p(1 − p)·2(k − 1 + e^{−k})/k²,
    Cov(f_t, f_{t+h}) = p(1 − p)·e^{−k(h−1)}(1 − e^{−k})²/k²   (h ≥ 1),

so the intensity of one fluorophore has the autocovariance (N independent of f)

    γ_I(0) = E[N²]·E[f²] − (E[N]·p)²,    γ_I(h) = E[N]²·Cov(f_t, f_{t+h})   (h ≥ 1).

Fluorophores blink independently, so the covariances add up weighted by the *squared* PSF:
Cov(λ_t(p), λ_{t+h}(p)) = Σ_e γ_I(h)·g_e(p)². This is (H∘H) applied to the fine-grid image
of γ_I: the element-wise square of H's entries, i.e. the squared PSF κ² (SPEC §6).

The camera noise n_t (shot noise, EM excess noise, read noise, ADU rounding) has zero mean
given λ_t, is independent across frames, and has the variance v(λ_t) of
:meth:`stormfold.physics.Camera.adu_variance` converted to photons², which is affine in λ;
so the noise adds v(E λ) to the lag-0 autocovariance and nothing at lags ≥ 1 (it is white).

The cumulant *estimators* of :mod:`stormfold.sofi.statistics` use the empirical mean of the
same T frames, which biases them by O(1/T) for a correlated process. For a stationary
process with autocovariance γ(h):

    Var(X̄) = [T·γ(0) + 2 Σ_{h=1}^{T−1} (T − h)·γ(h)] / T²,
    E Ĝ₂(0) = γ(0) − Var(X̄),
    E Ĝ₂(1) = γ(1) + [2·c₀ − (T + 1)·Var(X̄)] / (T − 1),   c₀ = (1/T) Σ_{h=0}^{T−1} γ(h),

(c₀ = Cov(X_0, X̄)). White noise of variance v therefore contributes v(1 − 1/T) at lag 0
and −v/T at lag 1. Summing: the expected cumulant image is

    E Ĝ₂(lag)(p) = Σ_e E_T[γ_I](lag)·g_e(p)² + E_T[noise](lag)(p),

which :func:`expected_cumulant` evaluates with the exact PSF of each fluorophore (continuous
positions) and :class:`stormfold.physics.operator.SquaredBlurDownsample` evaluates on the fine
grid.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm

from stormfold.errors import UserError


# --------------------------------------------------------------------------- emitters
def photon_moments(emitters: Any) -> tuple[float, float]:
    """E[N] and E[N²] of the photons per emitter and frame of an ``EmitterConfig``.

    ``normal``: N = max(Normal(μ, s), 0) (clipped, as the simulator draws it);
    ``uniform``: N ~ Uniform(a, b).
    """
    if emitters.photons_distribution == "uniform":
        a, b = float(emitters.photons_min), float(emitters.photons_max)
        return 0.5 * (a + b), (a * a + a * b + b * b) / 3.0
    mu, s = float(emitters.photons_mean), float(emitters.photons_spread)
    if s == 0:
        m = max(mu, 0.0)
        return m, m * m
    z = mu / s
    cdf, pdf = norm.cdf(z), norm.pdf(z)
    return mu * cdf + s * pdf, (mu * mu + s * s) * cdf + mu * s * pdf


def on_fraction_autocovariance(t_on_frames: float, t_off_frames: float,
                               n_lags: int) -> tuple[float, np.ndarray]:
    """ON probability p and the autocovariance of the per-frame ON fraction, lags 0…n−1.

    Returns
    -------
    p : float
    cov : ndarray (n_lags,)
        Cov(f_t, f_{t+h}) for h = 0 … n_lags − 1 (see the module notes).
    """
    if t_on_frames <= 0 or t_off_frames <= 0:
        raise UserError("t_on_frames and t_off_frames must be > 0")
    p = t_on_frames / (t_on_frames + t_off_frames)
    k = 1.0 / t_on_frames + 1.0 / t_off_frames
    h = np.arange(n_lags, dtype=np.float64)
    cov = p * (1 - p) * np.exp(-k * (h - 1)) * (-math.expm1(-k)) ** 2 / k ** 2
    if n_lags:
        cov[0] = p * (1 - p) * 2.0 * (k - 1.0 + math.exp(-k)) / k ** 2
    return p, cov


def intensity_autocovariance(config: Any, n_lags: int | None = None) -> np.ndarray:
    """γ_I(h), h = 0 … T−1: autocovariance of one fluorophore's photons per frame (photons²).

    ``config`` is a :class:`stormfold.simulate.SimulationConfig` with blinking kinetics and
    no bleaching (the process must be stationary).
    """
    act = config.activation
    if act.model != "kinetics":
        raise UserError("SOFI statistics need blinking kinetics (activation.model=kinetics)")
    if act.t_bleach_frames is not None:
        raise UserError("the stationary SOFI model does not cover photobleaching "
                        "(activation.t_bleach_frames must be null)")
    n_lags = config.n_frames if n_lags is None else int(n_lags)
    m1, m2 = photon_moments(config.emitters)
    p, cov_f = on_fraction_autocovariance(act.t_on_frames, act.t_off_frames, n_lags)
    gamma = m1 * m1 * cov_f
    if n_lags:
        gamma[0] = m2 * (cov_f[0] + p * p) - (m1 * p) ** 2
    return gamma


def estimator_expectation(gamma: np.ndarray, lag: int) -> float:
    """Expected value of the cumulant estimator Ĝ₂(lag) over T = len(gamma) frames.

    Parameters
    ----------
    gamma : ndarray (T,)
        Autocovariance γ(h), h = 0 … T−1, of a stationary process.
    lag : {0, 1}
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    T = gamma.size
    if T < 2:
        raise UserError("the expected cumulant needs at least 2 frames")
    h = np.arange(1, T)
    var_mean = (T * gamma[0] + 2.0 * np.sum((T - h) * gamma[1:])) / T ** 2
    if lag == 0:
        return float(gamma[0] - var_mean)
    if lag == 1:
        c0 = gamma.sum() / T
        return float(gamma[1] + (2.0 * c0 - (T + 1) * var_mean) / (T - 1))
    raise UserError(f"lag must be 0 or 1, got {lag}")


# --------------------------------------------------------------------------- noise
def noise_variance(camera: Any, mean_photons: np.ndarray) -> np.ndarray:
    """Variance (photons²) of the camera noise of pixels with the given measured mean.

    ``mean_photons`` is the temporal mean of the movie converted to photons
    (:meth:`Camera.backward`), which includes spurious charge/QE; the noise variance is
    :meth:`Camera.adu_variance` of the expected photons, times photons_per_adu².
    Zero for ``shot_noise: none`` (noise-free reference movies).
    """
    mean_photons = np.asarray(mean_photons, dtype=np.float64)
    if camera.shot_noise == "none":
        return np.zeros_like(mean_photons)
    expected = np.maximum(mean_photons - camera.spurious_charge / camera.qe, 0.0)
    return camera.adu_variance(expected) * camera.photons_per_adu ** 2


def noise_offset(camera: Any, mean_photons: np.ndarray, n_frames: int, lag: int) -> np.ndarray:
    """The camera noise's contribution s to the expected cumulant Ĝ₂(lag), photons².

    v(1 − 1/T) at lag 0 and −v/T at lag 1, with v = :func:`noise_variance`.
    """
    v = noise_variance(camera, mean_photons)
    if lag == 0:
        return v * (1.0 - 1.0 / n_frames)
    if lag == 1:
        return -v / n_frames
    raise UserError(f"lag must be 0 or 1, got {lag}")


# --------------------------------------------------------------------------- images
def squared_psf_image(shape: tuple[int, int], x_px: np.ndarray, y_px: np.ndarray,
                      sigma_px: np.ndarray, weights: np.ndarray, power: int = 2,
                      truncate_sigma: float = 5.0) -> np.ndarray:
    """Σ_e weights_e · g_e(p)^power on a camera grid (pixel-integrated Gaussian PSF g_e).

    Positions in camera pixels (SPEC §1 corner origin); returns (rows, cols) float64.
    """
    from stormfold.physics.psf import integrated_gaussian_windows

    rows, cols = shape
    out = np.zeros(rows * cols, dtype=np.float64)
    x_px = np.asarray(x_px, dtype=np.float64)
    if x_px.size == 0:
        return out.reshape(shape)
    sigma_px = np.broadcast_to(np.asarray(sigma_px, dtype=np.float64), x_px.shape)
    weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), x_px.shape)
    radius = int(np.ceil(truncate_sigma * float(sigma_px.max()))) + 1
    w = 2 * radius + 1
    step = max(1, 2_000_000 // (w * w))
    offsets = np.arange(w)
    for a in range(0, x_px.size, step):
        sl = slice(a, a + step)
        g, row0, col0 = integrated_gaussian_windows(x_px[sl], np.asarray(y_px)[sl],
                                                    sigma_px[sl], radius)
        vals = g ** power * weights[sl, None, None]
        r = row0[:, None, None] + offsets[None, :, None]
        c = col0[:, None, None] + offsets[None, None, :]
        ok = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        out += np.bincount((r * cols + c)[ok], weights=vals[ok], minlength=rows * cols)
    return out.reshape(shape)


def expected_cumulant(config: Any, x_nm: np.ndarray, y_nm: np.ndarray, lag: int = 0,
                      sigma_nm: np.ndarray | float | None = None,
                      include_noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Expected cumulant image Ĝ₂(lag) and expected mean image of a simulated SOFI movie.

    Parameters
    ----------
    config : SimulationConfig
        The simulation (kinetics, photons, camera, background, n_frames, pixel size).
    x_nm, y_nm : ndarray
        Positions of every fluorophore (nm, SPEC §1).
    lag : {0, 1}
    sigma_nm : float or ndarray, optional
        PSF σ per fluorophore (default ``config.emitters.sigma_nm``).
    include_noise : bool
        Add the camera-noise term (see :func:`noise_offset`).

    Returns
    -------
    cumulant : ndarray (rows, cols)
        E Ĝ₂(lag) in photons², for the estimator over ``config.n_frames`` frames.
    mean : ndarray (rows, cols)
        Expected temporal mean in photons (signal + background + spurious charge/QE).
    """
    from stormfold.simulate.simulator import background_image

    px = config.pixel_size_nm
    sigma = config.emitters.sigma_nm if sigma_nm is None else sigma_nm
    shape = (config.n_rows, config.n_cols)
    gamma = intensity_autocovariance(config)
    per_emitter = estimator_expectation(gamma, lag)
    x_px, y_px = np.asarray(x_nm) / px, np.asarray(y_nm) / px
    sigma_px = np.asarray(sigma, dtype=np.float64) / px
    cumulant = squared_psf_image(shape, x_px, y_px, sigma_px, per_emitter, power=2)
    m1, _ = photon_moments(config.emitters)
    p = config.activation.t_on_frames / (config.activation.t_on_frames
                                         + config.activation.t_off_frames)
    mean = squared_psf_image(shape, x_px, y_px, sigma_px, m1 * p, power=1) \
        + background_image(config) + config.camera.spurious_charge / config.camera.qe
    if include_noise:
        cumulant = cumulant + noise_offset(config.camera, mean, config.n_frames, lag)
    return cumulant, mean
